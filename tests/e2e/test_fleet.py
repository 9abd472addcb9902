"""Fleet (issue #7): runner nodes on a LAN join the server, report their
state, and run what the server deploys to them.

Every test builds a small LAN (fleet_support.Lan): a wharf-server over TLS
with auth in one network namespace, runner daemons in others, joined by a
Linux bridge; they talk over the bridge addresses only. The admin CLI runs
in the server's namespace too."""

from __future__ import annotations

import os
import selectors
import shutil
import subprocess
import time

import pytest
import requests

from fleet_support import TTL, Fleet, Lan, containers, node_json
from runner_support import busybox_image, file_entry, make_layer, output, unique, wait_for
from support import run


@pytest.fixture
def lan():
    net = Lan(["server", "n1", "n2", "n3"])
    try:
        yield net
    finally:
        net.close()


@pytest.fixture
def fleet(lan, tmp_path):
    f = Fleet(lan, tmp_path)
    try:
        yield f
    finally:
        f.close()
        assert f.server.panics() == [], f.server.log_tail()
        assert f.server.secrets_in_log() == [], "secrets in the server log"
        for d in f.runners.values():
            text = d.log_text()
            leaked = [s for s in f.server.secrets if s in text]
            assert not leaked, f"secrets in {d.log_path}"


_followed: dict[int, list[str]] = {}


def follow_lines(proc: subprocess.Popen) -> list[str]:
    """The lines a running `logs -f` printed so far (read without blocking)."""
    lines = _followed.setdefault(proc.pid, [])
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    while sel.select(timeout=0.2):
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
    sel.close()
    return lines


def ticks_by_replica(proc: subprocess.Popen) -> set[str]:
    """Replicas that printed a `tick` line into a `logs -f` stream."""
    return {line.split()[0] for line in _followed.get(proc.pid, []) if "tick" in line}


def test_nodes_join_run_a_deployment_and_survive_a_node_loss(fleet):
    repo = unique("fleet/busybox")
    fleet.push_busybox(repo)
    token = fleet.token("--ttl", "10m", "--pull", "fleet/*")
    n1 = fleet.runner("n1", "--token", token, "--node-name", "n1", "--label", "zone=a")
    n2 = fleet.runner("n2", "--token", fleet.token("--pull", "fleet/*"), "--node-name", "n2", "--label", "zone=b")
    n1.start()
    n2.start()

    # Joined: name, addresses on the LAN, resources, labels; ready.
    nodes = wait_for(lambda: n if len(n := fleet.nodes()) == 2 else None, 20, "two nodes")
    for name, member, zone in (("n1", "n1", "a"), ("n2", "n2", "b")):
        node = nodes[name]
        assert node["status"] == "ready", node
        assert fleet.lan.address(member) in node["facts"]["addresses"], node
        assert node["facts"]["labels"] == {"zone": zone}, node
        assert node["facts"]["cpus"] >= 1 and node["facts"]["memory_bytes"] > 0, node
        assert node_json(fleet.runners[member])["name"] == name

    # A deployment of 2 replicas lands on both nodes and runs.
    script = 'echo "hello from $(hostname)"; i=0; while :; do i=$((i+1)); echo "tick $i"; sleep 1; done'
    fleet.admin("deploy", f"{fleet.server.host}/{repo}:1", "--name", "web", "--replicas", "2", "--", "sh", "-c", script)
    placed = wait_for(lambda: r if len(r := fleet.running("web")) == 2 else None, 60, "2 running replicas")
    assert sorted(placed.values()) == ["n1", "n2"], placed
    for replica, node in placed.items():
        assert containers(fleet.runners[node]) == {replica: "running"}

    # Logs come back through the server, from both nodes.
    logs = fleet.admin("deployments", "logs", "web").stdout
    assert logs.count("hello from") == 2, logs

    # `ls` shows it; `logs -f` keeps delivering new lines from both replicas.
    ls = fleet.admin("deployments", "ls").stdout
    assert "web" in ls and "running" in ls, ls
    follow = fleet.admin_popen("deployments", "logs", "web", "-f", "--tail", "0")
    try:
        def both_ticking() -> bool:
            follow_lines(follow)
            return ticks_by_replica(follow) >= set(placed)

        wait_for(both_ticking, 20, "new lines from both replicas")
    finally:
        follow.terminate()
        follow.wait(10)

    # A server outage: the containers keep running on the nodes; when the
    # server is back everything reconciles, without duplicates.
    fleet.server.stop()
    time.sleep(2)
    for replica, node in placed.items():
        assert containers(fleet.runners[node]) == {replica: "running"}
    fleet.server.start()
    wait_for(lambda: all(n["status"] == "ready" for n in fleet.nodes().values()), 20, "nodes ready after the outage")
    assert fleet.running("web") == placed
    for replica, node in placed.items():
        assert containers(fleet.runners[node]) == {replica: "running"}

    # A runner restart (graceful) leaves its container running and reconciles.
    n1.stop()
    n1.start()
    wait_for(lambda: fleet.nodes()["n1"]["status"] == "ready", 20, "n1 ready after its restart")
    assert fleet.running("web") == placed
    n1_replica = next(r for r, n in placed.items() if n == "n1")
    assert containers(n1) == {n1_replica: "running"}

    # Killing n2's runner: n2 is down within the TTL, its replica moves to n1.
    moved_from = next(r for r, n in placed.items() if n == "n2")
    n2.kill9()
    t0 = time.monotonic()
    wait_for(lambda: fleet.nodes()["n2"]["status"] == "down", TTL + 5, "n2 marked down")
    assert time.monotonic() - t0 < TTL + 5
    wait_for(lambda: fleet.running("web").get(moved_from) == "n1", 60, f"{moved_from} running on n1")
    assert containers(n1) == {r: "running" for r in placed}
    events = " ".join(e["message"] for e in fleet.deployment("web")["events"])
    assert "n2" in events and "down" in events, events

    # n2 comes back: ready again, and its stale copy is stopped (no duplicates).
    n2.start()
    wait_for(lambda: fleet.nodes()["n2"]["status"] == "ready", 20, "n2 ready again")
    wait_for(lambda: n2.cli("ps", "-aq").stdout.strip() == "", 30, "n2's stale replica removed")
    assert sorted(fleet.running("web").values()) == ["n1", "n1"]

    # A revoked node is refused.
    creds = node_json(n2)
    fleet.admin("node", "remove", "n2")
    assert "n2" not in fleet.nodes()
    resp = fleet.lan.call(
        "n2", requests.post, f"{fleet.server.url}/api/v1/node/heartbeat",
        auth=(creds["name"], creds["secret"]), json={}, verify=str(fleet.server.ca), timeout=10,
    )
    assert resp.status_code == 401, resp.text

    fleet.admin("deployments", "rm", "web")
    wait_for(lambda: n1.cli("ps", "-aq").stdout.strip() == "", 30, "web's containers removed from n1")


