"""The shared image pipeline (nodekiln/images/pipeline.py) without building anything: both tree
sources feed the same tail; a cache hit writes nothing; the manifest beside the artifacts is
written last and atomically; every source's stages are timed and recorded.

The programs (diskimage-builder, Packer, qemu-img, mke2fs, ...) are replaced by fakes that
write small files, so what is checked is the pipeline's order and bookkeeping."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from rich.console import Console

from nodekiln.config.recipe import ImageRecipe
from nodekiln.images import build, dib, disk, manifest, packer, pipeline, preflight
from nodekiln.report import Reporter
from tests.efi_fixtures import make_chain, write_chain

KERNEL = "6.1.0-42-cloud-amd64"
CHAIN = make_chain()


def fake_site(tmp_path: Path, recipe: ImageRecipe | None = None) -> SimpleNamespace:
    return SimpleNamespace(
        name="lab",
        directory=tmp_path,
        image=recipe or ImageRecipe(kubernetesSource="none"),
        kubernetes=SimpleNamespace(version="1.31.4"),
    )


def make_tree(tree: Path) -> None:
    (tree / "boot").mkdir(parents=True)
    write_chain(tree, CHAIN, f"vmlinuz-{KERNEL}")  # the default secureBoot (supported) reads it
    (tree / "boot" / f"initrd.img-{KERNEL}").write_bytes(b"initrd")
    (tree / "usr/share/nodekiln").mkdir(parents=True)
    (tree / "usr/share/nodekiln/kubernetes-source.txt").write_text("none\n")


def listing(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


class FakeDisk:
    """disk.assemble and disk.convert as file writes; records what the tree held when assembled."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.inside: dict[str, Any] | None = None
        monkeypatch.setattr(disk, "assemble", self.assemble)
        monkeypatch.setattr(disk, "convert", self.convert)

    def assemble(
        self, tree: Path, raw: Path, size: int, disk_id: str, work: Path, log: Path | None = None, **_: Any
    ) -> None:
        self.inside = json.loads((tree / manifest.IMAGE_MANIFEST_PATH).read_text())
        raw.write_bytes(b"R" * 4096)

    def convert(self, raw: Path, target: Path, fmt: str, log: Path | None = None, compression: bool = True) -> None:
        target.write_bytes(b"Q" * 1000)


@pytest.fixture
def fake_disk(monkeypatch: pytest.MonkeyPatch) -> FakeDisk:
    return FakeDisk(monkeypatch)


def run_tail(tmp_path: Path, formats: tuple[str, ...] = ("qcow2", "raw")) -> tuple[pipeline.Plan, Any]:
    plan = build.plan_build(fake_site(tmp_path), tmp_path / "out", formats=formats)
    work = pipeline.start_build(plan)
    work.mkdir()
    tree = work / "tree"
    make_tree(tree)
    stages = pipeline.Stages()
    stages.add("source", 1.23)
    result = pipeline.disk_tail(
        plan, tree, work, stages, tools=lambda: {"tool": "1.0"}, bake_steps=[{"name": "10-x", "seconds": 2}], started=0
    )
    return plan, result


# --- the tail ------------------------------------------------------------------------------


def test_tail_makes_every_format_and_a_manifest_that_agrees(tmp_path: Path, fake_disk: FakeDisk) -> None:
    plan, result = run_tail(tmp_path)
    assert result.artifacts == {"qcow2": plan.artifact("qcow2"), "raw": plan.artifact("raw")}
    assert not result.cache_hit
    beside = json.loads(plan.manifest_path.read_text())
    assert fake_disk.inside is not None and manifest.agree(fake_disk.inside, beside) == []
    assert beside["kernel"] == KERNEL and beside["kubernetesSource"] == "none"
    assert beside["tools"] == {"tool": "1.0"} and beside["bakeSteps"] == [{"name": "10-x", "seconds": 2}]
    sizes = {a["format"]: (a["file"], a["size"]) for a in beside["artifacts"]}
    assert sizes == {"qcow2": (plan.artifact("qcow2").name, 1000), "raw": (plan.artifact("raw").name, 4096)}
    assert [s["name"] for s in beside["stages"]] == [
        "source",
        "manifest",
        "assemble GPT disk (BIOS + UEFI)",
        "convert to qcow2",
        "convert to raw",
    ]
    assert beside["stages"] == result.stages and all(isinstance(s["seconds"], float) for s in result.stages)
    # The tree is consumed once assembled; no partial artifact is left.
    assert not list(plan.out_dir.glob(".work-*/tree")) and not list(plan.out_dir.glob(".*partial"))
    assert pipeline.cached(plan) is not None  # what the tail writes is what the cache check accepts


