"""Secure Boot, for real: the built image's ESP holds the distribution's signed chain, OVMF with
Microsoft's keys enrolled and Secure Boot enforcing boots it (SMM on, as Debian's
40-edk2-x86_64-secure-enrolled firmware descriptor says), the node checks of
test_node_image.py pass there, and a disk whose BOOTX64.EFI is our own unsigned GRUB is refused.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from nodekiln.images import bootchain, disk, efi
from nodekiln.images.machine import OVMF_CODE_SECBOOT, OVMF_VARS_MS
from nodekiln.run import run, spawn, stop
from testing import qemu

from . import test_node_image as node_checks

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

SECURE_BOOT_VAR = "/sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c"


def _esp_and_root(image: Path, work: Path) -> tuple[Path, Path]:
    """The image's ESP and root file system as files (no loop device, no mount)."""
    raw = work / "disk.raw"
    run(["qemu-img", "convert", "-O", "raw", image, raw])
    table = json.loads(run(["sfdisk", "--json", raw]).output)["partitiontable"]
    parts = {p["name"]: p for p in table["partitions"]}
    out = []
    for name, file in (("esp", work / "esp.img"), ("root", work / "root.img")):
        p = parts[name]
        with open(raw, "rb") as src, open(file, "wb") as dst:
            src.seek(p["start"] * disk.SECTOR)
            left = p["size"] * disk.SECTOR
            while left:
                chunk = src.read(min(left, 1 << 24))
                dst.write(chunk)
                left -= len(chunk)
        out.append(file)
    raw.unlink()
    return out[0], out[1]


@pytest.fixture(scope="module")
def esp_files(node_image, tmp_path_factory) -> dict[str, bytes]:
    """Every file on the built image's ESP, and the kernel from its root (as `boot/<name>`)."""
    work = tmp_path_factory.mktemp("esp")
    esp, root = _esp_and_root(node_image.path, work)
    listing = run(["mdir", "-i", esp, "-/", "-b", "::/"], env={"MTOOLS_SKIP_CHECK": "1"}).output.split()
    files = {}
    for path in listing:
        if not path.endswith("/"):
            local = work / "f"
            run(["mcopy", "-n", "-i", esp, path, local], env={"MTOOLS_SKIP_CHECK": "1"})
            files[path.removeprefix("::/")] = local.read_bytes()
    manifest = json.loads(node_image.manifest.read_text())
    kernel = f"vmlinuz-{manifest['kernel']}"
    run(["debugfs", "-R", f"dump /boot/{kernel} {work / kernel}", root])
    files[f"boot/{kernel}"] = (work / kernel).read_bytes()
    return files


def test_the_esp_holds_shim_the_signed_grub_and_the_config_where_it_looks(esp_files, node_image, tmp_path):
    names = {k.lower() for k in esp_files}
    assert {"efi/boot/bootx64.efi", "efi/boot/grubx64.efi", "efi/boot/mmx64.efi", "efi/debian/grub.cfg"} <= names
    assert not any(n.endswith("fbx64.efi") for n in names)  # no fallback loader: no boot entries written
    by_name = {k.lower(): v for k, v in esp_files.items()}
    shim, grub = by_name["efi/boot/bootx64.efi"], by_name["efi/boot/grubx64.efi"]
    assert {s.issuer for s in efi.signers(shim)} >= {"Microsoft Corporation UEFI CA 2011"}
    image = efi.grub_image(grub)
    assert image.prefix == "/EFI/debian" and image.config == "normal (memdisk)/grub.cfg\n"
    memdisk = tmp_path / "memdisk.img"
    memdisk.write_bytes(image.memdisk)
    built_in = run(["mtype", "-i", memdisk, "::/grub.cfg"], env={"MTOOLS_SKIP_CHECK": "1"}).output
    assert "source $prefix/grub.cfg" in built_in  # so our config goes to $prefix on the ESP
    assert by_name["efi/debian/grub.cfg"].decode() == disk.early_cfg()
    # every module our own GRUB is built with for the same configs is in the signed one
    assert set(disk.GRUB_COMMON_MODULES) <= image.modules
    chain = json.loads(node_image.manifest.read_text())["bootChain"]
    assert chain["secureBoot"] == "supported"
    assert [link["stage"] for link in chain["links"]] == ["shim", "grub", "kernel"]
    assert chain["links"][1]["sha256"] == hashlib.sha256(grub).hexdigest()


def test_grub_and_the_kernel_verify_against_the_ca_shim_carries(esp_files, tmp_path):
    """sbverify (sbsigntool) checks the Authenticode signatures cryptographically."""
    if shutil.which("sbverify") is None:
        pytest.fail("sbverify is needed: apt-get install -y sbsigntool", pytrace=False)
    by_name = {k.lower(): v for k, v in esp_files.items()}
    ca = x509.load_der_x509_certificate(efi.vendor_certificate(by_name["efi/boot/bootx64.efi"]))
    pem = tmp_path / "vendor.pem"
    pem.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    kernel = next(v for k, v in esp_files.items() if k.startswith("boot/vmlinuz-"))
    for name, data in (("grubx64.efi", by_name["efi/boot/grubx64.efi"]), ("vmlinuz", kernel)):
        (tmp_path / name).write_bytes(data)
        ok = subprocess.run(["sbverify", "--cert", pem, tmp_path / name], capture_output=True, text=True)
        assert ok.returncode == 0, (name, ok.stdout, ok.stderr)
    # and the check is not vacuous: a byte changed in GRUB's code fails it
    bad = bytearray(by_name["efi/boot/grubx64.efi"])
    text = efi.sections(bytes(bad))[0]
    bad[text.raw_offset + 100] ^= 0xFF
    (tmp_path / "bad.efi").write_bytes(bad)
    assert subprocess.run(["sbverify", "--cert", pem, tmp_path / "bad.efi"], capture_output=True).returncode != 0


