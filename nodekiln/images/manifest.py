"""Input hash and build manifest: what went into an image and what came out.

The input hash covers everything that decides the image's content: the recipe, the
Kubernetes version, every file of the bake steps and the DIB element, the disk assembly code,
and the bytes of a local Kubernetes source and of preloaded image archives. Same inputs,
same hash: the build is skipped (artifacts are named by the hash).

Two manifests: the one inside the image (/usr/share/nodekiln/manifest.json) holds all that
is known before the disk exists; the one beside the artifact adds the artifacts' sha256 and
size (a file cannot hold its own hash) and the times of the later stages. Every key of the
inside manifest has the same value in the one beside it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from nodekiln import assets
from nodekiln.config.recipe import ImageRecipe

SCHEMA = "nodekiln/image-manifest/v1"
IMAGE_MANIFEST_PATH = "usr/share/nodekiln/manifest.json"  # inside the image, relative to /
# Written by images/steps/90-finish.sh: the apt Release files the packages came from, and the
# build's epoch (SOURCE_DATE_EPOCH) taken from them or from the recipe's snapshot.
MIRROR_STATE_PATH = "usr/share/nodekiln/mirror-state.txt"
EPOCH_PATH = "usr/share/nodekiln/source-date-epoch"
# What differs between two builds of the same inputs (how long the bake steps took): in the
# manifest beside the artifacts only, never in the image's own copy.
BUILD_ONLY_KEYS = ("bakeSteps",)
HASH_CHARS = 16  # of the sha256 hex digest, in artifact names

IMAGES_DIR = assets.folder("images")
# Code whose changes change the image's bytes, beyond images/ itself.
ASSEMBLY_CODE = [Path(__file__).with_name("disk.py")]


def sha256_file(path: Path, chunk: int = 4 * 1024 * 1024) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def tree_digests(root: Path, skip: Iterable[str] = ("__pycache__",)) -> dict[str, str]:
    """{relative path: sha256} of every file under root (symlinks by target), sorted."""
    out: dict[str, str] = {}
    skipped = set(skip)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skipped)
        for name in sorted(filenames):
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                out[rel] = "symlink:" + os.readlink(path)
            else:
                mode = "x" if os.access(path, os.X_OK) else "-"
                out[rel] = f"{mode}{sha256_file(path)}"
    return dict(sorted(out.items()))


def bake_inputs(images_dir: Path = IMAGES_DIR) -> dict[str, str]:
    """Digests of the bake steps, the DIB element and the assembly code."""
    # images/iso/ is the appliance ISO's boot code, not part of the root tree: the ISO's own
    # input hash covers it (nodekiln/images/iso.py).
    files = {
        f"images/{k}": v
        for k, v in tree_digests(images_dir).items()
        if not k.endswith(".md") and not k.startswith("iso/")
    }
    for code in ASSEMBLY_CODE:
        files[f"nodekiln/images/{code.name}"] = sha256_file(code)
    return dict(sorted(files.items()))


def inputs(
    recipe: ImageRecipe, kubernetes_version: str, site_dir: Path, images_dir: Path = IMAGES_DIR
) -> dict[str, Any]:
    """Everything the input hash covers, as JSON-able data.

    A local source is recorded by content, not by path: moving the directory keeps the hash.
    """
    recipe_data = recipe.model_dump(mode="json")
    local = recipe.local_source_dir(site_dir)
    if local is not None:
        recipe_data["kubernetesSource"] = "local"
    data: dict[str, Any] = {
        "recipe": recipe_data,
        "kubernetesVersion": kubernetes_version,
        "bakeSteps": bake_inputs(images_dir),
    }
    if local is not None:
        data["localSource"] = tree_digests(local)
    if recipe.preloadImages:
        data["preloadImages"] = {p: sha256_file(site_dir / p) for p in recipe.preloadImages}
    return data


def input_hash(data: dict[str, Any]) -> str:
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def short(hash_hex: str) -> str:
    return hash_hex[:HASH_CHARS]


def installed_packages(tree: Path) -> dict[str, str]:
    """{package: version} from the tree's dpkg status file (no chroot needed)."""
    status = tree / "var/lib/dpkg/status"
    packages: dict[str, str] = {}
    if not status.exists():
        return packages
    for stanza in status.read_text(errors="replace").split("\n\n"):
        fields = dict(re.findall(r"^([A-Za-z-]+): (.*)$", stanza, re.M))
        if fields.get("Status", "").endswith(" installed") and "Package" in fields:
            arch = fields.get("Architecture", "")
            name = fields["Package"] + (f":{arch}" if arch not in ("", "all", "amd64") else "")
            packages[name] = fields.get("Version", "")
    return dict(sorted(packages.items()))


