"""Run diskimage-builder to produce the node's root tree (a tar), never a disk.

diskimage-builder's own disk assembly needs loop devices with partition scanning,
device-mapper and mounts; nodekiln assembles the disk from files instead (disk.py). The
nodekiln-node element tells DIB there is no block device, so DIB writes the tar and then
fails at `dib-block-device getval image-path` with exit 1: `build_tree` accepts exactly that
case (exit 1 *and* that command in the log *and* a complete tar), nothing else.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shlex
import shutil
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from nodekiln.config.recipe import ImageRecipe
from nodekiln.errors import NodekilnError, ToolError
from nodekiln.images import disk
from nodekiln.images.manifest import IMAGES_DIR
from nodekiln.run import run

STEP_BEGIN = "NODEKILN-STEP-BEGIN "
STEP_END = "NODEKILN-STEP-END "
EXPECTED_FAILURE = "getval image-path"
ELEMENT = "nodekiln-node"
BASE_ELEMENTS = {"debian": "debian-minimal", "ubuntu": "ubuntu-minimal"}
# The DIB phases worth showing as progress, recognised from its log.
PHASE_MARKERS = {
    "Running hooks from /tmp/in_target.d/root.d": "root.d",
    "debootstrap": "debootstrap",
    "Target: pre-install.d": "pre-install.d",
    "Target: install.d": "install.d",
    "Target: post-install.d": "post-install.d",
    "Running hooks from": None,
}


class DibError(NodekilnError):
    """diskimage-builder failed or produced no tree."""


@dataclass
class StepTimes:
    """Bake-step timings parsed from the NODEKILN-STEP lines of the build output."""

    steps: list[dict[str, object]] = field(default_factory=list)
    current: str | None = None

    def feed(self, line: str) -> str | None:
        """Record a step line; return the step now running (or None if the line is not one)."""
        text = log_text(line).strip()
        if text.startswith(STEP_BEGIN):
            self.current = text[len(STEP_BEGIN) :].strip()
            return self.current
        if text.startswith(STEP_END):
            parts = text[len(STEP_END) :].split()
            if len(parts) == 2:
                self.steps.append({"name": parts[0], "seconds": round(float(parts[1]), 2)})
            self.current = None
            return None
        return None


@dataclass
class HookTimes:
    """How long each diskimage-builder hook ran (debootstrap, package installs, the bake steps,
    ...), timed as DIB's `dib-run-parts` lines arrive: where a build's time goes."""

    hooks: dict[str, float] = field(default_factory=dict)
    current: tuple[str, float] | None = None

    def feed(self, line: str, now: float) -> None:
        text = log_text(line).strip()
        if not text.startswith("dib-run-parts "):
            return
        if self.current is not None:
            name, since = self.current
            self.hooks[name] = self.hooks.get(name, 0.0) + now - since
            self.current = None
        if text.startswith("dib-run-parts Running "):
            path = text[len("dib-run-parts Running ") :].strip()
            phase, _, hook = path.rpartition("/")
            self.current = (f"{phase.rsplit('/', 1)[-1]}/{hook}", now)

    def slowest(self, n: int = 6) -> list[dict[str, object]]:
        ranked = sorted(self.hooks.items(), key=lambda kv: -kv[1])[:n]
        return [{"name": name, "seconds": round(sec, 1)} for name, sec in ranked]


def write_stage(
    stage: Path,
    recipe: ImageRecipe,
    kubernetes_version: str,
    site_dir: Path,
    images_dir: Path = IMAGES_DIR,
    in_target: Path = Path("/tmp/in_target.d/nodekiln-stage"),
) -> None:
    """The stage directory the element bakes from: steps, run-steps.sh, env, local source.

    `in_target` is where the stage is seen inside the image being built (Packer uploads it
    elsewhere than diskimage-builder's hooks directory).
    """
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    shutil.copytree(images_dir / "steps", stage / "steps")
    shutil.copy2(images_dir / "run-steps.sh", stage / "run-steps.sh")
    in_chroot = in_target
    kind = recipe.kubernetes_source_kind
    settings = {
        "NODEKILN_K8S_VERSION": kubernetes_version,
        "NODEKILN_KUBERNETES_SOURCE": kind,
        "NODEKILN_KUBERNETES_SOURCE_DIR": str(in_chroot / "local") if kind == "local" else "",
        "NODEKILN_SANDBOX_IMAGE": recipe.sandbox_image(kubernetes_version),
        "NODEKILN_CONTAINERD_VERSION": recipe.containerd.version,
        "NODEKILN_KERNEL": recipe.kernel,
        "NODEKILN_EXTRA_PACKAGES": " ".join(recipe.extraPackages),
        "NODEKILN_ROOT_LABEL": disk.ROOT_LABEL,
        "NODEKILN_DATA_LABEL": disk.DATA_LABEL,
        # The build's epoch when the recipe pins the archive; else steps/90-finish.sh takes the
        # newest Date of the apt Release files (the mirror state), recorded in the tree.
        "NODEKILN_SOURCE_DATE_EPOCH": str(snapshot_epoch(recipe.snapshot)) if recipe.snapshot else "",
    }
    (stage / "env").write_text("".join(f"{k}={shlex.quote(v)}\n" for k, v in settings.items()))
    resolver = build_host_resolver()
    if resolver:
        (stage / "resolv.conf").write_text(resolver)
    local = recipe.local_source_dir(site_dir)
    if local is not None:
        if not local.is_dir():
            raise DibError(f"kubernetesSource {recipe.kubernetesSource}: {local} is not a directory")
        shutil.copytree(local, stage / "local", symlinks=False)
    if recipe.preloadImages:
        images = stage / "local" / "preload"
        images.mkdir(parents=True, exist_ok=True)
        for item in recipe.preloadImages:
            shutil.copy2(site_dir / item, images / Path(item).name)


def snapshot_epoch(snapshot: str) -> int:
    """A snapshot timestamp of the recipe (20261120T000000Z) as seconds since 1970 (UTC)."""
    return int(dt.datetime.strptime(snapshot, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC).timestamp())


def build_host_resolver(
    candidates: tuple[Path, ...] = (Path("/etc/resolv.conf"), Path("/run/systemd/resolve/resolv.conf")),
) -> str:
    """The build host's DNS servers, for bake steps that download (run-steps.sh uses it while
    the image's own /etc/resolv.conf points at systemd-resolved's stub, absent in a chroot).
    A loopback stub (127.0.0.53) is useless inside the chroot: then the upstream servers."""
    for path in candidates:
        try:
            text = path.read_text()
        except OSError:
            continue
        servers = [
            line.split()[1] for line in text.splitlines() if line.startswith("nameserver") and len(line.split()) > 1
        ]
        if servers and not all(s.startswith("127.") for s in servers):
            return text
    return ""


def dib_environment(recipe: ImageRecipe, stage: Path, tmp_dir: Path, images_dir: Path = IMAGES_DIR) -> dict[str, str]:
    mirror, security = recipe.effective_mirror()
    codename = recipe.codename
    env = {
        # TMP_DIR, not TMPDIR: TMPDIR leaks into the chroot and breaks ca-certificates there.
        "TMP_DIR": str(tmp_dir),
        "ELEMENTS_PATH": str(images_dir / "elements"),
        "NODEKILN_STAGE": str(stage),
        "DIB_RELEASE": codename,
        "DIB_DISTRIBUTION_MIRROR": mirror,
        # The kernel's postinst and initramfs-tools' trigger would each build an initramfs
        # (~20 s each); steps/90-finish.sh builds the only one needed, after all changes.
        "INITRD": "No",
    }
    if recipe.distribution == "ubuntu":
        env["DIB_UBUNTU_KERNEL"] = "linux-image-virtual" if recipe.kernel == "cloud" else "linux-image-generic"
    if recipe.distribution == "debian":
        env["DIB_DEBIAN_SECURITY_MIRROR"] = security
        env["DIB_APT_SOURCES_CONF"] = (
            f"default:deb {mirror} {codename} main\n"
            f"updates:deb {mirror} {codename}-updates main\n"
            f"security:deb {security} {codename}-security main\n"
        )
    return env


def build_tree(
    recipe: ImageRecipe,
    stage: Path,
    work: Path,
    log: Path,
    on_line: Callable[[str], None] | None = None,
    elements: tuple[str, ...] = (ELEMENT,),
) -> Path:
    """Run disk-image-create and return the path of the root tree tar it wrote.

    `elements` go after the distribution's base element (nodekiln-base: Packer's base image).
    """
    tmp_dir = work / "dib-tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    out = work / "root"
    env = dib_environment(recipe, stage, tmp_dir)
    # -x: the full trace goes to the log file (where a failure is diagnosed); the accepted
    # exit 1 is recognised from the image-path failure plus a complete tar, trace or not.
    argv: list[str | os.PathLike[str]] = [
        "disk-image-create",
        "-x",
        "-t",
        "tar",
        "-o",
        out,
        "--no-tmpfs",
        BASE_ELEMENTS[recipe.distribution],
        *elements,
    ]
    # Run without inheriting TMPDIR (see dib_environment).
    saved = os.environ.pop("TMPDIR", None)
    try:
        result = run(argv, env=env, log=log, on_line=on_line, check=False, capture=False, tail=40)
    finally:
        if saved is not None:
            os.environ["TMPDIR"] = saved
    tar = out.with_suffix(".tar")
    if result.returncode == 0 or (result.returncode == 1 and _failed_only_at_image_path(log, tar)):
        return tar
    raise ToolError(result.argv, result.returncode, failure_excerpt(_read(log)), log)


def _failed_only_at_image_path(log: Path, tar: Path) -> bool:
    """True if DIB wrote a complete tar and then failed where a block device was expected.

    The failure is looked for in the whole log: with -x, DIB's cleanup trace after it runs to
    more than a hundred lines.
    """
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return False
    at_image_path = EXPECTED_FAILURE in text or "Getting value for [image-path]" in text
    return at_image_path and _tar_complete(tar)


def _tar_complete(tar: Path) -> bool:
    """A tar archive ends with two zero blocks; a truncated one (killed writer) does not."""
    try:
        size = tar.stat().st_size
        if size < 1024 or size % 512:
            return False
        with open(tar, "rb") as f:
            f.seek(size - 1024)
            return f.read(1024) == bytes(1024)
    except OSError:
        return False


def _read(log: Path) -> str:
    try:
        return log.read_text(errors="replace")
    except OSError:
        return ""


def log_text(line: str) -> str:
    """A log line without DIB's timestamp prefix and nodekiln's quoting."""
    text = line.split("| ", 1)[-1].rstrip()
    return text[2:] if text.startswith("> ") else text


# Where DIB's clean-up starts after a failure: what follows is unmounting, not the cause.
CLEANUP_MARKERS = ("trap_cleanup", "unmount_image", "Unmount ")


def failure_excerpt(text: str, n: int = 25) -> list[str]:
    """What to show when diskimage-builder fails: the output of the bake step that began and
    never ended, else of the DIB hook that ran and never completed, without the -x trace and
    DIB's clean-up (the tail of the log is only that)."""
    lines = [log_text(line) for line in text.splitlines()]
    start, where = None, ""
    for i, line in enumerate(lines):
        if line.startswith(STEP_BEGIN):
            start, where = i, f"bake step {line[len(STEP_BEGIN) :].strip()}"
        elif line.startswith(STEP_END):
            start = None
    if start is None:
        for i, line in enumerate(lines):
            if line.startswith("dib-run-parts Running "):
                start, where = i, f"diskimage-builder hook {line.rsplit('/', 2)[-2]}/{line.rsplit('/', 1)[-1]}"
            elif start is not None and line.startswith("dib-run-parts ") and line.endswith(" completed"):
                start = None
    region = lines[start + 1 :] if start is not None else lines
    for i, line in enumerate(region):
        if any(marker in line for marker in CLEANUP_MARKERS):
            region = region[:i]
            break
    shown = [line for line in region if line and not line.startswith(("+ ", "++ ", "+++ "))][-n:]
    return ([f"{where} failed; its last lines:"] if where else []) + shown


