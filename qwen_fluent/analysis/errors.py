"""The exceptions :mod:`qwen_fluent.analysis` raises.

Reading a log never raises for what is *in* it (a broken line is counted as
unparsed, a truncated gzip member as a read error of its file); these are the
failures that stop an analysis before it can say anything useful: no input
to read, or a plot that cannot be drawn.
"""

from __future__ import annotations


class AnalysisError(Exception):
    """Base class of every error raised by :mod:`qwen_fluent.analysis`."""


class InputNotFoundError(AnalysisError):
    """A path named on the command line does not exist, or a glob matched no file."""


class PlotUnavailableError(AnalysisError):
    """``--plot`` was asked for but matplotlib is not installed."""
