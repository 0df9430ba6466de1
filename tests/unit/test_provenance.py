"""The provenance beside an artifact (nodekiln/images/provenance.py): an in-toto Statement v1
with a SLSA v1 provenance predicate naming the artifact by digest, every input the manifest
records with its digest, the builder and the build's times; signed."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from nodekiln.images import manifest, provenance, signing
from tests.provenance_fixtures import signed_build


def test_the_statement_names_the_artifact_the_inputs_and_the_builder(tmp_path: Path) -> None:
    _, artifact, manifest_path = signed_build(tmp_path)
    stem = artifact.name.rsplit(".", 1)[0]
    statement = json.loads((artifact.parent / f"{stem}.provenance.json").read_text())
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == "https://slsa.dev/provenance/v1"
    assert statement["subject"] == [{"name": artifact.name, "digest": {"sha256": manifest.sha256_file(artifact)}}]
    definition = statement["predicate"]["buildDefinition"]
    assert definition["buildType"] == "https://nodekiln.invalid/build-types/image/v1"
    assert definition["externalParameters"]["recipe"]["release"] == "12"
    deps = {d["name"]: d for d in definition["resolvedDependencies"]}
    assert deps["images/steps/10-kernel.sh"]["digest"] == {"sha256": "a" * 64}
    assert deps["images/run-steps.sh"]["annotations"] == {"executable": True}
    assert deps["kubernetes-source/kubeadm_1.31.4-1.1_amd64.deb"]["digest"] == {"sha256": "c" * 64}
    assert deps["images/preload-test.oci.tar"]["digest"] == {"sha256": "e" * 64}
    assert deps["mirror"]["uri"] == "http://deb.debian.org/debian"
    run = statement["predicate"]["runDetails"]
    assert run["builder"]["id"] == "https://nodekiln.invalid/builders/nodekiln-builder@lab"
    assert run["builder"]["version"]["qemu-img"].startswith("qemu-img")
    started = dt.datetime.fromisoformat(run["metadata"]["startedOn"].replace("Z", "+00:00"))
    finished = dt.datetime.fromisoformat(run["metadata"]["finishedOn"].replace("Z", "+00:00"))
    assert 12 <= (finished - started).total_seconds() <= 14
    assert {b["name"] for b in run["byproducts"]} == {manifest_path.name, f"{stem}.spdx.json"}


def test_every_file_of_the_build_is_signed(tmp_path: Path) -> None:
    site_dir, artifact, manifest_path = signed_build(tmp_path)
    key = signing.trusted_key(site_dir, "lab")
    stem = artifact.name.rsplit(".", 1)[0]
    for name in (artifact.name, manifest_path.name, f"{stem}.spdx.json", f"{stem}.provenance.json"):
        signing.verify(key, artifact.parent / name)


def test_an_iso_s_inputs_include_the_image_s_and_its_own() -> None:
    deps = provenance.resolved_dependencies(
        {
            "image": {"bakeSteps": {"images/steps/10-kernel.sh": "-" + "a" * 64}},
            "isoCode": {"nodekiln/images/iso.py": "1" * 64},
            "seeds": {"cp-1": {"user-data": "2" * 64}},
        }
    )
    assert [d["name"] for d in deps] == ["images/steps/10-kernel.sh", "nodekiln/images/iso.py", "seeds/cp-1/user-data"]
