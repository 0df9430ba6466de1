"""Rendered objects checked the way a cluster would check them before storing them.

Built-in kinds: `kubernetes-validate --strict` at the site's Kubernetes version (the API
server's OpenAPI schemas; strict: an unknown field is an error). Custom resources: the
`openAPIV3Schema` of the CRD that serves their apiVersion and kind, taken from the charts'
own rendered CRDs. kubectl's default `--validate=strict` asks the API server for strict field
validation, which rejects a field the schema does not declare unless the schema keeps unknown
fields (`x-kubernetes-preserve-unknown-fields`) — mirrored here by closing every object schema
that declares `properties` (k8s.io/apiextensions-apiserver pkg/apiserver/schema/pruning).
`x-kubernetes-int-or-string` allows either type; `nullable` allows null; an
`x-kubernetes-embedded-resource` also allows apiVersion, kind and metadata.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import jsonschema
import kubernetes_validate

Obj = dict[str, Any]


def crd_schemas(objects: Iterable[Obj]) -> dict[tuple[str, str, str], Obj]:
    """(group, version, kind) -> the strict JSON schema of every CRD among `objects`."""
    found: dict[tuple[str, str, str], Obj] = {}
    for item in objects:
        if item.get("kind") != "CustomResourceDefinition":
            continue
        spec = item["spec"]
        for version in spec["versions"]:
            schema = (version.get("schema") or {}).get("openAPIV3Schema")
            if schema is not None and version.get("served", True):
                root = strict(schema)
                # every object may carry these, whether its schema names them or not
                root.setdefault("properties", {})
                for name in ("apiVersion", "kind"):
                    root["properties"].setdefault(name, {"type": "string"})
                root["properties"].setdefault("metadata", {"type": "object"})
                found[(spec["group"], version["name"], spec["names"]["kind"])] = root
    return found


def strict(schema: Obj) -> Obj:
    """A CRD's structural schema as a JSON schema that rejects undeclared fields."""
    out = {k: v for k, v in schema.items() if not k.startswith("x-kubernetes-") and k != "nullable"}
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if "properties" in schema:
        out["properties"] = {name: strict(sub) for name, sub in schema["properties"].items()}
        if schema.get("x-kubernetes-embedded-resource"):
            for name in ("apiVersion", "kind"):
                out["properties"].setdefault(name, {"type": "string"})
            out["properties"].setdefault("metadata", {"type": "object"})
        if not schema.get("x-kubernetes-preserve-unknown-fields") and "additionalProperties" not in schema:
            out["additionalProperties"] = False
    if isinstance(schema.get("additionalProperties"), dict):
        out["additionalProperties"] = strict(schema["additionalProperties"])
    if isinstance(schema.get("items"), dict):
        out["items"] = strict(schema["items"])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in schema and key in out and not schema.get("x-kubernetes-int-or-string"):
            out[key] = [strict(sub) for sub in schema[key]]
    if schema.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"] if isinstance(out["type"], str) else [*out["type"], "null"]
    return out


def problems(objects: list[Obj], kube_version: str, crds: dict[tuple[str, str, str], Obj]) -> list[str]:
    """What a cluster at `kube_version` with these CRDs would reject, one line per problem."""
    groups = {group for group, _, _ in crds}
    found: list[str] = []
    for item in objects:
        api, kind = item.get("apiVersion", ""), item.get("kind", "")
        name = f"{kind}/{(item.get('metadata') or {}).get('name')}"
        group, _, version = api.rpartition("/")
        if group in groups or (group and "." in group and not group.endswith(".k8s.io")):
            schema = crds.get((group, version, kind))
            if schema is None:
                found.append(f"{name}: no CRD among the rendered charts serves {api} {kind}")
                continue
            for error in jsonschema.Draft7Validator(schema).iter_errors(item):
                where = ".".join(str(p) for p in error.absolute_path)
                found.append(f"{name}: {where}: {error.message}")
            continue
        try:
            kubernetes_validate.validate(item, kube_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            found.append(f"{name}: {where}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            found.append(f"{name}: {api} {kind} is not a kind of Kubernetes {kube_version}: {exc}")
    return found
