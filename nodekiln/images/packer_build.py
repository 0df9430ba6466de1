"""Build the node image with Packer: `build_image_packer(site, builder, out_dir)`.

Same bake steps, same disk, same manifest as the diskimage-builder backend:
  1. stage directory (dib.write_stage: steps, run-steps.sh, env, local source);
  2. Packer boots the base (packer-qemu: a local disk, KVM or TCG; packer-openstack: the
     cloud's base image), uploads the stage, runs run-steps.sh, downloads the baked tree;
  3. the tree loses what only the build needed (the build key or user, cloud-init's network
     file of the build VM) and is assembled by disk.py: read-only root, /var on the data
     partition, GRUB for BIOS and UEFI — the immutable layout comes from the steps (70-immutable)
     plus the assembly, exactly as for diskimage-builder;
  4. manifest inside and beside, artifacts named by the input hash: same inputs, no rebuild.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from rich.console import Console

from nodekiln.config.recipe import ImageRecipe
from nodekiln.errors import NodekilnError
from nodekiln.images import dib, disk, manifest, packer, preflight
from nodekiln.images.packer_base import build_base_image
from nodekiln.images.pipeline import (
    DEFAULT_OUT,
    BuildResult,
    Plan,
    Stages,
    disk_tail,
    guarded,
    make_plan,
    report_cache_hit,
    resolve_recipe,
    stage_lines,
    start_build,
    tool_versions,
)
from nodekiln.report import Reporter
from nodekiln.run import output, run

if TYPE_CHECKING:
    from nodekiln.config.site import Site

BUILDERS = tuple(packer.SOURCES)
# Host programs of a Packer build: Packer, qemu (packer-qemu), zstd (the tree comes back as
# tar.zst), plus the disk assembly's own (the same as diskimage-builder builds use).
PACKER_TOOLS: dict[str, str] = {
    **{k: v for k, v in preflight.BUILD_TOOLS.items() if k not in ("debootstrap", "kpartx", "sudo")},
    "packer": "packer",
    "zstd": "zstd",
    "qemu-system-x86_64": "qemu-system-x86",
}
PACKAGE_INSTALLS = manifest.IMAGES_DIR / "elements" / dib.ELEMENT / "package-installs.yaml"
STAGE_IN_GUEST = Path("/tmp/nodekiln-stage")  # build.pkr.hcl uploads var.stage_dir into /tmp
BUILD_HOSTNAME = "debian"  # what debian-minimal's tree has in /etc/hostname
BUILD_KEY_COMMENT = "nodekiln-packer-build"
STEP_PREFIX = re.compile(r"^\s*[\w.-]+\.node: ?")


def packer_inputs(
    site: Site, builder: str, base_image: Path | None, recipe: ImageRecipe | None = None
) -> dict[str, Any]:
    """manifest.inputs() (recipe, Kubernetes version, bake steps and Packer templates — all of
    images/ —, local source, assembly code) plus what only a Packer build depends on: the
    builder, its settings, the base image's bytes. Like build.py, the driver code is not hashed."""
    recipe = recipe or site.image
    data = manifest.inputs(recipe, site.kubernetes.version, site.directory)
    settings = recipe.packer.model_dump(mode="json")
    settings.pop("baseImage", None)  # by content below, not by path
    if builder == "packer-qemu":
        settings.pop("openstack", None)
    data["builder"] = builder
    data["packer"] = settings
    if base_image is not None:
        data["baseImage"] = {"sha256": manifest.sha256_file(base_image)}
    return data


def seed_files(user: str, public_key: str) -> dict[str, str]:
    """NoCloud seed of the build VM: the build key for `user` (root: no sudo needed), DHCP by
    cloud-init's fallback network config, the hostname the tree has anyway."""
    if user == "root":
        user_data = f"#cloud-config\nusers: []\ndisable_root: false\nssh_authorized_keys: [{public_key!r}]\n"
    else:
        user_data = (
            "#cloud-config\n"
            "users:\n"
            f"  - name: {user}\n"
            "    sudo: ALL=(ALL) NOPASSWD:ALL\n"
            "    shell: /bin/bash\n"
            f"    ssh_authorized_keys: [{public_key!r}]\n"
        )
    return {
        "user-data": user_data,
        "meta-data": f"instance-id: nodekiln-packer-build\nlocal-hostname: {BUILD_HOSTNAME}\n",
    }


