"""Benchmark of the HA endpoint: VIP fail-over time in the netns test bed (needs root)."""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bench.figures import Figure
from nodekiln.config.site import load_site
from nodekiln.errors import NodekilnError
from nodekiln.secrets import SecretStore
from testing.testbed import Testbed

ROOT = Path(__file__).resolve().parent.parent
FAILOVERS = 5
SETTLE_S = 30  # watched for VIP moves after the last fail-over


def vip_failover_s() -> Figure:
    """Median over 5 fail-overs of the time from the holder's death (keepalived SIGKILLed, link
    cut) to the first answer through the VIP seen from the worker; then the VIP must not move
    for 30 s (a fast fail-over that flaps is no fail-over)."""
    with tempfile.TemporaryDirectory(prefix="nodekiln-bench-ha-") as tmp:
        base = Path(tmp)
        (base / "site").mkdir()
        shutil.copy(ROOT / "sites/example/site.yaml", base / "site/site.yaml")
        site = load_site(base / "site/site.yaml")
        secrets, _ = SecretStore(site.directory, site.name).ensure()
        with Testbed(site, secrets, base / "nodes") as tb:
            tb.wait_holder(timeout=20)
            times = []
            for _ in range(FAILOVERS):
                seconds, old, _new = tb.failover()
                times.append(seconds)
                tb.revive(old)
                time.sleep(2)  # the revived node is a backup again before the next death
            holder = tb.wait_holder()
            with tb.watch_moves() as files:
                time.sleep(SETTLE_S)
            moves = tb.count_moves(files)
            if moves or tb.holders() != [holder]:
                raise NodekilnError(
                    f"the VIP moved {moves} times in the {SETTLE_S} s after the fail-overs (flapping); fail-overs took {times}"
                )
    return Figure("vip_failover_s", round(statistics.median(times), 3), "s", "<= 1.5")
