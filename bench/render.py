"""Benchmarks of the rendering stage."""

from __future__ import annotations

import tempfile
from pathlib import Path

from bench.figures import Figure, best_of
from nodekiln.bootstrap.render import render_site
from nodekiln.config.site import load_site
from nodekiln.secrets import SecretStore
from testing.synthetic import site_yaml


def render_1000_nodes_s() -> Figure:
    """Render every node of a 1,000-node site (3 control planes) in memory."""
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / "site.yaml"
        file.write_text(site_yaml(1000))
        site = load_site(file)
        secrets, _ = SecretStore(site.directory, site.name).ensure()
        seconds = best_of(lambda: render_site(site, secrets))
    return Figure("render_1000_nodes_s", round(seconds, 3), "s", "<= 2")
