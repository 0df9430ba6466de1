"""The tasks nodekiln ships: options in, a call into nodekiln, results out.

Run as `invoke <task>` in a checkout (tasks.py adds the developer tasks) or as the installed
`nodekiln <task>` command (`main`).

Every task takes --site PATH (default: $NODEKILN_SITE, else sites/example/site.yaml).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

# invoke re-exports these at its top level, but only its modules declare them for a type checker.
from invoke.collection import Collection
from invoke.context import Context
from invoke.exceptions import Exit
from invoke.program import Program
from invoke.tasks import task

from nodekiln.cli import handled, reporter

if TYPE_CHECKING:  # imported by each task when it runs: `nodekiln --help` stays quick
    from nodekiln.config.site import Site
    from nodekiln.secrets import Secrets

SITE_HELP = {"site": "site file (default: $NODEKILN_SITE, else sites/example/site.yaml)"}


def _site(path: str | None) -> Site:
    from nodekiln.config.site import load_site

    return load_site(path)


def _secrets(site: Site) -> Secrets:
    report = reporter()
    from nodekiln.secrets import SecretStore

    secrets, created = SecretStore(site.directory, site.name).ensure()
    if created:
        report.say(
            f"created the secrets of site {site.name} in {SecretStore(site.directory, site.name).path} (mode 0600)"
        )
    return secrets


@task(help=SITE_HELP)
@handled
def validate(c: Context, site: str | None = None) -> None:
    """Check the site file: every problem with its line and field."""
    report = reporter()
    loaded = _site(site)
    report.say(
        f"{loaded.file}: site {loaded.name} is valid: {len(loaded.control_planes)} control planes, {len(loaded.workers)} workers, endpoint {loaded.endpoint}"
        + (f"; edge: {len(loaded.edge_nodes)} nodes at {loaded.edge_address}" if loaded.edge_nodes else "")
    )


@task(help={**SITE_HELP, "regenerate": "replace existing (or lost) secrets: only for a site whose nodes are all gone"})
@handled
def secrets(c: Context, site: str | None = None, regenerate: bool = False) -> None:
    """Create the site's CAs, keys, token, VRRP password (once)."""
    report = reporter()
    from nodekiln.secrets import SecretStore

    loaded = _site(site)
    store = SecretStore(loaded.directory, loaded.name)
    if regenerate:
        store.create(regenerate=True)
        report.say(f"regenerated the secrets of site {loaded.name} in {store.path}")
    elif store.exists():
        store.load()
        report.say(f"secrets of site {loaded.name} are in place: {store.path}")
    else:
        store.create()
        report.say(f"created the secrets of site {loaded.name} in {store.path} (mode 0600)")


@task(
    help={
        **SITE_HELP,
        "out": "where to write it (default: <site dir>/.nodekiln/<site>-admin.conf)",
        "days": "validity of the client certificate",
    }
)
@handled
def kubeconfig(c: Context, site: str | None = None, out: str | None = None, days: int = 365) -> None:
    """Write an admin kubeconfig signed by the site CA."""
    report = reporter()
    from nodekiln.bootstrap.kubeconfig import admin_kubeconfig
    from nodekiln.files import write_atomic

    loaded = _site(site)
    target = Path(out) if out else loaded.directory / ".nodekiln" / f"{loaded.name}-admin.conf"
    write_atomic(target, admin_kubeconfig(loaded, _secrets(loaded), days=int(days)), mode=0o600)
    report.say(str(target))


@task(
    help={
        **SITE_HELP,
        "out": "artifact folder (default: build/images)",
        "kubernetes_source": "override the recipe: upstream, none or local:DIR",
        "format": "output format, repeatable: qcow2, raw (default: the recipe's)",
        "builder": "dib (default), packer-qemu or packer-openstack",
    },
    iterable=["format"],
)
@handled(
    interrupted="interrupted outside the build itself (tool and source checks): no work folder, mount or "
    "partial artifact is left (an interrupted build cleans up and says so itself)"
)
def build_image(
    c: Context,
    site: str | None = None,
    out: str | None = None,
    kubernetes_source: str | None = None,
    format: list[str] | None = None,
    builder: str = "dib",
) -> None:
    """Bake the site's immutable node image; prints its path last."""
    report = reporter()
    from nodekiln.images.build import build_image as build
    from nodekiln.images.packer_build import BUILDERS, build_image_packer

    if builder != "dib" and builder not in BUILDERS:
        raise Exit(f"error: --builder {builder}: expected dib, {', '.join(BUILDERS)}", code=2)
    loaded = _site(site)
    target = Path(out) if out else Path("build/images")
    if builder == "dib":
        result = build(loaded, target, kubernetes_source, format or None, report=report)
    else:
        result = build_image_packer(loaded, builder, target, kubernetes_source, format or None, report=report)
    state = "cache hit: inputs unchanged" if result.cache_hit else f"built in {result.seconds:.0f} s"
    report.say(f"{state}; manifest {result.manifest_path}")
    if result.manifest.get("bootChain"):
        from nodekiln.images.bootchain import summary

        report.say(summary(result.manifest["bootChain"]))
    report.result(str(result.image))


