"""Fast checks of the image build's pure parts: recipe, input hash, manifest, disk layout, GRUB
patching, preflight messages, cache hits, bake-step hygiene. No image is built here."""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from nodekiln.config.recipe import ImageRecipe
from nodekiln.images import build, dib, disk, manifest, preflight
from nodekiln.images.seed import read_seed_iso, write_seed_iso

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO / "images"
MIB = 1024 * 1024


def fake_site(tmp_path: Path, recipe: ImageRecipe | None = None, version: str = "1.31.4"):
    return SimpleNamespace(
        name="lab", directory=tmp_path, image=recipe or ImageRecipe(), kubernetes=SimpleNamespace(version=version)
    )


# --- recipe -------------------------------------------------------------------------------


def test_recipe_defaults_are_the_example_image():
    r = ImageRecipe()
    assert (r.distribution, r.release, r.codename, r.kubernetesSource) == ("debian", "12", "bookworm", "upstream")
    assert r.formats == ["qcow2"] and r.diskSizeGiB == 6


@pytest.mark.parametrize(
    "field,value",
    [
        ("kubernetesSource", "local:"),
        ("kubernetesSource", "github"),
        ("release", "11"),
        ("snapshot", "yesterday"),
        ("diskSizeGiB", 1),
        ("formats", ["vmdk"]),
        ("colour", "blue"),
    ],
)
def test_recipe_rejects(field, value):
    with pytest.raises(ValidationError):
        ImageRecipe.model_validate({field: value})


def test_recipe_snapshot_pins_both_mirrors():
    main, security = ImageRecipe(snapshot="20261120T000000Z").effective_mirror()
    assert "snapshot.debian.org/archive/debian/20261120T000000Z" in main
    assert "debian-security/20261120T000000Z" in security


def test_override_local_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = build.resolve_recipe(fake_site(tmp_path), "local:bins", ["qcow2", "raw"])
    assert r.kubernetesSource == f"local:{tmp_path / 'bins'}" and r.formats == ["qcow2", "raw"]
    with pytest.raises(ValidationError):
        build.resolve_recipe(fake_site(tmp_path), "sideways", None)


# --- input hash ---------------------------------------------------------------------------


def _hash(tmp_path, recipe=None, version="1.31.4", images_dir=IMAGES):
    return manifest.input_hash(manifest.inputs(recipe or ImageRecipe(), version, tmp_path, images_dir))


def test_input_hash_is_stable(tmp_path):
    assert _hash(tmp_path) == _hash(tmp_path)
    assert re.fullmatch(r"[0-9a-f]{64}", _hash(tmp_path))


def test_input_hash_follows_recipe_version_and_steps(tmp_path):
    base = _hash(tmp_path)
    assert _hash(tmp_path, ImageRecipe(extraPackages=["vim"])) != base
    assert _hash(tmp_path, ImageRecipe(kubernetesSource="none")) != base
    assert _hash(tmp_path, version="1.31.5") != base
    copy = tmp_path / "images"
    shutil.copytree(IMAGES, copy)
    assert _hash(tmp_path, images_dir=copy) == base
    step = copy / "steps" / "45-chrony.sh"
    step.write_text(step.read_text() + "\n# changed\n")
    assert _hash(tmp_path, images_dir=copy) != base


def test_input_hash_follows_local_source_content_not_its_path(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "kubectl").write_bytes(b"\x7fELF binary")
    h_a = _hash(tmp_path, ImageRecipe(kubernetesSource="local:a"))
    assert h_a == _hash(tmp_path, ImageRecipe(kubernetesSource="local:b"))
    (tmp_path / "b" / "kubectl").write_bytes(b"\x7fELF other binary")
    assert h_a != _hash(tmp_path, ImageRecipe(kubernetesSource="local:b"))


# --- manifest -----------------------------------------------------------------------------


