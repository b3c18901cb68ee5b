"""Offline analysis of inference logs: ``qwen-fluent analyze``.

Log files (JSON lines, docker json-file and CRI container logs, plain
vLLM/TGI lines, gzip or not) are read through the receiver's own
normaliser, each request kept as a row of compact numpy columns, and
summarised with exact percentiles (numpy's default linear method). It sits
on the floor of ``metrics``: it imports only the bottom floor (``records``).
See docs/analyze.md for the usage, the JSON schema and the memory bounds.
"""

from .analyzer import Analyzer, Counts, FileReport, Sample
from .columns import BYTES_PER_REQUEST, DEFAULT_MAX_ROWS, RequestColumns
from .errors import AnalysisError, InputNotFoundError, PlotUnavailableError
from .inputs import Input, expand
from .render import FORMATS, render
from .summary import GROUP_BY, SCHEMA, summarise

__all__ = [
    "BYTES_PER_REQUEST",
    "DEFAULT_MAX_ROWS",
    "FORMATS",
    "GROUP_BY",
    "SCHEMA",
    "AnalysisError",
    "Analyzer",
    "Counts",
    "FileReport",
    "Input",
    "InputNotFoundError",
    "PlotUnavailableError",
    "RequestColumns",
    "Sample",
    "expand",
    "render",
    "summarise",
]
