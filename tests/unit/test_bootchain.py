"""The boot-chain reader (nodekiln.images.efi) and what nodekiln does with it
(nodekiln.images.bootchain): on well-formed stand-in binaries (tests/efi_fixtures.py); the real
Debian binaries are checked in tests/image/test_secure_boot.py."""

from __future__ import annotations

import pytest

from nodekiln.images import bootchain, disk, efi
from tests.efi_fixtures import make_cert, make_chain, pe, signature, write_chain

KERNEL = "vmlinuz-6.1.0-1-cloud-amd64"


def test_sections_with_long_names_and_no_signature():
    image = pe({".text": b"code", ".vendor_cert": b"v" * 20})
    assert [s.name for s in efi.sections(image)] == [".text", ".vendor_cert"]
    assert efi.section_bytes(image, ".vendor_cert") == b"v" * 20
    assert efi.signatures(image) == [] and efi.signers(image) == []


def test_signers_name_the_signing_certificate_not_its_issuer():
    ca = make_cert("Some CA")
    leaf = make_cert("Some Signer", ca)
    other = make_cert("Other Signer")
    image = pe({".text": b"x"}, [signature(leaf, ca), signature(other, None)])
    assert [(s.subject, s.issuer) for s in efi.signers(image)] == [
        ("Some Signer", "Some CA"),
        ("Other Signer", "Other Signer"),
    ]


def test_not_a_pe_image_is_said_so():
    with pytest.raises(efi.PeError, match="no MZ"):
        efi.sections(b"kernel")
    with pytest.raises(efi.PeError, match="GRUB"):
        efi.grub_image(pe({".text": b"x"}))
    with pytest.raises(efi.PeError, match="shim"):
        efi.vendor_certificate(pe({".text": b"x"}))


def test_grub_image_prefix_config_and_modules():
    chain = make_chain()
    grub = efi.grub_image(chain.grub)
    assert grub.prefix == "/EFI/test"
    assert grub.config == "normal (memdisk)/grub.cfg\n"
    assert {"part_gpt", "ext2", "search_label", "linux"} <= grub.modules
    assert efi.grub_image(chain.cd_grub).prefix == "/boot/grub"


def test_a_consistent_chain_passes_and_goes_where_shim_and_grub_look(tmp_path):
    chain = make_chain()
    write_chain(tmp_path, chain, KERNEL)
    signed = bootchain.signed_chain(tmp_path, KERNEL)
    assert signed.vendor_ca == "Test Secure Boot CA"
    bootchain.check(signed)
    files = bootchain.esp_files(signed, "early config")
    assert files == {
        "EFI/BOOT/BOOTX64.EFI": chain.shim,
        "EFI/BOOT/grubx64.efi": chain.grub,
        "EFI/BOOT/mmx64.efi": chain.mok_manager,
        "EFI/test/grub.cfg": b"early config",  # the signed GRUB's own prefix, read from it
    }
    cd = bootchain.signed_chain(tmp_path, KERNEL, bootchain.CD_GRUB)
    assert "boot/grub/grub.cfg" in bootchain.esp_files(cd, "x")


def test_a_kernel_from_another_signer_is_refused_by_name(tmp_path):
    stranger = make_cert("Someone Else")
    write_chain(tmp_path, make_chain(kernel_signer=stranger), KERNEL)
    with pytest.raises(bootchain.BootChainError) as e:
        bootchain.check(bootchain.signed_chain(tmp_path, KERNEL))
    assert "the kernel vmlinuz-6.1.0-1-cloud-amd64 is signed by Someone Else" in str(e.value)
    assert "Test Secure Boot CA" in str(e.value)


def test_an_unsigned_grub_is_refused(tmp_path):
    write_chain(tmp_path, make_chain(grub_signed=False), KERNEL)
    with pytest.raises(bootchain.BootChainError, match="GRUB is not signed"):
        bootchain.check(bootchain.signed_chain(tmp_path, KERNEL))


def test_a_tree_without_the_chain_names_the_step_and_the_way_out(tmp_path):
    (tmp_path / "boot").mkdir()
    (tmp_path / "boot" / KERNEL).write_bytes(b"k")
    with pytest.raises(bootchain.BootChainError) as e:
        bootchain.signed_chain(tmp_path, KERNEL)
    assert "12-boot-chain" in str(e.value) and "secureBoot: off" in str(e.value)


def test_secure_boot_off_puts_our_own_grub_there_and_nothing_else(tmp_path):
    own = tmp_path / "BOOTX64.EFI"
    own.write_bytes(b"grub-mkimage output")
    assert disk.efi_files(tmp_path, KERNEL, "off", "cfg", own) == {"EFI/BOOT/BOOTX64.EFI": b"grub-mkimage output"}


def test_the_manifest_records_each_link_with_package_version_and_signer(tmp_path):
    chain = make_chain()
    write_chain(tmp_path, chain, KERNEL)
    info = tmp_path / "var/lib/dpkg/info"
    info.mkdir(parents=True)
    (info / "linux-image-6.1.0-1-cloud-amd64.list").write_text(f"/boot\n/boot/{KERNEL}\n")
    record = bootchain.record(tmp_path, KERNEL, "required", {"linux-image-6.1.0-1-cloud-amd64": "6.1.1-1"})
    assert record["secureBoot"] == "required"
    shim, grub, kernel = record["links"]
    assert (shim["stage"], shim["package"], shim["version"], shim["trusts"]) == (
        "shim",
        "shim-signed",
        "1.51",
        "Test Secure Boot CA",
    )
    assert shim["signers"] == [{"subject": "Test UEFI Driver Publisher", "issuer": "Test UEFI CA"}]
    assert (grub["esp"], grub["version"], grub["prefix"]) == ("EFI/BOOT/grubx64.efi", "1+2.06", "/EFI/test")
    assert (kernel["package"], kernel["version"]) == ("linux-image-6.1.0-1-cloud-amd64", "6.1.1-1")
    assert kernel["signers"] == [{"subject": "Test Secure Boot Signer", "issuer": "Test Secure Boot CA"}]
    off = bootchain.record(tmp_path, KERNEL, "off", {})
    assert off["links"][0] == {"stage": "grub", "esp": "EFI/BOOT/BOOTX64.EFI", "builtBy": "grub-mkimage", "signers": []}


def test_the_build_report_names_each_link_and_its_signer(tmp_path):
    write_chain(tmp_path, make_chain(), KERNEL)
    line = bootchain.summary(bootchain.record(tmp_path, KERNEL, "supported", {}))
    assert line == (
        "boot chain (secureBoot: supported): shim 1.51 signed by Test UEFI CA → GRUB 1+2.06 signed by "
        "Test Secure Boot CA → kernel signed by Test Secure Boot CA"
    )
    off = bootchain.summary(bootchain.record(tmp_path, KERNEL, "off", {}))
    assert off.startswith("boot chain (secureBoot: off): GRUB (grub-mkimage) unsigned → kernel")
