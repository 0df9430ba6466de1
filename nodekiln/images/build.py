"""`build-image`: recipe -> root tree (diskimage-builder) -> bootable disk -> qcow2/raw + manifest.

Artifacts are named by the input hash: `<site>-<hash>.qcow2` and `<site>-<hash>.manifest.json`
in the output directory. The manifest is written last (temp name, then rename), so it marks a
complete build: with it and its artifacts present, the build is a cache hit and does nothing.

Nothing partial ever sits at a final path: every artifact is written under a temporary name
in the output directory and renamed on success. Ctrl-C or SIGTERM stops diskimage-builder's
whole process group (its own traps unmount its chroot), then any mount left under the work
directory is unmounted and the work directory removed. The disk itself is assembled from
files (disk.py): no loop device or mount exists to leak.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from nodekiln.config.recipe import ImageRecipe
from nodekiln.errors import NodekilnError
from nodekiln.images import dib, disk, manifest, preflight
from nodekiln.run import run

DEFAULT_OUT = Path("build/images")
GIB = 1024**3


class SiteLike(Protocol):
    """What the build needs from a site (nodekiln.config.site.Site has it)."""

    @property
    def name(self) -> str: ...
    @property
    def directory(self) -> Path: ...

    image: ImageRecipe
    kubernetes: Any


class BuildInterrupted(NodekilnError):
    """The build was stopped (Ctrl-C or SIGTERM); nothing was left behind."""

    exit_code = 130


@dataclass
class BuildResult:
    site: str
    input_hash: str
    artifacts: dict[str, Path]  # format -> path
    manifest_path: Path
    manifest: dict[str, Any]
    cache_hit: bool
    seconds: float
    log: Path | None = None
    stages: list[dict[str, Any]] = field(default_factory=list)

    @property
    def image(self) -> Path:
        """The main artifact: qcow2 when built, else the first format."""
        return self.artifacts.get("qcow2") or next(iter(self.artifacts.values()))


@dataclass(frozen=True)
class Plan:
    site: str
    recipe: ImageRecipe
    kubernetes_version: str
    site_dir: Path
    inputs: dict[str, Any]
    input_hash: str
    out_dir: Path
    formats: tuple[str, ...]

    @property
    def stem(self) -> str:
        return f"{self.site}-{manifest.short(self.input_hash)}"

    def artifact(self, fmt: str) -> Path:
        return self.out_dir / f"{self.stem}.{fmt}"

    @property
    def manifest_path(self) -> Path:
        return self.out_dir / f"{self.stem}.manifest.json"

    @property
    def log(self) -> Path:
        return self.out_dir / "logs" / f"{self.stem}.log"


def resolve_recipe(
    site: SiteLike,
    kubernetes_source_override: str | None,
    formats: list[str] | tuple[str, ...] | None,
    kernel: str | None = None,
) -> ImageRecipe:
    """The site's recipe with command-line overrides applied (validated like the site file).

    A `local:DIR` given on the command line is relative to the current directory; one in
    the site file is relative to the site file's folder.
    """
    data = site.image.model_dump()
    if kubernetes_source_override is not None:
        source = kubernetes_source_override
        if source.startswith("local:") and len(source) > 6:
            source = "local:" + str(Path(source[6:]).expanduser().resolve())
        data["kubernetesSource"] = source
    if formats:
        data["formats"] = list(dict.fromkeys(formats))
    if kernel:
        data["kernel"] = kernel
    return ImageRecipe.model_validate(data)


def plan_build(
    site: SiteLike,
    out_dir: Path = DEFAULT_OUT,
    kubernetes_source_override: str | None = None,
    formats: list[str] | tuple[str, ...] | None = None,
    kernel: str | None = None,
) -> Plan:
    recipe = resolve_recipe(site, kubernetes_source_override, formats, kernel)
    version = site.kubernetes.version
    data = manifest.inputs(recipe, version, site.directory)
    return Plan(
        site.name,
        recipe,
        version,
        site.directory,
        data,
        manifest.input_hash(data),
        Path(out_dir),
        tuple(recipe.formats),
    )


def cached(plan: Plan) -> BuildResult | None:
    """The earlier build of these exact inputs, if its manifest and artifacts are all there."""
    if not plan.manifest_path.exists():
        return None
    try:
        data = json.loads(plan.manifest_path.read_text())
    except (OSError, ValueError):
        return None
    sizes = {a["format"]: a["size"] for a in data.get("artifacts", [])}
    artifacts = {}
    for fmt in plan.formats:
        path = plan.artifact(fmt)
        if fmt not in sizes or not path.exists() or path.stat().st_size != sizes[fmt]:
            return None
        artifacts[fmt] = path
    return BuildResult(
        plan.site, plan.input_hash, artifacts, plan.manifest_path, data, True, 0.0, stages=data.get("stages", [])
    )


def report_cache_hit(plan, started: float, console: Console) -> BuildResult | None:
    """The finished build of `plan`'s inputs, if one exists (and say so), else None."""
    hit = cached(plan)
    if hit is not None:
        hit.seconds = time.monotonic() - started
        console.print(f"cache hit: {plan.stem} (inputs unchanged), nothing to do")
    return hit


