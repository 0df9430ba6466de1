"""A site's edge node, its workers, a backup cluster, an ACME server and a client as network
namespaces, running the rendered edge files with the real HAProxy, certbot, nftables and pebble.

Each machine is a namespace joined by a veth pair (named as the site's interface inside) to a
bridge in a namespace of its own, as in testing.testbed; nothing is added to the host's network
namespace. What runs where:

- the edge node: the rendered nftables ruleset (`nft -f /etc/nftables.conf`), the rendered
  placeholder script, then HAProxy with Debian's haproxy.service command line
  (nodekiln.bootstrap.edge.HAPROXY_ARGS); certbot runs through the rendered issue.sh, reads the
  rendered /etc/letsencrypt/cli.ini and calls the rendered deploy hook, which reloads HAProxy.
  The rendered files are written to a per-node folder; inside each process's own mount
  namespace that folder's etc/ is laid over /etc (a read-only overlay: /etc/nodekiln/edge
  appears without being created on the host), and its writable folders are bind-mounted on
  /etc/haproxy, /etc/letsencrypt, /var/lib/letsencrypt, /var/log/letsencrypt and /run. No path
  in a rendered file is rewritten.
- the workers: their rendered nftables ruleset (the ingress NodePort open to the edge node
  only) and a STAND-IN for the ingress controller on the HTTPS NodePort: no ingress controller
  can run here (no Kubernetes, no container registry). The stand-in (testing.netns_tools
  standin) answers every GET over HTTPS with `ok <worker name>`, with a server certificate
  signed by the site's CA (secrets.ca), as the ingress's certificate is on a real cluster, so
  HAProxy's `ssl verify required ca-file` is exercised for real. With the certificates addon,
  a second stand-in (`solver`) answers plain HTTP on the HTTP NodePort, where cert-manager's
  HTTP-01 solver pods answer behind the ingress on a real cluster.
- the backup cluster ("other01"): the same stand-in on 443 with a certificate of another CA,
  which the site names as edge.backupCAFile.
- the ACME server: pebble (a real RFC 8555 server, test-only) with its HTTPS certificate from
  a CA the site names as edge.acme.caFile, validating HTTP-01 on port 80, and resolving the
  domains through pebble-challtestsrv's DNS, which answers every A query with the edge node's
  address (or, to make an issuance fail, another one).
- the client: curl, openssl s_client and the load loop (testing.netns_tools load).

Everything is removed on exit, also after a failure; namespaces left by a crashed earlier run
(named after a process that no longer exists) are removed on start.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from nodekiln.bootstrap import edge
from nodekiln.bootstrap.firewall import firewall_files
from nodekiln.bootstrap.nodefiles import NodeFile
from nodekiln.config.site import Node, Site, load_site
from nodekiln.errors import MissingToolError, NodekilnError
from nodekiln.run import Result, run, which
from nodekiln.secrets import KeyPair, Secrets, SecretStore, make_ca, make_serving_cert
from testing import netns_bridge
from testing.netns_bridge import kill_group as _kill

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "nke"
ACME_CA_FILE = "acme-ca.pem"
BACKUP_CA_FILE = "other-cluster-ca.pem"
BACKUP_NAME = "other01"
PEBBLE_PORT = 14000
PEBBLE_MANAGEMENT_PORT = 15000
DNS_PORT = 8053
CHALLTESTSRV_MANAGEMENT_PORT = 8055
# host numbers in network.cidr of the machines that are not the site's
HOSTS = {BACKUP_NAME: 230, "pebble": 240, "client": 250}
# Debian packages of the programs the bed runs (nodekiln.run.PACKAGES lacks the test-only ones)
PACKAGES = {"certbot": "certbot", "pebble": "pebble", "pebble-challtestsrv": "pebble", "unshare": "util-linux"}
MAXCONN = 20000  # the rendered haproxy.cfg's global maxconn
# the writable folders of an edge node, bind-mounted over the overlay
WRITABLE = ("etc/haproxy", "etc/letsencrypt", "var/lib/letsencrypt", "var/log/letsencrypt", "run")


class EdgebedError(NodekilnError):
    pass


def need(tool: str) -> str:
    """The tool's path, or a MissingToolError naming its Debian package."""
    try:
        return which(tool)
    except MissingToolError:
        raise MissingToolError(tool, PACKAGES.get(tool, tool)) from None


