"""What a build needs to know about this machine's qemu: the accelerator that really works here,
the firmware files, the format of a disk, a throw-away SSH key for a build VM."""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from pathlib import Path

from nodekiln.errors import NodekilnError
from nodekiln.run import run

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
# Debian's ovmf (README.Debian, /usr/share/qemu/firmware/40-edk2-x86_64-secure-enrolled.json):
# the Secure Boot build needs SMM, and the .ms variable store has Microsoft's keys in db and
# Secure Boot already enforcing, as on a PC from the shop.
OVMF_CODE_SECBOOT = Path("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd")
OVMF_VARS_MS = Path("/usr/share/OVMF/OVMF_VARS_4M.ms.fd")


def ovmf_args(work: Path, secure_boot: bool = False) -> list[str]:
    """q35 with OVMF: the firmware read-only, a private copy of its variable store in `work`.
    secure_boot: OVMF's SMM build and the store with Microsoft's keys, Secure Boot enforcing;
    the flash is marked secure so only SMM code writes the variables (edk2 OvmfPkg/README,
    libvirt's `secure='yes'` loader)."""
    code, template = (OVMF_CODE_SECBOOT, OVMF_VARS_MS) if secure_boot else (OVMF_CODE, OVMF_VARS)
    variables = work / template.name
    shutil.copyfile(template, variables)
    return [
        "-machine",
        "q35,smm=on" if secure_boot else "q35",
        *(["-global", "driver=cfi.pflash01,property=secure,value=on"] if secure_boot else []),
        "-drive",
        f"if=pflash,format=raw,unit=0,readonly=on,file={code}",
        "-drive",
        f"if=pflash,format=raw,unit=1,file={variables}",
    ]


class _Verdict(Exception):
    def __init__(self, works: bool):
        self.works = works


# What qemu prints when KVM cannot run the guest's code: nested KVM without the CPU
# features (an "emulation failure" in firmware, then a paused guest), or without SMM.
KVM_FAILURES = ("KVM internal error", "emulation failure", "failed to set MSR", "not supported by this hypervisor")
FIRMWARE_REACHED = "BdsDxe"  # OVMF's boot manager: everything before it ran


@functools.cache
def accelerator(smm: bool = False) -> str:
    """'kvm' if a KVM guest really runs here, else 'tcg'. NODEKILN_QEMU_ACCEL overrides.

    /dev/kvm existing is not enough, nor is a guest that starts: on hosts with nested
    virtualisation but not the CPU features qemu aborts ("failed to set MSR 0x10a"), or OVMF
    stops at its first instructions with "KVM internal error ... emulation failure" and the
    guest hangs. So OVMF itself is started and must reach its boot manager. `smm`: the
    machine Secure Boot needs (q35 with SMM, OVMF's SMM build), which some KVMs lack.
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
    code, template = (OVMF_CODE_SECBOOT, OVMF_VARS_MS) if smm else (OVMF_CODE, OVMF_VARS)
    if not (code.exists() and template.exists()):
        return "tcg"

    def judge(line: str) -> None:
        if FIRMWARE_REACHED in line:
            raise _Verdict(True)
        if any(f in line for f in KVM_FAILURES):
            raise _Verdict(False)

    with tempfile.TemporaryDirectory(prefix="nodekiln-kvm-probe-") as tmp:
        argv = [
            "qemu-system-x86_64",
            "-accel",
            "kvm",
            "-cpu",
            "host",
            "-m",
            "256",
            "-display",
            "none",
            "-nodefaults",
            "-no-reboot",
            "-monitor",
            "none",
            "-serial",
            "stdio",
            *ovmf_args(Path(tmp), secure_boot=smm),
        ]
        try:
            run(argv, check=False, timeout=30, capture=False, on_line=judge)
        except _Verdict as verdict:
            return "kvm" if verdict.works else "tcg"
        except (TimeoutError, NodekilnError):
            return "tcg"
    return "tcg"  # qemu ended before the firmware got anywhere


def accel_args(smm: bool = False) -> list[str]:
    if accelerator(smm) == "kvm":
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
