"""Fixtures for the end-to-end tests: a real wharf-server process and offline test images."""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

from clients import Docker, Podman, TestImages
from pg import Postgres
from runner_support import RunnerDaemon, busybox_image, runner_binary, unique_bridge, wait_no_leftovers
from support import AUTH_ENV, WharfServer, run, server_binary


# A test run started in the background by a non-interactive shell (`cmd &`)
# inherits SIGINT ignored, and so would every CLI the tests start: the ones
# that interrupt `stats` or `logs -f` with SIGINT, as a user's Ctrl-C does,
# would wait forever. Handling it here gives children the default again.
signal.signal(signal.SIGINT, signal.default_int_handler)


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
def postgres():
    """A PostgreSQL server for the session (pg.Postgres): a throwaway cluster
    started as the postgres user, or the one WHARF_TEST_POSTGRES_URL names.
    `.create_database()` gives each wharf-server a database of its own."""
    try:
        server = Postgres.from_env_or_start()
    except RuntimeError as exc:
        pytest.fail(f"cannot start PostgreSQL: {exc}")
    yield server
    server.stop()


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


# --------------------------------------------------------------------------- wharf-runner
#
# The runner tests share one wharf-server and one daemon per module (starting
# them per test would cost most of the time budget); every test still starts
# clean: the `runner` fixture removes every container afterwards and fails the
# test on anything left behind or on a panic in the daemon's log.

RUNNER_IMAGE = "e2e/busybox"  # short name: the daemon's default registry is the test server


class RunnerEnv:
    """What a runner test gets: `.daemon` (a RunnerDaemon; `.cli(...)` runs
    the client against it), `.wharf` (the registry it pulls from, a
    WharfServer), `.image` (the busybox image by short name, already pulled),
    `.push(repo, image, tag=...)` (an runner_support.Image through the registry
    API) and `.track(id)` (an id whose leftovers are checked afterwards even
    if the container is gone)."""

    def __init__(self, daemon: RunnerDaemon, wharf: WharfServer, api=None):
        self.daemon = daemon
        self.wharf = wharf
        self.api = api or wharf.api()
        self.image = RUNNER_IMAGE
        self.ids: set[str] = set()

    def cli(self, *args, **kwargs) -> subprocess.CompletedProcess:
        return self.daemon.cli(*args, **kwargs)

    def fmt(self, name: str, template: str) -> str:
        """`inspect -f TEMPLATE NAME`, stripped."""
        return self.daemon.fmt(name, template)

    def ref(self, repo: str, tag: str = "latest") -> str:
        """The full reference docker would print for a short name."""
        return f"{self.wharf.docker_host}/{repo}:{tag}"

    def push(self, repo: str, image, tag: str = "latest", docker: bool = False) -> str:
        return image.push(self.api, repo, tag, docker=docker)

    def track(self, cid: str) -> str:
        self.ids.add(cid)
        return cid


def _make_daemon(base: Path, default_registry: str, default_runtime: str | None = None) -> RunnerDaemon:
    binary = runner_binary()
    if not binary.is_file():
        pytest.fail(f"wharf-runner binary not found at {binary}: run `cargo build -p wharf-runner`")
    # A unix socket path must fit 108 bytes; pytest's tmp paths may not.
    sock_dir = Path(tempfile.mkdtemp(prefix="wr-", dir="/tmp"))
    base.mkdir(parents=True, exist_ok=True)
    bridge, subnet = unique_bridge()
    return RunnerDaemon(
        binary, base / "root", sock_dir / "runner.sock", base / "daemon.log", default_registry,
        default_runtime=default_runtime, bridge=bridge, bridge_subnet=subnet,
    )


def _cleanup_daemon(daemon: RunnerDaemon, ids: set[str], since: int) -> list[str]:
    """Removes every container (`rm -f`), then lists what is wrong: a dead
    daemon, a failed rm, leftovers of any container seen, panics in the log."""
    problems = []
    if not daemon.running:
        if daemon.proc is not None:
            problems.append(f"the daemon died (exit {daemon.proc.returncode})")
            try:
                daemon.start()  # for the tests after this one
            except AssertionError as exc:
                problems.append(f"and does not start again: {exc}")
    else:
        ps = daemon.cli("ps", "-a", "-q", "--no-trunc", check=False, timeout=30)
        if ps.returncode != 0:
            problems.append(f"ps -a failed: {ps.stderr.strip()}")
        listed = [line.strip() for line in ps.stdout.splitlines() if line.strip()]
        ids = ids | set(listed)
        for cid in listed:
            rm = daemon.cli("rm", "-f", cid, check=False, timeout=30)
            if rm.returncode != 0:
                problems.append(f"rm -f {cid} failed: {rm.stderr.strip()}")
    found = wait_no_leftovers(daemon, ids)
    problems += [f"left behind: {item}" for item in found]
    for line in found:
        # Do not leave mounts on the host for later tests (or for pytest's tmp cleanup).
        if line.startswith("mount "):
            subprocess.run(["umount", "-l", line.split()[1]], capture_output=True)
    problems += [f"daemon log: {line}" for line in daemon.panics(since)]
    return problems


