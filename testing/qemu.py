"""Boot a node image in qemu and reach it over SSH: the harness image and ISO tests share.

The image is never written: the VM runs on a qcow2 overlay. cloud-init gets a NoCloud seed
ISO. Networking is qemu's user mode (slirp) with the site's own network (`net=` the site
CIDR, `host=` its gateway), so the node's STATIC address from the site works unchanged and
SSH to it is forwarded from a free local port. KVM is used when it really works (it is
started and watched), else TCG with every host core.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from nodekiln.errors import NodekilnError

# what a build needs of qemu lives in the product; the harness re-exports it for the tests
from nodekiln.images.machine import accel_args, ovmf_args
from nodekiln.images.machine import accelerator as accelerator
from nodekiln.images.machine import disk_format as disk_format
from nodekiln.images.machine import generate_ssh_key as generate_ssh_key
from nodekiln.images.seed import write_seed_iso
from nodekiln.run import run, spawn, stop


class BootError(NodekilnError):
    """The VM did not come up (died, or no SSH / cloud-init in time); carries the console tail."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class VM:
    """A running VM and how to reach it."""

    proc: subprocess.Popen[str]
    workdir: Path
    console: Path
    ssh_port: int
    user: str
    key: Path
    address: str
    firmware: str
    started: float
    argv: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def console_tail(self, lines: int = 30) -> list[str]:
        try:
            return self.console.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return []

    def alive(self) -> bool:
        return self.proc.poll() is None

    def ssh_client(self, timeout: float = 10.0):
        import logging

        import paramiko

        # While the guest boots, every refused handshake logs a traceback: keep them quiet.
        logging.getLogger("paramiko").setLevel(logging.CRITICAL)

        client = paramiko.SSHClient()
        # A fresh VM has fresh host keys every boot: nothing to pin.
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        client.connect(
            "127.0.0.1",
            port=self.ssh_port,
            username=self.user,
            key_filename=str(self.key),
            timeout=timeout,
            banner_timeout=timeout,
            auth_timeout=timeout,
            allow_agent=False,
            look_for_keys=False,
        )
        return client

    def ssh(self, command: str, timeout: float = 120.0) -> tuple[int, str]:
        """Run a command over SSH: (exit status, merged output)."""
        client = self.ssh_client()
        try:
            _, stdout, _ = client.exec_command(command, timeout=timeout, get_pty=False)
            stdout.channel.set_combine_stderr(True)
            out = stdout.read().decode(errors="replace")
            return stdout.channel.recv_exit_status(), out
        finally:
            client.close()

    def wait_ssh(self, deadline: float) -> None:
        last = ""
        while time.monotonic() < deadline:
            if not self.alive():
                raise BootError(self._why("qemu exited", last))
            try:
                code, out = self.ssh("true", timeout=15)
                if code == 0:
                    return
                last = out
            except Exception as exc:  # not up yet: refused, reset, banner timeout, auth
                last = f"{type(exc).__name__}: {exc}"
            time.sleep(2)
        raise BootError(self._why("no SSH in time", last))

    def wait_cloud_init(self, deadline: float) -> str:
        while True:
            left = max(5.0, deadline - time.monotonic())
            try:
                code, out = self.ssh("cloud-init status --wait --long", timeout=left)
                break
            except Exception as exc:
                # cloud-init restarts sshd on first boot (users, host keys): the connection is
                # reset right after SSH first answered; ask again while time is left
                if time.monotonic() >= deadline or not self.alive():
                    raise BootError(
                        self._why("SSH kept failing while waiting for cloud-init", f"{type(exc).__name__}: {exc}")
                    ) from None
                time.sleep(3)
        if code not in (0, 2):  # 2: done with recoverable errors (deprecations)
            raise BootError(self._why(f"cloud-init status exit {code}", out))
        return out

    def testinfra_host(self):
        import testinfra

        return testinfra.get_host(
            f"paramiko://{self.user}@127.0.0.1:{self.ssh_port}",
            ssh_identity_file=str(self.key),
            ssh_config=str(self._ssh_config()),
        )

    def _ssh_config(self) -> Path:
        config = self.workdir / "ssh_config"
        config.write_text(
            "Host *\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n"
            f"  IdentityFile {self.key}\n  IdentitiesOnly yes\n"
        )
        return config

    def _why(self, what: str, last: str) -> str:
        tail = "\n".join(f"  | {line}" for line in self.console_tail())
        return f"VM ({self.firmware}) {what}; last SSH answer: {last}\nconsole ({self.console}):\n{tail}"

    def boot_id(self) -> str:
        code, out = self.ssh("cat /proc/sys/kernel/random/boot_id", timeout=10)
        if code != 0:
            raise BootError(self._why("could not read the boot id", out))
        return out.strip()

    def reboot(self, timeout: float = 600.0, *, power_cycle: bool | None = None) -> None:
        """Reboot the guest and wait until SSH answers again with a new boot id.

        The guest always reboots itself (`systemctl reboot`: the shutdown path is its own).
        Under TCG qemu runs with `-no-reboot`, so that reboot ends the qemu process and the
        same machine (disk overlay, OVMF variable store, SSH port) is started again — a power
        cycle. Why: a warm reset inside one TCG process made OVMF take 22–122 s and GRUB
        20–58 s to read the initramfs (8–12 s and 1 s after a fresh start); a boot that looked
        stopped was that emulator slowness (README, "Reboots under emulation"). With KVM, or
        power_cycle=False, the reset stays in the process, as on hardware.
        """
        cycle = self.power_cycles if power_cycle is None else power_cycle
        if cycle and not self.power_cycles:
            raise ValueError("this VM was started without -no-reboot: it cannot be power-cycled")
        before = self.boot_id()
        started = time.monotonic()
        deadline = started + timeout
        self._ask_reboot()
        if self.power_cycles:
            self._wait_exit(deadline)
            self.timings["shutdown_s"] = round(time.monotonic() - started, 1)
            if not cycle:
                raise BootError(self._why("qemu exited at the reset (it runs with -no-reboot)", ""))
            self._append_console(f"nodekiln-test: power cycle after {self.timings['shutdown_s']} s of shutdown")
            self.proc = spawn(self.argv, log=self.workdir / "qemu.log")
        resent = False
        while time.monotonic() < deadline:
            time.sleep(3)
            if not self.alive():
                raise BootError(self._why("qemu exited during the reboot", ""))
            try:
                if self.boot_id() != before:
                    self.timings["reboot_s"] = round(time.monotonic() - started, 1)
                    return
            except Exception:
                continue
            # Still the old boot after two minutes: the reboot request was lost (SSH closed
            # before systemd took it); ask once more.
            if not resent and time.monotonic() - started > 120:
                resent = True
                self._ask_reboot()
        raise BootError(self._why("did not come back after reboot", ""))

    @property
    def power_cycles(self) -> bool:
        return "-no-reboot" in self.argv

    def _ask_reboot(self) -> None:
        with contextlib.suppress(Exception):  # the connection drops as the guest goes down
            self.ssh("sudo systemctl reboot", timeout=10)

    def _wait_exit(self, deadline: float) -> None:
        while self.proc.poll() is None:
            if time.monotonic() >= deadline:
                raise BootError(self._why("did not shut down for the reboot", ""))
            time.sleep(1)
        if self.proc.returncode != 0:
            raise BootError(self._why(f"qemu exited {self.proc.returncode} at the reboot", ""))

    def _append_console(self, line: str) -> None:
        with open(self.console, "a", encoding="utf-8") as handle:
            handle.write(f"\n{line}\n")


