"""Boot an appliance ISO in qemu the way a machine would: the ISO as a CD or a USB stick, a
local data disk (kept across guest reboots), a NIC with a chosen MAC, optionally a NoCloud
seed. Uses the disk-image harness (nodekiln.qemu) for acceleration, SSH and testinfra.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from nodekiln.qemu import OVMF_CODE, OVMF_VARS, VM, BootError, accel_args, free_port
from nodekiln.run import run, spawn, stop
from nodekiln.seed import write_seed_iso

DATA_SERIAL = "NKDATA0001"


def qemu_argv(iso: Path, *, firmware: str, medium: str, data_disk: Path, data_format: str,
              console: Path, netdev: str, mac: str | None, seed: Path | None, memory_mib: int,
              cpus: int, vars_file: Path | None) -> list[str]:
    """The VM: firmware, the ISO as CD (ide-cd) or USB stick (usb-storage), the data disk."""
    if medium not in ("cdrom", "usb"):
        raise ValueError("medium must be cdrom or usb")
    argv = [
        "qemu-system-x86_64", *accel_args(), "-m", str(memory_mib), "-smp", str(cpus),
        "-display", "none", "-nodefaults", "-serial", f"file:{console}", "-monitor", "none",
        "-drive", f"file={iso},if=none,id=medium,format=raw,readonly=on" + (",media=cdrom" if medium == "cdrom" else ""),
    ]
    if medium == "cdrom":
        argv += ["-device", "ide-cd,drive=medium,bootindex=0"]
    else:
        argv += ["-device", "qemu-xhci,id=xhci", "-device", "usb-storage,bus=xhci.0,drive=medium,bootindex=0,removable=on"]
    argv += [
        "-drive", f"file={data_disk},if=none,id=data,format={data_format},cache=unsafe,discard=unmap",
        "-device", f"virtio-blk-pci,drive=data,serial={DATA_SERIAL}",
        "-netdev", netdev,
        "-device", "virtio-net-pci,netdev=n0" + (f",mac={mac}" if mac else ""),
        "-device", "virtio-rng-pci",
    ]
    if seed is not None:
        argv += ["-drive", f"file={seed},if=virtio,format=raw,readonly=on"]
    if firmware == "uefi":
        argv += ["-machine", "q35",
                 "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
                 "-drive", f"if=pflash,format=raw,unit=1,file={vars_file}"]
    elif firmware == "bios":
        argv += ["-machine", "pc"]
    else:
        raise ValueError("firmware must be uefi or bios")
    return argv


def wait_console(vm: VM, text: str, deadline: float) -> str:
    """Wait until the serial console shows `text`; return the console so far."""
    while time.monotonic() < deadline:
        seen = vm.console.read_text(errors="replace") if vm.console.exists() else ""
        if text in seen:
            return seen
        if not vm.alive():
            raise BootError(vm._why("qemu exited", ""))
        time.sleep(1)
    raise BootError(vm._why(f"console never showed {text!r}", ""))


def wait_for_cloud_init(vm: VM, deadline: float) -> None:
    """cloud-init done, riding out the SSH restart its ssh module makes on a first boot
    (new host keys): a connection reset there is retried, not a failure."""
    while True:
        try:
            vm.wait_cloud_init(deadline)
            return
        except BootError:
            raise
        except Exception:  # reset or refused while sshd restarts
            if time.monotonic() > deadline:
                raise
            time.sleep(3)
            vm.wait_ssh(deadline)


@contextlib.contextmanager
def boot_iso(
    iso: Path,
    *,
    address: str,
    cidr: str,
    gateway: str,
    user: str,
    key: Path,
    firmware: str = "uefi",
    medium: str = "cdrom",
    mac: str | None = None,
    seed_files: Mapping[str, bytes | str] | None = None,
    data_disk: Path | None = None,
    data_gib: int = 8,
    memory_mib: int = 2048,
    cpus: int | None = None,
    timeout: float = 480.0,
    wait_ssh: bool = True,
    wait_cloud_init: bool = True,
    workdir: Path | None = None,
) -> Iterator[VM]:
    """Boot `iso` (never written) with a data disk: `data_disk` as given (a raw or qcow2 file
    the VM writes to), else a blank qcow2 of `data_gib`. Yields the VM once SSH (and
    cloud-init) answer, or at once with wait_ssh=False. The VM is always killed."""
    work = Path(tempfile.mkdtemp(prefix="nodekiln-isovm-", dir=workdir))
    proc = None
    try:
        if data_disk is None:
            data_disk = work / "data.qcow2"
            run(["qemu-img", "create", "-q", "-f", "qcow2", data_disk, f"{data_gib}G"])
        with open(data_disk, "rb") as f:
            data_format = "qcow2" if f.read(4) == b"QFI\xfb" else "raw"
        seed = write_seed_iso(work / "seed.iso", seed_files) if seed_files else None
        vars_file = None
        if firmware == "uefi":
            vars_file = work / "OVMF_VARS.fd"
            shutil.copy(OVMF_VARS, vars_file)
        port = free_port()
        net = ipaddress.ip_network(cidr)
        netdev = f"user,id=n0,net={net},host={gateway},hostfwd=tcp:127.0.0.1:{port}-{address}:22"
        console = work / "console.log"
        argv = qemu_argv(iso.resolve(), firmware=firmware, medium=medium, data_disk=data_disk,
                         data_format=data_format, console=console, netdev=netdev, mac=mac, seed=seed,
                         memory_mib=memory_mib, cpus=cpus or os.cpu_count() or 2, vars_file=vars_file)
        started = time.monotonic()
        proc = spawn(argv, log=work / "qemu.log")
        vm = VM(proc, work, console, port, user, key, address, firmware, started)
        deadline = started + timeout
        if wait_ssh:
            vm.wait_ssh(deadline)
            vm.timings["ssh_s"] = round(time.monotonic() - started, 1)
            if wait_cloud_init:
                wait_for_cloud_init(vm, deadline)
                vm.timings["cloud_init_s"] = round(time.monotonic() - started, 1)
        yield vm
    finally:
        if proc is not None:
            stop(proc)
        if os.environ.get("NODEKILN_KEEP_VM"):
            print(f"kept VM files in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