def test_the_manifest_is_written_last_and_atomically(
    tmp_path: Path, fake_disk: FakeDisk, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[Path, list[str]]] = []
    real = pipeline.write_atomic

    def spy(path: Path, data: bytes | str, mode: int = 0o644) -> None:
        # At the moment of the manifest write every artifact is at its final name already.
        seen.append((path, sorted(p.name for p in path.parent.iterdir() if p.is_file())))
        real(path, data, mode)

    monkeypatch.setattr(pipeline, "write_atomic", spy)
    plan, _ = run_tail(tmp_path)
    assert [p for p, _ in seen] == [plan.manifest_path]
    assert seen[0][1] == sorted([plan.artifact("qcow2").name, plan.artifact("raw").name])


def test_a_failed_conversion_leaves_no_manifest_and_cleanup_no_partial(
    tmp_path: Path, fake_disk: FakeDisk, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(raw: Path, target: Path, fmt: str, log: Path | None = None, compression: bool = True) -> None:
        target.write_bytes(b"half")
        raise disk.DiskError("qemu-img convert failed")

    monkeypatch.setattr(disk, "convert", broken)
    plan = build.plan_build(fake_site(tmp_path), tmp_path / "out")
    work = pipeline.start_build(plan)
    with pytest.raises(disk.DiskError, match="qemu-img"), pipeline.cleanup(work, plan):
        work.mkdir()
        make_tree(work / "tree")
        pipeline.disk_tail(plan, work / "tree", work, pipeline.Stages(), tools=dict, bake_steps=[], started=0)
    assert sorted(p.name for p in plan.out_dir.iterdir()) == ["logs"]
    assert pipeline.cached(plan) is None


def test_an_interrupt_becomes_build_interrupted_after_cleanup(tmp_path: Path) -> None:
    plan = build.plan_build(fake_site(tmp_path), tmp_path / "out")
    work = pipeline.start_build(plan)
    with pytest.raises(pipeline.BuildInterrupted, match="cleaned up"), pipeline.cleanup(work, plan):
        work.mkdir()
        pipeline.partial_path(plan.artifact("qcow2")).write_bytes(b"half")
        raise KeyboardInterrupt
    assert not work.exists() and sorted(p.name for p in plan.out_dir.iterdir()) == ["logs"]


# --- cache ---------------------------------------------------------------------------------


def test_a_cache_hit_writes_nothing(tmp_path: Path, fake_disk: FakeDisk) -> None:
    plan, first = run_tail(tmp_path, formats=("qcow2",))
    before = listing(tmp_path)
    out = Console(record=True, width=200)
    again = build.build_image(fake_site(tmp_path), plan.out_dir, formats=["qcow2"], report=Reporter(console=out))
    assert again.cache_hit and again.artifacts == first.artifacts and again.stages == first.stages
    assert listing(tmp_path) == before  # not even the build log is started again
    assert out.export_text() == f"cache hit: {plan.stem} (inputs unchanged), nothing to do\n"


@pytest.mark.parametrize(
    "artifacts",
    [
        "[]",
        '[{"format": "qcow2"}]',
        '[{"format": "qcow2", "size": 999}]',
        '"not a list"',
    ],
)
def test_an_incomplete_manifest_is_no_cache_hit(tmp_path: Path, artifacts: str) -> None:
    image = tmp_path / "x.qcow2"
    image.write_bytes(b"Q" * 1000)
    beside = tmp_path / "x.manifest.json"
    beside.write_text(f'{{"artifacts": {artifacts}}}')
    assert pipeline.complete_manifest(beside, {"qcow2": image}) is None
    beside.write_text('{"artifacts": [{"format": "qcow2", "size": 1000}]}')
    assert pipeline.complete_manifest(beside, {"qcow2": image}) is not None
    image.unlink()
    assert pipeline.complete_manifest(beside, {"qcow2": image}) is None


# --- stage timing --------------------------------------------------------------------------


def test_stages_time_blocks_in_order_and_tell_the_display() -> None:
    calls: list[tuple[str, str]] = []

    class Display:
        def start(self, name: str) -> str:
            calls.append(("start", name))
            return f"handle-{name}"

        def finish(self, handle: Any, name: str, seconds: float) -> None:
            calls.append(("finish", handle))

    stages = pipeline.Stages(digits=2, display=Display())
    with stages("one") as handle:
        assert handle == "handle-one"
    with pytest.raises(RuntimeError), stages("two"):
        raise RuntimeError
    stages.add("three", 1.23456)
    assert [s["name"] for s in stages.records] == ["one", "two", "three"] and stages.last["seconds"] == 1.23
    assert calls == [("start", "one"), ("finish", "handle-one"), ("start", "two"), ("finish", "handle-two")]
    assert pipeline.stage_lines([{"name": "x", "seconds": 2.5}]) == ["      2.5 s  x"]


def test_the_diskimage_builder_source_records_its_stages(
    tmp_path: Path, fake_disk: FakeDisk, monkeypatch: pytest.MonkeyPatch
) -> None:
    def build_tree(recipe: ImageRecipe, stage: Path, work: Path, log: Path, on_line: Any = None) -> Path:
        lines = ("dib-run-parts Running /tmp/install.d/10-x", f"{dib.STEP_BEGIN}10-x", f"{dib.STEP_END}10-x 3.0")
        for line in (*lines, "dib-run-parts done"):
            on_line(line)
        work.mkdir(parents=True, exist_ok=True)
        tar = work / "root.tar"
        tar.write_bytes(b"tar")
        return tar

    monkeypatch.setattr(preflight, "ensure_host_tools", lambda *a, **k: [])
    monkeypatch.setattr(dib, "write_stage", lambda *a, **k: None)
    monkeypatch.setattr(dib, "build_tree", build_tree)
    monkeypatch.setattr(dib, "extract_tree", lambda tar, tree: make_tree(tree))
    monkeypatch.setattr(build, "tool_versions", lambda: {"diskimage-builder": "3"})
    out = Console(record=True, width=200)
    result = build.build_image(fake_site(tmp_path), tmp_path / "out", report=Reporter(console=out), check_sources=False)
    names = [s["name"] for s in result.stages]
    assert names == [
        "stage bake steps",
        "diskimage-builder: root tree",
        "unpack root tree",
        "manifest",
        "assemble GPT disk (BIOS + UEFI)",
        "convert to qcow2 (compressed)",
    ]
    assert [h["name"] for h in result.stages[1]["slowestHooks"]] == ["install.d/10-x"]
    assert json.loads(result.manifest_path.read_text())["bakeSteps"] == [{"name": "10-x", "seconds": 3.0}]
    assert json.loads(result.manifest_path.read_text())["stages"] == result.stages
    text = out.export_text()
    assert "built in" in text and text.index("built in") > text.index("convert to qcow2 (compressed) (")
    assert not list(result.manifest_path.parent.glob(".work-*"))


def test_the_packer_source_records_its_stages(
    tmp_path: Path, fake_disk: FakeDisk, monkeypatch: pytest.MonkeyPatch, example_site: Path
) -> None:
    from nodekiln.config.site import load_site
    from nodekiln.images import machine, packer_build, seed

    def fake_build(templates: Path, var_file: Path, only: str, log: Path, on_event: Any = None) -> None:
        variables = json.loads(var_file.read_text())
        Path(variables["tree_file"]).write_bytes(b"tar.zst")
        Path(variables["manifest_file"]).write_text("{}")

    def fake_key(work: Path) -> tuple[Path, str]:
        (work / "id").write_text("key")
        return work / "id", "ssh-ed25519 AAAAbuild someone"

    base = tmp_path / "base.qcow2"
    base.write_bytes(b"base")
    monkeypatch.setattr(preflight, "ensure_host_tools", lambda *a, **k: [])
    monkeypatch.setattr(packer, "packer_version", lambda: packer.PackerVersion(1, 6, 6))
    monkeypatch.setattr(packer, "template_dir", lambda work, version, log=None: work)
    monkeypatch.setattr(packer, "build", fake_build)
    monkeypatch.setattr(packer, "read_manifest", lambda path: [packer.Artifact("node", "qemu", "", [], {"tree": ""})])
    monkeypatch.setattr(packer_build, "_virtual_size", lambda image: 6 << 30)
    monkeypatch.setattr(packer_build, "_extract", lambda tar, tree, log: make_tree(tree))
    monkeypatch.setattr(packer_build, "remove_build_access", lambda tree, user, key: ["var/root/.ssh/authorized_keys"])
    monkeypatch.setattr(packer_build, "output", lambda argv, **k: "QEMU emulator version 7.2.0\n")
    monkeypatch.setattr(packer_build, "tool_versions", lambda: {"qemu-img": "7.2"})
    monkeypatch.setattr(machine, "accelerator", lambda: "tcg")
    monkeypatch.setattr(machine, "generate_ssh_key", fake_key)
    monkeypatch.setattr(seed, "write_seed_iso", lambda path, files: path)
    out = Console(record=True, width=200)
    result = packer_build.build_image_packer(
        load_site(example_site),
        "packer-qemu",
        tmp_path / "out",
        report=Reporter(console=out),
        base_image=base,
        check_sources=False,
    )
    assert [s["name"] for s in result.stages] == [
        "base image",
        "stage bake steps, seed, templates",
        "packer build (packer-qemu: boot, bake steps, export tree)",
        "unpack root tree",
        "manifest",
        "assemble GPT disk (BIOS + UEFI)",
        "convert to qcow2",
    ]
    beside = json.loads(result.manifest_path.read_text())
    assert beside["stages"] == result.stages
    assert beside["tools"]["builder"] == "packer-qemu" and beside["tools"]["baseImage"] == "base.qcow2"
    assert beside["inputs"]["builder"] == "packer-qemu"
    text = out.export_text()
    assert f"packer-qemu: built {result.image.name} in" in text
    assert all(line in text for line in pipeline.stage_lines(result.stages))
    assert "removed var/root/.ssh/authorized_keys" in result.log.read_text()
