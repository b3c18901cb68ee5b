"""Read Fluent Bit configurations (classic and YAML) the way Fluent Bit does, for the tests.

No Fluent Bit runs here, so the tests parse ``fluent-bit/`` themselves: both
formats become the same list of :class:`Section` objects, which the tests
compare with each other, with the option names Fluent Bit 4.x accepts, and
with the DaemonSet's environment. :func:`grep_keeps` evaluates a grep filter
rule on a record, as Fluent Bit's record accessor and Onigmo search would, so
that the selection can be tried on records from the real captures.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml

#: Fluent Bit reads these as true / false (flb_utils_bool).
TRUE_WORDS = {"on", "true", "yes"}
FALSE_WORDS = {"off", "false", "no"}

ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")

# Option names Fluent Bit 4.x accepts, per plugin, from the plugins' config
# maps in the Fluent Bit source (plugins/*/..., src/flb_config.c and the
# properties every input, filter and output instance takes). Lower case:
# Fluent Bit compares keys case-insensitively.
SERVICE_KEYS = {
    "flush", "grace", "daemon", "log_file", "log_level", "parsers_file", "plugins_file",
    "streams_file", "http_server", "http_listen", "http_port", "health_check",
    "hc_errors_count", "hc_retry_failure_count", "hc_period", "coro_stack_size",
    "scheduler.base", "scheduler.cap", "storage.path", "storage.sync", "storage.checksum",
    "storage.metrics", "storage.backlog.mem_limit", "storage.max_chunks_up",
    "storage.delete_irrecoverable_chunks", "storage.backlog.flush_on_shutdown",
}
INPUT_COMMON = {"name", "tag", "alias", "log_level", "mem_buf_limit", "storage.type",
                "storage.pause_on_chunks_overlimit", "threaded", "routable"}
FILTER_COMMON = {"name", "match", "match_regex", "alias", "log_level"}
OUTPUT_COMMON = {
    "name", "match", "match_regex", "alias", "log_level", "host", "port", "ipv6", "retry_limit",
    "workers", "storage.total_limit_size", "tls", "tls.verify", "tls.verify_hostname",
    "tls.debug", "tls.ca_file", "tls.ca_path", "tls.crt_file", "tls.key_file", "tls.key_passwd",
    "tls.vhost", "tls.min_version", "tls.max_version", "tls.ciphers", "net.keepalive",
    "net.keepalive_idle_timeout", "net.keepalive_max_recycle", "net.connect_timeout",
    "net.source_address", "net.dns.mode", "net.dns.resolver",
}
PLUGIN_KEYS = {
    ("input", "tail"): INPUT_COMMON | {
        "path", "exclude_path", "key", "read_from_head", "read_newly_discovered_files_from_head",
        "refresh_interval", "watcher_interval", "rotate_wait", "docker_mode", "docker_mode_flush",
        "docker_mode_parser", "path_key", "offset_key", "ignore_older", "buffer_chunk_size",
        "buffer_max_size", "skip_long_lines", "skip_empty_lines", "exit_on_eof", "parser",
        "tag_regex", "db", "db.sync", "db.locking", "db.journal_mode", "db.compare_filename",
        "multiline", "multiline_flush", "parser_firstline", "multiline.parser",
        "file_cache_advise", "inotify_watcher", "unicode.encoding", "generic.encoding",
    },
    ("filter", "kubernetes"): FILTER_COMMON | {
        "buffer_size", "tls.debug", "tls.verify", "tls.vhost", "tls.verify_hostname", "merge_log",
        "merge_parser", "merge_log_key", "merge_log_trim", "keep_log", "kube_url",
        "kube_meta_preload_cache_dir", "kube_ca_file", "kube_ca_path", "kube_tag_prefix",
        "kube_namespace_file", "kube_token_file", "kube_token_command", "labels", "annotations",
        "owner_references", "namespace_labels", "namespace_annotations", "namespace_metadata_only",
        "k8s-logging.parser", "k8s-logging.exclude", "use_journal", "regex_parser", "dummy_meta",
        "dns_retries", "dns_wait_time", "cache_use_docker_id", "use_tag_for_meta", "use_kubelet",
        "kubelet_host", "kubelet_port", "kube_token_ttl", "kube_meta_cache_ttl",
        "kube_meta_namespace_cache_ttl",
    },
    ("filter", "grep"): FILTER_COMMON | {"regex", "exclude", "logical_op"},
    ("filter", "modify"): FILTER_COMMON | {"set", "add", "remove", "remove_wildcard", "rename",
                                           "hard_rename", "copy", "hard_copy", "condition"},
    ("filter", "parser"): FILTER_COMMON | {"key_name", "parser", "reserve_data", "preserve_key",
                                           "unescape_key"},
    ("output", "forward"): OUTPUT_COMMON | {
        "time_as_integer", "retain_metadata_in_forward_mode", "shared_key", "self_hostname",
        "empty_shared_key", "send_options", "require_ack_response", "username", "password",
        "unix_path", "upstream", "tag", "compress", "fluentd_compat", "add_option",
    },
}


class ConfigFormatError(ValueError):
    """The configuration text is not what Fluent Bit would accept."""


@dataclass
class Section:
    """One [SERVICE]/[INPUT]/[FILTER]/[OUTPUT] section; ``options`` keyed in lower case."""

    kind: str  # "service", "input", "filter", "output"
    options: dict[str, str] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)  # option -> 1-based line number

    @property
    def plugin(self) -> str:
        return self.options.get("name", "")


def _scalar(value: Any) -> str:
    """A YAML value as the string Fluent Bit's YAML reader hands the plugin."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return value
    raise ConfigFormatError(f"unsupported value {value!r} (lists and maps are not used here)")


