"""The [records] configuration section."""

from __future__ import annotations

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the tomli backport, a core dependency there
    import tomli as tomllib  # type: ignore[no-redef]

import pytest

from qwen_fluent.records import Normaliser, NormaliserConfig, NormaliserConfigError


def test_defaults():
    config = NormaliserConfig()
    assert config.model_labels == ("model",)
    assert config.log_keys == ("log", "message", "log_processed")
    assert (config.max_label_length, config.max_line_length) == (256, 65536)
    assert config.parse_vllm_stats and config.parse_tgi and config.parse_levels and config.source_from_tag


def test_from_a_toml_section():
    section = tomllib.loads(
        """
        [records]
        model_labels = ["model", "app.kubernetes.io/name"]
        max_label_length = 64
        log_keys = ["log"]
        parse_tgi = false
        """
    )["records"]
    config = NormaliserConfig(**section)
    assert config.model_labels == ("model", "app.kubernetes.io/name")  # lists become tuples
    assert config.max_label_length == 64 and config.log_keys == ("log",) and config.parse_tgi is False
    assert len(Normaliser(config)({"request_id": "r" * 500, "output_tokens": 1}, "t").request_id) == 64


@pytest.mark.parametrize(
    "section, message",
    [
        ({"model_labels": "model"}, "list of strings"),
        ({"model_labels": ["model", 3]}, "non-empty strings"),
        ({"log_keys": [""]}, "non-empty strings"),
        ({"log_keys": ["k"] * 17}, "at most"),
        ({"max_label_length": 8}, "integer in"),
        ({"max_label_length": "256"}, "integer in"),
        ({"max_line_length": True}, "integer in"),
        ({"max_line_length": 10**9}, "integer in"),
        ({"parse_levels": "yes"}, "true or false"),
    ],
)
def test_bad_settings_are_refused(section, message):
    with pytest.raises(NormaliserConfigError, match=message):
        NormaliserConfig(**section)


def test_config_error_is_a_value_error():
    assert issubclass(NormaliserConfigError, ValueError)
