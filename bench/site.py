"""Benchmarks of the site file stage."""

from __future__ import annotations

import tempfile
from pathlib import Path

from bench.figures import Figure, best_of
from nodekiln.config.site import load_site
from testing.synthetic import site_yaml


def validate_1000_nodes_s() -> Figure:
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / "site.yaml"
        file.write_text(site_yaml(1000))
        seconds = best_of(lambda: load_site(file))
    return Figure("validate_1000_nodes_s", round(seconds, 3), "s", "<= 1")
