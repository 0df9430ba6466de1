"""Prometheus' target relabelling, for checking nodekiln's scrape jobs against real objects.

A stand-in: Prometheus runs only inside the cluster, and promtool checks a configuration's syntax,
not what it keeps. This mirrors prometheus/prometheus model/relabel/relabel.go (`relabel`, the
`replace`, `keep` and `drop` actions, the defaults of `DefaultRelabelConfig`: separator ";", regex
"(.*)" anchored as "^(?s:...)$", replacement "$1") and the meta labels of
discovery/kubernetes/endpointslice.go, service.go and pod.go (`__meta_kubernetes_service_annotation_<name>`,
`__meta_kubernetes_service_label_<name>`, `__meta_kubernetes_pod_annotation_<name>`, names through
strutil.SanitizeLabelName). Only what nodekiln's jobs use is here: another action is an
error, not a guess.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any


def sanitize(name: str) -> str:
    """strutil.SanitizeLabelName: every character outside [a-zA-Z0-9_] becomes '_'."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def service_endpoint_labels(
    service: Mapping[str, Any], namespace: str, address: str, port: int, pod: str
) -> dict[str, str]:
    """The meta labels of one endpoint of a Service (role endpointslice) backed by a pod;
    `namespace` is the Service's (helm template leaves it out where the chart does)."""
    meta = service["metadata"]
    labels = {
        "__address__": f"{address}:{port}",
        "__meta_kubernetes_namespace": meta.get("namespace") or namespace,
        "__meta_kubernetes_service_name": meta["name"],
        "__meta_kubernetes_pod_name": pod,
    }
    labels |= _meta("service", "label", meta.get("labels")) | _meta("service", "annotation", meta.get("annotations"))
    return labels


def _meta(role: str, kind: str, values: Mapping[str, Any] | None) -> dict[str, str]:
    """__meta_kubernetes_<role>_<kind>_<name> and its <kind>present_<name> for each key."""
    found = {}
    for key, value in (values or {}).items():
        found[f"__meta_kubernetes_{role}_{kind}_{sanitize(key)}"] = str(value)
        found[f"__meta_kubernetes_{role}_{kind}present_{sanitize(key)}"] = "true"
    return found


def pod_targets(template: Mapping[str, Any], namespace: str, address: str, pod: str) -> list[dict[str, str]]:
    """The targets of one pod of a workload's pod template (role pod): one per declared container
    port at <pod IP>:<port>, and one port-free target for a container declaring none
    (pod.go buildPod)."""
    common = {
        "__meta_kubernetes_namespace": namespace,
        "__meta_kubernetes_pod_name": pod,
        **_meta("pod", "annotation", template["metadata"].get("annotations")),
    }
    targets = []
    for container in template["spec"]["containers"]:
        base = {**common, "__meta_kubernetes_pod_container_name": container["name"]}
        ports = container.get("ports") or []
        if not ports:
            targets.append({**base, "__address__": address})
        for port in ports:
            targets.append(
                {
                    **base,
                    "__address__": f"{address}:{port['containerPort']}",
                    "__meta_kubernetes_pod_container_port_number": str(port["containerPort"]),
                    "__meta_kubernetes_pod_container_port_name": port.get("name", ""),
                }
            )
    return targets


def _expand(template: str, match: re.Match[str]) -> str:
    """Go's Regexp.ExpandString for $1 and ${1} (a group that did not take part is empty)."""
    return re.sub(r"\$(?:\{(\w+)\}|(\d+))", lambda m: match.group(int(m.group(1) or m.group(2))) or "", template)


def relabel(labels: Mapping[str, str], configs: Sequence[Mapping[str, Any]]) -> dict[str, str] | None:
    """The target's labels after `configs`, or None when a rule drops it."""
    out = dict(labels)
    for config in configs:
        action = config.get("action", "replace")
        value = config.get("separator", ";").join(out.get(name, "") for name in config.get("source_labels", []))
        regex = re.compile(f"^(?s:{config.get('regex', '(.*)')})$")
        match = regex.match(value)
        if action == "keep":
            if match is None:
                return None
        elif action == "drop":
            if match is not None:
                return None
        elif action == "replace":
            if match is None:
                continue
            result = _expand(config.get("replacement", "$1"), match)
            if result:
                out[config["target_label"]] = result
            else:
                out.pop(config["target_label"], None)
        else:
            raise ValueError(f"relabel action {action!r} is not mirrored here")
    return out


def scrape_url(labels: Mapping[str, str]) -> str:
    """What Prometheus scrapes for a kept target (scheme and path default to http and /metrics)."""
    return f"{labels.get('__scheme__', 'http')}://{labels['__address__']}{labels.get('__metrics_path__', '/metrics')}"
