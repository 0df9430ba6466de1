"""Compare two build artifacts: identical, or which files differ and how.

`compare_artifacts(a, b)` takes two qcow2 or raw disks (or two root trees, directories) and
returns a `Comparison`: `.identical`, and `.differences`, one line each, e.g.

    root:/etc/iscsi/initiatorname.iscsi: content
    root:/usr/share/nodekiln/manifest.json: mtime 1764748800 != 1764752400
    root: inode <1234> ctime 1764748800 != 1764752400
    esp:/EFI/BOOT/BOOTX64.EFI: only in b

A disk is compared region by region (partition table, then each GPT partition); a partition
that differs is opened without mounting — ext4 with debugfs (`rdump`, `stat`, and dumpe2fs for
the superblock), FAT with mtools (`mcopy -s -m`) — and its files compared by content, type,
mode, owner, mtime and link target; for ext4 also every inode's change, access and creation
times and the superblock. qcow2 files are converted to raw first (qemu-img). Needs root for
owners (debugfs rdump keeps them only then), nothing else: no loop device, no mount.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from nodekiln.run import run

SECTOR = 512
CHUNK = 8 * 1024 * 1024
QCOW2_MAGIC = b"QFI\xfb"
# Inode times debugfs prints for `stat`, compared for every path of an ext4 file system.
INODE_TIMES = ("ctime", "atime", "mtime", "crtime")
# Paths of a root tree that two builds of the same inputs cannot make identical, left out of
# tree_digest (see images/README.md, "Reproducible builds"). Empty: none is known today.
NOT_REPRODUCIBLE: tuple[str, ...] = ()


@dataclass
class Comparison:
    """The result of comparing `a` with `b`."""

    a: Path
    b: Path
    differences: list[str] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return not self.differences

    def summary(self, limit: int = 40) -> str:
        if self.identical:
            return f"{self.a} and {self.b} are identical"
        shown = self.differences[:limit]
        more = len(self.differences) - len(shown)
        tail = [f"... and {more} more"] if more > 0 else []
        return "\n".join([f"{self.a} and {self.b} differ ({len(self.differences)}):", *shown, *tail])


def compare_artifacts(a: Path, b: Path, work: Path | None = None) -> Comparison:
    """Compare two artifacts of the same kind: qcow2/raw disks, or two directories (trees).

    `work`: where temporary raw disks and dumped trees go (default: a temporary folder)."""
    a, b = Path(a), Path(b)
    if a.is_dir() and b.is_dir():
        return Comparison(a, b, compare_trees(a, b))
    if a.is_dir() or b.is_dir():
        return Comparison(a, b, ["one is a directory, the other a file"])
    if sha256_file(a) == sha256_file(b):
        return Comparison(a, b)
    with _workdir(work) as tmp:
        raw_a, raw_b = _as_raw(a, tmp / "a.raw"), _as_raw(b, tmp / "b.raw")
        differences = compare_disks(raw_a, raw_b, tmp)
        if not differences:
            differences = ["the disks are identical; the qcow2 containers differ (cluster order, compression)"]
        return Comparison(a, b, differences)


# ---------------------------------------------------------------------------------------------
# Trees


@dataclass(frozen=True)
class Entry:
    kind: str  # file, dir, symlink, char, block, fifo, socket
    mode: int
    uid: int
    gid: int
    mtime: int
    size: int
    target: str  # symlink target, else ""


def _entry(path: Path) -> Entry:
    st = os.lstat(path)
    kinds = {
        stat.S_IFREG: "file",
        stat.S_IFDIR: "dir",
        stat.S_IFLNK: "symlink",
        stat.S_IFCHR: "char",
        stat.S_IFBLK: "block",
        stat.S_IFIFO: "fifo",
        stat.S_IFSOCK: "socket",
    }
    kind = kinds.get(stat.S_IFMT(st.st_mode), "other")
    target = os.readlink(path) if kind == "symlink" else ""
    return Entry(kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, int(st.st_mtime), st.st_size, target)


def walk(root: Path) -> dict[str, Entry]:
    """Every entry under `root` by its path ("/etc/hostname"), the root itself as "/"."""
    entries = {"/": _entry(root)}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in (*dirnames, *sorted(filenames)):
            path = Path(dirpath) / name
            entries["/" + path.relative_to(root).as_posix()] = _entry(path)
    return entries


def compare_trees(
    a: Path, b: Path, *, prefix: str = "", times: bool = True, owners: bool = True, dirs_mtime: bool = True
) -> list[str]:
    """How two trees differ, one line per difference: only in one, type, content, link target,
    mode, owner and mtime (each optional where a dump cannot keep it)."""
    ea, eb = walk(a), walk(b)
    out: list[str] = []
    for path in sorted(ea.keys() | eb.keys()):
        name = f"{prefix}{path}"
        x, y = ea.get(path), eb.get(path)
        if x is None or y is None:
            out.append(f"{name}: only in {'b' if x is None else 'a'}")
            continue
        if x.kind != y.kind:
            out.append(f"{name}: type {x.kind} != {y.kind}")
            continue
        if x.kind == "symlink" and x.target != y.target:
            out.append(f"{name}: link target {x.target} != {y.target}")
        if x.kind == "file" and (x.size != y.size or sha256_file(a / path[1:]) != sha256_file(b / path[1:])):
            out.append(f"{name}: content")
        if x.mode != y.mode and x.kind != "symlink":
            out.append(f"{name}: mode {x.mode:04o} != {y.mode:04o}")
        if owners and (x.uid, x.gid) != (y.uid, y.gid):
            out.append(f"{name}: owner {x.uid}:{x.gid} != {y.uid}:{y.gid}")
        if times and x.mtime != y.mtime and x.kind != "symlink" and (dirs_mtime or x.kind != "dir"):
            out.append(f"{name}: mtime {x.mtime} != {y.mtime}")
    return out


def tree_digest(root: Path, exclude: Iterable[str] = NOT_REPRODUCIBLE) -> str:
    """One sha256 over every entry of a tree (path, type, mode, owner, mtime, content or link
    target), leaving out `exclude` (paths, or folders ending in "/"): the published digest of a
    root tree, equal for two builds of the same inputs."""
    skipped = tuple(exclude)
    digest = hashlib.sha256()
    for path, e in walk(root).items():
        if any(path == s or (s.endswith("/") and path.startswith(s)) for s in skipped):
            continue
        content = sha256_file(root / path[1:]) if e.kind == "file" else e.target
        record = [path, e.kind, f"{e.mode:o}", str(e.uid), str(e.gid), str(e.mtime), content]
        digest.update(json.dumps(record).encode() + b"\n")
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# Disks


@dataclass(frozen=True)
class Region:
    name: str
    start: int  # bytes
    size: int


def partitions(raw: Path) -> list[Region]:
    """The disk's GPT partitions (sfdisk -J), by name, plus its table regions."""
    table = json.loads(run(["sfdisk", "-J", raw]).output)["partitiontable"]
    sector = int(table.get("sectorsize", SECTOR))
    parts = [
        Region(p.get("name") or f"part{i}", int(p["start"]) * sector, int(p["size"]) * sector)
        for i, p in enumerate(table.get("partitions", []), start=1)
    ]
    return parts


