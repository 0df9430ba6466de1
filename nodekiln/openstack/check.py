"""What can be checked before anything is written: flavors, image, networks, key pair, user-data size, quotas.

One line per problem, naming the resource and the site field. What the checks read (flavors,
the image, the external network) is recorded in the observed state: the plan's server lines
and converge use it.
"""

from __future__ import annotations

from ipaddress import IPv4Network
from typing import TYPE_CHECKING, cast

from nodekiln.openstack.actions import CreatePort, CreateServer, Plan
from nodekiln.openstack.cloud import OpenStackError, about
from nodekiln.openstack.images import image_name, load_manifest, newest_artifact
from nodekiln.openstack.resources import Names, flavor_of
from nodekiln.openstack.userdata import NOVA_USER_DATA_LIMIT

if TYPE_CHECKING:
    from pathlib import Path

    from openstack.connection import Connection

    from nodekiln.config.site import Site
    from nodekiln.openstack.observe import Observed


def image_ref(site: Site, build_dir: Path) -> str:
    """The image the servers boot: the site's, else the newest build's (by content hash)."""
    spec = site.openstack
    assert spec is not None
    if spec.image.name:
        return spec.image.name
    _, manifest = newest_artifact(site, build_dir)
    return image_name(load_manifest(manifest)["inputHash"])


def check(
    conn: Connection,
    site: Site,
    names: Names,
    st: Observed,
    plan: Plan,
    build_dir: Path,
    user_data: dict[str, bytes],
) -> list[str]:
    """Up-front checks: one line per problem, naming the resource and the site field."""
    spec = site.openstack
    assert spec is not None
    cloud = spec.cloud or "the cloud"
    problems: list[str] = []
    with about("reading flavors"):
        for found in conn.compute.flavors(details=True):
            st.flavors[found.name] = found
            st.flavors[found.id] = found
    wanted: dict[str, str] = {}
    for role, flavor in spec.flavors.items():
        wanted.setdefault(flavor, f"openstack.flavors.{role}")
    for node, flavor in spec.nodeFlavors.items():
        wanted.setdefault(flavor, f"openstack.nodeFlavors.{node}")
        if node not in {n.name for n in site.machines}:
            problems.append(f"openstack.nodeFlavors.{node}: the site has no node {node}")
    for flavor, where in wanted.items():
        if flavor not in st.flavors:
            known = ", ".join(sorted({f.name for f in st.flavors.values()})[:12])
            problems.append(f"{where}: flavor {flavor!r} does not exist in {cloud} (it has: {known})")
    try:
        ref = image_ref(site, build_dir)
    except OpenStackError as exc:
        problems.append(f"openstack.image.name: {exc}")
    else:
        with about(f"image {ref}: reading"):
            st.image = conn.image.find_image(ref)
        if st.image is None:
            problems.append(f"openstack.image: image {ref!r} is not in Glance of {cloud}: run `invoke upload-image`")
        elif st.image.status != "active":
            problems.append(
                f"openstack.image: image {ref!r} is {st.image.status}, not active: run `invoke upload-image` again"
            )
    if spec.network.existing:
        if st.network is None:
            problems.append(f"openstack.network.name: network {names.network!r} does not exist in {cloud}")
        elif st.subnet is None:
            problems.append(
                f"openstack.network.subnet: network {names.network!r} has no subnet {names.subnet if spec.network.subnet else str(site.network.cidr)}"
            )
        else:
            cidr = IPv4Network(st.subnet.cidr)
            for n in site.machines:
                if n.address not in cidr:
                    where = "edge.nodes" if n.role == "edge" else "nodes"
                    problems.append(
                        f"{where}.{n.name}.address: {n.address} is outside subnet {st.subnet.name} ({cidr})"
                    )
    if spec.externalNetwork:
        with about(f"external network {spec.externalNetwork}: reading"):
            st.external = conn.network.find_network(spec.externalNetwork)
        if st.external is None:
            problems.append(f"openstack.externalNetwork: network {spec.externalNetwork!r} does not exist in {cloud}")
        elif not st.external.is_router_external:
            problems.append(
                f"openstack.externalNetwork: network {spec.externalNetwork!r} is not external (router:external)"
            )
    if spec.keyName:
        with about(f"key pair {spec.keyName}: reading"):
            if conn.compute.find_keypair(spec.keyName) is None:
                problems.append(f"openstack.keyName: key pair {spec.keyName!r} does not exist in {cloud}")
    for name, data in user_data.items():
        if len(data) > NOVA_USER_DATA_LIMIT:
            problems.append(f"nodes.{name}: user-data is {len(data)} bytes, Nova takes at most {NOVA_USER_DATA_LIMIT}")
    if problems:
        return problems
    return _quotas(conn, site, st, plan)


def _quotas(conn: Connection, site: Site, st: Observed, plan: Plan) -> list[str]:
    """Quotas, for what this run would add (a server replaced in place needs none)."""
    spec = site.openstack
    assert spec is not None
    cloud = spec.cloud or "the cloud"
    problems: list[str] = []
    new_servers = [a.node for a in plan.of(CreateServer)]
    new_ports = len(plan.of(CreatePort))
    if new_servers:
        vcpus = sum(st.flavors[flavor_of(site, n)].vcpus for n in new_servers)
        ram = sum(st.flavors[flavor_of(site, n)].ram for n in new_servers)
        with about("reading compute limits"):
            limits = conn.compute.get_limits().absolute
        for what, need, limit, used in (
            ("instances", len(new_servers), limits.instances, limits.instances_used),
            ("cores", vcpus, limits.total_cores, limits.total_cores_used),
            ("RAM (MiB)", ram, limits.total_ram, limits.total_ram_used),
        ):
            if limit is not None and limit >= 0 and used + need > limit:
                problems.append(
                    f"quota: {need} more {what} needed, {limit - used} left of {limit} in the project of {cloud}"
                )
    if new_ports:
        with about("reading network quotas"):
            # None only for an unscoped token, which could not have listed the ports either.
            project = cast(str, conn.current_project_id)
            quota = conn.network.get_quota(project, details=True)
        port = getattr(quota, "ports", None) or {}
        limit, used = port.get("limit", -1), port.get("used", 0) + port.get("reserved", 0)
        if limit >= 0 and used + new_ports > limit:
            problems.append(
                f"quota: {new_ports} more ports needed, {limit - used} left of {limit} in the project of {cloud}"
            )
    return problems
