"""bootstrap.sh as the state machine it is: the rendered script and files, run in a namespace laid
out like a node, against a stand-in kubeadm that writes what each real phase writes and refuses
what the real one refuses (tests/bootstrap/kubeadm_standin.py names the upstream code).

The upstream facts relied on (nodekiln.contract, with their references):
- kubeadm rejects `all` beside named checks in the merged ignore lists
  (kubernetes/kubernetes cmd/kubeadm/app/apis/kubeadm/validation/validation.go,
  ValidateIgnorePreflightErrors);
- a rerun's preflight fails on the first attempt's files and ports (cmd/kubeadm/app/preflight/
  checks.go, RunInitNodeChecks/RunJoinNodeChecks), so a rerun skips that phase;
- kubelet.conf is written by init's kubeconfig phase and by join's TLS bootstrap, before the
  node is finished (cmd/kubeadm/app/phases/kubeconfig/kubeconfig.go; cmd/kubeadm/app/cmd/phases/
  join/kubelet.go), so it marks nothing done;
- join's kubelet-start refuses when the node is registered already (runKubeletStartJoinPhase);
- from 1.33 a joining control plane adds its etcd member in etcd-join, before
  kubelet-wait-bootstrap (cmd/kubeadm/app/cmd/phases/join/controlplanejoin.go).
"""

from __future__ import annotations

import os
import shutil

import pytest

from nodekiln import contract
from nodekiln.bootstrap.render import kubeadm_config, node_files
from nodekiln.config.site import load_site
from nodekiln.secrets import SecretStore

from .harness import Node, seed_cluster

pytestmark = pytest.mark.tools
VERSIONS = {31: "1.31.4", 33: "1.33.2", 35: "1.35.0"}


@pytest.fixture
def node(site_file, tmp_path):
    """node(name, minor) -> a fresh Node with that node's rendered files for a site at 1.<minor>."""
    if os.geteuid() != 0:
        pytest.fail("the node namespace needs root (mount and network namespaces, overlayfs, nft)", pytrace=False)
    if shutil.which("nft") is None and not os.path.exists("/usr/sbin/nft"):
        pytest.fail("nft is missing: apt-get install -y nftables", pytrace=False)

    def make(name: str, minor: int, cluster=None) -> Node:
        site = load_site(site_file(lambda doc: doc["kubernetes"].update(version=VERSIONS[minor])))
        secrets, _ = SecretStore(site.directory, site.name).ensure()
        target = next(n for n in site.nodes if n.name == name)
        made = Node(tmp_path / name, node_files(site, secrets, target), minor, cluster)
        if name != site.init_node.name:
            seed_cluster(made.state, kubeadm_config(site, secrets, site.init_node))
        return made

    return make


def assert_finished(node: Node, role: str) -> None:
    assert node.done
    missing = [p for p in contract.done_markers(role, node.minor) if not node.exists(p)]
    assert missing == []


def never_all_beside_named(node: Node) -> None:
    for call in node.calls():
        assert "don't specify individual checks" not in call.get("error", ""), call


@pytest.mark.parametrize("minor", [31, 35])
def test_init_that_fails_at_wait_control_plane_completes_on_the_rerun(node, minor):
    master = node("master01", minor)
    first = master.boot(fail="wait-control-plane")
    assert first.returncode != 0 and not master.done, first.output
    assert master.exists(contract.KUBELET_CONF)  # written long before the end: no marker of success

    second = master.boot()
    assert second.returncode == 0, second.output
    first_call, rerun = master.calls()
    assert first_call["skipped"] == [] and rerun["skipped"] == ["preflight"]
    assert "wait-control-plane" in rerun["ran"] and "bootstrap-token" in rerun["ran"]  # the phases that had not run
    assert_finished(master, "init")
    never_all_beside_named(master)

    third = master.boot()
    assert third.returncode == 0 and "nothing to do" in third.output
    assert len(master.calls()) == 2


@pytest.mark.parametrize("minor", [31, 33, 35])
def test_control_plane_join_that_fails_adding_its_etcd_member_is_not_done(node, minor):
    etcd_phase = "control-plane-join" if minor < 33 else "etcd-join"
    master = node("master02", minor)
    first = master.boot(fail=etcd_phase)
    assert first.returncode != 0 and not master.done, first.output
    # before 1.33 the TLS bootstrap finished first: kubelet.conf is there, the node is not done
    assert master.exists(contract.KUBELET_CONF) == (minor < 33)

    second = master.boot()
    assert second.returncode == 0, second.output
    rerun = master.calls()[-1]
    assert etcd_phase in rerun["ran"]
    # a rerun must not run kubelet-start once the node registered (kubeadm refuses it)
    assert ("kubelet-start" in rerun["skipped"]) == (minor < 33)
    assert (master.state / "etcd-members").read_text().split() == ["master02"]
    assert_finished(master, "control-plane")
    never_all_beside_named(master)