# --- the site ------------------------------------------------------------------------------
@dataclass(frozen=True)
class EdgeSite:
    """A site of the example, its edge section pointed at the bed's pebble; the CAs it names."""

    site: Site
    secrets: Secrets
    acme_ca: KeyPair  # signs pebble's HTTPS (edge.acme.caFile)
    backup_ca: KeyPair | None  # signs the backup cluster's stand-in (edge.backupCAFile)

    @property
    def pebble(self) -> str:
        return host(self.site, "pebble")

    @property
    def backup(self) -> str:
        return host(self.site, BACKUP_NAME)


def host(site: Site, name: str) -> str:
    return str(site.network.cidr[HOSTS[name]])


def make_site(base: Path, *, edges: int = 1, backups: bool = True) -> EdgeSite:
    """The example site in `base`, with `edges` edge nodes (one: no VIP), ACME from the bed's
    pebble, and (`backups`) the bed's other cluster as backup server."""
    base.mkdir(parents=True, exist_ok=True)
    doc = yaml.safe_load((ROOT / "sites/example/site.yaml").read_text())
    section = doc["edge"]
    section["nodes"] = section["nodes"][:edges]
    if edges == 1:
        section.pop("vip", None)
    cidr = doc["network"]["cidr"]
    probe = IPv4Network(cidr)
    acme_ca = make_ca("nodekiln edgebed: the ACME server's HTTPS")
    (base / ACME_CA_FILE).write_text(acme_ca.cert)
    section["acme"] = {
        "directory": f"https://{probe[HOSTS['pebble']]}:{PEBBLE_PORT}/dir",
        "email": section["acme"]["email"],
        "caFile": ACME_CA_FILE,
    }
    backup_ca = None
    if backups:
        backup_ca = make_ca("nodekiln edgebed: the other cluster's ingress CA")
        (base / BACKUP_CA_FILE).write_text(backup_ca.cert)
        section["backups"] = [{"name": BACKUP_NAME, "address": str(probe[HOSTS[BACKUP_NAME]]), "port": 443}]
        section["backupCAFile"] = BACKUP_CA_FILE
    (base / "site.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    site = load_site(base / "site.yaml")
    secrets, _ = SecretStore(site.directory, site.name).ensure()
    return EdgeSite(site, secrets, acme_ca, backup_ca)


def server_cert(ca: KeyPair, common_name: str, *, dns: tuple[str, ...] = (), ips: tuple[str, ...] = ()) -> KeyPair:
    """A serving certificate signed by `ca`, valid a day (nodekiln.secrets.make_serving_cert)."""
    return make_serving_cert(ca, dns, 1, ips=ips, common_name=common_name)


# --- an edge node's files, in place --------------------------------------------------------
def write_files(files: list[NodeFile], root: Path) -> None:
    for f in files:
        path = root / f.path.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f.content)
        path.chmod(f.mode)


def render_edge(es: EdgeSite, node: Node, root: Path) -> None:
    """The node's rendered files under `root`, and the empty folders its programs write to."""
    write_files(edge.edge_files(es.site, es.secrets, node), root)
    for sub in (*WRITABLE, "run/haproxy", "etc/haproxy/certs", "logs"):
        (root / sub).mkdir(parents=True, exist_ok=True)


def mounts(root: Path) -> str:
    """Shell words that show `root`'s rendered files at their real paths, then exec "$@"."""
    steps = [
        f"mount -t overlay nodekiln-etc -o lowerdir={root}/etc:/etc /etc",
        f"mount -t overlay nodekiln-var -o lowerdir={root}/var:/var /var",
        *[f"mount --bind {root}/{sub} /{sub}" for sub in WRITABLE],
        'exec "$@"',
    ]
    return " && ".join(steps)


