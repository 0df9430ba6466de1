"""Boot an appliance ISO in qemu the way a machine would: the ISO as a CD or a USB stick, a
local data disk (kept across guest reboots), a NIC with a chosen MAC, optionally a NoCloud
seed. Uses the disk-image harness (testing.qemu) for acceleration, SSH and testinfra.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from nodekiln.images.seed import write_seed_iso
from nodekiln.run import run
from testing.qemu import (
    VM,
    BootError,
    disk_format,
    firmware_args,
    free_port,
    launch,
    machine_args,
    network_args,
    seed_args,
    vm_workdir,
)

DATA_SERIAL = "NKDATA0001"


def medium_args(iso: Path, medium: str) -> list[str]:
    """The ISO as a CD (ide-cd) or a USB stick (usb-storage on xHCI), first in boot order."""
    drive = f"file={iso},if=none,id=medium,format=raw,readonly=on"
    if medium == "cdrom":
        return ["-drive", drive + ",media=cdrom", "-device", "ide-cd,drive=medium,bootindex=0"]
    if medium == "usb":
        return [
            "-drive",
            drive,
            "-device",
            "qemu-xhci,id=xhci",
            "-device",
            "usb-storage,bus=xhci.0,drive=medium,bootindex=0,removable=on",
        ]
    raise ValueError("medium must be cdrom or usb")


def data_disk_args(data_disk: Path) -> list[str]:
    """The local disk the appliance keeps its state on, with the serial its first boot looks for."""
    return [
        "-drive",
        f"file={data_disk},if=none,id=data,format={disk_format(data_disk)},cache=unsafe,discard=unmap",
        "-device",
        f"virtio-blk-pci,drive=data,serial={DATA_SERIAL}",
    ]


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
    with vm_workdir("nodekiln-isovm-", workdir) as work:
        if data_disk is None:
            data_disk = work / "data.qcow2"
            run(["qemu-img", "create", "-q", "-f", "qcow2", data_disk, f"{data_gib}G"])
        port = free_port()
        console = work / "console.log"
        argv = [
            *machine_args(memory_mib=memory_mib, cpus=cpus, console=console, smm=firmware == "uefi-secureboot"),
            *medium_args(iso.resolve(), medium),
            *data_disk_args(data_disk),
            *network_args(cidr=cidr, gateway=gateway, address=address, port=port, mac=mac),
        ]
        if seed_files:
            argv += seed_args(write_seed_iso(work / "seed.iso", seed_files))
        argv += firmware_args(firmware, work)
        with launch(
            argv,
            work,
            console,
            port=port,
            user=user,
            key=key,
            address=address,
            firmware=firmware,
            timeout=timeout,
            wait_ssh=wait_ssh,
            wait_cloud_init=wait_cloud_init,
        ) as vm:
            yield vm
