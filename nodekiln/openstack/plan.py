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
from nodekiln.openstack.resources import (
    Names,
    Rule,
    allocation_pool,
    flavor_of,
    observed_rule,
    rules,
    site_roles,
    wants_edge_fip,
)

if TYPE_CHECKING:
    from openstack.compute.v2.server import Server
    from openstack.network.v2.port import Port

    from nodekiln.config.site import Node, Site
    from nodekiln.openstack.observe import Observed


def port_spec(site: Site, names: Names, node: Node | None) -> PortSpec:
    """The desired port of a machine (a node or an edge node), or, with node None, of the API endpoint's VIP."""
    vip = site.controlPlane.endpoint.vip
    if node is None:
        return PortSpec(names.vip_port, str(vip), frozenset({"control-plane"}), frozenset())
    pairs: set[str] = set()
    if node.role == "control-plane" and site.load_balanced and vip is not None:
        pairs.add(str(vip))
    if node.role == "edge" and site.edge is not None and site.edge.vip is not None:
        pairs.add(str(site.edge.vip))
    return PortSpec(names.port(node.name), str(node.address), frozenset({node.role}), frozenset(pairs))


def wanted_ports(site: Site, names: Names) -> list[PortSpec]:
    """Every port the site wants, in plan order: the VIPs' (API endpoint, edge pair), then the machines'."""
    wanted = [port_spec(site, names, None)] if site.load_balanced and site.controlPlane.endpoint.vip else []
    if site.edge is not None and site.edge.vip is not None:
        wanted.append(PortSpec(names.edge_vip_port, str(site.edge.vip), frozenset({"edge"}), frozenset()))
    return wanted + [port_spec(site, names, node) for node in site.machines]


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

    ports = wanted_ports(site, names)
    for want in ports:
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

    for node in site.machines:
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

    machines = {n.name for n in site.machines}
    for node_name, server in sorted(st.servers.items()):
        if node_name not in machines:
            steps.append(DeleteServer(node_name, server) if prune else Orphan("server", node_name))
    wanted_names = {w.name for w in ports}
    for name, port in sorted(st.ports.items()):
        if name not in wanted_names:
            steps.append(DeletePort(port) if prune else Orphan("port", name))

    if spec.floatingIP:
        steps.append(_floating_ip(site, names, st, edge=False))
    if wants_edge_fip(site):
        steps.append(_floating_ip(site, names, st, edge=True))
    return Plan(tuple(steps))


def _floating_ip(site: Site, names: Names, st: Observed, edge: bool) -> Action:
    """The floating IP of the API endpoint's VIP, or (edge) of the edge's public address."""
    spec = site.openstack
    assert spec is not None
    if edge:
        address, port_name, fip = str(site.edge_address), names.edge_public_port or "", st.edge_fip
    else:
        address, port_name, fip = str(site.controlPlane.endpoint.vip), names.vip_port, st.fip
    port = st.ports.get(port_name)
    if fip is None:
        return CreateFloatingIP(address, spec.externalNetwork or "", names.fip_description(edge), port_name, edge)
    if port is None or fip.port_id != port.id or fip.fixed_ip_address != address:
        # A port made by this run counts as one the floating IP is not on yet.
        return UpdateFloatingIP(fip.floating_ip_address, address, port_name, edge)
    return Keep("floating-ip", fip.floating_ip_address, f"-> {'edge ' if edge else ''}{address}")


def _security_groups(site: Site, names: Names, st: Observed) -> list[Action]:
    steps: list[Action] = []
    roles_by_id = {sg.id: r for r, sg in st.groups.items()}
    for role in site_roles(site):
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
