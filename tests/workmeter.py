"""Work in instructions, not seconds: how many CPU instructions a piece of Python code executes.

The machines that run the tests are shared and noisy, so a test that bounds work must not read a
clock. Hardware counters (perf_event_open) are no way out either: these machines are virtual and
have no PMU ("PMU not available due to virtualization"). valgrind's callgrind counts the
instructions a program executes instead: the same count, to within a few per cent (random
token ids, a growing database), whatever else the machine is doing.

`measure(factory)` runs a child Python under callgrind. The factory, a "module:function"
importable in the child, sets up (uninstrumented, near native speed) and then yields `Case`s.
From its first case on, the child runs instrumented (about 50x slower than native; switching
instrumentation on and off per case would retranslate all code each time, slower still) and
collects counts only inside each measured call, through callgrind's client requests in a small
C helper compiled here (valgrind's headers and gcc are on every machine of this project;
`unavailable()` says what is missing). For each case the child first runs an unmeasured warm-up
(lazy imports, caches and first-use costs are not the body's), then the measured call, and
reports the count to the parent as soon as it has it, so that a caller can stop at the first
case over its budget instead of waiting for a quadratic one at the next size.
`measure_parallel` shares the cases among several children.
"""
from __future__ import annotations

import ctypes
import hashlib
import importlib
import itertools
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

ROOT = Path(__file__).resolve().parent.parent
HEADER = Path("/usr/include/valgrind/callgrind.h")

_HELPER_SOURCE = r"""
#include <valgrind/callgrind.h>
int meter_running(void) { return RUNNING_ON_VALGRIND; }
void meter_instrument(void) { CALLGRIND_START_INSTRUMENTATION; }
void meter_start(void) { CALLGRIND_ZERO_STATS; CALLGRIND_TOGGLE_COLLECT; }
void meter_stop(const char *name) { CALLGRIND_TOGGLE_COLLECT; CALLGRIND_DUMP_STATS_AT(name); }
"""


@dataclass
class Case:
    """`prepare()` returns the zero-argument call to measure (a fresh signed request, say);
    `check` (not measured) gets what that call returned, e.g. to insist on no 500. `warm_up`
    runs unmeasured first: True runs `prepare()()`, a callable runs itself, False nothing."""
    name: str
    prepare: Callable[[], Callable[[], Any]]
    check: Callable[[Any], None] | None = None
    warm_up: bool | Callable[[], Any] = True


