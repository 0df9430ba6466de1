"""`invoke site-deploy` and `invoke site-destroy`: a site's OpenStack resources, converged.

One pass reads what exists (owned resources carry the tag `nodekiln:site=<name>`; servers
carry it in their metadata, server groups by name), checks what can be checked before
anything is written (flavors, image, networks, key pair, quotas), and makes a plan: create,
keep, update or delete per resource. `--dry-run` stops there. Otherwise the plan is carried
out in order — network, subnet, router, security groups and their rules, ports (the VIP in
the control planes' allowed address pairs), server group, servers (in parallel, bounded),
floating IP — and the run waits for every server to be ACTIVE.

Nothing that exists is written again: a rerun with an unchanged site makes no write call. A
node removed from the site is deleted only with `prune`. A server that differs from the site
(flavor, image, user-data) is reported, not replaced: nodes are replaced deliberately.

Servers created for a cluster that is already running join with the token `kubeadm init` made,
while it lasts (kubernetes.bootstrapTokenTTL from the init node's creation, less the time a
join takes); later they get a fresh token created through the API (nodekiln.bootstrap.jointoken), and a
run that cannot reach the API fails before it creates anything.
"""

from __future__ import annotations

import base64
import datetime as dt
import ssl
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nodekiln.bootstrap.jointoken import (
    JOIN_MARGIN,
    APIUnreachableError,
    JoinTokenError,
    api_url,
    create_join_token,
    needs_fresh_token,
    parse_ttl,
)
from nodekiln.openstack.cloud import CallCounter, OpenStackError, about, connect, count_calls, one_line
from nodekiln.openstack.images import BUILD_DIR, image_name, load_manifest, newest_artifact
from nodekiln.openstack.resources import ROLES, Names, allocation_pool, observed_rule, rules
from nodekiln.openstack.userdata import NOVA_USER_DATA_LIMIT, Renderer, digest, render_user_data

if TYPE_CHECKING:
    from openstack.connection import Connection

    from nodekiln.config.site import Node, Site
    from nodekiln.secrets import Secrets

POLL_SECONDS = 2.0
# Server statuses that end by themselves; others (SHUTOFF, PAUSED...) are an operator's doing: reported, not waited for.
TRANSITIONAL = frozenset(
    {"BUILD", "REBUILD", "REBOOT", "HARD_REBOOT", "MIGRATING", "RESIZE", "REVERT_RESIZE", "PASSWORD", "UNKNOWN", None}
)
POLL_MISSES = 5  # polls in a row that may fail (a dropped keep-alive connection) before giving up


