"""A private nginx on 127.0.0.1 with WebDAV PUT: a real HTTP build-cache server for the tests.

The recipe of PLATFORM.md section 9.  One server, several prefixes, each a store
that behaves in one way:

- ``/ok/``: a store (GET, HEAD, PUT);
- ``/auth/``: the same, but every request needs ``Authorization: Bearer TOKEN``, else 401;
- ``/nowrite/``: GET and HEAD answer, PUT is refused with 401;
- ``/trusted/``: anyone reads, a PUT needs the token (a CI cache: trusted jobs write);
- ``/broken/``: every request is a 500.

Each test takes a fresh folder under a prefix (``NginxServer.url``).  Needs nginx built with
the DAV module (Debian's is); the fixture skips when nginx is not installed.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

TOKEN = "s3cr3t-T0KEN-4b1d"

CONF = """
user root;
worker_processes 1;
daemon off;
error_log {d}/error.log;
pid {d}/nginx.pid;
events {{ worker_connections 64; }}
http {{
  access_log {d}/access.log;
  client_body_temp_path {d}/tmp;
  client_max_body_size 1g;
  server {{
    listen 127.0.0.1:{port};
    location /ok/ {{ root {d}/store; dav_methods PUT; create_full_put_path on; }}
    location /auth/ {{
      if ($http_authorization != "Bearer {token}") {{ return 401; }}
      root {d}/store; dav_methods PUT; create_full_put_path on;
    }}
    location /nowrite/ {{
      if ($request_method = PUT) {{ return 401; }}
      root {d}/store;
    }}
    location /trusted/ {{
      set $deny "";
      if ($request_method = PUT) {{ set $deny "put"; }}
      if ($http_authorization != "Bearer {token}") {{ set $deny "${{deny}}-no-token"; }}
      if ($deny = "put-no-token") {{ return 401; }}
      root {d}/store; dav_methods PUT; create_full_put_path on;
    }}
    location /broken/ {{ return 500; }}
  }}
}}
"""


@dataclass
class NginxServer:
    port: int
    folder: Path
    proc: subprocess.Popen[bytes]

    def url(self, prefix: str = "ok") -> str:
        """A fresh store under ``prefix``."""
        return f"http://127.0.0.1:{self.port}/{prefix}/{uuid.uuid4().hex[:12]}"

    def stored(self, url: str) -> Path:
        """The folder on disk behind a store's URL."""
        return self.folder / "store" / url.split("/", 3)[3]

    def access_log(self) -> str:
        return (self.folder / "access.log").read_text()

    def stop(self) -> None:
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_nginx(folder: Path, nginx: str = "/usr/sbin/nginx") -> NginxServer:
    (folder / "store").mkdir(parents=True)
    (folder / "tmp").mkdir()
    port = free_port()
    conf = folder / "nginx.conf"
    conf.write_text(CONF.format(d=folder, port=port, token=TOKEN))
    proc = subprocess.Popen([nginx, "-c", str(conf)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise RuntimeError(f"nginx did not start: {err}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return NginxServer(port, folder, proc)
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("nginx did not listen within 10 s")


def nginx_binary() -> str | None:
    for path in ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx"):
        if os.access(path, os.X_OK):
            return path
    return None
