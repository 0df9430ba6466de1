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
import sys
from pathlib import Path
from nodekiln.images.build import build_image
from nodekiln.site import load_site
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
    if plan.manifest_path.exists():
        pytest.skip("this image is already built (cache hit): nothing to interrupt")
    loops_before = loop_devices()
    log = plan.log
    log.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(test_site.file), str(out), source],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 420
        while time.monotonic() < deadline and proc.poll() is None:
            if log.exists() and MIDWAY in log.read_text(errors="replace"):
                break
            time.sleep(1)
        assert proc.poll() is None, f"build ended before it could be interrupted:\n{proc.stdout.read()}"
        assert MIDWAY in log.read_text(errors="replace"), "build never reached the chroot stage"
        work = next(out.glob(f".work-{plan.stem}-*"))
        assert mounts_under(work), "expected diskimage-builder's chroot mounts while it runs"
        proc.send_signal(signal.SIGINT)  # what Ctrl-C in a terminal does
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert "interrupted" in output, output[-2000:]
    assert not plan.manifest_path.exists()
    for fmt in plan.formats:
        assert not plan.artifact(fmt).exists()
    assert not list(out.glob(f".{plan.stem}*")), "partial files left"
    assert not list(out.glob(f".work-{plan.stem}-*")), "work directory left"
    assert mounts_under(out) == []
    assert loop_devices() == loops_before
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(out / f".work-{plan.stem}") not in ps, "a build process survived"