class CheckError(OpenStackError):
    """Something the site needs is missing from the cloud; nothing was created."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__(
            "\n".join(problems)
            if len(problems) == 1
            else f"{len(problems)} problems, nothing was created:\n" + "\n".join(f"  {p}" for p in problems)
        )


class DeployError(OpenStackError):
    """Some resources failed; a rerun converges the rest once the cause is fixed."""


@dataclass
class Step:
    kind: str
    name: str
    action: str  # create | keep | update | replace | delete | orphan
    detail: str = ""


@dataclass
class Plan:
    steps: list[Step] = field(default_factory=list)

    def add(self, kind: str, name: str, action: str, detail: str = "") -> None:
        self.steps.append(Step(kind, name, action, detail))

    def count(self, action: str) -> int:
        return sum(1 for s in self.steps if s.action == action)

    @property
    def changes(self) -> list[Step]:
        return [s for s in self.steps if s.action not in ("keep", "orphan")]

    def summary(self) -> str:
        parts = [f"{self.count(a)} to {a}" for a in ("create", "update", "replace", "delete") if self.count(a)]
        return ", ".join(parts) or "nothing to change"

    def table(self):
        from rich.table import Table

        table = Table("resource", "name", "action", "detail")
        style = {"create": "green", "update": "yellow", "replace": "yellow", "delete": "red", "orphan": "magenta"}
        for s in self.steps:
            table.add_row(
                s.kind, s.name, f"[{style[s.action]}]{s.action}[/]" if s.action in style else s.action, s.detail
            )
        return table


@dataclass
class DeployResult:
    plan: Plan
    calls: CallCounter
    seconds: float = 0.0
    servers: dict[str, str] = field(default_factory=dict)  # node -> status
    healthz: str = "not checked"
    join_token: str = "no server joins a running cluster"  # which token new servers join with (never the token itself)


@dataclass
class _State:
    """What exists (and, as the run goes on, what was made)."""

    network: Any = None
    subnet: Any = None
    router: Any = None
    router_interface: bool = False
    external: Any = None
    groups: dict[str, Any] = field(default_factory=dict)  # role -> security group
    ports: dict[str, Any] = field(default_factory=dict)  # port name -> port
    server_group: Any = None
    servers: dict[str, Any] = field(default_factory=dict)  # node name -> server
    fip: Any = None
    flavors: dict[str, Any] = field(default_factory=dict)  # flavor name and id -> flavor
    image: Any = None


# -- reading ----------------------------------------------------------------------------------


def _observe(conn: Connection, site: Site, names: Names) -> _State:
    spec = site.openstack
    assert spec is not None
    tag = names.tag
    st = _State()
    with about("reading the site's network"):
        if spec.network.existing:
            st.network = conn.network.find_network(names.network)
            if st.network is not None:
                subnets = list(conn.network.subnets(network_id=st.network.id))
                wanted = [
                    s
                    for s in subnets
                    if (s.name == names.subnet if spec.network.subnet else s.cidr == str(site.network.cidr))
                ]
                st.subnet = wanted[0] if wanted else None
        else:
            st.network = next((n for n in conn.network.networks(tags=tag) if n.name == names.network), None)
            if st.network is not None:
                st.subnet = next((s for s in conn.network.subnets(tags=tag) if s.name == names.subnet), None)
    if spec.router.create:
        with about(f"router {names.router}: reading"):
            st.router = next((r for r in conn.network.routers(tags=tag) if r.name == names.router), None)
            if st.router is not None and st.subnet is not None:
                st.router_interface = any(
                    any(ip.get("subnet_id") == st.subnet.id for ip in p.fixed_ips)
                    for p in conn.network.ports(device_id=st.router.id, device_owner="network:router_interface")
                )
    with about("reading the site's security groups and ports"):
        by_name = {sg.name: sg for sg in conn.network.security_groups(tags=tag)}
        st.groups = {
            role: by_name[names.security_group(role)] for role in ROLES if names.security_group(role) in by_name
        }
        st.ports = {p.name: p for p in conn.network.ports(tags=tag)}
    with about("reading the site's servers"):
        if spec.serverGroupPolicy != "none":
            st.server_group = next((g for g in conn.compute.server_groups() if g.name == names.server_group), None)
        for server in conn.compute.servers(details=True):
            meta = server.metadata or {}
            if meta.get("nodekiln-site") == site.name and meta.get("nodekiln-node"):
                st.servers[meta["nodekiln-node"]] = server
    if spec.floatingIP:
        with about("reading the VIP's floating IP"):
            st.fip = next(iter(conn.network.ips(tags=tag)), None)
    return st


def _image_ref(site: Site, build_dir: Path) -> str:
    spec = site.openstack
    assert spec is not None
    if spec.image.name:
        return spec.image.name
    _, manifest = newest_artifact(site, build_dir)
    return image_name(load_manifest(manifest)["inputHash"])


def _flavor_of(site: Site, node: Node) -> str:
    spec = site.openstack
    assert spec is not None
    return spec.nodeFlavors.get(node.name) or spec.flavors[node.role]


def _check(
    conn: Connection,
    site: Site,
    names: Names,
    st: _State,
    new_servers: list[Node],
    new_ports: int,
    build_dir: Path,
    user_data: dict[str, bytes],
) -> list[str]:
    """Up-front checks: one line per problem, naming the resource and the site field."""
    spec = site.openstack
    assert spec is not None
    cloud = spec.cloud or "the cloud"
    problems: list[str] = []
    with about("reading flavors"):
        for flavor in conn.compute.flavors(details=True):
            st.flavors[flavor.name] = flavor
            st.flavors[flavor.id] = flavor
    wanted: dict[str, str] = {}
    for role, flavor in spec.flavors.items():
        wanted.setdefault(flavor, f"openstack.flavors.{role}")
    for node, flavor in spec.nodeFlavors.items():
        wanted.setdefault(flavor, f"openstack.nodeFlavors.{node}")
        if node not in {n.name for n in site.nodes}:
            problems.append(f"openstack.nodeFlavors.{node}: the site has no node {node}")
    for flavor, where in wanted.items():
        if flavor not in st.flavors:
            known = ", ".join(sorted({f.name for f in st.flavors.values()})[:12])
            problems.append(f"{where}: flavor {flavor!r} does not exist in {cloud} (it has: {known})")
    try:
        ref = _image_ref(site, build_dir)
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
            for node in site.nodes:
                if node.address not in cidr:
                    problems.append(
                        f"nodes.{node.name}.address: {node.address} is outside subnet {st.subnet.name} ({cidr})"
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
    # Quotas, for what this run would add.
    if new_servers:
        vcpus = sum(st.flavors[_flavor_of(site, n)].vcpus for n in new_servers)
        ram = sum(st.flavors[_flavor_of(site, n)].ram for n in new_servers)
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
            quota = conn.network.get_quota(conn.current_project_id, details=True)
        port = getattr(quota, "ports", None) or {}
        limit, used = port.get("limit", -1), port.get("used", 0) + port.get("reserved", 0)
        if limit >= 0 and used + new_ports > limit:
            problems.append(
                f"quota: {new_ports} more ports needed, {limit - used} left of {limit} in the project of {cloud}"
            )
    return problems


# -- planning ----------------------------------------------------------------------------------


def _port_spec(site: Site, names: Names, node: Node | None, st: _State) -> dict[str, Any]:
    """The desired port of a node (or, with node None, of the VIP)."""
    vip = site.controlPlane.endpoint.vip
    if node is None:
        return {"name": names.vip_port, "fixed_ip": str(vip), "groups": {"control-plane"}, "pairs": set()}
    pairs = {str(vip)} if node.role == "control-plane" and site.load_balanced and vip is not None else set()
    return {"name": names.port(node.name), "fixed_ip": str(node.address), "groups": {node.role}, "pairs": pairs}


def _port_drift(port: Any, want: dict[str, Any], st: _State) -> str:
    have_ips = {ip.get("ip_address") for ip in port.fixed_ips}
    if want["fixed_ip"] not in have_ips:
        return f"fixed IP {', '.join(sorted(have_ips))} is not {want['fixed_ip']}: delete the port to move it"
    diffs = []
    group_ids = {st.groups[r].id for r in want["groups"] if r in st.groups}
    if set(port.security_group_ids or []) != group_ids:
        diffs.append("security groups")
    if {p.get("ip_address") for p in port.allowed_address_pairs or []} != want["pairs"]:
        diffs.append("allowed address pairs")
    return ", ".join(diffs)


def _server_drift(site: Site, node: Node, server: Any, st: _State, user_data_hash: str) -> str:
    diffs = []
    flavor = server.flavor or {}
    have = flavor.get("original_name") or flavor.get("name") or flavor.get("id")
    want = _flavor_of(site, node)
    want_obj = st.flavors.get(want)
    if have not in (want, getattr(want_obj, "id", None)):
        diffs.append(f"flavor {have} -> {want}")
    image_id = (server.image or {}).get("id")
    if st.image is not None and image_id and image_id != st.image.id:
        diffs.append("image")
    if (server.metadata or {}).get("nodekiln-user-data") != user_data_hash:
        diffs.append("user-data")
    return ", ".join(diffs)


def _make_plan(
    site: Site, names: Names, st: _State, hashes: dict[str, str], prune: bool
) -> tuple[Plan, dict[str, Any]]:
    spec = site.openstack
    assert spec is not None
    plan = Plan()
    work: dict[str, Any] = {
        "ports_create": [],
        "ports_update": [],
        "ports_delete": [],
        "servers_create": [],
        "servers_replace": [],
        "servers_delete": [],
        "rules_create": {},
        "rules_delete": {},
    }
    if spec.network.existing:
        plan.add("network", names.network, "keep", "existing, not owned")
        plan.add("subnet", names.subnet, "keep", "existing, not owned")
    else:
        plan.add("network", names.network, "keep" if st.network else "create")
        plan.add("subnet", names.subnet, "keep" if st.subnet else "create", str(site.network.cidr))
    if spec.router.create:
        plan.add("router", names.router, "keep" if st.router else "create", f"gateway {spec.externalNetwork}")
        if not st.router_interface:
            plan.add("router-interface", names.router, "create", names.subnet)
    for role in ROLES:
        name = names.security_group(role)
        plan.add("security-group", name, "keep" if role in st.groups else "create")
        want = rules(site, role)
        if role in st.groups:
            roles_by_id = {sg.id: r for r, sg in st.groups.items()}
            have = {}
            for rule in st.groups[role].security_group_rules or []:
                have.setdefault(observed_rule(rule, roles_by_id), rule["id"])
            missing = sorted(want - set(have), key=repr)
            extra = sorted(set(have) - want, key=repr)
        else:
            missing, extra = sorted(want, key=repr), []  # less the defaults the new group comes with
        work["rules_create"][role] = missing
        work["rules_delete"][role] = [have[r] for r in extra] if extra else []
        if missing:
            plan.add(
                "rules",
                name,
                "create",
                f"{len(missing)}: " + "; ".join(r.describe() for r in missing[:4]) + (" …" if len(missing) > 4 else ""),
            )
        if extra:
            plan.add("rules", name, "delete", f"{len(extra)}: " + "; ".join(r.describe() for r in extra[:4]))
        if not missing and not extra:
            plan.add("rules", name, "keep", f"{len(want)} rules")

    wanted_ports = (
        [(None, _port_spec(site, names, None, st))] if site.load_balanced and site.controlPlane.endpoint.vip else []
    )
    wanted_ports += [(node, _port_spec(site, names, node, st)) for node in site.nodes]
    for _node, want in wanted_ports:
        port = st.ports.get(want["name"])
        if port is None:
            plan.add(
                "port",
                want["name"],
                "create",
                want["fixed_ip"] + (f", VIP pair {', '.join(want['pairs'])}" if want["pairs"] else ""),
            )
            work["ports_create"].append(want)
        else:
            drift = _port_drift(port, want, st)
            if drift.startswith("fixed IP"):
                plan.add("port", want["name"], "keep", drift)
            elif drift:
                plan.add("port", want["name"], "update", drift)
                work["ports_update"].append(want)
            else:
                plan.add("port", want["name"], "keep", want["fixed_ip"])

    if spec.serverGroupPolicy != "none":
        detail = spec.serverGroupPolicy
        if st.server_group is not None:
            policy = st.server_group.policy or (st.server_group.policies or [None])[0]
            if policy != spec.serverGroupPolicy:
                detail = f"has policy {policy}, the site wants {spec.serverGroupPolicy}: delete it (with its servers) to change"
        plan.add("server-group", names.server_group, "keep" if st.server_group else "create", detail)

    for node in site.nodes:
        server = st.servers.get(node.name)
        flavor = _flavor_of(site, node)
        if server is None:
            plan.add("server", node.name, "create", f"{flavor}, {node.role}")
            work["servers_create"].append(node)
        elif server.status == "ERROR":
            fault = (server.fault or {}).get("message", "")
            plan.add("server", node.name, "replace", f"ERROR {fault}".strip())
            work["servers_replace"].append(node)
        else:
            drift = _server_drift(site, node, server, st, hashes[node.name])
            plan.add(
                "server",
                node.name,
                "keep",
                f"{server.status}" + (f"; differs from the site ({drift}): replace the node to apply" if drift else ""),
            )

    site_nodes = {n.name for n in site.nodes}
    for node_name, server in sorted(st.servers.items()):
        if node_name not in site_nodes:
            plan.add(
                "server",
                node_name,
                "delete" if prune else "orphan",
                "" if prune else "not in the site: --prune deletes it",
            )
            if prune:
                work["servers_delete"].append(server)
    wanted_names = {w["name"] for _, w in wanted_ports}
    for name, port in sorted(st.ports.items()):
        if name not in wanted_names:
            plan.add(
                "port", name, "delete" if prune else "orphan", "" if prune else "not in the site: --prune deletes it"
            )
            if prune:
                work["ports_delete"].append(port)

    if spec.floatingIP:
        if st.fip is None:
            plan.add("floating-ip", f"VIP {site.controlPlane.endpoint.vip}", "create", f"from {spec.externalNetwork}")
        elif st.fip.port_id != getattr(st.ports.get(names.vip_port), "id", None):
            plan.add("floating-ip", st.fip.floating_ip_address, "update", "associate with the VIP port")
        else:
            plan.add("floating-ip", st.fip.floating_ip_address, "keep", f"-> {site.controlPlane.endpoint.vip}")
    return plan, work


def _tagged(conn: Connection, create: Callable[..., Any], tag: str, **attrs: Any) -> Any:
    """Create a Neutron resource carrying the site's tag: in the POST where Neutron takes it, else POST then PUT tags."""
    from openstack import exceptions

    if getattr(conn, "_nodekiln_tags_in_post", True):
        try:
            return create(tags=[tag], **attrs)
        except exceptions.BadRequestException as exc:
            if "tags" not in str(exc):
                raise
            conn._nodekiln_tags_in_post = False  # type: ignore[attr-defined]
    created = create(**attrs)
    conn.network.set_tags(created, [tag])
    created.tags = [tag]
    return created


