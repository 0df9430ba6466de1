"""A site-deploy plan as data: one frozen action per resource, in the order the plan is printed.

The printed plan (`site-deploy --dry-run`, and the table after a run) and converge read the
same objects: what a line says is made from the very fields converge creates the resource
from, so the two cannot tell different stories. `kind`, `action`, `name` and `detail` are the
printed columns; the rest is what converge needs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal, TypeVar

from nodekiln.openstack.resources import Rule

if TYPE_CHECKING:
    from openstack.compute.v2.server import Server
    from openstack.network.v2.port import Port
    from rich.table import Table

    from nodekiln.config.site import Node

Kind = Literal[
    "network",
    "subnet",
    "router",
    "router-interface",
    "security-group",
    "rules",
    "port",
    "server-group",
    "server",
    "floating-ip",
]
Verb = Literal["create", "keep", "update", "replace", "delete", "orphan"]

ORPHAN_DETAIL = "not in the site: --prune deletes it"


def _rules_detail(rules: Sequence[Rule], more: str) -> str:
    return f"{len(rules)}: " + "; ".join(r.describe() for r in rules[:4]) + (more if len(rules) > 4 else "")


# -- nothing to do -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Keep:
    """The resource exists and stays as it is (the detail says how it is, or how it differs)."""

    kind: Kind
    name: str
    detail: str = ""
    action: ClassVar[Verb] = "keep"


@dataclass(frozen=True)
class Orphan:
    """The site's resource of a node no longer in the site, left alone without --prune."""

    kind: Kind
    name: str
    detail: str = ORPHAN_DETAIL
    action: ClassVar[Verb] = "orphan"


# -- network -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CreateNetwork:
    name: str
    mtu: int | None
    kind: ClassVar[Kind] = "network"
    action: ClassVar[Verb] = "create"
    detail: ClassVar[str] = ""


@dataclass(frozen=True)
class CreateSubnet:
    name: str
    cidr: str
    gateway: str
    dns: tuple[str, ...]
    allocation_pool: dict[str, str] | None  # {"start", "end"}, None for Neutron's default
    kind: ClassVar[Kind] = "subnet"
    action: ClassVar[Verb] = "create"

    @property
    def detail(self) -> str:
        return self.cidr


@dataclass(frozen=True)
class CreateRouter:
    name: str
    external_network: str  # its name in the site; converge takes the id the checks found
    kind: ClassVar[Kind] = "router"
    action: ClassVar[Verb] = "create"

    @property
    def detail(self) -> str:
        return f"gateway {self.external_network}"


@dataclass(frozen=True)
class CreateRouterInterface:
    name: str  # the router's
    subnet: str
    kind: ClassVar[Kind] = "router-interface"
    action: ClassVar[Verb] = "create"

    @property
    def detail(self) -> str:
        return self.subnet


# -- security groups ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CreateSecurityGroup:
    name: str
    role: str
    description: str
    kind: ClassVar[Kind] = "security-group"
    action: ClassVar[Verb] = "create"
    detail: ClassVar[str] = ""


@dataclass(frozen=True)
class CreateRules:
    """Rules a role's group lacks; for a group this run creates, all of them, less the defaults
    the cloud gives a new group (known only once it exists: converge leaves those out)."""

    name: str  # the group's
    role: str
    rules: tuple[Rule, ...]
    kind: ClassVar[Kind] = "rules"
    action: ClassVar[Verb] = "create"

    @property
    def detail(self) -> str:
        return _rules_detail(self.rules, " …")


@dataclass(frozen=True)
class DeleteRules:
    name: str  # the group's
    role: str
    rules: tuple[Rule, ...]
    rule_ids: tuple[str, ...]
    kind: ClassVar[Kind] = "rules"
    action: ClassVar[Verb] = "delete"

    @property
    def detail(self) -> str:
        return _rules_detail(self.rules, "")


# -- ports -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PortSpec:
    """A port as the site wants it: a node's, or (roles control-plane, no pairs) the VIP's."""

    name: str
    fixed_ip: str
    roles: frozenset[str]  # whose security groups it is in
    pairs: frozenset[str]  # allowed address pairs: the VIP, on control planes of a load-balanced site


@dataclass(frozen=True)
class CreatePort:
    spec: PortSpec
    kind: ClassVar[Kind] = "port"
    action: ClassVar[Verb] = "create"

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def detail(self) -> str:
        pairs = self.spec.pairs
        return self.spec.fixed_ip + (f", VIP pair {', '.join(pairs)}" if pairs else "")