def test_installed_packages_from_dpkg_status(tmp_path):
    status = tmp_path / "var/lib/dpkg/status"
    status.parent.mkdir(parents=True)
    status.write_text(
        "Package: containerd\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1.6.20~ds1-1\n\n"
        "Package: gone\nStatus: deinstall ok config-files\nVersion: 1\n\n"
        "Package: libc6\nStatus: install ok installed\nArchitecture: i386\nVersion: 2.36\n"
    )
    assert manifest.installed_packages(tmp_path) == {"containerd": "1.6.20~ds1-1", "libc6:i386": "2.36"}


def test_manifest_inside_and_beside_agree(tmp_path):
    inside = manifest.inside_manifest(
        site="lab",
        hash_hex="ab" * 32,
        input_data={"x": 1},
        tools={"t": "1"},
        packages={"p": "1"},
        kernel="6.1",
        bake_steps=[{"name": "10", "seconds": 1}],
        kubernetes_source="none",
        boot_chain={"secureBoot": "off", "links": []},
    )
    art = tmp_path / "lab.qcow2"
    art.write_bytes(b"qcow")
    entry = manifest.artifact_entry(art, "qcow2")
    assert entry["size"] == 4 and len(entry["sha256"]) == 64
    full = manifest.full_manifest(inside, stages=[], artifacts=[entry], built_at="now", seconds=1)
    assert manifest.agree(inside, full) == []
    assert "artifacts" not in inside  # a file cannot carry its own hash
    assert manifest.agree(inside, {**full, "packages": {}}) == ["packages"]
    assert json.loads(manifest.dumps(full)) == full


def test_step_times_parsed_from_dib_output():
    times = dib.StepTimes()
    assert times.feed("2026-11-26 00:05:08.266 | NODEKILN-STEP-BEGIN 10-kernel") == "10-kernel"
    times.feed("2026-11-26 00:05:08.286 | NODEKILN-STEP-END 10-kernel 0.02")
    times.feed("unrelated")
    assert times.steps == [{"name": "10-kernel", "seconds": 0.02}]


# --- disk layout and GRUB -------------------------------------------------------------------


def test_layout_is_aligned_and_data_takes_the_rest():
    layout = disk.plan_layout(root_bytes=1500 * MIB, disk_bytes=6 * 1024 * MIB, seed="x")
    names = [p.name for p in layout.partitions]
    assert names == ["bios", "esp", "root", "data"]
    for p in layout.partitions:
        assert p.start % disk.ALIGN == 0 and p.sectors % disk.ALIGN == 0
    for a, b in zip(layout.partitions, layout.partitions[1:], strict=False):
        assert a.start + a.sectors == b.start
    bios, esp, root, data = layout.partitions
    assert bios.size == MIB and esp.size == 64 * MIB and root.size == 1500 * MIB
    end = data.start + data.sectors
    assert end <= 6 * 1024 * MIB // 512 - disk.GPT_TAIL_SECTORS - 1
    assert 6 * 1024 * MIB // 512 - end < disk.ALIGN + disk.GPT_TAIL_SECTORS + 1
    assert layout == disk.plan_layout(1500 * MIB, 6 * 1024 * MIB, seed="x")  # reproducible GUIDs
    assert layout.disk_uuid != disk.plan_layout(1500 * MIB, 6 * 1024 * MIB, seed="y").disk_uuid


def test_layout_too_small_says_what_to_raise():
    with pytest.raises(disk.DiskError, match="diskSizeGiB to at least 3"):
        disk.plan_layout(root_bytes=2000 * MIB, disk_bytes=2048 * MIB)


def test_sfdisk_accepts_the_layout(tmp_path):
    layout = disk.plan_layout(1024 * MIB, 3 * 1024 * MIB, seed="t")
    image = tmp_path / "d.raw"
    with open(image, "wb") as f:
        f.truncate(layout.disk_bytes)
    subprocess.run(
        ["sfdisk", "--no-reread", "--no-tell-kernel", "-q", str(image)],
        input=layout.sfdisk_script(),
        text=True,
        check=True,
    )
    dump = json.loads(subprocess.run(["sfdisk", "-J", str(image)], capture_output=True, text=True, check=True).stdout)[
        "partitiontable"
    ]
    assert dump["id"] == layout.disk_uuid
    assert [(p["start"], p["size"]) for p in dump["partitions"]] == [(p.start, p.sectors) for p in layout.partitions]