@pytest.fixture(scope="module")
def runner_registry(tmp_path_factory):
    """A wharf-server (no auth) shared by a module's runner tests, with the
    busybox image pushed as `e2e/busybox` in docker's media types (as `docker
    push` sends it) and as `e2e/busybox-oci` in OCI ones."""
    binary = server_binary()
    if not binary.is_file():
        pytest.fail(f"wharf-server binary not found at {binary}: run `cargo build -p wharf-server`")
    base = tmp_path_factory.mktemp("runner-registry")
    server = WharfServer(binary, base / "data", base / "wharf-server.log")
    server.start()
    try:
        api = server.api()
        busybox_image().push(api, RUNNER_IMAGE, "latest", docker=True)
        busybox_image().push(api, RUNNER_IMAGE + "-oci", "latest")
        yield server
    finally:
        server.stop()
    panics = server.panics()
    assert not panics, "wharf-server panicked:\n" + "\n".join(panics) + "\n" + server.log_tail()


def _module_daemon(runner_registry, tmp_path_factory, runtime: str | None = None):
    daemon = _make_daemon(tmp_path_factory.mktemp("runner"), runner_registry.docker_host, runtime)
    try:
        daemon.start()
        daemon.cli("pull", RUNNER_IMAGE, timeout=120)
        yield daemon
    finally:
        if daemon.running:
            for cid in daemon.all_ids() if daemon.ping() else []:
                daemon.cli("rm", "-f", cid, check=False)
        daemon.stop()
        daemon.remove_bridge()
        shutil.rmtree(daemon.socket.parent, ignore_errors=True)


@pytest.fixture(scope="module")
def runner_daemon(runner_registry, tmp_path_factory):
    """One `wharf-runner daemon` for the module, default registry = the test
    server, the busybox image pulled; its default runtime is the built-in one."""
    yield from _module_daemon(runner_registry, tmp_path_factory)


@pytest.fixture(scope="module")
def runc_daemon(runner_registry, tmp_path_factory):
    """Like runner_daemon, with `--default-runtime runc` (Debian's runc)."""
    if shutil.which("runc") is None:
        pytest.fail("runc is not installed: scripts/test installs it")
    yield from _module_daemon(runner_registry, tmp_path_factory, "runc")


@pytest.fixture
def runner(request, runner_registry):
    """The module's daemon for one test (see RunnerEnv). Afterwards: `rm -f`
    of every container; the test fails on a container's leftover mount,
    cgroup, dir or process, on a dead daemon, and on `panicked` in the
    daemon's log; the test's part of the log is printed when it failed.
    Indirectly parametrized with "runc", the daemon runs containers with
    runc instead of the built-in runtime."""
    runtime = getattr(request, "param", "wharf")
    runner_daemon = request.getfixturevalue("runc_daemon" if runtime == "runc" else "runner_daemon")
    since = runner_daemon.log_size()
    env = RunnerEnv(runner_daemon, runner_registry)
    yield env
    problems = _cleanup_daemon(runner_daemon, env.ids, since)
    if _failed(request) or problems:
        print(runner_daemon.log_tail(since=since))
    assert not problems, "after the test:\n" + "\n".join(problems)


@pytest.fixture
def runner_factory(request, runner_registry, tmp_path):
    """make(registry=None) -> a RunnerEnv with a daemon of its own (started),
    for tests that stop, kill or log in with their daemon. `registry` (a
    WharfServer) defaults to the module's; the image is not pulled. Same
    cleanup and checks as `runner`."""
    envs: list[RunnerEnv] = []

    def make(registry: WharfServer | None = None, api=None) -> RunnerEnv:
        registry = registry or runner_registry
        daemon = _make_daemon(tmp_path / f"runner{len(envs)}", registry.docker_host)
        env = RunnerEnv(daemon, registry, api=api)
        try:
            daemon.start()
        except BaseException:
            shutil.rmtree(daemon.socket.parent, ignore_errors=True)
            raise
        envs.append(env)
        return env

    yield make
    problems = []
    for env in envs:
        daemon = env.daemon
        if daemon.proc is None:
            continue
        problems += _cleanup_daemon(daemon, env.ids, 0)
        try:
            daemon.stop()
        except AssertionError as exc:
            problems.append(str(exc).splitlines()[0])
        problems += [f"left behind after the daemon stopped: {x}" for x in wait_no_leftovers(daemon, env.ids, 2)]
        daemon.remove_bridge()
        if _failed(request) or problems:
            print(daemon.log_tail())
        shutil.rmtree(daemon.socket.parent, ignore_errors=True)
    assert not problems, "after the test:\n" + "\n".join(problems)
