"""The base image Packer's qemu builder starts from when the site names none.

diskimage-builder's ``debian-minimal`` plus the ``nodekiln-base`` element (cloud-init, OpenSSH,
systemd-networkd; read-write root, ``/var`` on the data partition), assembled by disk.py like
the node image itself. Packer boots it, gets in with a build key from a NoCloud seed and runs
the bake steps. Cached by its own input hash: the recipe's distribution and mirror, the
element, the assembly code.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

from nodekiln.config.recipe import ImageRecipe
from nodekiln.images import dib, disk
from nodekiln.images.manifest import IMAGES_DIR, input_hash, sha256_file, short, tree_digests

BASE_ELEMENT = "nodekiln-base"
# Room on the base's root file system for what the bake steps install (containerd, Kubernetes).
ROOT_HEADROOM = 2560 * disk.MIB


def base_inputs(recipe: ImageRecipe) -> dict[str, object]:
    mirror, security = recipe.effective_mirror()
    return {
        "distribution": recipe.distribution,
        "release": recipe.release,
        "mirror": mirror,
        "securityMirror": security,
        "diskSizeGiB": recipe.diskSizeGiB,
        "element": tree_digests(IMAGES_DIR / "elements" / BASE_ELEMENT),
        "disk.py": sha256_file(Path(disk.__file__)),
        "dib": dib.dib_version(),
    }


def base_image_path(recipe: ImageRecipe, out_dir: Path) -> Path:
    return out_dir / f"nodekiln-base-{short(input_hash(base_inputs(recipe)))}.qcow2"


def build_base_image(recipe: ImageRecipe, out_dir: Path, on_line: Callable[[str], None] | None = None) -> Path:
    """The base qcow2 for this recipe: built once, then reused (same inputs, same file)."""
    target = base_image_path(recipe, out_dir)
    if target.exists():
        return target
    out_dir.mkdir(parents=True, exist_ok=True)
    work = out_dir / f".{target.stem}.work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    log = out_dir / f"{target.stem}.log"
    log.unlink(missing_ok=True)
    try:
        stage = work / "stage"
        stage.mkdir()
        tar = dib.build_tree(recipe, stage, work, log, on_line=on_line, elements=(BASE_ELEMENT,))
        tree = work / "tree"
        dib.extract_tree(tar, tree)
        tar.unlink()
        raw = work / "disk.raw"
        data = input_hash(base_inputs(recipe))
        # Our own GRUB: the base tree has no bake steps, so no signed chain; Packer boots it
        # without Secure Boot and the baked image gets the recipe's chain at assembly.
        disk.assemble(
            tree,
            raw,
            recipe.diskSizeGiB * 1024 * disk.MIB,
            data,
            work / "asm",
            log,
            root_extra_bytes=ROOT_HEADROOM,
            secure_boot="off",
        )
        partial = target.with_suffix(".partial")
        # Uncompressed: the build VM reads it under TCG, where every CPU cycle counts.
        disk.convert(raw, partial, "qcow2", compress=False, log=log)
        partial.replace(target)
        target.with_suffix(".json").write_text(json.dumps(base_inputs(recipe), indent=2, sort_keys=True) + "\n")
        return target
    finally:
        shutil.rmtree(work, ignore_errors=True)
