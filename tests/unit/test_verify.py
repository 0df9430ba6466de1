"""`invoke verify-image` and the checks before an artifact is used (nodekiln/images/verify.py):
a build as nodekiln leaves it verifies; one changed byte of the artifact, a changed manifest,
SBOM or provenance, a missing file or another site's key is refused with a message that names
the file; upload-image refuses before any cloud call."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from invoke.exceptions import Exit

from nodekiln.images import verify
from nodekiln.images.verify import VerificationError, verify_artifact
from tests.provenance_fixtures import signed_build
from tests.unit.test_compare import needs_e2fsprogs


def flip(path: Path, at: int = 100) -> None:
    raw = bytearray(path.read_bytes())
    raw[at] ^= 1
    path.write_bytes(bytes(raw))


def test_a_build_as_nodekiln_leaves_it_verifies(tmp_path: Path) -> None:
    site_dir, artifact, _ = signed_build(tmp_path)
    result = verify_artifact(site_dir, "lab", artifact)
    assert result.packages == 5 and len(result.checks) == 7
    assert result.checks[0].startswith(f"signature of {artifact.name}: good")


def test_one_changed_byte_of_the_artifact_is_refused_naming_it(tmp_path: Path) -> None:
    site_dir, artifact, _ = signed_build(tmp_path)
    flip(artifact)
    with pytest.raises(VerificationError, match=rf"{artifact.name}: its signature {artifact.name}.sig does not verify"):
        verify_artifact(site_dir, "lab", artifact)


@pytest.mark.parametrize("suffix", [".manifest.json", ".spdx.json", ".provenance.json"])
def test_a_changed_file_beside_it_is_refused(tmp_path: Path, suffix: str) -> None:
    site_dir, artifact, _ = signed_build(tmp_path)
    beside = artifact.with_name(artifact.name.rsplit(".", 1)[0] + suffix)
    beside.write_text(beside.read_text() + " ")
    with pytest.raises(VerificationError, match=rf"{beside.name}: its signature .* does not verify"):
        verify_artifact(site_dir, "lab", artifact)


def test_a_re_signed_artifact_that_the_manifest_does_not_record_is_refused(tmp_path: Path) -> None:
    """Signed by the builder key, but not the bytes this build recorded (say, another build's)."""
    from nodekiln.images import signing

    site_dir, artifact, _ = signed_build(tmp_path)
    flip(artifact)
    signing.sign(signing.trusted_key(site_dir, "lab"), artifact)
    with pytest.raises(VerificationError, match=r"is not the .* that .*manifest\.json records"):
        verify_artifact(site_dir, "lab", artifact)


def test_a_missing_file_or_another_site_s_key_is_refused(tmp_path: Path) -> None:
    site_dir, artifact, _ = signed_build(tmp_path)
    other = tmp_path / "other"
    verify.signing.builder_key(other, "lab")
    with pytest.raises(VerificationError, match="does not verify against the builder key"):
        verify_artifact(other, "lab", artifact)
    artifact.with_name(artifact.name.rsplit(".", 1)[0] + ".spdx.json").unlink()
    with pytest.raises(VerificationError, match=r"\.spdx\.json: missing beside"):
        verify_artifact(site_dir, "lab", artifact)


def test_the_task_prints_the_checks_or_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from nodekiln import tasks

    site_dir, artifact, _ = signed_build(tmp_path)
    loaded = SimpleNamespace(directory=site_dir, name="lab")
    original = tasks._site
    tasks._site = lambda path: loaded  # type: ignore[assignment,return-value]
    try:
        tasks.verify_image.body(None, image=str(artifact))
        out = capsys.readouterr().out
        assert f"verified: {artifact}" in out and "signature of" in out
        flip(artifact)
        with pytest.raises(Exit) as caught:
            tasks.verify_image.body(None, image=str(artifact))
        err = capsys.readouterr().err
        assert caught.value.code == 2 and "Traceback" not in err
        assert err.startswith(f"error: {artifact}: its signature {artifact.name}.sig does not verify")
    finally:
        tasks._site = original  # type: ignore[assignment]


@needs_e2fsprogs
def test_the_task_compares_against_a_rebuild(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--against: a byte-identical rebuild is reported identical; a changed one fails (exit 1)
    naming each file that differs inside the disk (real ext4 disks, as compare.py's tests make)."""
    import json
    import shutil

    from nodekiln import tasks
    from testing.standin_build import sign_stand_in
    from tests.unit.test_compare import changed_copy, make_tree, small_disk

    site_dir = tmp_path / "site"
    site_dir.mkdir()
    tree = make_tree(tmp_path / "tree")
    artifact = tmp_path / "out" / "lab-0123456789abcdef.raw"
    artifact.parent.mkdir()
    small_disk(tree, artifact, tmp_path / "wa")
    manifest_path = artifact.with_name("lab-0123456789abcdef.manifest.json")
    manifest_path.write_text(json.dumps({"site": "lab", "inputHash": "0123456789abcdef" * 4}))
    sign_stand_in(site_dir, "lab", artifact, manifest_path)
    rebuild = tmp_path / "rebuild.raw"
    shutil.copy(artifact, rebuild)
    changed = tmp_path / "changed.raw"
    small_disk(changed_copy(tree, tmp_path / "other"), changed, tmp_path / "wc")
    loaded = SimpleNamespace(directory=site_dir, name="lab")
    original = tasks._site
    tasks._site = lambda path: loaded  # type: ignore[assignment,return-value]
    try:
        tasks.verify_image.body(None, image=str(artifact), against=str(rebuild))
        assert f"{artifact} and {rebuild} are identical" in capsys.readouterr().out
        with pytest.raises(Exit) as caught:
            tasks.verify_image.body(None, image=str(artifact), against=str(changed))
        out = capsys.readouterr().out
        assert caught.value.code == 1
        assert f"{artifact} and {changed} differ:" in out and "root:/usr/bin/tool: mode 0755 != 0700" in out
    finally:
        tasks._site = original  # type: ignore[assignment]


def test_upload_image_refuses_a_tampered_artifact_before_any_cloud_call(tmp_path: Path) -> None:
    from nodekiln.openstack import images

    site_dir, artifact, manifest_path = signed_build(tmp_path)
    flip(artifact)

    class NoCloud:
        def __getattr__(self, name: str) -> object:
            raise AssertionError(f"the cloud was called ({name}) before the artifact was verified")

    site = SimpleNamespace(directory=site_dir, name="lab", openstack=SimpleNamespace(), file=tmp_path / "site.yaml")
    with pytest.raises(VerificationError, match="does not verify"):
        images.upload_image(site, artifact, manifest_path, conn=NoCloud(), progress=False)  # type: ignore[arg-type]
    assert json.loads(manifest_path.read_text())["inputHash"]


def test_the_image_pipeline_signs_what_it_builds_and_the_sbom_inside_is_the_one_beside(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """disk_tail (programs faked as in test_images_pipeline): every format verifies; the SBOM the
    disk was assembled with is byte for byte the one beside it."""
    from nodekiln.images import disk, sbom
    from tests.unit.test_images_pipeline import FakeDisk, run_tail

    fake = FakeDisk(monkeypatch)
    seen: dict[str, str] = {}

    def assemble(tree: Path, raw: Path, *args: object, **kwargs: object) -> None:
        seen["sbom"] = (tree / sbom.SBOM_PATH).read_text()
        fake.assemble(tree, raw, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(disk, "assemble", assemble)
    plan, result = run_tail(tmp_path)
    for fmt in ("qcow2", "raw"):
        verified = verify_artifact(tmp_path, "lab", plan.artifact(fmt))
        assert verified.input_hash == plan.input_hash
    files = verify.companions(plan.artifact("qcow2"))
    assert files.sbom.read_text() == seen["sbom"]
    assert files.manifest == plan.manifest_path == result.manifest_path


def test_an_iso_is_published_and_verified_with_its_suffix_in_the_names(tmp_path: Path) -> None:
    """build_iso's last call (provenance.publish_iso) on an ISO and the manifest it writes."""
    from nodekiln.images import manifest, provenance, sbom
    from tests.provenance_fixtures import inside_manifest, make_root_tree

    tree = make_root_tree(tmp_path / "tree")
    image_inside = inside_manifest(tree)
    inputs = {"kind": "appliance-iso", "image": image_inside["inputs"], "isoCode": {"nodekiln/images/iso.py": "1" * 64}}
    hash_hex = manifest.input_hash(inputs)
    out = tmp_path / "iso"
    out.mkdir()
    iso = out / f"lab-{manifest.short(hash_hex)}.iso"
    iso.write_bytes(b"CD001" * 4000)
    manifest_path = out / f"{iso.name}.manifest.json"
    full = {
        "site": "lab",
        "inputHash": hash_hex,
        "inputs": inputs,
        "packages": image_inside["packages"],
        "artifacts": [manifest.artifact_entry(iso, "iso")],
        "builtAt": "2026-12-03T07:00:00Z",
    }
    manifest_path.write_text(json.dumps(full))
    provenance.publish_iso(tmp_path, "lab", iso, manifest_path, tree, 3.0)
    result = verify_artifact(tmp_path, "lab", iso)
    assert result.packages == 5
    doc = json.loads((out / f"{iso.name}.spdx.json").read_text())
    assert doc["documentNamespace"].startswith("https://nodekiln.invalid/spdx/iso/lab/")
    assert doc["creationInfo"]["created"] == "2026-12-03T07:00:00Z"  # the manifest's time: no epoch set
    assert sbom.deb_package_count(doc) == 5
    statement = json.loads((out / f"{iso.name}.provenance.json").read_text())
    names = {d["name"] for d in statement["predicate"]["buildDefinition"]["resolvedDependencies"]}
    assert {"images/steps/10-kernel.sh", "nodekiln/images/iso.py"} <= names
    flip(iso)
    with pytest.raises(VerificationError, match=rf"{iso.name}: its signature"):
        verify_artifact(tmp_path, "lab", iso)


def test_a_stand_in_build_signed_for_the_openstack_tests_verifies(tmp_path: Path) -> None:
    from tests.provenance_fixtures import sign_stand_in

    image = tmp_path / "build" / "lab-0123456789abcdef.qcow2"
    image.parent.mkdir()
    image.write_bytes(b"\0" * 4096)
    manifest_path = image.with_name("lab-0123456789abcdef.manifest.json")
    manifest_path.write_text(json.dumps({"inputHash": "0123456789abcdef" * 4, "inputs": {}}))
    with pytest.raises(VerificationError, match="missing beside"):
        verify_artifact(tmp_path / "site", "lab", image)
    sign_stand_in(tmp_path / "site", "lab", image, manifest_path)
    assert verify_artifact(tmp_path / "site", "lab", image).packages == 0