def in_place(root: Path, *argv: str, netns: str | None = None) -> list[str]:
    """The command line running `argv` with `root`'s files in place, in a mount namespace of
    its own (`ip netns exec` makes one; without a network namespace, `unshare -m`)."""
    wrapper = ["sh", "-c", mounts(root), "sh", *argv]
    if netns is None:
        return [need("unshare"), "--mount", "--propagation", "slave", *wrapper]
    return ["ip", "netns", "exec", netns, *wrapper]


def haproxy_check(root: Path) -> Result:
    """The placeholder script, then `haproxy -c` of the rendered haproxy.cfg with its files in place."""
    run(in_place(root, edge.PATHS["placeholder"]), timeout=30)
    return run(in_place(root, need("haproxy"), "-c", "-f", edge.HAPROXY_CFG), timeout=30, check=False)


def fd_limit_args() -> list[str]:
    """HAProxy's `-n` (its connection limit, over the global maxconn) where the hard limit on
    open files is below what the rendered maxconn needs (2 per connection and some): on the
    edge node systemd's hard limit (524288) is far above; in this container it can be 20000,
    and HAProxy would refuse to start ("Cannot raise FD limit"). Nothing else changes."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY or hard >= 2 * MAXCONN + 1000:
        return []
    return ["-n", str((hard - 1000) // 2)]


# --- the bed -------------------------------------------------------------------------------
@dataclass
class Issuance:
    returncode: int
    output: str
    seconds: float


class LoadRun:
    """testing.netns_tools load, started in the client namespace; stop() returns its summary."""

    def __init__(self, proc: subprocess.Popen[bytes]):
        self.proc = proc

    def peek(self) -> dict[str, Any]:
        """The summary so far, the load going on."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(b"stat\n")
        self.proc.stdin.flush()
        summary: dict[str, Any] = json.loads(self.proc.stdout.readline())
        return summary

    def wait_for(self, bodies: set[str], timeout: float = 15) -> None:
        """Until every one of `bodies` (the servers' answers) was seen."""
        deadline = time.monotonic() + timeout
        while not bodies <= set(self.peek()["servers"]):
            if time.monotonic() > deadline:
                raise EdgebedError(
                    f"the load saw {sorted(self.peek()['servers'])} in {timeout} s, expected {sorted(bodies)}"
                )
            time.sleep(0.05)

    def stop(self) -> dict[str, Any]:
        assert self.proc.stdin is not None
        try:
            out, _ = self.proc.communicate(b"stop\n", timeout=30)
        except subprocess.TimeoutExpired:
            _kill(self.proc)
            raise EdgebedError("the load loop did not stop within 30 s") from None
        lines = out.decode(errors="replace").splitlines()
        if not lines:
            raise EdgebedError(f"the load loop printed nothing (exit {self.proc.returncode})")
        summary: dict[str, Any] = json.loads(lines[-1])
        return summary


