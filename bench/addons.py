"""Benchmarks of the addons stage."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from bench.figures import REPO as ROOT
from bench.figures import Figure, best_of
from nodekiln.config.site import load_site


def addons_plan_s() -> Figure:
    """Plan and render every addon's values for the example site (every built-in on)."""
    from nodekiln.addons.plan import build_plan, write_plan

    with tempfile.TemporaryDirectory() as tmp:
        site_file = Path(tmp) / "site.yaml"
        shutil.copy(ROOT / "sites" / "example" / "site.yaml", site_file)
        site = load_site(site_file)
        build_plan(site)  # first use makes the site's secrets (CA keys): not what is measured
        seconds = best_of(lambda: write_plan(build_plan(site), Path(tmp) / "out"))
    return Figure("addons_plan_s", round(seconds, 3), "s", "<= 1")
