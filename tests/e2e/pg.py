"""A throwaway PostgreSQL cluster for the end-to-end tests (the python twin of
scripts/lib.sh's start_postgres): Debian's `postgresql` package, run as the
`postgres` user (when we are root) on 127.0.0.1 with a free port, a temporary
data directory, trust authentication and fsync off. Nothing of the system's
own clusters is touched. The `postgres` session fixture of conftest.py gives
one to the tests; `create_database()` hands each server a database of its own.

If WHARF_TEST_POSTGRES_URL is already set (scripts/test starts a cluster and
exports it), that server is used instead of starting another."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

from support import free_port

URL_VAR = "WHARF_TEST_POSTGRES_URL"


def _bin_dir() -> Path:
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(Path(d).parent.name))
    if not dirs or not Path(dirs[-1], "initdb").exists():
        raise RuntimeError("no PostgreSQL server: install the Debian package postgresql (scripts/test does)")
    return Path(dirs[-1])


def psql_binary() -> str:
    found = shutil.which("psql")
    return found or str(_bin_dir() / "psql")


class Postgres:
    """A PostgreSQL server: `.url` (postgres://postgres@127.0.0.1:PORT/postgres),
    `.sql(text)`, `.create_database()` -> URL, `.create_role(name, password)`,
    `.drop_database(url)`, `.stop()`."""

    def __init__(self, url: str, data: Path | None = None, owner: str | None = None):
        self.url = url
        self._data = data  # set when we started the cluster ourselves
        self._owner = owner
        self._created: list[str] = []
        self._roles: list[str] = []
        self.ca_path: Path | None = None

    @classmethod
    def start(cls, tls: bool = False) -> "Postgres":
        """A new cluster. With `tls`, it also speaks TLS with a certificate for
        127.0.0.1 signed by a throwaway CA whose certificate is `.ca_path`."""
        bindir = _bin_dir()
        base = Path(tempfile.mkdtemp(prefix="wharf-pg-"))
        as_root = os.geteuid() == 0
        owner = "postgres" if as_root else None
        if as_root:
            pw = pwd.getpwnam("postgres")
            os.chown(base, pw.pw_uid, pw.pw_gid)
        data = base / "data"
        port = free_port()

        def as_owner(*cmd: str) -> None:
            full = ["runuser", "-u", "postgres", "--", *cmd] if as_root else list(cmd)
            proc = subprocess.run(full, capture_output=True, text=True, timeout=120)
            if proc.returncode != 0:
                raise RuntimeError(f"{' '.join(full)} failed:\n{proc.stdout}{proc.stderr}")

        as_owner(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                 "--locale=C.UTF-8", "--no-sync")  # fmt: skip
        options = (
            f"-c listen_addresses=127.0.0.1 -p {port} -k {base} -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=400"
        )
        ca_path = None
        if tls:
            ca_path = make_ca(base, "wharf-test-ca")
            cert, key = make_cert(base, ca_path, "server", "127.0.0.1")
            if as_root:
                os.chown(key, pw.pw_uid, pw.pw_gid)
            options += f" -c ssl=on -c ssl_cert_file={cert} -c ssl_key_file={key}"
        as_owner(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(base / "postgres.log"), "-w", "-t", "60",
                 "-o", options, "start")  # fmt: skip
        server = cls(f"postgres://postgres@127.0.0.1:{port}/postgres", data=data, owner=owner)
        server.ca_path = ca_path
        return server

    @classmethod
    def from_env_or_start(cls) -> "Postgres":
        url = os.environ.get(URL_VAR)
        return cls(url) if url else cls.start()

    def sql(self, text: str, database_url: str | None = None) -> str:
        proc = subprocess.run(
            [psql_binary(), database_url or self.url, "-v", "ON_ERROR_STOP=1", "-Atqc", text],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"psql {text!r}: {proc.stderr.strip()}")
        return proc.stdout

    def server_url(self) -> str:
        return self.url.rsplit("/", 1)[0]

    def create_database(self, prefix: str = "wharf_e2e") -> str:
        """A new, empty database; returns its URL."""
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        self.sql(f"CREATE DATABASE {name}")
        self._created.append(name)
        return f"{self.server_url()}/{name}"

    def create_role(self, name: str, password: str) -> None:
        """A login role with a password (dropped at the end, after the databases)."""
        self.sql(f"CREATE ROLE {name} LOGIN PASSWORD '{password}'")
        self._roles.append(name)

    def drop_database(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        self.sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def stop(self) -> None:
        for name in self._created:
            try:
                self.sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            except RuntimeError:
                pass
        self._created.clear()
        for role in self._roles:
            try:
                self.sql(f"DROP ROLE IF EXISTS {role}")
            except RuntimeError:
                pass
        self._roles.clear()
        if self._data is None:
            return
        cmd = [str(_bin_dir() / "pg_ctl"), "-D", str(self._data), "-m", "immediate", "-w", "stop"]
        if self._owner:
            cmd = ["runuser", "-u", self._owner, "--", *cmd]
        subprocess.run(cmd, capture_output=True, timeout=60)
        shutil.rmtree(self._data.parent, ignore_errors=True)
        self._data = None


def _openssl(*args: str) -> None:
    proc = subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)}: {proc.stderr.strip()}")


def make_ca(directory: Path, name: str) -> Path:
    """A self-signed P-256 CA (valid one day); returns its certificate's path."""
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", f"/CN={name}")  # fmt: skip
    return cert


def make_cert(directory: Path, ca: Path, name: str, ip: str) -> tuple[Path, Path]:
    """A certificate for `ip` signed by `ca` (whose key sits beside it); the key is 0600."""
    cert, key, csr = directory / f"{name}.crt", directory / f"{name}.key", directory / f"{name}.csr"
    ext = directory / f"{name}.ext"
    ext.write_text(f"subjectAltName=IP:{ip}\n")
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={ip}")  # fmt: skip
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca.with_suffix(".key")),
             "-CAcreateserial", "-out", str(cert), "-days", "1", "-extfile", str(ext))  # fmt: skip
    key.chmod(0o600)
    return cert, key
