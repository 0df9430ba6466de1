"""nodekiln.images.compare: two artifacts identical, or which files differ and how."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from nodekiln.images import compare, disk

EPOCH = 1_700_000_000


def make_tree(root: Path) -> Path:
    (root / "etc/iscsi").mkdir(parents=True)
    (root / "etc/hostname").write_text("node\n")
    (root / "etc/iscsi/initiatorname.iscsi").write_text("InitiatorName=iqn.1993-08.org.debian:01:aaa\n")
    (root / "usr/bin").mkdir(parents=True)
    tool = root / "usr/bin/tool"
    tool.write_bytes(b"\x7fELF")
    tool.chmod(0o755)
    (root / "usr/bin/alias").symlink_to("tool")
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            os.utime(Path(dirpath) / name, (EPOCH, EPOCH), follow_symlinks=False)
    os.utime(root, (EPOCH, EPOCH))
    return root


def changed_copy(src: Path, dst: Path) -> Path:
    """A copy of `src` changed in every way compare should notice."""
    shutil.copytree(src, dst, symlinks=True)
    for dirpath, dirnames, filenames in os.walk(src):  # copytree keeps mtimes of files only
        for name in (*dirnames, *filenames):
            rel = (Path(dirpath) / name).relative_to(src)
            os.utime(dst / rel, (EPOCH, EPOCH), follow_symlinks=False)
    os.utime(dst, (EPOCH, EPOCH))
    (dst / "etc/iscsi/initiatorname.iscsi").write_text("InitiatorName=iqn.1993-08.org.debian:01:bbb\n")
    os.utime(dst / "etc/iscsi/initiatorname.iscsi", (EPOCH, EPOCH))
    (dst / "usr/bin/tool").chmod(0o700)
    os.utime(dst / "etc/hostname", (EPOCH + 60, EPOCH + 60))
    (dst / "usr/bin/alias").unlink()
    (dst / "usr/bin/alias").symlink_to("other")
    os.utime(dst / "usr/bin/alias", (EPOCH, EPOCH), follow_symlinks=False)
    os.utime(dst / "usr/bin", (EPOCH, EPOCH))
    (dst / "etc/new").write_text("x")
    os.utime(dst / "etc/new", (EPOCH, EPOCH))
    os.utime(dst / "etc", (EPOCH, EPOCH))
    return dst


def test_identical_trees(tmp_path: Path) -> None:
    a = make_tree(tmp_path / "a")
    b = make_tree(tmp_path / "b")
    result = compare.compare_artifacts(a, b)
    assert result.identical and result.differences == []
    assert compare.tree_digest(a) == compare.tree_digest(b)


def test_changed_tree_names_each_difference(tmp_path: Path) -> None:
    a = make_tree(tmp_path / "a")
    b = changed_copy(a, tmp_path / "b")
    result = compare.compare_artifacts(a, b)
    assert not result.identical
    assert result.differences == [
        "/etc/hostname: mtime 1700000000 != 1700000060",
        "/etc/iscsi/initiatorname.iscsi: content",
        "/etc/new: only in b",
        "/usr/bin/alias: link target tool != other",
        "/usr/bin/tool: mode 0755 != 0700",
    ]
    assert compare.tree_digest(a) != compare.tree_digest(b)
    # what is left out of the digest does not count
    assert compare.tree_digest(a, exclude=["/etc/", "/usr/bin/alias", "/usr/bin/tool"]) == compare.tree_digest(
        b, exclude=["/etc/", "/usr/bin/alias", "/usr/bin/tool"]
    )
    assert "differ (5)" in result.summary()


def test_same_file_is_identical(tmp_path: Path) -> None:
    f = tmp_path / "x.raw"
    f.write_bytes(b"x" * 4096)
    g = tmp_path / "y.raw"
    g.write_bytes(b"x" * 4096)
    assert compare.compare_artifacts(f, g).identical


needs_e2fsprogs = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("mkfs.ext4", "debugfs", "dumpe2fs", "sfdisk")), reason="needs e2fsprogs, sfdisk"
)


def small_disk(tree: Path, raw: Path, work: Path) -> None:
    """A GPT disk of one ext4 partition made from `tree` the way the build makes its root."""
    work.mkdir(parents=True, exist_ok=True)
    fs_uuid = "0fc63daf-8483-4772-8e79-3d69d8477de4"
    disk.clamp_times(tree, EPOCH)
    disk.make_ext4(tree, work / "root.img", "root", 16 * disk.MIB, fs_uuid, None, EPOCH)
    with open(raw, "wb") as f:
        f.truncate(20 * disk.MIB)
    script = "label: gpt\nlabel-id: 11111111-2222-3333-4444-555555555555\n"
    script += f'start=2048, size={16 * disk.MIB // 512}, type={disk.LINUX_DATA_TYPE}, uuid={fs_uuid}, name="root"\n'
    from nodekiln.run import run

    run(["sfdisk", "--no-reread", "--no-tell-kernel", "-q", raw], input=script)
    with open(raw, "r+b") as f:
        disk.copy_sparse(work / "root.img", f.fileno(), 2048 * 512)


@needs_e2fsprogs
def test_two_disks_of_one_tree_are_identical_and_a_change_is_found_inside(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree")
    small_disk(tree, tmp_path / "a.raw", tmp_path / "wa")
    os.utime(tree / "etc/hostname", None)  # touched: clamped again; ctime moves (pinned)
    small_disk(tree, tmp_path / "b.raw", tmp_path / "wb")
    assert compare.compare_artifacts(tmp_path / "a.raw", tmp_path / "b.raw").identical

    other = changed_copy(tree, tmp_path / "other")
    small_disk(other, tmp_path / "c.raw", tmp_path / "wc")
    result = compare.compare_artifacts(tmp_path / "a.raw", tmp_path / "c.raw", work=tmp_path / "cmp")
    assert "root:/etc/iscsi/initiatorname.iscsi: content" in result.differences
    assert "root:/usr/bin/tool: mode 0755 != 0700" in result.differences
    assert "root:/etc/new: only in b" in result.differences
    assert "root:/usr/bin/alias: link target tool != other" in result.differences
    assert not list((tmp_path / "cmp").iterdir())  # its temporary files are gone


@needs_e2fsprogs
def test_inode_times_are_compared(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree")
    small_disk(tree, tmp_path / "a.raw", tmp_path / "wa")
    shutil.copy(tmp_path / "a.raw", tmp_path / "b.raw")
    region = compare.partitions(tmp_path / "b.raw")[0]
    image = compare.extract(tmp_path / "b.raw", region, tmp_path / "b-root.img")
    from nodekiln.run import run

    run(["debugfs", "-w", "-R", f"set_inode_field /etc/hostname ctime @{EPOCH + 5}", image])
    with open(tmp_path / "b.raw", "r+b") as f:
        disk.copy_sparse(image, f.fileno(), region.start)
    result = compare.compare_artifacts(tmp_path / "a.raw", tmp_path / "b.raw")
    assert any(d.startswith("root:/etc/hostname: ctime ") for d in result.differences), result.differences
