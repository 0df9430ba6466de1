"""The built node image, booted: what every node of every site can rely on.

One UEFI (q35 + OVMF) boot carries most checks and then a reboot; legacy BIOS (pc machine) is
booted by tests/image/test_edge_boot.py (an edge node of the same image).
"""

from __future__ import annotations

import json
import time

import pytest

from nodekiln import contract
from nodekiln.images import manifest as manifest_mod

from .oci_archive import PRELOAD_IMAGE

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


def test_manifest_beside_the_image_describes_it(node_image):
    beside = json.loads(node_image.manifest.read_text())
    qcow2 = next(a for a in beside["artifacts"] if a["format"] == "qcow2")
    assert qcow2["file"] == node_image.path.name
    assert qcow2["size"] == node_image.path.stat().st_size
    assert qcow2["sha256"] == manifest_mod.sha256_file(node_image.path)
    assert node_image.path.name.startswith(f"{beside['site']}-{beside['inputHash'][:16]}")
    assert beside["packages"]["containerd"] and beside["tools"]["diskimage-builder"]
    assert {s["name"] for s in beside["bakeSteps"]} >= {"10-kernel", "20-containerd", "70-immutable"}


def test_containerd_runs_and_answers(host):
    assert host.service("containerd").is_running
    assert host.service("containerd").is_enabled
    out = host.check_output("sudo ctr version")
    assert "Server:" in out and "Version:" in out


def test_containerd_config(host, test_site):
    config = host.file("/etc/containerd/config.toml").content_string
    assert "SystemdCgroup = true" in config
    # kubeadm's pause image for the site's minor (nodekiln.contract.PAUSE_REF)
    assert f'sandbox_image = "{contract.pause_image(test_site.kubernetes.version)}"' in config
    assert 'config_path = "/etc/containerd/certs.d"' in config
    assert host.file("/usr/sbin/runc").exists or host.file("/usr/bin/runc").exists
    assert host.file("/opt/cni/bin/bridge").exists  # linked from /usr/lib/cni at boot


def test_kernel_modules_and_sysctls(host):
    modules = host.check_output("cat /proc/modules")
    assert "overlay " in modules and "br_netfilter " in modules
    for key, value in (
        ("net.bridge.bridge-nf-call-iptables", "1"),
        ("net.ipv4.ip_forward", "1"),
        ("net.bridge.bridge-nf-call-ip6tables", "1"),
    ):
        assert host.check_output(f"cat /proc/sys/{key.replace('.', '/')}") == value, key


def test_one_kernel_of_the_recipe_flavour_and_extra_packages(host, node_image):
    recipe = json.loads(node_image.manifest.read_text())["inputs"]["recipe"]
    release = host.check_output("uname -r")
    assert release.endswith("-cloud-amd64") == (recipe["kernel"] == "cloud"), release
    assert [f for f in host.check_output("ls /boot").split() if f.startswith("vmlinuz-")] == [f"vmlinuz-{release}"]
    if node_image.result is not None:  # the example site's own image lists some
        assert recipe["extraPackages"]
    for pkg in recipe["extraPackages"]:
        assert host.package(pkg).is_installed, pkg


def test_dns_goes_through_systemd_resolved(host):
    """The bake steps borrow the build host's resolver; the image keeps resolved's stub."""
    resolv = host.file("/etc/resolv.conf")
    assert resolv.is_symlink and resolv.linked_to.endswith("/stub-resolv.conf")
    assert "nameserver 127.0.0.53" in resolv.content_string


def test_swap_is_off(host):
    assert host.check_output("cat /proc/swaps").strip().splitlines()[1:] == []


