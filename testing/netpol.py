"""A NetworkPolicy evaluator: would the cluster let this connection through? (test scaffolding)

It mirrors the semantics the API documents in k8s.io/api networking/v1 types.go (the doc
comments of NetworkPolicySpec, NetworkPolicyIngressRule/EgressRule, NetworkPolicyPeer,
NetworkPolicyPort, IPBlock) and kubernetes.io/docs/concepts/services-networking/network-policies:

- a pod is isolated for a direction when any NetworkPolicy of its namespace selects it
  (spec.podSelector; {} selects every pod) and lists that direction in policyTypes
  (default: Ingress, plus Egress when the policy has egress rules);
- an isolated pod's traffic in that direction is allowed when any rule of any policy that
  selects it matches (policies add up: a union); a pod that is not isolated allows everything;
- a connection needs both the source's egress and the destination's ingress (when the
  destination is a pod) to allow it;
- a rule's `to`/`from` absent or empty matches every peer; `ports` absent or empty matches every
  port; a peer is podSelector (pods of the policy's namespace), namespaceSelector (every pod of
  the matching namespaces), both (matching pods in matching namespaces), or ipBlock (cidr minus
  except; matched against pod IPs too, as Calico does);
- a port's protocol defaults to TCP; no port means every port of the protocol; a named port
  matches the destination pod's container port of that name; endPort makes a range.

Namespaces carry the label kubernetes.io/metadata.name: <name> as the API server sets it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import Any

Obj = dict[str, Any]


@dataclass(frozen=True)
class Pod:
    namespace: str
    labels: Mapping[str, str]
    ip: str | None = None
    ports: Mapping[str, int] = field(default_factory=dict)  # named container ports


@dataclass(frozen=True)
class Address:
    """A destination outside the cluster's pods (the edge VIP, the Internet)."""

    ip: str


Peer = Pod | Address


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A LabelSelector (matchLabels and matchExpressions); {} matches everything."""
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values") or []
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and key in labels and labels[key] in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def _namespace_labels(namespace: str) -> dict[str, str]:
    return {"kubernetes.io/metadata.name": namespace}


def _ip_matches(block: Mapping[str, Any], ip: str | None) -> bool:
    if ip is None:
        return False
    address = IPv4Address(ip)
    if address not in IPv4Network(block["cidr"]):
        return False
    return not any(address in IPv4Network(cidr) for cidr in block.get("except") or [])


def peer_matches(peer: Mapping[str, Any], policy_namespace: str, other: Peer) -> bool:
    if "ipBlock" in peer:
        return _ip_matches(peer["ipBlock"], other.ip)
    if not isinstance(other, Pod):
        return False  # selectors select pods only
    pods, namespaces = peer.get("podSelector"), peer.get("namespaceSelector")
    if namespaces is not None:
        if not selector_matches(namespaces, _namespace_labels(other.namespace)):
            return False
    elif other.namespace != policy_namespace:
        return False
    return pods is None or selector_matches(pods, other.labels)


def port_matches(rule_ports: Iterable[Mapping[str, Any]] | None, port: int, protocol: str, target: Peer) -> bool:
    ports = list(rule_ports or [])
    if not ports:
        return True
    for spec in ports:
        if spec.get("protocol", "TCP") != protocol:
            continue
        wanted = spec.get("port")
        if wanted is None:
            return True
        if isinstance(wanted, str):
            named = target.ports.get(wanted) if isinstance(target, Pod) else None
            if named == port:
                return True
            continue
        if wanted <= port <= spec.get("endPort", wanted):
            return True
    return False


def _types(spec: Mapping[str, Any]) -> list[str]:
    if spec.get("policyTypes"):
        return list(spec["policyTypes"])
    return ["Ingress", *(["Egress"] if "egress" in spec else [])]


@dataclass(frozen=True)
class Policies:
    """NetworkPolicy objects, each with its namespace filled in (helm template may leave it out)."""

    items: list[Obj]

    @classmethod
    def of(cls, objects: Iterable[tuple[str, Obj]]) -> Policies:
        """(release namespace, object) pairs: NetworkPolicies kept, namespace defaulted."""
        found = []
        for namespace, item in objects:
            if item.get("kind") == "NetworkPolicy" and item.get("apiVersion") == "networking.k8s.io/v1":
                metadata = {**item.get("metadata", {})}
                metadata.setdefault("namespace", namespace)
                found.append({**item, "metadata": metadata})
        return cls(found)

    def selecting(self, pod: Pod, direction: str) -> list[Obj]:
        return [
            p
            for p in self.items
            if p["metadata"]["namespace"] == pod.namespace
            and selector_matches(p["spec"].get("podSelector") or {}, pod.labels)
            and direction in _types(p["spec"])
        ]

    def _allows(self, pod: Pod, direction: str, other: Peer, destination: Peer, port: int, protocol: str) -> bool:
        """One direction for `pod`: not isolated, or a rule of a selecting policy admits `other`
        (egress: rules' `to`; ingress: rules' `from`; named ports resolve on `destination`)."""
        selecting = self.selecting(pod, direction)
        if not selecting:
            return True
        rules_key, peers_key = ("egress", "to") if direction == "Egress" else ("ingress", "from")
        for policy in selecting:
            for rule in policy["spec"].get(rules_key) or []:
                peers = rule.get(peers_key) or []
                if (not peers or any(peer_matches(p, pod.namespace, other) for p in peers)) and port_matches(
                    rule.get("ports"), port, protocol, destination
                ):
                    return True
        return False

    def egress_allows(self, source: Pod, target: Peer, port: int, protocol: str) -> bool:
        return self._allows(source, "Egress", target, target, port, protocol)

    def ingress_allows(self, target: Pod, source: Peer, port: int, protocol: str) -> bool:
        return self._allows(target, "Ingress", source, target, port, protocol)

    def allows(self, source: Pod, target: Peer, port: int, protocol: str = "TCP") -> bool:
        """Whether `source` may open a connection to `target` on port/protocol."""
        if not self.egress_allows(source, target, port, protocol):
            return False
        return not isinstance(target, Pod) or self.ingress_allows(target, source, port, protocol)