@dataclass(frozen=True)
class UpdatePort:
    spec: PortSpec
    detail: str  # what differs
    kind: ClassVar[Kind] = "port"
    action: ClassVar[Verb] = "update"

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass(frozen=True)
class DeletePort:
    port: Port
    kind: ClassVar[Kind] = "port"
    action: ClassVar[Verb] = "delete"
    detail: ClassVar[str] = ""

    @property
    def name(self) -> str:
        return str(self.port.name)


# -- servers -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CreateServerGroup:
    name: str
    policy: str
    kind: ClassVar[Kind] = "server-group"
    action: ClassVar[Verb] = "create"

    @property
    def detail(self) -> str:
        return self.policy


@dataclass(frozen=True)
class CreateServer:
    node: Node
    flavor: str  # its name or id in the site
    kind: ClassVar[Kind] = "server"
    action: ClassVar[Verb] = "create"

    @property
    def name(self) -> str:
        return self.node.name

    @property
    def detail(self) -> str:
        return f"{self.flavor}, {self.node.role}"


@dataclass(frozen=True)
class ReplaceServer:
    """A server in ERROR: deleted, then created as CreateServer would."""

    node: Node
    flavor: str
    old: Server
    kind: ClassVar[Kind] = "server"
    action: ClassVar[Verb] = "replace"

    @property
    def name(self) -> str:
        return self.node.name

    @property
    def detail(self) -> str:
        fault = (self.old.fault or {}).get("message", "")
        return f"ERROR {fault}".strip()


@dataclass(frozen=True)
class DeleteServer:
    name: str  # the node's
    server: Server
    kind: ClassVar[Kind] = "server"
    action: ClassVar[Verb] = "delete"
    detail: ClassVar[str] = ""


# -- floating IPs: the API endpoint's VIP, the edge's public address ------------------------------


@dataclass(frozen=True)
class CreateFloatingIP:
    vip: str  # the fixed address it points at: the API endpoint's VIP, or the edge's public address
    external_network: str  # its name in the site; converge takes the id the checks found
    description: str  # what tells the site's floating IPs apart (Names.fip_description)
    port: str  # the name of the port holding `vip`
    edge: bool = False  # the edge's, not the API endpoint's
    kind: ClassVar[Kind] = "floating-ip"
    action: ClassVar[Verb] = "create"

    @property
    def name(self) -> str:
        return f"{'edge' if self.edge else 'VIP'} {self.vip}"

    @property
    def detail(self) -> str:
        return f"from {self.external_network}"


@dataclass(frozen=True)
class UpdateFloatingIP:
    """The floating IP exists but is not on its port (or that port is made this run)."""

    name: str  # its address
    vip: str
    port: str  # the name of the port holding `vip`
    edge: bool = False
    kind: ClassVar[Kind] = "floating-ip"
    action: ClassVar[Verb] = "update"

    @property
    def detail(self) -> str:
        return f"associate with port {self.port} ({self.vip})"


Action = (
    Keep
    | Orphan
    | CreateNetwork
    | CreateSubnet
    | CreateRouter
    | CreateRouterInterface
    | CreateSecurityGroup
    | CreateRules
    | DeleteRules
    | CreatePort
    | UpdatePort
    | DeletePort
    | CreateServerGroup
    | CreateServer
    | ReplaceServer
    | DeleteServer
    | CreateFloatingIP
    | UpdateFloatingIP
)
A = TypeVar("A", bound=Action)

STYLE: dict[Verb, str] = {
    "create": "green",
    "update": "yellow",
    "replace": "yellow",
    "delete": "red",
    "orphan": "magenta",
}


@dataclass(frozen=True)
class Plan:
    steps: tuple[Action, ...] = ()

    def of(self, kind: type[A], where: Callable[[A], bool] = lambda _a: True) -> list[A]:
        """The actions of one type, in plan order."""
        return [s for s in self.steps if isinstance(s, kind) and where(s)]

    @property
    def booting(self) -> list[CreateServer | ReplaceServer]:
        """The servers this run creates, the failed ones it replaces first (the order they boot in)."""
        return [*self.of(ReplaceServer), *self.of(CreateServer)]

    def count(self, action: Verb) -> int:
        return sum(1 for s in self.steps if s.action == action)

    @property
    def changes(self) -> list[Action]:
        return [s for s in self.steps if s.action not in ("keep", "orphan")]

    def summary(self) -> str:
        verbs: tuple[Verb, ...] = ("create", "update", "replace", "delete")
        parts = [f"{self.count(a)} to {a}" for a in verbs if self.count(a)]
        return ", ".join(parts) or "nothing to change"

    def table(self) -> Table:
        from rich.table import Table

        table = Table("resource", "name", "action", "detail")
        for s in self.steps:
            style = STYLE.get(s.action)
            table.add_row(s.kind, s.name, f"[{style}]{s.action}[/]" if style else s.action, s.detail)
        return table