def _tag_all(conn: Connection, resources: list[Any], tag: str, parallelism: int) -> None:
    """PUT the tag on resources created in bulk (Neutron's bulk POST takes no tags)."""
    with ThreadPoolExecutor(max_workers=parallelism, thread_name_prefix="nodekiln-tag") as pool:
        for future in [pool.submit(conn.network.set_tags, r, [tag]) for r in resources if tag not in (r.tags or [])]:
            future.result()


# -- converging --------------------------------------------------------------------------------


def _converge(
    conn: Connection,
    site: Site,
    names: Names,
    st: _State,
    plan: Plan,
    work: dict[str, Any],
    user_data: dict[str, bytes],
    progress: bool,
    echo: Callable[[str], None],
    boot_data: dict[str, bytes] | None = None,
) -> list[str]:
    """Carry out the plan. New servers boot with `boot_data` (default `user_data`); their metadata
    records the digest of `user_data`, which the drift check compares with on later runs."""
    spec = site.openstack
    assert spec is not None
    tag = names.tag
    failures: list[str] = []
    if st.network is None and not spec.network.existing:
        with about(f"network {names.network}: creating"):
            st.network = _tagged(
                conn,
                conn.network.create_network,
                tag,
                name=names.network,
                **({"mtu": site.network.mtu} if site.network.mtu else {}),
            )
    if st.subnet is None and not spec.network.existing:
        pool = allocation_pool(site)
        with about(f"subnet {names.subnet}: creating"):
            st.subnet = _tagged(
                conn,
                conn.network.create_subnet,
                tag,
                name=names.subnet,
                network_id=st.network.id,
                ip_version=4,
                cidr=str(site.network.cidr),
                gateway_ip=str(site.network.gateway),
                dns_nameservers=[str(d) for d in site.network.dns],
                is_dhcp_enabled=True,
                **({"allocation_pools": [pool]} if pool else {}),
            )
    if spec.router.create:
        if st.router is None:
            with about(f"router {names.router}: creating"):
                st.router = _tagged(
                    conn,
                    conn.network.create_router,
                    tag,
                    name=names.router,
                    external_gateway_info={"network_id": st.external.id},
                )
        if not st.router_interface:
            with about(f"router {names.router}: attaching subnet {names.subnet}"):
                conn.network.add_interface_to_router(st.router, subnet=st.subnet.id)
            st.router_interface = True

    created_groups = [role for role in ROLES if role not in st.groups]
    for role in created_groups:
        with about(f"security group {names.security_group(role)}: creating"):
            st.groups[role] = _tagged(
                conn,
                conn.network.create_security_group,
                tag,
                name=names.security_group(role),
                description=f"nodekiln: {role}s of site {site.name}",
            )
    roles_by_id = {sg.id: r for r, sg in st.groups.items()}
    for role in created_groups:
        # A new group comes with the cloud's default rules (usually egress to anywhere, or none at all).
        have = {observed_rule(r, roles_by_id) for r in st.groups[role].security_group_rules or []}
        work["rules_create"][role] = sorted(rules(site, role) - have, key=repr)
    for role in ROLES:
        for rule_id in work["rules_delete"][role]:
            with about(f"security group {names.security_group(role)}: deleting a rule"):
                conn.network.delete_security_group_rule(rule_id, ignore_missing=True)
    for role in ROLES:
        bodies = []
        for rule in work["rules_create"][role]:
            body = {"security_group_id": st.groups[role].id, "direction": rule.direction, "ethertype": rule.ethertype}
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
            with about(f"security group {names.security_group(role)}: creating {len(bodies)} rules"):
                conn.network.create_security_group_rules(bodies)

    def port_body(want: dict[str, Any]) -> dict[str, Any]:
        return {
            "security_group_ids": [st.groups[r].id for r in sorted(want["groups"])],
            "allowed_address_pairs": [{"ip_address": ip} for ip in sorted(want["pairs"])],
        }

    if work["ports_create"]:
        bodies = [
            {
                "name": w["name"],
                "network_id": st.network.id,
                "fixed_ips": [{"subnet_id": st.subnet.id, "ip_address": w["fixed_ip"]}],
                **port_body(w),
            }
            for w in work["ports_create"]
        ]
        with about(
            f"ports of {site.name}: creating {len(bodies)} ({', '.join(b['name'] for b in bodies[:5])}{' …' if len(bodies) > 5 else ''})"
        ):
            created = list(conn.network.create_ports(bodies))
            _tag_all(conn, created, tag, spec.parallelism)
            for port in created:
                st.ports[port.name] = port
    for want in work["ports_update"]:
        with about(f"port {want['name']}: updating"):
            st.ports[want["name"]] = conn.network.update_port(st.ports[want["name"]], **port_body(want))

    if spec.serverGroupPolicy != "none" and st.server_group is None:
        with about(f"server group {names.server_group}: creating"):
            st.server_group = conn.compute.create_server_group(name=names.server_group, policy=spec.serverGroupPolicy)

    by_name = {n.name: n for n in site.nodes}

    def boot(node: Node) -> None:
        if node in work["servers_replace"]:
            old = st.servers[node.name]
            with about(f"server {node.name}: deleting the failed one"):
                conn.compute.delete_server(old, ignore_missing=True)
                conn.compute.wait_for_delete(old, interval=POLL_SECONDS, wait=spec.bootTimeout)
        flavor = st.flavors[_flavor_of(site, node)]
        attrs: dict[str, Any] = {
            "name": node.name,
            "flavor_id": flavor.id,
            "image_id": st.image.id,
            "networks": [{"port": st.ports[names.port(node.name)].id}],
            "user_data": base64.b64encode((boot_data or user_data)[node.name]).decode(),
            # The digest of the user-data with the stored token, not of what the server got: a
            # fresh join token in it must not look like drift to the next run (_server_drift).
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
        with about(f"server {node.name} (flavor {flavor.name}, image {st.image.name})"):
            st.servers[node.name] = conn.compute.create_server(**attrs)

    to_boot = [*work["servers_replace"], *work["servers_create"]]
    if to_boot:
        echo(f"creating {len(to_boot)} servers, {spec.parallelism} at a time")
        with ThreadPoolExecutor(max_workers=spec.parallelism, thread_name_prefix="nodekiln-server") as pool:
            for node, future in [(n, pool.submit(boot, n)) for n in to_boot]:
                try:
                    future.result()
                except OpenStackError as exc:
                    failures.append(str(exc))
                    st.servers.pop(node.name, None) if node in work["servers_replace"] else None

    for server in work["servers_delete"]:
        with about(f"server {server.name}: deleting"):
            conn.compute.delete_server(server, ignore_missing=True)
    for server in work["servers_delete"]:
        with about(f"server {server.name}: waiting for the delete"):
            conn.compute.wait_for_delete(server, interval=POLL_SECONDS, wait=spec.bootTimeout)
        st.servers.pop((server.metadata or {}).get("nodekiln-node", ""), None)
    for port in work["ports_delete"]:
        with about(f"port {port.name}: deleting"):
            conn.network.delete_port(port, ignore_missing=True)
        st.ports.pop(port.name, None)

    if spec.floatingIP:
        vip_port = st.ports.get(names.vip_port)
        if vip_port is None:
            failures.append("floating IP: the site has no VIP port (controlPlane.endpoint.vip)")
        elif st.fip is None:
            with about(f"floating IP for VIP {site.controlPlane.endpoint.vip}: creating"):
                st.fip = _tagged(
                    conn,
                    conn.network.create_ip,
                    tag,
                    floating_network_id=st.external.id,
                    port_id=vip_port.id,
                    fixed_ip_address=str(site.controlPlane.endpoint.vip),
                    description=f"nodekiln: API endpoint of site {site.name}",
                )
        elif st.fip.port_id != vip_port.id:
            with about(f"floating IP {st.fip.floating_ip_address}: associating"):
                st.fip = conn.network.update_ip(
                    st.fip, port_id=vip_port.id, fixed_ip_address=str(site.controlPlane.endpoint.vip)
                )
    del by_name
    return failures


def _wait_active(
    conn: Connection, site: Site, st: _State, timeout: float, progress: bool
) -> tuple[dict[str, str], list[str]]:
    """Poll the project's servers (one call per round) until every node's is ACTIVE or failed."""
    wanted = [n.name for n in site.nodes if n.name in st.servers]
    status = {name: st.servers[name].status for name in wanted}
    failures: dict[str, str] = {}
    display = _Display(len(wanted)) if progress and wanted else None
    deadline = time.monotonic() + timeout
    misses = 0
    try:
        while True:
            pending = [n for n in wanted if status.get(n) in TRANSITIONAL and n not in failures]
            if display:
                display.update(sum(1 for n in wanted if status.get(n) == "ACTIVE"), pending)
            if not pending:
                break
            if time.monotonic() > deadline:
                for n in pending:
                    failures[n] = f"server {n}: still {status.get(n)} after {timeout:.0f} s"
                break
            time.sleep(POLL_SECONDS)
            try:
                current = {}
                for server in conn.compute.servers(details=True):
                    meta = server.metadata or {}
                    if meta.get("nodekiln-site") == site.name:
                        current[meta.get("nodekiln-node")] = server
                misses = 0
            except Exception as exc:
                misses += 1
                if misses >= POLL_MISSES:
                    raise OpenStackError(
                        f"waiting for servers: {misses} polls failed in a row, the last with: {one_line(exc)}"
                    ) from None
                continue
            for n in pending:
                server = current.get(n)
                if server is None:
                    failures[n] = f"server {n}: disappeared while booting"
                    continue
                status[n] = server.status
                st.servers[n] = server
                if server.status == "ERROR":
                    fault = (server.fault or {}).get("message") or "no reason given"
                    failures[n] = (
                        f"server {n}: ERROR: {fault} (flavor {_flavor_of(site, next(x for x in site.nodes if x.name == n))})"
                    )
    finally:
        if display:
            display.stop()
    return status, list(failures.values())


class _Display:
    """A rich progress bar of servers ACTIVE, naming those still booting."""

    def __init__(self, total: int):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(
            TextColumn("servers ACTIVE"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.description}"),
            console=Console(stderr=True),
        )
        self._task = self._progress.add_task("", total=total)
        self._progress.start()

    def update(self, done: int, pending: list[str]) -> None:
        waiting = ", ".join(pending[:4]) + (f" +{len(pending) - 4}" if len(pending) > 4 else "")
        self._progress.update(self._task, completed=done, description=f"booting: {waiting}" if pending else "")

    def stop(self) -> None:
        self._progress.stop()


def _local_networks() -> list[IPv4Network]:
    from nodekiln import run

    try:
        out = run.output(["ip", "-o", "-4", "addr", "show"])
    except Exception:
        return []
    nets = []
    for line in out.splitlines():
        parts = line.split()
        if "inet" in parts:
            nets.append(IPv4Network(parts[parts.index("inet") + 1], strict=False))
    return nets


def _api_address(site: Site, st: _State) -> tuple[IPv4Address | None, str]:
    """The address this host reaches the API endpoint at, or (None, why not).

    The VIP's floating IP when there is one; else the endpoint address itself, when this host
    has an address on a network holding it (a /32 says nothing about routes, so it does not count).
    """
    if st.fip is not None:
        return IPv4Address(st.fip.floating_ip_address), ""
    address = site.endpoint_address
    if any(address in net for net in _local_networks() if net.prefixlen < 32):
        return address, ""
    return None, f"{address} is not reachable from here (no floating IP, not on {site.network.cidr})"


def _wait_healthz(site: Site, secrets: Secrets, st: _State, timeout: float, echo: Callable[[str], None]) -> str:
    """Wait for the API endpoint's /healthz, when this host can reach it (floating IP, or on the site network)."""
    address, why = _api_address(site, st)
    if address is None:
        return f"not checked: {why}"
    url = f"https://{address}:{site.endpoint_port}/healthz"
    context = ssl.create_default_context(cadata=secrets.ca.cert)
    context.check_hostname = False
    echo(f"waiting for {url}")
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5, context=context) as response:
                if response.status == 200:
                    return f"{url}: ok"
        except (TimeoutError, OSError) as exc:
            last = str(exc)
        time.sleep(5)
    raise DeployError(
        f"the API endpoint {url} did not answer within {timeout:.0f} s (last: {last}); the servers are ACTIVE: look at their consoles"
    )