def regions(raw: Path) -> list[Region]:
    """The partition table (MBR, GPT and the space before the first partition), each
    partition, and the backup GPT after the last one."""
    parts = partitions(raw)
    size = raw.stat().st_size
    first = min((p.start for p in parts), default=size)
    last = max((p.start + p.size for p in parts), default=size)
    return [Region("partition table", 0, first), *parts, Region("backup partition table", last, size - last)]


def compare_disks(a: Path, b: Path, work: Path) -> list[str]:
    """Differences between two raw disks, by region; files inside differing file systems."""
    if a.stat().st_size != b.stat().st_size:
        return [f"disk size {a.stat().st_size} != {b.stat().st_size}"]
    ra, rb = regions(a), regions(b)
    if ra != rb:
        return [
            f"partition layout: {[(r.name, r.start, r.size) for r in ra]} != {[(r.name, r.start, r.size) for r in rb]}"
        ]
    out: list[str] = []
    for region in ra:
        if _same_bytes(a, b, region):
            continue
        kind = _fs_kind(a, region)
        if kind == "ext4":
            found = compare_ext4(a, b, region, work)
        elif kind == "vfat":
            found = compare_fat(a, b, region, work)
        else:
            found = []
        out.extend(found or [f"{region.name}: bytes differ"])
    return out


def _same_bytes(a: Path, b: Path, region: Region) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        pos, end = region.start, region.start + region.size
        while pos < end:
            n = min(CHUNK, end - pos)
            if os.pread(fa.fileno(), n, pos) != os.pread(fb.fileno(), n, pos):
                return False
            pos += n
    return True


def _fs_kind(raw: Path, region: Region) -> str:
    with open(raw, "rb") as f:
        head = os.pread(f.fileno(), 2048, region.start)
    if len(head) >= 1082 and head[1080:1082] == b"\x53\xef":
        return "ext4"
    if head[82:87] == b"FAT32" or head[54:59] in (b"FAT12", b"FAT16"):
        return "vfat"
    return ""


def extract(raw: Path, region: Region, target: Path) -> Path:
    """Copy a region of a disk into its own (sparse) file."""
    with open(raw, "rb") as src, open(target, "wb") as dst:
        dst.truncate(region.size)
        pos, end = region.start, region.start + region.size
        while pos < end:
            try:
                data = os.lseek(src.fileno(), pos, os.SEEK_DATA)
            except OSError:
                break
            if data >= end:
                break
            hole = min(os.lseek(src.fileno(), data, os.SEEK_HOLE), end)
            left, src_off, dst_off = hole - data, data, data - region.start
            while left:
                done = os.copy_file_range(src.fileno(), dst.fileno(), left, src_off, dst_off)
                if done == 0:
                    break
                left, src_off, dst_off = left - done, src_off + done, dst_off + done
            pos = hole
    return target


