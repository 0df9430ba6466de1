"""The built-in addons: one `addons/<name>.yaml` each, all of one shape (`AddonDef`).

Like cloud-init's cc_* modules, an addon is data plus one template: its chart, repository,
pinned version, namespace, what it depends on, what `invoke addons` waits for, the container
images it runs, and `addons/<name>.values.yaml.j2`, the values rendered from the site.
Adding an addon means copying one of these files and adding its settings to `spec.py`.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import yaml
from pydantic import Field, ValidationError

from nodekiln import assets
from nodekiln.config.model import Strict
from nodekiln.errors import NodekilnError

FOLDER = assets.folder("addons")


class GitSource(Strict):
    """Charts that are published only as a Git repository (NaaVRE-helm): a checkout at `ref`."""

    git: str
    ref: str


class AddonDef(Strict):
    name: str = Field(description="release name; also the file name")
    setting: str = Field(description="the key of this addon's settings under `addons:` in the site file")
    description: str
    chart: str
    repo: str | None = Field(
        default=None, description="chart repository (https:// or oci://); none for charts from a Git checkout"
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
    images: dict[str, str] = Field(
        default_factory=dict,
        description="every container image the release runs, pinned; the values template sets them",
    )
    notes: str = ""

    @property
    def template(self) -> str:
        return f"{self.name}.values.yaml.j2"


ORDER = ("calico", "nfs", "minio", "velero", "ingress", "keycloak-operator", "naavre")


@cache
def builtins(folder: Path = FOLDER) -> dict[str, AddonDef]:
    """Every built-in addon by release name, in the order they are listed to users."""
    found: dict[str, AddonDef] = {}
    for name in ORDER:
        file = folder / f"{name}.yaml"
        try:
            found[name] = AddonDef.model_validate(yaml.safe_load(file.read_text(encoding="utf-8")))
        except (OSError, yaml.YAMLError, ValidationError) as exc:
            raise NodekilnError(f"{file}: not a valid addon definition: {exc}") from None
        if found[name].name != name:
            raise NodekilnError(f"{file}: name {found[name].name!r} differs from the file name")
        if not (folder / found[name].template).is_file():
            raise NodekilnError(f"{file}: its values template {found[name].template} is missing")
    return found


def by_setting() -> dict[str, AddonDef]:
    return {d.setting: d for d in builtins().values()}