# -- joining a running cluster -----------------------------------------------------------------


def _joining(site: Site, st: _State, work: dict[str, Any]) -> list[Node]:
    """The servers this run creates that join a running cluster: the init node's server exists and stays.

    When the init node is (re)created itself, it runs `kubeadm init` with the stored token and
    the others join with that; nothing runs yet that a token could have expired in.
    """
    init = site.init_node.name
    to_boot = [*work["servers_replace"], *work["servers_create"]]
    if not to_boot or init not in st.servers or any(n.name == init for n in to_boot):
        return []
    return to_boot


def _created_at(server: Any) -> dt.datetime | None:
    """When Nova created the server (its `created`, ISO 8601 UTC), None when it does not say."""
    value = getattr(server, "created_at", None)
    if not value:
        return None
    try:
        moment = dt.datetime.fromisoformat(str(value))  # takes the trailing Z from Python 3.11 on
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)


def _age(delta: dt.timedelta) -> str:
    hours = delta.total_seconds() / 3600
    return f"{hours / 24:.1f} days" if hours >= 48 else f"{hours:.1f} h"


def _join_token(
    site: Site,
    secrets: Secrets,
    st: _State,
    work: dict[str, Any],
    now: dt.datetime,
    dry_run: bool,
    say: Callable[[str], None],
) -> tuple[str | None, str]:
    """(a fresh token for the new servers or None for the stored one, what to report).

    Raises JoinTokenError before anything is created when a fresh token is needed and the API
    cannot be reached from here, or refuses it.
    """
    joining = _joining(site, st, work)
    if not joining:
        return None, "no server joins a running cluster"
    ttl_text = site.kubernetes.bootstrapTokenTTL
    ttl = parse_ttl(ttl_text)
    init = site.init_node.name
    created = _created_at(st.servers[init])
    count = f"{len(joining)} new node{'s' if len(joining) != 1 else ''}"
    if not needs_fresh_token(created, now, ttl, JOIN_MARGIN):
        note = f"the stored one for {count} (the init node's server is {_age(now - created) if created else 'of unknown age'} old, the token lives {ttl_text})"
        say(f"join token: {note}")
        return None, note
    address, _why = _api_address(site, st)
    url = api_url(site, str(address or site.endpoint_address))
    age = f"was created {_age(now - created)} ago" if created else "has no creation time in Nova"
    stale = (
        f"{', '.join(n.name for n in joining)} would join the running cluster, but the server of its init node {init} {age}: "
        f"the token `kubeadm init` made lives kubernetes.bootstrapTokenTTL ({ttl_text}) and has expired, or will before "
        f"{'they join' if len(joining) > 1 else 'it joins'} ({_age(JOIN_MARGIN)} allowed for that), so site-deploy creates a fresh one through the API"
    )
    if st.fip is None:
        ways_out = (
            f"Nothing was created. Run site-deploy from a host on the site network ({site.network.cidr}), or give the site "
            f"`openstack.floatingIP: true` with this host's network in `firewall.apiFrom`."
        )
    else:  # the floating IP is there: what stops this host is the firewall, or the API is down
        ways_out = (
            f"Nothing was created. Run site-deploy from a host on the site network ({site.network.cidr}), or list this "
            f"host's network in `firewall.apiFrom` (the floating IP's clients), and check that the API answers."
        )
    if address is None:
        raise JoinTokenError(
            f"{stale}, but the API at {url} cannot be reached from here: the site has no floating IP and "
            f"this host is not on {site.network.cidr}. {ways_out}"
        )
    if dry_run:  # no connection: a dry run writes nothing, and a token is a write
        note = f"would create a fresh one (valid {ttl_text}) for {count} through {url}"
        say(f"join token: {note}")
        return None, note
    try:
        fresh = create_join_token(site, secrets, str(address), ttl, now)
    except APIUnreachableError as exc:
        raise JoinTokenError(f"{stale}, but {exc}. {ways_out}") from None
    except JoinTokenError as exc:
        raise JoinTokenError(f"{stale}, but {exc}. Nothing was created.") from None
    note = f"a fresh one (valid {ttl_text}) for {count}, created through {url}"
    say(f"join token: {note}")
    return fresh, note


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# -- entry points ------------------------------------------------------------------------------


