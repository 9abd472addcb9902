"""Fleet (issue #7): runner nodes on a LAN join the server, report their
state, and run what the server deploys to them.

Every test here builds a small LAN (fleet_support.Lan): a wharf-server over
TLS in one network namespace, runner daemons in others, all joined by a
Linux bridge; they talk over the bridge addresses only."""

from __future__ import annotations

import pytest

from pathlib import Path

from fleet_support import Lan, NsRunnerDaemon, NsServer
from runner_support import busybox_image, free_unix_socket_path, runner_binary, unique
from support import AUTH_ENV, server_binary


@pytest.fixture
def lan():
    net = Lan(["server", "n1", "n2"])
    try:
        yield net
    finally:
        net.close()


@pytest.fixture
def server(lan, tmp_path):
    srv = NsServer(lan, "server", server_binary(), tmp_path / "server", tmp_path / "server.log", env=AUTH_ENV)
    srv.add_user("admin", admin=True)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()
        assert srv.panics() == [], srv.log_tail()
        assert srv.secrets_in_log() == [], "secrets in the server log"


def runner(lan, server, member: str, tmp_path: Path, join: list[str] | None = None) -> NsRunnerDaemon:
    root = tmp_path / f"runner-{member}"
    d = NsRunnerDaemon(
        lan, member, runner_binary(), root, Path(free_unix_socket_path()), tmp_path / f"runner-{member}.log",
        server.host, join=join,
    )
    root.mkdir(parents=True, exist_ok=True)
    server.trust(root)
    return d


def test_the_lan_carries_a_tls_pull_from_the_server_to_a_runner(lan, server, tmp_path):
    """The harness itself: a runner in n1 pulls over TLS from the server in
    `server`'s namespace, on the bridge, and runs the image."""
    image = busybox_image()
    repo = unique("fleet/smoke")
    image.push(server.api_in("n1", "admin").authorize(f"repository:{repo}:pull,push"), repo, "1")
    d = runner(lan, server, "n1", tmp_path)
    d.start()
    try:
        d.cli("login", "-u", "admin", "--password-stdin", server.host, input=server.users["admin"] + "\n")
        out = d.cli("run", "--rm", f"{server.host}/{repo}:1", "echo", "over the bridge").stdout
        assert out == "over the bridge\n"
    finally:
        d.stop()
