"""A small kustomize renderer for the subset examples/kubernetes uses.

No kustomize binary can run here, so the tests render the overlays with this
and validate what comes out. It implements exactly the fields the manifests
use, with kustomize's semantics, and refuses any other field: a kustomization
that grows a feature this renderer does not know fails the tests instead of
being rendered wrongly.

Supported kustomization fields:

``resources``
    Files (multi-document YAML) and directories holding a kustomization.yaml
    (bases), rendered recursively, in order.
``namespace``
    Set on every namespaced object (kustomize's namespace transformer). Not
    on cluster-scoped kinds. RoleBinding subjects are left as written; the
    tests check they name the ServiceAccount's namespace.
``configMapGenerator`` / ``secretGenerator``
    ``files`` (``name`` or ``key=name``), ``literals`` (``key=value``),
    ``envs`` (``key=value`` lines, ``#`` comments), ``behavior``
    (create, replace, merge), ``type`` for Secrets. The generated name gets
    kustomize's content-hash suffix (the algorithm of kustomize's
    api/hasher: SHA-256 of the JSON of kind, name, data, type; first ten hex
    digits with 0,1,3,a,e mapped to g,h,k,m,t), and every reference to the
    object from a pod template is rewritten to the suffixed name.
``generatorOptions``
    ``labels`` and ``disableNameSuffixHash``.
``patches``
    JSON 6902 patches (RFC 6902: add, remove, replace, move, copy, test),
    inline (``patch``) or from a file (``path``), applied to the objects a
    ``target`` (group, version, kind, name, namespace) selects. A patch whose
    text is a YAML map (a strategic-merge patch) is refused.

Everything is plain data (dicts and lists) as PyYAML loads it.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")

#: Kinds without a namespace among those the manifests could contain.
CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "RuntimeClass",
    "PriorityClass",
    "StorageClass",
    "PersistentVolume",
    "Node",
    "ValidatingWebhookConfiguration",
    "MutatingWebhookConfiguration",
}

SUPPORTED_FIELDS = {
    "apiVersion",
    "kind",
    "resources",
    "namespace",
    "configMapGenerator",
    "secretGenerator",
    "generatorOptions",
    "patches",
}


class KustomizeError(Exception):
    """The kustomization uses something this renderer does not implement, or is wrong."""


class PatchError(KustomizeError):
    """A JSON 6902 operation failed (a missing path, a failed ``test``)."""


# --- JSON 6902 -----------------------------------------------------------------


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"JSON pointer must start with '/': {path!r}")
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def _index(container: list, token: str, *, for_add: bool = False) -> int:
    if token == "-" and for_add:
        return len(container)
    if not token.isdigit() or (len(token) > 1 and token.startswith("0")):
        raise PatchError(f"bad array index {token!r}")
    i = int(token)
    limit = len(container) + (1 if for_add else 0)
    if i >= limit:
        raise PatchError(f"array index {i} out of range (length {len(container)})")
    return i


def _parent(doc: Any, tokens: list[str]) -> tuple[Any, str]:
    node = doc
    for token in tokens[:-1]:
        if isinstance(node, dict):
            if token not in node:
                raise PatchError(f"path component {token!r} does not exist")
            node = node[token]
        elif isinstance(node, list):
            node = node[_index(node, token)]
        else:
            raise PatchError(f"cannot descend into a scalar at {token!r}")
    return node, tokens[-1]


def _get(doc: Any, path: str) -> Any:
    tokens = _pointer(path)
    if not tokens:
        return doc
    parent, last = _parent(doc, tokens)
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchError(f"{path} does not exist")
        return parent[last]
    if isinstance(parent, list):
        return parent[_index(parent, last)]
    raise PatchError(f"{path} does not exist")


def _add(doc: Any, path: str, value: Any) -> Any:
    tokens = _pointer(path)
    if not tokens:
        return value
    parent, last = _parent(doc, tokens)
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, last, for_add=True), value)
    else:
        raise PatchError(f"cannot add to a scalar at {path}")
    return doc


def _remove(doc: Any, path: str) -> Any:
    tokens = _pointer(path)
    if not tokens:
        raise PatchError("cannot remove the whole document")
    parent, last = _parent(doc, tokens)
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchError(f"{path} does not exist")
        del parent[last]
    elif isinstance(parent, list):
        del parent[_index(parent, last)]
    else:
        raise PatchError(f"{path} does not exist")
    return doc


def apply_json6902(doc: Any, operations: list[dict]) -> Any:
    """Apply RFC 6902 operations to a copy of ``doc`` and return it; raise PatchError on failure."""
    doc = copy.deepcopy(doc)
    for op in operations:
        kind = op.get("op")
        path = op.get("path")
        if not isinstance(path, str):
            raise PatchError(f"operation without a path: {op!r}")
        if kind == "add":
            doc = _add(doc, path, copy.deepcopy(op["value"]))
        elif kind == "remove":
            doc = _remove(doc, path)
        elif kind == "replace":
            _get(doc, path)  # must exist
            doc = _add(_remove(doc, path), path, copy.deepcopy(op["value"]))
        elif kind == "move":
            value = _get(doc, op["from"])
            doc = _add(_remove(doc, op["from"]), path, value)
        elif kind == "copy":
            doc = _add(doc, path, copy.deepcopy(_get(doc, op["from"])))
        elif kind == "test":
            if _get(doc, path) != op["value"]:
                raise PatchError(f"test failed at {path}: {_get(doc, path)!r} != {op['value']!r}")
        else:
            raise PatchError(f"unknown operation {kind!r}")
    return doc


# --- generators ----------------------------------------------------------------


def _go_json(value: Any) -> bytes:
    """JSON as Go's encoding/json writes a map: sorted keys, no spaces, <>& escaped."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    text = text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    return text.encode("utf-8")


