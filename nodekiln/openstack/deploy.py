"""`invoke site-deploy` and `invoke site-destroy`: a site's OpenStack resources, converged.

One pass reads what exists (observe.py), checks what can be checked before anything is
written (check.py), and makes a plan of typed actions (plan.py, actions.py): create, keep,
update or delete per resource. `--dry-run` stops there and prints that plan. Otherwise
converge.py carries out the same action objects, and the run waits for every server to be
ACTIVE, then for the API endpoint (wait.py). Servers that join a running cluster get a join
token that is still valid (join.py). site_destroy is in destroy.py.

Nothing that exists is written again: a rerun with an unchanged site makes no write call.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from nodekiln.config.openstack import check_openstack
from nodekiln.config.yamlsrc import dotted
from nodekiln.openstack.actions import Plan
from nodekiln.openstack.check import check
from nodekiln.openstack.cloud import CallCounter, OpenStackError, cloud_of, connect, one_line
from nodekiln.openstack.converge import converge
from nodekiln.openstack.destroy import DestroyResult, site_destroy, tagged_leftovers
from nodekiln.openstack.errors import CheckError, DeployError
from nodekiln.openstack.images import BUILD_DIR
from nodekiln.openstack.join import join_token
from nodekiln.openstack.observe import observe
from nodekiln.openstack.plan import make_plan
from nodekiln.openstack.resources import Names
from nodekiln.openstack.userdata import Renderer, digest, render_user_data
from nodekiln.openstack.wait import wait_active, wait_healthz
from nodekiln.report import Reporter

if TYPE_CHECKING:
    from openstack.connection import Connection

    from nodekiln.config.site import Site
    from nodekiln.secrets import Secrets


@dataclass
class DeployResult:
    plan: Plan
    calls: CallCounter
    seconds: float = 0.0
    servers: dict[str, str] = field(default_factory=dict)  # node -> status
    healthz: str = "not checked"
    join_token: str = "no server joins a running cluster"  # which token new servers join with (never the token itself)


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def site_deploy(
    site: Site,
    secrets: Secrets,
    dry_run: bool = False,
    prune: bool = False,
    *,
    conn: Connection | None = None,
    renderer: Renderer | None = None,
    progress: bool = True,
    build_dir: Path = BUILD_DIR,
    report: Reporter | None = None,
    now: Callable[[], dt.datetime] = _utc_now,
) -> DeployResult:
    """Plan and (unless dry_run) converge the site's OpenStack resources; see the module doc.

    `now` is the clock the join token's lifetime is measured with (tests move it)."""
    spec = site.openstack
    if spec is None:
        raise OpenStackError(f"site {site.name} has no openstack section: add one to {site.file}")
    # The site model's own rule (config/openstack.py), before flavor_of would miss the edge's flavor.
    site_problems = [f"{dotted(path)}: {message}" for path, message in check_openstack(site)]
    if site_problems:
        raise CheckError(site_problems)
    report = report or Reporter.quiet()
    say = report.say
    started = time.monotonic()
    cloud = cloud_of(conn or connect(spec))
    counter = cloud.calls
    mark = counter.mark()
    names = Names(site)
    # Rendered with the stored secrets: what the servers' metadata digest and the drift check use.
    user_data = render_user_data(site, secrets, renderer)
    hashes = {name: digest(data) for name, data in user_data.items()}
    observed = observe(cloud.conn, site, names)
    plan = make_plan(site, names, observed, hashes, prune)
    problems = check(cloud.conn, site, names, observed, plan, build_dir, user_data)
    if problems:
        raise CheckError(problems)
    # The plan was made before the flavors and image were known: redo the server lines with them.
    plan = make_plan(site, names, observed, hashes, prune)
    result = DeployResult(plan, counter)
    fresh, result.join_token = join_token(site, secrets, observed, plan, now(), dry_run, say)
    if dry_run:
        result.seconds = time.monotonic() - started
        result.calls = counter.since(mark)
        return result
    # The new servers boot with the fresh token; it is in no file, no log line and no metadata.
    boot_data = (
        render_user_data(site, secrets.model_copy(update={"bootstrapToken": fresh}), renderer) if fresh else None
    )
    failures = converge(cloud, site, names, observed, plan, user_data, say, boot_data) if plan.changes else []
    status, boot_failures = wait_active(cloud.conn, site, observed, spec.bootTimeout, report.live if progress else None)
    result.servers = status
    failures += boot_failures
    if failures:
        raise DeployError(
            f"{len(failures)} failed; fix the cause and run site-deploy again (what exists is kept):\n"
            + "\n".join(f"  {f}" for f in failures)
        )
    if spec.waitHealthz:
        result.healthz = wait_healthz(site, secrets, observed, spec.healthzTimeout, say)
    result.seconds = time.monotonic() - started
    result.calls = counter.since(mark)
    return result


__all__ = [
    "CheckError",
    "DeployError",
    "DeployResult",
    "DestroyResult",
    "Plan",
    "one_line",
    "site_deploy",
    "site_destroy",
    "tagged_leftovers",
]