def start_build(plan) -> Path:
    """Make the output folder, start a fresh build log; returns this build's work folder."""
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    plan.log.parent.mkdir(parents=True, exist_ok=True)
    plan.log.write_text("")
    return plan.out_dir / f".work-{plan.stem}-{os.getpid()}"


def build_image(
    site: SiteLike,
    out_dir: Path = DEFAULT_OUT,
    kubernetes_source_override: str | None = None,
    formats: list[str] | tuple[str, ...] | None = None,
    *,
    console: Console | None = None,
    check_sources: bool = True,
    install_tools: bool = True,
) -> BuildResult:
    """Build the site's node image (or find it built); see the module docstring."""
    started = time.monotonic()
    console = console or Console(stderr=True)
    plan = plan_build(site, out_dir, kubernetes_source_override, formats)
    hit = report_cache_hit(plan, started, console)
    if hit is not None:
        return hit

    preflight.ensure_host_tools(install=install_tools)
    if check_sources:
        preflight.check_sources(plan.recipe, plan.kubernetes_version, plan.site_dir)

    work = start_build(plan)
    with _stop_on_sigterm(), _cleanup(work, plan):
        return _build(plan, work, console, started)


def _build(plan: Plan, work: Path, console: Console, started: float) -> BuildResult:
    stages: list[dict[str, Any]] = []
    times = dib.StepTimes()
    hooks = dib.HookTimes()
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console, transient=False
    ) as progress:

        @contextlib.contextmanager
        def stage(name: str) -> Iterator[Any]:
            task = progress.add_task(name)
            t0 = time.monotonic()
            try:
                yield task
            finally:
                seconds = round(time.monotonic() - t0, 1)
                stages.append({"name": name, "seconds": seconds})
                progress.update(task, description=f"{name} [dim]({seconds} s)[/]", completed=1, total=1)
                progress.stop_task(task)

        stage_dir = work / "stage"
        with stage("stage bake steps"):
            dib.write_stage(stage_dir, plan.recipe, plan.kubernetes_version, plan.site_dir)

        with stage("diskimage-builder: root tree") as task:

            def on_line(line: str) -> None:
                hooks.feed(line, time.monotonic())
                step = times.feed(line)
                if step is not None:
                    progress.update(task, description=f"diskimage-builder: bake step {step}")
                elif "Running hooks from" in line or "dib-run-parts Running" in line:
                    hook = line.rsplit("/", 1)[-1].strip()
                    progress.update(task, description=f"diskimage-builder: {hook[:60]}")

            tar = dib.build_tree(plan.recipe, stage_dir, work, plan.log, on_line=on_line)
        stages[-1]["slowestHooks"] = hooks.slowest()
        with stage("unpack root tree"):
            tree = work / "tree"
            dib.extract_tree(tar, tree)
            tar.unlink()

        with stage("manifest"):
            kernel_file, _ = disk.find_kernel(tree)
            inside = manifest.inside_manifest(
                site=plan.site,
                hash_hex=plan.input_hash,
                input_data=plan.inputs,
                tools=tool_versions(),
                packages=manifest.installed_packages(tree),
                kernel=kernel_file[len("vmlinuz-") :],
                bake_steps=times.steps,
                kubernetes_source=_source_report(tree),
            )
            target = tree / manifest.IMAGE_MANIFEST_PATH
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(manifest.dumps(inside))

        raw = work / "disk.raw"
        with stage("assemble GPT disk (BIOS + UEFI)"):
            disk.assemble(
                tree,
                raw,
                plan.recipe.diskSizeGiB * GIB,
                manifest.short(plan.input_hash),
                work / "assembly",
                log=plan.log,
            )
            shutil.rmtree(tree)

        artifacts: dict[str, Path] = {}
        entries = []
        # raw last: it is the assembled disk itself, moved rather than copied
        for fmt in sorted(plan.formats, key=lambda f: f == "raw"):
            final = plan.artifact(fmt)
            partial = final.with_name(f".{final.name}.partial")
            with stage(f"convert to {fmt}" + (" (compressed)" if fmt == "qcow2" else "")):
                if fmt == "raw":
                    raw.rename(partial)
                else:
                    disk.convert(raw, partial, fmt, log=plan.log, compression=plan.recipe.qcow2Compression)
                entries.append({**manifest.artifact_entry(partial, fmt), "file": final.name})
            artifacts[fmt] = partial
        for fmt, partial in artifacts.items():
            partial.replace(plan.artifact(fmt))
            artifacts[fmt] = plan.artifact(fmt)

    seconds = time.monotonic() - started
    full = manifest.write_beside(plan.manifest_path, inside, stages=stages, artifacts=entries, seconds=seconds)
    _print_time_report(console, stages, times.steps, seconds)
    return BuildResult(
        plan.site, plan.input_hash, artifacts, plan.manifest_path, full, False, seconds, plan.log, stages
    )


