"""`build-image`: recipe -> root tree (diskimage-builder) -> bootable disk -> qcow2/raw + manifest.

Artifacts are named by the input hash: `<site>-<hash>.qcow2` and `<site>-<hash>.manifest.json`
in the output directory. The manifest is written last (temp name, then rename), so it marks a
complete build: with it and its artifacts present, the build is a cache hit and does nothing.

Nothing partial ever sits at a final path: every artifact is written under a temporary name
in the output directory and renamed on success. Ctrl-C or SIGTERM stops diskimage-builder's
whole process group (its own traps unmount its chroot), then any mount left under the work
directory is unmounted and the work directory removed. The disk itself is assembled from
files (disk.py): no loop device or mount exists to leak.

This module is the diskimage-builder tree source; everything after the tree (manifest,
assembly, conversion, cache check, stage timing, cleanup) is pipeline.py's, shared with the
Packer source (packer_build.py).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

from nodekiln.images import dib, manifest, preflight
from nodekiln.images.pipeline import (
    DEFAULT_OUT,
    GIB,
    BuildInterrupted,
    BuildResult,
    Plan,
    SiteLike,
    Stage,
    Stages,
    cached,
    disk_tail,
    guarded,
    kill_processes_rooted_under,
    make_plan,
    mounts_under,
    processes_rooted_under,
    report_cache_hit,
    resolve_recipe,
    stage_lines,
    start_build,
    tool_versions,
    unmount_under,
)
from nodekiln.report import Reporter

# The pipeline's names that callers (tests, bench, the ISO) have always imported from here.
__all__ = [
    "DEFAULT_OUT",
    "GIB",
    "BuildInterrupted",
    "BuildResult",
    "Plan",
    "SiteLike",
    "build_image",
    "cached",
    "kill_processes_rooted_under",
    "mounts_under",
    "plan_build",
    "processes_rooted_under",
    "resolve_recipe",
    "tool_versions",
    "unmount_under",
]


def plan_build(
    site: SiteLike,
    out_dir: Path = DEFAULT_OUT,
    kubernetes_source_override: str | None = None,
    formats: list[str] | tuple[str, ...] | None = None,
    kernel: str | None = None,
) -> Plan:
    """The plan of a diskimage-builder build: the recipe, the Kubernetes version, the bake
    steps and the assembly code decide the content (manifest.inputs)."""
    recipe = resolve_recipe(site, kubernetes_source_override, formats, kernel)
    return make_plan(site, recipe, manifest.inputs(recipe, site.kubernetes.version, site.directory), out_dir)


def build_image(
    site: SiteLike,
    out_dir: Path = DEFAULT_OUT,
    kubernetes_source_override: str | None = None,
    formats: list[str] | tuple[str, ...] | None = None,
    *,
    report: Reporter | None = None,
    check_sources: bool = True,
    install_tools: bool = True,
) -> BuildResult:
    """Build the site's node image (or find it built); see the module docstring."""
    started = time.monotonic()
    console = (report or Reporter()).live  # the progress, the step log and the cache-hit line
    plan = plan_build(site, out_dir, kubernetes_source_override, formats)
    hit = report_cache_hit(plan, started, console)
    if hit is not None:
        return hit

    preflight.ensure_host_tools(install=install_tools)
    if check_sources:
        preflight.check_sources(plan.recipe, plan.kubernetes_version, plan.site_dir)

    work = start_build(plan)
    with guarded(work, plan):
        return _build(plan, work, console, started)


class ProgressLines:
    """The pipeline's StageDisplay as rich progress lines: a spinner while a stage runs, its
    seconds once done (the lines stay: they are the build's step log)."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress

    def start(self, name: str) -> TaskID:
        return self.progress.add_task(name)

    def finish(self, handle: TaskID, name: str, seconds: float) -> None:
        self.progress.update(handle, description=f"{name} [dim]({seconds} s)[/]", completed=1, total=1)
        self.progress.stop_task(handle)


def _convert_label(fmt: str) -> str:
    return f"convert to {fmt}" + (" (compressed)" if fmt == "qcow2" else "")


def _build(plan: Plan, work: Path, console: Console, started: float) -> BuildResult:
    times = dib.StepTimes()
    hooks = dib.HookTimes()
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console, transient=False
    ) as progress:
        stages = Stages(display=ProgressLines(progress))
        stage_dir = work / "stage"
        with stages("stage bake steps"):
            dib.write_stage(stage_dir, plan.recipe, plan.kubernetes_version, plan.site_dir)

        with stages("diskimage-builder: root tree") as task:

            def on_line(line: str) -> None:
                hooks.feed(line, time.monotonic())
                step = times.feed(line)
                if step is not None:
                    progress.update(task, description=f"diskimage-builder: bake step {step}")
                elif "Running hooks from" in line or "dib-run-parts Running" in line:
                    hook = line.rsplit("/", 1)[-1].strip()
                    progress.update(task, description=f"diskimage-builder: {hook[:60]}")

            tar = dib.build_tree(plan.recipe, stage_dir, work, plan.log, on_line=on_line)
        stages.last["slowestHooks"] = hooks.slowest()
        with stages("unpack root tree"):
            tree = work / "tree"
            dib.extract_tree(tar, tree)
            tar.unlink()

        result = disk_tail(
            plan,
            tree,
            work,
            stages,
            tools=tool_versions,
            bake_steps=times.steps,
            started=started,
            convert_label=_convert_label,
        )
    # After the progress lines are final, so the report follows them.
    _print_time_report(console, result.stages, times.steps, result.seconds)
    return result


def _print_time_report(console: Console, stages: list[Stage], steps: list[dict[str, Any]], seconds: float) -> None:
    """Where the time went: each stage, DIB's slowest hooks, and the slowest bake steps."""
    console.print(f"built in {seconds:.0f} s:")
    for s, line in zip(stages, stage_lines(stages), strict=True):
        console.print(line)
        if s.get("slowestHooks"):
            console.print(
                "             slowest hooks: " + ", ".join(f"{h['name']} {h['seconds']} s" for h in s["slowestHooks"])
            )
    slow = sorted(steps, key=lambda s: -float(s["seconds"]))[:5]
    if slow:
        console.print(
            "  bake steps (inside diskimage-builder): " + ", ".join(f"{s['name']} {s['seconds']} s" for s in slow)
        )
