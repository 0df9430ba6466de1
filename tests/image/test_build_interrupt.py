"""Ctrl-C in the middle of `build-image` (inside diskimage-builder's chroot, with its mounts up)
leaves no partial artifact at the final path, no mount, no loop device, no process; the next
run in the same output directory works — it is the session's image build (conftest)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nodekiln.images.build import mounts_under, plan_build

from .conftest import REPO, TEST_IMAGES, kubernetes_local_dir

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

SCRIPT = """
import signal, sys
from pathlib import Path
# A shell that starts jobs in the background hands them SIGINT ignored; a terminal does not.
signal.signal(signal.SIGINT, signal.default_int_handler)
from nodekiln.images.build import build_image
from nodekiln.config.site import load_site
build_image(load_site(sys.argv[1]), Path(sys.argv[2]), kubernetes_source_override=sys.argv[3])
"""
# A line diskimage-builder logs once it runs hooks inside the chroot (proc/sys/dev mounted).
MIDWAY = "Running /tmp/in_target.d/install.d"


def loop_devices() -> str:
    return subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout


def test_interrupted_build_leaves_nothing_behind(test_site):
    if os.environ.get("NODEKILN_TEST_IMAGE"):
        pytest.skip("testing a given image: no build here")
    out = TEST_IMAGES
    source = f"local:{kubernetes_local_dir()}"
    plan = plan_build(test_site, out, source)
    # Already built (a developer's rerun)? Hide its manifest so the build starts, and check the
    # interrupted build leaves the finished artifact untouched; CI starts from an empty dir.
    hidden = plan.manifest_path.with_name("hidden-for-interrupt-test.json")
    if plan.manifest_path.exists():
        plan.manifest_path.rename(hidden)
    try:
        _interrupt_and_check(test_site, out, source, plan)
    finally:
        if hidden.exists():
            hidden.rename(plan.manifest_path)


def _stat(path: Path) -> tuple[int, int] | None:
    return (path.stat().st_ino, path.stat().st_mtime_ns) if path.exists() else None


def _interrupt_and_check(test_site, out: Path, source: str, plan) -> None:
    before = {fmt: _stat(plan.artifact(fmt)) for fmt in plan.formats}
    loops_before = loop_devices()
    log = plan.log
    log.parent.mkdir(parents=True, exist_ok=True)
    log.unlink(missing_ok=True)  # an earlier build's log already has the marker
    console = out / "logs" / "interrupt-test-output.txt"
    with open(console, "w") as sink:  # a file, not a pipe: the build never blocks on output
        proc = subprocess.Popen(
            [sys.executable, "-c", SCRIPT, str(test_site.file), str(out), source],
            cwd=REPO,
            stdout=sink,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        deadline = time.monotonic() + 420
        while time.monotonic() < deadline and proc.poll() is None:
            if log.exists() and MIDWAY in log.read_text(errors="replace"):
                break
            time.sleep(1)
        assert proc.poll() is None, f"build ended before it could be interrupted:\n{console.read_text()}"
        assert MIDWAY in log.read_text(errors="replace"), "build never reached the chroot stage"
        work = next(out.glob(f".work-{plan.stem}-*"))
        assert mounts_under(work), "expected diskimage-builder's chroot mounts while it runs"
        proc.send_signal(signal.SIGINT)  # what Ctrl-C in a terminal does
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.terminate()  # the build cleans up on SIGTERM too
            proc.wait(timeout=60)
    output = console.read_text()
    assert proc.returncode != 0
    assert "interrupted" in output, output[-2000:]
    assert not plan.manifest_path.exists()
    for fmt in plan.formats:
        assert _stat(plan.artifact(fmt)) == before[fmt], f"{fmt} artifact touched"
    assert not list(out.glob(f".{plan.stem}*")), "partial files left"
    assert not list(out.glob(f".work-{plan.stem}-*")), "work directory left"
    assert mounts_under(out) == []
    assert loop_devices() == loops_before
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(out / f".work-{plan.stem}") not in ps, "a build process survived"