def mirror_state(tree: Path) -> list[dict[str, Any]]:
    """The Release files apt fetched for the build, as the bake steps recorded them: the exact
    mirror state the packages came from (file name, sha256, Date)."""
    path = tree / MIRROR_STATE_PATH
    if not path.exists():
        return []
    entries = []
    for line in path.read_text().splitlines():
        parts = line.split(maxsplit=2)
        if len(parts) != 3 or not parts[1].isdigit():
            continue
        date = dt.datetime.fromtimestamp(int(parts[1]), dt.UTC).isoformat() if int(parts[1]) else ""
        entries.append({"file": parts[2], "sha256": parts[0], "date": date})
    return entries


def source_date_epoch(tree: Path) -> int | None:
    """The build's epoch recorded in the tree (file times are clamped to it), if any."""
    path = tree / EPOCH_PATH
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def for_tree(inside: dict[str, Any]) -> dict[str, Any]:
    """The image's own copy of the manifest: without what differs between builds of the same
    inputs (the beside manifest keeps those keys, so both still agree on every key here)."""
    return {k: v for k, v in inside.items() if k not in BUILD_ONLY_KEYS}


def inside_manifest(
    *,
    site: str,
    hash_hex: str,
    input_data: dict[str, Any],
    tools: dict[str, str],
    packages: dict[str, str],
    kernel: str,
    bake_steps: list[dict[str, Any]],
    kubernetes_source: str,
    boot_chain: dict[str, Any],
    mirror: list[dict[str, Any]] | None = None,
    epoch: int | None = None,
) -> dict[str, Any]:
    return {
        "mirrorState": mirror or [],
        "sourceDateEpoch": epoch,
        "schema": SCHEMA,
        "site": site,
        "inputHash": hash_hex,
        "inputs": input_data,
        "kubernetesSource": kubernetes_source,
        "tools": tools,
        "kernel": kernel,
        "packages": packages,
        "bakeSteps": bake_steps,
        "bootChain": boot_chain,
    }


def full_manifest(
    inside: dict[str, Any],
    *,
    stages: list[dict[str, Any]],
    artifacts: list[dict[str, Any]],
    built_at: str,
    seconds: float,
) -> dict[str, Any]:
    return {**inside, "stages": stages, "artifacts": artifacts, "builtAt": built_at, "buildSeconds": round(seconds, 1)}


def artifact_entry(path: Path, fmt: str) -> dict[str, Any]:
    return {"format": fmt, "file": path.name, "sha256": sha256_file(path), "size": path.stat().st_size}


def dumps(manifest: dict[str, Any]) -> str:
    return json.dumps(manifest, indent=2, sort_keys=True) + "\n"


def agree(inside: dict[str, Any], beside: dict[str, Any]) -> list[str]:
    """Keys of the inside manifest whose value differs in (or is missing from) the one beside."""
    return sorted(k for k, v in inside.items() if beside.get(k) != v)


def write_beside(
    path: Path, inside: dict[str, Any], *, stages: list[dict[str, Any]], artifacts: list[dict[str, Any]], seconds: float
) -> dict[str, Any]:
    """Write the full manifest next to the artifacts (temp name, then rename); return it."""
    full = full_manifest(
        inside,
        stages=stages,
        artifacts=artifacts,
        built_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        seconds=seconds,
    )
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(dumps(full))
    tmp.replace(path)
    return full
