"""The reboot loop's split of one reboot into phases, from stamped console lines."""

from __future__ import annotations

from pathlib import Path

from tests.image.reboot_loop import MARKERS, ConsoleClock, split_boot


def test_a_reboot_splits_at_the_grub_and_initramfs_markers() -> None:
    clock = ConsoleClock(Path("/nonexistent"))
    clock.lines = [
        (5.0, "old boot: " + MARKERS["kernel"]),  # before the reboot was asked: not this boot
        (112.0, MARKERS["firmware"]),
        (115.5, MARKERS["grub"]),
        (131.0, MARKERS["kernel"]),
    ]
    phases = split_boot(clock, asked=100.0, shutdown_s=4.0, back=170.0)
    assert phases == {"shutdown": 4.0, "firmware": 8.0, "grub": 3.5, "kernel": 15.5, "userspace": 39.0, "total": 70.0}


def test_a_marker_that_never_showed_leaves_its_phases_open() -> None:
    clock = ConsoleClock(Path("/nonexistent"))
    clock.lines = [(112.0, MARKERS["firmware"])]
    phases = split_boot(clock, asked=100.0, shutdown_s=None, back=170.0)
    assert phases["firmware"] == 12.0 and phases["grub"] is None and phases["kernel"] is None
    assert phases["userspace"] is None and phases["total"] == 70.0