def compare_ext4(a: Path, b: Path, region: Region, work: Path) -> list[str]:
    """Files (debugfs rdump), every path's inode times (debugfs stat) and the superblock
    (dumpe2fs -h) of one ext4 partition of two disks."""
    images = [extract(disk, region, work / f"{region.name}-{tag}.img") for disk, tag in ((a, "a"), (b, "b"))]
    trees = [work / f"{region.name}-{tag}" for tag in ("a", "b")]
    try:
        for image, tree in zip(images, trees, strict=True):
            shutil.rmtree(tree, ignore_errors=True)
            tree.mkdir(parents=True)
            run(["debugfs", "-R", f"rdump / {tree}", image])
        prefix = f"{region.name}:"
        out = compare_trees(*trees, prefix=prefix, owners=os.geteuid() == 0, dirs_mtime=True)
        paths = [p for p in sorted(walk(trees[0]).keys() & walk(trees[1]).keys()) if '"' not in p]
        times = [inode_times(image, paths) for image in images]
        for path in paths:
            ta, tb = times[0].get(path, {}), times[1].get(path, {})
            for key in INODE_TIMES:
                if key == "mtime" or ta.get(key) == tb.get(key):
                    continue  # mtime: compared with the files
                out.append(f"{prefix}{path}: {key} {ta.get(key)} != {tb.get(key)}")
        sa, sb = (superblock(image) for image in images)
        for key in sorted(sa.keys() | sb.keys()):
            if sa.get(key) != sb.get(key):
                out.append(f"{prefix} superblock {key}: {sa.get(key)} != {sb.get(key)}")
        return out
    finally:
        _remove(*images, *trees)


TIME_LINE = re.compile(r"^\s*(ctime|atime|mtime|crtime|dtime):\s*(0x[0-9a-f]+)(?::([0-9a-f]+))?", re.M)


def inode_times(image: Path, paths: list[str]) -> dict[str, dict[str, str]]:
    """{path: {ctime: "0x..:..", ...}} for each path, from one debugfs run."""
    script = image.with_name(f"{image.name}.stat")
    script.write_text("".join(f'stat "{p}"\n' for p in paths))
    try:
        text = run(["debugfs", "-f", script, image], env={"PAGER": "cat", "DEBUGFS_PAGER": "__none__"}).output
    finally:
        script.unlink(missing_ok=True)
    out: dict[str, dict[str, str]] = {}
    blocks = re.split(r"^debugfs: stat \"(.*)\"$", text, flags=re.M)
    # re.split with one group: [before, path1, body1, path2, body2, ...]
    for path, body in zip(blocks[1::2], blocks[2::2], strict=True):
        out[path] = {m.group(1): f"{m.group(2)}:{m.group(3) or '0'}" for m in TIME_LINE.finditer(body)}
    return out


def superblock(image: Path) -> dict[str, str]:
    """The superblock's fields (dumpe2fs -h), by name."""
    text = run(["dumpe2fs", "-h", image], env={"LC_ALL": "C"}, check=False).output
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and value.strip() and not key.startswith(("dumpe2fs", "Journal")):
            fields[key.strip()] = value.strip()
    return fields


def compare_fat(a: Path, b: Path, region: Region, work: Path) -> list[str]:
    """Files of one FAT partition of two disks (mcopy -s -m keeps their dates)."""
    images = [extract(disk, region, work / f"{region.name}-{tag}.img") for disk, tag in ((a, "a"), (b, "b"))]
    trees = [work / f"{region.name}-{tag}" for tag in ("a", "b")]
    env = {"MTOOLS_SKIP_CHECK": "1", "TZ": "UTC"}
    try:
        for image, tree in zip(images, trees, strict=True):
            shutil.rmtree(tree, ignore_errors=True)
            tree.mkdir(parents=True)
            run(["mcopy", "-s", "-m", "-n", "-i", image, "::/", tree], env=env)
        return compare_trees(*trees, prefix=f"{region.name}:", owners=False, dirs_mtime=False)
    finally:
        _remove(*images, *trees)


# ---------------------------------------------------------------------------------------------


def sha256_file(path: Path, chunk: int = CHUNK) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def is_qcow2(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == QCOW2_MAGIC


def _as_raw(path: Path, target: Path) -> Path:
    if not is_qcow2(path):
        return path
    run(["qemu-img", "convert", "-O", "raw", path, target])
    return target


def _remove(*paths: Path) -> None:
    for item in paths:
        if item.is_dir():
            shutil.rmtree(item, ignore_errors=True)
        else:
            item.unlink(missing_ok=True)


@contextlib.contextmanager
def _workdir(work: Path | None) -> Iterator[Path]:
    if work is not None:
        work.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix="nodekiln-compare-", dir=work))
    else:
        tmp = Path(tempfile.mkdtemp(prefix="nodekiln-compare-"))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