def site_deploy(
    site: Site,
    secrets: Secrets,
    dry_run: bool = False,
    prune: bool = False,
    *,
    conn: Connection | None = None,
    renderer: Renderer | None = None,
    progress: bool = True,
    build_dir: Path = BUILD_DIR,
    echo: Callable[[str], None] | None = None,
    now: Callable[[], dt.datetime] = _utc_now,
) -> DeployResult:
    """Plan and (unless dry_run) converge the site's OpenStack resources; see the module doc.

    `now` is the clock the join token's lifetime is measured with (tests move it)."""
    spec = site.openstack
    if spec is None:
        raise OpenStackError(f"site {site.name} has no openstack section: add one to {site.file}")
    say = echo or (lambda _msg: None)
    started = time.monotonic()
    conn = conn or connect(spec)
    counter = count_calls(conn)
    mark = counter.mark()
    names = Names(site)
    # Rendered with the stored secrets: what the servers' metadata digest and the drift check use.
    user_data = render_user_data(site, secrets, renderer)
    hashes = {name: digest(data) for name, data in user_data.items()}
    st = _observe(conn, site, names)
    plan, work = _make_plan(site, names, st, hashes, prune)
    new_ports = len(work["ports_create"])
    problems = _check(conn, site, names, st, work["servers_create"], new_ports, build_dir, user_data)
    if problems:
        raise CheckError(problems)
    # The plan was made before the flavors and image were known: redo the server lines with them.
    plan, work = _make_plan(site, names, st, hashes, prune)
    result = DeployResult(plan, counter)
    fresh, result.join_token = _join_token(site, secrets, st, work, now(), dry_run, say)
    if dry_run:
        result.seconds = time.monotonic() - started
        result.calls = counter.since(mark)
        return result
    # The new servers boot with the fresh token; it is in no file, no log line and no metadata.
    boot_data = (
        render_user_data(site, secrets.model_copy(update={"bootstrapToken": fresh}), renderer) if fresh else None
    )
    failures = _converge(conn, site, names, st, plan, work, user_data, progress, say, boot_data) if plan.changes else []
    status, boot_failures = _wait_active(conn, site, st, spec.bootTimeout, progress)
    result.servers = status
    failures += boot_failures
    if failures:
        raise DeployError(
            f"{len(failures)} failed; fix the cause and run site-deploy again (what exists is kept):\n"
            + "\n".join(f"  {f}" for f in failures)
        )
    if spec.waitHealthz:
        result.healthz = _wait_healthz(site, secrets, st, spec.healthzTimeout, say)
    result.seconds = time.monotonic() - started
    result.calls = counter.since(mark)
    return result


