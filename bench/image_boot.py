"""Figures for `invoke bench`: how long an image build and a first boot take, how big it is.

Each function returns a `Figure` (its `detail` says what the number includes).
Goals are the issue's, for a 2-core build host with the Debian mirror, and TCG (no KVM).
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.figures import Figure
from nodekiln.images.build import BuildResult, SiteLike, build_image
from testing import qemu

GOALS = {
    "image_cold_build_s": 300,
    "image_cache_hit_s": 2,
    "image_qcow2_mb": 300,
    "boot_to_cloudinit_s": 90,
    # the same boot with Secure Boot enforcing: at most 15 s over the plain boot's goal for SMM
    # emulation and shim's and GRUB's signature checks
    "boot_secureboot_s": 105,
}


def _figure(name: str, value: float, unit: str, detail: str) -> Figure:
    return Figure(name, round(value, 1), unit, f"<= {GOALS[name]}", detail)


def image_cold_build_s(
    site: SiteLike, out_dir: Path | None = None, kubernetes_source_override: str | None = None
) -> tuple[Figure, BuildResult]:
    """Build with an empty artifact cache (a fresh output directory). Returns (figure, result)
    so the other figures can use the image without building it again.

    "Cold" means no nodekiln artifact; diskimage-builder's own cache of the debootstrap base
    (~/.cache/image-create) is used when present, as on any developer's machine.
    """
    out = out_dir or Path(tempfile.mkdtemp(prefix="nodekiln-bench-"))
    if out.exists() and any(out.glob("*.manifest.json")):
        shutil.rmtree(out)
    started = time.monotonic()
    result = build_image(site, out, kubernetes_source_override=kubernetes_source_override)
    seconds = time.monotonic() - started
    where = ", ".join(f"{s['name']} {s['seconds']} s" for s in result.stages)
    hooks = next((s["slowestHooks"] for s in result.stages if s.get("slowestHooks")), [])
    inside = ", ".join(f"{h['name']} {h['seconds']} s" for h in hooks)
    return _figure("image_cold_build_s", seconds, "s", f"stages: {where}; slowest DIB hooks: {inside}"), result


def image_cache_hit_s(site: SiteLike, out_dir: Path, kubernetes_source_override: str | None = None) -> Figure:
    """A second `build-image` with unchanged inputs (the image must already be in out_dir)."""
    started = time.monotonic()
    result = build_image(site, out_dir, kubernetes_source_override=kubernetes_source_override)
    seconds = time.monotonic() - started
    if not result.cache_hit:
        raise RuntimeError("image_cache_hit_s: the build was not a cache hit")
    return _figure("image_cache_hit_s", seconds, "s", "input hash (recipe, steps, local source) + manifest check")


def image_qcow2_mb(image: Path) -> Figure:
    size = image.stat().st_size
    return _figure("image_qcow2_mb", size / 1e6, "MB", f"compressed qcow2, {size} bytes")


def boot_to_cloudinit_s(image: Path, site: Any, firmware: str = "uefi", name: str = "boot_to_cloudinit_s") -> Figure:
    """Start qemu -> `cloud-init status --wait` done, seen over SSH (first boot, fresh overlay)."""
    node = site.nodes[0]
    with tempfile.TemporaryDirectory(prefix="nodekiln-bench-key-") as keydir:
        key, public = qemu.generate_ssh_key(Path(keydir))
        seed = {
            "user-data": qemu.cloud_config(node.name, site.ssh.user, public),
            "meta-data": f"instance-id: {node.name}\nlocal-hostname: {node.name}\n",
            "network-config": qemu.network_config(
                str(node.address), str(site.network.cidr), str(site.network.gateway), [str(d) for d in site.network.dns]
            ),
        }
        with qemu.boot(
            image,
            seed,
            address=str(node.address),
            cidr=str(site.network.cidr),
            gateway=str(site.network.gateway),
            user=site.ssh.user,
            key=key,
            firmware=firmware,
        ) as vm:
            timings = dict(vm.timings)
            _, analyze = vm.ssh("systemd-analyze || true")
            _, lockdown = vm.ssh("cat /sys/kernel/security/lockdown")
    accel = qemu.accelerator(smm=firmware == "uefi-secureboot").upper()
    mode = re.search(r"\[(\w+)\]", lockdown)  # the kernel brackets the active mode
    detail = (
        f"{accel}, {firmware}, SSH up at {timings.get('ssh_s')} s; lockdown: {mode.group(1) if mode else '?'}; "
        f"guest: {analyze.strip().splitlines()[0] if analyze.strip() else '?'}"
    )
    return _figure(name, timings["cloud_init_s"], "s", detail)


def image_figures(
    site: SiteLike, kubernetes_source_override: str | None = None, out_dir: Path | None = None, boot: bool = True
) -> list[Figure]:
    """All four figures, building once."""
    cold, result = image_cold_build_s(site, out_dir, kubernetes_source_override)
    figures = [
        cold,
        image_cache_hit_s(site, result.manifest_path.parent, kubernetes_source_override),
        image_qcow2_mb(result.image),
    ]
    if boot:
        figures.append(boot_to_cloudinit_s(result.image, site))
    return figures
