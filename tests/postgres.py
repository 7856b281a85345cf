"""A throwaway PostgreSQL server for the store's tests and benchmark.

``PostgresServer`` runs Debian's server binaries (``/usr/lib/postgresql/*/bin``): ``initdb`` into a
fresh temporary folder, then ``pg_ctl start`` listening on 127.0.0.1 only, on a free port, with its
unix socket inside that folder. PostgreSQL refuses to run as root, so under root the server runs as
the ``postgres`` system user (``runuser``) and the folder belongs to it. The superuser ``postgres``
has a random password. ``stop()`` shuts the server down and removes the folder.

The pytest fixtures: ``postgres_server`` (one server for the session) and ``postgres_url`` (the
URL of a database emptied before each test: its connections closed, its public schema dropped and
created again).
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from tests.servers import Running, free_port

INSTALL_HINT = (
    "scripts/test installs them (apt-get install postgresql); "
    "by hand: sudo apt-get install postgresql"
)
DEBIAN_ROOT = Path("/usr/lib/postgresql")
SUPERUSER = "postgres"
RUN_AS = "postgres"  # the system user the server runs as when we are root


class PostgresMissing(RuntimeError):
    """Debian's PostgreSQL server binaries are not installed."""


class PostgresFailed(RuntimeError):
    """The server could not be set up or started; the message carries its log."""


def find_bin_dir(root: Path = DEBIAN_ROOT) -> Path:
    """The newest ``/usr/lib/postgresql/<version>/bin`` that has initdb, pg_ctl and postgres."""
    found = [
        path for path in root.glob("*/bin")
        if all((path / name).is_file() for name in ("initdb", "pg_ctl", "postgres"))
    ]
    if not found:
        raise PostgresMissing(
            "PostgreSQL's server binaries are missing (no initdb, pg_ctl and postgres under "
            f"{root}/*/bin): {INSTALL_HINT}."
        )
    return max(found, key=lambda path: _version_key(path.parent.name))


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", name))


class PostgresServer(Running):
    """One PostgreSQL server in a temporary folder, for as long as the ``with`` block lasts."""

    def __init__(self, settings: dict[str, str] | None = None) -> None:
        self.settings = settings or {}
        self.bin_dir = find_bin_dir()
        self.password = secrets.token_hex(16)
        self.port = 0
        self.root: Path | None = None
        self._prefix: list[str] = []

    @property
    def version(self) -> str:
        return subprocess.run(
            [str(self.bin_dir / "postgres"), "--version"], capture_output=True, text=True,
            check=True,
        ).stdout.strip()

    def url(self, database: str = "postgres") -> str:
        """A SQLAlchemy URL (psycopg 3) for ``database`` on this server."""
        return (
            f"postgresql+psycopg://{SUPERUSER}:{self.password}@127.0.0.1:{self.port}/{database}"
        )

    def start(self) -> PostgresServer:
        self.root = Path(tempfile.mkdtemp(prefix="store-postgres-"))
        try:
            self._init_cluster()
            self._start_server()
        except BaseException:
            self._remove_root()
            raise
        return self

    def stop(self) -> None:
        if self.root is None:
            return
        if (self._data / "postmaster.pid").exists():
            self._run("pg_ctl", "stop", "-D", str(self._data), "-m", "fast", "-w", "-t", "60")
        self._remove_root()

    def pid(self) -> int:
        """The server's main process (its backends are its children)."""
        return int((self._data / "postmaster.pid").read_text().split()[0])

    def create_database(self, name: str) -> str:
        """Create an empty database and return its URL."""
        with self._admin() as connection:
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop a database, closing any connection still open to it."""
        with self._admin() as connection:
            connection.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    def empty_database(self, name: str) -> None:
        """Close the connections to a database and drop everything in it (its public schema)."""
        with self._admin() as connection:
            connection.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()", (name,),
            )
        with self._admin(name) as connection:
            connection.execute("DROP SCHEMA IF EXISTS public CASCADE")
            connection.execute("CREATE SCHEMA public")

    # -- setting up ------------------------------------------------------------------------

    @property
    def _data(self) -> Path:
        assert self.root is not None
        return self.root / "data"

    @property
    def _log(self) -> Path:
        assert self.root is not None
        return self.root / "server.log"

    def _init_cluster(self) -> None:
        assert self.root is not None
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam(RUN_AS)
            except KeyError:
                raise PostgresMissing(
                    f"there is no '{RUN_AS}' system user to run PostgreSQL as (it refuses root): "
                    f"{INSTALL_HINT}."
                ) from None
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
            self._prefix = ["runuser", "-u", RUN_AS, "--"]
        password_file = self.root / "password"
        password_file.write_text(self.password + "\n")
        if self._prefix:
            shutil.chown(password_file, RUN_AS)
        self._run(
            "initdb", "-D", str(self._data), "--username", SUPERUSER,
            "--pwfile", str(password_file), "--auth", "scram-sha-256",
            "--encoding", "UTF8", "--locale", "C", "--no-sync",
        )
        password_file.unlink()

    def _start_server(self) -> None:
        assert self.root is not None
        settings = {
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(self.root),
            **self.settings,
        }
        for attempt in range(3):  # a free port can be taken between finding and binding it
            self.port = free_port()
            options = " ".join(
                f"-c {key}={value}" for key, value in {**settings, "port": self.port}.items()
            )
            try:
                self._run(
                    "pg_ctl", "start", "-D", str(self._data), "-l", str(self._log), "-w",
                    "-t", "60", "-o", options,
                )
                return
            except PostgresFailed:
                if attempt == 2 or "already in use" not in self._read_log():
                    raise

    def _run(self, program: str, *args: str) -> None:
        command = [*self._prefix, str(self.bin_dir / program), *args]
        result = subprocess.run(
            command, cwd=self.root, capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise PostgresFailed(
                f"{program} failed ({result.returncode}): {result.stdout}{result.stderr}"
                f"\n-- server log:\n{self._read_log()}"
            )

    def _read_log(self) -> str:
        try:
            return self._log.read_text(errors="replace")[-4000:]
        except OSError:
            return "(none)"

    def _admin(self, database: str = "postgres") -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(
            host="127.0.0.1", port=self.port, user=SUPERUSER, password=self.password,
            dbname=database, autocommit=True,
        )

    def _remove_root(self) -> None:
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None


# -- pytest fixtures (exposed through tests/conftest.py) -------------------------------------

TEST_DATABASE = "store_tests"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the whole session; fails (never skips) when missing."""
    problem = ""
    try:
        server = PostgresServer().start()
        server.create_database(TEST_DATABASE)
    except (PostgresMissing, PostgresFailed) as error:
        problem = str(error)
    if problem:
        pytest.fail(f"cannot start PostgreSQL for the tests: {problem}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """A SQLAlchemy URL of an empty database: emptied before each test that asks for it."""
    postgres_server.empty_database(TEST_DATABASE)
    return postgres_server.url(TEST_DATABASE)
