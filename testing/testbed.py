"""A site's control planes and one worker as network namespaces, running the rendered HA files.

Each node is a namespace joined by a veth pair (named as the site's interface inside) to a
bridge in a namespace of its own; nothing is added to the host's namespace and the site's
addresses never leave these namespaces. In every control plane run, from the files nodekiln
renders, byte for byte: the node's nftables ruleset, HAProxy and keepalived with the very
command line of the static pod (or of the systemd drop-in, in host-services mode). The rendered
directories are bind-mounted on /etc/keepalived and /etc/haproxy, and a private directory on
/run, inside each process's own mount namespace, so not even paths are rewritten.

kube-apiserver cannot run here (no kubeadm, no container registry): a stand-in on port 6443
answers every GET, /healthz included, over HTTPS with `ok <node name>`.

Everything is removed on exit, also after a failure; namespaces left by a crashed earlier run
(named after a process that no longer exists) are removed on start.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from nodekiln.bootstrap.firewall import firewall_files
from nodekiln.bootstrap.ha import MANIFESTS, ha_files
from nodekiln.config.site import Node, Site
from nodekiln.errors import NodekilnError
from nodekiln.run import run, which
from nodekiln.secrets import Secrets
from testing import netns_bridge
from testing.netns_bridge import kill_group as _kill

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "nkt"
HOST_BINARIES = {"keepalived": "keepalived", "haproxy": "haproxy"}


class TestbedError(NodekilnError):
    pass


class Testbed:
    """Use as a context manager: `with Testbed(site, secrets, workdir) as tb: ...`."""

    __test__ = False  # not a pytest class
    _count = 0

    def __init__(self, site: Site, secrets: Secrets, workdir: Path):
        for tool in ("ip", "nft", "keepalived", "haproxy", "curl"):
            which(tool)  # a MissingToolError names the package to install
        self.site = site
        self.secrets = secrets
        self.workdir = workdir
        self.vip = str(site.controlPlane.endpoint.vip)
        self.port = site.endpoint_port
        self.iface = site.controlPlane.interface
        self.control_planes = list(site.control_planes)
        self.worker = site.workers[0]
        self.nodes: list[Node] = [*self.control_planes, self.worker]
        Testbed._count += 1
        self.tag = f"{PREFIX}{os.getpid()}x{Testbed._count}"
        self.bridge = f"{self.tag}-br"
        self.procs: dict[tuple[str, str], subprocess.Popen[bytes]] = {}
        self.namespaces: list[str] = []
        self.monitors: list[subprocess.Popen[bytes]] = []
        self.unplugged: set[str] = set()  # nodes whose link is cut: their stale VIP is unseen

    # --- names and paths -----------------------------------------------------------------
    def ns(self, node: Node | str) -> str:
        return f"{self.tag}-{node if isinstance(node, str) else node.name}"

    def veth(self, node: Node) -> str:
        return f"v{self.nodes.index(node)}"

    def dir(self, node: Node) -> Path:
        return self.workdir / node.name

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    # --- life cycle ----------------------------------------------------------------------
    def __enter__(self) -> Testbed:
        try:
            self._reap_stale()
            self._network()
            self._cert()
            for node in self.nodes:
                self._write_files(node)
                self._ip("netns", "exec", self.ns(node), "nft", "-f", self.dir(node) / "etc/nftables.conf")
            for node in self.control_planes:
                self.start(node, "standin")
                self.start(node, "haproxy")
            # as at bootstrap: the init node holds the VIP before the others join (there, their
            # check scripts fail until their API servers run)
            for node in self.control_planes:
                self.start(node, "keepalived")
                if node == self.site.init_node:
                    self.wait_holder(timeout=20)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for key in list(self.procs):
            self.stop(*key)
        for proc in self.monitors:
            _kill(proc)
        self.monitors.clear()
        netns_bridge.remove(self.namespaces)
        self.namespaces.clear()

    def _reap_stale(self) -> None:
        netns_bridge.reap_stale(PREFIX)

    def _ip(self, *args: object) -> str:
        return netns_bridge.ip(*args)

    def _network(self) -> None:
        machines = [(self.ns(node), self.veth(node), str(node.address)) for node in self.nodes]
        self.namespaces += netns_bridge.build(self.bridge, machines, self.iface, self.site.network.cidr.prefixlen)

    def _cert(self) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver stand-in")])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .sign(key, hashes.SHA256())
        )
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.cert = self.workdir / "standin.crt"
        self.key = self.workdir / "standin.key"
        self.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self.key.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )

    def _write_files(self, node: Node) -> None:
        root = self.dir(node)
        files = firewall_files(self.site, node) + ha_files(self.site, self.secrets, node)
        for f in files:
            path = root / f.path.lstrip("/")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f.content)
            path.chmod(f.mode)
        for sub in ("etc/keepalived", "etc/haproxy", "run/haproxy"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        (root / "logs").mkdir(exist_ok=True)

    # --- the programs --------------------------------------------------------------------
    def command(self, node: Node, program: str) -> list[str]:
        """The command line the rendered files give for `program` on `node`."""
        root = self.dir(node)
        if self.site.controlPlane.loadBalancerMode == "static-pods":
            pod = yaml.safe_load((root / MANIFESTS.lstrip("/") / f"{program}.yaml").read_text())
            argv = list(pod["spec"]["containers"][0]["command"])
        else:
            dropin = (root / f"etc/systemd/system/{program}.service.d/10-nodekiln.conf").read_text()
            exec_start = [
                line.split("=", 1)[1]
                for line in dropin.splitlines()
                if line.startswith("ExecStart=") and line != "ExecStart="
            ][-1]
            env: dict[str, str] = {}
            for line in dropin.splitlines():
                if line.startswith("Environment="):
                    for item in shlex.split(line.split("=", 1)[1]):
                        k, _, v = item.partition("=")
                        env[k] = v
            argv = []
            for word in shlex.split(exec_start):
                argv += shlex.split(env[word[1:]]) if word.startswith("$") else [word]
        argv[0] = which(HOST_BINARIES[Path(argv[0]).name])
        return argv

    def start(
        self,
        node: Node,
        program: str,
        *,
        root: Path | None = None,
        argv: list[str] | None = None,
        key: str | None = None,
    ) -> subprocess.Popen[bytes]:
        """Run `program` in `node`'s namespace with `root`'s folders (default: the node's)."""
        ns, root = self.ns(node), root or self.dir(node)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        if argv is not None:
            pass
        elif program == "standin":
            argv = [sys.executable, "-m", "testing.netns_tools", "standin", node.name, str(self.cert), str(self.key)]
        elif program == "listen":
            argv = [
                sys.executable,
                "-m",
                "testing.netns_tools",
                "listen",
                *[str(p) for p in self.listen_ports[node.name]],
            ]
        else:
            argv = self.command(node, program)
        # a mount namespace per process (ip netns exec makes one): the rendered folders appear
        # at the paths the configs name, and /run is private (pid files, sockets)
        mounts = f'mount --bind {root}/etc/keepalived /etc/keepalived && mount --bind {root}/etc/haproxy /etc/haproxy && mount --bind {root}/run /run && exec "$@"'
        (root / "logs").mkdir(parents=True, exist_ok=True)
        log = open(root / "logs" / f"{program}.log", "ab")
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, "sh", "-c", mounts, "sh", *argv],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        log.close()
        self.procs[(node.name, key or program)] = proc
        if program in ("standin", "listen"):
            self._wait_log(node, program, "ready")
        return proc

    def start_rogue(self, node: Node, conf: str, key: str = "rogue") -> None:
        """Another keepalived in `node`'s namespace with `conf`, apart from the node's own."""
        root = self.dir(node) / key
        for sub in ("etc/keepalived", "etc/haproxy", "run"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        path = root / "etc/keepalived/keepalived.conf"
        path.write_text(conf)
        path.chmod(0o600)
        self.start(node, "keepalived", root=root, argv=self.command(self.control_planes[0], "keepalived"), key=key)

    def rogue_conf(
        self, address: str, *, priority: int = 254, password: str | None = None, vrid: int | None = None
    ) -> str:
        """The init node's rendered keepalived.conf, as another VRRP speaker at `address` would
        run it: highest priority, preempting, no check script, and the VIP on its loopback so that only
        VRRP decides (an L2 neighbour can always squat an address: that is the cloud's port
        security's job, not VRRP's)."""
        conf = (self.dir(self.control_planes[0]) / "etc/keepalived/keepalived.conf").read_text()
        peers = "".join(f"    {cp.address}\n" for cp in self.control_planes if str(cp.address) != address)
        conf = re.sub(r"unicast_peer \{\n.*?\n  \}", "unicast_peer {\n" + peers + "  }", conf, flags=re.S)
        conf = re.sub(r"unicast_src_ip \S+", f"unicast_src_ip {address}", conf)
        conf = re.sub(r"priority \d+", f"priority {priority}", conf)
        conf = re.sub(r"  track_script \{.*?\}\n", "", conf, flags=re.S)
        conf = conf.replace("  nopreempt\n", "")  # it claims the VIP whenever it can
        conf = conf.replace(f"{self.vip}/32 dev {self.iface}", f"{self.vip}/32 dev lo")
        if password is not None:
            conf = re.sub(r"auth_pass \S+", f"auth_pass {password}", conf)
        if vrid is not None:
            conf = re.sub(r"virtual_router_id \d+", f"virtual_router_id {vrid}", conf)
        return conf

    def stop(self, node_name: str, program: str, sig: int = signal.SIGTERM) -> None:
        proc = self.procs.pop((node_name, program), None)
        if proc is not None:
            _kill(proc, sig)

    def running(self, node: Node, program: str) -> bool:
        proc = self.procs.get((node.name, program))
        return proc is not None and proc.poll() is None

    def log(self, node: Node, program: str) -> str:
        path = self.dir(node) / "logs" / f"{program}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _wait_log(self, node: Node, program: str, text: str, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log(node, program):
            proc = self.procs.get((node.name, program))
            if proc is not None and proc.poll() is not None:
                raise TestbedError(
                    f"{program} on {node.name} exited {proc.returncode}:\n{self.log(node, program)[-2000:]}"
                )
            if time.monotonic() > deadline:
                raise TestbedError(f"{program} on {node.name} did not say {text!r} within {timeout} s")
            time.sleep(0.05)

    listen_ports: ClassVar[dict[str, tuple[int, ...]]] = {}

    # --- observing and disturbing --------------------------------------------------------
    def exec(self, node: Node, *argv: str, timeout: float = 60) -> str:
        env = {"PYTHONPATH": str(ROOT)}
        return run(["ip", "netns", "exec", self.ns(node), *argv], env=env, timeout=timeout, check=False).output

    def tool(self, node: Node, *args: str, timeout: float = 60) -> str:
        return self.exec(node, sys.executable, "-m", "testing.netns_tools", *args, timeout=timeout)

    def holders(self) -> list[str]:
        found = []
        for node in self.control_planes:
            if node.name in self.unplugged:
                continue
            out = subprocess.run(
                ["ip", "-n", self.ns(node), "-4", "-o", "addr", "show", "dev", self.iface],
                capture_output=True,
                text=True,
            ).stdout
            if f" {self.vip}/" in out:
                found.append(node.name)
        return found

    def wait_holder(self, timeout: float = 15, not_on: str | None = None) -> str:
        """The single control plane that holds the VIP, once there is exactly one."""
        deadline = time.monotonic() + timeout
        while True:
            held = self.holders()
            if len(held) == 1 and held[0] != not_on:
                return held[0]
            if time.monotonic() > deadline:
                raise TestbedError(f"VIP holders after {timeout} s: {held or 'none'}")
            time.sleep(0.05)

    def counter(self, node: Node, name: str) -> int:
        """Packets counted by the named counter of the node's nftables ruleset."""
        out = self.exec(node, "nft", "list", "counter", "inet", "nodekiln", name)
        match = re.search(r"packets (\d+)", out)
        if not match:
            raise TestbedError(f"no counter {name} on {node.name}: {out}")
        return int(match.group(1))

    def states(self, node: Node, key: str = "keepalived") -> list[str]:
        """keepalived's state changes on `node`, in order (from its log)."""
        root = self.dir(node) if key == "keepalived" else self.dir(node) / key
        path = root / "logs" / "keepalived.log"
        return re.findall(r"Entering (\w+) STATE", path.read_text(errors="replace")) if path.exists() else []

    def heal(self) -> str:
        """Every control plane up and running again; returns the VIP holder."""
        for node in self.control_planes:
            if not self.running(node, "keepalived"):  # a dead keepalived leaves its VIP behind
                subprocess.run(
                    ["ip", "-n", self.ns(node), "addr", "del", f"{self.vip}/32", "dev", self.iface],
                    capture_output=True,
                    check=False,
                )
                self._clear_pid_files(node)
            self.mend(node)
            for program in ("standin", "haproxy", "keepalived"):
                if not self.running(node, program):
                    self.start(node, program)
        return self.wait_holder()

    def url(self, path: str = "/healthz") -> str:
        return f"https://{self.vip}:{self.port}{path}"

    def cut(self, node: Node) -> None:
        self._ip("-n", self.bridge, "link", "set", self.veth(node), "down")
        self.unplugged.add(node.name)

    def mend(self, node: Node) -> None:
        self._ip("-n", self.bridge, "link", "set", self.veth(node), "up")
        self.unplugged.discard(node.name)

    def kill_holder(self, name: str) -> float:
        """The holder dies: its link is cut and its keepalived SIGKILLed. Returns the time."""
        node = self.node(name)
        t0 = time.monotonic()
        self.cut(node)  # first: a dying keepalived child must not get a priority-0 advert out
        proc = self.procs.pop((name, "keepalived"))
        _kill(proc, signal.SIGKILL)
        return t0

    def revive(self, name: str) -> None:
        """The dead node comes back as after a reboot: no VIP on it, link up, keepalived anew."""
        node = self.node(name)
        subprocess.run(
            ["ip", "-n", self.ns(node), "addr", "del", f"{self.vip}/32", "dev", self.iface],
            capture_output=True,
            check=False,
        )
        self._clear_pid_files(node)
        self.mend(node)
        self.start(node, "keepalived")

    def _clear_pid_files(self, node: Node) -> None:
        """/run is empty after a reboot; here a SIGKILLed keepalived leaves pid files naming
        zombies (nobody reaps orphans in this container), and keepalived would refuse to start."""
        for pid_file in (self.dir(node) / "run").glob("*.pid"):
            pid_file.unlink()

    @contextmanager
    def watch_moves(self) -> Iterator[list[Path]]:
        """Record every VIP address change on the control planes (`ip monitor`)."""
        files = []
        procs = []
        for node in self.control_planes:
            path = self.dir(node) / "logs" / f"monitor-{time.monotonic_ns()}.log"
            out = open(path, "wb")
            procs.append(
                subprocess.Popen(
                    ["ip", "-n", self.ns(node), "monitor", "address"],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
            out.close()
            files.append(path)
        self.monitors += procs
        time.sleep(0.2)
        try:
            yield files
        finally:
            for proc in procs:
                _kill(proc)
                self.monitors.remove(proc)

    def count_moves(self, files: list[Path]) -> int:
        """VIP additions seen by the monitors: each is a node taking the VIP."""
        count = 0
        for path in files:
            for line in path.read_text(errors="replace").splitlines():
                if f" {self.vip}/" in line and not line.startswith("Deleted"):
                    count += 1
        return count

    def failover(self) -> tuple[float, str, str]:
        """Kill the holder; seconds from the kill to the first answer through the VIP seen by
        the worker, the old holder and the new one."""
        old = self.wait_holder()
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        prober = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                self.ns(self.worker),
                sys.executable,
                "-m",
                "testing.netns_tools",
                "probe",
                self.url(),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        assert prober.stdin is not None and prober.stdout is not None
        if prober.stdout.readline().strip() != b"ready":  # started and waiting (slow on a busy host)
            _kill(prober)
            raise TestbedError("the prober did not start")
        t0 = self.kill_holder(old)
        prober.stdin.write(b"go\n")
        prober.stdin.flush()
        try:
            out, _ = prober.communicate(timeout=30)  # the line after 'ready'

        except subprocess.TimeoutExpired:
            _kill(prober)
            raise TestbedError(f"no answer through the VIP within 30 s after {old} died") from None
        stamp = out.decode().split()[0]
        return float(stamp) - t0, old, self.wait_holder(not_on=old)
