"""Assemble a bootable GPT disk (BIOS and UEFI) from a root tree, using files only.

No loop devices, device-mapper or mounts: many build hosts and CI runners lack them (this
machine's kernel has neither partition scanning on loop devices nor vfat). Every file system
is made from a directory (`mkfs.ext4 -d`, `mkfs.vfat` + mtools), copied into a sparse disk
file at its partition's offset, and GRUB is installed by writing its images ourselves.

Layout (GPT, 1 MiB aligned):
  1  BIOS boot  1 MiB      GRUB core.img for legacy BIOS (i386-pc)
  2  ESP        64 MiB     FAT32, EFI/BOOT/BOOTX64.EFI (the fallback path: no NVRAM entry): shim
                           and the signed GRUB, or our own GRUB (nodekiln.images.bootchain)
  3  root       sized      ext4, the OS, mounted read-only
  4  data       the rest   ext4, /var (and /etc's overlay upper layer), grown at first boot
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from nodekiln import templates
from nodekiln.config.recipe import SecureBoot
from nodekiln.errors import NodekilnError
from nodekiln.images import bootchain, manifest
from nodekiln.run import run

SECTOR = 512
MIB = 1024 * 1024
ALIGN = MIB // SECTOR  # partitions start on 1 MiB boundaries
GPT_TAIL_SECTORS = 33  # backup GPT header + partition entries at the end of the disk

ROOT_LABEL = "nodekiln-root"
DATA_LABEL = "nodekiln-data"
ESP_LABEL = "NK-ESP"

BIOS_BOOT_TYPE = "21686148-6449-6E6F-744E-656564454649"
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
LINUX_ROOT_X86_64_TYPE = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"
LINUX_DATA_TYPE = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"

BIOS_MIB = 1
ESP_MIB = 64

# GRUB modules built into the images: the disk carries no module directory, so everything the
# early config and grub.cfg use must be here.
GRUB_COMMON_MODULES = [
    "part_gpt",
    "part_msdos",
    "ext2",
    "fat",
    "search",
    "search_label",
    "search_fs_uuid",
    "normal",
    "linux",
    "configfile",
    "echo",
    "test",
    "gzio",
    "zstd",
    "minicmd",
    "serial",
    "terminal",
    "sleep",
    "cat",
    "ls",
]
GRUB_PC_MODULES = ["biosdisk", *GRUB_COMMON_MODULES]
GRUB_EFI_MODULES = ["efi_gop", "efi_uga", "all_video", *GRUB_COMMON_MODULES]
GRUB_LIB = Path("/usr/lib/grub")

# Offsets GRUB's own installer (grub-bios-setup) patches in boot.img and core.img.
BOOT_KERNEL_SECTOR = 0x5C  # u64: LBA of core.img's first sector
BOOT_DRIVE_CHECK = 0x66  # 2-byte jump that trusts the BIOS's drive number; nop'ed for disks
MBR_KEEP_FROM = 0x1B8  # disk signature, partition table (the protective MBR), 0x55AA
CORE_BLOCKLIST = SECTOR - 12  # last blocklist entry of diskboot: u64 start, u16 len, u16 seg
CORE_SEGMENT = 0x820  # where diskboot loads the rest of core.img (0x8000 + one sector)


class DiskError(NodekilnError):
    """The tree cannot be made into a disk (too big for the disk, missing kernel, ...)."""


@dataclass(frozen=True)
class Partition:
    number: int
    name: str
    type: str
    start: int  # LBA
    sectors: int
    uuid: str

    @property
    def offset(self) -> int:
        return self.start * SECTOR

    @property
    def size(self) -> int:
        return self.sectors * SECTOR


@dataclass(frozen=True)
class Layout:
    disk_bytes: int
    disk_uuid: str
    partitions: tuple[Partition, ...]

    def part(self, name: str) -> Partition:
        return next(p for p in self.partitions if p.name == name)

    def sfdisk_script(self) -> str:
        """The partition table as an sfdisk script (fixed GUIDs: reproducible disks)."""
        lines = ["label: gpt", f"label-id: {self.disk_uuid}", "unit: sectors", "first-lba: 2048", ""]
        for p in self.partitions:
            lines.append(f'start={p.start}, size={p.sectors}, type={p.type}, uuid={p.uuid}, name="{p.name}"')
        return "\n".join(lines) + "\n"


def plan_layout(root_bytes: int, disk_bytes: int, seed: str = "nodekiln") -> Layout:
    """Place the four partitions; the data partition takes what the others leave.

    `seed` (the build's input hash) makes the GUIDs reproducible per input.
    """
    if disk_bytes % MIB:
        raise DiskError(f"disk size must be a whole number of MiB, got {disk_bytes} bytes")
    root_sectors = -(-root_bytes // MIB) * ALIGN
    total = disk_bytes // SECTOR
    last_usable = total - GPT_TAIL_SECTORS - 1
    starts = ALIGN
    sizes = [
        ("bios", BIOS_BOOT_TYPE, BIOS_MIB * ALIGN),
        ("esp", ESP_TYPE, ESP_MIB * ALIGN),
        ("root", LINUX_ROOT_X86_64_TYPE, root_sectors),
    ]
    parts: list[Partition] = []
    for number, (name, ptype, sectors) in enumerate(sizes, start=1):
        parts.append(Partition(number, name, ptype, starts, sectors, _guid(seed, name)))
        starts += sectors
    data_sectors = ((last_usable + 1 - starts) // ALIGN) * ALIGN
    min_data = 256 * ALIGN
    if data_sectors < min_data:
        need = (starts + min_data + ALIGN + GPT_TAIL_SECTORS) * SECTOR
        raise DiskError(
            f"the root file system ({root_bytes // MIB} MiB) leaves no room for the data partition "
            f"on a {disk_bytes // MIB} MiB disk: raise image.diskSizeGiB to at least "
            f"{-(-need // (1024 * MIB))}"
        )
    parts.append(Partition(4, "data", LINUX_DATA_TYPE, starts, data_sectors, _guid(seed, "data")))
    return Layout(disk_bytes, _guid(seed, "disk"), tuple(parts))


def _guid(seed: str, name: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"nodekiln:{seed}:{name}")).upper()


def patch_boot_img(boot_img: bytes, mbr: bytes, core_lba: int) -> bytes:
    """GRUB's boot.img made ready for sector 0 of this disk (what grub-bios-setup does).

    Keeps the disk's own bytes from 0x1B8 on (disk signature, protective MBR partition
    table, boot signature), points boot.img at core.img's first sector and replaces the
    boot-drive check with NOPs (buggy BIOSes pass a wrong drive number; we boot from disk).
    """
    if len(boot_img) != SECTOR or len(mbr) != SECTOR:
        raise DiskError("boot.img and the MBR must be one sector each")
    out = bytearray(boot_img)
    out[MBR_KEEP_FROM:] = mbr[MBR_KEEP_FROM:]
    struct.pack_into("<Q", out, BOOT_KERNEL_SECTOR, core_lba)
    out[BOOT_DRIVE_CHECK : BOOT_DRIVE_CHECK + 2] = b"\x90\x90"
    return bytes(out)


def patch_core_img(core_img: bytes, core_lba: int) -> bytes:
    """core.img with its blocklist pointing at the sectors after its first one, in place."""
    sectors = -(-len(core_img) // SECTOR)
    padded = bytearray(core_img.ljust(sectors * SECTOR, b"\0"))
    struct.pack_into("<QHH", padded, CORE_BLOCKLIST, core_lba + 1, sectors - 1, CORE_SEGMENT)
    return bytes(padded)


def early_cfg() -> str:
    """Config built into both GRUB images: find the root by its label, load its grub.cfg."""
    return templates.render("images", "grub/early.cfg.j2", label=ROOT_LABEL)


def grub_cfg(kernel: str, initrd: str, cmdline: str) -> str:
    return templates.render(
        "images", "grub/disk.cfg.j2", label=ROOT_LABEL, kernel=kernel, initrd=initrd, cmdline=cmdline
    )


def find_kernel(tree: Path) -> tuple[str, str]:
    """The newest kernel in the tree's /boot and its initramfs (file names)."""
    kernels = sorted((tree / "boot").glob("vmlinuz-*"), key=lambda p: _version_key(p.name[8:]))
    if not kernels:
        raise DiskError(f"no kernel (boot/vmlinuz-*) in {tree}")
    version = kernels[-1].name[len("vmlinuz-") :]
    initrd = tree / "boot" / f"initrd.img-{version}"
    if not initrd.exists():
        raise DiskError(f"no initramfs {initrd} for kernel {version}")
    return kernels[-1].name, initrd.name