def test_nftables_site_ruleset_loaded(host, test_site):
    """The image enables nftables; the first-boot unit then loads the node's rendered ruleset
    (it runs right after cloud-init, so give it a moment)."""
    assert host.service("nftables").is_enabled
    deadline = time.monotonic() + 120
    while True:
        rules = host.check_output("sudo nft list ruleset")
        if "set control_planes" in rules or time.monotonic() > deadline:
            break
        time.sleep(3)
    assert "table inet nodekiln" in rules and "policy drop" in rules
    assert "set control_planes" in rules and str(test_site.init_node.address) in rules, (
        "the site's ruleset was not applied"
    )


def test_ssh_is_key_only(host):
    config = host.check_output("sudo sshd -T")
    assert "passwordauthentication no" in config
    assert "kbdinteractiveauthentication no" in config
    assert "permitrootlogin without-password" in config or "permitrootlogin prohibit-password" in config


def test_ssh_rejects_passwords(uefi_vm):
    import paramiko

    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    with pytest.raises(paramiko.AuthenticationException):
        client.connect(
            "127.0.0.1",
            port=uefi_vm.ssh_port,
            username=uefi_vm.user,
            password="debian",
            allow_agent=False,
            look_for_keys=False,
            timeout=20,
        )
    client.close()


def test_root_is_read_only_and_var_is_data(host):
    assert host.run("sudo touch /usr/x").rc != 0
    assert "ro" in host.mount_point("/").options
    var = host.mount_point("/var")
    assert var.filesystem == "ext4" and "rw" in var.options
    assert host.mount_point("/etc").filesystem == "overlay"
    assert host.mount_point("/tmp").filesystem == "tmpfs"
    for link in ("/root", "/home", "/opt"):
        assert host.file(link).is_symlink and host.file(link).linked_to == f"/var{link}"
    assert host.run("sudo touch /var/lib/nodekiln-test && sudo touch /etc/nodekiln-test").rc == 0
    root_line = next(
        line.split() for line in host.file("/etc/fstab").content_string.splitlines() if line.split()[1:2] == ["/"]
    )
    assert "ro" in root_line[3].split(",")


def test_kernel_line_and_interface_names(host):
    cmdline = host.file("/proc/cmdline").content_string
    assert " ro " in f" {cmdline} " and "net.ifnames=0" in cmdline
    assert host.interface("eth0").exists


def test_hostname_and_static_address(host, test_site):
    node = test_site.nodes[0]
    assert host.check_output("hostname") == node.name
    assert str(node.address) in host.interface("eth0").addresses
    assert f"default via {test_site.network.gateway}" in host.check_output("ip route")


def test_boot_services_are_trimmed(host):
    for unit in ("keepalived", "haproxy"):
        assert host.package(unit).is_installed
        assert not host.service(unit).is_enabled and not host.service(unit).is_running
    assert host.package("chrony").is_installed and host.service("chrony").is_running
    assert host.run("systemctl is-enabled apt-daily.timer").stdout.strip() == "masked"
    assert not host.package("unattended-upgrades").is_installed
    failed = host.check_output("systemctl --failed --no-legend --plain").strip().splitlines()
    if not host.exists("kubeadm"):
        # The test image bakes kubectl and helm only (no kubeadm can be had here): the site's
        # first-boot unit applies the firewall, then must stop and say why -- that one failure
        # is expected, and its reason is checked.
        bootstrap = [line for line in failed if line.startswith("nodekiln-bootstrap.service")]
        assert bootstrap, "nodekiln-bootstrap.service should fail without kubeadm"
        journal = host.check_output("sudo journalctl -b -u nodekiln-bootstrap.service --no-pager")
        assert "kubeadm is not in this image" in journal, journal[-2000:]
        failed = [line for line in failed if line not in bootstrap]
    assert failed == [], failed
    datasources = host.file("/etc/cloud/cloud.cfg.d/90-nodekiln.cfg").content_string
    assert "NoCloud" in datasources and "ConfigDrive" in datasources and "OpenStack" in datasources


