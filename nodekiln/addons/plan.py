"""The addons plan: the site's Helm releases in install order, each with its rendered values.

`build_plan(site)` is pure apart from the secrets store (a secret is made once, on first use):
no network, no cluster, the same site and secrets give byte-identical files. `write_plan`
writes `plan.json` and one values file per release (0600 when it holds a secret).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
import yaml

from nodekiln import templates
from nodekiln.addons.catalog import AddonDef, builtins
from nodekiln.addons.contexts import Inputs, SecretKind, template_context
from nodekiln.config import yamlsrc
from nodekiln.config.addons import (
    BUILTIN_KEYS,
    AddonBase,
    ExtraRelease,
    order,
    release_graph,
    release_name,
    release_namespaces,
)
from nodekiln.config.yamlsrc import PathKey
from nodekiln.errors import NodekilnError
from nodekiln.files import write_tree_atomic
from nodekiln.secrets import KeyPair

if TYPE_CHECKING:
    from nodekiln.config.site import Site

PLAN_FILE = "plan.json"


class AddonsError(NodekilnError):
    """The addons plan cannot be made or applied."""


@dataclass(frozen=True)
class Release:
    """One `helm upgrade --install`."""

    name: str
    namespace: str
    chart: str  # chart name in `repo`, or a local chart directory
    repo: str | None  # https:// or oci:// repository; None for a local chart
    version: str | None
    values: str  # values file name inside the plan folder
    depends_on: tuple[str, ...] = ()
    wait_for: str = "the chart's resources are ready (helm --wait)"
    timeout: str = "10m"
    readiness: tuple[tuple[str, ...], ...] = ()
    images: tuple[str, ...] = ()  # pinned by the values (they appear in the rendered manifests)
    operator_images: tuple[str, ...] = ()  # started by an operator, not in the manifests
    api_versions: tuple[str, ...] = ()  # served by the CRDs the chart installs (for offline renders)
    secret: bool = False  # the values file holds secrets (written 0600)
    chart_path: Path | None = None  # local chart directory (extra releases, NaaVRE's checkout, nodekiln's own)
    package: Path | None = None  # the chart's package from the site's addons.charts folder
    values_chart: Path | None = None  # renders the sub-charts' values from `values` first (NaaVRE)
    overlay: str | None = None  # values file given last, after the values chart's output
    source: dict[str, str] | None = None  # {"git": url, "ref": commit} for charts from a Git checkout
    builtin: bool = True

    @property
    def chart_ref(self) -> str:
        """What `helm upgrade --install NAME <chart_ref>` gets."""
        if self.package is not None:
            return str(self.package)
        if self.chart_path is not None:
            return str(self.chart_path)
        if self.repo and self.repo.startswith("oci://"):
            return f"{self.repo.rstrip('/')}/{self.chart}"
        return self.chart

    @property
    def pull(self) -> tuple[str | None, str | None]:
        """(--repo, --version) for helm; none for a chart on disk."""
        if self.package is not None or self.chart_path is not None:
            return None, None
        return self.repo, self.version

    @property
    def label(self) -> str:
        version = f"@{self.version}" if self.version else ""
        return f"{self.chart}{version}"

    def summary(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "name": self.name,
            "namespace": self.namespace,
            "chart": self.chart,
            "repo": self.repo,
            "version": self.version,
            "values": self.values,
            "dependsOn": list(self.depends_on),
            "waitFor": self.wait_for,
            "timeout": self.timeout,
        }
        if self.source:
            entry["source"] = self.source
        if self.values_chart is not None:
            entry["valuesChart"] = self.values_chart.name
        if self.overlay is not None:
            entry["overlay"] = self.overlay
        if self.chart_path is not None:
            entry["chartPath"] = str(self.chart_path)
        return entry


@dataclass
class Plan:
    site: str
    releases: list[Release]
    files: dict[str, tuple[bytes, int]]  # values files by name: (content, mode)
    missing_secrets: list[tuple[str, str]] = field(default_factory=list)  # (secret, env var that provides it)
    out: Path | None = None

    def release(self, name: str) -> Release:
        for release in self.releases:
            if release.name == name:
                return release
        raise KeyError(name)

    def values_path(self, release: Release) -> Path:
        if self.out is None:
            raise AddonsError("the plan was not written yet")
        return self.out / release.values

    def to_json(self) -> str:
        doc = {
            "site": self.site,
            "releases": [
                {
                    **r.summary(),
                    "valuesSha256": hashlib.sha256(self.files[r.values][0]).hexdigest(),
                    **({"overlaySha256": hashlib.sha256(self.files[r.overlay][0]).hexdigest()} if r.overlay else {}),
                }
                for r in self.releases
            ],
        }
        return json.dumps(doc, indent=2) + "\n"


# --- secrets -------------------------------------------------------------------------------


class Secrets:
    """Named secrets for the templates: made once in the site's store (0600), never printed.

    `secret(name)` makes a random one on first use; `user_secret(name)` is one only the site's
    operators know (a registry password): taken once from $NODEKILN_SECRET_<NAME> and stored.
    """

    def __init__(self, site: Site):
        from nodekiln.secrets import SecretStore

        self.store = SecretStore(site.directory, site.name)
        self._cache: dict[str, str] | None = None
        self.used = False
        self.missing: list[tuple[str, str]] = []

    @property
    def cache(self) -> dict[str, str]:
        """The store's named secrets, read once (a store is made on first use)."""
        if self._cache is None:
            self._cache = dict(self.store.ensure()[0].extra)
        return self._cache

    def secret(self, name: str, kind: SecretKind = "password") -> str:
        from nodekiln.secrets import password

        self.used = True
        if name not in self.cache:
            factory: Callable[[], str] = (lambda: "u" + password(15).lower()) if kind == "user" else password
            self.cache[name] = self.store.named(name, factory)
        return self.cache[name]

    def certificate(self, name: str, dns_names: list[str]) -> KeyPair:
        """A serving certificate the cluster CA signs, stored as `<name>.crt` and `<name>.key`.

        Made on first use; made again when its names change or it has fewer than
        CERT_RENEW_DAYS left, so running `invoke addons` (and re-applying) renews it.
        """
        import datetime as dt

        from cryptography import x509

        from nodekiln.secrets import make_serving_cert

        self.used = True
        cert_pem, key_pem = self.cache.get(f"{name}.crt"), self.cache.get(f"{name}.key")
        if cert_pem is not None and key_pem is not None:
            cert = x509.load_pem_x509_certificate(cert_pem.encode())
            names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            left = cert.not_valid_after_utc - dt.datetime.now(dt.UTC)
            if names.get_values_for_type(x509.DNSName) == dns_names and left > dt.timedelta(days=CERT_RENEW_DAYS):
                return KeyPair(cert=cert_pem, key=key_pem)
        pair = make_serving_cert(self.store.load().ca, dns_names, CERT_DAYS)
        for suffix, value in ((".crt", pair.cert), (".key", pair.key)):
            self.store.replace_named(name + suffix, value)
            self.cache[name + suffix] = value
        return pair

    def user_secret(self, name: str) -> str:
        self.used = True
        if name in self.cache:
            return self.cache[name]
        env = env_name(name)

        class Missing(Exception):
            pass

        def from_env() -> str:
            value = os.environ.get(env)
            if not value:
                raise Missing
            return value

        try:
            if not os.environ.get(env):
                raise Missing
            self.cache[name] = self.store.named(name, from_env)
        except Missing:
            self.missing.append((name, env))
            return f"UNSET-{name}"
        return self.cache[name]


