"""A real nginx for end-to-end tests: found or installed, configured inside a temp dir, run as a
child process on 127.0.0.1, stopped afterwards.

Why nginx sees every flip at once: for static files nginx builds the path from ``root`` and the
URI on each request and ``open()``\\s it; the kernel resolves the ``current`` symlink inside that
path on every open. Two settings could break this, and the config pins both:

* ``open_file_cache off`` (nginx's default): a cache would keep serving descriptors opened through
  the old link target;
* ``disable_symlinks off`` (the default): with ``on`` nginx would refuse paths through ``current``.

A file already opened keeps being served whole from the release it was opened in, so a flip in the
middle of a response cannot mix two releases inside one body.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.conftest import free_port

NGINX_PACKAGE = "nginx-light"  # the same package .ci/run installs
_CANDIDATES = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")


def find_nginx() -> Path | None:
    """The nginx binary on PATH or in the usual sbin directories (not always on a user's PATH)."""
    found = shutil.which("nginx")
    if found:
        return Path(found)
    return next((Path(p) for p in _CANDIDATES if os.access(p, os.X_OK)), None)


def ensure_nginx() -> Path:
    """Return nginx, installing Debian's ``nginx-light`` first when missing (root + apt-get only).

    Skips the calling test, with the reason, when nginx is missing and cannot be installed.
    """
    found = find_nginx()
    if found is not None:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip(
            f"nginx is not installed and cannot be installed here (needs root and apt-get); "
            f"install {NGINX_PACKAGE} to run the zero-downtime test"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    steps = (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", NGINX_PACKAGE])
    for argv in steps:
        try:
            proc = subprocess.run(
                argv, capture_output=True, text=True, env=env, timeout=600, check=False
            )
        except subprocess.TimeoutExpired:
            pytest.skip(f"`{' '.join(argv)}` did not finish within 600 s; nginx unavailable")
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            pytest.skip(f"`{' '.join(argv)}` failed ({proc.returncode}): {' | '.join(tail)}")
    found = find_nginx()
    if found is None:
        pytest.skip(f"{NGINX_PACKAGE} installed but no nginx binary found")
    return found


@dataclass(frozen=True)
class Nginx:
    """A running nginx child: its base URL and the files it writes."""

    url: str
    port: int
    error_log: Path
    process: subprocess.Popen[bytes]

    def errors(self) -> list[str]:
        """Error-log lines at level error or worse (startup notices are not errors)."""
        text = self.error_log.read_text(errors="replace") if self.error_log.exists() else ""
        levels = ("[error]", "[crit]", "[alert]", "[emerg]")
        return [line for line in text.splitlines() if any(lv in line for lv in levels)]


def _temp_path_directives(binary: Path, temp: Path) -> str:
    """``*_temp_path`` inside ``temp`` for every module this nginx has, so that it never needs the
    compiled-in /var/lib/nginx (absent, or not writable without root)."""
    build = subprocess.run(
        [str(binary), "-V"], capture_output=True, text=True, timeout=10, check=False
    ).stderr
    out = []
    for directive, module in (
        ("client_body_temp_path", None),
        ("proxy_temp_path", "http_proxy_module"),
        ("fastcgi_temp_path", "http_fastcgi_module"),
        ("uwsgi_temp_path", "http_uwsgi_module"),
        ("scgi_temp_path", "http_scgi_module"),
    ):
        if module is None or f"--without-{module}" not in build:
            path = temp / directive.removesuffix("_temp_path")
            path.mkdir(parents=True, exist_ok=True)
            out.append(f"    {directive} {path};")
    return "\n".join(out)


def write_config(binary: Path, workdir: Path, docroot: Path, port: int) -> Path:
    """An nginx.conf that keeps every path (pid, logs, temp files) inside ``workdir``."""
    temp_paths = _temp_path_directives(binary, workdir / "temp")
    # The master runs as the test's user; as root the workers would drop to "nobody", who cannot
    # enter pytest's 0700 temp dirs, so they stay root here.
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf = workdir / "nginx.conf"
    conf.write_text(
        f"""{user}worker_processes 2;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections 512; }}
http {{
    access_log off;
    # Never close a client's keep-alive connection during the test (default: after 1000
    # requests); aiohttp can leak the socket it was about to reuse when that races a request.
    keepalive_requests 10000000;
    default_type text/html;
{temp_paths}
    # Resolve the `current` symlink on every request (see the module docstring).
    open_file_cache off;
    disable_symlinks off;
    server {{
        listen 127.0.0.1:{port};
        root {docroot};
        index index.html;
        location / {{ try_files $uri $uri/ =404; }}
    }}
}}
"""
    )
    return conf


@contextmanager
def run_nginx(
    binary: Path, workdir: Path, docroot: Path, port: int | None = None
) -> Iterator[Nginx]:
    """Start ``nginx -g 'daemon off;'`` serving ``docroot`` on 127.0.0.1 (``port``, else a free
    one); stop it (SIGTERM, then SIGKILL after 10 s) when the block ends."""
    workdir.mkdir(parents=True, exist_ok=True)
    error_log = workdir / "error.log"
    fixed = port
    for _attempt in range(1 if fixed else 3):  # a free port can be taken between probe and bind
        port = fixed or free_port()
        conf = write_config(binary, workdir, docroot, port)
        argv = [str(binary), "-p", f"{workdir}/", "-e", str(error_log), "-c", str(conf)]
        proc = subprocess.Popen(
            [*argv, "-g", "daemon off;"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if _wait_listening(proc, port, timeout_s=60):  # a deadline for a loaded machine
            break
        proc.kill()
        proc.wait(10)
    else:
        log = error_log.read_text(errors="replace") if error_log.exists() else "(no error log)"
        raise RuntimeError(f"nginx did not start; error log:\n{log[-2000:]}")
    try:
        yield Nginx(f"http://127.0.0.1:{port}", port, error_log, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _wait_listening(proc: subprocess.Popen[bytes], port: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.05)
    return False