def test_bad_tokens_and_names_are_refused_with_a_clear_line(fleet):
    good = fleet.token()
    a = fleet.runner("n1", "--token", good, "--node-name", "alpha")
    a.start()
    wait_for(lambda: "alpha" in fleet.nodes(), 20, "alpha joined")

    def join_fails(member: str, token: str, name: str, needle: str, trusted: bool = True) -> None:
        d = fleet.runner(member, "--token", token, "--node-name", name)
        if not trusted:
            shutil.rmtree(d.root / "certs.d")
        proc = run([*d.command()], check=False, timeout=60)
        fleet.runners.pop(member)
        assert proc.returncode != 0, output(proc)
        assert needle in (proc.stderr + proc.stdout).lower(), output(proc)
        assert not (d.root / "node.json").exists()

    join_fails("n2", good, "beta", "used")  # a token joins one node
    join_fails("n2", fleet.token(), "alpha", "taken")
    short = fleet.token("--ttl", "1s")
    time.sleep(2)
    join_fails("n3", short, "gamma", "expired")
    # The node checks the server's certificate: a CA it does not trust, no join.
    join_fails("n3", fleet.token(), "delta", "certificate", trusted=False)
    assert sorted(fleet.nodes()) == ["alpha"]


def test_a_selector_without_a_match_and_a_denied_image_say_why(fleet):
    repo = unique("fleet/busybox")
    private = unique("private/busybox")
    fleet.push_busybox(repo)
    fleet.push_busybox(private)
    d = fleet.runner("n1", "--token", fleet.token("--pull", "fleet/*"), "--node-name", "n1", "--label", "zone=a")
    d.start()
    wait_for(lambda: "n1" in fleet.nodes(), 20, "n1 joined")

    fleet.admin("deploy", f"{fleet.server.host}/{repo}:1", "--name", "nowhere", "--selector", "zone=b")
    dep = wait_for(lambda: x if (x := fleet.deployment("nowhere"))["events"] else None, 20, "an event")
    assert dep["status"] == "pending", dep
    assert "zone=b" in " ".join(e["message"] for e in dep["events"]), dep

    fleet.admin("deploy", f"{fleet.server.host}/{private}:1", "--name", "denied", "--", "sleep", "60")
    failed = wait_for(
        lambda: [r for r in fleet.deployment("denied")["replicas"] if r["state"] == "failed"], 60, "a failed replica"
    )
    assert failed[0]["reason"], failed
    assert "denied" in failed[0]["reason"].lower() or "not found" in failed[0]["reason"].lower(), failed
    assert d.cli("ps", "-aq").stdout.strip() == ""


def test_a_node_that_disappears_mid_pull_loses_its_replica_cleanly(fleet):
    """The node pulling a replica's image dies in the middle of the pull: the
    replica goes to the other node after the TTL; the dead node, back, runs
    nothing of it and keeps no partial layer."""
    repo = unique("fleet/big")
    big = make_layer([file_entry("big", os.urandom(24 << 20))], compresslevel=1)
    api = fleet.server.api_in("server", "admin").authorize(f"repository:{repo}:pull,push")
    busybox_image(big).push(api, repo, "1")
    nodes = {}
    for m in ("n1", "n2"):
        nodes[m] = fleet.runner(m, "--token", fleet.token("--pull", "fleet/*"), "--node-name", m)
        nodes[m].start()
        # 20 Mbit/s on each node's link: the 24 MiB layer takes about 10 s.
        fleet.lan.shape(m, "20mbit")
    wait_for(lambda: len(fleet.nodes()) == 2, 20, "two nodes")

    fleet.admin("deploy", f"{fleet.server.host}/{repo}:1", "--name", "big", "--", "sleep", "600")

    def pulling() -> str | None:
        r = fleet.deployment("big")["replicas"][0]
        return r["node"] if r["state"] == "pulling" else None

    victim = wait_for(pulling, 20, "the replica pulling on a node")
    other = "n2" if victim == "n1" else "n1"
    nodes[victim].kill9()
    fleet.lan.shape(other, None)
    wait_for(lambda: fleet.running("big") == {"big.0": other}, TTL + 60, f"big.0 running on {other}")
    assert fleet.nodes()[victim]["status"] == "down"

    nodes[victim].start()
    wait_for(lambda: fleet.nodes()[victim]["status"] == "ready", 20, f"{victim} ready again")
    time.sleep(2)  # a reconcile pass or two
    assert containers(nodes[victim]) == {}
    assert list((nodes[victim].root / "tmp").iterdir()) == [], "a partial layer survived"
    assert fleet.running("big") == {"big.0": other}