def test_manifest_inside_matches_the_one_beside(host, node_image):
    inside = json.loads(host.file(f"/{manifest_mod.IMAGE_MANIFEST_PATH}").content_string)
    beside = json.loads(node_image.manifest.read_text())
    assert manifest_mod.agree(inside, beside) == []
    assert "artifacts" not in inside and inside["inputHash"] == beside["inputHash"]
    installed = host.check_output("dpkg-query -W -f '${Package} ${Version}\\n' containerd")
    assert installed.split()[1] == inside["packages"]["containerd"]


def test_local_source_binaries_present_and_run(host, node_image):
    if not node_image.local_binaries:
        pytest.skip("image built elsewhere: its local source is unknown")
    assert "Client Version: v1." in host.check_output("kubectl version --client")
    assert host.check_output("helm version --short").startswith("v3.")
    report = host.file("/usr/share/nodekiln/kubernetes-source.txt").content_string
    assert "missing: kubeadm kubelet crictl" in report  # what the npm layer does not provide


def test_local_source_image_archives_are_imported_into_containerd(host, node_image):
    if not node_image.local_binaries:
        pytest.skip("image built elsewhere: its local source is unknown")
    assert host.file("/usr/share/nodekiln/images/preload-test.oci.tar").exists
    assert host.file("/var/lib/nodekiln/images-imported").exists
    assert PRELOAD_IMAGE in host.check_output("sudo ctr -n k8s.io images ls -q").split()


def upstream_host_paths(site, exists) -> list[contract.HostPath]:
    """What kubeadm's static pods, the kubelet and calico-node would mount, create or write on this
    site's nodes, derived from the rendered configuration as upstream derives it."""
    import yaml

    from nodekiln.addons.plan import build_plan
    from nodekiln.bootstrap.render import kubeadm_config
    from nodekiln.secrets import generate

    docs = {d["kind"]: d for d in yaml.safe_load_all(kubeadm_config(site, generate(), site.init_node)) if d}
    installation = yaml.safe_load(build_plan(site).files["calico.values.yaml"][0])["installation"]
    return [
        *contract.control_plane_host_paths(
            docs["ClusterConfiguration"], existing=[d for d in contract.CA_CERTS_EXTRA_DIRS if exists(d)]
        ),
        *contract.kubelet_host_paths(docs["KubeletConfiguration"]),
        *contract.calico_host_paths(installation),
    ]


def test_upstream_host_paths_exist_or_are_writable(host, test_site):
    """The booted image against nodekiln.contract: every hostPath kubeadm gives the control-plane
    pods (DirectoryOrCreate: the kubelet creates a missing one, and the pod never starts when it
    cannot -- cmd/kubeadm/app/phases/controlplane/volumes.go), every directory the kubelet and
    Calico write, exists or can be made, and the written ones take a file."""
    failures = []
    for hp in upstream_host_paths(test_site, lambda d: host.file(d).exists):
        target = hp.path if not hp.path.endswith((".conf", ".lock")) else hp.path.rsplit("/", 1)[0]
        make = f"sudo sh -c '[ -e {target} ] || mkdir -p {target}'"
        if hp.need == "writable":
            make += f" && sudo touch {target}/.nodekiln-probe && sudo rm {target}/.nodekiln-probe"
        result = host.run(make)
        if result.rc != 0:
            failures.append(f"{hp.path} ({hp.component}; {hp.ref}): {result.stderr.strip()}")
    assert failures == []
    # and the check can fail: kubeadm's default flexvolume dir cannot be made on this root
    assert host.run(f"sudo mkdir -p {contract.UPSTREAM_FLEX_VOLUME_DIR}").rc != 0


def test_mounts_that_pods_propagate_into_are_shared(host):
    """calico-csi mounts the kubelet's root with Bidirectional propagation (tigera/operator
    pkg/render/csi.go) and containerd refuses it unless the host mount is shared (containerd
    internal/cri/opts/spec_linux_opts.go, ensureShared). /var is mounted by the initramfs, before
    systemd makes the tree shared: check that it ends up shared all the same."""
    for path in contract.SHARED_MOUNTS:
        propagation = host.check_output(f"findmnt -n -o PROPAGATION --target {path}")
        assert propagation.startswith("shared"), (path, propagation)
    assert host.file(contract.BPFFS).is_directory  # calico-node's bpffs volume (type Directory)


