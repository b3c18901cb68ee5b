"""The receiver configuration files under examples/: complete, current, and loadable.

examples/qwen-fluent.toml documents every setting at its default; the
DaemonSet's and the demo's files are what those deployments run. Each is read
by the receiver's own loader (qwen_fluent.config.load).
"""

from __future__ import annotations

import dataclasses

import pytest

from .conftest import EXAMPLES, KUBERNETES, tomllib

REFERENCE = EXAMPLES / "qwen-fluent.toml"
DEPLOYED = [
    KUBERNETES / "base" / "qwen-fluent.toml",
    KUBERNETES / "overlays" / "per-process-gpu" / "qwen-fluent.toml",
    EXAMPLES / "compose" / "qwen-fluent.toml",
]


def _defaults(cls: type) -> dict:
    out = {}
    for field in dataclasses.fields(cls):
        if field.default is not dataclasses.MISSING:
            out[field.name] = field.default
        else:
            out[field.name] = field.default_factory()
    return out


def _comparable(value):
    if isinstance(value, (list, tuple)):
        return [float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v for v in value]
    if isinstance(value, dict):
        return dict(value)
    return value


def test_reference_lists_every_key_at_its_default() -> None:
    from qwen_fluent.config import _section_types

    data = tomllib.loads(REFERENCE.read_text(encoding="utf-8"))
    types = _section_types()
    assert set(data) == set(types), "a section is missing or unknown"
    for section, cls in types.items():
        defaults = _defaults(cls)
        assert set(data[section]) == set(defaults), f"[{section}] keys differ from the dataclass"
        for key, default in defaults.items():
            assert _comparable(data[section][key]) == _comparable(default), f"[{section}] {key} is not the default"


@pytest.mark.parametrize("path", [REFERENCE, *DEPLOYED], ids=lambda p: str(p.relative_to(EXAMPLES)))
def test_config_file_loads(path) -> None:
    from qwen_fluent.config import load

    config = load(path, environ={"QWEN_FLUENT_SHARED_KEY": "k", "QWEN_FLUENT_SELF_HOSTNAME": "node"})
    assert config.server.auth is not None


def test_only_gpu_differs_between_base_and_per_process_overlay() -> None:
    base, overlay = (tomllib.loads(p.read_text(encoding="utf-8")) for p in DEPLOYED[:2])
    assert {k: v for k, v in base.items() if k != "gpu"} == {k: v for k, v in overlay.items() if k != "gpu"}
    assert base["gpu"]["process_attribution"] is False
    assert overlay["gpu"]["process_attribution"] is True
