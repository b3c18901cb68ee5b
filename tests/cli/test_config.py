"""Configuration: file, environment and flags, and the one-line errors a user sees."""

from __future__ import annotations

import pytest

from qwen_fluent.config import ConfigError, Source, load


def write(tmp_path, text: str):
    path = tmp_path / "qwen-fluent.toml"
    path.write_text(text)
    return path


def test_defaults_without_file():
    config = load(None, environ={})
    assert config.server.host == "0.0.0.0" and config.server.port == 24224
    assert config.http.port == 8000
    assert config.server.auth is None
    assert config.metrics.namespace == "qwen"


def test_file_env_flag_precedence(tmp_path):
    path = write(tmp_path, '[server]\nport = 1000\nhost = "127.0.0.1"\n[http]\nport = 9000\n')
    config = load(path, {"port": 3000}, {"QWEN_FLUENT_PORT": "2000", "QWEN_FLUENT_METRICS_PORT": "9100"})
    assert config.server.port == 3000  # flag beats env beats file
    assert config.http.port == 9100  # env beats file
    assert config.server.host == "127.0.0.1"  # file beats default


def test_auth_and_users(tmp_path):
    path = write(tmp_path, '[auth]\nshared_key = "secret"\nself_hostname = "recv"\n[auth.users]\nalice = "s3cret"\n')
    config = load(path, environ={})
    assert config.server.auth.shared_key == "secret"
    assert dict(config.server.auth.users) == {"alice": "s3cret"}


def test_shared_key_from_environment():
    config = load(None, environ={"QWEN_FLUENT_SHARED_KEY": "k", "QWEN_FLUENT_SELF_HOSTNAME": "me"})
    assert config.server.auth.shared_key == "k" and config.server.auth.self_hostname == "me"


def test_limits_section(tmp_path):
    path = write(tmp_path, "[limits]\nmax_message_bytes = 1048576\nidle_timeout = 30\n")
    config = load(path, environ={})
    assert config.server.limits.max_message_bytes == 1048576
    assert config.server.limits.idle_timeout == 30.0


@pytest.mark.parametrize(
    "text,message",
    [
        ("[server]\nprot = 1\n", "unknown key 'prot' in [server] in {path}; did you mean 'port'? (known: allowed_networks, host, port,"),
        ("[serve]\nport = 1\n", "unknown section [serve] in {path}; did you mean [server]? (known: audit, auth, gpu,"),
        ("[metrics]\nzzz = 1\n", "unknown key 'zzz' in [metrics] in {path} (known: "),
        ('[server]\nport = "x"\n', "[server] port in {path} must be an integer, got 'x'"),
        ("[server]\nport = 70000\n", "[server] port in {path} must be 0..65535, got 70000"),
        ("[limits]\nmax_message_bytes = -1\n",
         "limits.max_message_bytes must be a positive number, got -1 (from [limits] max_message_bytes in {path})"),
        ('[server]\ntls_cert = "/nonexistent.pem"\ntls_key = "/nonexistent.key"\n',
         "[server] tls_cert in {path}: '/nonexistent.pem' is not a readable file"),
        ('[server]\ntls_cert = "/x.pem"\n', "tls_cert and tls_key must be given together: [server] tls_cert in {path} "
                                          "is set, set tls_key too with --tls-key, QWEN_FLUENT_TLS_KEY or [server] tls_key"),
        ('[auth.users]\nalice = "x"\n', "[auth] users in {path}: users need a shared_key"),
        ("[server\n", "is not valid TOML"),
    ],
)
def test_errors_are_one_clear_line(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load(path, environ={})
    assert message.format(path=path) in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "environ,flags,message",
    [
        ({"QWEN_FLUENT_PORT": "abc"}, {}, "environment variable QWEN_FLUENT_PORT must be an integer, got 'abc'"),
        ({"QWEN_FLUENT_METRICS_PORT": "99999"}, {},
         "environment variable QWEN_FLUENT_METRICS_PORT must be 0..65535, got 99999"),
        ({}, {"port": 70000}, "--port must be 0..65535, got 70000"),
        ({}, {"workers": 0}, "--workers must be 1..256, got 0"),
        ({"QWEN_FLUENT_NO_GPU": "maybe"}, {}, "environment variable QWEN_FLUENT_NO_GPU must be true or false, got 'maybe'"),
        ({"QWEN_FLUENT_NAMESPACE": "9x"}, {},
         "metrics.namespace: '9x' is not a valid metric name prefix (from environment variable QWEN_FLUENT_NAMESPACE)"),
        ({"QWEN_FLUENT_LOG_LEVEL": "loud"}, {},
         "environment variable QWEN_FLUENT_LOG_LEVEL must be debug, info, warning or error, got 'loud'"),
        ({}, {"tls_key": "/k.pem"}, "tls_cert and tls_key must be given together: --tls-key is set, "
                                    "set tls_cert too with --tls-cert, QWEN_FLUENT_TLS_CERT or [server] tls_cert"),
    ],
)
def test_errors_name_the_variable_or_flag(tmp_path, environ, flags, message):
    """A wrong value from the environment or a flag is named as such, even when the file sets the same key."""
    path = write(tmp_path, "[server]\nport = 24224\n")
    with pytest.raises(ConfigError) as info:
        load(path, flags, environ)
    assert str(info.value) == message


