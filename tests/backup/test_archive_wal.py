"""deploy/archive-wal against the rules PostgreSQL sets for an archive_command: success only once
the file is in the archive, never an overwrite, success for an identical file already there;
and its restore_command mode. Plain files, no server: part of the ordinary suite."""
from __future__ import annotations

import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "archive-wal"
SEGMENT = "000000010000000000000007"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=30)


def test_archives_once_and_accepts_the_same_file_again(tmp_path):
    archive = tmp_path / "archive"
    archive.mkdir()
    wal = tmp_path / SEGMENT
    wal.write_bytes(b"\x01" * 4096)
    assert run(wal, SEGMENT, archive).returncode == 0
    assert (archive / SEGMENT).read_bytes() == wal.read_bytes()
    assert run(wal, SEGMENT, archive).returncode == 0  # a retry after a crash: identical, fine
    assert [p.name for p in archive.iterdir()] == [SEGMENT]  # no temporary file left behind


def test_refuses_to_overwrite_different_contents(tmp_path):
    archive = tmp_path / "archive"
    archive.mkdir()
    (archive / SEGMENT).write_bytes(b"kept")
    wal = tmp_path / SEGMENT
    wal.write_bytes(b"other")
    done = run(wal, SEGMENT, archive)
    assert done.returncode == 1 and "not overwritten" in done.stderr
    assert (archive / SEGMENT).read_bytes() == b"kept"


def test_fails_without_a_writable_archive_or_the_file(tmp_path):
    wal = tmp_path / SEGMENT
    wal.write_bytes(b"x")
    assert run(wal, SEGMENT, tmp_path / "missing").returncode == 1
    assert run(tmp_path / "nothing", SEGMENT, tmp_path).returncode == 1


def test_restore_mode(tmp_path):
    archive = tmp_path / "archive"
    archive.mkdir()
    (archive / SEGMENT).write_bytes(b"segment")
    target = tmp_path / "RECOVERYXLOG"
    assert run("--restore", SEGMENT, target, archive).returncode == 0
    assert target.read_bytes() == b"segment"
    # Not in the archive (the server asks for the next timeline's history, say): 1, quietly.
    missing = run("--restore", "00000002.history", tmp_path / "h", archive)
    assert missing.returncode == 1 and missing.stderr == ""
