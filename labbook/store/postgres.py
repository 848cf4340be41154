"""A PostgreSQL cluster in a directory, for a team store tried on one machine (``labbook server
--local-postgres DIR``) and for the tests: Debian's binaries (``apt install postgresql``), initialised once,
listening on 127.0.0.1 only, with trust authentication for local connections.

``initdb`` and ``pg_ctl`` refuse to run as root, so as root they run as the ``postgres`` user that the Debian
package creates, on a directory that user owns; as any other user they run as that user.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

from labbook.errors import UserError


def binaries() -> Path | None:
    """The newest installed PostgreSQL's ``bin`` directory (Debian keeps them out of PATH)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    if found:
        return found[-1].parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """A cluster whose data lives in ``directory/data``; its socket and log beside it."""

    def __init__(self, directory: Path, port: int) -> None:
        bindir = binaries()
        if bindir is None:
            raise UserError("PostgreSQL is not installed here: apt-get install postgresql (Debian's package; "
                            "its initdb and pg_ctl start a local cluster)")
        self.bindir, self.directory, self.port = bindir, Path(directory).resolve(), port
        self.data = self.directory / "data"
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}"

    def _run(self, *command: str) -> None:
        # A session of its own: a terminal's Ctrl-C reaches the command that runs the cluster, which stops it
        # in order, never a pg_ctl half-way through starting it.
        done = subprocess.run([*self._as, *command], capture_output=True, text=True, timeout=120,
                              start_new_session=True)
        if done.returncode != 0:
            last = (done.stderr or done.stdout).strip().splitlines()
            raise UserError(f"{Path(command[0]).name} failed: {last[-1] if last else done.returncode}")

    def start(self) -> "Cluster":
        """Initialise the cluster if ``directory`` holds none, then start it."""
        self.directory.mkdir(parents=True, exist_ok=True)
        if self._as:
            shutil.chown(self.directory, "postgres", "postgres")
            reach = subprocess.run([*self._as, "test", "-w", str(self.directory)], capture_output=True)
            if reach.returncode != 0:
                raise UserError(f"--local-postgres {self.directory}: the postgres user (PostgreSQL refuses to run "
                                "as root) cannot reach it, as a folder above it is private; choose one it can "
                                "reach, such as a new folder under /tmp or /srv")
        os.chmod(self.directory, 0o700)
        if not (self.data / "PG_VERSION").exists():
            self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust",
                      "--no-sync", "-E", "UTF8")
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.directory} -c max_connections=200")
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.directory / "postgres.log"),
                  "-o", options, "-w", "start")
        return self

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "stop")

    def database(self, name: str) -> str:
        """The URL of database ``name``, created if it does not exist."""
        import psycopg

        with psycopg.connect(f"{self.url}/postgres", autocommit=True) as con:
            if con.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
                con.execute(f'CREATE DATABASE "{name}"')
        return f"{self.url}/{name}"


@contextlib.contextmanager
def cluster() -> Iterator[Cluster]:
    """A throw-away cluster in a fresh temporary directory (the tests'), removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="labbook-pg-"))
    running = Cluster(root, free_port()).start()
    try:
        yield running
    finally:
        running.stop()
        shutil.rmtree(root, ignore_errors=True)
