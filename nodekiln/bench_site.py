"""Benchmarks of the site file stage."""

from __future__ import annotations

import tempfile
from pathlib import Path

from nodekiln.bench import Figure, best_of
from nodekiln.site import load_site
from nodekiln.synthetic import site_yaml


def validate_1000_nodes_s() -> Figure:
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / "site.yaml"
        file.write_text(site_yaml(1000))
        seconds = best_of(lambda: load_site(file))
    return Figure("validate_1000_nodes_s", round(seconds, 3), "s", "<= 1")
