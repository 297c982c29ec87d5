"""A private OpenSSH server on 127.0.0.1 for the tests (the recipe of PLATFORM.md section 1).

``start_sshd(folder)`` generates host and user keys in ``folder``, makes an
unprivileged user with /bin/sh as its shell (root's shell rc files are slow),
and starts ``/usr/sbin/sshd -D`` on a free port; ``SshServer.stop()`` ends it.
Needs root (sshd, useradd) and openssh-server; the fixtures skip otherwise.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

USER = "dagrunssh"


@dataclass
class SshServer:
    port: int
    user: str
    key: Path  # the user's private key
    folder: Path
    proc: subprocess.Popen[bytes]

    def options(self, **extra: object) -> dict[str, object]:
        """An [executors.NAME] table for this server."""
        table: dict[str, object] = {
            "type": "ssh",
            "host": "127.0.0.1",
            "port": self.port,
            "user": self.user,
            "identity_file": str(self.key),
            "ssh_options": [
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "LogLevel=ERROR", "-o", "KexAlgorithms=curve25519-sha256",
            ],
        }
        table.update(extra)
        return table

    def toml(self, name: str, **extra: object) -> str:
        lines = [f"[executors.{name}]"]
        for k, v in self.options(**extra).items():
            if isinstance(v, str):
                lines.append(f'{k} = "{v}"')
            elif isinstance(v, list):
                lines.append(f"{k} = [" + ", ".join(f'"{x}"' for x in v) + "]")
            elif isinstance(v, bool):
                lines.append(f"{k} = {'true' if v else 'false'}")
            else:
                lines.append(f"{k} = {v}")
        return "\n".join(lines) + "\n"

    def connections(self) -> int:
        """Established TCP connections to this server now."""
        import psutil

        return sum(
            1 for c in psutil.net_connections("tcp")
            if c.laddr and c.laddr.port == self.port and c.status == "ESTABLISHED"
        )

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def can_run() -> str | None:
    """None if an sshd can be started here, else why not."""
    if os.geteuid() != 0:
        return "needs root to start sshd and add a test user"
    if not os.path.exists("/usr/sbin/sshd") or shutil.which("ssh") is None:
        return "needs openssh-server and openssh-client"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _user() -> Path:
    try:
        pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "-m", "-s", "/bin/sh", USER], capture_output=True)
    subprocess.run(["usermod", "-p", "*", USER], check=True)  # '!' is locked with UsePAM no
    home = Path(pwd.getpwnam(USER).pw_dir)
    (home / ".ssh").mkdir(mode=0o700, parents=True, exist_ok=True)
    shutil.chown(home, USER, USER)
    shutil.chown(home / ".ssh", USER, USER)
    return home


def start_sshd(folder: Path, *, max_sessions: int | None = 64) -> SshServer:
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    for name in ("host_ed25519", "id_ed25519"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(folder / name)], check=True
        )
    home = _user()
    keys = home / ".ssh" / "authorized_keys"
    with open(keys, "a") as f:  # append: another test session may use its own key
        f.write((folder / "id_ed25519.pub").read_text())
    keys.chmod(0o600)
    shutil.chown(keys, USER, USER)
    port = _free_port()
    config = [
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {folder}/host_ed25519",
        f"PidFile {folder}/sshd.pid", "AuthorizedKeysFile .ssh/authorized_keys",
        "PasswordAuthentication no", "KbdInteractiveAuthentication no", "PermitRootLogin no",
        "UsePAM no", f"AllowUsers {USER}@127.0.0.1", "MaxStartups 100:30:200", "LogLevel ERROR",
    ]
    if max_sessions is not None:
        config.append(f"MaxSessions {max_sessions}")
    (folder / "sshd_config").write_text("\n".join(config) + "\n")
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # systemd would make it
    log = open(folder / "sshd.log", "wb")  # noqa: SIM115 - the server keeps it
    proc = subprocess.Popen(
        ["/usr/sbin/sshd", "-D", "-e", "-f", str(folder / "sshd_config")],
        stdin=subprocess.DEVNULL, stdout=log, stderr=log,
    )
    log.close()
    _wait_for_banner(port, proc, folder)
    return SshServer(port, USER, folder / "id_ed25519", folder, proc)


def _wait_for_banner(port: int, proc: subprocess.Popen[bytes], folder: Path) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                if s.recv(64).startswith(b"SSH-"):
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("sshd did not start: " + (folder / "sshd.log").read_text())
        time.sleep(0.05)


def user_processes() -> list[tuple[int, str]]:
    """(pid, command line) of the test user's processes other than sshd's own."""
    import psutil

    out = []
    for p in psutil.process_iter(["pid", "username", "cmdline"]):
        try:
            if p.info["username"] != USER:
                continue
            cmd = " ".join(p.info["cmdline"] or [])
            if cmd.startswith("sshd"):
                continue
            out.append((p.info["pid"], cmd))
        except psutil.Error:
            continue
    return out


_SHARED: list[SshServer] = []


def shared_server(folder: Path | None = None) -> SshServer:
    """One server for the whole test process (the contract factories and the fixtures)."""
    if not _SHARED:
        import atexit
        import tempfile

        base = folder or Path(tempfile.mkdtemp(prefix="dagrun-sshd-"))
        server = start_sshd(base)
        atexit.register(shutil.rmtree, base, True)  # runs after stop (last registered, first run)
        atexit.register(server.stop)
        _SHARED.append(server)
    return _SHARED[0]
