"""Reproducible assembly: the same tree gives the same file system bytes, whenever it is made."""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path

import pytest

from nodekiln.images import disk

EPOCH = 1_700_000_000
UUID = "0fc63daf-8483-4772-8e79-3d69d8477de4"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree(root: Path, names: list[str]) -> Path:
    """Files created in the order given (another order gives another readdir order)."""
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{name}\n")
    (root / "link").symlink_to("a")
    return root


def test_reproducible_env() -> None:
    assert disk.reproducible_env(None) == {"LC_ALL": "C", "TZ": "UTC"}
    assert disk.reproducible_env(EPOCH) == {
        "LC_ALL": "C",
        "TZ": "UTC",
        "E2FSPROGS_FAKE_TIME": str(EPOCH),
        "SOURCE_DATE_EPOCH": str(EPOCH),
    }


def test_clamp_times_clamps_newer_keeps_older_and_does_not_follow_links(tmp_path: Path) -> None:
    root = tree(tmp_path / "t", ["a", "d/b"])
    os.utime(root / "a", (EPOCH - 100, EPOCH - 100))
    target_times = os.stat(root / "a")
    assert disk.clamp_times(root, EPOCH) >= 3  # root, d, d/b, link (and not a)
    assert os.stat(root / "a").st_mtime == target_times.st_mtime == EPOCH - 100
    for path in (root, root / "d", root / "d/b"):
        assert os.lstat(path).st_mtime == EPOCH
    # (a directory's atime moves again when it is read: relatime; make_ext4 pins atimes)
    assert os.lstat(root / "d/b").st_atime == EPOCH
    assert os.lstat(root / "link").st_mtime == EPOCH


needs_mkfs = pytest.mark.skipif(not shutil.which("mkfs.ext4") or not shutil.which("debugfs"), reason="e2fsprogs")


@needs_mkfs
def test_ext4_of_one_tree_is_byte_identical_whenever_and_in_whatever_order_it_was_unpacked(tmp_path: Path) -> None:
    names = ["a", "b", "etc/x", "etc/y", "usr/lib/z"]
    first = tree(tmp_path / "one", names)
    time.sleep(1.1)  # another ctime for every inode of the second tree
    second = tree(tmp_path / "two", list(reversed(names)))
    images = []
    for source, name in ((first, "one.img"), (second, "two.img")):
        disk.clamp_times(source, EPOCH)
        image = tmp_path / name
        disk.make_ext4(source, image, "root", 16 * disk.MIB, UUID, None, EPOCH)
        images.append(image)
    assert sha(images[0]) == sha(images[1])
    used = disk.used_inodes(images[0])
    assert 2 in used and 11 in used and len(used) == 1 + 1 + 3 + 5 + 1  # root, lost+found, dirs, files, link


@needs_mkfs
def test_ext4_without_an_epoch_still_builds(tmp_path: Path) -> None:
    source = tree(tmp_path / "t", ["a"])
    disk.make_ext4(source, tmp_path / "x.img", "root", 16 * disk.MIB, UUID, None)
    assert (tmp_path / "x.img").stat().st_size == 16 * disk.MIB


@pytest.mark.skipif(not shutil.which("mkfs.vfat") or not shutil.which("mcopy"), reason="dosfstools, mtools")
def test_fat_is_byte_identical_across_runs(tmp_path: Path) -> None:
    files = {"EFI/BOOT/BOOTX64.EFI": b"MZ" * 100, "EFI/debian/grub.cfg": b"search\n"}
    disk.write_fat(tmp_path / "a.img", files, "NK-ESP", "1234ABCD", 64 * 1024, None, EPOCH)
    time.sleep(2.1)  # FAT dates have two-second steps
    disk.write_fat(tmp_path / "b.img", files, "NK-ESP", "1234ABCD", 64 * 1024, None, EPOCH)
    assert sha(tmp_path / "a.img") == sha(tmp_path / "b.img")


def test_qcow2_conversion_writes_in_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: list[list[str]] = []
    monkeypatch.setattr(disk, "run", lambda argv, **kw: seen.append([str(a) for a in argv]))
    disk.convert(tmp_path / "d.raw", tmp_path / "d.qcow2", "qcow2")
    assert "-c" in seen[0] and "-W" not in seen[0]  # out-of-order writes reorder clusters