def _version_key(version: str) -> list[tuple[int, str]]:
    return [(int(p), "") if p.isdigit() else (-1, p) for p in re.split(r"[.-]", version)]


def tree_bytes(tree: Path) -> int:
    """Bytes the tree needs on ext4 with 4 KiB blocks (allocated blocks + one inode each)."""
    total = 0
    for dirpath, dirnames, filenames in os.walk(tree):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            total += -(-st.st_size // 4096) * 4096 + 256
    return total


def root_size_for(tree: Path) -> int:
    """Root partition size: the tree plus 15 % and 96 MiB (journal, metadata), 64 MiB steps."""
    need = int(tree_bytes(tree) * 1.15) + 96 * MIB
    step = 64 * MIB
    return -(-need // step) * step


def reproducible_env(epoch: int | None) -> dict[str, str]:
    """Environment that makes the file system tools' output depend on their input only.

    LC_ALL=C: mkfs.ext4 -d adds a directory's entries in scandir(alphasort) order, which
    follows the locale's collation. TZ=UTC: FAT stores local times. With an epoch,
    E2FSPROGS_FAKE_TIME is libext2fs's "now" (superblock times, crtime, inodes mke2fs makes
    itself: lib/ext2fs/initialize.c, inode.c) and SOURCE_DATE_EPOCH is mtools' (the dates
    mmd and mcopy give, mtools' misc.c getTimeNow).
    """
    env = {"LC_ALL": "C", "TZ": "UTC"}
    if epoch is not None:
        env |= {"E2FSPROGS_FAKE_TIME": str(epoch), "SOURCE_DATE_EPOCH": str(epoch)}
    return env


def clamp_times(root: Path, epoch: int) -> int:
    """No time in the tree later than `epoch`: mtime and atime of every entry (symlinks
    themselves) clamped to it, as reproducible-builds.org describes; returns entries changed.

    Run right before mkfs: reading a file afterwards could move its atime again (relatime)."""
    limit = epoch * 1_000_000_000

    def clamp(path: str) -> int:
        st = os.lstat(path)
        if st.st_mtime_ns <= limit and st.st_atime_ns <= limit:
            return 0
        os.utime(path, ns=(min(st.st_atime_ns, limit), min(st.st_mtime_ns, limit)), follow_symlinks=False)
        return 1

    changed = clamp(str(root))
    for dirpath, dirnames, filenames in os.walk(root):
        changed += sum(clamp(os.path.join(dirpath, name)) for name in (*dirnames, *filenames))
    return changed


def used_inodes(image: Path) -> list[int]:
    """Inodes in use in an ext4 image (from its bitmaps, as dumpe2fs prints them), excluding
    the reserved ones below the first inode except the root directory."""
    text = run(["dumpe2fs", image], env={"LC_ALL": "C"}).output
    per_group = int(re.search(r"^Inodes per group:\s+(\d+)", text, re.M).group(1))  # type: ignore[union-attr]
    first = int(re.search(r"^First inode:\s+(\d+)", text, re.M).group(1))  # type: ignore[union-attr]
    used: list[int] = []
    for group, free_text in enumerate(re.findall(r"^\s+Free inodes: ?(.*)$", text, re.M)):
        free: set[int] = set()
        for item in filter(None, (part.strip() for part in free_text.split(","))):
            lo, _, hi = item.partition("-")
            free.update(range(int(lo), int(hi or lo) + 1))
        start = group * per_group + 1
        used.extend(i for i in range(start, start + per_group) if i not in free and (i >= first or i == 2))
    return used


def pin_inode_times(image: Path, epoch: int) -> int:
    """Set the change and access time of every inode of an ext4 image to `epoch`.

    mkfs.ext4 -d copies atime, mtime and ctime from the source's stat (misc/create_inode.c,
    set_inode_extra): mtime is the tree's (clamped), but ctime is when the tree was unpacked
    and no system call can set it. debugfs writes the inodes (checksums included); it is
    libext2fs, so E2FSPROGS_FAKE_TIME keeps the superblock's write time at the epoch."""
    inodes = used_inodes(image)
    script = image.with_name(f"{image.name}.times")
    script.write_text(
        "".join(f"set_inode_field <{i}> ctime @{epoch}\nset_inode_field <{i}> atime @{epoch}\n" for i in inodes)
    )
    try:
        # Not into the build log: debugfs echoes each of its tens of thousands of commands.
        run(["debugfs", "-w", "-f", script, image], env=reproducible_env(epoch))
    finally:
        script.unlink(missing_ok=True)
    return len(inodes)


def make_ext4(
    source: Path, image: Path, label: str, size: int, fs_uuid: str, log: Path | None, epoch: int | None = None
) -> None:
    """An ext4 image of `source` whose bytes depend on the tree, the label, size, UUID and
    epoch only: fixed UUID and directory hash seed, entries in C order, libext2fs's clock at
    the epoch, every inode's ctime and atime pinned to it afterwards."""
    # Always 4 KiB blocks and the default usage type: under 512 MB mkfs would pick 1 KiB
    # blocks, which stay when the data partition is grown to hundreds of GB.
    image.unlink(missing_ok=True)
    run(
        [
            "mkfs.ext4",
            "-q",
            "-F",
            "-b",
            "4096",
            "-T",
            "default",
            "-L",
            label,
            "-U",
            fs_uuid.lower(),
            "-E",
            f"hash_seed={fs_uuid.lower()}",
            "-d",
            source,
            image,
            f"{size // 1024}k",
        ],
        log=log,
        env=reproducible_env(epoch),
    )
    if epoch is not None:
        pin_inode_times(image, epoch)


def write_fat(
    image: Path,
    files: Mapping[str, bytes],
    label: str,
    volume_id: str,
    kib: int,
    log: Path | None,
    epoch: int | None = None,
) -> None:
    """A FAT image holding `files` (path in the image -> content): mkfs.vfat -C and mtools, no mount.
    FAT32 from 64 MiB on (the ESP), else mkfs's choice (the ISO's small El Torito image).

    Reproducible: --invariant fixes mkfs.fat's creation time (then -i the volume ID; the order
    matters, --invariant sets one too), and mmd/mcopy date entries at SOURCE_DATE_EPOCH."""
    image.unlink(missing_ok=True)
    fat32 = ["-F", "32"] if kib >= 64 * 1024 else []
    env = reproducible_env(epoch)
    run(["mkfs.vfat", "-C", "--invariant", *fat32, "-n", label, "-i", volume_id, image, str(kib)], log=log, env=env)
    env = {**env, "MTOOLS_SKIP_CHECK": "1"}
    dirs = sorted({str(parent) for path in files for parent in PurePosixPath(path).parents if str(parent) != "."})
    if dirs:
        run(["mmd", "-i", image, *(f"::/{d}" for d in dirs)], log=log, env=env)
    staging = image.with_name(f"{image.name}.files")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        for path, data in sorted(files.items()):
            local = staging / path
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_bytes(data)
            run(["mcopy", "-i", image, local, f"::/{path}"], log=log, env=env)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def efi_files(tree: Path, kernel: str, secure_boot: SecureBoot, early: str, grub_efi: Path | None) -> dict[str, bytes]:
    """What the ESP holds: the distribution's signed chain, or (secureBoot: off) our own GRUB."""
    if secure_boot == "off":
        if grub_efi is None:
            raise DiskError("secureBoot: off needs the self-built GRUB EFI image")
        return {bootchain.FIRST_STAGE: grub_efi.read_bytes()}
    chain = bootchain.signed_chain(tree, kernel)
    bootchain.check(chain)
    return bootchain.esp_files(chain, early)


def make_grub_images(work: Path, log: Path | None, uefi: bool = True) -> tuple[Path, Path | None]:
    """GRUB for BIOS (core.img) and, unless the signed chain replaces it, UEFI (BOOTX64.EFI),
    each finding root by its label."""
    early = work / "grub-early.cfg"
    early.write_text(early_cfg())
    core = work / "core.img"
    efi = work / "BOOTX64.EFI"
    run(
        [
            "grub-mkimage",
            "-O",
            "i386-pc",
            "-d",
            GRUB_LIB / "i386-pc",
            "-o",
            core,
            "-c",
            early,
            "-p",
            "/boot/grub",
            *GRUB_PC_MODULES,
        ],
        log=log,
    )
    if not uefi:
        return core, None
    run(
        [
            "grub-mkimage",
            "-O",
            "x86_64-efi",
            "-d",
            GRUB_LIB / "x86_64-efi",
            "-o",
            efi,
            "-c",
            early,
            "-p",
            "/boot/grub",
            *GRUB_EFI_MODULES,
        ],
        log=log,
    )
    return core, efi


def copy_sparse(src: Path, dst_fd: int, offset: int) -> None:
    """Copy the data extents of `src` into `dst_fd` at `offset`, leaving holes as holes."""
    with open(src, "rb") as f:
        fd = f.fileno()
        size = os.fstat(fd).st_size
        pos = 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole is left
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            left = end - start
            src_off, dst_off = start, offset + start
            while left:
                done = os.copy_file_range(fd, dst_fd, left, src_off, dst_off)
                if done == 0:
                    raise DiskError(f"short copy from {src}")
                left -= done
                src_off += done
                dst_off += done
            pos = end


def assemble(
    tree: Path,
    raw: Path,
    disk_bytes: int,
    seed: str,
    work: Path,
    log: Path | None = None,
    root_extra_bytes: int = 0,
    secure_boot: SecureBoot = "supported",
    epoch: int | None = None,
) -> Layout:
    """Make the bootable raw disk `raw` from `tree` (which must have /var empty or absent).

    `root_extra_bytes` leaves room on the root file system (Packer's base image: the bake steps
    install into it). `secure_boot` picks the ESP's boot chain (see nodekiln.images.bootchain).

    `tree/var` is moved aside to become the data file system; everything is built under
    `work` (same file system as `tree`, so the move is a rename).

    `epoch` (default: the one the bake steps recorded in the tree, manifest.source_date_epoch)
    makes the disk reproducible: no file time after it, file systems made at it.
    """
    work.mkdir(parents=True, exist_ok=True)
    if epoch is None:
        epoch = manifest.source_date_epoch(tree)
    cmdline_file = tree / "usr/share/nodekiln/kernel-cmdline"
    cmdline = cmdline_file.read_text().strip() if cmdline_file.exists() else "ro"
    kernel, initrd = find_kernel(tree)
    (tree / "boot/grub").mkdir(parents=True, exist_ok=True)
    (tree / "boot/grub/grub.cfg").write_text(grub_cfg(kernel, initrd, cmdline))

    var_src = work / "var"
    if var_src.exists():
        shutil.rmtree(var_src)
    (tree / "var").rename(var_src)
    (tree / "var").mkdir(mode=0o755)
    # Mount points systemd needs before anything mounts them ("Failed to mount early API
    # file systems" otherwise); DIB's tar leaves some out.
    for name in ("proc", "sys", "dev", "run", "tmp", "boot/efi"):
        (tree / name).mkdir(parents=True, exist_ok=True)
    os.chmod(tree / "tmp", 0o1777)

    layout = plan_layout(root_size_for(tree) + root_extra_bytes, disk_bytes, seed)
    core, grub_efi = make_grub_images(work, log, uefi=secure_boot == "off")
    esp_files = efi_files(tree, kernel, secure_boot, early_cfg(), grub_efi)
    esp_part, root_part, data_part, bios_part = (layout.part(n) for n in ("esp", "root", "data", "bios"))
    core_bytes = core.read_bytes()
    if len(core_bytes) > bios_part.size:
        raise DiskError(f"GRUB core.img ({len(core_bytes)} bytes) does not fit the BIOS boot partition")

    esp_img, root_img, data_img = work / "esp.img", work / "root.img", work / "data.img"
    write_fat(esp_img, esp_files, ESP_LABEL, esp_part.uuid.replace("-", "")[:8], esp_part.size // 1024, log, epoch)
    if epoch is not None:  # last, after every change to the trees (and nothing reads them before mkfs)
        clamp_times(tree, epoch)
        clamp_times(var_src, epoch)
    make_ext4(tree, root_img, ROOT_LABEL, root_part.size, root_part.uuid, log, epoch)
    make_ext4(var_src, data_img, DATA_LABEL, data_part.size, data_part.uuid, log, epoch)

    raw.unlink(missing_ok=True)
    with open(raw, "wb") as f:
        f.truncate(disk_bytes)
    run(["sfdisk", "--no-reread", "--no-tell-kernel", "-q", raw], input=layout.sfdisk_script(), log=log)
    with open(raw, "r+b") as f:
        fd = f.fileno()
        for part, img in ((esp_part, esp_img), (root_part, root_img), (data_part, data_img)):
            copy_sparse(img, fd, part.offset)
        mbr = os.pread(fd, SECTOR, 0)
        boot_img = (GRUB_LIB / "i386-pc/boot.img").read_bytes()
        os.pwrite(fd, patch_boot_img(boot_img, mbr, bios_part.start), 0)
        os.pwrite(fd, patch_core_img(core_bytes, bios_part.start), bios_part.offset)
    for img in (esp_img, root_img, data_img):
        img.unlink()
    return layout


def convert(
    raw: Path, target: Path, fmt: str, compress: bool = True, log: Path | None = None, compression: str = "zstd"
) -> None:
    """raw -> qcow2 (compressed, zstd or zlib) or a sparse raw copy."""
    if fmt == "qcow2":
        argv = ["qemu-img", "convert", "-O", "qcow2", "-o", f"compat=1.1,compression_type={compression}"]
        if compress:
            # No -W (out-of-order writes): clusters would land in the file in the order the
            # coroutines finish, and two conversions of one disk would differ.
            argv += ["-c", "-m", "4"]
        run([*argv, raw, target], log=log)
    elif fmt == "raw":
        run(["qemu-img", "convert", "-O", "raw", raw, target], log=log)
    else:
        raise DiskError(f"unknown image format {fmt}")
