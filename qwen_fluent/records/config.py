"""What can be tuned in the record normaliser: the ``[records]`` TOML section.

Every field has a default that works for the Fluent Bit setups documented in
``docs/records.md``; each limit carries the reason for its value. The
configuration loader (:mod:`qwen_fluent.config`) builds it from the
``[records]`` section, refusing unknown keys; wrong types and values are
refused here, with :class:`NormaliserConfigError`.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import NormaliserConfigError

#: Kubernetes object names (pods, nodes) are DNS subdomains of at most 253
#: characters, label values at most 63, and Hugging Face model ids stay far
#: below that; 256 characters therefore never cuts a legitimate value, while
#: bounding each label value at 1 KiB of UTF-8 (4 bytes a character at worst).
DEFAULT_MAX_LABEL_LENGTH = 256

#: Docker's json-file driver splits lines at 16 KiB and Fluent Bit's tail input
#: buffers 32 KiB by default (``Buffer_Max_Size``); a request log line is a few
#: hundred bytes. JSON lines longer than 64 KiB are not parsed (``line_too_long``),
#: which bounds the cost of ``json.loads`` per record.
DEFAULT_MAX_LINE_LENGTH = 64 * 1024

# Sanity bounds for the settings themselves.
_LABEL_LENGTH_RANGE = (16, 4096)
_LINE_LENGTH_RANGE = (1024, 16 * 1024 * 1024)
_MAX_NAMES = 16  # entries in model_labels / log_keys: each one costs a lookup per record


@dataclass(frozen=True)
class NormaliserConfig:
    """Settings of :class:`~qwen_fluent.records.Normaliser`.

    ``model_labels``: pod labels tried in order for the ``model`` of an event
    whose record does not name one. Only ``model`` by default: the common
    ``app.kubernetes.io/name`` names the application (``llm-router``), not the
    model, and would mislabel every series; add it here if your deployments
    are named after their models.

    ``log_keys``: record keys that may hold the wrapped log line, tried in
    order: ``log`` (docker json-file, CRI via the multiline ``cri`` parser),
    ``message`` (CRI via the regex ``cri`` parser), ``log_processed`` (the
    kubernetes filter's ``Merge_Log_Key`` example). A string value is a log
    line; a map value is an already parsed record.

    ``parse_vllm_stats`` / ``parse_tgi`` / ``parse_levels``: turn off the
    recognisers of vLLM stats lines, TGI ``Success`` events and log levels (a
    line then counts as level ``unknown``).

    ``source_from_tag``: when a record has no ``kubernetes`` map, read the pod,
    namespace and container from a tail tag that ends in the container log
    file name (``...containers.<pod>_<namespace>_<container>-<id>.log``).
    """

    model_labels: tuple[str, ...] = ("model",)
    max_label_length: int = DEFAULT_MAX_LABEL_LENGTH
    log_keys: tuple[str, ...] = ("log", "message", "log_processed")
    max_line_length: int = DEFAULT_MAX_LINE_LENGTH
    parse_vllm_stats: bool = True
    parse_tgi: bool = True
    parse_levels: bool = True
    source_from_tag: bool = True

    def __post_init__(self) -> None:
        for name in ("model_labels", "log_keys"):
            value = getattr(self, name)
            if isinstance(value, str) or not isinstance(value, (list, tuple)):
                raise NormaliserConfigError(f"records.{name} must be a list of strings, not {value!r}")
            if len(value) > _MAX_NAMES:
                raise NormaliserConfigError(f"records.{name} has {len(value)} entries; at most {_MAX_NAMES}")
            for item in value:
                if not isinstance(item, str) or not item:
                    raise NormaliserConfigError(f"records.{name} entries must be non-empty strings, not {item!r}")
            object.__setattr__(self, name, tuple(value))
        for name, (low, high) in (
            ("max_label_length", _LABEL_LENGTH_RANGE),
            ("max_line_length", _LINE_LENGTH_RANGE),
        ):
            value = getattr(self, name)
            if type(value) is not int or not low <= value <= high:
                raise NormaliserConfigError(f"records.{name} must be an integer in [{low}, {high}], not {value!r}")
        for name in ("parse_vllm_stats", "parse_tgi", "parse_levels", "source_from_tag"):
            value = getattr(self, name)
            if type(value) is not bool:
                raise NormaliserConfigError(f"records.{name} must be true or false, not {value!r}")
