"""pid -> namespace / pod / container, from fixture /proc trees and kubelet log folders under tmp_path."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qwen_fluent.gpu.attribution import (
    UNATTRIBUTED,
    CgroupIds,
    PodIndex,
    PodRef,
    ProcessAttributor,
    parse_cgroup,
    parse_container_log_name,
)
from tests.support.fake_nvml import FakeNvml

UID = "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9"
UID_ = UID.replace("-", "_")
STATIC_UID = "6c1b9a2f3e4d5c6b7a8f9e0d1c2b3a4f"  # static pods: a 32-hex config hash
CID = "a" * 60 + "1234"
CONMON = "b" * 64

V1_SUFFIX = "\n".join(
    f"{n}:{ctrl}:/kubepods/burstable/pod{UID}/{CID}"
    for n, ctrl in ((12, "pids"), (11, "memory"), (10, "devices"), (4, "cpu,cpuacct"))
)

LAYOUTS = {
    "containerd, cgroup v2, systemd driver": (
        f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{CID}.scope\n",
        UID,
        CID,
    ),
    "containerd, cgroup v2, cgroupfs driver": (f"0::/kubepods/burstable/pod{UID}/{CID}\n", UID, CID),
    "containerd, cgroup v1, cgroupfs driver": (V1_SUFFIX + "\n1:name=systemd:/kubepods/burstable/pod" + UID + "/" + CID, UID, CID),
    "CRI-O, cgroup v1, systemd driver": (
        f"13:rdma:/\n11:memory:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/crio-{CID}.scope\n"
        f"1:name=systemd:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/crio-{CID}.scope\n",
        UID,
        CID,
    ),
    "CRI-O, cgroup v2, systemd driver": (
        f"0::/kubepods.slice/kubepods-pod{UID_}.slice/crio-{CID}.scope\n",
        UID,
        CID,
    ),
    "docker (cri-dockerd), systemd driver, guaranteed QoS": (
        f"0::/kubepods.slice/kubepods-pod{UID_}.slice/docker-{CID}.scope\n",
        UID,
        CID,
    ),
    "docker, cgroup v1, cgroupfs driver, guaranteed QoS": (f"9:devices:/kubepods/pod{UID}/{CID}\n", UID, CID),
    "private cgroup namespace (paths relative to ours)": (
        f"0::/../../kubepods-besteffort-pod{UID_}.slice/cri-containerd-{CID}.scope\n",
        UID,
        CID,
    ),
    "kind / nested kubelet": (
        f"0::/system.slice/docker-{'c' * 64}.scope/kubelet.slice/kubelet-kubepods.slice/"
        f"kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_}.slice/cri-containerd-{CID}.scope\n",
        UID,
        CID,
    ),
    "static pod (32-hex uid), cgroupfs": (f"0::/kubepods/besteffort/pod{STATIC_UID}/{CID}\n", STATIC_UID, CID),
    "the pod's own cgroup (no container)": (f"0::/kubepods/burstable/pod{UID}\n", UID, ""),
}


@pytest.mark.parametrize("layout", list(LAYOUTS), ids=list(LAYOUTS))
def test_cgroup_layouts(layout: str) -> None:
    text, uid, cid = LAYOUTS[layout]
    assert parse_cgroup(text) == CgroupIds(uid, cid)


@pytest.mark.parametrize(
    "text",
    [
        "0::/user.slice/user-1000.slice/session-3.scope\n",  # a login session
        f"0::/system.slice/docker-{CID}.scope\n",  # plain docker, not Kubernetes
        "0::/\n",
        "",
        "garbage without colons\n",
        f"0::/kubepods.slice/kubepods-burstable.slice/crio-conmon-{CONMON}.scope\n",  # no pod uid
    ],
)
def test_not_a_pod(text: str) -> None:
    assert parse_cgroup(text) is None


def test_crio_conmon_is_not_taken_for_the_container() -> None:
    text = f"0::/kubepods.slice/kubepods-pod{UID_}.slice/crio-conmon-{CONMON}.scope\n"
    assert parse_cgroup(text) == CgroupIds(UID, "")


@given(st.text(max_size=400))
def test_parse_cgroup_never_raises(text: str) -> None:
    result = parse_cgroup(text)
    assert result is None or isinstance(result, CgroupIds)


@given(
    st.text(alphabet=st.sampled_from("abcdefghijklmnopqrstuvwxyz0123456789-._:/\n"), max_size=300),
)
def test_parse_cgroup_result_is_well_formed(text: str) -> None:
    result = parse_cgroup(text)
    if result is not None:
        assert len(result.pod_uid) in (32, 36) and "_" not in result.pod_uid
        assert result.container_id == "" or len(result.container_id) == 64


def test_container_log_names() -> None:
    assert parse_container_log_name(f"vllm-0_inference_vllm-server-{CID}.log") == (
        CID,
        PodRef("inference", "vllm-0", "vllm-server"),
    )
    assert parse_container_log_name(f"vllm-0_inference_vllm-{CID[:10]}.log") is None
    assert parse_container_log_name("not-a-log.txt") is None
    assert parse_container_log_name(f"a_b_c_d-{CID}.log") is None


def test_attribution_through_the_container_link(tree: Any) -> None:
    tree.pod("inference", "vllm-7b-0", UID, {"vllm": CID, "sidecar": "d" * 64})
    tree.process(1234, LAYOUTS["containerd, cgroup v2, systemd driver"][0])
    attributor = ProcessAttributor(str(tree.proc), str(tree.log))
    assert attributor.attribute(1234) == PodRef("inference", "vllm-7b-0", "vllm")


def test_attribution_falls_back_to_the_pod_folder(tree: Any) -> None:
    tree.pod("inference", "vllm-7b-0", UID)  # no container link (log rotated away, or never written)
    tree.process(1234, LAYOUTS["CRI-O, cgroup v2, systemd driver"][0])
    attributor = ProcessAttributor(str(tree.proc), str(tree.log))
    assert attributor.attribute(1234) == PodRef("inference", "vllm-7b-0", "")


def test_unattributable_processes_keep_their_pid_only(tree: Any) -> None:
    tree.process(1, "0::/init.scope\n")
    tree.process(2, LAYOUTS["containerd, cgroup v2, cgroupfs driver"][0])  # a pod we have no folder for
    attributor = ProcessAttributor(str(tree.proc), str(tree.log))
    assert attributor.attribute(1) == UNATTRIBUTED
    assert attributor.attribute(2) == UNATTRIBUTED
    assert attributor.attribute(999) == UNATTRIBUTED  # gone, or not visible without hostPID


def test_missing_log_root_is_not_an_error(tmp_path: Any) -> None:
    (tmp_path / "proc" / "5").mkdir(parents=True)
    (tmp_path / "proc" / "5" / "cgroup").write_text(LAYOUTS["containerd, cgroup v2, cgroupfs driver"][0])
    attributor = ProcessAttributor(str(tmp_path / "proc"), str(tmp_path / "nothing-here"))
    assert attributor.attribute(5) == UNATTRIBUTED


def test_a_miss_rescans_at_most_every_rescan_seconds(tree: Any) -> None:
    now = [0.0]
    index = PodIndex(str(tree.log), rescan_seconds=10.0, clock=lambda: now[0])
    attributor = ProcessAttributor(str(tree.proc), index=index)
    tree.process(77, LAYOUTS["containerd, cgroup v2, cgroupfs driver"][0])
    assert attributor.attribute(77) == UNATTRIBUTED
    assert index.scans == 1
    tree.pod("team-a", "trainer-1", UID, {"main": CID})  # the pod's link appears
    now[0] = 5.0
    assert attributor.attribute(77) == UNATTRIBUTED  # too soon to list again
    assert index.scans == 1
    now[0] = 10.0
    assert attributor.attribute(77) == PodRef("team-a", "trainer-1", "main")
    assert index.scans == 2
    now[0] = 100.0
    assert attributor.attribute(77) == PodRef("team-a", "trainer-1", "main")
    assert index.scans == 2  # a hit lists nothing


def test_collector_labels_processes_with_their_pod(tree: Any, scrape_of: Any) -> None:
    tree.pod("inference", "vllm-7b-0", UID, {"vllm": CID})
    tree.process(4242, LAYOUTS["containerd, cgroup v2, systemd driver"][0])
    tree.process(5000, "0::/system.slice/ollama.service\n")
    fake = FakeNvml()
    fake.set_processes(0, [(4242, 2_000_000_000), (5000, 1_000_000_000), (6000, 500)])
    scrape = scrape_of(fake, proc_root=str(tree.proc), log_root=str(tree.log))
    got = {
        s.labels["pid"]: (s.labels["namespace"], s.labels["pod"], s.labels["container"], s.value)
        for s in scrape.samples("qwen_gpu_process_memory_used_bytes")
    }
    assert got == {
        "4242": ("inference", "vllm-7b-0", "vllm", 2_000_000_000),
        "5000": ("", "", "", 1_000_000_000),
        "6000": ("", "", "", 500),
    }


def test_attribution_can_be_turned_off(tree: Any, scrape_of: Any) -> None:
    tree.pod("inference", "vllm-7b-0", UID, {"vllm": CID})
    tree.process(4242, LAYOUTS["containerd, cgroup v2, systemd driver"][0])
    fake = FakeNvml()
    fake.set_processes(0, [(4242, 1)])
    scrape = scrape_of(fake, proc_root=str(tree.proc), log_root=str(tree.log), process_attribution=False)
    [sample] = scrape.samples("qwen_gpu_process_memory_used_bytes")
    assert sample.labels["pod"] == "" and sample.labels["pid"] == "4242"
