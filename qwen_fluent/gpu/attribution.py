"""Which Kubernetes namespace / pod / container a GPU process belongs to.

NVML gives a pid and the memory it holds. With the DaemonSet on the host's
PID namespace (``hostPID: true``), ``/proc/<pid>/cgroup`` names the pod's
cgroup, which carries the pod UID and the container id in every layout the
kubelet produces:

======================  =====================================================================
cgroup v2, systemd       ``0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_with_underscores>.slice/cri-containerd-<id>.scope``
cgroup v2, cgroupfs      ``0::/kubepods/burstable/pod<uid>/<id>``
cgroup v1, systemd       ``11:memory:/kubepods.slice/kubepods-pod<uid>.slice/crio-<id>.scope``
cgroup v1, cgroupfs      ``4:devices:/kubepods/besteffort/pod<uid>/<id>``
docker (cri-dockerd)     ``.../kubepods-pod<uid>.slice/docker-<id>.scope``
private cgroup namespace ``0::/../../kubepods-besteffort-pod<uid>.slice/cri-containerd-<id>.scope``
======================  =====================================================================

The ids are turned into names without any API access, from what the kubelet
writes under ``/var/log`` (which the Fluent Bit DaemonSet mounts anyway):

- ``/var/log/containers/<pod>_<namespace>_<container>-<container id>.log``
  (a symlink per container: the file Fluent Bit's ``tail`` input reads and its
  ``kubernetes`` filter parses the same way), giving all three names;
- ``/var/log/pods/<namespace>_<pod>_<pod uid>/``, giving namespace and pod
  when the container's link is gone or was never made.

Kubernetes object names cannot contain ``_`` (they are DNS subdomains or
labels), so splitting these names on ``_`` is unambiguous. A process that
matches neither keeps its pid only.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from typing import NamedTuple


class PodRef(NamedTuple):
    """Where a process runs; empty strings where unknown."""

    namespace: str = ""
    pod: str = ""
    container: str = ""


UNATTRIBUTED = PodRef()


class CgroupIds(NamedTuple):
    """What a kubepods cgroup path names: the pod UID and (if present) the container id."""

    pod_uid: str
    container_id: str


# A pod UID is a UUID (API pods) or a 32-hex config hash (static pods); under
# the systemd cgroup driver its dashes become underscores.
_POD_RE = re.compile(
    r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}|[0-9a-f]{32})(?:\.slice)?(?:/|$)"
)
# The last path element: a bare 64-hex id (cgroupfs driver) or a runtime's
# systemd scope. ``crio-conmon-<id>.scope`` is CRI-O's monitor process, not the
# container, and does not match.
_CONTAINER_RE = re.compile(r"^(?:cri-containerd-|crio-|docker-)?([0-9a-f]{64})(?:\.scope)?$")

#: Longest /proc/<pid>/cgroup read. A cgroup v1 host lists ~13 hierarchies of
#: ~200 bytes each; 64 KiB leaves room for deep nesting (kind, k3s) and stops a
#: pathological file from costing more than one read.
MAX_CGROUP_BYTES = 64 * 1024

#: Most directory entries read from one of the kubelet's log folders. A node
#: runs at most 110 pods by default (kubelet ``maxPods``); 10 000 covers the
#: largest documented limit (kubelet allows raising maxPods, clusters above
#: ~500 are rare) with several containers each, and bounds the index's memory.
MAX_LOG_ENTRIES = 10_000

#: Least time between two listings of the log folders triggered by a miss. A
#: new container's link appears when it starts, before it can touch a GPU, so
#: a miss usually means our listing is old; but a process that is not in
#: Kubernetes at all misses every time, and must not make every scrape list
#: the folder again. 10 s matches the default Prometheus-side staleness of a
#: couple of scrapes.
RESCAN_SECONDS = 10.0


def parse_cgroup(text: str) -> CgroupIds | None:
    """The pod UID and container id in a ``/proc/<pid>/cgroup`` text, or ``None``.

    Any line that names a kubepods pod cgroup will do: under cgroup v1 every
    hierarchy carries the same path. ``container_id`` is empty when the
    process sits in the pod's cgroup itself (rare: the pause sandbox under
    some runtimes).
    """
    for line in text.splitlines():
        # hierarchy-ID:controller-list:cgroup-path; the path may contain ':'
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        path = parts[2]
        if "kubepods" not in path:
            continue
        match = _POD_RE.search(path)
        if match is None:
            continue
        uid = match.group(1).replace("_", "-")
        last = path.rstrip("/").rsplit("/", 1)[-1]
        container = _CONTAINER_RE.match(last)
        return CgroupIds(uid, container.group(1) if container else "")
    return None


def parse_container_log_name(name: str) -> tuple[str, PodRef] | None:
    """``<pod>_<namespace>_<container>-<id>.log`` -> (id, PodRef), or ``None``."""
    if not name.endswith(".log"):
        return None
    parts = name[:-4].split("_")
    if len(parts) != 3:
        return None
    pod, namespace, rest = parts
    container, sep, cid = rest.rpartition("-")
    if not sep or not container or len(cid) != 64:
        return None
    return cid, PodRef(namespace, pod, container)


def parse_pod_dir_name(name: str) -> tuple[str, PodRef] | None:
    """``<namespace>_<pod>_<uid>`` -> (uid, PodRef with empty container), or ``None``."""
    parts = name.split("_")
    if len(parts) != 3 or not all(parts):
        return None
    namespace, pod, uid = parts
    return uid, PodRef(namespace, pod, "")


def _list(folder: str) -> list[str]:
    """Up to :data:`MAX_LOG_ENTRIES` names in ``folder``; none if it cannot be read."""
    names: list[str] = []
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                names.append(entry.name)
                if len(names) >= MAX_LOG_ENTRIES:
                    break
    except OSError:
        pass
    return names


class PodIndex:
    """Container ids and pod UIDs -> names, from the kubelet's log folder names.

    Rebuilt whole on each listing, so it never holds more than the folders do.
    Not thread-safe: the collector calls it under its own lock.
    """

    def __init__(
        self,
        log_root: str = "/var/log",
        *,
        rescan_seconds: float = RESCAN_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log_root = log_root
        self.rescan_seconds = rescan_seconds
        self._clock = clock
        self._containers: dict[str, PodRef] = {}
        self._pods: dict[str, PodRef] = {}
        self._scanned_at: float | None = None
        self.scans = 0  # how many listings were made (tests and docs use it)

    def rescan(self) -> None:
        """List ``containers/`` and ``pods/`` again."""
        containers: dict[str, PodRef] = {}
        for name in _list(os.path.join(self.log_root, "containers")):
            parsed = parse_container_log_name(name)
            if parsed is not None:
                containers[parsed[0]] = parsed[1]
        pods: dict[str, PodRef] = {}
        for name in _list(os.path.join(self.log_root, "pods")):
            parsed_pod = parse_pod_dir_name(name)
            if parsed_pod is not None:
                pods[parsed_pod[0]] = parsed_pod[1]
        self._containers, self._pods = containers, pods
        self._scanned_at = self._clock()
        self.scans += 1

    def _lookup(self, ids: CgroupIds) -> PodRef | None:
        if ids.container_id:
            ref = self._containers.get(ids.container_id)
            if ref is not None:
                return ref
        return self._pods.get(ids.pod_uid)

    def lookup(self, ids: CgroupIds) -> PodRef:
        """Names for ``ids``; the folders are listed again on a miss, at most every ``rescan_seconds``."""
        ref = self._lookup(ids)
        if ref is not None and (ref.container or not ids.container_id):
            return ref
        if self._scanned_at is None or self._clock() - self._scanned_at >= self.rescan_seconds:
            self.rescan()
            ref = self._lookup(ids)
        return ref if ref is not None else UNATTRIBUTED


class ProcessAttributor:
    """pid -> :class:`PodRef`, reading ``<proc_root>/<pid>/cgroup`` each time.

    The cgroup file is read on every call rather than cached by pid: a pid can
    be reused by another process between scrapes, and a GPU runs few compute
    processes (see ``MAX_PROCESSES_PER_DEVICE`` in the reader), so this is a
    handful of small reads per scrape.
    """

    def __init__(self, proc_root: str = "/proc", log_root: str = "/var/log", *, index: PodIndex | None = None) -> None:
        self.proc_root = proc_root
        self.index = index if index is not None else PodIndex(log_root)

    def cgroup_ids(self, pid: int) -> CgroupIds | None:
        """The kubepods ids of ``pid``, or ``None`` (gone, not visible, not in a pod)."""
        try:
            with open(os.path.join(self.proc_root, str(pid), "cgroup"), "rb") as f:
                raw = f.read(MAX_CGROUP_BYTES)
        except OSError:
            return None
        return parse_cgroup(raw.decode("utf-8", "replace"))

    def attribute(self, pid: int) -> PodRef:
        """Namespace / pod / container of ``pid``; :data:`UNATTRIBUTED` if unknown."""
        ids = self.cgroup_ids(pid)
        if ids is None:
            return UNATTRIBUTED
        return self.index.lookup(ids)
