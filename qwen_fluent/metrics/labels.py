"""Label caps: how a label value is admitted, folded, and released.

:class:`LabelSpace` holds, per label name, the values alive in some series
and how many series hold each. A new series asks it to admit its values; a
value past its label's cap (or too long, or not a string) folds into the
overflow value, and the fold is counted per label. When series expire their
values are released, which frees room under the cap: caps bound what is
alive now, not what was ever seen, so a rolling restart of a fleet (new pod
names every time) does not exhaust the ``pod`` cap.

Only the slow path (a label set not seen before) comes here; the hot path is
a dict lookup of the raw label tuple.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from .config import MetricsConfig

#: Longest label value kept; a longer one folds into the overflow value.
#: Label-bound strings are cut once, by the normaliser, at ``[records]
#: max_label_length`` (default 256: Kubernetes names are at most 253
#: characters, model ids shorter still, and a longer HTTP path carries data,
#: not a route). This guard only stops producers that bypass the normaliser,
#: so it sits at the largest value ``max_label_length`` may take (4096):
#: whatever the normaliser kept is never folded here for its length (a
#: 300-character model with ``max_label_length = 512`` stays itself).
MAX_LABEL_VALUE_LENGTH = 4096

#: Pseudo label name under which ``label_overflow_total`` counts label sets
#: folded because their family group reached ``max_series``.
MAX_SERIES = "max_series"


class LabelSpace:
    """Live label values per label name, with their caps and fold counts.

    ``overflow`` (a :class:`collections.Counter` by label name) is what
    ``qwen_fluent_label_overflow_total`` exposes: the number of records
    whose value for that label was folded.
    """

    __slots__ = ("_live", "_limits", "_default_limit", "overflow_value", "overflow")

    def __init__(self, config: MetricsConfig) -> None:
        self._live: dict[str, dict[str, int]] = {}
        self._limits = dict(config.label_limits)
        self._default_limit = config.default_label_limit
        self.overflow_value = config.overflow_value
        self.overflow: Counter[str] = Counter()

    def fold(self, names: tuple[str, ...], values: Iterable[object]) -> tuple[str, ...]:
        """The canonical label values for ``values``: strings, capped.

        Does not take a reference; :meth:`hold` does, once the series exists.
        Counts one fold per label folded.
        """
        overflow = self.overflow_value
        out = []
        for name, value in zip(names, values):
            if type(value) is not str:
                value = "" if value is None else str(value)
            if value != overflow:
                live = self._live.get(name)
                if len(value) > MAX_LABEL_VALUE_LENGTH:
                    value = overflow
                    self.overflow[name] += 1
                elif live is not None and value not in live and len(live) >= self._limits.get(name, self._default_limit):
                    value = overflow
                    self.overflow[name] += 1
            out.append(value)
        return tuple(out)

    def hold(self, names: tuple[str, ...], values: tuple[str, ...]) -> None:
        """A new series holds these (already folded) values."""
        overflow = self.overflow_value
        for name, value in zip(names, values):
            if value != overflow:
                live = self._live.setdefault(name, {})
                live[value] = live.get(value, 0) + 1

    def release(self, names: tuple[str, ...], values: tuple[str, ...]) -> None:
        """An expired series no longer holds these values."""
        overflow = self.overflow_value
        for name, value in zip(names, values):
            if value == overflow:
                continue
            live = self._live.get(name)
            if live is None:
                continue
            left = live.get(value, 0) - 1
            if left > 0:
                live[value] = left
            else:
                live.pop(value, None)

    def is_live(self, name: str, value: object) -> bool:
        """Whether ``value`` of ``name`` is held by some series now."""
        live = self._live.get(name)
        return live is not None and value in live

    def live_count(self, name: str) -> int:
        """How many distinct values of ``name`` are alive now."""
        return len(self._live.get(name, ()))