def unavailable() -> str | None:
    """Why instructions cannot be counted here, or None if they can."""
    for tool in ("valgrind", "gcc"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not HEADER.exists():
        return f"{HEADER} is missing (Debian: apt-get install valgrind)"
    return None


def _helper() -> Path:
    """The compiled helper, built once per source version into the temporary directory."""
    digest = hashlib.sha256(_HELPER_SOURCE.encode()).hexdigest()[:16]
    library = Path(tempfile.gettempdir()) / f"coalition-workmeter-{digest}.so"
    if not library.exists():
        with tempfile.TemporaryDirectory() as build:
            source = Path(build) / "meter.c"
            source.write_text(_HELPER_SOURCE)
            built = Path(build) / "meter.so"
            subprocess.run(["gcc", "-shared", "-fPIC", "-O1", "-o", str(built), str(source)],
                           check=True, capture_output=True)
            os.replace(built, library)  # atomic: a parallel run never loads half a file
    return library


_TRIGGER = "desc: Trigger: Client Request: "


def _summary(dump: Path) -> tuple[str, int]:
    name, total = None, None
    with open(dump, encoding="utf-8", errors="replace") as lines:
        for line in lines:
            if line.startswith(_TRIGGER):
                name = line[len(_TRIGGER):].rstrip("\n")
            elif line.startswith("summary: "):
                total = int(line.split()[1])
    if name is None or total is None:
        raise RuntimeError(f"{dump} is not a callgrind dump of a measured case")
    return name, total


def measure(factory: str, *args: str, log: Path | None = None,
            on_start: Callable[[subprocess.Popen], None] | None = None) -> Iterator[tuple[str, int]]:
    """(case name, instructions) for every case `factory(*args)` yields, in order, each as soon
    as it is measured. Closing the iterator early kills the child."""
    reason = unavailable()
    if reason:
        raise RuntimeError(f"cannot count instructions: {reason}")
    with tempfile.TemporaryDirectory(prefix="workmeter-") as out:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": "0",
               "WORKMETER_HELPER": str(_helper())}
        stderr = open(log or Path(out) / "stderr", "ab")
        child = subprocess.Popen(
            ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--collect-atstart=no", "--dump-line=no",
             "--dump-instr=no", f"--callgrind-out-file={out}/callgrind.out", "-q",
             sys.executable, "-m", "tests.workmeter", factory, *args],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True,
            start_new_session=True)
        stderr.close()
        if on_start is not None:
            on_start(child)
        try:
            dumps = 0
            for line in child.stdout:
                dumps += 1
                name, total = _summary(Path(out) / f"callgrind.out.{dumps}")
                if name != json.loads(line)["case"]:
                    raise RuntimeError(f"dump {dumps} is of {name!r}, expected {line!r}")
                yield name, total
            if child.wait() != 0:
                tail = (Path(log) if log else Path(out) / "stderr").read_text(errors="replace")[-4000:]
                raise RuntimeError(f"the measuring child failed ({child.returncode}):\n{tail}")
        finally:
            _kill(child)
            child.wait()
            child.stdout.close()


def _kill(child: subprocess.Popen) -> None:
    if child.poll() is None:
        try:
            os.killpg(child.pid, signal.SIGKILL)  # valgrind and the Python it runs
        except ProcessLookupError:  # ended meanwhile
            pass


def measure_parallel(factory: str, *args: str, jobs: int, log_dir: Path) -> Iterator[tuple[str, int]]:
    """`measure` in `jobs` children at once, child k running `factory(*args, "k/jobs")`: the
    factory yields its share of the cases. Results come as any child has them."""
    results: queue.Queue = queue.Queue()
    children: list[subprocess.Popen] = []

    def run(shard: int) -> None:
        try:
            for result in measure(factory, *args, f"{shard}/{jobs}", log=log_dir / f"child-{shard}.log",
                                  on_start=children.append):
                results.put(result)
        except BaseException as exc:  # noqa: BLE001  (handed to the caller's thread)
            results.put(exc)
        finally:
            results.put(None)

    threads = [threading.Thread(target=run, args=(k,), daemon=True) for k in range(jobs)]
    for thread in threads:
        thread.start()
    try:
        running = jobs
        while running:
            item = results.get()
            if item is None:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        for child in children:  # a child may be deep in a long case: stop it now, not after
            _kill(child)
        for thread in threads:
            thread.join(timeout=60)


def _run_child(factory: str, args: list[str]) -> None:
    meter = ctypes.CDLL(os.environ["WORKMETER_HELPER"])
    if not meter.meter_running():
        raise SystemExit("tests.workmeter runs its cases under valgrind only (see measure)")
    module, _, function = factory.partition(":")
    cases: Iterable[Case] = iter(getattr(importlib.import_module(module), function)(*args))
    first = next(cases, None)  # the factory's setup runs uninstrumented, at near native speed
    # Instrumentation stays on from here: switching it on and off retranslates all code each time.
    meter.meter_instrument()
    for case in itertools.chain([first] if first else [], cases):
        if case.warm_up:  # first use: lazy imports, compiled patterns, caches
            (case.prepare() if case.warm_up is True else case.warm_up)()
        work = case.prepare()
        meter.meter_start()
        result = work()
        meter.meter_stop(case.name.encode())
        if case.check is not None:
            case.check(result)
        print(json.dumps({"case": case.name}), flush=True)


if __name__ == "__main__":
    _run_child(sys.argv[1], sys.argv[2:])