@pytest.fixture(scope="module")
def sb_vm(boots):
    for firmware in [f for f in boots.vms if f != "uefi-secureboot"]:  # one emulated VM at a time
        stop(boots.vms.pop(firmware).proc)
    return boots("uefi-secureboot")


@pytest.fixture(scope="module")
def sb_host(sb_vm):
    return sb_vm.testinfra_host()


def test_secure_boot_is_enforcing_and_the_kernel_locked_down(sb_host):
    assert sb_host.check_output(f"od -An -t u1 {SECURE_BOOT_VAR}").split()[-1] == "1"
    assert sb_host.check_output("cat /sys/kernel/security/lockdown") == "none [integrity] confidentiality"
    dmesg = sb_host.check_output("sudo dmesg")
    assert "Kernel is locked down from EFI Secure Boot" in dmesg
    assert "Loaded X.509 cert 'Debian Secure Boot CA" in dmesg


def test_lockdown_refuses_kexec_and_still_loads_signed_modules(sb_host):
    """kexec_load (x86_64 syscall 246) with no segments: refused, and the kernel says why. With
    Secure Boot on, IMA's architecture policy refuses it first (it cannot appraise a kernel given
    as memory: EACCES); lockdown would refuse it otherwise (EPERM). A module of the image (signed
    by Debian) still loads."""
    probe = (
        "import ctypes; l = ctypes.CDLL(None, use_errno=True); print(l.syscall(246, 0, 0, 0, 0), ctypes.get_errno())"
    )
    result, errno = sb_host.check_output(f"sudo python3 -c '{probe}'").split()
    assert result == "-1" and int(errno) in (1, 13), errno  # EPERM or EACCES
    said = sb_host.check_output("sudo dmesg")
    assert re.search(
        r"Lockdown: python3: kexec of unsigned images is restricted"
        r"|ima: impossible to appraise a kernel image without a file descriptor",
        said,
    ), said[-2000:]
    sb_host.run_expect([0], "sudo modprobe dummy")
    assert sb_host.check_output("lsmod | grep -c '^dummy '") == "1"


def _node_checks() -> list:
    """test_node_image's checks that need only the booted host (and the site or image), in that
    file's order: some rely on what an earlier one left (as they do on the UEFI boot)."""
    wanted = []
    for name, fn in inspect.getmembers(node_checks, inspect.isfunction):
        params = set(inspect.signature(fn).parameters)
        if name.startswith("test_") and "host" in params and params <= {"host", "test_site", "node_image"}:
            wanted.append(fn)
    return sorted(wanted, key=lambda fn: fn.__code__.co_firstlineno)


NODE_CHECKS = _node_checks()


@pytest.mark.parametrize("check", NODE_CHECKS, ids=[f.__name__.removeprefix("test_") for f in NODE_CHECKS])
def test_the_node_checks_pass_under_secure_boot(check, sb_host, test_site, node_image):
    given = {"host": sb_host, "test_site": test_site, "node_image": node_image}
    check(**{p: given[p] for p in inspect.signature(check).parameters})


def test_an_unsigned_bootx64_is_refused(node_image, sb_vm, tmp_path):
    """The same disk with our own grub-mkimage GRUB as BOOTX64.EFI (what secureBoot: off
    builds): the firmware refuses to start it."""
    stop(sb_vm.proc)  # done with the signed boot: one emulated VM at a time
    raw = tmp_path / "unsigned.raw"
    run(["qemu-img", "convert", "-O", "raw", node_image.path, raw])
    esp = next(
        p
        for p in json.loads(run(["sfdisk", "--json", raw]).output)["partitiontable"]["partitions"]
        if p["name"] == "esp"
    )
    _core, own = disk.make_grub_images(tmp_path, None, uefi=True)
    assert own is not None and not efi.signers(own.read_bytes())
    target = f"{raw}@@{esp['start'] * disk.SECTOR}"
    run(["mcopy", "-o", "-i", target, own, f"::/{bootchain.FIRST_STAGE}"], env={"MTOOLS_SKIP_CHECK": "1"})
    assert OVMF_CODE_SECBOOT.exists() and OVMF_VARS_MS.exists()
    console = tmp_path / "console.log"
    argv = [
        *qemu.machine_args(memory_mib=512, cpus=1, console=console, power_cycle=True, smm=True),
        *qemu.firmware_args("uefi-secureboot", tmp_path),
        "-drive",
        f"file={raw},if=virtio,format=raw",
    ]
    proc = spawn(argv, log=tmp_path / "qemu.log")
    try:
        deadline = time.monotonic() + 300
        seen = ""
        while time.monotonic() < deadline and "Access Denied" not in seen:
            time.sleep(2)
            seen = console.read_text(errors="replace") if console.exists() else ""
        assert re.search(r"failed to load Boot\d+ .*: Access Denied", seen), seen[-2000:]
        assert "Welcome to GRUB" not in seen and "nodekiln: loading the kernel" not in seen
    finally:
        stop(proc)
