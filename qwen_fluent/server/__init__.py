"""The receiver's I/O: the Forward listener (:mod:`.forward`), its counters (:mod:`.stats`)
and the HTTP endpoint for Prometheus (:mod:`.http`)."""

from .forward import ForwardServer, ServerConfig
from .stats import ReceiverStats

__all__ = ["ForwardServer", "ReceiverStats", "ServerConfig"]