def _source_report(tree: Path) -> str:
    report = tree / "usr/share/nodekiln/kubernetes-source.txt"
    return report.read_text().strip() if report.exists() else ""


def _print_time_report(
    console: Console, stages: list[dict[str, Any]], steps: list[dict[str, Any]], seconds: float
) -> None:
    """Where the time went: each stage, DIB's slowest hooks, and the slowest bake steps."""
    console.print(f"built in {seconds:.0f} s:")
    for s in stages:
        console.print(f"  {s['seconds']:7.1f} s  {s['name']}")
        if s.get("slowestHooks"):
            console.print(
                "             slowest hooks: " + ", ".join(f"{h['name']} {h['seconds']} s" for h in s["slowestHooks"])
            )
    slow = sorted(steps, key=lambda s: -float(s["seconds"]))[:5]
    if slow:
        console.print(
            "  bake steps (inside diskimage-builder): " + ", ".join(f"{s['name']} {s['seconds']} s" for s in slow)
        )


def tool_versions() -> dict[str, str]:
    """Versions of the programs that made the image (recorded, not hashed)."""

    def first_line(argv: list[str]) -> str:
        try:
            out = run(argv, check=False, timeout=10).output.strip().splitlines()
            return out[0] if out else "unknown"
        except Exception:
            return "unknown"

    return {
        "diskimage-builder": dib.dib_version(),
        "qemu-img": first_line(["qemu-img", "--version"]),
        "mke2fs": first_line(["mke2fs", "-V"]),
        "grub-mkimage": first_line(["grub-mkimage", "--version"]),
        "sfdisk": first_line(["sfdisk", "--version"]),
        "debootstrap": first_line(["dpkg-query", "-W", "-f", "${Version}", "debootstrap"]),
        "python": platform.python_version(),
    }


@contextlib.contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into an exception so cleanup runs as it does for Ctrl-C."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _cleanup(work: Path, plan: Plan) -> Iterator[None]:
    """Whatever happens: no mounts under `work`, no `work`, no partial artifacts."""
    try:
        yield
    except KeyboardInterrupt:
        _teardown(work, plan)
        raise BuildInterrupted(f"build interrupted; cleaned up (log: {plan.log})") from None
    except BaseException:
        _teardown(work, plan)
        raise
    else:
        _teardown(work, plan)


def _teardown(work: Path, plan: Plan) -> None:
    # Ignore further Ctrl-C while cleaning, or the cleanup itself could be interrupted.
    try:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:
        previous = None
    try:
        kill_processes_rooted_under(work)
        unmount_under(work)
        for _ in range(5):  # a process that escaped the kill may still be writing: retry
            shutil.rmtree(work, ignore_errors=True)
            if not work.exists():
                break
            kill_processes_rooted_under(work)
            time.sleep(1)
        for partial in plan.out_dir.glob(f".{plan.stem}.*.partial"):
            partial.unlink(missing_ok=True)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below `path`, deepest first."""
    root = str(path.resolve())
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if point == root or point.startswith(root + "/"):
                points.append(point)
    return sorted(points, key=len, reverse=True)


def processes_rooted_under(path: Path) -> list[int]:
    """PIDs whose root directory lies under `path`: programs in diskimage-builder's chroot."""
    root = str(path.resolve())
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            target = os.readlink(entry / "root")
        except OSError:
            continue
        if target == root or target.startswith(root + "/"):
            found.append(int(entry.name))
    return found


def kill_processes_rooted_under(path: Path, wait: float = 5.0) -> None:
    """Kill what still runs in the build's chroot. Killing DIB's process group does not reach
    it all: sudo (use_pty) starts its command in a session of its own, so an apt or dpkg in the
    chroot can outlive DIB and write into the tree while it is being removed."""
    if not path.exists():
        return
    deadline = time.monotonic() + wait
    while (pids := processes_rooted_under(path)) and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)


def unmount_under(path: Path) -> None:
    """Unmount what diskimage-builder may have left mounted (it cleans up; this is the net)."""
    if not path.exists():
        return
    for point in mounts_under(path):
        run(["umount", "-l", point], check=False)
