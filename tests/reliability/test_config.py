"""``[reliability]`` through the real loader: flags, variables, file keys, and the errors that name them."""

from __future__ import annotations

from typing import Any

import pytest

from qwen_fluent.config import ConfigError, load


def test_flags_and_variables_set_the_section() -> None:
    config = load(None, {"state_dir": "/var/lib/qf", "dedup_window": "1800", "no_dedup": True},
                  environ={"QWEN_FLUENT_REDIS_URL": "redis://redis:6379/0", "QWEN_FLUENT_CHECKPOINT_INTERVAL": "2.5"})
    r = config.reliability
    assert (r.state_dir, r.dedup_window, r.dedup, r.redis_url, r.checkpoint_interval) == (
        "/var/lib/qf", 1800.0, False, "redis://redis:6379/0", 2.5)


def test_defaults_are_dedup_on_and_nothing_else() -> None:
    r = load(None, {}, environ={}).reliability
    assert r.dedup and not r.state_dir and not r.redis_url
    assert (r.dedup_window, r.dedup_max_messages, r.checkpoint_interval) == (600.0, 100_000, 5.0)


@pytest.mark.parametrize("flags,message", [
    ({"dedup_window": "0"}, "dedup_window must be more than 0 seconds, got 0.0 (from --dedup-window)"),
    ({"checkpoint_interval": "-1"}, "checkpoint_interval must be more than 0 seconds, got -1.0 (from --checkpoint-interval)"),
    ({"redis_url": "localhost:6379"}, "redis_url must start with redis://, rediss:// or unix://, got 'localhost:6379' "
                                      "(from --redis-url)"),
    ({"state_dir": "/s", "workers": "2"}, "--state-dir needs one process; it cannot be used with 2 workers (from --workers)"),
])
def test_a_wrong_value_names_where_it_came_from(flags: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(None, flags, environ={})
    assert str(info.value) == message


def test_the_file_section(tmp_path: Any) -> None:
    path = tmp_path / "qf.toml"
    path.write_text('[reliability]\nstate_dir = "/data"\ndedup_max_messages = 5000\nredis_prefix = "tier-a:"\n')
    r = load(path, {}, environ={}).reliability
    assert (r.state_dir, r.dedup_max_messages, r.redis_prefix) == ("/data", 5000, "tier-a:")
