"""`test-image IMAGE`: boot a built image and run the node checks of tests/image on it.

The checks live in one place (tests/image/test_node_image.py, testinfra); this runs them on a
given image instead of the one the test session would build.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nodekiln.errors import NodekilnError
from nodekiln.run import run

REPO = Path(__file__).resolve().parents[1]
CHECKS = REPO / "tests" / "image" / "test_node_image.py"


def test_image(image_path: Path, site: Any, *, pytest_args: Sequence[str] = (), log: Path | None = None) -> int:
    """Run the node-image checks on `image_path` (booted UEFI and BIOS) for `site`.

    `site` is a loaded Site (its file is used) or a path to a site file. Returns pytest's exit
    code (0: every check passed); pytest's report streams to stdout.
    """
    image = Path(image_path).resolve()
    if not image.exists():
        raise NodekilnError(f"no image at {image}")
    site_file = Path(site) if isinstance(site, (str, Path)) else Path(site.file)
    env = {"NODEKILN_TEST_IMAGE": str(image), "NODEKILN_SITE": str(site_file.resolve())}
    result = run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-m", "slow", str(CHECKS), *pytest_args],
        cwd=REPO,
        env=env,
        check=False,
        capture=False,
        on_line=lambda line: print(line, flush=True),
        log=log,
    )
    return result.returncode


__test__ = False  # not a pytest test module, whatever imports it