@task(help={**SITE_HELP, "out": "output folder (default: build/render/<site>)"})
@handled
def render(c: Context, site: str | None = None, out: str | None = None) -> None:
    """Write every node's cloud-init data (NoCloud files)."""
    report = reporter()
    from nodekiln.bootstrap.render import write_site

    loaded = _site(site)
    target = Path(out) if out else Path("build/render") / loaded.name
    write_site(loaded, _secrets(loaded), target)
    edge = f" and {len(loaded.edge_nodes)} edge nodes" if loaded.edge_nodes else ""
    report.say(f"rendered {len(loaded.nodes)} nodes{edge} of site {loaded.name} into {target}")


@task(
    help={
        **SITE_HELP,
        "out": "output folder (default: build/iso)",
        "kubernetes_source": "override image.kubernetesSource: upstream, none or local:DIR",
        "tree": "use this root tree (a directory or diskimage-builder's tar) instead of building one",
    }
)
@handled(
    interrupted="interrupted: no ISO was finished (it is renamed into place only when complete); its work folder "
    "under <out>/work/ stays, and the next build-iso starts over in it"
)
def build_iso(
    c: Context,
    site: str | None = None,
    out: str | None = None,
    kubernetes_source: str | None = None,
    tree: str | None = None,
) -> None:
    """Make the site's appliance ISO (UEFI+BIOS, CD or USB)."""
    report = reporter()
    from nodekiln.images.iso import build_iso as build

    loaded = _site(site)
    result = build(
        loaded,
        _secrets(loaded),
        Path(out) if out else Path("build/iso"),
        kubernetes_source=kubernetes_source,
        tree=Path(tree) if tree else None,
        report=report,
    )
    how = "cache hit (inputs unchanged)" if result.cached else f"built in {result.seconds:.0f} s"
    report.say(f"{how}; manifest {result.manifest}; the ISO holds the site's credentials (mode 0600)")
    chain = json.loads(result.manifest.read_text()).get("bootChain")
    if chain:
        from nodekiln.images.bootchain import summary

        report.say(summary(chain))
    report.result(str(result.path))


@task(
    help={
        **SITE_HELP,
        "dry_run": "print the ordered plan and write the values files and plan.json; touch no cluster",
        "out": "folder of plan.json and the values files (default: build/addons/<site>)",
        "images": "print every container image the addons run (to bake into air-gapped images)",
        "kubeconfig": "cluster to install into (default: <site dir>/.nodekiln/<site>-admin.conf)",
    }
)
@handled(
    interrupted="interrupted: the releases before the current one are installed; the current one may be mid-install: "
    "helm --atomic rolls it back (if helm was killed first it stays pending: helm rollback it); "
    "run addons again, it skips unchanged releases"
)
def addons(
    c: Context,
    site: str | None = None,
    dry_run: bool = False,
    out: str | None = None,
    images: bool = False,
    kubeconfig: str | None = None,
) -> None:
    """Install the site's Helm addons in order (--dry-run: plan)."""
    report = reporter()
    from rich.table import Table

    from nodekiln import addons as stage

    loaded = _site(site)
    target = Path(out) if out else None
    if images:
        for image in stage.images(loaded, target):
            report.result(image)
        return
    if dry_run:
        plan, plan_file = stage.plan_release_files(loaded, target)
        table = Table(title=f"addons of site {loaded.name} (install order)")
        for column in ("#", "release", "namespace", "chart@version"):
            table.add_column(column, no_wrap=True)
        table.add_column("waits for")
        for i, release in enumerate(plan.releases, 1):
            table.add_row(str(i), release.name, release.namespace, release.label, release.wait_for)
        report.show(table)
        for name, env in plan.missing_secrets:
            report.note(f"secret {name} is not in the store yet: set {env} for the real run")
        report.say(f"wrote {plan_file} and {len(plan.releases)} values files (no cluster touched)")
        return
    outcomes = stage.install(loaded, target, Path(kubeconfig) if kubeconfig else None, report=report)
    changed = [o for o in outcomes if o.action != "unchanged"]
    if not changed:
        report.say(f"nothing changed: all {len(outcomes)} releases are as planned")
    else:
        report.say(", ".join(f"{o.name} {o.action}" for o in changed) + f"; {len(outcomes) - len(changed)} unchanged")


