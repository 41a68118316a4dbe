"""Bulk enrolment: `flask members import` of a CSV file of new card numbers, then of the same
file again (every card enrolled already), on the database DATABASE_URL names.

The file (header member_id, one card number `bench-import-NNNNNNN` per row) is written before
the clock starts. Each import runs the operator command itself, in this process through click's
test runner (coalition/cli.py: parse, stage, INSERT ... ON CONFLICT DO NOTHING, audit event,
commit), so that the rate is the command's work from the first byte read to the commit; the
interpreter and app start of a real `flask` process (about a second) is left out, and timed
apart as `startup_s`. Prints one JSON document; exits 1 if an import failed or its counts are
not the file's.

    DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/bench_x \\
        .venv/bin/python -m bench.enrol_import --members 200000

bench/run.py runs it on its scratch database (`make bench`, row `members import`).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

PREFIX = "bench-import-"


def write_csv(path: Path, members: int) -> int:
    with open(path, "w", encoding="utf-8", newline="") as out:
        out.write("member_id\n")
        for first in range(0, members, 10_000):
            out.write("".join(f"{PREFIX}{i:07d}\n" for i in range(first, min(members, first + 10_000))))
    return path.stat().st_size


def timed_import(runner, path: Path) -> dict:
    began = time.perf_counter()
    result = runner.invoke(args=["members", "import", str(path)])
    seconds = time.perf_counter() - began
    try:
        answer = json.loads(result.stdout)
    except ValueError:
        answer = {"error": "no JSON", "stdout": result.stdout[-500:]}
    return {"exit_code": result.exit_code, "seconds": round(seconds, 3), "answer": answer}


def run(members: int, workdir: Path) -> dict:
    path = workdir / "cards.csv"
    size = write_csv(path, members)
    began = time.perf_counter()
    from coalition import create_app  # the app start a `flask` process pays, timed
    app = create_app()
    runner = app.test_cli_runner()
    startup = time.perf_counter() - began
    first = timed_import(runner, path)
    again = timed_import(runner, path)
    problems = []
    for name, done, created, existing in (("new", first, members, 0), ("rerun", again, 0, members)):
        answer = done["answer"]
        if done["exit_code"] != 0 or (answer.get("rows"), answer.get("created"),
                                      answer.get("existing")) != (members, created, existing):
            problems.append(f"{name}: exit {done['exit_code']}, {json.dumps(answer)[:500]}")
    return {"members": members, "file_bytes": size, "startup_s": round(startup, 3),
            "new": first, "rerun": again, "problems": problems}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=200_000)
    args = parser.parse_args(argv)
    if not os.environ.get("DATABASE_URL"):
        parser.error("set DATABASE_URL to a scratch database (the cards are enrolled there)")
    with tempfile.TemporaryDirectory(prefix="bench-import-") as workdir:
        report = run(args.members, Path(workdir))
    print(json.dumps(report, indent=2))
    return 1 if report["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