@dataclass
class DestroyResult:
    deleted: list[str]
    calls: CallCounter


def site_destroy(
    site: Site, *, conn: Connection | None = None, echo: Callable[[str], None] | None = None
) -> DestroyResult:
    """Delete exactly what nodekiln created for the site: tagged resources, its servers and server group."""
    spec = site.openstack
    if spec is None:
        raise OpenStackError(f"site {site.name} has no openstack section: add one to {site.file}")
    say = echo or (lambda _msg: None)
    conn = conn or connect(spec)
    counter = count_calls(conn)
    mark = counter.mark()
    names = Names(site)
    tag = names.tag
    deleted: list[str] = []
    with about("reading the site's servers"):
        servers = [
            s for s in conn.compute.servers(details=True) if (s.metadata or {}).get("nodekiln-site") == site.name
        ]
    for server in servers:
        with about(f"server {server.name}: deleting"):
            conn.compute.delete_server(server, ignore_missing=True)
        deleted.append(f"server {server.name}")
    if servers:
        say(f"waiting for {len(servers)} servers to go")
    for server in servers:
        with about(f"server {server.name}: waiting for the delete"):
            conn.compute.wait_for_delete(server, interval=POLL_SECONDS, wait=spec.bootTimeout)
    with about(f"server group {names.server_group}: deleting"):
        for group in conn.compute.server_groups():
            if group.name == names.server_group:
                conn.compute.delete_server_group(group, ignore_missing=True)
                deleted.append(f"server group {group.name}")
    for kind, listing, delete in _owned_kinds(conn):
        with about(f"{kind}s: deleting"):
            for resource in listing(tags=tag):
                if kind == "router":  # its subnet interfaces first, or Neutron refuses
                    for port in conn.network.ports(device_id=resource.id, device_owner="network:router_interface"):
                        for ip in port.fixed_ips:
                            conn.network.remove_interface_from_router(resource, subnet=ip["subnet_id"])
                delete(resource, ignore_missing=True)
                deleted.append(f"{kind} {_label(resource)}")
    return DestroyResult(deleted, counter.since(mark))