def cloud_config(hostname: str, user: str, public_key: str) -> str:
    """A minimal user-data: the user, its key, passwordless sudo, the hostname.

    Stand-in until the tests use `nodekiln.bootstrap.render` output (see tests/image/conftest.py).
    """
    return (
        "#cloud-config\n"
        f"hostname: {hostname}\n"
        f"fqdn: {hostname}\n"
        "users:\n"
        f"  - name: {user}\n"
        "    shell: /bin/bash\n"
        "    sudo: ALL=(ALL) NOPASSWD:ALL\n"
        "    lock_passwd: true\n"
        f"    ssh_authorized_keys: [{public_key!r}]\n"
    )


def network_config(address: str, cidr: str, gateway: str, dns: list[str]) -> str:
    """Static network-config v2 for eth0 (the image names NICs ethN everywhere)."""
    net = ipaddress.ip_network(cidr)
    nameservers = f"      nameservers: {{addresses: [{', '.join(dns)}]}}\n" if dns else ""
    return (
        "version: 2\n"
        "ethernets:\n"
        "  eth0:\n"
        f"      addresses: [{address}/{net.prefixlen}]\n"
        f"      routes: [{{to: 0.0.0.0/0, via: {gateway}}}]\n"  # cloud-init 22.4 rejects to: default
        f"{nameservers}"
    )


def machine_args(
    *, memory_mib: int, cpus: int | None, console: Path, power_cycle: bool | None = None, smm: bool = False
) -> list[str]:
    """qemu with the accelerator, memory, cores, and the serial console appended to a file
    (kept across restarts of the same machine).

    power_cycle (default: under TCG) adds -no-reboot: a guest reboot ends qemu, and
    `VM.reboot()` starts the machine again (see there for why).
    """
    cycle = accelerator(smm) == "tcg" if power_cycle is None else power_cycle
    return [
        "qemu-system-x86_64",
        *accel_args(smm),
        "-m",
        str(memory_mib),
        "-smp",
        str(cpus or os.cpu_count() or 2),
        "-display",
        "none",
        "-nodefaults",
        "-chardev",
        f"file,id=console,path={console},append=on",
        "-serial",
        "chardev:console",
        "-monitor",
        "none",
        *(["-no-reboot"] if cycle else []),
    ]