def test_boot_img_patch_keeps_partition_table_and_points_at_core():
    boot = bytes(range(256)) * 2
    mbr = b"\xee" * 512
    out = disk.patch_boot_img(boot, mbr, core_lba=2048)
    assert out[0x1B8:] == mbr[0x1B8:]
    assert struct.unpack_from("<Q", out, 0x5C)[0] == 2048
    assert out[0x66:0x68] == b"\x90\x90"
    assert out[:0x5C] == boot[:0x5C] and out[0x68:0x1B8] == boot[0x68:0x1B8]


def test_core_img_blocklist():
    core = b"\x01" * (512 * 60 + 100)
    out = disk.patch_core_img(core, core_lba=2048)
    assert len(out) == 512 * 61
    assert struct.unpack_from("<QHH", out, 500) == (2049, 60, 0x820)
    assert out[512:] == core[512:].ljust(512 * 60, b"\0")


def test_grub_cfg_uses_the_image_kernel_line():
    cfg = disk.grub_cfg("vmlinuz-6.1.0-1-amd64", "initrd.img-6.1.0-1-amd64", "ro net.ifnames=0")
    assert f"root=LABEL={disk.ROOT_LABEL} ro net.ifnames=0" in cfg


def test_find_kernel_picks_newest(tmp_path):
    (tmp_path / "boot").mkdir()
    for v in ("6.1.0-9-amd64", "6.1.0-10-amd64"):
        (tmp_path / "boot" / f"vmlinuz-{v}").touch()
        (tmp_path / "boot" / f"initrd.img-{v}").touch()
    assert disk.find_kernel(tmp_path) == ("vmlinuz-6.1.0-10-amd64", "initrd.img-6.1.0-10-amd64")


# --- preflight ----------------------------------------------------------------------------


def test_upstream_unreachable_says_what_to_use(tmp_path, monkeypatch):
    def fake_reach(url, timeout=preflight.REACH_TIMEOUT):
        return preflight.Reach(url, "debian" in url, "HTTP 200" if "debian" in url else "Name or service not known")

    monkeypatch.setattr(preflight, "reachable", fake_reach)
    t0 = time.monotonic()
    with pytest.raises(preflight.PreflightError) as err:
        preflight.check_sources(ImageRecipe(), "1.31.4", tmp_path)
    assert time.monotonic() - t0 < 2
    text = str(err.value)
    assert "pkgs.k8s.io/core:/stable:/v1.31" in text
    assert "--kubernetes-source local:DIR" in text and "--kubernetes-source none" in text
    preflight.check_sources(ImageRecipe(kubernetesSource="none"), "1.31.4", tmp_path)  # no error


def test_reachability_check_is_bounded():
    t0 = time.monotonic()
    result = preflight.reachable("http://192.0.2.1/unroutable", timeout=1.0)  # TEST-NET-1
    assert not result.ok and time.monotonic() - t0 < 3


def test_missing_tools_give_the_install_command(monkeypatch):
    monkeypatch.setattr(preflight, "is_debian_like", lambda: True)
    monkeypatch.setattr(preflight.os, "geteuid", lambda: 1000)
    with pytest.raises(preflight.PreflightError, match=r"sudo apt-get install -y --no-install-recommends no-such-pkg"):
        preflight.ensure_host_tools({"no-such-tool-nodekiln": "no-such-pkg"})


def test_host_packages_file_lists_every_needed_package():
    listed = set(preflight.host_packages_file().read_text().split())
    assert set(preflight.BUILD_TOOLS.values()) | set(preflight.BOOT_TOOLS.values()) <= listed


# --- cache --------------------------------------------------------------------------------