def packer_variables(
    plan: Plan, builder: str, work: Path, base_image: Path | None, key: Path | None, seed: Path | None
) -> dict[str, Any]:
    recipe = plan.recipe
    settings = recipe.packer
    input_hash = plan.input_hash
    variables: dict[str, Any] = {
        "stage_dir": str(work / "nodekiln-stage"),
        "tree_file": str(work / "tree.tar.zst"),
        "manifest_file": str(work / "packer-manifest.json"),
        "kubernetes_version": plan.kubernetes_version,
        "containerd_version": recipe.containerd.version,
        "input_hash": input_hash,
        "image_name": plan.stem,
    }
    if builder == "packer-qemu":
        from nodekiln.images.machine import accelerator

        assert base_image is not None and key is not None and seed is not None
        accel = accelerator()
        variables.update(
            {
                "ssh_username": settings.sshUser,
                "ssh_private_key_file": str(key),
                "base_image": str(base_image.resolve()),
                "base_image_checksum": "sha256:"
                + (plan.inputs.get("baseImage", {}).get("sha256") or manifest.sha256_file(base_image)),
                "output_directory": str(work / "packer-output"),
                "disk_size_mib": _virtual_size(base_image) // disk.MIB,
                "format": "qcow2",
                "accelerator": accel,
                "cpu_model": "host" if accel == "kvm" else "max",
                "cpus": settings.cpus or os.cpu_count() or 2,
                "memory_mib": settings.memoryMiB,
                "seed_iso": str(seed),
                "console_log": str(work / "console.log"),
            }
        )
    else:
        stack = settings.openstack
        assert stack is not None  # checked by build_image_packer
        variables.update(
            {
                "ssh_username": stack.sshUser,
                "openstack_cloud": stack.cloud or "",
                "openstack_source_image": stack.sourceImage,
                "openstack_flavor": stack.flavor,
                "openstack_networks": stack.networks,
                "openstack_floating_ip_network": stack.floatingIpNetwork or "",
                "openstack_security_groups": stack.securityGroups,
            }
        )
    return variables


def _virtual_size(image: Path) -> int:
    info = json.loads(output(["qemu-img", "info", "--output=json", image]))
    return int(info["virtual-size"])


class Progress:
    """Packer's events as a rich status line plus one line per finished bake step."""

    def __init__(self, console: Console, builder: str):
        self.console = console
        self.builder = builder
        self.steps = dib.StepTimes()
        self.status = console.status(f"{builder}: starting Packer")
        self.last_say = ""

    def __enter__(self) -> Progress:
        self.status.__enter__()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.status.__exit__(kind, value, traceback)

    def __call__(self, event: packer.Event) -> None:
        kind = event.ui_kind
        if kind is None:
            return
        for line in event.text.splitlines():
            text = STEP_PREFIX.sub("", line)
            if kind == "say" and text.startswith("==> "):
                self.last_say = STEP_PREFIX.sub("", text[4:])
                self.status.update(f"{self.builder}: {self.last_say}")
                continue
            done = len(self.steps.steps)
            current = self.steps.feed(text)
            if current is not None:
                self.status.update(f"{self.builder}: bake step {current}")
            elif len(self.steps.steps) > done:
                step = self.steps.steps[-1]
                self.console.print(f"  step {step['name']} {step['seconds']} s")
            elif kind == "error":  # Packer files provisioners' stderr (apt's notes) as errors too
                self.console.print(f"[dim]{text}[/dim]", highlight=False)


def _extract(tar_zst: Path, tree: Path, log: Path) -> None:
    if tree.exists():
        shutil.rmtree(tree)
    tree.mkdir(parents=True)
    run(
        [
            "tar",
            "-I",
            "zstd",
            "-C",
            tree,
            "--numeric-owner",
            "--xattrs",
            "--xattrs-include=*",
            "--acls",
            "-xpf",
            tar_zst,
        ],
        log=log,
    )


def remove_build_access(tree: Path, user: str, public_key: str | None) -> list[str]:
    """Take out what only the build needed; return what was removed (for the log).

    root: the build key from root's authorized_keys (/root is /var/root by now); another
    user: the user, its home and cloud-init's sudoers file; always: cloud-init's network files
    for the build VM's NIC (each node gets its own at first boot).
    """
    removed: list[str] = []
    if user == "root":
        keys = tree / "var/root/.ssh/authorized_keys"
        if keys.exists():
            kept = [
                line
                for line in keys.read_text().splitlines()
                if line.strip() and (public_key is None or public_key.split()[1] not in line)
            ]
            if kept:
                keys.write_text("\n".join(kept) + "\n")
            else:
                keys.unlink()
                removed.append("var/root/.ssh/authorized_keys")
                with_ssh = keys.parent
                if not any(with_ssh.iterdir()):
                    with_ssh.rmdir()
    else:
        run(["userdel", "--root", tree.resolve(), "--remove", "--force", user], ok_codes=(0, 6, 12))
        removed.append(f"user {user}")
    for pattern in (
        "etc/sudoers.d/90-cloud-init-users",
        "etc/systemd/network/10-cloud-init-*",
        "etc/netplan/50-cloud-init.yaml",
    ):
        for path in tree.glob(pattern):
            path.unlink()
            removed.append(str(path.relative_to(tree)))
    return removed


