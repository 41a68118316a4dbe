"""Render the nginx configuration for the coalition service (stdlib only).

    python deploy/nginx/render.py --out DIR --listen 127.0.0.1:8000 \
        --upstream unix:/run/coalition/gunicorn.sock [--standalone --run-dir DIR]

writes DIR/coalition.conf (the http-context part: the server, its timeouts, limits and error
answers) and DIR/problem-headers.conf; with --standalone also DIR/nginx.conf, a whole nginx
configuration for one user in the foreground, every file under --run-dir (`make serve` and
tests/serving run it as `nginx -p RUN_DIR -c DIR/nginx.conf -e stderr`). With the distribution's
nginx, render without --standalone into /etc/nginx/coalition/ and include coalition.conf from
/etc/nginx/conf.d/. The largest body is MAX_BODY_BYTES from the environment (the app's own
limit), 1 MiB by default. `--find-nginx` prints the nginx binary (exit 1 if there is none).
"""
from __future__ import annotations

import argparse
import getpass
import grp
import os
import re
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
# Debian installs nginx in /usr/sbin, which is not on an ordinary user's PATH.
NGINX_PLACES = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")
INSTALL_HINT = ("nginx is not installed. On Debian or Ubuntu: "
                "sudo apt-get update && sudo apt-get install -y nginx "
                "(or nginx-light); elsewhere the distribution's nginx package. NGINX=/path/to/nginx "
                "names one that is not on PATH.")
_PLACEHOLDER = re.compile(r"\{\{([A-Z_]+)\}\}")
_UPSTREAM = re.compile(r"^(unix:/\S+|[A-Za-z0-9.\-]+:\d{1,5}|\[[0-9A-Fa-f:]+\]:\d{1,5})$")
_LISTEN = re.compile(r"^([A-Za-z0-9.\-]+:\d{1,5}|\[[0-9A-Fa-f:]+\]:\d{1,5}|\d{1,5})$")


def find_nginx() -> str | None:
    named = os.environ.get("NGINX")
    if named:
        return named if os.access(named, os.X_OK) else None
    found = shutil.which("nginx")
    if found:
        return found
    return next((p for p in NGINX_PLACES if os.access(p, os.X_OK)), None)


def fill(template: str, values: dict[str, str]) -> str:
    def one(match: re.Match) -> str:
        return values[match.group(1)]
    return _PLACEHOLDER.sub(one, template)


def render(out: Path, *, listen: str, upstream: str, max_body_bytes: int,
           access_log: str, connections_per_address: int = 64,
           standalone: bool = False, run_dir: Path | None = None, error_log: str = "stderr",
           worker_processes: int = 1) -> Path:
    """Write the configuration into `out`; returns the file to hand to nginx -c (nginx.conf if
    standalone, else coalition.conf, to include from the http context)."""
    if not _LISTEN.match(listen):
        raise ValueError(f"--listen must be host:port or a port, not {listen!r}")
    if not _UPSTREAM.match(upstream):
        raise ValueError(f"--upstream must be unix:/absolute/path or host:port, not {upstream!r}")
    if max_body_bytes < 1:
        raise ValueError("MAX_BODY_BYTES must be positive")
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    values = {"LISTEN": listen, "UPSTREAM": upstream, "MAX_BODY_BYTES": str(max_body_bytes),
              "CONF_DIR": str(out),
              "ACCESS_LOG": "off" if access_log == "off" else f"{access_log} coalition_json",
              "CONNECTIONS_PER_ADDRESS": str(connections_per_address)}
    shutil.copyfile(HERE / "problem-headers.conf", out / "problem-headers.conf")
    (out / "coalition.conf").write_text(fill((HERE / "coalition.conf.template").read_text(), values))
    if not standalone:
        return out / "coalition.conf"
    run_dir = (run_dir or out).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    # As root, nginx would hand its workers to "nobody", who cannot reach the files of the user
    # running it; keep them with that user (nginx ignores the directive for anyone else).
    user = ""
    if os.geteuid() == 0:
        user = f"user {getpass.getuser()} {grp.getgrgid(os.getegid()).gr_name};"
    values.update(RUN_DIR=str(run_dir), ERROR_LOG=error_log, USER_DIRECTIVE=user,
                  WORKER_PROCESSES=str(worker_processes))
    (out / "nginx.conf").write_text(fill((HERE / "nginx.conf.template").read_text(), values))
    return out / "nginx.conf"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--find-nginx", action="store_true",
                        help="print the nginx binary and exit (1 and an install hint if none)")
    parser.add_argument("--out", type=Path, help="directory for the rendered files")
    parser.add_argument("--listen", default="127.0.0.1:8000", help="nginx's address (host:port)")
    parser.add_argument("--upstream", default="127.0.0.1:8001",
                        help="gunicorn's bind: unix:/absolute/path.sock or 127.0.0.1:port")
    parser.add_argument("--access-log", default=None,
                        help="nginx access log (JSON lines): a path, or 'off' (default: OUT/access.log)")
    parser.add_argument("--connections-per-address", type=int, default=64,
                        help="concurrent requests one client address may have in nginx (429 beyond)")
    parser.add_argument("--standalone", action="store_true",
                        help="also write nginx.conf, a whole configuration for one user")
    parser.add_argument("--run-dir", type=Path, default=None,
                        help="standalone: pid file and temporary files (default: OUT)")
    parser.add_argument("--error-log", default="stderr", help="standalone: nginx's error log")
    parser.add_argument("--worker-processes", type=int, default=1, help="standalone: nginx workers")
    args = parser.parse_args(argv)
    if args.find_nginx:
        nginx = find_nginx()
        if nginx is None:
            print(INSTALL_HINT, file=sys.stderr)
            return 1
        print(nginx)
        return 0
    if args.out is None:
        parser.error("--out is required")
    max_body = int(os.environ.get("MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES))
    access_log = args.access_log or str((args.out / "access.log").resolve())
    try:
        conf = render(args.out, listen=args.listen, upstream=args.upstream, max_body_bytes=max_body,
                      access_log=access_log, connections_per_address=args.connections_per_address,
                      standalone=args.standalone, run_dir=args.run_dir, error_log=args.error_log,
                      worker_processes=args.worker_processes)
    except ValueError as exc:
        parser.error(str(exc))
    print(conf)
    return 0


if __name__ == "__main__":
    sys.exit(main())
