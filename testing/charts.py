"""The real upstream charts the addon tests and benchmarks render (tests/charts/upstream/).

They are the released packages the users install, copied from the project's shared chart folder
(`../shared/charts/`, its SOURCES.md names repository, commit and version of each); kept in the
repository so a clean clone renders them without a chart repository. SHA256SUMS holds their
digests. `example_site()` is the example site set up the way an air-gapped site is: its
`addons.charts` folder holds the packages, and NaaVRE-helm's two charts are unpacked where its
checkout goes (values/ and naavre/ with the sub-charts `helm dependency build` would place).
"""

from __future__ import annotations

import hashlib
import shutil
import tarfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
UPSTREAM = REPO / "tests" / "charts" / "upstream"
SUMS = UPSTREAM / "SHA256SUMS"
NAAVRE_HELM = UPSTREAM / "naavre-helm-d63c11a"  # NaaVRE-helm at d63c11a3 (main)
EXAMPLE = REPO / "sites" / "example" / "site.yaml"
TOKEN_ENV = "NODEKILN_SECRET_NAAVRE_VLAB_OPENLAB_CELL_GITHUB_TOKEN"


def mismatched() -> list[str]:
    """Packages whose sha256 differs from SHA256SUMS (or that are missing)."""
    bad = []
    for line in SUMS.read_text(encoding="utf-8").splitlines():
        digest, name = line.split(maxsplit=1)
        path = UPSTREAM / name
        if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            bad.append(name)
    return bad


def package(name: str) -> Path:
    """tests/charts/upstream/<name>.tgz, e.g. package('traefik-41.3.0')."""
    path = UPSTREAM / f"{name}.tgz"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not one of the upstream chart packages (see {SUMS})")
    return path


def unpack(archive: Path, into: Path) -> Path:
    """A chart package unpacked: into/<chart name> (what a checkout's chart folder holds)."""
    into.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
        top = tar.getnames()[0].split("/")[0]
    return into / top


def example_site(folder: Path, change: dict | None = None) -> Path:
    """The example site in `folder` with its charts beside it; returns the site file.

    `change` is merged over the site's `addons:` section (maps key by key)."""
    folder.mkdir(parents=True, exist_ok=True)
    doc = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    doc["addons"]["charts"] = "charts"
    if change:
        doc["addons"] = _merge(doc["addons"], change)
    (folder / "site.yaml").write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    charts = folder / "charts"
    charts.mkdir(exist_ok=True)
    for archive in UPSTREAM.glob("*.tgz"):
        target = charts / archive.name
        if not target.exists():
            target.symlink_to(archive)
    checkout = folder / doc["addons"].get("naavre", {}).get("chartsPath", "NaaVRE-helm")
    if not checkout.exists():
        tmp = folder / ".unpack"
        checkout.mkdir(parents=True)
        for chart in ("values", "naavre"):
            shutil.move(unpack(NAAVRE_HELM / f"{chart}-0.1.0.tgz", tmp), checkout / chart)
        shutil.rmtree(tmp)
    return folder / "site.yaml"


def _merge(base: object, over: object) -> object:
    if isinstance(base, dict) and isinstance(over, dict):
        merged = dict(base)
        for key, value in over.items():
            merged[key] = _merge(base[key], value) if key in base else value
        return merged
    return over
