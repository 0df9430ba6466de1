"""What a build needs to know about this machine's qemu: the accelerator that really works here,
the firmware files, the format of a disk, a throw-away SSH key for a build VM."""

from __future__ import annotations

import functools
import os
from pathlib import Path

from nodekiln.errors import NodekilnError
from nodekiln.run import run

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")


@functools.cache
def accelerator() -> str:
    """'kvm' if a KVM guest really starts here, else 'tcg'. NODEKILN_QEMU_ACCEL overrides.

    /dev/kvm existing is not enough: on hosts without VT-x/AMD-V passthrough qemu aborts
    ("failed to set MSR 0x10a") or crawls, so a tiny guest is started and must exit cleanly.
    """
    forced = os.environ.get("NODEKILN_QEMU_ACCEL")
    if forced in ("kvm", "tcg"):
        return forced
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg"
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    if " vmx" not in cpuinfo and " svm" not in cpuinfo and "hypervisor" not in cpuinfo:
        return "tcg"
    try:
        result = run(
            [
                "qemu-system-x86_64",
                "-accel",
                "kvm",
                "-machine",
                "q35",
                "-cpu",
                "host",
                "-m",
                "64",
                "-display",
                "none",
                "-nodefaults",
                "-no-reboot",
                "-monitor",
                "stdio",
                "-S",
            ],
            input="cont\nquit\n",
            check=False,
            timeout=20,
        )
    except (TimeoutError, NodekilnError):
        return "tcg"
    bad = ("failed to set MSR", "KVM_", "Could not access KVM", "kvm: ")
    return "kvm" if result.returncode == 0 and not any(b in result.output for b in bad) else "tcg"


def accel_args() -> list[str]:
    if accelerator() == "kvm":
        return ["-accel", "kvm", "-cpu", "host"]
    return ["-accel", "tcg,thread=multi", "-cpu", "max"]


def generate_ssh_key(directory: Path) -> tuple[Path, str]:
    """A fresh ed25519 key pair: (private key file, public key line)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = directory / "id_ed25519"
    private.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
    )
    private.chmod(0o600)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    line = public.decode() + " nodekiln-build"
    (directory / "id_ed25519.pub").write_text(line + "\n")
    return private, line


def disk_format(image: Path) -> str:
    """qcow2 or raw, from the file's magic (what qemu's -drive format= must say)."""
    with open(image, "rb") as f:
        return "qcow2" if f.read(4) == b"QFI\xfb" else "raw"