def plan_packer_build(
    site: Site,
    builder: str,
    out_dir: Path = DEFAULT_OUT,
    kubernetes_source_override: str | None = None,
    formats: list[str] | tuple[str, ...] | None = None,
    base_image: Path | None = None,
) -> Plan:
    """The build.Plan of a Packer build: same recipe resolution as diskimage-builder's, inputs
    from packer_inputs (so the artifact names differ from the diskimage-builder ones)."""
    if builder not in BUILDERS:
        raise NodekilnError(f"unknown builder {builder!r}: expected one of {', '.join(BUILDERS)}")
    recipe = resolve_recipe(site, kubernetes_source_override, formats)
    recipe = recipe.model_copy(update={"packer": site.image.packer})  # excluded from model_dump
    return make_plan(site, recipe, packer_inputs(site, builder, base_image, recipe), out_dir)


def resolve_base_image(
    site: Site, recipe: ImageRecipe, out_dir: Path, base_image: Path | None, console: Console
) -> Path:
    """packer-qemu's base disk: the argument, else image.packer.baseImage (relative to the
    site), else nodekiln-base built by diskimage-builder (cached under OUT/base/)."""
    if base_image is None and recipe.packer.baseImage:
        named = Path(recipe.packer.baseImage).expanduser()
        base_image = named if named.is_absolute() else site.directory / named
    if base_image is None:
        with console.status("packer-qemu: base image (diskimage-builder, nodekiln-base)"):
            base_image = build_base_image(recipe, out_dir / "base")
    if not base_image.is_file():
        raise NodekilnError(f"base image {base_image} does not exist (image.packer.baseImage)")
    return base_image


def build_image_packer(
    site: Site,
    builder: str = "packer-qemu",
    out_dir: Path = DEFAULT_OUT,
    kubernetes_source_override: str | None = None,
    formats: list[str] | tuple[str, ...] | None = None,
    *,
    report: Reporter | None = None,
    base_image: Path | None = None,
    check_sources: bool = True,
    install_tools: bool = True,
    keep_work: bool = False,
) -> BuildResult:
    """Build `site`'s node image with Packer (`builder`: packer-qemu or packer-openstack) into
    `out_dir` as <site>-<hash>.<format> plus <site>-<hash>.manifest.json, like build_image;
    a cache hit (same inputs, artifacts there) does nothing. `base_image` (packer-qemu)
    overrides image.packer.baseImage; with neither, nodekiln-base is built (once) first.
    """
    started = time.monotonic()
    console = (report or Reporter()).live  # the progress, the step log and the cache-hit line
    if builder not in BUILDERS:
        raise NodekilnError(f"unknown builder {builder!r}: expected one of {', '.join(BUILDERS)}")
    if builder == "packer-openstack" and site.image.packer.openstack is None:
        raise NodekilnError(
            "--builder packer-openstack needs image.packer.openstack in the site "
            "(sourceImage, flavor, networks): the cloud's base image and where to build"
        )
    tools = dict(PACKER_TOOLS)
    if builder == "packer-qemu" and not (base_image or site.image.packer.baseImage):
        tools.update(preflight.BUILD_TOOLS)  # nodekiln-base is built with diskimage-builder
    preflight.ensure_host_tools(tools, install=install_tools)
    version = packer.packer_version()
    stages = Stages()
    if builder == "packer-qemu":
        # Timed before the plan exists: the base image's bytes are part of the input hash.
        with stages("base image"):
            base_image = resolve_base_image(site, site.image, Path(out_dir), base_image, console)
    plan = plan_packer_build(site, builder, out_dir, kubernetes_source_override, formats, base_image)
    hit = report_cache_hit(plan, started, console)
    if hit is not None:
        return hit
    if check_sources:
        preflight.check_sources(plan.recipe, plan.kubernetes_version, plan.site_dir)

    work = start_build(plan)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    if keep_work:
        return _build(plan, builder, version, work, base_image, console, started, stages)
    with guarded(work, plan):
        return _build(plan, builder, version, work, base_image, console, started, stages)