def test_cache_hit_when_manifest_and_artifacts_exist(tmp_path):
    site = fake_site(tmp_path, ImageRecipe(kubernetesSource="none"))
    out = tmp_path / "out"
    plan = build.plan_build(site, out)
    assert build.cached(plan) is None
    out.mkdir()
    plan.artifact("qcow2").write_bytes(b"image")
    plan.manifest_path.write_text(json.dumps({"artifacts": [{"format": "qcow2", "size": 5}]}))
    assert build.cached(plan) is None  # manifest and artifact, but no SBOM, provenance, signatures
    from nodekiln.images import provenance, signing

    sbom_path, provenance_path = provenance.beside(out, plan.stem)
    published = [plan.artifact("qcow2"), plan.manifest_path, sbom_path, provenance_path]
    for path in (sbom_path, provenance_path):
        path.write_text("{}")
    for path in published:
        Path(f"{path}{signing.SIG_SUFFIX}").write_text("signature")
    t0 = time.monotonic()
    result = build.build_image(site, out)  # would need root, DIB and the network if not cached
    assert result.cache_hit and result.image == plan.artifact("qcow2")
    assert time.monotonic() - t0 < 2
    Path(f"{provenance_path}{signing.SIG_SUFFIX}").unlink()  # interrupted while signing
    assert build.cached(plan) is None
    Path(f"{provenance_path}{signing.SIG_SUFFIX}").write_text("signature")
    assert build.cached(plan) is not None
    plan.artifact("qcow2").write_bytes(b"truncated")  # size differs: not a complete build
    assert build.cached(plan) is None
    assert plan.stem.startswith("lab-") and len(plan.stem) == 4 + manifest.HASH_CHARS


# --- bake steps and the element -------------------------------------------------------------

STEPS = sorted((IMAGES / "steps").glob("[0-9][0-9]-*.sh"))


def test_steps_are_ordered_documented_and_strict():
    assert len(STEPS) >= 10
    for step in STEPS:
        text = step.read_text()
        assert text.startswith("# Ensure"), f"{step.name}: header comment says what it ensures"
        assert "set -euo pipefail" in text, step.name
        subprocess.run(["bash", "-n", str(step)], check=True)


def test_package_installs_mirrors_the_steps():
    declared: set[str] = set()
    for step in STEPS:
        for line in re.findall(r"^\s*(?:\[.*\] \|\| )?nk_packages (.+)$", step.read_text(), re.M):
            # "$want", $NODEKILN_EXTRA_PACKAGES: chosen by the recipe at bake time, not listable here.
            declared.update(w for w in line.split() if not w.lstrip('"').startswith("$"))
    element = IMAGES / "elements/nodekiln-node/package-installs.yaml"
    import yaml

    listed = set(yaml.safe_load(element.read_text()))
    assert declared == listed


