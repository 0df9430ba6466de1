"""`invoke bench`: the project's measured figures, each with its goal.

A benchmark is a function returning a `Figure`; register it in BENCHMARKS as "module:function"
so that `--only NAME` imports only what it runs.
"""

from __future__ import annotations

import importlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.table import Table

from nodekiln.errors import NodekilnError
from nodekiln.files import write_atomic

REPO = Path(__file__).resolve().parent.parent  # benchmarks run from a checkout


@dataclass(frozen=True)
class Figure:
    name: str
    value: float
    unit: str
    goal: str  # e.g. "<= 1" — the README states where it comes from
    detail: str = ""  # what the number includes, where the time went

    @property
    def met(self) -> bool | None:
        op, _, bound = self.goal.partition(" ")
        try:
            limit = float(bound)
        except ValueError:
            return None
        return {"<=": self.value <= limit, ">=": self.value >= limit, "==": self.value == limit}.get(op)


BENCHMARKS: dict[str, str] = {
    "validate_1000_nodes_s": "bench.site:validate_1000_nodes_s",
    "image_cold_build_s": "bench.image:image_cold_build_s",
    "image_cache_hit_s": "bench.image:image_cache_hit_s",
    "rebuild_identical": "bench.image:rebuild_identical",
    "image_qcow2_mb": "bench.image:image_qcow2_mb",
    "boot_to_cloudinit_s": "bench.image:boot_to_cloudinit_s",
    "boot_secureboot_s": "bench.image:boot_secureboot_s",
    "edge_cert_issue_s": "bench.edge:edge_cert_issue_s",
    "edge_reload_failed_requests": "bench.edge:edge_reload_failed_requests",
    "edge_backend_failover_s": "bench.edge:edge_backend_failover_s",
    "sbom_packages": "bench.provenance:sbom_packages",
    "verify_s": "bench.provenance:verify_s",
    "deploy_50_nodes_calls": "bench.openstack:deploy_50_nodes_calls",
    "deploy_50_nodes_s": "bench.openstack:deploy_50_nodes_s",
    "redeploy_nochange_writes": "bench.openstack:redeploy_nochange_writes",
    "upload_1gib_peak_rss_mb": "bench.openstack:upload_1gib_peak_rss_mb",
    "upload_1gib_mb_per_s": "bench.openstack:upload_1gib_mb_per_s",
    "render_1000_nodes_s": "bench.render:render_1000_nodes_s",
    "addons_plan_s": "bench.addons:addons_plan_s",
    "addons_render_s": "bench.addons:addons_render_s",
    "vip_failover_s": "bench.ha:vip_failover_s",
    "packer_qemu_build_s": "bench.packer:packer_qemu_build_s",
    "iso_mb": "bench.iso:iso_mb",
    "iso_build_s": "bench.iso:iso_build_s",
    "iso_boot_s": "bench.iso:iso_boot_s",
}


def best_of(fn: Callable[[], object], repeat: int = 3) -> float:
    """Best wall time of `repeat` runs: the figure least disturbed by the rest of the machine."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def run(only: list[str] | None = None) -> list[Figure]:
    names = only or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise NodekilnError(f"unknown benchmark {', '.join(unknown)}: expected one of {', '.join(BENCHMARKS)}")
    figures = []
    for name in names:
        module, _, func = BENCHMARKS[name].partition(":")
        result = getattr(importlib.import_module(module), func)()
        figures.extend(result if isinstance(result, list) else [result])
    return figures


def write_json(figures: list[Figure], path: Path) -> None:
    write_atomic(path, json.dumps([asdict(f) for f in figures], indent=2) + "\n")


def figures_table(figures: list[Figure]) -> Table:
    table = Table("figure", "value", "unit", "goal", "met")
    for f in figures:
        met = {True: "yes", False: "NO", None: "-"}[f.met]
        table.add_row(f.name, f"{f.value:g}", f.unit, f.goal, met)
    return table


def figure_details(figures: list[Figure]) -> str:
    """What each figure includes (where the time went), one paragraph per figure."""
    return "\n".join(f"{f.name}: {f.detail}" for f in figures if f.detail)
