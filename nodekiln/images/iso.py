"""The appliance ISO: the node image's root tree, live from a hybrid ISO, state on a local disk.

Made from files only (no loop devices, mounts or vfat on the build host):

  root tree ──mksquashfs──► nodekiln/root.squashfs  (zstd, read-only root at run time)
  tree's kernel + initramfs + a small appended cpio (boot=nodekiln script, squashfs module)
  GRUB: i386-pc-eltorito image (BIOS, CD and USB through boot_hybrid.img); for UEFI a FAT image
        (mkfs.vfat -C + mcopy) with shim and the distribution's signed CD GRUB (or, secureBoot:
        off, our own), both finding the ISO by volume label
  every node's NoCloud seed (nodekiln/nodes/<node>/...), nodes.map (MAC -> node), manifest
  ──xorriso -as mkisofs──► <site>-<hash>.iso   (El Torito BIOS + EFI, isohybrid MBR)

At boot the initramfs script images/iso/nodekiln mounts the squashfs as /, prepares the data
disk (first boot only, blank disks only unless the site allows wiping) and puts the chosen
node's seed on it; the disk image's own init-bottom script mounts it on /var with the /etc
overlay. See README "Appliance ISO".
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nodekiln import templates
from nodekiln.config.appliance import Appliance
from nodekiln.config.recipe import SecureBoot
from nodekiln.errors import NodekilnError
from nodekiln.images import bootchain, disk, provenance, verify
from nodekiln.images import manifest as mf
from nodekiln.images.pipeline import (
    AnnounceStages,
    Stage,
    Stages,
    complete_manifest,
    kubernetes_source_report,
    write_inside_manifest,
    write_manifest,
)
from nodekiln.report import Reporter
from nodekiln.run import output, run

if TYPE_CHECKING:
    from nodekiln.config.recipe import ImageRecipe
    from nodekiln.config.site import Site
    from nodekiln.secrets import Secrets

SCHEMA = "nodekiln/iso-manifest/v1"
ASSETS = mf.IMAGES_DIR / "iso"
BOOT_SCRIPT = "nodekiln"  # initramfs-tools sources /scripts/$BOOT: kernel argument boot=nodekiln
BOOT_LIB = "nodekiln-lib"
SQUASHFS = "nodekiln/root.squashfs"
ISO_KERNEL = "generic"  # the partner's hardware needs every driver, whatever the recipe's VM kernel
SQUASHFS_ARGS = ["-comp", "zstd", "-Xcompression-level", "6", "-b", "256K"]
# Directories systemd needs in / before it mounts anything; their content is never packed.
API_DIRS = {"proc": 0o555, "sys": 0o555, "dev": 0o755, "run": 0o755, "tmp": 0o1777}
GRUB_ISO_MODULES = ["iso9660", *disk.GRUB_COMMON_MODULES]
BOOT_HYBRID = disk.GRUB_LIB / "i386-pc/boot_hybrid.img"
# Fixed volume date: GRUB and blkid find the ISO by label, and a fixed date keeps ISOs of the
# same inputs byte-comparable.
ISO_DATE = "2000010100000000"
ISO_EPOCH = 946684800  # ISO_DATE in seconds: the date of the EFI image's entries
# The code whose changes change the ISO's bytes (besides the root tree).
ISO_CODE = [Path(__file__), Path(disk.__file__)]


class IsoError(NodekilnError):
    """The appliance ISO cannot be made."""


# ---------------------------------------------------------------------------------------------
# Pieces (pure functions: unit-tested)


def volume_id(hash_hex: str) -> str:
    """ISO volume label: unique per build so GRUB and the initramfs find *this* medium."""
    return f"NODEKILN_{hash_hex[:12].upper()}"


def kernel_cmdline(tree: Path, volume: str) -> str:
    cmdline_file = tree / "usr/share/nodekiln/kernel-cmdline"
    base = cmdline_file.read_text().strip() if cmdline_file.exists() else "ro"
    # systemd-remount-fs would remount / by the image's fstab line (LABEL=nodekiln-root, ext4),
    # which names the disk image's root partition: on the ISO the squashfs root is read-only
    # as mounted, so nothing needs remounting.
    return f"boot=nodekiln nodekiln.iso={volume} {base} systemd.mask=systemd-remount-fs.service"


def early_cfg(volume: str) -> str:
    """Config built into both GRUB images: find the ISO by its label, load its grub.cfg."""
    return templates.render("images", "grub/early.cfg.j2", label=volume)


@dataclass(frozen=True)
class MenuNode:
    name: str
    role: str
    address: str
    mac: str | None


def grub_cfg(site_name: str, nodes: list[MenuNode], cmdline: str, timeout: int) -> str:
    """Boot menu: the automatic entry first (node by the data disk, else MAC, else a seed), then
    one entry per node for machines whose MAC the site does not list."""
    return templates.render(
        "images", "iso/grub.cfg.j2", site_name=site_name, nodes=nodes, cmdline=cmdline, timeout=timeout
    )


def nodes_map(nodes: list[MenuNode]) -> str:
    """`MAC NODE` lines for the initramfs (nodes without a MAC are chosen in the menu)."""
    return "".join(f"{n.mac.lower()} {n.name}\n" for n in nodes if n.mac)


def appliance_conf(site_name: str, appliance: Appliance, iso_id: str) -> str:
    """Shell variables the initramfs script sources from the medium (validated values only)."""
    dd = appliance.dataDisk
    return (
        "# nodekiln appliance settings (from the site file's appliance section)\n"
        f"NK_SITE='{site_name}'\n"
        f"NK_DATA_DISK='{dd.device}'\n"
        f"NK_WIPE_FOREIGN={'true' if dd.wipeForeign else 'false'}\n"
        f"NK_DATA_LABEL='{disk.DATA_LABEL}'\n"
        f"NK_ISO_ID='{iso_id}'\n"
    )


def xorriso_args(staging: Path, out: Path, volume: str) -> list[str]:
    """A hybrid ISO: El Torito BIOS (GRUB eltorito image) and EFI (a FAT image), plus an MBR
    (GRUB's boot_hybrid.img) and a partition table so that `dd` to a USB stick boots too."""
    return [
        "xorriso",
        "-as",
        "mkisofs",
        "-iso-level",
        "3",
        "-full-iso9660-filenames",
        "-r",
        "-V",
        volume,
        f"--modification-date={ISO_DATE}",
        # BIOS: El Torito no-emulation image; GRUB's hybrid MBR for USB sticks
        "-b",
        "boot/grub/eltorito.img",
        "-no-emul-boot",
        "-boot-load-size",
        "4",
        "-boot-info-table",
        "--grub2-boot-info",
        "--grub2-mbr",
        str(BOOT_HYBRID),
        # UEFI: the EFI system partition image, as El Torito alternative and as a partition
        "--efi-boot",
        "boot/grub/efi.img",
        "-efi-boot-part",
        "--efi-boot-image",
        "--protective-msdos-label",
        "-o",
        str(out),
        str(staging),
    ]


def cpio_newc(entries: list[tuple[str, int, bytes | None]]) -> bytes:
    """An uncompressed `newc` cpio archive of (path, mode, data) — data None for a directory.

    Appended to the tree's initramfs: the kernel unpacks concatenated archives in order.
    """
    out = bytearray()

    def pad() -> None:
        out.extend(b"\0" * (-len(out) % 4))

    def member(name: str, mode: int, data: bytes, ino: int) -> None:
        encoded = name.encode() + b"\0"
        fields = [ino, mode, 0, 0, 2 if mode & 0o040000 else 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0]
        out.extend(b"070701" + b"".join(b"%08X" % f for f in fields))
        out.extend(encoded)
        pad()
        out.extend(data)
        pad()

    for ino, (path, mode, data) in enumerate(entries, start=1):
        if data is None:
            member(path, 0o040000 | mode, b"", ino)
        else:
            member(path, 0o100000 | mode, data, ino)
    member("TRAILER!!!", 0, b"", 0)
    return bytes(out)


def initrd_overlay(tree: Path, kernel_version: str) -> bytes:
    """The cpio appended to the tree's initramfs: the boot script and the squashfs module."""
    squashfs_ko = tree / f"lib/modules/{kernel_version}/kernel/fs/squashfs/squashfs.ko"
    entries: list[tuple[str, int, bytes | None]] = [
        ("scripts", 0o755, None),
        (f"scripts/{BOOT_SCRIPT}", 0o755, (ASSETS / BOOT_SCRIPT).read_bytes()),
        (f"scripts/{BOOT_LIB}", 0o644, (ASSETS / BOOT_LIB).read_bytes()),
    ]
    if squashfs_ko.exists():
        entries += [
            ("usr", 0o755, None),
            ("usr/lib", 0o755, None),
            ("usr/lib/nodekiln", 0o755, None),
            ("usr/lib/nodekiln/modules", 0o755, None),
            ("usr/lib/nodekiln/modules/squashfs.ko", 0o644, squashfs_ko.read_bytes()),
        ]
    elif not (tree / f"lib/modules/{kernel_version}/kernel/fs/squashfs").exists():
        # Built into the kernel (CONFIG_SQUASHFS=y) or missing altogether.
        config = tree / f"boot/config-{kernel_version}"
        if config.exists() and "CONFIG_SQUASHFS=y" not in config.read_text(errors="replace"):
            raise IsoError(f"kernel {kernel_version} has no squashfs module: the ISO cannot mount its root")
    return cpio_newc(entries)


def combined_initrd(initrd: bytes, overlay: bytes) -> bytes:
    """The tree's initramfs, zero-padded to 4 bytes, then the overlay archive."""
    return initrd + b"\0" * (-len(initrd) % 4) + overlay


# ---------------------------------------------------------------------------------------------
# Assembly (files only)


def squashfs_api_dirs(tree: Path) -> list[str]:
    """mksquashfs arguments: the API dirs the tree has are packed empty, missing ones are added
    (pseudo definitions; an exclusion pattern would drop those too)."""
    present = [name for name in API_DIRS if (tree / name).is_dir()]
    pseudo = [a for name, mode in API_DIRS.items() if name not in present for a in ("-p", f"{name} d {mode:o} 0 0")]
    excludes = ["-wildcards", "-e", *[f"{name}/*" for name in present]] if present else []
    return pseudo + excludes


def make_squashfs(tree: Path, target: Path, log: Path | None) -> None:
    """The read-only root: all of the tree (its /var seeds the data disk), API dirs empty.
    With the build's epoch (the tree's) mksquashfs makes the file system at it and clamps file
    times to it (its SOURCE_DATE_EPOCH); its output is reproducible whatever -processors."""
    target.unlink(missing_ok=True)
    argv: list[str | os.PathLike[str]] = [
        "mksquashfs",
        tree,
        target,
        "-noappend",
        *SQUASHFS_ARGS,
        "-no-progress",
        "-quiet",
        "-processors",
        str(os.cpu_count() or 2),
        *squashfs_api_dirs(tree),
    ]
    run(argv, log=log, env=disk.reproducible_env(mf.source_date_epoch(tree)))


def make_efi_image(files: Mapping[str, bytes], target: Path, log: Path | None) -> None:
    """The El Torito EFI image (also the USB stick's ESP): a FAT image just big enough, its
    entries dated ISO_DATE like the ISO's own (reproducible)."""
    kib = max(1024, -(-sum(len(d) for d in files.values()) // 1024) + 512)
    disk.write_fat(target, files, "NK-EFI", "4E4B4546", -(-kib // 64) * 64, log, ISO_EPOCH)


def efi_boot_files(
    tree: Path, kernel: str, secure_boot: SecureBoot, volume: str, grub_efi: Path | None
) -> dict[str, bytes]:
    """The EFI image's files: shim and the distribution's signed CD GRUB, whose built-in prefix
    (/boot/grub, read from the binary) gets our configuration that finds the ISO by label; or,
    with secureBoot: off, our own GRUB."""
    if secure_boot == "off":
        if grub_efi is None:
            raise IsoError("secureBoot: off needs the self-built GRUB EFI image")
        return {bootchain.FIRST_STAGE: grub_efi.read_bytes()}
    chain = bootchain.signed_chain(tree, kernel, bootchain.CD_GRUB)
    bootchain.check(chain)
    return bootchain.esp_files(chain, early_cfg(volume))


def make_grub_images(work: Path, volume: str, log: Path | None, uefi: bool = True) -> tuple[Path, Path | None]:
    """GRUB for BIOS (i386-pc-eltorito) and, unless the signed chain replaces it, UEFI
    (x86_64-efi), each finding the ISO by label."""
    early = work / "grub-early.cfg"
    early.write_text(early_cfg(volume))
    eltorito = work / "eltorito.img"
    efi = work / "BOOTX64.EFI"
    run(
        [
            "grub-mkimage",
            "-O",
            "i386-pc-eltorito",
            "-d",
            disk.GRUB_LIB / "i386-pc",
            "-o",
            eltorito,
            "-c",
            early,
            "-p",
            "/boot/grub",
            "biosdisk",
            *GRUB_ISO_MODULES,
        ],
        log=log,
    )
    if not uefi:
        return eltorito, None
    run(
        [
            "grub-mkimage",
            "-O",
            "x86_64-efi",
            "-d",
            disk.GRUB_LIB / "x86_64-efi",
            "-o",
            efi,
            "-c",
            early,
            "-p",
            "/boot/grub",
            "efi_gop",
            "efi_uga",
            "all_video",
            *GRUB_ISO_MODULES,
        ],
        log=log,
    )
    return eltorito, efi


@dataclass
class IsoContent:
    """What goes on the ISO besides the root tree."""

    site_name: str
    nodes: list[MenuNode]
    seeds: Mapping[str, Mapping[str, bytes]]  # node -> NoCloud file -> bytes
    appliance: Appliance
    hash_hex: str
    inside_manifest: dict[str, Any] = field(default_factory=dict)
    secure_boot: SecureBoot = "supported"


def assemble_iso(
    tree: Path,
    target: Path,
    content: IsoContent,
    work: Path,
    log: Path | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> list[Stage]:
    """Make the ISO `target` from `tree` (left unchanged); returns the stage timings."""
    stage = Stages(digits=2, display=AnnounceStages(on_stage))

    kernel, initrd = disk.find_kernel(tree)
    version = kernel[len("vmlinuz-") :]
    volume = volume_id(content.hash_hex)
    epoch = mf.source_date_epoch(tree)  # the build's (images/steps/90-finish.sh), if any
    staging = work / "iso"
    if staging.exists():
        shutil.rmtree(staging)
    for sub in ("boot/grub", "nodekiln/nodes"):
        (staging / sub).mkdir(parents=True)

    with stage("squashfs"):
        make_squashfs(tree, staging / SQUASHFS, log)

    with stage("boot"):
        _stage_boot(tree, staging, content, kernel, initrd, version, volume, work, log)

    with stage("xorriso"):
        partial = target.with_name(f".{target.name}.partial")
        partial.unlink(missing_ok=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        # Rock Ridge records each file's times: the staged files' are clamped to the epoch, and
        # xorriso's SOURCE_DATE_EPOCH sets its other dates (--modification-date stays ISO_DATE).
        if epoch is not None:
            disk.clamp_times(staging, epoch)
        run(xorriso_args(staging, partial, volume), log=log, env=disk.reproducible_env(epoch))
        partial.chmod(0o600)  # control-plane seeds carry the cluster's CA keys
        partial.replace(target)
    shutil.rmtree(staging)
    return stage.records


def _stage_boot(
    tree: Path,
    staging: Path,
    content: IsoContent,
    kernel: str,
    initrd: str,
    version: str,
    volume: str,
    work: Path,
    log: Path | None,
) -> None:
    """Everything on the medium but the squashfs: kernel, initramfs, GRUB, seeds, settings."""
    shutil.copyfile(tree / "boot" / kernel, staging / "boot/vmlinuz")
    (staging / "boot/initrd.img").write_bytes(
        combined_initrd((tree / "boot" / initrd).read_bytes(), initrd_overlay(tree, version))
    )
    eltorito, grub_efi = make_grub_images(work, volume, log, uefi=content.secure_boot == "off")
    shutil.copyfile(eltorito, staging / "boot/grub/eltorito.img")
    make_efi_image(
        efi_boot_files(tree, kernel, content.secure_boot, volume, grub_efi), staging / "boot/grub/efi.img", log
    )
    # The signed CD GRUB's built-in configuration looks for this file when its prefix is not on
    # the device it was started from (grub-efi-amd64-signed's memdisk grub.cfg).
    (staging / ".disk").mkdir(exist_ok=True)
    (staging / ".disk/info").write_text(f"nodekiln {content.site_name} {content.hash_hex[:16]}\n")
    cmdline = kernel_cmdline(tree, volume)
    (staging / "boot/grub/grub.cfg").write_text(
        grub_cfg(content.site_name, content.nodes, cmdline, content.appliance.menuTimeout)
    )
    for name, files in content.seeds.items():
        node_dir = staging / "nodekiln/nodes" / name
        node_dir.mkdir()
        for file, data in files.items():
            (node_dir / file).write_bytes(data)
    (staging / "nodekiln/nodes.map").write_text(nodes_map(content.nodes))
    (staging / "nodekiln/appliance.conf").write_text(
        appliance_conf(content.site_name, content.appliance, content.hash_hex[:16])
    )
    (staging / "nodekiln/manifest.json").write_text(mf.dumps(content.inside_manifest))
    (staging / "README.txt").write_text(medium_readme(content))


def medium_readme(content: IsoContent) -> str:
    names = ", ".join(n.name for n in content.nodes)
    return (
        f"nodekiln appliance ISO of site {content.site_name} (inputs {content.hash_hex[:16]})\n\n"
        "Boot a machine from this medium (DVD or USB stick written with dd) and keep it attached:\n"
        "the system runs from it read-only and keeps its state on the machine's first local disk\n"
        f"({content.appliance.dataDisk.device}). Nodes on this ISO: {names}.\n"
        "A machine whose MAC address the site lists becomes that node by itself; otherwise choose\n"
        "its node in the boot menu on the first boot. The data disk remembers the node afterwards.\n"
        "This medium holds the cluster's credentials: keep it like a key.\n"
    )


# ---------------------------------------------------------------------------------------------
# Inputs, cache, manifest


def iso_code_digests() -> dict[str, str]:
    out = {f"images/iso/{k}": v for k, v in mf.tree_digests(ASSETS).items()}
    # the GRUB config built into the ISO's boot images is the disk's template (images/grub/)
    out.update({f"images/grub/{k}": v for k, v in mf.tree_digests(mf.IMAGES_DIR / "grub").items()})
    for code in ISO_CODE:
        out[f"nodekiln/images/{code.name}"] = mf.sha256_file(code)
    return dict(sorted(out.items()))


def seed_digests(seeds: Mapping[str, Mapping[str, bytes]]) -> dict[str, dict[str, str]]:
    import hashlib

    return {
        node: {f: hashlib.sha256(d).hexdigest() for f, d in sorted(files.items())}
        for node, files in sorted(seeds.items())
    }


def iso_inputs(
    *,
    site_name: str,
    image_inputs: dict[str, Any],
    seeds: Mapping[str, Mapping[str, bytes]],
    nodes: list[MenuNode],
    appliance: Appliance,
) -> dict[str, Any]:
    """Everything the ISO's input hash covers: the root tree's inputs (the image's), the ISO
    code, every node's seed (by digest: the seeds hold secrets), the menu and the appliance."""
    return {
        "kind": "appliance-iso",
        "site": site_name,
        "image": image_inputs,
        "imageInputHash": mf.input_hash(image_inputs),
        "isoCode": iso_code_digests(),
        "squashfs": SQUASHFS_ARGS,
        "seeds": seed_digests(seeds),
        "nodes": [n.__dict__ for n in nodes],
        "appliance": appliance.model_dump(mode="json"),
    }


def tree_identity(tree: Path) -> dict[str, str]:
    """What identifies a root tree given on the command line: a tar by its sha256; a directory
    by its image manifest, package list, kernels and Kubernetes source report (cheap, and
    every bake-step change shows in one of them)."""
    if not tree.is_dir():
        return {"tar": mf.sha256_file(tree)}
    out: dict[str, str] = {}
    for rel in (
        mf.IMAGE_MANIFEST_PATH,
        "var/lib/dpkg/status",
        "usr/share/nodekiln/kubernetes-source.txt",
        "usr/share/nodekiln/kernel-cmdline",
        "etc/fstab",
    ):
        path = tree / rel
        out[rel] = mf.sha256_file(path) if path.is_file() else "absent"
    out["boot"] = ",".join(sorted(p.name for p in (tree / "boot").glob("*") if p.is_file()))
    images = tree / "usr/share/nodekiln/images"
    if images.is_dir():
        out["images"] = ",".join(f"{p.name}:{p.stat().st_size}" for p in sorted(images.iterdir()))
    return out


def tool_versions() -> dict[str, str]:
    def first(argv: list[str]) -> str:
        try:
            return output(argv, check=False).splitlines()[0].strip()
        except (NodekilnError, IndexError):
            return "unknown"

    return {
        "xorriso": first(["xorriso", "-version"]),
        "mksquashfs": first(["mksquashfs", "-version"]),
        "grub-mkimage": first(["grub-mkimage", "--version"]),
    }


def tree_facts(tree: Path) -> dict[str, Any]:
    """What the ISO carries for an offline first boot, as recorded in the manifest."""
    images = tree / "usr/share/nodekiln/images"
    kernel, _ = disk.find_kernel(tree)
    return {
        "kernel": kernel[len("vmlinuz-") :],
        "kubernetesSourceReport": kubernetes_source_report(tree),
        "preloadedImages": sorted(p.name for p in images.iterdir()) if images.is_dir() else [],
        "packages": mf.installed_packages(tree),
    }


@dataclass(frozen=True)
class IsoResult:
    path: Path
    manifest: Path
    input_hash: str
    cached: bool
    seconds: float


def artifact_names(out_dir: Path, site_name: str, hash_hex: str) -> tuple[Path, Path]:
    base = f"{site_name}-{mf.short(hash_hex)}"
    return out_dir / f"{base}.iso", out_dir / f"{base}.iso.manifest.json"


def cached(iso: Path, manifest_path: Path) -> bool:
    """A previous build of the same inputs is complete: the ISO and its manifest agree on size,
    and its SBOM, provenance and signatures are all there."""
    return complete_manifest(manifest_path, {iso.name: iso}, key="file") is not None and provenance.published(
        iso.parent, iso.name, [iso, manifest_path]
    )


def menu_nodes(site: Site) -> list[MenuNode]:
    return [MenuNode(n.name, n.role, str(n.address), n.mac) for n in site.machines]


def build_iso(
    site: Site,
    secrets: Secrets,
    out_dir: Path,
    *,
    kubernetes_source: str | None = None,
    tree: Path | None = None,
    work_dir: Path | None = None,
    report: Reporter | None = None,
) -> IsoResult:
    """The site's appliance ISO in `out_dir`, named by its input hash; built only when missing.

    `tree`: an existing root tree (a directory, or the tar diskimage-builder writes) made
    from the same recipe; without it the tree is built with diskimage-builder (cached by the
    image's input hash under `out_dir/trees`).
    """
    from nodekiln.bootstrap.render import render_site
    from nodekiln.images.build import plan_build

    started = time.monotonic()
    say = (report or Reporter.quiet()).say

    def on_stage(name: str) -> None:
        say(f"[dim]… {name}[/]")

    # The disk image's recipe and inputs, with the generic kernel: the ISO boots on hardware.
    plan = plan_build(site, out_dir, kubernetes_source, kernel=ISO_KERNEL)
    recipe = plan.recipe
    image_inputs = plan.inputs
    seeds = {name: node.files() for name, node in render_site(site, secrets).items()}
    nodes = menu_nodes(site)
    appliance: Appliance = site.appliance
    inputs = iso_inputs(site_name=site.name, image_inputs=image_inputs, seeds=seeds, nodes=nodes, appliance=appliance)
    if tree is not None and tree.exists():
        # A tree from elsewhere: its own content decides the ISO too, not only the recipe.
        inputs["givenTree"] = tree_identity(tree)
        verify.given_tree(site.directory, site.name, tree)  # a signed tree must verify before it is used
    hash_hex = mf.input_hash(inputs)
    iso, manifest_path = artifact_names(out_dir, site.name, hash_hex)
    if cached(iso, manifest_path):
        return IsoResult(iso, manifest_path, hash_hex, True, time.monotonic() - started)

    work = work_dir or out_dir / "work" / mf.short(hash_hex)
    work.mkdir(parents=True, exist_ok=True)
    log = work / "build.log"
    stages = Stages(digits=2)  # the tree's own stages are announced by root_tree
    with stages("tree"):
        root = root_tree(recipe, site, image_inputs, out_dir, work, log, tree, on_stage)
    facts = tree_facts(root)
    inside = {
        "schema": SCHEMA,
        "site": site.name,
        "inputHash": hash_hex,
        "inputs": inputs,
        "imageInputHash": inputs["imageInputHash"],
        "kubernetesSource": recipe.kubernetesSource,
        "tools": tool_versions(),
        **facts,
        "bootChain": bootchain.record(
            root, f"vmlinuz-{facts['kernel']}", recipe.secureBoot, facts["packages"], bootchain.CD_GRUB
        ),
    }
    content = IsoContent(site.name, nodes, seeds, appliance, hash_hex, inside, recipe.secureBoot)
    stages.extend(assemble_iso(root, iso, content, work, log, on_stage))
    seconds = time.monotonic() - started
    write_manifest(
        manifest_path,
        inside,
        stages=stages.records,
        artifacts=[mf.artifact_entry(iso, "iso")],
        seconds=seconds,
        built_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    provenance.publish_iso(site.directory, site.name, iso, manifest_path, root, seconds)  # SBOM, provenance, .sig
    # Keep only the log: the extracted tree, the bake-step stage and DIB's scratch go.
    for scratch in ("tree", "stage", "dib"):
        if (work / scratch) != tree:
            shutil.rmtree(work / scratch, ignore_errors=True)
    return IsoResult(iso, manifest_path, hash_hex, False, seconds)


def root_tree(
    recipe: ImageRecipe,
    site: Site,
    image_inputs: dict[str, Any],
    out_dir: Path,
    work: Path,
    log: Path,
    given: Path | None,
    on_stage: Callable[[str], None] | None,
) -> Path:
    """A directory holding the root tree: `given` (directory or tar), else diskimage-builder's."""
    if given is not None and given.is_dir():
        disk.find_kernel(given)  # fails early with a clear message when it is not a root tree
        return given
    tar = given
    if tar is None:
        tar = out_dir / "trees" / f"{mf.short(mf.input_hash(image_inputs))}.tar"
        if not tar.exists():
            from nodekiln.images import dib

            on_stage and on_stage("diskimage-builder")
            stage_dir = work / "stage"
            dib.write_stage(stage_dir, recipe, site.kubernetes.version, site.directory)
            built = dib.build_tree(recipe, stage_dir, work / "dib", log)
            tar.parent.mkdir(parents=True, exist_ok=True)
            built.replace(tar)
    elif not tar.exists():
        raise IsoError(f"root tree {tar} does not exist")
    on_stage and on_stage("extract")
    tree = work / "tree"
    from nodekiln.images.dib import extract_tree

    extract_tree(tar, tree)
    # The image manifest inside the root, as the disk image carries it.
    write_inside_manifest(
        tree,
        site=site.name,
        input_hash=mf.input_hash(image_inputs),
        inputs=image_inputs,
        tools={},
        bake_steps=[],
        secure_boot=recipe.secureBoot,
    )
    return tree


def read_iso_file(iso: Path, path: str) -> bytes:
    """A file of the ISO by its Rock Ridge path (tests and `inspect`)."""
    import io

    import pycdlib

    handle = pycdlib.PyCdlib()
    handle.open(str(iso))
    try:
        buf = io.BytesIO()
        handle.get_file_from_iso_fp(buf, rr_path=path)
        return buf.getvalue()
    finally:
        handle.close()