def test_iscsi_initiator_name_is_this_nodes_own(host, node_image):
    """Generated at first boot (nodekiln-iscsi-initiatorname.service), never baked: every node
    of an image would share a baked one, and iSCSI volume attachment (Cinder) needs unique names."""
    assert host.service("nodekiln-iscsi-initiatorname").is_enabled
    assert host.file("/etc/iscsi/initiatorname.iscsi").mode == 0o600
    content = host.check_output("sudo cat /etc/iscsi/initiatorname.iscsi")
    lines = [line for line in content.splitlines() if line.startswith("InitiatorName=")]
    assert len(lines) == 1 and lines[0].startswith("InitiatorName=iqn.1993-08.org.debian:01:"), lines
    # written on this node: in /etc's overlay upper layer (on /var), not in the image's root
    assert host.check_output("sudo cat /var/lib/nodekiln/etc-overlay/upper/iscsi/initiatorname.iscsi") == content
    assert not _image_has(node_image.path, "/etc/iscsi/initiatorname.iscsi")


def _image_has(image, path: str) -> bool:
    """Whether the image's root file system holds `path` (read with debugfs, nothing mounted)."""
    import subprocess
    import tempfile
    from pathlib import Path

    from nodekiln.images import compare

    with tempfile.TemporaryDirectory(dir=image.parent) as tmp:
        raw = Path(tmp) / "disk.raw"
        subprocess.run(["qemu-img", "convert", "-O", "raw", str(image), str(raw)], check=True)
        root = next(r for r in compare.partitions(raw) if r.name == "root")
        fs = compare.extract(raw, root, Path(tmp) / "root.img")
        out = subprocess.run(["debugfs", "-R", f"stat {path}", str(fs)], capture_output=True, text=True)
        return "Inode:" in out.stdout


def test_var_survives_a_reboot(uefi_vm, host):
    """After the other UEFI checks: reboots the shared UEFI VM."""
    assert host.check_output("test -d /sys/firmware/efi && echo uefi || echo bios") == "uefi"
    host.run_expect([0], "echo kept | sudo tee /var/lib/nodekiln-reboot-check")
    host.run_expect([0], "echo kept | sudo tee /etc/nodekiln-reboot-check")
    uefi_vm.reboot()
    after = uefi_vm.testinfra_host()
    assert after.file("/var/lib/nodekiln-reboot-check").content_string.strip() == "kept"
    assert after.file("/etc/nodekiln-reboot-check").content_string.strip() == "kept"
    assert after.run("sudo touch /usr/x").rc != 0
    assert after.service("containerd").is_running


def test_the_sbom_beside_the_image_is_valid_spdx_and_lists_the_manifest_s_packages(node_image, test_site):
    """spdx-tools validates the SBOM beside the built image; it lists every package of the
    manifest, is the one inside the image, and the whole build verifies against the builder key."""
    from spdx_tools.spdx.parser.parse_anything import parse_file
    from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

    from nodekiln.images import sbom
    from nodekiln.images.verify import companions, verify_artifact

    beside = companions(node_image.path, node_image.manifest).sbom
    assert [m.validation_message for m in validate_full_spdx_document(parse_file(str(beside)))] == []
    doc = json.loads(beside.read_text())
    manifest = json.loads(node_image.manifest.read_text())
    assert sbom.deb_package_count(doc) == len(manifest["packages"])
    assert doc["documentNamespace"].endswith("/" + manifest["inputHash"])
    if node_image.result is not None:  # built by this session with the test site's builder key
        assert verify_artifact(test_site.directory, test_site.name, node_image.path).packages == len(
            manifest["packages"]
        )
