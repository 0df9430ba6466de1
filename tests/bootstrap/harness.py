"""Run the rendered first-boot script as a node would, against the stand-in kubeadm.

Each `boot()` is one run of /etc/nodekiln/bootstrap.sh in a private mount and network namespace
laid out like a nodekiln node: /etc and /var/lib are overlays whose upper layers persist in the
node's work folder between boots (as /etc's overlay and /var do on the data partition), /usr is
read-only, and the node's rendered files are placed once, as cloud-init's write_files does on
the first boot. nft is the real one (the ruleset is loaded into the namespace's own network
stack); kubeadm is kubeadm_standin.py; systemctl, curl and sleep are recording stubs (no systemd
as PID 1, no API endpoint, no waiting).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from nodekiln.bootstrap.nodefiles import NodeFile

REPO = Path(__file__).resolve().parents[2]
STANDIN = Path(__file__).with_name("kubeadm_standin.py")

STUBS = {
    "kubeadm": f'#!/bin/sh\nexec {sys.executable} {STANDIN} "$@"\n',
    "systemctl": '#!/bin/sh\necho "systemctl $*" >>"$NODEKILN_STANDIN_STATE/systemctl.log"\n',
    "curl": "#!/bin/sh\nexit 0\n",
    "sleep": '#!/bin/sh\necho "sleep $*" >>"$NODEKILN_STANDIN_STATE/sleep.log"\n',
}

MOUNTS = """set -e
mount -t overlay overlay -o "lowerdir=/etc,upperdir=$W/etc/upper,workdir=$W/etc/work" /etc
mount -t overlay overlay -o "lowerdir=/var/lib,upperdir=$W/varlib/upper,workdir=$W/varlib/work" /var/lib
mount --bind /usr /usr
mount -o remount,bind,ro /usr
ip link set lo up
exec bash /etc/nodekiln/bootstrap.sh
"""


@dataclass
class Boot:
    returncode: int
    output: str


class Node:
    """One node's disk (its /etc and /var/lib upper layers) and the stand-in cluster's state."""

    def __init__(self, work: Path, files: list[NodeFile], minor: int, cluster: Path | None = None):
        self.work, self.minor = work, minor
        self.state = cluster or work / "cluster"
        self.stubs = work / "bin"
        for layer in ("etc/upper", "etc/work", "varlib/upper", "varlib/work"):
            (work / layer).mkdir(parents=True, exist_ok=True)
        self.state.mkdir(parents=True, exist_ok=True)
        self.stubs.mkdir(exist_ok=True)
        for name, text in STUBS.items():
            (self.stubs / name).write_text(text)
            (self.stubs / name).chmod(0o755)
        for f in files:  # cloud-init's write_files, on the first boot only
            assert f.path.startswith("/etc/"), f.path
            target = work / "etc/upper" / f.path.removeprefix("/etc/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(f.content)
            target.chmod(f.mode)

    def boot(self, fail: str = "") -> Boot:
        if not shutil.which("unshare"):
            raise RuntimeError("unshare is missing: apt-get install -y util-linux")
        env = {
            "W": str(self.work),
            "PATH": f"{self.stubs}:/usr/sbin:/usr/bin:/sbin:/bin",
            "PYTHONPATH": str(REPO),
            "NODEKILN_STANDIN_STATE": str(self.state),
            "NODEKILN_STANDIN_MINOR": str(self.minor),
            "NODEKILN_STANDIN_FAIL": fail,
        }
        result = subprocess.run(
            ["unshare", "--mount", "--net", "--propagation", "private", "bash", "-c", MOUNTS],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        return Boot(result.returncode, result.stdout + result.stderr)

    def path(self, node_path: str) -> Path:
        """Where a node path lands in this node's upper layers (after the boots)."""
        for prefix, layer in (("/etc/", "etc/upper"), ("/var/lib/", "varlib/upper")):
            if node_path.startswith(prefix):
                return self.work / layer / node_path.removeprefix(prefix)
        raise ValueError(node_path)

    def exists(self, node_path: str) -> bool:
        return self.path(node_path).exists()

    @property
    def done(self) -> bool:
        return self.exists("/var/lib/nodekiln/bootstrap.done")

    def calls(self) -> list[dict[str, Any]]:
        log = self.state / "calls.jsonl"
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def seed_cluster(state: Path, init_config: str) -> None:
    """What `kubeadm init`'s upload-config phase leaves in the cluster, for nodes that join."""
    docs = {d["kind"]: d for d in yaml.safe_load_all(init_config) if d}
    (state / "cluster").mkdir(parents=True, exist_ok=True)
    (state / "cluster" / "kubeadm-config.yaml").write_text(yaml.safe_dump(docs["ClusterConfiguration"]))
    (state / "cluster" / "kubelet-config.yaml").write_text(yaml.safe_dump(docs["KubeletConfiguration"]))
