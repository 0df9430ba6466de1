"""Reboot a node image in a loop and say where each boot spent its time (test scaffolding).

    python -m tests.image.reboot_loop --firmware uefi --count 20 [--warm] [--image PATH] [--out F]

Boots the test image (built like the image tests build it, or --image), makes the kernel speak
on the serial console (drops `quiet` from the overlay's grub.cfg: the image under test is not
touched), then reboots it `--count` times. Each reboot is the guest's own `systemctl reboot`;
under TCG the harness power-cycles qemu (see `VM.reboot`) unless --warm keeps the reset inside
the qemu process, as the earlier loops did. A thread stamps each console line as it arrives, so
every boot is split at the markers GRUB, the kernel and the initramfs print:

    shutdown   reboot asked → qemu exited (power cycle only)
    firmware   → GRUB's "nodekiln: loading the kernel"
    grub       → "nodekiln: starting the kernel" (reading the kernel and the initramfs)
    kernel     → the initramfs's "nodekiln: /etc is an overlay" (data partition and /etc done)
    userspace  → SSH answers with a new boot id

A boot that does not come back within --timeout stops the loop and names the last marker and
the console's last lines. The figures go to --out as JSON (one object per boot) and a table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from testing import qemu

MARKERS = {
    "firmware": "nodekiln: loading the kernel",
    "grub": "nodekiln: starting the kernel",
    "kernel": "nodekiln: /etc is an overlay",
}
PHASES = ("shutdown", "firmware", "grub", "kernel", "userspace")
VERBOSE_GRUB = (
    # grub.cfg sits on the read-only root: remount it for the edit, on this VM's overlay only.
    "sudo mount -o remount,rw / && "
    "sudo sed -i 's/ quiet\\b/ ignore_loglevel/' /boot/grub/grub.cfg && sync && "
    "grep -c ignore_loglevel /boot/grub/grub.cfg; sudo mount -o remount,ro / || true"
)


@dataclass
class ConsoleClock:
    """Stamps each new console line with the monotonic time it was first seen."""

    path: Path
    lines: list[tuple[float, str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _offset: int = 0

    def start(self) -> None:
        threading.Thread(target=self._follow, daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _follow(self) -> None:
        pending = b""
        while not self._stop.is_set():
            try:
                with open(self.path, "rb") as handle:
                    handle.seek(self._offset)
                    chunk = handle.read()
            except OSError:
                chunk = b""
            self._offset += len(chunk)
            pending += chunk
            *complete, pending = pending.split(b"\n")
            now = time.monotonic()
            self.lines.extend((now, line.decode(errors="replace").strip()) for line in complete)
            time.sleep(0.2)

    def first_after(self, text: str, since: float) -> float | None:
        return next((t for t, line in list(self.lines) if t >= since and text in line), None)

    def last_marker(self, since: float) -> str:
        seen = [name for name, text in MARKERS.items() if self.first_after(text, since) is not None]
        return seen[-1] if seen else "none (still in shutdown or firmware)"


def split_boot(clock: ConsoleClock, asked: float, shutdown_s: float | None, back: float) -> dict[str, float | None]:
    """One reboot's phases in seconds, from the console stamps (None: the marker never showed)."""
    points: list[float | None] = [asked + shutdown_s if shutdown_s is not None else asked]
    for name in ("firmware", "grub", "kernel"):
        points.append(clock.first_after(MARKERS[name], points[0] or asked))
    points.append(back)
    phases: dict[str, float | None] = {"shutdown": shutdown_s}
    for name, start, end in zip(PHASES[1:], points[:-1], points[1:], strict=True):
        phases[name] = round(end - start, 1) if start is not None and end is not None else None
    phases["total"] = round(back - asked, 1)
    return phases


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--firmware", choices=("uefi", "uefi-secureboot", "bios"), default="uefi")
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--warm", action="store_true", help="reset inside the qemu process (no power cycle)")
    parser.add_argument("--image", type=Path, help="a built node image (default: build the test image)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds one reboot may take")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args(argv)

    from tests.image.conftest import load_test_site, seed_files

    site = load_test_site()
    image = args.image or _test_image(site)
    node = site.nodes[0]
    key_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"nodekiln-reboot-loop-{os.getpid()}"
    key_dir.mkdir(parents=True, exist_ok=True)
    key, public = qemu.generate_ssh_key(key_dir)
    boots: list[dict[str, object]] = []
    with qemu.boot(
        image,
        seed_files(site, node, public),
        address=str(node.address),
        cidr=str(site.network.cidr),
        gateway=str(site.network.gateway),
        user=site.ssh.user,
        key=key,
        firmware=args.firmware,
        timeout=args.timeout,
        power_cycle=False if args.warm else None,  # --warm: no -no-reboot, the reset stays in qemu
    ) as vm:
        clock = ConsoleClock(vm.console)
        clock.start()
        print(f"booted ({args.firmware}) in {vm.timings}; grub.cfg verbose: {vm.ssh(VERBOSE_GRUB)[1].strip()}")
        for n in range(1, args.count + 1):
            asked = time.monotonic()
            try:
                vm.reboot(timeout=args.timeout, power_cycle=False if args.warm else None)
            except qemu.BootError as exc:
                print(f"reboot {n}: did not come back; last marker: {clock.last_marker(asked)}\n{exc}")
                boots.append({"n": n, "came_back": False, "last_marker": clock.last_marker(asked)})
                break
            phases = split_boot(
                clock,
                asked,
                vm.timings.get("shutdown_s") if vm.power_cycles and not args.warm else None,
                time.monotonic(),
            )
            boots.append({"n": n, "came_back": True, **phases, "load1": round(os.getloadavg()[0], 1)})
            print(
                f"reboot {n}: " + "  ".join(f"{k} {v}" for k, v in phases.items()) + f"  load {os.getloadavg()[0]:.1f}",
                flush=True,
            )
        clock.stop()
    summary = summarize(boots)
    print(json.dumps(summary, indent=2))
    if args.out:
        args.out.write_text(
            json.dumps(
                {
                    "firmware": args.firmware,
                    "warm": args.warm,
                    "accel": qemu.accelerator(),
                    "summary": summary,
                    "boots": boots,
                },
                indent=2,
            )
            + "\n"
        )
    return 0 if all(b["came_back"] for b in boots) else 1


def summarize(boots: list[dict[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {"reboots": len(boots), "came_back": sum(1 for b in boots if b["came_back"])}
    for phase in (*PHASES, "total"):
        values = [float(v) for b in boots if isinstance(v := b.get(phase), int | float)]
        if values:
            out[phase] = {"median": round(statistics.median(values), 1), "max": round(max(values), 1)}
    return out


def _test_image(site: object) -> Path:
    from tests.image.conftest import build_test_image

    return build_test_image(site).image


if __name__ == "__main__":
    sys.exit(main())