def _encode_hash(hex_digest: str) -> str:
    table = {"0": "g", "1": "h", "3": "k", "a": "m", "e": "t"}
    return "".join(table.get(c, c) for c in hex_digest[:10])


def content_hash(obj: dict) -> str:
    """kustomize's name suffix for a generated ConfigMap or Secret."""
    if obj["kind"] == "ConfigMap":
        encoded: dict[str, Any] = {"kind": "ConfigMap", "name": obj["metadata"]["name"], "data": obj.get("data") or ""}
        if obj.get("binaryData"):
            encoded["binaryData"] = obj["binaryData"]
    else:
        encoded = {
            "kind": "Secret",
            "type": obj.get("type", ""),
            "name": obj["metadata"]["name"],
            "data": obj.get("data") or "",
        }
    return _encode_hash(hashlib.sha256(_go_json(encoded)).hexdigest())


def _parse_kv(line: str, where: str) -> tuple[str, str]:
    if "=" not in line:
        raise KustomizeError(f"{where}: expected key=value, got {line!r}")
    key, value = line.split("=", 1)
    return key.strip(), value


def _generator_data(spec: dict, root: Path) -> dict[str, str]:
    data: dict[str, str] = {}
    unknown = set(spec) - {"name", "namespace", "behavior", "files", "literals", "envs", "type", "options"}
    if unknown:
        raise KustomizeError(f"generator {spec.get('name')!r}: unsupported fields {sorted(unknown)}")
    for entry in spec.get("files", []):
        key, _, name = entry.rpartition("=") if "=" in entry else ("", "", entry)
        path = (root / name).resolve()
        if root.resolve() not in path.parents:
            raise KustomizeError(f"{entry!r} is outside {root} (kustomize's load restrictor refuses it)")
        data[key or Path(name).name] = path.read_text(encoding="utf-8")
    for literal in spec.get("literals", []):
        key, value = _parse_kv(literal, f"generator {spec['name']!r}")
        data[key] = value
    for env_file in spec.get("envs", []):
        path = root / env_file
        if not path.is_file():
            raise KustomizeError(f"generator {spec['name']!r}: env file {path} does not exist")
        for raw in path.read_text(encoding="utf-8").splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            key, value = _parse_kv(line, str(path))
            data[key] = value
    return data


