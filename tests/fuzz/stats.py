"""Counts of the contract fuzzing run, printed at its end by conftest.pytest_terminal_summary."""
from __future__ import annotations

from collections import Counter, defaultdict


class Stats:
    def __init__(self) -> None:
        self.calls: dict[str, Counter] = defaultdict(Counter)  # operation -> status -> calls
        self.signings: Counter = Counter()                       # signed / other-body / none
        self.failures: Counter = Counter()                       # operation -> failing calls
        self.known_gaps: Counter = Counter()                     # operation -> calls exempted

    def record(self, operation: str, status: int, signing: str) -> None:
        self.calls[operation][status] += 1
        self.signings[signing] += 1

    def known_gap(self, operation: str) -> None:
        self.known_gaps[operation] += 1

    def fail(self, operation: str) -> None:
        self.failures[operation] += 1


STATS = Stats()
