#!/usr/bin/env python3
"""A stand-in for `kubeadm init` and `kubeadm join`: the real kubeadm cannot be installed here.

It mirrors, from kubernetes/kubernetes (facts and references in nodekiln.contract):
- the phase workflow of cmd/kubeadm/app/cmd/init.go and join.go (newCmdInit/newCmdJoin): the
  top-level phases of the node's role and minor, in order, `--skip-phases` honoured (a non-empty
  flag replaces the configuration's skipPhases); a phase name this role and minor do not have
  is refused here (stricter than kubeadm, so a typo in nodekiln cannot pass unnoticed);
- flag and configuration validation: ValidateIgnorePreflightErrors
  (cmd/kubeadm/app/apis/kubeadm/validation/validation.go) on the merged flag + config lists;
  unknown flags are refused like cobra does;
- the preflight checks a node's own state decides (cmd/kubeadm/app/preflight/checks.go,
  RunInitNodeChecks/RunJoinNodeChecks): files that must not exist, an etcd data dir that must
  be empty, ports in use (a port counts as in use while the component that binds it would run:
  the kubelet once its config is written, a static pod once its manifest is there too);
- join's kubelet-start refusal when a Ready node of the same name exists
  (cmd/kubeadm/app/cmd/phases/join/kubelet.go, runKubeletStartJoinPhase);
- the idempotent etcd member addition (cmd/kubeadm/app/util/etcd/etcd.go, addMember);
- the hostPaths the kubelet creates for the control-plane static pods (DirectoryOrCreate,
  cmd/kubeadm/app/phases/controlplane/volumes.go; the kubelet's hostPath plugin fails the pod
  when it cannot create one), and from 1.33 wait-control-plane failing when a component's pod
  cannot start (WaitForAllControlPlaneComponents);
- the kubelet's flexvolume prober creating volumePluginDir (pkg/volume/flexvolume/probe.go),
  which only logs an error when it cannot.

Each phase writes the files nodekiln.contract says it leaves (their content is a marker, not
real certificates or kubeconfigs). The cluster's side (registered nodes, etcd members, the
uploaded ClusterConfiguration and KubeletConfiguration) lives in $NODEKILN_STANDIN_STATE.
$NODEKILN_STANDIN_MINOR is the kubeadm release (e.g. 31); $NODEKILN_STANDIN_FAIL=PHASE makes
that phase fail once, as a real one can (a timeout, an API error). Every call is appended to
$NODEKILN_STANDIN_STATE/calls.jsonl.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

import yaml

from nodekiln import contract

STATE = Path(os.environ["NODEKILN_STANDIN_STATE"])
MINOR = int(os.environ["NODEKILN_STANDIN_MINOR"])
FAIL = os.environ.get("NODEKILN_STANDIN_FAIL", "")
KUBELET_CONFIG = Path("/var/lib/kubelet/config.yaml")


class Refused(Exception):
    pass


def parse(argv: list[str]) -> tuple[str, dict[str, str]]:
    if not argv or argv[0] not in ("init", "join"):
        raise Refused(f"stand-in kubeadm: only init and join are modelled, got {argv[:1]}")
    flags: dict[str, str] = {}
    rest = argv[1:]
    i = 0
    while i < len(rest):
        arg = rest[i]
        if not arg.startswith("--"):
            raise Refused(f'unknown command {arg!r} for "kubeadm {argv[0]}"')
        name, eq, value = arg[2:].partition("=")
        if name not in ("config", "skip-phases", "ignore-preflight-errors", "v"):
            raise Refused(f"unknown flag: --{name}")
        if not eq:
            i += 1
            value = rest[i]
        flags[name] = value
        i += 1
    if "config" not in flags:
        raise Refused("the stand-in expects --config (nodekiln always passes it)")
    return argv[0], flags


def documents(path: str) -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all(Path(path).read_text()) if doc}


def write(path: str, text: str = "") -> None:
    file = Path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(text or f"written by the stand-in kubeadm 1.{MINOR}\n")


def running(manifest: str) -> bool:
    """A static pod runs when the kubelet runs and its manifest is there."""
    return KUBELET_CONFIG.exists() and Path(f"{contract.STATIC_POD_PATH}/{manifest}.yaml").exists()


def port_in_use(port: int) -> bool:
    if port == 10250:
        busy = KUBELET_CONFIG.exists()
    elif port in (6443, 10257, 10259):
        busy = running({6443: "kube-apiserver", 10257: "kube-controller-manager", 10259: "kube-scheduler"}[port])
    else:
        busy = running("etcd")
    if not busy:  # a real listener of something else counts too
        with socket.socket() as s:
            busy = s.connect_ex(("127.0.0.1", port)) == 0
    return busy


def fired(check: contract.Check) -> bool:
    if check.kind == "Port":
        return port_in_use(int(check.target))
    path = Path(check.target)
    if check.kind == "FileAvailable":
        return path.exists()
    return path.is_dir() and any(path.iterdir())


def preflight(role: str, ignore: list[str]) -> None:
    errors = [c.name for c in contract.preflight_checks(role) if fired(c)]
    shown = [e for e in errors if "all" not in ignore and e.lower() not in ignore]
    for name in errors:
        print(f"\t[{'ERROR' if name in shown else 'WARNING'} {name}]: stand-in check fired")
    if shown:
        raise Refused("error execution phase preflight: [preflight] Some fatal errors occurred")


def cluster(name: str) -> dict[str, Any]:
    file = STATE / "cluster" / f"{name}.yaml"
    if not file.exists():
        raise Refused(f"the cluster has no {name} yet (no control plane uploaded it)")
    return yaml.safe_load(file.read_text())


def start_pods(cluster_config: dict[str, Any]) -> list[str]:
    """The kubelet starting the control-plane static pods: their DirectoryOrCreate hostPaths."""
    broken = []
    for host_path in contract.control_plane_host_paths(
        cluster_config, existing=[d for d in contract.CA_CERTS_EXTRA_DIRS if Path(d).exists()]
    ):
        path = Path(host_path.path)
        if path.suffix == ".conf":  # FileOrCreate: kubeadm wrote them
            continue
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            broken.append(f"{host_path.component}: hostPath {path}: {exc.strerror}")
    return broken


def kubelet_starts(kubelet: dict[str, Any]) -> None:
    plugins = kubelet.get("volumePluginDir", contract.UPSTREAM_FLEX_VOLUME_DIR)
    try:
        Path(plugins).mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # the prober's Init error is logged, not fatal (pkg/volume/plugins.go)
        print(f'E "Error initializing dynamic plugin prober" err="error (re-)creating driver directory: {exc}"')


def run_phase(phase: contract.Phase, role: str, node: str, docs: dict[str, dict[str, Any]]) -> None:
    name = phase.name
    if name == "preflight":
        return
    if name == "kubelet-start" and role != "init" and (STATE / "nodes" / node).exists():
        raise Refused(
            f'error execution phase kubelet-start: a Node with name "{node}" and status "Ready" already exists '
            "in the cluster. You must delete the existing Node or change the name of this new joining Node"
        )
    if running("etcd"):  # etcd writes its data as soon as the kubelet starts its pod
        write(f"{contract.ETCD_DATA_DIR}/member/snap/db")
    if name == FAIL and not (STATE / f"failed-{name}").exists():
        (STATE / f"failed-{name}").write_text("")
        if name == "kubelet-start" and role != "init":
            for path in contract.KUBELET_FILES:  # written before the TLS bootstrap timed out
                write(path)
        raise Refused(f"error execution phase {name}: stand-in failure (as a timeout or an API error would)")
    if name == "kubelet-start":
        kubelet = docs.get("KubeletConfiguration") if role == "init" else cluster("kubelet-config")
        kubelet_starts(kubelet or {})
    if name == "wait-control-plane":
        config = docs["ClusterConfiguration"] if role == "init" else cluster("kubeadm-config")
        broken = start_pods(config)
        if broken and contract.RELEASES[MINOR].waits_for_all_components:
            raise Refused(
                "error execution phase wait-control-plane: a control plane component may not be healthy: "
                + "; ".join(broken)
            )
    if name in ("etcd-join", "control-plane-join") and role == "control-plane" and phase.leaves:
        members = STATE / "etcd-members"
        known = set(members.read_text().split()) if members.exists() else set()
        members.write_text("\n".join(sorted(known | {node})) + "\n")  # a known peer URL is taken as added
    if name == "upload-config":
        (STATE / "cluster").mkdir(parents=True, exist_ok=True)
        (STATE / "cluster" / "kubeadm-config.yaml").write_text(yaml.safe_dump(docs["ClusterConfiguration"]))
        (STATE / "cluster" / "kubelet-config.yaml").write_text(yaml.safe_dump(docs.get("KubeletConfiguration", {})))
    for path in contract.leaves(phase, MINOR):
        write(path)
    if contract.KUBELET_CONF in contract.leaves(phase, MINOR):  # the TLS bootstrap registered the node
        (STATE / "nodes").mkdir(parents=True, exist_ok=True)
        (STATE / "nodes" / node).write_text("Ready\n")


def main(argv: list[str]) -> int:
    STATE.mkdir(parents=True, exist_ok=True)
    call: dict[str, Any] = {"argv": argv, "minor": MINOR}
    try:
        command, flags = parse(argv)
        docs = documents(flags["config"])
        own = docs["InitConfiguration" if command == "init" else "JoinConfiguration"]
        role = "init" if command == "init" else ("control-plane" if own.get("controlPlane") else "worker")
        call["role"] = role
        registration = own.get("nodeRegistration", {})
        ignore = contract.check_ignore_list(
            [f for f in flags.get("ignore-preflight-errors", "").split(",") if f],
            registration.get("ignorePreflightErrors", []),
        )
        if isinstance(ignore, str):
            raise Refused(ignore)
        skip = [s for s in flags.get("skip-phases", "").split(",") if s] or list(own.get("skipPhases", []))
        known = {p.name for p in contract.phases(role, MINOR)}
        unknown = sorted(set(skip) - known)
        if unknown:
            raise Refused(
                f"stand-in kubeadm: --skip-phases names {unknown}, not phases of {command} for a {role} at 1.{MINOR}"
            )
        call["skipped"] = skip
        for phase in contract.phases(role, MINOR):
            if phase.name in skip:
                print(f"[{phase.name}] skipped")
                continue
            if phase.name == "preflight":
                preflight(role, ignore)
            run_phase(phase, role, registration.get("name", "node"), docs)
            print(f"[{phase.name}] done")
            call.setdefault("ran", []).append(phase.name)
        call["exit"] = 0
        return 0
    except Refused as exc:
        print(exc, file=sys.stderr)
        call["exit"] = 1
        call["error"] = str(exc)
        return 1
    finally:
        with open(STATE / "calls.jsonl", "a") as log:
            log.write(json.dumps(call) + "\n")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