def _generate(kind: str, spec: dict, root: Path, options: dict, namespace: str | None) -> dict:
    data = _generator_data(spec, root)
    obj: dict[str, Any] = {"apiVersion": "v1", "kind": kind, "metadata": {"name": spec["name"]}}
    if options.get("labels"):
        obj["metadata"]["labels"] = dict(options["labels"])
    if spec.get("namespace") or namespace:
        obj["metadata"]["namespace"] = spec.get("namespace") or namespace
    if kind == "Secret":
        obj["type"] = spec.get("type", "Opaque")
        obj["data"] = {k: base64.b64encode(v.encode("utf-8")).decode("ascii") for k, v in data.items()}
    else:
        obj["data"] = data
    return obj


# --- rendering -----------------------------------------------------------------


def _kustomization_file(directory: Path) -> Path:
    for name in KUSTOMIZATION_FILES:
        if (directory / name).is_file():
            return directory / name
    raise KustomizeError(f"no kustomization.yaml in {directory}")


def _load_yaml_documents(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


def _matches(obj: dict, target: dict) -> bool:
    api_version = obj.get("apiVersion", "")
    group, _, version = api_version.rpartition("/")
    checks = {
        "group": group,
        "version": version,
        "kind": obj.get("kind"),
        "name": obj.get("metadata", {}).get("name"),
        "namespace": obj.get("metadata", {}).get("namespace"),
    }
    unknown = set(target) - set(checks)
    if unknown:
        raise KustomizeError(f"unsupported patch target fields {sorted(unknown)}")
    return all(checks[k] == v for k, v in target.items())


def _key(obj: dict) -> tuple[str, str, str]:
    return obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"]


class Rendered:
    """Objects plus the generated names (original -> suffixed) still to be substituted."""

    def __init__(self) -> None:
        self.objects: list[dict] = []
        self.generated: dict[tuple[str, str], dict] = {}  # (kind, name) -> object


def _render(directory: Path) -> Rendered:
    path = _kustomization_file(directory)
    k = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    unknown = set(k) - SUPPORTED_FIELDS
    if unknown:
        raise KustomizeError(f"{path}: fields this renderer does not implement: {sorted(unknown)}")
    if k.get("kind", "Kustomization") != "Kustomization":
        raise KustomizeError(f"{path}: kind must be Kustomization")

    out = Rendered()
    for resource in k.get("resources", []):
        target = (directory / resource).resolve()
        if target.is_dir():
            base = _render(target)
            out.objects.extend(base.objects)
            out.generated.update(base.generated)
        elif target.is_file():
            out.objects.extend(_load_yaml_documents(target))
        else:
            raise KustomizeError(f"{path}: resource {resource!r} not found")

    namespace = k.get("namespace")
    options = k.get("generatorOptions", {}) or {}
    unknown = set(options) - {"labels", "disableNameSuffixHash"}
    if unknown:
        raise KustomizeError(f"{path}: unsupported generatorOptions {sorted(unknown)}")
    for field_name, kind in (("configMapGenerator", "ConfigMap"), ("secretGenerator", "Secret")):
        for spec in k.get(field_name, []) or []:
            behavior = spec.get("behavior", "create")
            obj = _generate(kind, spec, directory, options, namespace)
            existing = out.generated.get((kind, spec["name"]))
            if behavior == "create":
                if existing is not None:
                    raise KustomizeError(f"{path}: {kind} {spec['name']!r} already generated by a base")
                obj["_suffix"] = not options.get("disableNameSuffixHash", False)
                out.objects.append(obj)
                out.generated[(kind, spec["name"])] = obj
            elif behavior in ("replace", "merge"):
                if existing is None:
                    raise KustomizeError(f"{path}: {behavior} of {kind} {spec['name']!r}, which no base generates")
                if behavior == "replace":
                    existing["data"] = obj["data"]
                else:
                    existing["data"].update(obj["data"])
            else:
                raise KustomizeError(f"{path}: unknown behavior {behavior!r}")

    if namespace:
        for obj in out.objects:
            if obj.get("kind") not in CLUSTER_SCOPED:
                obj.setdefault("metadata", {})["namespace"] = namespace

    for patch in k.get("patches", []) or []:
        unknown = set(patch) - {"target", "patch", "path"}
        if unknown:
            raise KustomizeError(f"{path}: unsupported patch fields {sorted(unknown)}")
        text = patch["patch"] if "patch" in patch else (directory / patch["path"]).read_text(encoding="utf-8")
        operations = yaml.safe_load(text)
        if not isinstance(operations, list):
            raise KustomizeError(f"{path}: only JSON 6902 patches (a list of operations) are supported")
        if "target" not in patch:
            raise KustomizeError(f"{path}: a JSON 6902 patch needs a target")
        hits = [i for i, obj in enumerate(out.objects) if _matches(obj, patch["target"])]
        if not hits:
            raise KustomizeError(f"{path}: patch target {patch['target']} matches nothing")
        for i in hits:
            out.objects[i] = apply_json6902(out.objects[i], operations)
    return out


def _rename_references(obj: dict, names: dict[tuple[str, str], str]) -> None:
    """Point a workload's pod template at the suffixed ConfigMaps and Secrets."""
    spec = obj.get("spec", {}).get("template", {}).get("spec")
    if spec is None:
        return

    def renamed(kind: str, name: str) -> str:
        return names.get((kind, name), name)

    for volume in spec.get("volumes", []):
        if "configMap" in volume:
            volume["configMap"]["name"] = renamed("ConfigMap", volume["configMap"]["name"])
        if "secret" in volume:
            volume["secret"]["secretName"] = renamed("Secret", volume["secret"]["secretName"])
        for source in volume.get("projected", {}).get("sources", []):
            if "configMap" in source:
                source["configMap"]["name"] = renamed("ConfigMap", source["configMap"]["name"])
            if "secret" in source:
                source["secret"]["name"] = renamed("Secret", source["secret"]["name"])
    for container in spec.get("containers", []) + spec.get("initContainers", []):
        for env in container.get("env", []):
            source = env.get("valueFrom", {})
            if "configMapKeyRef" in source:
                source["configMapKeyRef"]["name"] = renamed("ConfigMap", source["configMapKeyRef"]["name"])
            if "secretKeyRef" in source:
                source["secretKeyRef"]["name"] = renamed("Secret", source["secretKeyRef"]["name"])
        for env_from in container.get("envFrom", []):
            if "configMapRef" in env_from:
                env_from["configMapRef"]["name"] = renamed("ConfigMap", env_from["configMapRef"]["name"])
            if "secretRef" in env_from:
                env_from["secretRef"]["name"] = renamed("Secret", env_from["secretRef"]["name"])


def build(directory: str | Path) -> list[dict]:
    """Render a kustomization directory (``kustomize build``) into a list of objects."""
    rendered = _render(Path(directory))
    names: dict[tuple[str, str], str] = {}
    for (kind, name), obj in rendered.generated.items():
        if obj.pop("_suffix"):
            obj["metadata"]["name"] = f"{name}-{content_hash(obj)}"
        names[(kind, name)] = obj["metadata"]["name"]
    for obj in rendered.objects:
        _rename_references(obj, names)
    seen: set[tuple[str, str, str]] = set()
    for obj in rendered.objects:
        key = _key(obj)
        if key in seen:
            raise KustomizeError(f"two objects named {key}")
        seen.add(key)
    return rendered.objects
