"""Fixtures for the end-to-end tests: a real wharf-server process and offline test images."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from clients import Docker, Podman, TestImages
from support import AUTH_ENV, WharfServer, run, server_binary


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    # Keep each phase's report on the item so fixtures can tell whether the test failed.
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


def _failed(request) -> bool:
    return any(
        getattr(getattr(request.node, f"rep_{when}", None), "failed", False) for when in ("setup", "call")
    )


@pytest.fixture
def wharf(request, tmp_path):
    """A wharf-server on a free loopback port with a fresh data dir.

    Has .host ("127.0.0.1:PORT"), .docker_host ("localhost:PORT"), .url, .data_dir,
    .api() (a RegistryApi), .start(), .stop(), .restart(), .kill9().
    """
    binary = server_binary()
    if not binary.is_file():
        pytest.fail(f"wharf-server binary not found at {binary}: run `cargo build -p wharf-server`")
    server = WharfServer(binary, tmp_path / "data", tmp_path / "wharf-server.log")
    try:
        server.start()
        yield server
    finally:
        server.stop()
        if _failed(request):
            print(server.log_tail())
    panics = server.panics()
    assert not panics, "wharf-server panicked:\n" + "\n".join(panics) + "\n" + server.log_tail()


@pytest.fixture
def wharf_factory(request, tmp_path):
    """Makes wharf-servers (not started) with their own data dir, log and optional
    config file: make(name, env=..., config=TOML text). Afterwards: stops them,
    prints their logs if the test failed, and fails on a panic or on any password
    or secret the server handed out (see WharfServer.secrets) showing up in a log."""
    binary = server_binary()
    if not binary.is_file():
        pytest.fail(f"wharf-server binary not found at {binary}: run `cargo build -p wharf-server`")
    servers: list[WharfServer] = []

    def make(name: str = "wharf", env: dict | None = None, config: str | None = None) -> WharfServer:
        config_path = None
        if config is not None:
            config_path = tmp_path / f"{name}.toml"
            config_path.write_text(config)
        server = WharfServer(binary, tmp_path / name, tmp_path / f"{name}.log", env=env, config=config_path)
        servers.append(server)
        return server

    try:
        yield make
    finally:
        for server in servers:
            server.stop()
            if _failed(request):
                print(server.log_tail())
    problems = []
    for server in servers:
        panics = server.panics()
        if panics:
            problems.append(f"{server.log_path}: wharf-server panicked:\n" + "\n".join(panics))
        leaked = server.secrets_in_log()
        if leaked:
            problems.append(f"{server.log_path}: the log contains passwords/secrets: {leaked}")
    assert not problems, "\n".join(problems)


@pytest.fixture
def wharf_auth(wharf_factory):
    """A running wharf-server with auth on (WHARF_AUTH_ENABLED=true) and users made
    with the admin CLI before it started: `admin` (admin), `alice` (pull,push on
    team/*) and `bob` (pull on team/*). Passwords are in .users."""
    server = wharf_factory("wharf-auth", env=AUTH_ENV)
    server.add_user("admin", admin=True)
    server.add_user("alice")
    server.grant("alice", "team/*", "pull,push")
    server.add_user("bob")
    server.grant("bob", "team/*", "pull")
    server.start()
    return server


@pytest.fixture(scope="session")
def docker():
    cli = Docker()
    info = run([cli.binary, "info", "--format", "{{.ServerVersion}}"], check=False, timeout=60)
    if info.returncode != 0:
        pytest.fail(f"docker daemon not reachable with {cli.binary}: {info.stderr.strip()}")
    return cli


@pytest.fixture(scope="session")
def images(docker, tmp_path_factory):
    """The session's offline images (busybox, and a > 200 MB multi-layer one)."""
    built = TestImages(docker, tmp_path_factory.mktemp("images"))
    yield built
    built.remove_all()


@pytest.fixture
def docker_config(docker, tmp_path):
    """make(name) -> a Docker CLI with its own DOCKER_CONFIG dir, so a login is
    private to one user of one test."""

    def make(name: str) -> Docker:
        path = tmp_path / "docker-config" / name
        path.mkdir(parents=True, exist_ok=True)
        return docker.with_env(DOCKER_CONFIG=str(path))

    return make


@pytest.fixture
def docker_refs(docker):
    """Tags a local image under registry names; untags them all afterwards."""

    class Refs:
        def __init__(self):
            self.made: list[str] = []

        def tag(self, src: str, dst: str) -> str:
            docker("tag", src, dst)
            self.made.append(dst)
            return dst

        def track(self, ref: str) -> str:
            self.made.append(ref)
            return ref

    refs = Refs()
    yield refs
    for ref in refs.made:
        docker("rmi", ref, check=False)


@pytest.fixture
def podman():
    """Makes podman instances with private storage; removes it afterwards."""
    roots: list[Path] = []

    def make() -> Podman:
        roots.append(Path(tempfile.mkdtemp(prefix="wharf-podman-")))
        return Podman(roots[-1])

    yield make
    for root in roots:
        shutil.rmtree(root, ignore_errors=True)
