"""A throwaway PostgreSQL server for tests: Debian's `postgresql` binaries, `initdb` into a temporary
folder as an unprivileged user (root cannot run postgres: as root, the `postgres` system user or a new
`ftplan-pg` one, via runuser), trust authentication on 127.0.0.1 and a free port, removed at the end."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path


def pg_bin() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(dirs[-1]).parent if dirs else None


def _user() -> str | None:
    """The user the server runs as (None: this process's own, when it is not root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "ftplan-pg"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "ftplan-pg"],
                   check=True, capture_output=True)
    return "ftplan-pg"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class PgServer:
    bin_dir: Path
    data: Path
    sock_dir: Path
    port: int
    user: str | None

    @property
    def url(self) -> str:
        return f"postgresql://ftplan@127.0.0.1:{self.port}/tune"

    def _run(self, *cmd: str, timeout: float = 120) -> subprocess.CompletedProcess:
        argv = [str(self.bin_dir / cmd[0]), *cmd[1:]]
        if self.user is not None:
            argv = ["runuser", "-u", self.user, "--", *argv]
        return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=timeout)

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.data / "server.log"), "-w", "-t", "120", "-o",
                  f"-p {self.port} -k {self.sock_dir} -c listen_addresses=127.0.0.1 -c fsync=off", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")


@contextmanager
def postgres() -> Iterator[PgServer]:
    bin_dir = pg_bin()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL server binaries not found (apt-get install postgresql)")
    user = _user()
    root = Path(tempfile.mkdtemp(prefix="ftplan-pg-"))
    os.chmod(root, 0o755)
    data, sock_dir = root / "data", root / "sock"
    sock_dir.mkdir()
    if user is not None:
        info = pwd.getpwnam(user)
        os.chown(root, info.pw_uid, info.pw_gid)
        os.chown(sock_dir, info.pw_uid, info.pw_gid)
    server = PgServer(bin_dir=bin_dir, data=data, sock_dir=sock_dir, port=free_port(), user=user)
    try:
        server._run("initdb", "-D", str(data), "-U", "ftplan", "--auth=trust", "--no-sync", "-E", "UTF8")
        server.start()
        server._run("createdb", "-h", "127.0.0.1", "-p", str(server.port), "-U", "ftplan", "tune")
        yield server
    finally:
        if (data / "postmaster.pid").exists():
            with suppress(subprocess.SubprocessError):
                server.stop()
        shutil.rmtree(root, ignore_errors=True)