@task(
    help={
        **SITE_HELP,
        "image": "the image file (default: the newest build/images/<site>-<hash>.qcow2, its .manifest.json beside it)",
    }
)
@handled(
    interrupted="interrupted: the unfinished Glance image was deleted or, if that did not get through, is left "
    "queued/saving and the next upload-image deletes it; run upload-image again"
)
def upload_image(c: Context, site: str | None = None, image: str | None = None) -> None:
    """Upload the node image to Glance (reused by content hash)."""
    report = reporter()
    from nodekiln.openstack.images import newest_artifact
    from nodekiln.openstack.images import upload_image as upload

    loaded = _site(site)
    if image:
        path = Path(image)
        manifest = path.with_name(path.name.rsplit(".", 1)[0] + ".manifest.json")
    else:
        path, manifest = newest_artifact(loaded)
    result = upload(loaded, path, manifest, report=report)
    for orphan in result.cleaned:
        report.say(f"deleted image {orphan}, left behind by an interrupted upload")
    if result.reused:
        report.say(f"image {result.name} ({result.image_id}) is already in Glance: nothing uploaded")
    else:
        report.say(
            f"uploaded {result.name} ({result.image_id}): {result.bytes / 2**20:.0f} MiB in {result.seconds:.1f} s, sha512 verified"
        )


@task(
    help={
        **SITE_HELP,
        "image": "the artifact (qcow2, raw or ISO); its manifest, SBOM, provenance and .sig files lie beside it",
        "against": "also compare it with this artifact (a rebuild): identical, or which files differ and how",
    }
)
@handled
def verify_image(c: Context, image: str | None = None, site: str | None = None, against: str | None = None) -> None:
    """Check an artifact's signatures, digests and SBOM against the site's builder key."""
    report = reporter()
    from nodekiln.images.verify import verify_artifact

    if not image:
        raise Exit("error: --image PATH is required (the qcow2, raw or ISO to verify)", code=2)

    loaded = _site(site)
    result = verify_artifact(loaded.directory, loaded.name, Path(image))
    for line in result.checks:
        report.say(line)
    if against:
        from nodekiln.images.compare import compare_artifacts

        comparison = compare_artifacts(Path(image), Path(against))
        if comparison.differences:
            report.say(f"{image} and {against} differ:")
            for line in comparison.differences:
                report.say(f"  {line}")
            raise Exit(code=1)
        report.say(f"{image} and {against} are identical")
    report.result(f"verified: {result.artifact} (sha256 {result.sha256}, {result.seconds:.1f} s)")


@task(
    help={
        **SITE_HELP,
        "dry_run": "print the plan (create / keep / delete per resource) and change nothing",
        "prune": "also delete servers and ports of nodes no longer in the site",
    }
)
@handled(
    interrupted="interrupted: what site-deploy created so far stays, tagged as the site's (but for a resource caught "
    "between its create and its tag call: README, OpenStack); run site-deploy again to converge, or site-destroy"
)
def site_deploy(c: Context, site: str | None = None, dry_run: bool = False, prune: bool = False) -> None:
    """Create or converge the site's OpenStack servers and network."""
    report = reporter()
    from nodekiln.openstack.deploy import site_deploy as deploy

    loaded = _site(site)
    result = deploy(loaded, _secrets(loaded), dry_run=dry_run, prune=prune, report=report)
    report.show(result.plan.table())
    verb = "would change" if dry_run else "changed"
    report.say(
        f"site {loaded.name}: {verb}: {result.plan.summary()} ({result.calls.writes} write calls, {result.calls.total} in all, {result.seconds:.1f} s)"
    )
    if not dry_run:
        report.say(f"API endpoint: {result.healthz}")


@task(help=SITE_HELP)
@handled(
    interrupted="interrupted: some of the site's resources may be deleted, the rest are still there and still "
    "the site's; run site-destroy again to delete them"
)
def site_destroy(c: Context, site: str | None = None) -> None:
    """Delete every OpenStack resource nodekiln made for the site."""
    report = reporter()
    from nodekiln.openstack.deploy import site_destroy as destroy

    loaded = _site(site)
    result = destroy(loaded, report=report)
    for line in result.deleted:
        report.say(f"deleted {line}")
    report.say(f"site {loaded.name}: {len(result.deleted)} resources deleted")


@task(help={**SITE_HELP, "out": "write the schema to this file instead of standard output"})
@handled
def schema(c: Context, site: str | None = None, out: str | None = None) -> None:
    """Print the site file's JSON Schema (for editors)."""
    report = reporter()
    from nodekiln.config.site import json_schema
    from nodekiln.files import write_atomic

    text = json.dumps(json_schema(), indent=2) + "\n"
    if out:
        write_atomic(Path(out), text)
        report.say(out)
    else:
        report.result(text.rstrip("\n"))


def main() -> None:
    """The `nodekiln` command: these tasks without a tasks.py (`nodekiln validate --site F`)."""
    Program(namespace=Collection.from_module(sys.modules[__name__]), name="nodekiln", binary="nodekiln").run()
