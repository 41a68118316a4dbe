"""The service under gunicorn, as the crash suite starts, kills and restarts it."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / ".venv" / "bin"
WORKERS = 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def alive(pid: int) -> bool:
    """Running, not a zombie: an orphaned worker is reaped by whoever adopts it, maybe never."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(entry.name))
    return sorted(found)


def wait_until(predicate, timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


class Gunicorn:
    """gunicorn with WORKERS sync workers on a fixed port. `--reuse-port` lets a new master bind
    while workers orphaned by a SIGKILLed master still hold the old socket, as after a crash
    under a supervisor that restarts at once."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.process: subprocess.Popen | None = None
        self.orphans: list[int] = []

    def start(self) -> None:
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [str(BIN / "gunicorn"), "-w", str(WORKERS), "-b", f"127.0.0.1:{self.port}",
             "--reuse-port", "--timeout", "10", "--graceful-timeout", "20", "--no-control-socket",
             "wsgi:app"],
            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        wait_until(lambda: self.ready() and len(self.workers()) == WORKERS, 60, "gunicorn to serve")

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/readyz", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    @property
    def master(self) -> int:
        assert self.process is not None
        return self.process.pid

    def workers(self) -> list[int]:
        return children(self.master) if self.process and self.process.poll() is None else []

    def kill_worker(self, spare: list[int]) -> int:
        victim = next(pid for pid in self.workers() if pid not in spare)
        os.kill(victim, signal.SIGKILL)
        return victim

    def worker_serving(self, client_port: int) -> int:
        """The worker holding the server end of the connection from `client_port`."""
        inodes = set()
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local, remote = fields[1], fields[2]
                if int(local.rsplit(":", 1)[1], 16) == self.port and \
                        int(remote.rsplit(":", 1)[1], 16) == client_port:
                    inodes.add(f"socket:[{fields[9]}]")
        for pid in self.workers():
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                try:
                    if os.readlink(fd) in inodes:
                        return pid
                except OSError:
                    continue
        raise LookupError(f"no worker holds the connection from port {client_port}")

    def kill_master(self) -> None:
        self.orphans = self.workers()
        os.kill(self.master, signal.SIGKILL)
        self.process.wait(10)

    def orphans_gone(self) -> bool:
        return not any(alive(pid) for pid in self.orphans)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.master, signal.SIGKILL)
                self.process.wait(10)
        for pid in self.orphans:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
