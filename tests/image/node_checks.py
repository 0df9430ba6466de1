"""What a finished node image must look like once booted, whichever backend built it.

Stated apart from how the image is built (like image-builder's goss specs): the
diskimage-builder and Packer image tests run these same functions on their booted VM
(`nodekiln.qemu.VM`) and its testinfra host.
"""

from __future__ import annotations

import json
from typing import Any

IMMUTABLE_SERVICES = ("containerd", "ssh", "systemd-networkd", "chrony")
REQUIRED_PACKAGES = ("containerd", "runc", "nftables", "haproxy", "keepalived", "cloud-init", "openssh-server",
                     "chrony", "conntrack")


def check_immutable_layout(host: Any) -> None:
    """Read-only root, /var on the data partition, overlay /etc, tmpfs /tmp, homes on /var."""
    root = host.mount_point("/")
    assert "ro" in root.options, f"/ is mounted {root.options}"
    var = host.mount_point("/var")
    assert var.filesystem == "ext4" and "rw" in var.options
    assert host.run("blkid -s LABEL -o value $(findmnt -no SOURCE /var)").stdout.strip() == "nodekiln-data"
    assert host.mount_point("/etc").filesystem == "overlay"
    assert host.mount_point("/tmp").filesystem == "tmpfs"
    for link in ("/root", "/home", "/opt"):
        assert host.file(link).is_symlink and host.file(link).linked_to == f"/var{link}"
    assert host.run("sudo touch /usr/nodekiln-write-test").rc != 0, "the root file system must refuse writes"


def check_kubernetes_host(host: Any) -> None:
    """Packages, services, kernel modules and sysctls Kubernetes needs; eth0 naming."""
    for package in REQUIRED_PACKAGES:
        assert host.package(package).is_installed, package
    for service in IMMUTABLE_SERVICES:
        assert host.service(service).is_running, service
    for module in ("overlay", "br_netfilter"):
        assert host.run(f"grep -qw ^{module} /proc/modules").rc == 0, module
    assert host.sysctl("net.ipv4.ip_forward") == 1
    assert host.sysctl("net.bridge.bridge-nf-call-iptables") == 1
    assert host.interface("eth0").exists, "NICs are named ethN (net.ifnames=0)"
    failed = host.run("systemctl --failed --no-legend --plain").stdout.strip()
    assert failed == "", f"failed units: {failed}"


def check_manifest(host: Any, beside: dict[str, Any]) -> None:
    """The manifest inside the image agrees with the one beside the artifact."""
    inside = json.loads(host.file("/usr/share/nodekiln/manifest.json").content_string)
    assert inside["inputHash"] == beside["inputHash"]
    assert {k: beside.get(k) for k in inside} == inside


def check_no_build_access(host: Any, build_markers: tuple[str, ...] = ("nodekiln-packer-build",)) -> None:
    """No SSH host keys baked in (they are this boot's), no build key or build user left."""
    keys = host.run("sudo cat /var/root/.ssh/authorized_keys 2>/dev/null").stdout
    for marker in build_markers:
        assert marker not in keys
    assert host.run("ls /etc/ssh/ssh_host_*_key").rc == 0  # made at this first boot


def check_node(host: Any, beside: dict[str, Any]) -> None:
    check_immutable_layout(host)
    check_kubernetes_host(host)
    check_manifest(host, beside)
    check_no_build_access(host)
