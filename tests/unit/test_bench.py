"""`invoke bench`: the table, --only and --json."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import figures as bench
from nodekiln.errors import NodekilnError

REPO = Path(__file__).resolve().parents[2]


def test_bench_only_writes_json(tmp_path):
    target = tmp_path / "figures.json"
    result = subprocess.run(
        [sys.executable, "-m", "invoke", "bench", "--only", "validate_1000_nodes_s", "--json", str(target)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "validate_1000_nodes_s" in result.stdout and "goal" in result.stdout
    [figure] = json.loads(target.read_text())
    assert set(figure) == {"name", "value", "unit", "goal", "detail"}
    assert figure["name"] == "validate_1000_nodes_s" and figure["unit"] == "s" and figure["value"] > 0


def test_unknown_benchmark_is_a_clear_error():
    with pytest.raises(NodekilnError, match="unknown benchmark nope"):
        bench.run(["nope"])


@pytest.mark.parametrize(
    ("value", "goal", "met"),
    [(0.5, "<= 1", True), (1.5, "<= 1", False), (0, "== 0", True), (3, ">= 5", False), (1, "n/a", None)],
)
def test_goal_evaluation(value, goal, met):
    assert bench.Figure("x", value, "s", goal).met is met


def test_every_registered_benchmark_resolves():
    import importlib

    for name, target in bench.BENCHMARKS.items():
        module, _, func = target.partition(":")
        assert callable(getattr(importlib.import_module(module), func)), name


def test_figure_details_say_what_each_figure_includes():
    from bench.figures import Figure, figure_details

    figures = [Figure("a_s", 1.0, "s", "<= 2", "stages: dib 100 s"), Figure("b_mb", 3.0, "MB", "<= 4")]
    assert figure_details(figures) == "a_s: stages: dib 100 s"


def test_the_iso_figures_build_their_root_tree_when_none_is_there(tmp_path, monkeypatch) -> None:
    """A fresh checkout has no tree: the benchmark makes one (as build-iso would) instead of failing."""
    import bench.iso as bench_iso
    from nodekiln.images import iso

    built: list[Path] = []

    def fake_build_iso(site, secrets, out_dir):  # stands in for the ~10 min diskimage-builder run
        tar = out_dir / "trees" / "abc123.tar"
        tar.parent.mkdir(parents=True)
        tar.write_bytes(b"tree")
        built.append(out_dir)

    monkeypatch.delenv("NODEKILN_ROOT_TREE", raising=False)
    monkeypatch.setattr(bench_iso, "TREES", tmp_path / "iso")
    monkeypatch.setattr(iso, "build_iso", fake_build_iso)
    assert bench_iso.root_tree(site=None, secrets=None) == tmp_path / "iso" / "trees" / "abc123.tar"
    assert built == [tmp_path / "iso"]
    assert bench_iso.root_tree(site=None, secrets=None) == tmp_path / "iso" / "trees" / "abc123.tar"
    assert len(built) == 1  # the second run reuses the cached tree


def test_a_given_root_tree_that_is_not_there_is_a_clear_error(monkeypatch) -> None:
    import pytest

    import bench.iso as bench_iso
    from nodekiln.errors import NodekilnError

    monkeypatch.setenv("NODEKILN_ROOT_TREE", "/nonexistent/tree.tar")
    with pytest.raises(NodekilnError, match="no such directory or tar"):
        bench_iso.root_tree(site=None, secrets=None)
