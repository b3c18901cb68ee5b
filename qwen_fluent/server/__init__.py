"""The receiver's I/O: the Forward listener (:mod:`.forward`) and the HTTP endpoint for Prometheus
(:mod:`.http`). The counters they bump live in :mod:`qwen_fluent.stats`, a module the metrics
package may import too."""

from .forward import ForwardServer, ServerConfig

__all__ = ["ForwardServer", "ServerConfig"]