# Serving certificates of the cluster CA (the ingress's default one): 397 days, the longest
# browsers accept for a public CA's, renewed by `invoke addons` when fewer than 60 are left.
CERT_DAYS = 397
CERT_RENEW_DAYS = 60


def env_name(secret: str) -> str:
    return "NODEKILN_SECRET_" + re.sub(r"[^A-Z0-9]", "_", secret.upper())


# --- template helpers ----------------------------------------------------------------------


def _q(value: object) -> str:
    """Any value as YAML flow text (JSON is YAML): strings quoted, lists and maps inline."""
    if isinstance(value, tuple):
        value = list(value)
    return json.dumps(value, default=str)


def split_image(image: str) -> tuple[str, str, str]:
    """'quay.io/tigera/operator:v1.38.6' -> ('quay.io', 'tigera/operator', 'v1.38.6')."""
    name, _, tag = image.rpartition(":") if ":" in image.rsplit("/", 1)[-1] else (image, "", "latest")
    first, _, rest = name.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return first, rest, tag
    return "docker.io", name if "/" in name else f"library/{name}", tag


def _registry(image: str) -> str:
    return split_image(image)[0]


def _repository(image: str, registry: bool = True) -> str:
    reg, repo, _ = split_image(image)
    return f"{reg}/{repo}" if registry else repo


