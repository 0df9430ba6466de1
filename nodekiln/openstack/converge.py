"""Carry out a plan, in an order Neutron and Nova accept: network, subnet, router, security groups and
their rules, ports (the VIPs in the allowed address pairs of the control planes and the edge nodes),
server group, servers (in parallel, bounded; the edge nodes' too), deletes, floating IPs (the API
endpoint's, the edge's).

Each step takes its action objects from the plan (actions.py) and records what it made in the
observed state, which later steps (and the wait) read ids from.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from nodekiln.openstack.actions import (
    CreateFloatingIP,
    CreateNetwork,
    CreatePort,
    CreateRouter,
    CreateRouterInterface,
    CreateRules,
    CreateSecurityGroup,
    CreateServer,
    CreateServerGroup,
    CreateSubnet,
    DeletePort,
    DeleteRules,
    DeleteServer,
    Plan,
    PortSpec,
    ReplaceServer,
    UpdateFloatingIP,
    UpdatePort,
)
from nodekiln.openstack.cloud import OpenStackError, about
from nodekiln.openstack.resources import Names, observed_rule
from nodekiln.openstack.tagging import tag_all, tagged
from nodekiln.openstack.userdata import digest
from nodekiln.openstack.wait import POLL_SECONDS

if TYPE_CHECKING:
    from openstack.network.v2.floating_ip import FloatingIP
    from openstack.network.v2.network import Network
    from openstack.network.v2.subnet import Subnet

    from nodekiln.config.site import Site
    from nodekiln.openstack.cloud import Cloud
    from nodekiln.openstack.observe import Observed

T = TypeVar("T")


def _made(what: str, resource: T | None) -> T:
    """`resource`, which the observation found or an earlier step made: the plan creates what is missing."""
    if resource is None:
        raise OpenStackError(f"{what}: neither found nor created (a plan out of step with the cloud)")
    return resource


def converge(
    cloud: Cloud,
    site: Site,
    names: Names,
    st: Observed,
    plan: Plan,
    user_data: dict[str, bytes],
    echo: Callable[[str], None],
    boot_data: dict[str, bytes] | None = None,
) -> list[str]:
    """Carry out the plan; the failures that do not stop the run (servers, the floating IP).

    New servers boot with `boot_data` (default `user_data`); their metadata records the digest
    of `user_data`, which the drift check compares with on later runs."""
    spec = site.openstack
    assert spec is not None
    _network(cloud, site, names, st, plan)
    _security_groups(cloud, site, names, st, plan)
    _ports(cloud, site, names, st, plan)
    conn = cloud.conn
    for group in plan.of(CreateServerGroup):
        with about(f"server group {group.name}: creating"):
            st.server_group = conn.compute.create_server_group(name=group.name, policy=group.policy)
    failures = _servers(cloud, site, names, st, plan, user_data, echo, boot_data)
    for deleted in plan.of(DeleteServer):
        with about(f"server {deleted.server.name}: deleting"):
            conn.compute.delete_server(deleted.server, ignore_missing=True)
    for deleted in plan.of(DeleteServer):
        with about(f"server {deleted.server.name}: waiting for the delete"):
            conn.compute.wait_for_delete(deleted.server, interval=POLL_SECONDS, wait=spec.bootTimeout)
        st.servers.pop(deleted.name, None)
    for gone in plan.of(DeletePort):
        with about(f"port {gone.port.name}: deleting"):
            conn.network.delete_port(gone.port, ignore_missing=True)
        st.ports.pop(gone.port.name, None)
    failures += _floating_ips(cloud, names, st, plan)
    return failures


def _network(cloud: Cloud, site: Site, names: Names, st: Observed, plan: Plan) -> None:
    conn, tag = cloud.conn, names.tag
    for net in plan.of(CreateNetwork):
        with about(f"network {net.name}: creating"):
            st.network = tagged(
                cloud, conn.network.create_network, tag, name=net.name, **({"mtu": net.mtu} if net.mtu else {})
            )
    for sub in plan.of(CreateSubnet):
        network: Network = _made(f"network {names.network}", st.network)
        with about(f"subnet {sub.name}: creating"):
            st.subnet = tagged(
                cloud,
                conn.network.create_subnet,
                tag,
                name=sub.name,
                network_id=network.id,
                ip_version=4,
                cidr=sub.cidr,
                gateway_ip=sub.gateway,
                dns_nameservers=list(sub.dns),
                is_dhcp_enabled=True,
                **({"allocation_pools": [sub.allocation_pool]} if sub.allocation_pool else {}),
            )
    for router in plan.of(CreateRouter):
        external: Network = _made(f"external network {router.external_network}", st.external)
        with about(f"router {router.name}: creating"):
            st.router = tagged(
                cloud,
                conn.network.create_router,
                tag,
                name=router.name,
                external_gateway_info={"network_id": external.id},
            )
    for interface in plan.of(CreateRouterInterface):
        subnet: Subnet = _made(f"subnet {interface.subnet}", st.subnet)
        with about(f"router {interface.name}: attaching subnet {interface.subnet}"):
            conn.network.add_interface_to_router(_made(f"router {interface.name}", st.router), subnet=subnet.id)
        st.router_interface = True


def _security_groups(cloud: Cloud, site: Site, names: Names, st: Observed, plan: Plan) -> None:
    conn, tag = cloud.conn, names.tag
    created = plan.of(CreateSecurityGroup)
    for group in created:
        with about(f"security group {group.name}: creating"):
            st.groups[group.role] = tagged(
                cloud, conn.network.create_security_group, tag, name=group.name, description=group.description
            )
    roles_by_id = {sg.id: r for r, sg in st.groups.items()}
    # A new group comes with the cloud's default rules (usually egress to anywhere, or none at all).
    defaults = {
        g.role: {observed_rule(r, roles_by_id) for r in st.groups[g.role].security_group_rules or []} for g in created
    }
    for extra in plan.of(DeleteRules):
        for rule_id in extra.rule_ids:
            with about(f"security group {extra.name}: deleting a rule"):
                conn.network.delete_security_group_rule(rule_id, ignore_missing=True)
    for missing in plan.of(CreateRules):
        bodies = []
        for rule in missing.rules:
            if rule in defaults.get(missing.role, ()):
                continue
            body: dict[str, Any] = {
                "security_group_id": st.groups[missing.role].id,
                "direction": rule.direction,
                "ethertype": rule.ethertype,
            }
            for key, value in (
                ("protocol", rule.protocol),
                ("port_range_min", rule.port_min),
                ("port_range_max", rule.port_max),
                ("remote_ip_prefix", rule.remote_ip_prefix),
            ):
                if value is not None:
                    body[key] = value
            if rule.remote_group:
                body["remote_group_id"] = st.groups[rule.remote_group].id
            bodies.append(body)
        if bodies:  # one bulk POST per group: Neutron takes no more
            with about(f"security group {missing.name}: creating {len(bodies)} rules"):
                conn.network.create_security_group_rules(bodies)


def _ports(cloud: Cloud, site: Site, names: Names, st: Observed, plan: Plan) -> None:
    spec = site.openstack
    assert spec is not None
    conn = cloud.conn

    def port_body(want: PortSpec) -> dict[str, Any]:
        return {
            "security_group_ids": [st.groups[r].id for r in sorted(want.roles)],
            "allowed_address_pairs": [{"ip_address": ip} for ip in sorted(want.pairs)],
        }

    new = [a.spec for a in plan.of(CreatePort)]
    if new:
        network: Network = _made(f"network {names.network}", st.network)
        subnet: Subnet = _made(f"subnet {names.subnet}", st.subnet)
        bodies = [
            {
                "name": w.name,
                "network_id": network.id,
                "fixed_ips": [{"subnet_id": subnet.id, "ip_address": w.fixed_ip}],
                **port_body(w),
            }
            for w in new
        ]
        listed = ", ".join(w.name for w in new[:5]) + (" …" if len(new) > 5 else "")
        with about(f"ports of {site.name}: creating {len(bodies)} ({listed})"):
            created = list(conn.network.create_ports(bodies))
            tag_all(cloud, created, names.tag, spec.parallelism)
            for port in created:
                st.ports[port.name] = port
    for update in plan.of(UpdatePort):
        with about(f"port {update.name}: updating"):
            st.ports[update.name] = conn.network.update_port(st.ports[update.name], **port_body(update.spec))


def _servers(
    cloud: Cloud,
    site: Site,
    names: Names,
    st: Observed,
    plan: Plan,
    user_data: dict[str, bytes],
    echo: Callable[[str], None],
    boot_data: dict[str, bytes] | None,
) -> list[str]:
    spec = site.openstack
    assert spec is not None
    conn = cloud.conn

    def boot(server: CreateServer | ReplaceServer) -> None:
        node = server.node
        if isinstance(server, ReplaceServer):
            with about(f"server {node.name}: deleting the failed one"):
                conn.compute.delete_server(server.old, ignore_missing=True)
                conn.compute.wait_for_delete(server.old, interval=POLL_SECONDS, wait=spec.bootTimeout)
        flavor = st.flavors[server.flavor]
        image = _made("the image", st.image)
        attrs: dict[str, Any] = {
            "name": node.name,
            "flavor_id": flavor.id,
            "image_id": image.id,
            "networks": [{"port": st.ports[names.port(node.name)].id}],
            "user_data": base64.b64encode((boot_data or user_data)[node.name]).decode(),
            # The digest of the user-data with the stored token, not of what the server got: a
            # fresh join token in it must not look like drift to the next run (plan.server_drift).
            "metadata": names.metadata(node, digest(user_data[node.name])),
        }
        if spec.keyName:
            attrs["key_name"] = spec.keyName
        if spec.configDrive:
            attrs["config_drive"] = True
        if spec.availabilityZone:
            attrs["availability_zone"] = spec.availabilityZone
        if node.role == "control-plane" and st.server_group is not None:
            attrs["scheduler_hints"] = {"group": st.server_group.id}
        with about(f"server {node.name} (flavor {flavor.name}, image {image.name})"):
            st.servers[node.name] = conn.compute.create_server(**attrs)

    failures: list[str] = []
    to_boot = plan.booting
    if to_boot:
        echo(f"creating {len(to_boot)} servers, {spec.parallelism} at a time")
        with ThreadPoolExecutor(max_workers=spec.parallelism, thread_name_prefix="nodekiln-server") as pool:
            for server, future in [(s, pool.submit(boot, s)) for s in to_boot]:
                try:
                    future.result()
                except OpenStackError as exc:
                    failures.append(str(exc))
                    if isinstance(server, ReplaceServer):
                        st.servers.pop(server.node.name, None)
    return failures


def _floating_ips(cloud: Cloud, names: Names, st: Observed, plan: Plan) -> list[str]:
    """The API endpoint's and the edge's: each on the port its action names (made by now)."""
    conn = cloud.conn
    failures: list[str] = []

    def record(edge: bool, fip: FloatingIP) -> None:
        if edge:
            st.edge_fip = fip
        else:
            st.fip = fip

    for new in plan.of(CreateFloatingIP):
        port = st.ports.get(new.port)
        if port is None:
            failures.append(f"floating IP for {new.name}: the site has no port {new.port}")
            continue
        external: Network = _made(f"external network {new.external_network}", st.external)
        with about(f"floating IP for {new.name}: creating"):
            record(
                new.edge,
                tagged(
                    cloud,
                    conn.network.create_ip,
                    names.tag,
                    floating_network_id=external.id,
                    port_id=port.id,
                    fixed_ip_address=new.vip,
                    description=new.description,
                ),
            )
    for move in plan.of(UpdateFloatingIP):
        port = st.ports.get(move.port)
        if port is None:
            failures.append(f"floating IP {move.name}: the site has no port {move.port}")
            continue
        fip = st.edge_fip if move.edge else st.fip
        with about(f"floating IP {move.name}: associating with port {move.port}"):
            record(
                move.edge,
                conn.network.update_ip(
                    _made(f"floating IP {move.name}", fip), port_id=port.id, fixed_ip_address=move.vip
                ),
            )
    return failures
