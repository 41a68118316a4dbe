"""Totals of the contract fuzzing run, for CI's log (and the closing note)."""
from __future__ import annotations

from collections import Counter

import pytest

from .stats import STATS


def pytest_terminal_summary(terminalreporter):
    if not STATS.calls:
        return
    statuses: Counter = Counter()
    for counts in STATS.calls.values():
        statuses.update(counts)
    write = terminalreporter.write_line
    terminalreporter.section("contract fuzzing (schemathesis)")
    for operation in sorted(STATS.calls):
        counts = STATS.calls[operation]
        notes = ""
        if STATS.known_gaps.get(operation):
            notes += f"  known gap (undocumented content type): {STATS.known_gaps[operation]}"
        if STATS.failures.get(operation):
            notes += f"  FAILING CALLS: {STATS.failures[operation]}"
        write(f"{operation:46} {sum(counts.values()):5} calls  "
              + " ".join(f"{status}:{n}" for status, n in sorted(counts.items())) + notes)
    failed = len(terminalreporter.stats.get("failed", []))
    write(f"fuzz totals: operations {len(STATS.calls)}, calls {sum(statuses.values())} "
          f"({', '.join(f'{k} {v}' for k, v in sorted(STATS.signings.items()))}), "
          f"failing calls {sum(STATS.failures.values())}, failing operations {failed}")
    write("by status: " + " ".join(f"{s}:{n}" for s, n in sorted(statuses.items())))


def pytest_configure(config):
    if not config.pluginmanager.has_plugin("schemathesis"):
        raise pytest.UsageError("tests/fuzz needs the schemathesis pytest plugin, which pytest.ini "
                                "turns off: run `make fuzz`, or pytest with `-p schemathesis`")
