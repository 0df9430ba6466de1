"""The join token of servers created for a cluster that is already running.

They join with the token `kubeadm init` made, while it lasts (kubernetes.bootstrapTokenTTL from
the init node's creation, less the time a join takes); later they get a fresh token created
through the API (nodekiln.bootstrap.jointoken), and a run that cannot reach the API fails
before it creates anything.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import TYPE_CHECKING

from nodekiln.bootstrap.jointoken import (
    JOIN_MARGIN,
    APIUnreachableError,
    JoinTokenError,
    api_url,
    create_join_token,
    needs_fresh_token,
    parse_ttl,
)
from nodekiln.openstack.reach import api_address

if TYPE_CHECKING:
    from openstack.compute.v2.server import Server

    from nodekiln.config.site import Node, Site
    from nodekiln.openstack.actions import Plan
    from nodekiln.openstack.observe import Observed
    from nodekiln.secrets import Secrets


def joining(site: Site, st: Observed, plan: Plan) -> list[Node]:
    """The servers this run creates that join a running cluster: the init node's server exists and stays.

    When the init node is (re)created itself, it runs `kubeadm init` with the stored token and
    the others join with that; nothing runs yet that a token could have expired in. Edge nodes
    join nothing: they need no token.
    """
    init = site.init_node.name
    to_boot = [a.node for a in plan.booting if a.node.role != "edge"]
    if not to_boot or init not in st.servers or any(n.name == init for n in to_boot):
        return []
    return to_boot


def created_at(server: Server) -> dt.datetime | None:
    """When Nova created the server (its `created`, ISO 8601 UTC), None when it does not say."""
    value = getattr(server, "created_at", None)
    if not value:
        return None
    try:
        moment = dt.datetime.fromisoformat(str(value))  # takes the trailing Z from Python 3.11 on
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)


def _age(delta: dt.timedelta) -> str:
    hours = delta.total_seconds() / 3600
    return f"{hours / 24:.1f} days" if hours >= 48 else f"{hours:.1f} h"


def join_token(
    site: Site,
    secrets: Secrets,
    st: Observed,
    plan: Plan,
    now: dt.datetime,
    dry_run: bool,
    say: Callable[[str], None],
) -> tuple[str | None, str]:
    """(a fresh token for the new servers or None for the stored one, what to report).

    Raises JoinTokenError before anything is created when a fresh token is needed and the API
    cannot be reached from here, or refuses it.
    """
    newcomers = joining(site, st, plan)
    if not newcomers:
        return None, "no server joins a running cluster"
    ttl_text = site.kubernetes.bootstrapTokenTTL
    ttl = parse_ttl(ttl_text)
    init = site.init_node.name
    created = created_at(st.servers[init])
    count = f"{len(newcomers)} new node{'s' if len(newcomers) != 1 else ''}"
    if not needs_fresh_token(created, now, ttl, JOIN_MARGIN):
        note = f"the stored one for {count} (the init node's server is {_age(now - created) if created else 'of unknown age'} old, the token lives {ttl_text})"
        say(f"join token: {note}")
        return None, note
    address, _why = api_address(site, st)
    url = api_url(site, str(address or site.endpoint_address))
    age = f"was created {_age(now - created)} ago" if created else "has no creation time in Nova"
    stale = (
        f"{', '.join(n.name for n in newcomers)} would join the running cluster, but the server of its init node {init} {age}: "
        f"the token `kubeadm init` made lives kubernetes.bootstrapTokenTTL ({ttl_text}) and has expired, or will before "
        f"{'they join' if len(newcomers) > 1 else 'it joins'} ({_age(JOIN_MARGIN)} allowed for that), so site-deploy creates a fresh one through the API"
    )
    if st.fip is None:
        ways_out = (
            f"Nothing was created. Run site-deploy from a host on the site network ({site.network.cidr}), or give the site "
            f"`openstack.floatingIP: true` with this host's network in `firewall.apiFrom`."
        )
    else:  # the floating IP is there: what stops this host is the firewall, or the API is down
        ways_out = (
            f"Nothing was created. Run site-deploy from a host on the site network ({site.network.cidr}), or list this "
            f"host's network in `firewall.apiFrom` (the floating IP's clients), and check that the API answers."
        )
    if address is None:
        raise JoinTokenError(
            f"{stale}, but the API at {url} cannot be reached from here: the site has no floating IP and "
            f"this host is not on {site.network.cidr}. {ways_out}"
        )
    if dry_run:  # no connection: a dry run writes nothing, and a token is a write
        note = f"would create a fresh one (valid {ttl_text}) for {count} through {url}"
        say(f"join token: {note}")
        return None, note
    try:
        fresh = create_join_token(site, secrets, str(address), ttl, now)
    except APIUnreachableError as exc:
        raise JoinTokenError(f"{stale}, but {exc}. {ways_out}") from None
    except JoinTokenError as exc:
        raise JoinTokenError(f"{stale}, but {exc}. Nothing was created.") from None
    note = f"a fresh one (valid {ttl_text}) for {count}, created through {url}"
    say(f"join token: {note}")
    return fresh, note
