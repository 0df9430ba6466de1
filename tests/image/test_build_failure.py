"""A bake step that fails (here: an extra package the mirror does not have) through the real
`invoke build-image`: one clear message that names the step and shows apt's own error (not
diskimage-builder's clean-up trace), exit 2, no traceback, and nothing left in the output
directory but the log."""

from __future__ import annotations

import subprocess
import sys

import pytest

from nodekiln.images.build import mounts_under

from .conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

MISSING = "nodekiln-no-such-package"


def _no_such_package(doc) -> None:
    doc["image"]["extraPackages"] = [MISSING]


def test_a_failing_bake_step_is_named_with_apts_error(site_file, tmp_path):
    site = site_file(_no_such_package)
    out = tmp_path / "out"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "invoke",
            "build-image",
            "--site",
            str(site),
            "--out",
            str(out),
            "--kubernetes-source",
            "none",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=840,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "bake step 35-extra-packages failed; its last lines:" in result.stderr, result.stderr
    assert f"Unable to locate package {MISSING}" in result.stderr, result.stderr
    assert "full log:" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["logs"]
    assert mounts_under(tmp_path) == []
