"""From what exists to what to do: the plan of one site-deploy (types in actions.py).

Nothing that exists is written again. A node removed from the site is deleted only with
`prune`. A server that differs from the site (flavor, image, user-data) is reported, not
replaced: nodes are replaced deliberately; only a server in ERROR is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nodekiln.openstack.actions import (
    Action,
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
    Keep,
    Orphan,
    Plan,
    PortSpec,
    ReplaceServer,
    UpdateFloatingIP,
    UpdatePort,
)
from nodekiln.openstack.resources import ROLES, Names, Rule, allocation_pool, flavor_of, observed_rule, rules

if TYPE_CHECKING:
    from openstack.compute.v2.server import Server
    from openstack.network.v2.port import Port

    from nodekiln.config.site import Node, Site
    from nodekiln.openstack.observe import Observed


def port_spec(site: Site, names: Names, node: Node | None) -> PortSpec:
    """The desired port of a node (or, with node None, of the VIP)."""
    vip = site.controlPlane.endpoint.vip
    if node is None:
        return PortSpec(names.vip_port, str(vip), frozenset({"control-plane"}), frozenset())
    pairs = {str(vip)} if node.role == "control-plane" and site.load_balanced and vip is not None else set()
    return PortSpec(names.port(node.name), str(node.address), frozenset({node.role}), frozenset(pairs))


def port_drift(port: Port, want: PortSpec, st: Observed) -> str:
    have_ips = {ip.get("ip_address") for ip in port.fixed_ips}
    if want.fixed_ip not in have_ips:
        return f"fixed IP {', '.join(sorted(have_ips))} is not {want.fixed_ip}: delete the port to move it"
    diffs = []
    group_ids = {st.groups[r].id for r in want.roles if r in st.groups}
    if set(port.security_group_ids or []) != group_ids:
        diffs.append("security groups")
    if {p.get("ip_address") for p in port.allowed_address_pairs or []} != want.pairs:
        diffs.append("allowed address pairs")
    return ", ".join(diffs)


def server_drift(site: Site, node: Node, server: Server, st: Observed, user_data_hash: str) -> str:
    diffs = []
    flavor = server.flavor or {}
    have = flavor.get("original_name") or flavor.get("name") or flavor.get("id")
    want = flavor_of(site, node)
    want_obj = st.flavors.get(want)
    if have not in (want, getattr(want_obj, "id", None)):
        diffs.append(f"flavor {have} -> {want}")
    image_id = (server.image or {}).get("id")
    if st.image is not None and image_id and image_id != st.image.id:
        diffs.append("image")
    if (server.metadata or {}).get("nodekiln-user-data") != user_data_hash:
        diffs.append("user-data")
    return ", ".join(diffs)


def make_plan(site: Site, names: Names, st: Observed, hashes: dict[str, str], prune: bool) -> Plan:
    """The plan, in the order it is printed; `hashes` are the digests of the nodes' user-data."""
    spec = site.openstack
    assert spec is not None
    steps: list[Action] = []
    if spec.network.existing:
        steps.append(Keep("network", names.network, "existing, not owned"))
        steps.append(Keep("subnet", names.subnet, "existing, not owned"))
    else:
        steps.append(Keep("network", names.network) if st.network else CreateNetwork(names.network, site.network.mtu))
        steps.append(
            Keep("subnet", names.subnet, str(site.network.cidr))
            if st.subnet
            else CreateSubnet(
                names.subnet,
                cidr=str(site.network.cidr),
                gateway=str(site.network.gateway),
                dns=tuple(str(d) for d in site.network.dns),
                allocation_pool=allocation_pool(site),
            )
        )
    if spec.router.create:
        external = spec.externalNetwork or ""  # the site model requires it with router.create
        steps.append(
            Keep("router", names.router, f"gateway {spec.externalNetwork}")
            if st.router
            else CreateRouter(names.router, external)
        )
        if not st.router_interface:
            steps.append(CreateRouterInterface(names.router, names.subnet))
    steps += _security_groups(site, names, st)

    wanted_ports = [port_spec(site, names, None)] if site.load_balanced and site.controlPlane.endpoint.vip else []
    wanted_ports += [port_spec(site, names, node) for node in site.nodes]
    for want in wanted_ports:
        port = st.ports.get(want.name)
        if port is None:
            steps.append(CreatePort(want))
            continue
        drift = port_drift(port, want, st)
        if drift.startswith("fixed IP"):
            steps.append(Keep("port", want.name, drift))
        elif drift:
            steps.append(UpdatePort(want, drift))
        else:
            steps.append(Keep("port", want.name, want.fixed_ip))

    if spec.serverGroupPolicy != "none":
        if st.server_group is None:
            steps.append(CreateServerGroup(names.server_group, spec.serverGroupPolicy))
        else:
            policy = st.server_group.policy or (st.server_group.policies or [None])[0]
            detail: str = spec.serverGroupPolicy
            if policy != spec.serverGroupPolicy:
                detail = f"has policy {policy}, the site wants {spec.serverGroupPolicy}: delete it (with its servers) to change"
            steps.append(Keep("server-group", names.server_group, detail))

    for node in site.nodes:
        server = st.servers.get(node.name)
        flavor = flavor_of(site, node)
        if server is None:
            steps.append(CreateServer(node, flavor))
        elif server.status == "ERROR":
            steps.append(ReplaceServer(node, flavor, server))
        else:
            drift = server_drift(site, node, server, st, hashes[node.name])
            differs = f"; differs from the site ({drift}): replace the node to apply" if drift else ""
            steps.append(Keep("server", node.name, f"{server.status}{differs}"))

    site_nodes = {n.name for n in site.nodes}
    for node_name, server in sorted(st.servers.items()):
        if node_name not in site_nodes:
            steps.append(DeleteServer(node_name, server) if prune else Orphan("server", node_name))
    wanted_names = {w.name for w in wanted_ports}
    for name, port in sorted(st.ports.items()):
        if name not in wanted_names:
            steps.append(DeletePort(port) if prune else Orphan("port", name))

    if spec.floatingIP:
        vip = str(site.controlPlane.endpoint.vip)
        vip_port = st.ports.get(names.vip_port)
        if st.fip is None:
            steps.append(
                CreateFloatingIP(
                    vip, spec.externalNetwork or "", description=f"nodekiln: API endpoint of site {site.name}"
                )
            )
        elif vip_port is None or st.fip.port_id != vip_port.id:
            # A VIP port made by this run counts as one the floating IP is not on yet.
            steps.append(UpdateFloatingIP(st.fip.floating_ip_address, vip))
        else:
            steps.append(Keep("floating-ip", st.fip.floating_ip_address, f"-> {vip}"))
    return Plan(tuple(steps))


def _security_groups(site: Site, names: Names, st: Observed) -> list[Action]:
    steps: list[Action] = []
    roles_by_id = {sg.id: r for r, sg in st.groups.items()}
    for role in ROLES:
        name = names.security_group(role)
        want = rules(site, role)
        group = st.groups.get(role)
        if group is None:
            steps.append(CreateSecurityGroup(name, role, f"nodekiln: {role}s of site {site.name}"))
            missing, extra = sorted(want, key=repr), []  # less the defaults the new group comes with
            have: dict[Rule, str] = {}
        else:
            steps.append(Keep("security-group", name))
            have = {}
            for rule in group.security_group_rules or []:
                have.setdefault(observed_rule(rule, roles_by_id), rule["id"])
            missing = sorted(want - set(have), key=repr)
            extra = sorted(set(have) - want, key=repr)
        if missing:
            steps.append(CreateRules(name, role, tuple(missing)))
        if extra:
            steps.append(DeleteRules(name, role, tuple(extra), tuple(have[r] for r in extra)))
        if not missing and not extra:
            steps.append(Keep("rules", name, f"{len(want)} rules"))
    return steps
