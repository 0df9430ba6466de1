"""Read the facts of a UEFI boot chain from its binaries: PE sections, Authenticode signers and
what a GRUB image carries built in (its prefix, its configuration, its modules).

Pure functions over bytes, so the chain nodekiln puts on an ESP is checked against the files
themselves rather than against what their packages are believed to contain.

Sources of the offsets:
- PE/COFF (Microsoft's "PE Format" specification): the PE header's offset at 0x3C; after the
  4-byte signature a 20-byte COFF header (number of sections at +2, optional-header size at
  +16); the PE32+ optional header's data directories at +112, the certificate table being
  directory 4, whose "address" is a file offset; 40-byte section headers; WIN_CERTIFICATE entries
  (u32 length, u16 revision, u16 type, 2 = PKCS#7 SignedData) aligned to 8 bytes.
- Section names longer than 8 bytes are "/N", N the offset in the COFF string table that
  follows the symbol table (shim's `.vendor_cert` is one).
- shim (shim.c, cert.S): `.vendor_cert` starts with struct cert_table (u32
  vendor_authorized_size, u32 vendor_deauthorized_size, u32 vendor_authorized_offset, u32
  vendor_deauthorized_offset), offsets from the section's start; the authorized blob is the
  distribution's CA certificate (DER) that shim accepts the next stage and the kernel by.
- GRUB (include/grub/kernel.h): the `mods` section starts with struct grub_module_info64
  (u32 magic "mimg", u32 padding, u64 offset, u64 size), then module headers (u32 type,
  u32 size including the header). Types 0-3 are ELF module, memdisk, config, prefix in every
  GRUB release; later types changed number between releases and are not read here.
"""

from __future__ import annotations

import struct
import warnings
from dataclasses import dataclass

from cryptography import x509

PE_OFFSET_AT = 0x3C
PE_SIGNATURE = b"PE\0\0"
COFF_SECTIONS = 4 + 2  # from the PE signature: u16 NumberOfSections
COFF_SYMBOLS = 4 + 8  # u32 PointerToSymbolTable, u32 NumberOfSymbols: the string table follows
COFF_SYMBOL = 18  # bytes per symbol record
COFF_OPTIONAL_SIZE = 4 + 16  # u16 SizeOfOptionalHeader
OPTIONAL_HEADER = 4 + 20
PE32_PLUS = 0x20B
DATA_DIRECTORIES = 112  # PE32+: after the fixed fields of the optional header
CERTIFICATE_TABLE = 4
SECTION_HEADER = 40
WIN_CERT_TYPE_PKCS_SIGNED_DATA = 0x0002

GRUB_MODS_SECTION = "mods"
GRUB_MODULE_MAGIC = 0x676D696D  # "mimg"
GRUB_OBJ_ELF, GRUB_OBJ_MEMDISK, GRUB_OBJ_CONFIG, GRUB_OBJ_PREFIX = 0, 1, 2, 3

ELF_SHOFF = 0x28  # ELF64: u64 e_shoff
ELF_SHENTSIZE = 0x3A  # u16 e_shentsize, u16 e_shnum, u16 e_shstrndx


class PeError(ValueError):
    """The bytes are not the PE image (or GRUB image) they are said to be."""


@dataclass(frozen=True)
class Section:
    name: str
    virtual_size: int
    raw_size: int
    raw_offset: int


@dataclass(frozen=True)
class Signer:
    """The certificate a signature was made with, and who issued it (by common name)."""

    subject: str
    issuer: str


@dataclass(frozen=True)
class GrubImage:
    prefix: str
    config: str
    modules: frozenset[str]
    memdisk: bytes


def _u16(data: bytes, at: int) -> int:
    return int(struct.unpack_from("<H", data, at)[0])


def _u32(data: bytes, at: int) -> int:
    return int(struct.unpack_from("<I", data, at)[0])


def _pe_header(data: bytes) -> int:
    if len(data) < 0x40 or data[:2] != b"MZ":
        raise PeError("not a PE image (no MZ header)")
    pe = _u32(data, PE_OFFSET_AT)
    if data[pe : pe + 4] != PE_SIGNATURE:
        raise PeError("not a PE image (no PE signature)")
    return pe


def sections(data: bytes) -> list[Section]:
    pe = _pe_header(data)
    count = _u16(data, pe + COFF_SECTIONS)
    first = pe + OPTIONAL_HEADER + _u16(data, pe + COFF_OPTIONAL_SIZE)
    symbols, nsymbols = struct.unpack_from("<II", data, pe + COFF_SYMBOLS)
    strings = symbols + nsymbols * COFF_SYMBOL
    out = []
    for i in range(count):
        raw, vsize, _vaddr, raw_size, raw_offset = struct.unpack_from("<8sIIII", data, first + i * SECTION_HEADER)
        name = raw.rstrip(b"\0").decode("ascii", "replace")
        if name.startswith("/") and name[1:].isdigit() and symbols:
            at = strings + int(name[1:])
            name = data[at : data.index(b"\0", at)].decode("ascii", "replace")
        out.append(Section(name, vsize, raw_size, raw_offset))
    return out