def test_block_device_hook_declares_none():
    hook = IMAGES / "elements/nodekiln-node/block-device.d/10-nodekiln-no-block-device"
    out = subprocess.run(
        ["bash", str(hook)],
        env={"TMP_BUILD_DIR": "/tmp/nodekiln-test-bd", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.strip() == "IMAGE_BLOCK_DEVICE=none"


def test_labels_agree_between_disk_and_steps(tmp_path):
    site = fake_site(tmp_path, ImageRecipe(kubernetesSource="none"))
    dib.write_stage(tmp_path / "stage", site.image, "1.31.4", tmp_path)
    env = (tmp_path / "stage/env").read_text()
    assert f"NODEKILN_ROOT_LABEL={disk.ROOT_LABEL}" in env and f"NODEKILN_DATA_LABEL={disk.DATA_LABEL}" in env
    assert (tmp_path / "stage/run-steps.sh").exists() and (tmp_path / "stage/steps/10-kernel.sh").exists()


# --- seed ISO -----------------------------------------------------------------------------


def test_seed_iso_round_trip(tmp_path):
    files = {
        "user-data": "#cloud-config\nhostname: a\n",
        "meta-data": "instance-id: a\n",
        "network-config": "version: 2\n",
    }
    iso = write_seed_iso(tmp_path / "seed.iso", files)
    assert read_seed_iso(iso) == {k: v.encode() for k, v in files.items()}
    assert b"CIDATA" in iso.read_bytes()[32768:34816].upper()
    with pytest.raises(ValueError):
        write_seed_iso(tmp_path / "bad.iso", {"user-data": "x"})


def test_only_a_complete_tar_is_accepted(tmp_path):
    import tarfile

    src = tmp_path / "f"
    src.write_bytes(b"x" * 5000)
    tar = tmp_path / "root.tar"
    with tarfile.open(tar, "w") as t:
        t.add(src, arcname="f")
    log = tmp_path / "dib.log"
    log.write_text("... Getting value for [image-path]\nState dump not found\n")
    assert dib._failed_only_at_image_path(log, tar)
    cut = tmp_path / "cut.tar"
    cut.write_bytes(tar.read_bytes()[:1536])  # writer killed mid-file
    assert not dib._failed_only_at_image_path(log, cut)
    log.write_text("E: Unable to locate package containerd\n")
    assert not dib._failed_only_at_image_path(log, tar)


def test_hook_times_say_where_a_dib_build_spends_its_time():
    from nodekiln.images.dib import HookTimes

    hooks = HookTimes()
    lines = [
        (0.0, "2026-11-26 03:10:19.125 | dib-run-parts Running /tmp/x/hooks/root.d/08-debootstrap"),
        (1.0, "2026-11-26 03:10:20.000 | some debootstrap output"),
        (28.0, "2026-11-26 03:10:47.163 | dib-run-parts Running /tmp/x/hooks/root.d/09-apt-keyring"),
        (28.5, "dib-run-parts Target: root.d"),
        (30.0, "dib-run-parts Running /tmp/in_target.d/install.d/60-nodekiln-steps"),
        (50.0, "dib-run-parts Target: install.d"),
    ]
    for now, line in lines:
        hooks.feed(line, now)
    assert hooks.slowest(2) == [
        {"name": "root.d/08-debootstrap", "seconds": 28.0},
        {"name": "install.d/60-nodekiln-steps", "seconds": 20.0},
    ]
    assert hooks.hooks["root.d/09-apt-keyring"] == 0.5


def test_bake_steps_resolve_through_the_build_hosts_servers_not_a_loopback_stub(tmp_path):
    from nodekiln.images.dib import build_host_resolver

    stub, upstream = tmp_path / "stub", tmp_path / "upstream"
    stub.write_text("nameserver 127.0.0.53\noptions edns0\n")
    upstream.write_text("nameserver 10.255.255.53\n")
    assert build_host_resolver((stub, upstream)) == "nameserver 10.255.255.53\n"
    assert build_host_resolver((stub,)) == ""
    assert build_host_resolver((tmp_path / "missing", upstream)) == "nameserver 10.255.255.53\n"


FAILED_STEP_LOG = """\
2026-11-26 03:19:21.400 | dib-run-parts Running /tmp/in_target.d/install.d/60-nodekiln-steps
2026-11-26 03:19:21.554 | NODEKILN-STEP-BEGIN 05-early
2026-11-26 03:19:21.600 | NODEKILN-STEP-END 05-early 0.05
2026-11-26 03:19:21.654 | NODEKILN-STEP-BEGIN 10-kernel
2026-11-26 03:19:22.191 | Need to get 26.7 MB of archives.
2026-11-26 03:19:29.195 | Err:1 http://deb.debian.org/debian-security bookworm-security/main amd64 linux-image-cloud-amd64
2026-11-26 03:19:29.195 |   Temporary failure resolving 'deb.debian.org'
2026-11-26 03:19:29.200 | E: Unable to fetch some archives, maybe run apt-get update or try with --fix-missing?
2026-11-26 03:19:29.300 | + diskimage_builder/lib/img-functions:trap_cleanup:33   :   exitval=100
2026-11-26 03:19:29.549 | Unmount /tmp/x/mnt/dev
2026-11-26 03:19:29.781 | INFO diskimage_builder.block_device.blockdevice [-] State already cleaned
"""


def test_a_failed_build_shows_the_failing_steps_lines_not_dibs_cleanup():
    from nodekiln.images.dib import failure_excerpt

    shown = failure_excerpt(FAILED_STEP_LOG)
    assert shown[0] == "bake step 10-kernel failed; its last lines:"
    assert shown[-1].startswith("E: Unable to fetch some archives")
    assert "  Temporary failure resolving 'deb.debian.org'" in shown
    assert not any("Unmount" in line or "trap_cleanup" in line or "State already" in line for line in shown)


def test_a_failed_dib_hook_is_named_when_no_bake_step_was_running():
    from nodekiln.images.dib import failure_excerpt

    log = (
        "t | dib-run-parts Running /tmp/in_target.d/pre-install.d/03-baseline-tools\n"
        "t | dib-run-parts 03-baseline-tools completed\n"
        "t | dib-run-parts Running /tmp/in_target.d/install.d/01-package-installs\n"
        "t | + apt-get install -y foo\n"
        "t | E: Unable to locate package foo\n"
        "t | + diskimage_builder/lib/img-functions:trap_cleanup:33 : exitval=1\n"
    )
    assert failure_excerpt(log) == [
        "diskimage-builder hook install.d/01-package-installs failed; its last lines:",
        "E: Unable to locate package foo",
    ]


def test_each_distribution_defaults_to_its_own_archive():
    assert ImageRecipe().effective_mirror() == ("http://deb.debian.org/debian", "http://deb.debian.org/debian-security")
    ubuntu = ImageRecipe(distribution="ubuntu", release="24.04")
    assert ubuntu.effective_mirror() == ("http://archive.ubuntu.com/ubuntu", "http://security.ubuntu.com/ubuntu")
    assert ImageRecipe(mirror="http://mirror.lab/debian").effective_mirror()[0] == "http://mirror.lab/debian"
    pinned = ImageRecipe(snapshot="20261120T000000Z").effective_mirror()
    assert pinned[0] == "http://snapshot.debian.org/archive/debian/20261120T000000Z"
    assert (
        ImageRecipe(distribution="ubuntu", release="24.04", snapshot="20261120T000000Z").effective_mirror()[0]
        == "https://snapshot.ubuntu.com/ubuntu/20261120T000000Z"
    )


def test_processes_in_the_build_chroot_are_found_and_killed(tmp_path):
    """A real process chrooted into a folder (as diskimage-builder's apt runs) is found by its
    root and killed; processes elsewhere are not touched."""
    import os
    import shutil
    import subprocess
    import time

    from nodekiln.images.build import kill_processes_rooted_under, processes_rooted_under

    if os.geteuid() != 0:
        pytest.fail("chroot needs root: run the unit tests as root (CI does)", pytrace=False)
    root = tmp_path / "chroot"
    for sub in ("bin", "lib", "lib64", "usr"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    sleep = shutil.which("sleep")
    # a static-enough sleeper: copy the binary and the libraries it needs
    libs = subprocess.run(["ldd", sleep], capture_output=True, text=True).stdout.split()
    for path in [sleep, *[p for p in libs if p.startswith("/")]]:
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(os.path.realpath(path), target)
    proc = subprocess.Popen(["chroot", str(root), sleep, "300"], start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while proc.pid not in processes_rooted_under(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert proc.pid in processes_rooted_under(tmp_path)
        assert os.getpid() not in processes_rooted_under(tmp_path)
        kill_processes_rooted_under(tmp_path)
        assert proc.wait(timeout=5) == -9
        assert processes_rooted_under(tmp_path) == []
    finally:
        proc.kill()


# --- reproducible builds ----------------------------------------------------------------------


def test_dib_records_lose_the_builds_work_path(tmp_path):
    records = tmp_path / "etc/dib-manifests"
    records.mkdir(parents=True)
    (records / "dib_arguments").write_text("-x -t tar -o /srv/out/.work-lab-0123456789abcdef-4242/root --no-tmpfs x\n")
    (records / "dib_environment").write_text(
        'declare -x DIB_ARGS="-o /a/b/.work-lab-1-2/root"\ndeclare -x DIB_RELEASE="bookworm"\n'
    )
    (records / "dib_environment").chmod(0o600)
    assert dib.normalise_records(tmp_path) == ["etc/dib-manifests/dib_arguments", "etc/dib-manifests/dib_environment"]
    assert (records / "dib_arguments").read_text() == "-x -t tar -o <work>/root --no-tmpfs x\n"
    assert '"-o <work>/root"' in (records / "dib_environment").read_text()
    assert (records / "dib_environment").stat().st_mode & 0o777 == 0o600
    assert dib.normalise_records(tmp_path) == []  # nothing left to change


def test_snapshot_gives_the_build_epoch_in_the_stage_env(tmp_path):
    recipe = ImageRecipe(snapshot="20261120T000000Z", kubernetesSource="none")
    dib.write_stage(tmp_path / "stage", recipe, "1.31.4", tmp_path)
    assert "NODEKILN_SOURCE_DATE_EPOCH=1795132800\n" in (tmp_path / "stage/env").read_text()
    dib.write_stage(tmp_path / "stage2", ImageRecipe(kubernetesSource="none"), "1.31.4", tmp_path)
    assert "NODEKILN_SOURCE_DATE_EPOCH=''\n" in (tmp_path / "stage2/env").read_text()


def test_mirror_state_and_epoch_read_from_the_tree(tmp_path):
    share = tmp_path / "usr/share/nodekiln"
    share.mkdir(parents=True)
    (share / "mirror-state.txt").write_text(
        f"{'a' * 64} 1796091214 deb.debian.org_debian_dists_bookworm-updates_InRelease\n"
        f"{'b' * 64} 1783764997 deb.debian.org_debian_dists_bookworm_InRelease\n"
    )
    (share / "source-date-epoch").write_text("1796091214\n")
    assert manifest.mirror_state(tmp_path) == [
        {
            "file": "deb.debian.org_debian_dists_bookworm-updates_InRelease",
            "sha256": "a" * 64,
            "date": "2026-12-01T02:13:34+00:00",
        },
        {
            "file": "deb.debian.org_debian_dists_bookworm_InRelease",
            "sha256": "b" * 64,
            "date": "2026-07-11T10:16:37+00:00",
        },
    ]
    assert manifest.source_date_epoch(tmp_path) == 1796091214
    assert manifest.source_date_epoch(tmp_path / "none") is None


def test_the_images_manifest_holds_no_build_times(tmp_path):
    inside = manifest.inside_manifest(
        site="lab",
        hash_hex="ab" * 32,
        input_data={},
        tools={},
        packages={},
        kernel="6.1",
        bake_steps=[{"name": "10", "seconds": 1.5}],
        kubernetes_source="none",
        boot_chain={},
        mirror=[{"file": "x_InRelease", "sha256": "c" * 64, "date": ""}],
        epoch=1,
    )
    in_tree = manifest.for_tree(inside)
    assert "bakeSteps" not in in_tree and in_tree["mirrorState"] and in_tree["sourceDateEpoch"] == 1
    full = manifest.full_manifest(inside, stages=[], artifacts=[], built_at="now", seconds=1)
    assert manifest.agree(in_tree, full) == [] and full["bakeSteps"] == [{"name": "10", "seconds": 1.5}]


def test_iscsi_name_is_made_per_node_not_baked():
    step = (IMAGES / "steps/57-iscsi.sh").read_text()
    assert "rm -f /etc/iscsi/initiatorname.iscsi" in step
    assert "iscsi-iname -p iqn.1993-08.org.debian:01" in step  # as open-iscsi's postinst names it
    assert "ConditionPathExists=!/etc/iscsi/initiatorname.iscsi" in step
    assert "Before=sysinit.target iscsid.socket iscsid.service open-iscsi.service" in step
    finish = (IMAGES / "steps/90-finish.sh").read_text()
    assert "/etc/iscsi/initiatorname.iscsi" in finish


def test_initramfs_is_made_at_the_epoch():
    finish = (IMAGES / "steps/90-finish.sh").read_text()
    # mkinitramfs clamps times and runs cpio --reproducible when SOURCE_DATE_EPOCH is set
    assert finish.index("export SOURCE_DATE_EPOCH") < finish.index("update-initramfs")
    assert finish.index("mirror-state.txt") < finish.index("rm -rf /var/lib/apt/lists/*")
    for state in ("/var/cache/ldconfig/aux-cache", "/var/lib/systemd/random-seed", ": >/etc/machine-id"):
        assert state in finish
