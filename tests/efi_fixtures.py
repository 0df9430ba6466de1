"""Small but well-formed UEFI binaries for unit tests: PE32+ images with an Authenticode-shaped
certificate table (PKCS#7 SignedData made with cryptography, certificates included), a shim-like
image with a `.vendor_cert` section, and a GRUB-like image with a `mods` section.

Built from the layouts nodekiln.images.efi reads (and names its sources for); the real Debian
binaries are read in the image tests, where the built tree has them.
"""

from __future__ import annotations

import datetime as dt
import struct
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs7


@dataclass
class Cert:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate


def make_cert(name: str, issuer: Cert | None = None) -> Cert:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
    )
    return Cert(key, builder.sign(issuer.key if issuer else key, hashes.SHA256()))


def signature(signer: Cert, issuer: Cert | None) -> bytes:
    builder = (
        pkcs7.PKCS7SignatureBuilder().set_data(b"image digest").add_signer(signer.cert, signer.key, hashes.SHA256())
    )
    if issuer is not None:
        builder = builder.add_certificate(issuer.cert)
    return builder.sign(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary])


def pe(sections: dict[str, bytes], signatures: list[bytes] = ()) -> bytes:  # type: ignore[assignment]
    """A PE32+ image with the given sections (long names through the COFF string table) and a
    certificate table holding `signatures` (WIN_CERTIFICATE, PKCS#7, 8-byte aligned)."""
    names = list(sections)
    strings = b""
    raw_names = []
    for name in names:
        if len(name) > 8:
            raw_names.append(f"/{4 + len(strings)}".encode())
            strings += name.encode() + b"\0"
        else:
            raw_names.append(name.encode())
    optional_size = 112 + 16 * 8
    headers_end = 0x40 + 24 + optional_size + 40 * len(names)
    offset = (headers_end + 511) // 512 * 512
    body = b""
    table = []
    for name, raw in zip(names, raw_names, strict=True):
        data = sections[name]
        table.append(
            struct.pack(
                "<8sIIIIIIHHI", raw, len(data), 0x1000 + len(body), len(data), offset + len(body), 0, 0, 0, 0, 0
            )
        )
        body += data + b"\0" * (-len(data) % 512)
    symbols_at = offset + len(body)
    string_table = struct.pack("<I", 4 + len(strings)) + strings
    string_table += b"\0" * (-len(string_table) % 8)
    certs = b""
    for blob in signatures:
        entry = struct.pack("<IHH", 8 + len(blob), 0x0200, 0x0002) + blob
        certs += entry + b"\0" * (-len(entry) % 8)
    certs_at = symbols_at + len(string_table)
    dos = bytearray(0x40)
    dos[:2] = b"MZ"
    struct.pack_into("<I", dos, 0x3C, 0x40)
    coff = b"PE\0\0" + struct.pack(
        "<HHIIIHH", 0x8664, len(names), 0, symbols_at if strings else 0, 0, optional_size, 0x22
    )
    optional = bytearray(optional_size)
    struct.pack_into("<H", optional, 0, 0x20B)
    struct.pack_into("<I", optional, 108, 16)
    if certs:
        struct.pack_into("<II", optional, 112 + 8 * 4, certs_at, len(certs))
    head = bytes(dos) + coff + bytes(optional) + b"".join(table)
    return head + b"\0" * (offset - len(head)) + body + string_table + certs


def vendor_cert_section(ca: Cert) -> bytes:
    der = ca.cert.public_bytes(serialization.Encoding.DER)
    return struct.pack("<IIII", len(der), 0, 16, 16 + len(der)) + der