def _tag(image: str) -> str:
    return split_image(image)[2]


def _environment() -> jinja2.Environment:
    env = templates.environment("addons")
    env.filters.update(q=_q, registry=_registry, repository=_repository, tag=_tag)
    return env


# --- the plan ------------------------------------------------------------------------------


def build_plan(site: Site, *, secrets: Secrets | None = None) -> Plan:
    """Every release the site's addons section turns on, in install order, values rendered."""
    spec = site.addons
    if not spec.enabled:
        return Plan(site.name, [], {})
    secrets = secrets or Secrets(site)
    defs = builtins()
    # where each release goes (addons/<name>.yaml namespace, sameNamespaceAs, the site's namespace:)
    namespaces = release_namespaces(spec)
    graph = release_graph(spec, namespaces)
    ordered = order(graph)

    releases: dict[str, Release] = {}
    files: dict[str, tuple[bytes, int]] = {}
    env = _environment()
    for key in BUILTIN_KEYS:
        addon = spec.builtin(key)
        if not addon.enabled:
            continue
        definition = defs[release_name(key)]
        release, texts, secret = _render_builtin(
            site, definition, addon, namespaces, graph[definition.name], secrets, env
        )
        releases[release.name] = release
        for file, content in texts.items():
            files[file] = (content.encode(), 0o600 if secret else 0o644)
    for extra in spec.releases:
        release, text = _render_extra(site, extra)
        releases[release.name] = release
        files[release.values] = (text.encode(), 0o644)
    return Plan(site.name, [releases[name] for name in ordered], files, list(secrets.missing))


def _render_builtin(
    site: Site,
    definition: AddonDef,
    addon: AddonBase,
    namespaces: dict[str, str],
    needs: list[str],
    secrets: Secrets,
    env: jinja2.Environment,
) -> tuple[Release, dict[str, str], bool]:
    """The release, its values files' text by name (values, then the overlay) and whether they
    hold secrets; `needs`: the releases it installs after (its entry in the release graph)."""
    secrets.used = False
    context = template_context(Inputs(site, definition, addon, namespaces, secrets))
    text = _render_template(definition.template, context, env)
    overlay = _render_template(definition.overlay, context, env) if definition.overlay else None
    secret = secrets.used
    text = _apply_override(site, text, addon.values, ("addons", definition.setting, "values"), definition.template)
    chart_path = values_chart = package = None
    version = addon.version or definition.version
    if definition.source is not None:
        checkout = _checkout(site, definition, addon)
        chart_path = checkout / definition.chart
        values_chart = checkout / definition.valuesChart if definition.valuesChart else None
    elif definition.repo is None:
        chart_path = definition.local_chart
    elif site.addons.charts is not None:
        package = _package(site, definition, version)
    name = definition.name
    values_file = f"{name}.root-values.yaml" if values_chart is not None else f"{name}.values.yaml"
    release = Release(
        name=name,
        namespace=namespaces[name],
        chart=definition.chart,
        repo=definition.repo or (definition.source.git if definition.source else None),
        version=version,
        values=values_file,
        depends_on=tuple(needs),
        wait_for=definition.waitFor,
        timeout=definition.timeout or site.addons.timeout,
        readiness=tuple(tuple(cmd) for cmd in definition.readiness),
        images=tuple(definition.images.values()),
        operator_images=tuple(definition.operatorImages.values()),
        api_versions=tuple(definition.apiVersions),
        secret=secret,
        chart_path=chart_path,
        package=package,
        values_chart=values_chart,
        overlay=f"{name}.overlay.yaml" if definition.overlay else None,
        # where the chart comes from; where this site keeps it is chart_path
        source={"git": definition.source.git, "ref": definition.source.ref} if definition.source else None,
    )
    texts = {release.values: text}
    if release.overlay is not None and overlay is not None:
        texts[release.overlay] = overlay
    return release, texts, secret


def _render_template(template: str, context: dict[str, Any], env: jinja2.Environment) -> str:
    try:
        text = env.get_template(template).render(**context)
    except jinja2.TemplateError as exc:
        raise AddonsError(f"addons/{template}: {exc}") from None
    _load_mapping(text, f"addons/{template} (rendered)")
    return text


