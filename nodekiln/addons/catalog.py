"""The built-in addons: one `addons/<name>.yaml` each, all of one shape (`AddonDef`).

Like cloud-init's cc_* modules, an addon is data plus one template: its chart, repository,
pinned version, namespace, what it depends on, what `invoke addons` waits for, the container
images it runs, and `addons/<name>.values.yaml.j2`, the values rendered from the site.
Values the template needs worked out from the site come from the function its `context:` names
in `contexts.py`. Adding an addon means copying one of these files and adding its settings to
`AddonsSpec` (nodekiln/config/addons.py), whose fields are the list and order of the built-ins.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import yaml
from pydantic import Field, ValidationError

from nodekiln import assets
from nodekiln.addons.contexts import CONTEXTS
from nodekiln.config.addons import BUILTIN_KEYS, BUILTIN_SETTINGS, release_name
from nodekiln.config.model import Strict
from nodekiln.errors import NodekilnError

FOLDER = assets.folder("addons")


class GitSource(Strict):
    """Charts that are published only as a Git repository (NaaVRE-helm): a checkout at `ref`."""

    git: str
    ref: str
    checkoutSetting: str | None = Field(
        default=None,
        description="the addon's setting that names the checkout folder (beside the site file); none: the site folder",
    )


class AddonDef(Strict):
    name: str = Field(description="release name; also the file name")
    setting: str = Field(description="the key of this addon's settings under `addons:` in the site file")
    description: str
    chart: str
    repo: str | None = Field(
        default=None,
        description="chart repository (https:// or oci://); none for charts from a Git checkout (source) "
        "or nodekiln's own charts (chart: a folder under addons/charts/)",
    )
    source: GitSource | None = None
    version: str
    namespace: str
    sameNamespaceAs: str | None = Field(
        default=None, description="use that addon's namespace when it is on (operators that watch their own namespace)"
    )
    dependsOn: list[str] = Field(default_factory=list, description="addons installed first when they are on")
    waitFor: str
    readiness: list[list[str]] = Field(
        default_factory=list,
        description="kubectl commands run after helm --wait, e.g. [wait, --for=condition=Available, tigerastatus/calico]",
    )
    timeout: str | None = None
    valuesChart: str | None = Field(
        default=None,
        description="a chart (in the same checkout) that renders the sub-charts' values from the root values file first",
    )
    overlay: str | None = Field(
        default=None,
        description="a second template (addons/<file>, the same variables): its values file is the chart's "
        "last --values, after what the values chart renders (keys a values chart does not pass through)",
    )
    images: dict[str, str] = Field(
        default_factory=dict,
        description="the container images the values template pins (each appears in the rendered manifests)",
    )
    operatorImages: dict[str, str] = Field(
        default_factory=dict,
        description="images an operator of the release starts itself (not in the manifests), with their source",
    )
    apiVersions: list[str] = Field(
        default_factory=list,
        description="API versions the chart's CRDs serve (group/version and group/version/Kind), "
        "given to offline renders of the other releases as the cluster would report them",
    )
    context: str | None = Field(
        default=None,
        description="the function in nodekiln/addons/contexts.py that adds this addon's own template variables",
    )
    notes: str = ""

    @property
    def template(self) -> str:
        return f"{self.name}.values.yaml.j2"

    @property
    def local_chart(self) -> Path:
        """nodekiln's own chart (repo and source left out): addons/<chart>."""
        return FOLDER / self.chart


@cache
def builtins(folder: Path = FOLDER) -> dict[str, AddonDef]:
    """Every built-in addon by release name, in the order they are listed to users."""
    found: dict[str, AddonDef] = {}
    for key in BUILTIN_KEYS:
        name = release_name(key)
        file = folder / f"{name}.yaml"
        try:
            found[name] = AddonDef.model_validate(yaml.safe_load(file.read_text(encoding="utf-8")))
        except (OSError, yaml.YAMLError, ValidationError) as exc:
            raise NodekilnError(f"{file}: not a valid addon definition: {exc}") from None
        problem = _problem(found[name], name, key, folder)
        if problem:
            raise NodekilnError(f"{file}: {problem}")
    return found


def _problem(definition: AddonDef, name: str, key: str, folder: Path) -> str | None:
    """What is inconsistent between a definition, its file name, the site model and contexts.py."""
    if definition.name != name:
        return f"name {definition.name!r} differs from the file name"
    if definition.setting != key:
        return f"setting {definition.setting!r} differs from its key addons.{key} in the site file"
    if not (folder / definition.template).is_file():
        return f"its values template {definition.template} is missing"
    if definition.overlay is not None and not (folder / definition.overlay).is_file():
        return f"its overlay template {definition.overlay} is missing"
    if definition.context is not None and definition.context not in CONTEXTS:
        return (
            f"context {definition.context!r} is not a function of nodekiln/addons/contexts.py ({', '.join(CONTEXTS)})"
        )
    # The site model checks circles among the site's own releases only: that holds because
    # built-ins depend on built-ins alone.
    outside = [d for d in definition.dependsOn if d not in {release_name(k) for k in BUILTIN_KEYS}]
    if outside:
        return f"dependsOn {', '.join(outside)}: not built-in addons"
    if definition.repo is None and definition.source is None:
        chart_file = folder / definition.chart / "Chart.yaml"
        if not chart_file.is_file():
            return f"no repo and no source, but {chart_file} (nodekiln's own chart) is missing"
        meta = yaml.safe_load(chart_file.read_text(encoding="utf-8")) or {}
        if str(meta.get("version")) != definition.version:
            return f"version {definition.version} differs from {chart_file}'s {meta.get('version')}"
    checkout = definition.source.checkoutSetting if definition.source else None
    if checkout is not None and checkout not in BUILTIN_SETTINGS[key].model_fields:
        return f"source.checkoutSetting {checkout!r} is not a setting of addons.{key}"
    return None
