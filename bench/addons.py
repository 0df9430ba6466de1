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


def addons_render_s() -> Figure:
    """Every addon of the example site planned and rendered offline with its real chart
    (tests/charts/upstream; NaaVRE's values chart first, then its umbrella)."""
    import os

    from nodekiln.addons.helm import Helm
    from nodekiln.addons.plan import build_plan, write_plan
    from nodekiln.addons.render import render_plan
    from testing import charts

    os.environ.setdefault(charts.TOKEN_ENV, "ghp_benchmark")
    with tempfile.TemporaryDirectory() as tmp:
        site = load_site(charts.example_site(Path(tmp) / "site"))
        build_plan(site)  # first use makes the site's secrets (CA keys): not what is measured
        helm = Helm.discover()

        def render() -> None:
            plan = build_plan(site)
            write_plan(plan, Path(tmp) / "out")
            render_plan(plan, helm, site.kubernetes.version)

        seconds = best_of(render)
    return Figure("addons_render_s", round(seconds, 2), "s", "<= 10")
