"""The addons stage: the site's Helm releases (CNI, storage, backups, ingress, NaaVRE) in order.

catalog.py  the built-in addons, one `addons/<name>.yaml` + values template each
contexts.py what the values templates see; the functions the definitions name (`context:`)
plan.py     the ordered plan with rendered values; plan.json
helm.py     the helm (and kubectl) calls, through nodekiln.run
apply.py    install/upgrade one release at a time, idempotent, resumable

The site file's `addons:` section (its settings, the list and order of the built-ins, the
cross-field rules and the install order) is the site model's: nodekiln/config/addons.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from nodekiln.config.addons import AddonsSpec, check_addons

if TYPE_CHECKING:
    from nodekiln.addons.apply import Outcome
    from nodekiln.addons.plan import Plan
    from nodekiln.config.site import Site
    from nodekiln.report import Reporter

__all__ = ["AddonsSpec", "check_addons", "default_kubeconfig", "images", "install", "plan_release_files"]


def plan_release_files(site: Site, out: Path | None = None) -> tuple[Plan, Path]:
    """Render the plan and write it (plan.json + values files); no cluster is touched."""
    from nodekiln.addons.plan import build_plan, default_out, write_plan

    built = build_plan(site)
    return built, write_plan(built, out or default_out(site))


def images(site: Site, out: Path | None = None) -> list[str]:
    """Every container image the cluster pulls for the site's addons (to bake into air-gapped
    images): read from each release rendered with its real chart, plus what operators start."""
    from nodekiln.addons.helm import Helm
    from nodekiln.addons.render import images as rendered_images
    from nodekiln.addons.render import render_plan

    built, _ = plan_release_files(site, out)
    return rendered_images(render_plan(built, Helm.discover(), site.kubernetes.version))


def default_kubeconfig(site: Site) -> Path:
    return site.directory / ".nodekiln" / f"{site.name}-admin.conf"


def install(
    site: Site, out: Path | None = None, kubeconfig: Path | None = None, report: Reporter | None = None
) -> list[Outcome]:
    """Render the plan, then install or upgrade its releases in order (idempotent, resumable)."""
    from nodekiln.addons.apply import apply
    from nodekiln.addons.helm import Helm
    from nodekiln.addons.plan import AddonsError

    config = kubeconfig or default_kubeconfig(site)
    if not config.is_file():
        raise AddonsError(f"{config}: no kubeconfig: run `invoke kubeconfig` (or pass --kubeconfig)")
    helm = Helm.discover(config)
    built, plan_file = plan_release_files(site, out)
    helm.log = plan_file.parent.with_name(f"{plan_file.parent.name}.helm.log")
    return apply(built, helm, (report or Reporter()).live)