def section_bytes(data: bytes, name: str) -> bytes | None:
    for s in sections(data):
        if s.name == name:
            return data[s.raw_offset : s.raw_offset + min(s.raw_size, s.virtual_size or s.raw_size)]
    return None


def signatures(data: bytes) -> list[bytes]:
    """The PKCS#7 SignedData blobs of the image's certificate table (empty: unsigned)."""
    pe = _pe_header(data)
    optional = pe + OPTIONAL_HEADER
    if _u16(data, optional) != PE32_PLUS:
        raise PeError("not a PE32+ (64-bit) image")
    offset, size = struct.unpack_from("<II", data, optional + DATA_DIRECTORIES + 8 * CERTIFICATE_TABLE)
    out = []
    at, end = offset, offset + size
    while size and at + 8 <= end:
        length, _revision, kind = struct.unpack_from("<IHH", data, at)
        if length < 8:
            raise PeError("corrupt certificate table")
        if kind == WIN_CERT_TYPE_PKCS_SIGNED_DATA:
            out.append(data[at + 8 : at + length])
        at += (length + 7) // 8 * 8
    return out


def vendor_certificate(shim: bytes) -> bytes:
    """The CA certificate (DER) built into shim: what the next stage must be signed by."""
    table = section_bytes(shim, ".vendor_cert")
    if table is None or len(table) < 16:
        raise PeError("not a shim image (no .vendor_cert section)")
    size, _deauth_size, offset, _deauth_offset = struct.unpack_from("<IIII", table, 0)
    if not size:
        raise PeError("shim carries no vendor certificate")
    return table[offset : offset + size]


def _load_certificates(blob: bytes) -> list[x509.Certificate]:
    from cryptography.hazmat.primitives.serialization import pkcs7

    # Authenticode's content (SpcIndirectDataContent) is unknown to cryptography's DER
    # parser, which then falls back to BER and warns; the certificates are read all the same.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return pkcs7.load_der_pkcs7_certificates(blob)


def common_name(name: x509.Name) -> str:
    attrs = name.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else name.rfc4514_string()


def signers(data: bytes) -> list[Signer]:
    """Who signed the image: per signature, the certificate that no other certificate of the
    signature was issued by (the signing certificate; the others are its issuers)."""
    out: list[Signer] = []
    for blob in signatures(data):
        certs = _load_certificates(blob)
        issuers = {c.issuer for c in certs if c.issuer != c.subject}
        leaves = [c for c in certs if c.subject not in issuers] or certs
        out.extend(Signer(common_name(c.subject), common_name(c.issuer)) for c in leaves)
    return out


def grub_image(data: bytes) -> GrubImage:
    """What a GRUB EFI image carries built in."""
    mods = section_bytes(data, GRUB_MODS_SECTION)
    if mods is None:
        raise PeError("not a GRUB image (no mods section)")
    magic, _pad, offset, size = struct.unpack_from("<IIQQ", mods, 0)
    if magic != GRUB_MODULE_MAGIC:
        raise PeError("not a GRUB image (bad module magic)")
    prefix, config, memdisk = "", "", b""
    modules: set[str] = set()
    at = offset
    while at + 8 <= size:
        kind, length = struct.unpack_from("<II", mods, at)
        if length < 8:
            raise PeError("corrupt GRUB module list")
        body = mods[at + 8 : at + length]
        if kind == GRUB_OBJ_ELF:
            name = _elf_modname(body)
            if name:
                modules.add(name)
        elif kind == GRUB_OBJ_MEMDISK:
            memdisk = body
        elif kind == GRUB_OBJ_CONFIG:
            config = body.rstrip(b"\0").decode()
        elif kind == GRUB_OBJ_PREFIX:
            prefix = body.rstrip(b"\0").decode()
        at += length
    return GrubImage(prefix, config, frozenset(modules), memdisk)


def _elf_modname(elf: bytes) -> str | None:
    """A GRUB module's name: its `.modname` section (ELF64 section headers)."""
    if elf[:4] != b"\x7fELF":
        return None
    shoff = int(struct.unpack_from("<Q", elf, ELF_SHOFF)[0])
    entsize, count, strndx = struct.unpack_from("<HHH", elf, ELF_SHENTSIZE)
    headers = [struct.unpack_from("<IIQQQQ", elf, shoff + i * entsize) for i in range(count)]
    names_at = headers[strndx][4]
    for name_off, _type, _flags, _addr, offset, size in headers:
        end = elf.index(b"\0", names_at + name_off)
        if elf[names_at + name_off : end] == b".modname":
            return elf[offset : offset + size].rstrip(b"\0").decode()
    return None