def extract_tree(tar: Path, tree: Path) -> None:
    """Unpack the tar as root, keeping owners, modes, xattrs and device nodes."""
    if tree.exists():
        shutil.rmtree(tree)
    tree.mkdir(parents=True)
    run(["tar", "-C", tree, "--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf", tar])


# diskimage-builder's record of how it was run (the `manifests` element) names the build's work
# folder (`-o <out_dir>/.work-<stem>-<pid>/root`): a path of this build, not of the image.
DIB_RECORDS = ("etc/dib-manifests/dib_arguments", "etc/dib-manifests/dib_environment")
WORK_PATH = re.compile(r"(?:/[^\s\"'/]+)*/\.work-[^\s\"'/]+")


def normalise_records(tree: Path) -> list[str]:
    """Replace the build's work folder in diskimage-builder's records inside the tree by
    `<work>` (the path differs per build, the rest of the record does not); return the files
    changed. Modes and owners are kept (the file is rewritten in place)."""
    changed = []
    for rel in DIB_RECORDS:
        path = tree / rel
        if not path.is_file() or path.is_symlink():
            continue
        text = path.read_text(errors="surrogateescape")
        fixed = WORK_PATH.sub("<work>", text)
        if fixed != text:
            with open(path, "w", errors="surrogateescape") as f:
                f.write(fixed)
            changed.append(rel)
    return changed


def dib_version() -> str:
    try:
        from importlib.metadata import version

        return version("diskimage-builder")
    except Exception:  # pragma: no cover - not installed as a distribution
        return "unknown"


def tar_members(tar: Path) -> int:  # pragma: no cover - debugging aid
    with tarfile.open(tar) as t:
        return len(t.getmembers())