def _owned_kinds(conn: Connection) -> list[tuple[str, Callable[..., Any], Callable[..., Any]]]:
    """The Neutron resources a site owns (by tag): (kind, list, delete), in an order they can be deleted."""
    net = conn.network
    return [
        ("floating IP", net.ips, net.delete_ip),
        ("port", net.ports, net.delete_port),
        ("router", net.routers, net.delete_router),
        ("security group", net.security_groups, net.delete_security_group),
        ("subnet", net.subnets, net.delete_subnet),
        ("network", net.networks, net.delete_network),
    ]


def _label(resource: Any) -> str:
    return getattr(resource, "floating_ip_address", None) or getattr(resource, "name", None) or resource.id


def tagged_leftovers(conn: Connection, site: Site) -> list[str]:
    """Everything still marked as the site's (for tests and a final check)."""
    tag = Names(site).tag
    left = [
        f"server {s.name}"
        for s in conn.compute.servers(details=True)
        if (s.metadata or {}).get("nodekiln-site") == site.name
    ]
    left += [f"server group {g.name}" for g in conn.compute.server_groups() if g.name == Names(site).server_group]
    for kind, listing, _ in _owned_kinds(conn):
        left += [f"{kind} {_label(r)}" for r in listing(tags=tag)]
    return left


__all__ = [
    "CheckError",
    "DeployError",
    "DeployResult",
    "Plan",
    "one_line",
    "site_deploy",
    "site_destroy",
    "tagged_leftovers",
]