def test_sources_are_remembered(tmp_path):
    path = write(tmp_path, "[server]\nport = 1000\n[http]\nport = 9000\n[gpu]\ncache_seconds = 2.0\n")
    config = load(path, {"port": 3000, "no_gpu": True}, {"QWEN_FLUENT_METRICS_PORT": "9100", "QWEN_FLUENT_PORT": "5"})
    assert config.source("server", "port") == Source("flag", "server", "port", "--port")
    assert config.source("http", "port") == Source("env", "http", "port", "QWEN_FLUENT_METRICS_PORT")
    assert config.source("gpu", "cache_seconds") == Source("file", "gpu", "cache_seconds", str(path))
    assert config.source("server", "host") == Source("default", "server", "host")
    assert str(config.source("gpu", "cache_seconds")) == f"[gpu] cache_seconds in {path}"
    assert config.gpu.enabled is False and config.gpu.cache_seconds == 2.0


@pytest.mark.parametrize("flags,environ,enabled", [
    ({}, {}, True),
    ({"no_gpu": True}, {}, False),
    ({}, {"QWEN_FLUENT_NO_GPU": "1"}, False),
    ({}, {"QWEN_FLUENT_NO_GPU": "false"}, True),
    ({"no_gpu": None}, {"QWEN_FLUENT_NO_GPU": "yes"}, False),
])
def test_no_gpu_is_a_flag_of_the_loader(flags, environ, enabled):
    """--no-gpu sets [gpu] enabled = false in the loader, like every other flag (no edit after loading)."""
    assert load(None, flags, environ).gpu.enabled is enabled


def test_no_gpu_left_off_keeps_the_file(tmp_path):
    path = write(tmp_path, "[gpu]\nenabled = false\n")
    config = load(path, {"no_gpu": False}, environ={})
    assert config.gpu.enabled is False
    assert str(config.source("gpu", "enabled")) == f"[gpu] enabled in {path}"


def test_no_gpu_beats_the_file(tmp_path):
    path = write(tmp_path, "[gpu]\nenabled = true\n")
    config = load(path, {"no_gpu": True}, environ={})
    assert config.gpu.enabled is False
    assert str(config.source("gpu", "enabled")) == "--no-gpu"


def test_unknown_flag_is_a_programming_error_with_a_hint():
    with pytest.raises(ConfigError, match=r"unknown flag 'prot'; did you mean 'port'\?"):
        load(None, {"prot": 1}, environ={})


def test_missing_file():
    with pytest.raises(ConfigError, match="not found"):
        load("/nonexistent/qwen-fluent.toml", environ={})


def test_sections_become_their_packages_dataclasses(tmp_path):
    """The loader builds NormaliserConfig and MetricsConfig straight from the TOML tables (lists, nested tables)."""
    path = write(tmp_path, '[records]\nmodel_labels = ["model", "app"]\nparse_tgi = false\n'
                           '[metrics]\nnamespace = "llm"\nlabels = ["status", "pod"]\nduration_buckets = [1, 2, 5]\n'
                           '[metrics.label_limits]\npod = 10\n[metrics.pod_labels]\nteam = "example.com/team"\n')
    config = load(path, environ={})
    assert config.records.model_labels == ("model", "app") and config.records.parse_tgi is False
    assert config.metrics.labels == ("status", "pod") and config.metrics.duration_buckets == (1.0, 2.0, 5.0)
    assert config.metrics.limit_for("pod") == 10 and config.metrics.limit_for("path") == 64
    assert dict(config.metrics.pod_labels) == {"team": "example.com/team"}


@pytest.mark.parametrize("text,message", [
    ('[records]\nmodel_label = ["x"]\n', "unknown key 'model_label' in [records] in {path}; did you mean 'model_labels'?"),
    ("[metrics]\nquantiles = [1]\n", "unknown key 'quantiles' in [metrics] in {path} (known: default_label_limit,"),
    ('[records]\nmodel_labels = "model"\n', "[records] model_labels in {path} must be a list, got 'model'"),
    ("[records]\nmax_label_length = 8\n", "(from [records] max_label_length in {path})"),
    ('[metrics]\nlabels = ["status", "nope"]\n', "(from [metrics] labels in {path})"),
    ("[gpu]\ncache_seconds = -1\n", "gpu.cache_seconds must be >= 0, not -1.0 (from [gpu] cache_seconds in {path})"),
    ("limits = 3\n", "[limits] must be a table in {path}, got 3"),
])
def test_package_section_errors_name_the_file_key(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load(path, environ={})
    assert message.format(path=path) in str(info.value)


def test_misspelt_variables_are_warned_about_other_tools_variables_are_not():
    from qwen_fluent.config import misspelt_variables

    environ = {"QWEN_FLUENT_PROT": "1", "QWEN_FLUENT_METRIC_PORT": "2", "QWEN_FLUENT_PORT": "3",
               "QWEN_FLUENT_BENCH_SERVE": "1", "QWEN_FLUENT_FUZZ_EXAMPLES": "9", "PORT": "1"}
    assert misspelt_variables(environ) == [
        "environment variable QWEN_FLUENT_METRIC_PORT is not a qwen-fluent setting and is ignored; "
        "did you mean QWEN_FLUENT_METRICS_PORT?",
        "environment variable QWEN_FLUENT_PROT is not a qwen-fluent setting and is ignored; "
        "did you mean QWEN_FLUENT_PORT?",
    ]