def _build(
    plan: Plan,
    builder: str,
    version: packer.PackerVersion,
    work: Path,
    base_image: Path | None,
    console: Console,
    started: float,
    stages: Stages,
) -> BuildResult:
    recipe = plan.recipe
    log = plan.log

    with stages("stage bake steps, seed, templates"):
        dib.write_stage(
            work / "nodekiln-stage", recipe, plan.kubernetes_version, plan.site_dir, in_target=STAGE_IN_GUEST
        )
        # What diskimage-builder installs in one transaction before the steps (build.pkr.hcl too).
        shutil.copy2(PACKAGE_INSTALLS, work / "nodekiln-stage" / PACKAGE_INSTALLS.name)
        key = seed = None
        public_key = None
        if builder == "packer-qemu":
            from nodekiln.images.machine import generate_ssh_key
            from nodekiln.images.seed import write_seed_iso

            key, public_key = generate_ssh_key(work)
            public_key = public_key.rsplit(" ", 1)[0] + f" {BUILD_KEY_COMMENT}"  # recognisable if ever left
            seed = write_seed_iso(work / "seed.iso", seed_files(recipe.packer.sshUser, public_key))
        variables = packer_variables(plan, builder, work, base_image, key, seed)
        var_file = work / "variables.json"
        var_file.write_text(json.dumps(variables, indent=2) + "\n")
        templates = packer.template_dir(work, version, log)

    with stages(f"packer build ({builder}: boot, bake steps, export tree)"), Progress(console, builder) as progress:
        try:
            packer.build(templates, var_file, packer.SOURCES[builder], log, on_event=progress)
        finally:  # the build VM's serial console: where a base that does not boot shows why
            if (work / "console.log").exists():
                shutil.copy2(work / "console.log", log.with_name(f"{plan.stem}.console.log"))
    built = [a for a in packer.read_manifest(Path(variables["manifest_file"])) if a.name == "node"]
    if not built:
        raise packer.PackerError(f"Packer's manifest {variables['manifest_file']} records no build of source 'node'")
    if builder == "packer-openstack":
        _delete_snapshot(variables.get("openstack_cloud") or None, built[-1].artifact_id, console)
    tree_file = Path(built[-1].custom_data.get("tree") or variables["tree_file"])
    if not tree_file.is_file():
        raise packer.PackerError(f"Packer finished but the baked tree {tree_file} was not downloaded")
    shutil.rmtree(work / "packer-output", ignore_errors=True)  # Packer's own disk: not the image

    with stages("unpack root tree"):
        tree = work / "tree"
        _extract(tree_file, tree, log)
        tree_file.unlink()
        user = _build_user(recipe, builder)
        with open(log, "a") as f:
            for item in remove_build_access(tree, user, public_key):
                f.write(f"nodekiln: removed {item} (build access only)\n")

    def tools() -> dict[str, str]:
        return {
            **tool_versions(),
            "packer": str(version),
            "builder": builder,
            "qemu-system": output(["qemu-system-x86_64", "--version"]).splitlines()[0],
            "baseImage": base_image.name if base_image is not None else "openstack:" + _openstack_source(recipe),
        }

    result = disk_tail(plan, tree, work, stages, tools=tools, bake_steps=progress.steps.steps, started=started)
    console.print(f"{builder}: built {', '.join(p.name for p in result.artifacts.values())} in {result.seconds:.0f} s")
    for line in stage_lines(result.stages):
        console.print(line)
    return result


def _build_user(recipe: ImageRecipe, builder: str) -> str:
    """The user Packer logged in as: what remove_build_access takes out again."""
    if builder == "packer-qemu":
        return recipe.packer.sshUser
    if recipe.packer.openstack is None:  # build_image_packer refuses this before any work
        raise NodekilnError("--builder packer-openstack needs image.packer.openstack in the site")
    return recipe.packer.openstack.sshUser


def _openstack_source(recipe: ImageRecipe) -> str:
    return recipe.packer.openstack.sourceImage if recipe.packer.openstack else ""


def _delete_snapshot(cloud: str | None, image_id: str, console: Console) -> None:
    """Packer 1.6.6 always snapshots the OpenStack build server; that snapshot is not the node
    image (the node image is assembled from the tree), so delete it."""
    if not image_id:
        return
    try:
        import openstack

        conn = openstack.connect(cloud=cloud) if cloud else openstack.connect()
        conn.image.delete_image(image_id.split(":")[-1], ignore_missing=True)
    except Exception as exc:  # the build itself succeeded: say what is left behind
        console.print(f"[yellow]note: could not delete Packer's snapshot image {image_id}: {exc}[/yellow]")
