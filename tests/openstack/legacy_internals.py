"""The private helpers of the old one-module nodekiln.openstack.deploy, in their old shapes, over the new modules.

tests/unit/test_jointoken.py (not the OpenStack work's to edit) drives site-deploy's join-token
decision through them: `work` dicts of servers to create / replace, `_State`, and names it
monkeypatches on this module (`_local_networks`, `create_join_token`). Each helper turns the
old shapes into the typed plan (nodekiln.openstack.actions) and calls the real code, routing
those two names to whatever the test put here. Delete this once that test uses the new modules.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

from nodekiln.bootstrap.jointoken import create_join_token
from nodekiln.config.site import Site
from nodekiln.openstack import join, reach
from nodekiln.openstack.actions import CreateServer, Plan, ReplaceServer
from nodekiln.openstack.cloud import cloud_of
from nodekiln.openstack.converge import converge
from nodekiln.openstack.observe import Observed as _State
from nodekiln.openstack.plan import server_drift as _server_drift
from nodekiln.openstack.resources import Names, flavor_of

_local_networks = reach.local_networks

# create_join_token and _local_networks are here for the tests to patch (see _routed).
__all__ = [
    "Plan",
    "_State",
    "_converge",
    "_join_token",
    "_joining",
    "_local_networks",
    "_server_drift",
    "create_join_token",
]


def _plan(site: Site, work: dict[str, Any]) -> Plan:
    """The typed plan of a `work` dict that creates or replaces servers and nothing else."""
    others = {k: v for k, v in work.items() if k not in ("servers_create", "servers_replace")}
    assert not any(v for v in others.values() if not isinstance(v, dict)), f"not servers: {others}"
    assert not any(any(v.values()) for v in others.values() if isinstance(v, dict)), f"rules: {others}"
    # The server a replace deletes does not matter to the join-token decision the tests check.
    replaced = [ReplaceServer(n, flavor_of(site, n), SimpleNamespace(fault=None)) for n in work["servers_replace"]]
    created = [CreateServer(n, flavor_of(site, n)) for n in work["servers_create"]]
    return Plan((*replaced, *created))


@contextlib.contextmanager
def _routed() -> Iterator[None]:
    """Have the real modules call this module's `_local_networks` and `create_join_token` (as patched now)."""
    here = sys.modules[__name__]
    saved = reach.local_networks, join.create_join_token
    reach.local_networks = lambda: here._local_networks()
    join.create_join_token = lambda *a, **k: here.create_join_token(*a, **k)
    try:
        yield
    finally:
        reach.local_networks, join.create_join_token = saved


def _joining(site: Site, st: _State, work: dict[str, Any]) -> list[Any]:
    return join.joining(site, st, _plan(site, work))


def _join_token(
    site: Site, secrets: Any, st: _State, work: dict[str, Any], now: Any, dry_run: bool, say: Callable[[str], None]
) -> tuple[str | None, str]:
    with _routed():
        return join.join_token(site, secrets, st, _plan(site, work), now, dry_run, say)


def _converge(
    conn: Any,
    site: Site,
    names: Names,
    st: _State,
    _old_plan: Plan,
    work: dict[str, Any],
    user_data: dict[str, bytes],
    _progress: bool,
    echo: Callable[[str], None],
    boot_data: dict[str, bytes] | None = None,
) -> list[str]:
    return converge(cloud_of(conn), site, names, st, _plan(site, work), user_data, echo, boot_data)