class EdgeBed:
    """Use as a context manager: `with EdgeBed(make_site(dir), workdir) as bed: ...`."""

    __test__ = False
    _count = 0

    def __init__(self, es: EdgeSite, workdir: Path):
        for tool in ("ip", "nft", "haproxy", "curl", "openssl", "certbot", "pebble", "pebble-challtestsrv", "unshare"):
            need(tool)
        if os.geteuid() != 0:
            raise EdgebedError("the edge test bed needs root (ip netns, nft, mount)")
        self.es = es
        self.site = es.site
        self.workdir = workdir
        self.iface = self.site.controlPlane.interface
        self.edge = self.site.edge_nodes[0]
        self.workers = list(self.site.workers)
        self.domain = self.site.edge.domains[0] if self.site.edge else ""
        self.address = str(self.edge.address)
        self.backend_port = self.site.edge_backend_port or 0
        self.acme_port = edge.cluster_acme_port(self.site)  # the workers' HTTP NodePort, or None
        self.machines: dict[str, str] = {self.edge.name: self.address}
        self.machines |= {w.name: str(w.address) for w in self.workers}
        if es.backup_ca is not None:
            self.machines[BACKUP_NAME] = es.backup
        self.machines |= {"pebble": es.pebble, "client": host(self.site, "client")}
        EdgeBed._count += 1
        self.tag = f"{PREFIX}{os.getpid()}x{EdgeBed._count}"
        self.bridge = f"{self.tag}-br"
        self.namespaces: list[str] = []
        self.procs: dict[tuple[str, str], subprocess.Popen[bytes]] = {}
        self.pebble_root: str = ""  # pebble's issuing root, PEM (a new one each time pebble starts)

    # --- names and paths -----------------------------------------------------------------
    def ns(self, name: str) -> str:
        return f"{self.tag}-{name}"

    def dir(self, name: str) -> Path:
        return self.workdir / name

    @property
    def root(self) -> Path:
        """The edge node's folder: its rendered files and what its programs wrote."""
        return self.dir(self.edge.name)

    @property
    def pem(self) -> Path:
        return self.root / edge.PATHS["certificate"].lstrip("/")

    @property
    def live(self) -> Path:
        return self.root / "etc/letsencrypt/live" / edge.cert_name(self.site)

    # --- life cycle ----------------------------------------------------------------------
    def __enter__(self) -> EdgeBed:
        try:
            self._reap_stale()
            self._network()
            self._pki()
            render_edge(self.es, self.edge, self.root)
            for worker in self.workers:
                write_files(firewall_files(self.site, worker), self.dir(worker.name))
            for name in (self.edge.name, *[w.name for w in self.workers]):
                self._ip("netns", "exec", self.ns(name), "nft", "-f", self.dir(name) / "etc/nftables.conf")
            for worker in self.workers:
                self.start_standin(worker.name)
                self.start_solver(worker.name)
            if self.es.backup_ca is not None:
                self.start_standin(BACKUP_NAME)
            self.start_pebble()
            self.start_haproxy()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for key in list(self.procs):
            self.stop(*key)
        netns_bridge.remove(self.namespaces)
        self.namespaces.clear()

    def _reap_stale(self) -> None:
        netns_bridge.reap_stale(PREFIX)

    def _ip(self, *args: object) -> str:
        return netns_bridge.ip(*args)

    def _network(self) -> None:
        machines = [(self.ns(name), f"v{i}", address) for i, (name, address) in enumerate(self.machines.items())]
        self.namespaces += netns_bridge.build(self.bridge, machines, self.iface, self.site.network.cidr.prefixlen)

    def _pki(self) -> None:
        """Serving certificates: the workers' from the site CA, the backup's from its CA,
        pebble's from the ACME CA."""
        ca = self.es.secrets.ca
        for worker in self.workers:
            self._keypair(worker.name, server_cert(ca, f"ingress stand-in {worker.name}", ips=(str(worker.address),)))
        if self.es.backup_ca is not None:
            self._keypair(BACKUP_NAME, server_cert(self.es.backup_ca, "other cluster's ingress stand-in"))
        self._keypair("pebble", server_cert(self.es.acme_ca, "pebble", dns=("pebble",), ips=(self.es.pebble,)))

    def _keypair(self, name: str, pair: KeyPair) -> None:
        folder = self.dir(name) / "tls"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "tls.crt").write_text(pair.cert)
        (folder / "tls.key").write_text(pair.key)
        (folder / "tls.key").chmod(0o600)

    # --- the programs --------------------------------------------------------------------
    def start(self, name: str, key: str, argv: list[str], *, env: dict[str, str] | None = None) -> None:
        """`argv` in machine `name`'s namespace (the edge node's: with its files in place)."""
        ns = self.ns(name)
        full = in_place(self.root, *argv, netns=ns) if name == self.edge.name else ["ip", "netns", "exec", ns, *argv]
        (self.dir(name) / "logs").mkdir(parents=True, exist_ok=True)
        log = open(self.dir(name) / "logs" / f"{key}.log", "ab")
        proc = subprocess.Popen(
            full,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
            start_new_session=True,
        )
        log.close()
        self.procs[(name, key)] = proc

    def stop(self, name: str, key: str, sig: int = signal.SIGTERM) -> None:
        proc = self.procs.pop((name, key), None)
        if proc is not None:
            _kill(proc, sig)

    def running(self, name: str, key: str) -> bool:
        proc = self.procs.get((name, key))
        return proc is not None and proc.poll() is None

    def log(self, name: str, key: str) -> str:
        path = self.dir(name) / "logs" / f"{key}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _until(self, ready: Callable[[], bool], name: str, key: str, what: str, timeout: float) -> None:
        """Poll `ready` until true; fail at once if program `key` on `name` exited, or after
        `timeout` saying `what` did not happen (with the program's last log lines)."""
        deadline = time.monotonic() + timeout
        while not ready():
            proc = self.procs.get((name, key))
            if proc is not None and proc.poll() is not None:
                raise EdgebedError(f"{key} on {name} exited {proc.returncode}:\n{self.log(name, key)[-3000:]}")
            if time.monotonic() > deadline:
                raise EdgebedError(f"{what} within {timeout} s:\n{self.log(name, key)[-3000:]}")
            time.sleep(0.05)

    def wait_log(self, name: str, key: str, text: str, timeout: float = 15, start: int = 0) -> None:
        """Until `text` appears in the log after offset `start`."""
        self._until(
            lambda: text in self.log(name, key)[start:], name, key, f"{key} on {name} did not say {text!r}", timeout
        )

    def start_standin(self, name: str) -> None:
        port = 443 if name == BACKUP_NAME else self.backend_port
        tls = self.dir(name) / "tls"
        argv = [
            sys.executable,
            "-m",
            "testing.netns_tools",
            "standin",
            name,
            f"{tls}/tls.crt",
            f"{tls}/tls.key",
            str(port),
        ]
        start = len(self.log(name, "standin"))
        self.start(name, "standin", argv)
        self.wait_log(name, "standin", "ready", start=start)

    def start_solver(self, name: str) -> None:
        """A worker's stand-in for cert-manager's HTTP-01 solver behind the ingress's HTTP NodePort."""
        if self.acme_port is None:
            return
        start = len(self.log(name, "solver"))
        self.start(name, "solver", [sys.executable, "-m", "testing.netns_tools", "solver", name, str(self.acme_port)])
        self.wait_log(name, "solver", "ready", start=start)

    def start_pebble(self) -> None:
        """pebble-challtestsrv as pebble's DNS (every A query: the edge node), then pebble."""
        folder = self.dir("pebble")
        config = {
            "pebble": {
                "listenAddress": f"0.0.0.0:{PEBBLE_PORT}",
                "managementListenAddress": f"0.0.0.0:{PEBBLE_MANAGEMENT_PORT}",
                "certificate": str(folder / "tls/tls.crt"),
                "privateKey": str(folder / "tls/tls.key"),
                "httpPort": edge.PORTS["http"],
                "tlsPort": edge.PORTS["https"],
                "ocspResponderURL": "",
                "externalAccountBindingRequired": False,
            }
        }
        (folder / "pebble-config.json").write_text(json.dumps(config, indent=2))
        self.start(
            "pebble",
            "challtestsrv",
            [
                need("pebble-challtestsrv"),
                "-defaultIPv4",
                self.address,
                "-defaultIPv6",
                "",
                "-dns01",
                f"127.0.0.1:{DNS_PORT}",
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
                "-management",
                f"127.0.0.1:{CHALLTESTSRV_MANAGEMENT_PORT}",
            ],
        )
        self.wait_port("pebble", DNS_PORT, "challtestsrv", udp=True)
        self.wait_port("pebble", CHALLTESTSRV_MANAGEMENT_PORT, "challtestsrv")
        # deterministic and fast: no random sleeps before validation, no rejected nonces, and
        # no reuse of valid authorizations (a renewal validates again, as a failure must show)
        env = {"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0", "PEBBLE_AUTHZREUSE": "0"}
        argv = [need("pebble"), "-config", str(folder / "pebble-config.json"), "-dnsserver", f"127.0.0.1:{DNS_PORT}"]
        self.start("pebble", "pebble", argv, env=env)
        self.wait_port("pebble", PEBBLE_MANAGEMENT_PORT, "pebble")
        self.wait_port("pebble", PEBBLE_PORT, "pebble")
        self.pebble_root = self.client_curl(
            f"https://{self.es.pebble}:{PEBBLE_MANAGEMENT_PORT}/roots/0",
            "--cacert",
            str(self.dir("client") / "acme-ca.pem"),
        )

    def client_curl(self, url: str, *args: str) -> str:
        """curl from the client namespace; the body, or an EdgebedError."""
        ca = self.dir("client") / "acme-ca.pem"
        ca.parent.mkdir(parents=True, exist_ok=True)
        ca.write_text(self.es.acme_ca.cert)
        result = run(
            [
                "ip",
                "netns",
                "exec",
                self.ns("client"),
                "curl",
                "--silent",
                "--show-error",
                "--fail",
                "--max-time",
                "5",
                *args,
                url,
            ],
            timeout=15,
            check=False,
        )
        if result.returncode != 0:
            raise EdgebedError(f"curl {url}: exit {result.returncode}: {result.output}")
        return result.output

    def set_dns(self, address: str) -> None:
        """Where pebble-challtestsrv says every name is (the edge node, or elsewhere)."""
        body = json.dumps({"ip": address})
        run(
            [
                "ip",
                "netns",
                "exec",
                self.ns("pebble"),
                "curl",
                "--silent",
                "--fail",
                "--max-time",
                "5",
                "-d",
                body,
                f"http://127.0.0.1:{CHALLTESTSRV_MANAGEMENT_PORT}/set-default-ipv4",
            ],
            timeout=15,
        )

    def wait_port(self, name: str, port: int, key: str, *, udp: bool = False, timeout: float = 15) -> None:
        """Until something listens on `port` in machine `name`'s namespace."""
        flag = "-lun" if udp else "-ltn"

        def listening() -> bool:
            argv = ["ip", "netns", "exec", self.ns(name), "ss", "-H", flag, f"sport = :{port}"]
            return bool(run(argv, timeout=10).output.strip())

        self._until(listening, name, key, f"nothing listens on {port} in {name}", timeout)

    def start_haproxy(self) -> None:
        """As haproxy.service with the rendered drop-in: ExecStartPre= the placeholder, then
        Debian's command line."""
        run(in_place(self.root, edge.PATHS["placeholder"], netns=self.ns(self.edge.name)), timeout=30)
        argv = [need("haproxy"), *edge.HAPROXY_ARGS[1:], *fd_limit_args()]
        self.start(self.edge.name, "haproxy", argv)
        self.wait_port(self.edge.name, edge.PORTS["https"], "haproxy")
        self.wait_port(self.edge.name, edge.PORTS["http"], "haproxy")

    @property
    def haproxy_master(self) -> int:
        return int((self.root / edge.PATHS["pidfile"].lstrip("/")).read_text().split()[0])

    def haproxy_alive(self) -> bool:
        """The HAProxy we started runs, and the pid file names a live master."""
        if not self.running(self.edge.name, "haproxy"):
            return False
        try:
            os.kill(self.haproxy_master, 0)
        except (OSError, ValueError):
            return False
        return True

    def issue(self, *args: str, timeout: float = 180) -> Issuance:
        """The rendered issue.sh on the edge node, as its timer's service runs it."""
        t0 = time.monotonic()
        result = run(
            in_place(self.root, edge.PATHS["issue"], *args, netns=self.ns(self.edge.name)), timeout=timeout, check=False
        )
        return Issuance(result.returncode, result.output, time.monotonic() - t0)

    # --- observing -----------------------------------------------------------------------
    def admin(self, command: str) -> str:
        """A command on HAProxy's stats socket (a Unix socket: reachable by its path)."""
        path = self.root / edge.PATHS["stats_socket"].lstrip("/")
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(path))
            sock.sendall(command.encode() + b"\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        return data.decode(errors="replace")

    def server_stats(self, backend: str = "ingress") -> dict[str, dict[str, str]]:
        """A backend's servers: name -> their row of `show stat` (status, check_status...)."""
        text = self.admin("show stat").lstrip("# ")
        rows = csv.DictReader(io.StringIO(text))
        return {r["svname"]: r for r in rows if r["pxname"] == backend and r["svname"] not in ("FRONTEND", "BACKEND")}

    def server_states(self, backend: str = "ingress") -> dict[str, str]:
        """A backend's servers: name -> status (UP, DOWN, MAINT, "UP 1/3": going down...)."""
        return {name: row["status"] for name, row in self.server_stats(backend).items()}

    def wait_states(self, want: dict[str, str], timeout: float = 20, backend: str = "ingress") -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                states = self.server_states(backend)
            except OSError:
                states = {}
            if all(states.get(k) == v for k, v in want.items()):  # "UP 1/3" is not UP yet
                return
            if time.monotonic() > deadline:
                raise EdgebedError(f"HAProxy's servers after {timeout} s: {states}, expected {want}")
            time.sleep(0.05)

    def heal(self) -> None:
        """Every stand-in running, every server UP, the DNS pointing at the edge node."""
        for name in [w.name for w in self.workers] + ([BACKUP_NAME] if self.es.backup_ca else []):
            if not self.running(name, "standin"):
                self.start_standin(name)
        for worker in self.workers:
            if self.acme_port is not None and not self.running(worker.name, "solver"):
                self.start_solver(worker.name)
        self.set_dns(self.address)
        self.wait_states({name: "UP" for name in self.server_names()}, timeout=30)
        if self.acme_port is not None:
            self.wait_states({w.name: "UP" for w in self.workers}, timeout=30, backend="acme")

    def server_names(self) -> list[str]:
        return [w.name for w in self.workers] + ([BACKUP_NAME] if self.es.backup_ca else [])

    def served_cert(self, name: str | None = None) -> x509.Certificate:
        """The leaf certificate HAProxy serves for SNI `name` (default: the domain), read by
        openssl s_client in the client namespace."""
        result = run(
            [
                "ip",
                "netns",
                "exec",
                self.ns("client"),
                "openssl",
                "s_client",
                "-connect",
                f"{self.address}:443",
                "-servername",
                name or self.domain,
            ],
            input="",
            timeout=15,
            check=False,
        )
        match = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", result.output, re.S)
        if not match:
            raise EdgebedError(f"no certificate from {self.address}:443: {result.output[-2000:]}")
        return x509.load_pem_x509_certificate(match.group(0).encode())

    def live_cert(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate((self.live / "cert.pem").read_bytes())

    def wait_served(self, cert: x509.Certificate, timeout: float = 15) -> float:
        """Until HAProxy serves `cert`; the monotonic time it was first seen."""
        deadline = time.monotonic() + timeout
        while True:
            served = self.served_cert()
            if served == cert:
                return time.monotonic()
            if time.monotonic() > deadline:
                raise EdgebedError(f"HAProxy still serves {served.serial_number:x}, not {cert.serial_number:x}")
            time.sleep(0.05)

    def curl(self, url: str, *args: str) -> Result:
        """curl in the client namespace, the domain resolved to the edge node."""
        return run(
            [
                "ip",
                "netns",
                "exec",
                self.ns("client"),
                "curl",
                "--silent",
                "--show-error",
                "--max-time",
                "5",
                "--resolve",
                f"{self.domain}:80:{self.address}",
                "--resolve",
                f"{self.domain}:443:{self.address}",
                *args,
                url,
            ],
            timeout=15,
            check=False,
        )

    def pebble_root_file(self) -> Path:
        path = self.dir("client") / "pebble-root.pem"
        path.write_text(self.pebble_root)
        return path

    def load(self, *, verify: bool = True, threads: int = 4) -> LoadRun:
        """A steady load from the client on https://<domain>/ at the edge node (verified
        against pebble's root unless `verify` is false)."""
        cafile = str(self.pebble_root_file()) if verify else "-"
        proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                self.ns("client"),
                sys.executable,
                "-m",
                "testing.netns_tools",
                "load",
                self.domain,
                self.address,
                "443",
                cafile,
                str(threads),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            start_new_session=True,
        )
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != b"ready":
            _kill(proc)
            raise EdgebedError("the load loop did not start")
        return LoadRun(proc)

    @contextmanager
    def steady_load(self, *, verify: bool = True) -> Iterator[dict[str, Any]]:
        """A load for the duration of the block, which starts once every worker answered it;
        the dict holds its summary afterwards."""
        summary: dict[str, Any] = {}
        handle = self.load(verify=verify)
        try:
            handle.wait_for({f"ok {w.name}" for w in self.workers})
            yield summary
        finally:
            summary.update(handle.stop())


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()