def canonical(value: str) -> str:
    """A value with booleans spelled one way, so both formats compare equal."""
    lowered = value.strip().lower()
    if lowered in TRUE_WORDS:
        return "true"
    if lowered in FALSE_WORDS:
        return "false"
    return value.strip()


def parse_classic(text: str) -> list[Section]:
    """Parse Fluent Bit's classic format: ``[SECTION]`` headers, indented ``Key Value`` lines."""
    sections: list[Section] = []
    indent: str | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip()
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("@"):
            raise ConfigFormatError(f"line {number}: directives ({stripped.split()[0]}) are not used here")
        if stripped.startswith("["):
            if line != stripped or not stripped.endswith("]"):
                raise ConfigFormatError(f"line {number}: malformed section header {raw!r}")
            kind = stripped[1:-1].strip().lower()
            if kind not in ("service", "input", "filter", "output"):
                raise ConfigFormatError(f"line {number}: unknown section [{kind}]")
            sections.append(Section(kind))
            indent = None
            continue
        if not sections:
            raise ConfigFormatError(f"line {number}: entry outside any section")
        this_indent = line[: len(line) - len(line.lstrip())]
        if not this_indent:
            raise ConfigFormatError(f"line {number}: entries must be indented")
        if "\t" in this_indent:
            raise ConfigFormatError(f"line {number}: indent with spaces, not tabs")
        if indent is None:
            indent = this_indent
        elif this_indent != indent:
            raise ConfigFormatError(f"line {number}: indentation differs within the section")
        parts = stripped.split(None, 1)
        if len(parts) != 2:
            raise ConfigFormatError(f"line {number}: key without a value: {stripped!r}")
        key = parts[0].lower()
        section = sections[-1]
        if key in section.options:
            raise ConfigFormatError(f"line {number}: {parts[0]} given twice in one section")
        section.options[key] = parts[1].strip()
        section.lines[key] = number
    return sections