def _package(site: Site, definition: AddonDef, version: str) -> Path:
    """The chart's package in the site's addons.charts folder (named as `helm pull` names it)."""
    assert site.addons.charts is not None
    folder = site.directory / site.addons.charts
    package = folder / f"{definition.chart}-{version}.tgz"
    if not package.is_file():
        raise AddonsError(
            f"addons.charts: no {package.name} in {folder}: "
            f"helm pull {definition.chart} --repo {definition.repo} --version {version} --destination {folder}"
        )
    return package


def _checkout(site: Site, definition: AddonDef, addon: AddonBase) -> Path:
    """The folder of a Git-sourced addon's checkout: its `checkoutSetting`, else the site folder."""
    setting = definition.source.checkoutSetting if definition.source else None
    if setting is None:
        return site.directory
    folder = getattr(addon, setting)
    if not isinstance(folder, str):
        raise AddonsError(
            f"addons/{definition.name}.yaml: source.checkoutSetting {setting} is not a folder name in addons.{definition.setting}"
        )
    return (site.directory / folder).resolve()


def _render_extra(site: Site, extra: ExtraRelease) -> tuple[Release, str]:
    if extra.values:
        text = (site.directory / extra.values).read_text(encoding="utf-8")
        _load_mapping(text, f"{site.directory / extra.values}")
    else:
        text = "{}\n"
    local = None if extra.repo else (site.directory / extra.chart).resolve()
    release = Release(
        name=extra.name,
        namespace=extra.namespace,
        chart=extra.chart,
        repo=extra.repo,
        version=extra.version or (_chart_version(local) if local else None),
        values=f"{extra.name}.values.yaml",
        depends_on=tuple(extra.dependsOn),
        wait_for=extra.waitFor,
        timeout=extra.timeout,
        chart_path=local,
        builtin=False,
    )
    return release, text


def _chart_version(chart_dir: Path) -> str | None:
    try:
        meta = yaml.safe_load((chart_dir / "Chart.yaml").read_text(encoding="utf-8"))
        return str(meta.get("version")) if isinstance(meta, dict) and meta.get("version") else None
    except (OSError, yaml.YAMLError):
        return None


def _load_mapping(text: str, where: str) -> dict[str, Any]:
    try:
        data = yaml.load(text, Loader=yamlsrc.Loader)
    except yaml.YAMLError as exc:
        raise AddonsError(f"{where}: does not parse as YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise AddonsError(f"{where}: expected a mapping of values, got {type(data).__name__}")
    return data


def _apply_override(site: Site, text: str, override: str | None, path: PathKey, template: str) -> str:
    rendered = _load_mapping(text, f"addons/{template} (rendered)")
    if not override:
        return text
    file = site.directory / override
    extra = _load_mapping(file.read_text(encoding="utf-8"), str(file))
    head = "".join(line for line in text.splitlines(keepends=True)[:2] if line.startswith("#"))
    merged = deep_merge(rendered, extra)
    return f"{head}# merged with {override} ({'.'.join(map(str, path))})\n" + yaml.safe_dump(
        merged, sort_keys=False, default_flow_style=False
    )


def deep_merge(base: Any, over: Any) -> Any:
    """Helm's merge of values files: maps merge key by key, anything else is replaced."""
    if isinstance(base, dict) and isinstance(over, dict):
        merged = dict(base)
        for key, value in over.items():
            merged[key] = deep_merge(base[key], value) if key in base else value
        return merged
    return over


def default_out(site: Site) -> Path:
    return Path("build/addons") / site.name


def write_plan(plan: Plan, out: Path) -> Path:
    """Write plan.json and the values files under `out` in one step; returns plan.json."""
    files = dict(plan.files)
    files[PLAN_FILE] = (plan.to_json().encode(), 0o644)
    write_tree_atomic(out, files)
    plan.out = out
    return out / PLAN_FILE


def load_values(paths: list[Path]) -> dict[str, Any]:
    """The values Helm sees for these files, merged in order (for comparing with the cluster)."""
    merged: dict[str, Any] = {}
    for path in paths:
        merged = deep_merge(merged, _load_mapping(path.read_text(encoding="utf-8"), str(path)))
    # through JSON, as `helm get values --output json` gives them: dates and the like as strings
    normalized: dict[str, Any] = json.loads(json.dumps(merged, default=str))
    return normalized
