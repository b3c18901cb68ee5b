"""Where a record came from: the Kubernetes metadata map, or the tail tag.

Fluent Bit's kubernetes filter (and Fluentd's kubernetes_metadata filter)
attach ``{"kubernetes": {"namespace_name", "pod_name", "container_name",
"host", "labels", ...}}`` to every record of a container. The same map repeats
on every record of a pod, so the cleaned :class:`Source` is cached, keyed by
the four names and checked against the raw labels (one dict comparison); a
hit costs a few dict operations instead of cleaning every label again.

Without the filter, a tail input's tag still names the container log file,
``<prefix>.containers.<pod>_<namespace>_<container>-<container id>.log``
(the kubelet's naming), which gives pod, namespace and container.
"""

from __future__ import annotations

from typing import Any

from .events import NO_SOURCE, Source
from .values import label

#: Distinct (namespace, pod, container, host) entries, and tags, remembered.
#: A node runs at most 110 pods by default (kubelet ``maxPods``) with a few
#: containers each; 4096 covers a receiver fed by dozens of nodes. When full
#: the cache is emptied and refilled (O(1), no per-hit bookkeeping).
CACHE_SIZE = 4096

#: Longest string a cache key may hold (a name, a tag, a raw label key or
#: value), in characters. A cache entry keeps its raw key, so without this
#: the cache held whatever a peer sent: 100 records with 4 MiB pod names kept
#: 830 MB (issue 10). Kubernetes names are at most 253 characters and tail
#: tags a few hundred; 1024 takes every real one, so the cache holds at most
#: about CACHE_SIZE x (4 + 2 x MAX_CACHED_LABELS) x 1024 characters. A record
#: with a longer one is resolved without the cache: its labels are cut to
#: ``max_label_length`` as always, and nothing of it is kept.
MAX_CACHED_CHARS = 1024

#: Most raw pod labels an entry keeps for its hit check; a pod with more is
#: resolved without the cache (the Source keeps MAX_LABELS of them anyway).
MAX_CACHED_LABELS = 128

#: Pod labels kept in a Source. Pods carry tens; the cap bounds the memory of a
#: cached Source whatever a manifest holds.
MAX_LABELS = 64

_HEX = frozenset("0123456789abcdef")
_CONTAINER_ID_CHARS = 64  # containerd/docker ids are 64 hex characters


class SourceResolver:
    """Builds (and caches) the Source and pod-label model of records."""

    __slots__ = ("_limit", "_model_labels", "_by_pod", "_by_tag")

    def __init__(self, max_label_length: int, model_labels: tuple[str, ...]) -> None:
        self._limit = max_label_length
        self._model_labels = model_labels
        self._by_pod: dict[tuple[Any, ...], tuple[Any, Source, str]] = {}
        self._by_tag: dict[str, tuple[Source, str]] = {}

    def kubernetes(self, meta: dict[Any, Any]) -> tuple[Source, str]:
        """The Source of a ``kubernetes`` map, and the model named by a pod label (or ``""``)."""
        get = meta.get
        key = (get("namespace_name"), get("pod_name"), get("container_name"), get("host"))
        labels = get("labels")
        try:
            cached = self._by_pod.get(key)
        except TypeError:  # an unhashable name (a list where a string belongs)
            return self._build(key, labels)
        if cached is not None and cached[0] == labels:
            return cached[1], cached[2]
        source, model = self._build(key, labels)
        if not _cacheable(key, labels):
            return source, model
        if len(self._by_pod) >= CACHE_SIZE:
            self._by_pod.clear()
        self._by_pod[key] = (dict(labels) if type(labels) is dict else None, source, model)
        return source, model

    def _build(self, key: tuple[Any, ...], raw_labels: Any) -> tuple[Source, str]:
        limit = self._limit
        labels: dict[str, str] | None = None
        model = ""
        if type(raw_labels) is dict:
            labels = {}
            for name, value in raw_labels.items():
                if type(name) is str and type(value) is str:
                    labels[label(name, limit)] = label(value, limit)
                    if len(labels) >= MAX_LABELS:
                        break
            for name in self._model_labels:
                value = raw_labels.get(name)
                if type(value) is str:
                    model = label(value, limit)
                    if model:
                        break
        namespace, pod, container, host = key
        source = Source(label(namespace, limit), label(pod, limit), label(container, limit), label(host, limit), labels)
        return source, model

    def tag(self, tag: str) -> tuple[Source, str]:
        """The Source named by a tail tag of a container log file, or NO_SOURCE."""
        cached = self._by_tag.get(tag)
        if cached is None:
            cached = (self._from_tag(tag), "")
            if len(tag) > MAX_CACHED_CHARS:
                return cached  # resolved (to NO_SOURCE: _from_tag refuses such tags), never kept
            if len(self._by_tag) >= CACHE_SIZE:
                self._by_tag.clear()
            self._by_tag[tag] = cached
        return cached

    def _from_tag(self, tag: str) -> Source:
        at = tag.rfind("containers.")
        if at < 0 or len(tag) > 1024:
            return NO_SOURCE
        name = tag[at + len("containers."):]
        if name.endswith(".log"):
            name = name[:-4]
        parts = name.split("_")
        if len(parts) != 3 or not all(parts):
            return NO_SOURCE
        pod, namespace, container = parts
        base, dash, container_id = container.rpartition("-")
        if dash and len(container_id) == _CONTAINER_ID_CHARS and _HEX.issuperset(container_id):
            container = base
        limit = self._limit
        return Source(label(namespace, limit), label(pod, limit), label(container, limit), "", None)


def _short(value: Any) -> bool:
    return type(value) is not str or len(value) <= MAX_CACHED_CHARS


def _cacheable(key: tuple[Any, ...], labels: Any) -> bool:
    """Whether a pod's names and raw labels are small enough to keep (see :data:`MAX_CACHED_CHARS`)."""
    if not all(map(_short, key)):
        return False
    if type(labels) is dict:
        if len(labels) > MAX_CACHED_LABELS:
            return False
        return all(_short(k) and _short(v) and type(v) is not dict and type(v) is not list
                   for k, v in labels.items())
    return True
