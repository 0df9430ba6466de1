"""Offline renders of the plan's releases: `helm template` of each chart as the cluster would see it.

Used by `invoke addons --images` (what an air-gapped site bakes into its node image) and by the
tests, which check the objects with the programs and schemas that would judge them on a cluster.
Offline, helm knows no cluster: `.Capabilities` come from the site (its Kubernetes version) and
from the plan (the API versions the CRDs of its releases serve, `apiVersions:` in their files).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from nodekiln.addons.helm import Helm
from nodekiln.addons.plan import AddonsError, Plan, Release

# libyaml's parser: the CRDs of one chart are megabytes (Calico's 2.6 MB take 2.7 s in pure
# Python, 0.3 s in libyaml)
_BASE_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_BASE_LOADER):  # type: ignore[misc, valid-type]
    """YAML 1.1 resolves a plain `=` to the `value` tag, which PyYAML cannot construct; to the
    API server it is the string "=" (prometheus-operator's AlertmanagerConfig CRD lists it
    among the matchers' operators)."""


_Loader.add_constructor("tag:yaml.org,2002:value", lambda loader, node: loader.construct_scalar(node))
_LOADER = _Loader

RENDERED = ".rendered"  # NaaVRE's sub-chart values, rendered from its root values file

# What the charts ask `.Capabilities.APIVersions.Has` about built-in kinds (grep of every pinned
# chart: policy/v1/PodDisruptionBudget in traefik, autoscaling/v2 in kube-prometheus-stack's
# grafana). A cluster's discovery lists group/version and group/version/Kind for every resource
# it serves (helm pkg/action/action.go GetVersionSet); `helm template` lists group/versions only
# (pkg/chartutil/capabilities.go allKnownVersions), so the kinds are added here. Every supported
# Kubernetes (1.31 to 1.35) serves them: policy/v1 PodDisruptionBudget since 1.21 (v1beta1
# removed in 1.25), autoscaling/v2 since 1.23 (v2beta2 removed in 1.26) — kubernetes.io/docs/
# reference/using-api/deprecation-guide/.
BUILTIN_API_VERSIONS: tuple[str, ...] = (
    "policy/v1",
    "policy/v1/PodDisruptionBudget",
    "autoscaling/v2",
    "autoscaling/v2/HorizontalPodAutoscaler",
)


@dataclass(frozen=True)
class Rendered:
    """One release's objects as `helm template --include-crds --skip-tests` prints them."""

    release: Release
    objects: list[dict[str, Any]]

    @property
    def images(self) -> set[str]:
        """Every `image:` string of the objects: pod templates' containers and custom
        resources that name the image their operator runs (Prometheus, Keycloak)."""
        found: set[str] = set()
        for item in self.objects:
            if item.get("kind") != "CustomResourceDefinition":
                _collect_images(item, found)
        return found

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [item for item in self.objects if item.get("kind") == kind]


def _collect_images(node: object, found: set[str]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "image" and isinstance(value, str) and value.strip():
                found.add(value.strip())
            else:
                _collect_images(value, found)
    elif isinstance(node, list):
        for item in node:
            _collect_images(item, found)


def values_files(plan: Plan, release: Release, helm: Helm) -> list[Path]:
    """The --values files of a release: its values file, or what its values chart renders; then its overlay."""
    own = plan.values_path(release)
    # the overlay (the addon's second template) comes last: it sets what the values chart does not
    last = [plan.out / release.overlay] if release.overlay is not None and plan.out is not None else []
    if release.values_chart is None:
        return [own, *last]
    if not release.values_chart.is_dir() or release.chart_path is None or not release.chart_path.is_dir():
        src = release.source or {}
        raise AddonsError(
            f"{release.name}: no chart checkout at {release.values_chart.parent}: "
            f"git clone {src.get('git', '')} {release.values_chart.parent} && git -C {release.values_chart.parent} checkout {src.get('ref', '')} "
            f"&& helm dependency build {release.chart_path}"
        )
    assert plan.out is not None
    rendered = helm.render_values_chart(
        release.name, release.values_chart, own, release.namespace, plan.out / RENDERED / release.name
    )
    return [*rendered, *last]


def capabilities(plan: Plan) -> list[str]:
    """The API versions an offline render reports: built-in kinds and every release's CRDs."""
    served = list(BUILTIN_API_VERSIONS)
    for release in plan.releases:
        served.extend(api for api in release.api_versions if api not in served)
    return served


def render(plan: Plan, release: Release, helm: Helm, kube_version: str) -> Rendered:
    """`helm template` of one release with its values, at the site's Kubernetes version."""
    files = values_files(plan, release, helm)
    repo, version = release.pull
    text = helm.template(
        release.name,
        release.chart_ref,
        release.namespace,
        files,
        version=version,
        repo=repo,
        kube_version=kube_version,
        api_versions=capabilities(plan),
        include_crds=True,
        # `helm test` pods (helm.sh/hook: test) run only when someone runs `helm test`
        skip_tests=True,
    )
    try:
        objects = [item for item in yaml.load_all(text, Loader=_LOADER) if isinstance(item, dict)]
    except yaml.YAMLError as exc:
        raise AddonsError(f"{release.name}: helm template printed what is not YAML: {exc}") from None
    return Rendered(release, objects)


def render_plan(plan: Plan, helm: Helm, kube_version: str) -> list[Rendered]:
    """Every release rendered, in plan order; the helm processes run side by side."""
    with ThreadPoolExecutor(max_workers=min(len(plan.releases), os.cpu_count() or 1) or 1) as pool:
        return list(pool.map(lambda release: render(plan, release, helm, kube_version), plan.releases))


def images(rendered: list[Rendered]) -> list[str]:
    """Every image the cluster pulls for these releases: the manifests' and their operators'."""
    found: set[str] = set()
    for item in rendered:
        found |= item.images
        found.update(item.release.operator_images)
    return sorted(found)
