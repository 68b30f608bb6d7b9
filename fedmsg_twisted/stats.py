# -*- test-case-name: tests.test_stats -*-
"""
Counters every service keeps: messages in and out, drops and rejections by
reason.  They are what C{/metrics} shows and what tests assert on, so a
dropped message is never silent.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterator


class Counters:
    """
    Named counters with one label each, e.g. C{("dropped", "not-json")}.
    """

    def __init__(self) -> None:
        # defaultdict(int): its += is cheaper than Counter's.
        self._counts: defaultdict[tuple[str, str], int] = defaultdict(int)

    def incr(self, name: str, label: str = "", n: int = 1) -> None:
        # On the hot path of every message: keep it to one dict update.
        self._counts[(name, label)] += n

    def get(self, name: str, label: str | None = None) -> int:
        """
        One counter, or with C{label=None} the sum over all its labels.
        """
        if label is not None:
            return self._counts.get((name, label), 0)  # reading creates nothing
        return sum(v for (n, _), v in self._counts.items() if n == name)

    def items(self) -> Iterator[tuple[str, str, int]]:
        for (name, label), value in sorted(self._counts.items()):
            yield name, label, value

    def __repr__(self) -> str:
        return f"<Counters {dict(self._counts)}>"
