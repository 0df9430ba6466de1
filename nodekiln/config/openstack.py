"""The site file's `openstack:` section: where and how a site runs on an OpenStack cloud."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from nodekiln.config.model import Strict
from nodekiln.config.yamlsrc import PathKey

if TYPE_CHECKING:  # the site imports this module: no import back at run time
    from nodekiln.config.site import Site

Role = Literal["control-plane", "worker", "edge"]


class ImageSpec(Strict):
    name: str | None = Field(
        default=None,
        description="Glance image to boot (name or ID); default: the image `invoke upload-image` made from the newest build of this site",
    )
    visibility: Literal["private", "shared", "community", "public"] = "private"
    diskFormat: Literal["qcow2", "raw"] = Field(
        default="qcow2",
        description="what to store in Glance: raw is converted with qemu-img (Ceph-backed clouds boot raw without copying)",
    )
    hwDiskBus: Literal["virtio", "scsi", "ide", "sata"] = "virtio"
    firmware: Literal["bios", "uefi"] = Field(
        default="bios", description="uefi sets hw_firmware_type=uefi (nodekiln's disks boot either way)"
    )
    tags: list[str] = Field(default_factory=list, description="extra Glance tags")


class NetworkSpec(Strict):
    name: str | None = Field(default=None, description="Neutron network; default <site>-net")
    existing: bool = Field(
        default=False, description="use the network (and subnet) of that name instead of creating them"
    )
    subnet: str | None = Field(
        default=None,
        description="subnet; default <site>-subnet (with existing: the network's subnet whose CIDR is network.cidr)",
    )


class RouterSpec(Strict):
    create: bool = Field(default=False, description="create <site>-router between the site subnet and externalNetwork")
    name: str | None = None


class OpenStackSpec(Strict):
    """How the site is deployed on OpenStack by `invoke site-deploy`."""

    cloud: str | None = Field(default=None, description="clouds.yaml entry; default: $OS_CLOUD (or OS_* variables)")
    region: str | None = None
    image: ImageSpec = Field(default_factory=ImageSpec)
    flavors: dict[Role, str] = Field(
        description="Nova flavor per role, e.g. {control-plane: m1.large, worker: m1.xlarge, edge: m1.small}; "
        "edge is required when the site has an edge section"
    )
    nodeFlavors: dict[str, str] = Field(
        default_factory=dict, description="flavor of single nodes, by node name, over their role's"
    )
    keyName: str | None = Field(
        default=None, description="Nova key pair (the site's ssh keys reach the nodes through user-data anyway)"
    )
    network: NetworkSpec = Field(default_factory=NetworkSpec)
    router: RouterSpec = Field(default_factory=RouterSpec)
    externalNetwork: str | None = Field(
        default=None, description="external network for the router and the VIP's floating IP"
    )
    floatingIP: bool = Field(
        default=False, description="a floating IP for the endpoint VIP (needs externalNetwork and a router)"
    )
    edgeFloatingIP: bool = Field(
        default=True,
        description="a floating IP from externalNetwork on the edge's public address (edge.vip, or the single edge "
        "node's), whenever the site has an edge section and externalNetwork is set: the edge is the public entry; "
        "false when the edge is reached otherwise (the site network routed, your own NAT)",
    )
    configDrive: bool = Field(
        default=False, description="give nodes their user-data on a config drive instead of the metadata service"
    )
    serverGroupPolicy: Literal["soft-anti-affinity", "anti-affinity", "none"] = Field(
        default="soft-anti-affinity",
        description="placement of the control planes (hard anti-affinity needs one hypervisor each)",
    )
    availabilityZone: str | None = None
    parallelism: int = Field(default=8, ge=1, le=64, description="servers created at once")
    bootTimeout: int = Field(default=900, ge=10, description="seconds to wait for all servers to be ACTIVE")
    waitHealthz: bool = Field(
        default=True, description="after ACTIVE, wait for the endpoint's /healthz when it is reachable from here"
    )
    healthzTimeout: int = Field(default=900, ge=1)

    @model_validator(mode="after")
    def _needs(self) -> OpenStackSpec:
        if self.floatingIP and not self.externalNetwork:
            raise ValueError("floatingIP needs externalNetwork (the network the floating IP comes from)")
        if self.router.create and not self.externalNetwork:
            raise ValueError("router.create needs externalNetwork (the router's gateway)")
        if self.router.create and self.network.existing:
            raise ValueError("router.create with network.existing: attach the existing subnet to a router yourself")
        missing = {"control-plane", "worker"} - set(self.flavors)
        if missing:
            raise ValueError(f"flavors needs an entry for {', '.join(sorted(missing))}")
        return self


def check_openstack(site: Site) -> list[tuple[PathKey, str]]:
    """Rules of the openstack section that span the site (the edge section); (path, message) for each."""
    spec = site.openstack
    found: list[tuple[PathKey, str]] = []
    if spec is None:
        return found
    if site.edge is not None and "edge" not in spec.flavors:
        found.append(
            (
                ("openstack", "flavors"),
                "needs an entry for edge: the site has an edge section, and its nodes are servers too "
                "(e.g. edge: m1.small)",
            )
        )
    return found
