"""The qemu command lines of the boot harness (disk images and ISOs share their parts)."""

from __future__ import annotations

from pathlib import Path

import pytest

from testing import isoboot, qemu


def test_network_forwards_ssh_to_the_sites_own_address():
    args = qemu.network_args(
        cidr="10.0.1.0/24", gateway="10.0.1.1", address="10.0.1.46", port=2222, mac="52:54:00:00:00:46"
    )
    netdev = args[args.index("-netdev") + 1]
    assert "net=10.0.1.0/24" in netdev and "host=10.0.1.1" in netdev
    assert "hostfwd=tcp:127.0.0.1:2222-10.0.1.46:22" in netdev
    assert "virtio-net-pci,netdev=n0,mac=52:54:00:00:00:46" in args


def test_uefi_gets_a_private_variable_store_and_bios_the_pc_machine(tmp_path, monkeypatch):
    from nodekiln.images import machine

    firmware = tmp_path / "firmware"
    firmware.mkdir()
    for name in ("OVMF_VARS", "OVMF_VARS_MS"):
        (firmware / name).write_bytes(name.encode())
        monkeypatch.setattr(machine, name, firmware / name)
    work = tmp_path / "vm"
    work.mkdir()
    uefi = qemu.firmware_args("uefi", work)
    assert uefi[:2] == ["-machine", "q35"] and (work / "OVMF_VARS").read_bytes() == b"OVMF_VARS"
    assert f"if=pflash,format=raw,unit=1,file={work / 'OVMF_VARS'}" in uefi
    secure = qemu.firmware_args("uefi-secureboot", work)
    assert secure[:4] == ["-machine", "q35,smm=on", "-global", "driver=cfi.pflash01,property=secure,value=on"]
    assert f"if=pflash,format=raw,unit=0,readonly=on,file={machine.OVMF_CODE_SECBOOT}" in secure
    assert (work / "OVMF_VARS_MS").read_bytes() == b"OVMF_VARS_MS"  # Microsoft's keys, enforcing
    assert qemu.firmware_args("bios", tmp_path) == ["-machine", "pc"]
    with pytest.raises(ValueError):
        qemu.firmware_args("coreboot", tmp_path)


def test_the_iso_boots_first_from_cd_or_usb_and_is_never_written():
    cd = isoboot.medium_args(Path("/x.iso"), "cdrom")
    usb = isoboot.medium_args(Path("/x.iso"), "usb")
    assert "ide-cd,drive=medium,bootindex=0" in cd and "media=cdrom" in cd[1]
    assert any(a.startswith("usb-storage,") and "bootindex=0" in a for a in usb)
    assert all("readonly=on" in a for a in (cd[1], usb[1]))
    with pytest.raises(ValueError):
        isoboot.medium_args(Path("/x.iso"), "floppy")


def test_disk_format_from_the_magic(tmp_path):
    (tmp_path / "a").write_bytes(b"QFI\xfb" + bytes(60))
    (tmp_path / "b").write_bytes(bytes(64))
    assert qemu.disk_format(tmp_path / "a") == "qcow2" and qemu.disk_format(tmp_path / "b") == "raw"
    assert f"serial={isoboot.DATA_SERIAL}" in " ".join(isoboot.data_disk_args(tmp_path / "a"))


def test_under_tcg_a_guest_reboot_ends_qemu_and_the_console_is_kept_across_starts(tmp_path, monkeypatch):
    monkeypatch.setattr(qemu, "accelerator", lambda smm=False: "tcg")
    args = qemu.machine_args(memory_mib=512, cpus=1, console=tmp_path / "c.log")
    assert "-no-reboot" in args
    assert f"file,id=console,path={tmp_path / 'c.log'},append=on" in args
    monkeypatch.setattr(qemu, "accelerator", lambda smm=False: "kvm")
    assert "-no-reboot" not in qemu.machine_args(memory_mib=512, cpus=1, console=tmp_path / "c.log")


class _FakeGuest(qemu.VM):
    """A VM whose 'qemu' is a sleep: the first one ends by itself as a guest's reboot ends qemu
    under -no-reboot; the boot id changes once the machine was started again."""

    def boot_id(self) -> str:
        return "second" if self.proc.args[0] == "/bin/sh" else "first"

    def _ask_reboot(self) -> None:
        self.asked = getattr(self, "asked", 0) + 1


def test_a_power_cycling_reboot_starts_the_same_machine_again(tmp_path):
    from nodekiln.run import spawn, stop

    console = tmp_path / "console.log"
    console.write_text("first boot\n")
    first = spawn(["/bin/sleep", "0.5"], log=tmp_path / "qemu.log")
    vm = _FakeGuest(
        first,
        tmp_path,
        console,
        0,
        "u",
        tmp_path / "k",
        "10.0.0.2",
        "uefi",
        0.0,
        argv=["/bin/sh", "-c", "exec /bin/sleep 30", "-no-reboot"],
    )
    try:
        vm.reboot(timeout=30)
        assert vm.proc is not first and vm.alive() and vm.asked == 1
        assert "first boot" in console.read_text() and "power cycle" in console.read_text()
        assert {"shutdown_s", "reboot_s"} <= vm.timings.keys()
    finally:
        stop(vm.proc)


def test_a_vm_without_no_reboot_cannot_be_power_cycled(tmp_path):
    from nodekiln.run import spawn, stop

    proc = spawn(["/bin/sleep", "30"], log=tmp_path / "qemu.log")
    vm = qemu.VM(
        proc, tmp_path, tmp_path / "c", 0, "u", tmp_path / "k", "10.0.0.2", "uefi", 0.0, argv=["/bin/sleep", "30"]
    )
    try:
        with pytest.raises(ValueError, match="-no-reboot"):
            vm.reboot(power_cycle=True)
    finally:
        stop(proc)