def test_worker_whose_tls_bootstrap_timed_out_joins_on_the_rerun(node):
    worker = node("worker01", 31)
    first = worker.boot(fail="kubelet-start")
    assert first.returncode != 0 and not worker.done and not worker.exists(contract.KUBELET_CONF)
    second = worker.boot()
    assert second.returncode == 0, second.output
    assert worker.calls()[-1]["skipped"] == ["preflight"]  # kubelet-start again: nothing registered
    assert_finished(worker, "worker")


def test_first_attempts_pass_preflight_with_the_preplaced_files_and_no_ignores(node):
    """The keepalived and HAProxy manifests nodekiln places trip no check (PREFLIGHT_CHECKS)."""
    for name in ("master01", "master02", "worker01"):
        n = node(name, 35)
        assert n.exists("/etc/kubernetes/manifests/haproxy.yaml") == name.startswith("master")
        result = n.boot()
        assert result.returncode == 0, result.output
        assert "WARNING" not in result.output and "ignore-preflight-errors" not in " ".join(n.calls()[0]["argv"])


def test_the_first_attempt_loads_the_firewall_for_real(node):
    n = node("worker01", 31)
    result = n.boot()
    assert result.returncode == 0, result.output
    assert "applying the worker firewall" in result.output


# -- the stand-in itself refuses what kubeadm refuses (otherwise the tests above prove nothing) --


def test_standin_refuses_all_beside_named_checks(node):
    master = node("master01", 31)
    master.stubs.joinpath("kubeadm").write_text(
        master.stubs.joinpath("kubeadm").read_text().replace('"$@"', '"$@" --ignore-preflight-errors=all')
    )
    config = master.path("/etc/nodekiln/kubeadm.yaml")
    config.write_text(
        config.read_text().replace(
            "  taints:", "  ignorePreflightErrors: [DirAvailable--etc-kubernetes-manifests]\n  taints:", 1
        )
    )
    result = master.boot()
    assert result.returncode != 0 and not master.done
    assert "don't specify individual checks if 'all' is used" in master.calls()[0]["error"]


def test_standin_preflight_fails_a_rerun_that_does_not_skip_it(node):
    master = node("master01", 31)
    assert master.boot(fail="wait-control-plane").returncode != 0
    (master.path("/var/lib/nodekiln/bootstrap.started")).unlink()  # pretend it is a first attempt
    result = master.boot()
    assert result.returncode != 0
    assert "[ERROR FileAvailable--etc-kubernetes-manifests-kube-apiserver.yaml]" in result.output
    assert "[ERROR Port-10250]" in result.output and "[ERROR DirAvailable--var-lib-etcd]" in result.output


def test_standin_refuses_kubelet_start_for_a_registered_node(node):
    worker = node("worker01", 31)
    assert worker.boot().returncode == 0
    worker.path("/var/lib/nodekiln/bootstrap.done").unlink()
    env_file = worker.path("/etc/nodekiln/bootstrap.env")
    env_file.write_text(
        env_file.read_text().replace(
            'RERUN_SKIP_WHEN_DONE="kubelet-start=/etc/kubernetes/kubelet.conf"', 'RERUN_SKIP_WHEN_DONE=""'
        )
    )
    result = worker.boot()
    assert result.returncode != 0 and 'a Node with name "worker01" and status "Ready" already exists' in result.output


@pytest.mark.parametrize("minor, fails", [(31, False), (35, True)])
def test_standin_controller_manager_needs_a_writable_flexvolume_dir(node, minor, fails):
    """With kubeadm's default flex-volume-plugin-dir under the read-only /usr the kubelet cannot
    create the hostPath; from 1.33 init then fails waiting for kube-controller-manager."""
    master = node("master01", minor)
    config = master.path("/etc/nodekiln/kubeadm.yaml")
    text = config.read_text()
    assert contract.FLEX_VOLUME_DIR in text
    config.write_text(
        text.replace(
            f'value: "{contract.FLEX_VOLUME_DIR}"', f'value: "{contract.UPSTREAM_FLEX_VOLUME_DIR}"', 1
        ).replace("- name: flex-volume-plugin-dir", "- name: profiling", 1)
    )
    result = master.boot()
    assert (result.returncode != 0) == fails, result.output
    if fails:
        assert "hostPath /usr/libexec/kubernetes/kubelet-plugins/volume/exec: Read-only file system" in result.output
