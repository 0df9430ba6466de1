"""Ctrl-C during a Packer build stops Packer and its VM and leaves no disk or file behind.

A real `packer build` (qemu builder) of a base disk that never boots (blank: the VM sits in
the firmware while Packer waits for SSH); nodekiln gets SIGINT as from a terminal. No image is
built, but it runs Packer and boots a VM: slow, so `invoke test --fast` leaves it out.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nodekiln.run import run

pytestmark = [pytest.mark.tools, pytest.mark.slow, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
SCRIPT = """
import signal, sys
from pathlib import Path
# A shell that starts jobs in the background hands them SIGINT ignored; a terminal does not.
signal.signal(signal.SIGINT, signal.default_int_handler)
from nodekiln.images.packer_build import build_image_packer
from nodekiln.config.site import load_site
build_image_packer(load_site(sys.argv[1]), "packer-qemu", Path(sys.argv[2]), base_image=Path(sys.argv[3]))
"""


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline and int(proc.name) != os.getpid():
            found.append(f"{proc.name}: {cmdline[:200]}")
    return found


def test_ctrl_c_stops_packer_and_its_vm_and_cleans_up(tmp_path: Path, example_site: Path) -> None:
    for tool in ("packer", "qemu-system-x86_64", "qemu-img"):
        if not shutil.which(tool):
            pytest.fail(
                f"{tool} is not installed: apt-get install -y "
                f"{ {'packer': 'packer', 'qemu-img': 'qemu-utils'}.get(tool, 'qemu-system-x86') }",
                pytrace=False,
            )
    blank = tmp_path / "blank.qcow2"
    run(["qemu-img", "create", "-q", "-f", "qcow2", blank, "1G"])
    out = tmp_path / "out"
    temp = tmp_path / "tmp"  # Packer's own temporary files go here: must end up empty
    temp.mkdir()
    site = example_site.read_text().replace("kubernetesSource: upstream", "kubernetesSource: none")
    example_site.write_text(site)
    env = {**os.environ, "TMPDIR": str(temp), "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, example_site, out, blank],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            logs = list(out.glob("logs/*.log"))
            if logs and "Waiting for SSH" in logs[0].read_text(errors="replace"):
                break
            time.sleep(1)
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        vms = [p for p in _processes_mentioning(str(out)) if "qemu-system" in p]
        assert vms, "the build VM should be running before the interrupt"
        time.sleep(2)
        os.kill(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does to nodekiln
        text, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:  # the test failed before the interrupt: stop everything it started
            os.kill(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        for left in _processes_mentioning(str(out)):
            os.kill(int(left.split(":")[0]), signal.SIGKILL)
    assert proc.returncode != 0
    assert "build interrupted; cleaned up" in text
    assert _processes_mentioning(str(out)) == [], "packer or qemu outlived the interrupt"
    assert [p.name for p in out.iterdir() if p.name != "logs"] == [], "work files left behind"
    assert list(temp.iterdir()) == [], "Packer's temporary files left behind"