def network_args(*, cidr: str, gateway: str, address: str, port: int, mac: str | None = None) -> list[str]:
    """User-mode networking on the site's own subnet; SSH to `address` forwarded from `port`."""
    net = ipaddress.ip_network(cidr)
    return [
        "-netdev",
        f"user,id=n0,net={net},host={gateway},hostfwd=tcp:127.0.0.1:{port}-{address}:22",
        "-device",
        "virtio-net-pci,netdev=n0" + (f",mac={mac}" if mac else ""),
        "-device",
        "virtio-rng-pci",
    ]


def seed_args(seed: Path) -> list[str]:
    """The NoCloud seed ISO as a read-only virtio disk."""
    return ["-drive", f"file={seed},if=virtio,format=raw,readonly=on"]


FIRMWARES = ("uefi", "uefi-secureboot", "bios")


def firmware_args(firmware: str, work: Path) -> list[str]:
    """uefi: q35 + OVMF (a private copy of the variable store); uefi-secureboot: the same with
    OVMF's SMM build, Microsoft's keys enrolled and Secure Boot enforcing (the flash marked
    secure so only SMM writes the variables, as libvirt does for `secure='yes'`); bios: the
    i440fx `pc` machine and SeaBIOS, what most OpenStack clouds default to."""
    if firmware in ("uefi", "uefi-secureboot"):
        return ovmf_args(work, secure_boot=firmware == "uefi-secureboot")
    if firmware == "bios":
        return ["-machine", "pc"]
    raise ValueError(f"firmware must be one of {', '.join(FIRMWARES)}")


@contextlib.contextmanager
def vm_workdir(prefix: str, parent: Path | None = None) -> Iterator[Path]:
    """A folder for one VM's files, removed afterwards (kept with NODEKILN_KEEP_VM=1)."""
    work = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        yield work
    finally:
        if os.environ.get("NODEKILN_KEEP_VM"):
            print(f"kept VM files in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


@contextlib.contextmanager
def launch(
    argv: list[str],
    work: Path,
    console: Path,
    *,
    port: int,
    user: str,
    key: Path,
    address: str,
    firmware: str,
    timeout: float,
    wait_ssh: bool = True,
    wait_cloud_init: bool = True,
) -> Iterator[VM]:
    """Start qemu; yield the VM once SSH (and cloud-init) answer, or at once with wait_ssh=False.
    qemu is always stopped."""
    started = time.monotonic()
    vm = VM(
        spawn(argv, log=work / "qemu.log"),
        work,
        console,
        port,
        user,
        key,
        address,
        firmware,
        started,
        argv=list(map(str, argv)),
    )
    try:
        deadline = started + timeout
        if wait_ssh:
            vm.wait_ssh(deadline)
            vm.timings["ssh_s"] = round(time.monotonic() - started, 1)
            if wait_cloud_init:
                vm.wait_cloud_init(deadline)
                vm.timings["cloud_init_s"] = round(time.monotonic() - started, 1)
        yield vm
    finally:
        stop(vm.proc)  # the process a power-cycling reboot started, if any


@contextlib.contextmanager
def boot(
    image: Path,
    seed_files: Mapping[str, bytes | str],
    *,
    address: str,
    cidr: str,
    gateway: str,
    user: str,
    key: Path,
    firmware: str = "uefi",
    memory_mib: int = 2048,
    cpus: int | None = None,
    disk_gib: int | None = None,
    timeout: float = 600.0,
    wait_cloud_init: bool = True,
    workdir: Path | None = None,
    power_cycle: bool | None = None,
) -> Iterator[VM]:
    """Boot `image` copy-on-write with a NoCloud seed; yield the VM once SSH and cloud-init are
    done. The VM is always killed and its files removed, whatever happens.

    firmware: "uefi" (q35 + OVMF), "uefi-secureboot" (the same, Secure Boot enforcing) or "bios"
    (SeaBIOS on the `pc` machine).
    power_cycle: whether a guest reboot ends qemu for `VM.reboot` to start it again (default:
    under TCG); False keeps the warm reset inside the process (the reboot loop's --warm).
    """
    if firmware not in FIRMWARES:
        raise ValueError(f"firmware must be one of {', '.join(FIRMWARES)}")
    with vm_workdir("nodekiln-vm-", workdir) as work:
        overlay = work / "disk.qcow2"
        run(
            [
                "qemu-img",
                "create",
                "-q",
                "-f",
                "qcow2",
                "-b",
                image.resolve(),
                "-F",
                disk_format(image),
                overlay,
                *([f"{disk_gib}G"] if disk_gib else []),
            ]
        )
        seed = write_seed_iso(work / "seed.iso", seed_files)
        port = free_port()
        console = work / "console.log"
        argv = [
            *machine_args(
                memory_mib=memory_mib,
                cpus=cpus,
                console=console,
                power_cycle=power_cycle,
                smm=firmware == "uefi-secureboot",
            ),
            "-drive",
            f"file={overlay},if=virtio,format=qcow2,discard=unmap,cache=unsafe",
            *seed_args(seed),
            *network_args(cidr=cidr, gateway=gateway, address=address, port=port),
            *firmware_args(firmware, work),
        ]
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
            wait_cloud_init=wait_cloud_init,
        ) as vm:
            yield vm
