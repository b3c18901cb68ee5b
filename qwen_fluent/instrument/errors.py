"""The instrument's failure vocabulary.

Only configuration can fail loudly: a bad setting is found when the middleware
is built (at server start), never while serving. Once built, the middleware
never raises into the request path; a line it cannot write is counted in
:attr:`RequestLogMiddleware.write_errors` instead.
"""

from __future__ import annotations


class InstrumentError(Exception):
    """Base class of every error raised by :mod:`qwen_fluent.instrument`."""


class InstrumentConfigError(InstrumentError, ValueError):
    """A setting (argument or ``QWEN_FLUENT_INSTRUMENT_*`` variable) is unusable; the message names it."""