def elf_module(name: str) -> bytes:
    """An ELF64 object whose only content is a `.modname` section, as GRUB modules carry."""
    shstrtab = b"\0.shstrtab\0.modname\0"
    modname = name.encode() + b"\0"
    data_at = 64
    shoff = data_at + len(shstrtab) + len(modname)
    shoff += -shoff % 8
    header = bytearray(64)
    header[:4] = b"\x7fELF"
    header[4] = 2  # 64-bit
    struct.pack_into("<Q", header, 0x28, shoff)
    struct.pack_into("<HHH", header, 0x3A, 64, 3, 1)
    sh = [
        bytes(64),
        struct.pack("<IIQQQQIIQQ", 1, 3, 0, 0, data_at, len(shstrtab), 0, 0, 1, 0),
        struct.pack("<IIQQQQIIQQ", 11, 1, 0, 0, data_at + len(shstrtab), len(modname), 0, 0, 1, 0),
    ]
    body = bytes(header) + shstrtab + modname
    return body + b"\0" * (shoff - len(body)) + b"".join(sh)


def grub_mods(prefix: str, config: str, modules: list[str]) -> bytes:
    entries = b""
    for kind, body in [
        *((0, elf_module(m)) for m in modules),
        (1, b"FAT"),
        (2, config.encode() + b"\0"),
        (3, prefix.encode() + b"\0"),
    ]:
        body += b"\0" * (-len(body) % 8)
        entries += struct.pack("<II", kind, 8 + len(body)) + body
    return struct.pack("<IIQQ", 0x676D696D, 0, 24, 24 + len(entries)) + entries


@dataclass
class Chain:
    microsoft: Cert
    vendor: Cert
    shim: bytes
    mok_manager: bytes
    grub: bytes
    cd_grub: bytes
    kernel: bytes


def make_chain(kernel_signer: Cert | None = None, grub_signed: bool = True) -> Chain:
    """shim signed by a stand-in 'Microsoft' CA and carrying a vendor CA; GRUB, MokManager and
    the kernel signed by certificates of that vendor CA (unless told otherwise)."""
    microsoft = make_cert("Test UEFI CA")
    vendor = make_cert("Test Secure Boot CA")
    ms_signer = make_cert("Test UEFI Driver Publisher", microsoft)
    signer = make_cert("Test Secure Boot Signer", vendor)
    shim = pe({".text": b"shim", ".vendor_cert": vendor_cert_section(vendor)}, [signature(ms_signer, microsoft)])
    grub_sigs = [signature(signer, vendor)] if grub_signed else []
    modules = ["part_gpt", "ext2", "search_label", "linux", "configfile", "normal"]
    grub = pe({".text": b"grub", "mods": grub_mods("/EFI/test", "normal (memdisk)/grub.cfg\n", modules)}, grub_sigs)
    cd_grub = pe({".text": b"gcd", "mods": grub_mods("/boot/grub", "normal (memdisk)/grub.cfg\n", modules)}, grub_sigs)
    kernel = pe({".text": b"linux"}, [signature(kernel_signer or signer, None if kernel_signer else vendor)])
    mok = pe({".text": b"mm"}, [signature(signer, vendor)])
    return Chain(microsoft, vendor, shim, mok, grub, cd_grub, kernel)


def write_chain(tree: Path, chain: Chain, kernel_file: str = "vmlinuz-6.1.0-1-cloud-amd64") -> None:
    """The files bake step 12-boot-chain leaves in a tree, and a kernel in /boot."""
    efi = tree / "usr/lib/nodekiln/efi"
    efi.mkdir(parents=True, exist_ok=True)
    (efi / "shimx64.efi").write_bytes(chain.shim)
    (efi / "mmx64.efi").write_bytes(chain.mok_manager)
    (efi / "grubx64.efi").write_bytes(chain.grub)
    (efi / "gcdx64.efi").write_bytes(chain.cd_grub)
    (efi / "packages").write_text(
        "grub-efi-amd64-signed\t1+2.06\t"
        + "a" * 64
        + "\nshim-helpers-amd64-signed\t1+16.1\t"
        + "b" * 64
        + "\nshim-signed\t1.51\t"
        + "c" * 64
        + "\n"
    )
    (tree / "boot").mkdir(parents=True, exist_ok=True)
    (tree / "boot" / kernel_file).write_bytes(chain.kernel)