def parse_yaml(text: str) -> list[Section]:
    """Parse Fluent Bit's YAML format (``service:`` and ``pipeline:`` inputs/filters/outputs)."""
    doc = yaml.safe_load(text)
    if not isinstance(doc, dict):
        raise ConfigFormatError("top level must be a map")
    unknown = set(doc) - {"service", "pipeline", "env", "includes", "parsers", "multiline_parsers"}
    if unknown:
        raise ConfigFormatError(f"unknown top-level sections {sorted(unknown)}")
    line_of = _yaml_key_lines(text)
    sections = [Section("service", {k.lower(): _scalar(v) for k, v in (doc.get("service") or {}).items()})]
    sections[0].lines = {k.lower(): line_of.get(("service", k), 0) for k in (doc.get("service") or {})}
    pipeline = doc.get("pipeline") or {}
    unknown = set(pipeline) - {"inputs", "filters", "outputs"}
    if unknown:
        raise ConfigFormatError(f"unknown pipeline sections {sorted(unknown)}")
    for plural, kind in (("inputs", "input"), ("filters", "filter"), ("outputs", "output")):
        for i, item in enumerate(pipeline.get(plural) or []):
            if not isinstance(item, dict):
                raise ConfigFormatError(f"pipeline.{plural}[{i}] must be a map")
            section = Section(kind, {k.lower(): _scalar(v) for k, v in item.items()})
            section.lines = {k.lower(): line_of.get((f"{plural}[{i}]", k), 0) for k in item}
            sections.append(section)
    return sections


def _yaml_key_lines(text: str) -> dict[tuple[str, str], int]:
    """Line numbers of the keys under service: and under each pipeline list item."""
    out: dict[tuple[str, str], int] = {}
    node = yaml.compose(text)
    for key_node, value_node in node.value:
        if key_node.value == "service":
            for k, _ in value_node.value:
                out[("service", k.value)] = k.start_mark.line + 1
        elif key_node.value == "pipeline":
            for plural_node, items in value_node.value:
                for i, item in enumerate(items.value):
                    for k, _ in item.value:
                        out[(f"{plural_node.value}[{i}]", k.value)] = k.start_mark.line + 1
    return out


def env_references(sections: list[Section]) -> set[str]:
    """Every ${VARIABLE} the configuration reads."""
    return {name for s in sections for v in s.options.values() for name in ENV_REFERENCE.findall(v)}


def substitute(value: str, env: dict[str, str]) -> str:
    """Replace ${VARIABLE}s like Fluent Bit does; a variable missing from ``env`` is an error here."""

    def lookup(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in env:
            raise KeyError(f"${{{name}}} is not set")
        return env[name]

    return ENV_REFERENCE.sub(lookup, value)


def unknown_keys(section: Section) -> set[str]:
    """Keys that the section's plugin does not have in Fluent Bit 4.x."""
    if section.kind == "service":
        return set(section.options) - SERVICE_KEYS
    known = PLUGIN_KEYS.get((section.kind, section.plugin))
    if known is None:
        return {f"<plugin {section.kind}/{section.plugin} not in the table>"}
    return set(section.options) - known


def uncommented(text: str, key_line: int) -> bool:
    """True when no comment covers the setting on ``key_line`` (1-based).

    A setting is covered by a comment directly above it, or above the group of
    settings it belongs to (consecutive setting lines, no blank line between).
    """
    lines = text.splitlines()
    i = key_line - 2
    while i >= 0:
        stripped = lines[i].strip()
        if stripped.startswith("#"):
            return False
        if not stripped or stripped.startswith("[") or stripped.endswith(":") or stripped.startswith("- "):
            return True
        i -= 1
    return True


_ACCESSOR = re.compile(r"^\$([A-Za-z0-9_.-]+)((?:\['[^']*'\])*)$")
_SUBKEY = re.compile(r"\['([^']*)'\]")


def record_accessor(pattern: str, record: dict) -> Any:
    """The value a Fluent Bit record accessor (``$key['sub']['subsub']``) selects, or None."""
    match = _ACCESSOR.match(pattern)
    if not match:
        raise ConfigFormatError(f"not a record accessor: {pattern!r}")
    value: Any = record.get(match.group(1))
    for key in _SUBKEY.findall(match.group(2)):
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def grep_keeps(rule: str, record: dict) -> bool:
    """Whether a grep ``Regex <field> <regex>`` rule keeps ``record``.

    The value is split at the first space, as Fluent Bit's grep does; the
    regex is searched (not fully matched) in the field's string value; a
    missing or non-string field does not match, so the record is dropped.
    """
    field_part, _, pattern = rule.partition(" ")
    if not pattern:
        raise ConfigFormatError(f"grep rule needs '<field> <regex>': {rule!r}")
    if not field_part.startswith("$"):
        field_part = "$" + field_part
    value = record_accessor(field_part, record)
    return isinstance(value, str) and re.search(pattern, value) is not None
