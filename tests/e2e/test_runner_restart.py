"""Restart policies (`--restart`) and `restart`, end to end: a real daemon
restarting real containers, across a daemon restart and a simulated host
reboot, under both runtimes where the runtime matters.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from runner_support import output, wait_for
from test_runner import BOTH_RUNTIMES, error_lines, ps_row, run_detached, unique


def state(runner, cid: str) -> dict:
    info = runner.daemon.inspect(cid)
    return {"count": info["RestartCount"], **info["State"]}


def wait_state(runner, cid: str, pred, timeout: float = 30, what: str = "") -> dict:
    seen: list[dict] = []

    def check() -> dict | None:
        seen[:] = [state(runner, cid)]
        return seen[0] if pred(seen[0]) else None

    try:
        return wait_for(check, timeout, what, interval=0.05)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last state: {seen}") from None


def pid_alive(pid: int) -> bool:
    return pid > 0 and Path(f"/proc/{pid}").exists()


@BOTH_RUNTIMES
def test_on_failure_retries_up_to_its_limit(runner):
    cid = run_detached(runner, "--restart", "on-failure:3", "--", "sh", "-c", "echo ran; exit 3")
    st = wait_state(runner, cid, lambda s: s["count"] == 3 and s["Status"] == "exited", what="retried 3 times")
    # Let a fourth restart (which must not come) have its chance: back-off is 800 ms.
    time.sleep(1.5)
    st = state(runner, cid)
    assert st["count"] == 3 and st["Status"] == "exited" and st["ExitCode"] == 3, st
    assert runner.cli("logs", cid).stdout == "ran\n" * 4
    info = runner.daemon.inspect(cid)
    assert info["HostConfig"]["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 3}


def test_on_failure_does_not_restart_a_success(runner):
    cid = run_detached(runner, "--restart", "on-failure", "--", "true")
    assert runner.cli("wait", cid).stdout == "0\n"
    time.sleep(1.0)
    st = state(runner, cid)
    assert st["count"] == 0 and st["Status"] == "exited", st


def test_no_policy_is_the_default(runner):
    cid = run_detached(runner, "sh", "-c", "exit 1")
    assert runner.cli("wait", cid).stdout == "1\n"
    time.sleep(1.0)
    assert state(runner, cid)["count"] == 0
    assert runner.daemon.inspect(cid)["HostConfig"]["RestartPolicy"] == {"Name": "no", "MaximumRetryCount": 0}


@BOTH_RUNTIMES
def test_always_restarts_until_stopped_by_hand(runner):
    cid = run_detached(runner, "--restart", "always", "--", "sh", "-c", "echo up; sleep 0.2")
    wait_state(runner, cid, lambda s: s["count"] >= 3, what="restarted 3 times")
    assert runner.cli("stop", "-t", "1", cid).stdout.strip() == cid
    st = state(runner, cid)
    assert st["Status"] == "exited" and not st["Restarting"], st
    count = st["count"]
    time.sleep(2.0)
    st = state(runner, cid)
    assert st["Status"] == "exited" and st["count"] == count, f"restarted after a stop by hand: {st}"
    # A start by hand starts counting again.
    runner.cli("start", cid)
    wait_state(runner, cid, lambda s: s["count"] >= 1, what="restarted after the start by hand")
    runner.cli("rm", "-f", cid)


@BOTH_RUNTIMES
def test_unless_stopped_comes_back_after_its_process_is_killed(runner):
    cid = run_detached(runner, "--restart", "unless-stopped", "--", "sleep", "300")
    first = state(runner, cid)["Pid"]
    assert pid_alive(first)
    os.kill(first, signal.SIGKILL)  # from outside, not `wharf-runner kill`
    st = wait_state(
        runner, cid, lambda s: s["Running"] and s["Pid"] not in (0, first) and s["count"] == 1, what="came back"
    )
    assert pid_alive(st["Pid"])
    row = ps_row(runner, cid)
    assert row is not None and row["STATUS"].startswith("Up "), row
    # `kill` (SIGKILL, by hand) leaves it stopped.
    runner.cli("kill", cid)
    assert runner.cli("wait", cid).stdout == "137\n"
    time.sleep(1.0)
    assert state(runner, cid)["Status"] == "exited"


def test_a_restarting_container_shows_it_and_needs_force_to_go(runner):
    cid = run_detached(runner, "--restart", "always", "--", "sh", "-c", "exit 4")
    # Back-off doubles from 100 ms: after 6 restarts it waits 6.4 s.
    st = wait_state(runner, cid, lambda s: s["count"] >= 6 and s["Restarting"], timeout=60, what="restarting")
    assert st["Status"] == "restarting" and st["Running"] is False, st
    row = ps_row(runner, cid, "-a")
    assert row["STATUS"].startswith("Restarting (4) "), row
    killed = runner.cli("kill", cid, check=False)
    assert killed.returncode == 1 and "is restarting, wait until the container is running" in killed.stderr
    proc = runner.cli("rm", cid, check=False)
    assert proc.returncode == 1, output(proc)
    assert error_lines(proc) == [
        f"Error response from daemon: You cannot remove a restarting container {cid}. "
        "Stop the container before attempting removal or force remove"
    ], output(proc)
    assert runner.cli("rm", "-f", cid).stdout.strip() == cid
    assert ps_row(runner, cid, "-a") is None


def test_stop_cancels_a_pending_restart(runner):
    cid = run_detached(runner, "--restart", "always", "--", "sh", "-c", "exit 4")
    wait_state(runner, cid, lambda s: s["count"] >= 5 and s["Restarting"], timeout=60, what="restarting")
    assert runner.cli("stop", cid).stdout.strip() == cid
    count = state(runner, cid)["count"]
    time.sleep(4.0)
    st = state(runner, cid)
    assert st["Status"] == "exited" and st["count"] == count and not st["Restarting"], st


def test_restart_command_gives_a_new_process(runner):
    name = unique("rs")
    cid = run_detached(runner, "--name", name, "--", "sleep", "300")
    first = state(runner, cid)["Pid"]
    assert runner.cli("restart", "-t", "1", name).stdout == f"{name}\n"
    st = state(runner, cid)
    assert st["Running"] and st["Pid"] not in (0, first) and not pid_alive(first), st
    # ...and of a stopped one: it just starts.
    runner.cli("stop", "-t", "1", cid)
    runner.cli("restart", cid)
    assert state(runner, cid)["Running"]


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--restart", "bogus"], "invalid restart policy: unknown policy 'bogus'"),
        (["--restart", "always:3"], "maximum retry count can only be used with 'on-failure'"),
        (["--restart", "on-failure:-1"], "maximum retry count cannot be negative"),
        (["--restart", "on-failure:x"], "maximum retry count must be an integer"),
        (["--restart", "always", "--rm"], "Conflicting options: cannot specify both --restart and --rm"),
    ],
)
def test_bad_policies_are_refused(runner, flags, message):
    before = runner.daemon.all_ids()
    proc = runner.cli("run", "-d", *flags, runner.image, "true", check=False)
    assert proc.returncode == 125, output(proc)
    assert any(message in line for line in error_lines(proc)), output(proc)
    assert runner.daemon.all_ids() == before, "a refused run left a container"


def _simulate_reboot(daemon, pids: list[int]) -> None:
    """The daemon dies with the host: kill -9 it, every shim and container
    process, and take the rootfs mounts away, as a reboot would."""
    daemon.kill9()
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    root = daemon.root / "containers"
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mnt = line.split()[4]
        if mnt.startswith(str(root)):
            subprocess.run(["umount", "-l", mnt], check=False)


def test_policies_across_a_daemon_restart_and_a_reboot(runner_factory):
    env = runner_factory()
    daemon = env.daemon
    env.cli("pull", env.image, timeout=120)

    def run(policy: str) -> str:
        return run_detached(env, "--restart", policy, "--", "sleep", "300")

    always = run("always")
    unless = run("unless-stopped")
    always_stopped = run("always")
    unless_stopped = run("unless-stopped")
    plain = run("no")
    for cid in (always_stopped, unless_stopped):
        env.cli("stop", "-t", "1", cid)

    # A daemon restart: the running ones are still the same processes.
    pids = {cid: state(env, cid)["Pid"] for cid in (always, unless, plain)}
    assert daemon.stop() == 0, daemon.log_tail()
    daemon.start()
    for cid, pid in pids.items():
        st = state(env, cid)
        assert st["Running"] and st["Pid"] == pid, (cid, st)
    # `always` comes back even after a stop by hand; `unless-stopped` does not.
    wait_state(env, always_stopped, lambda s: s["Running"], what="started with the daemon")
    time.sleep(1.0)
    assert state(env, unless_stopped)["Status"] == "exited"

    # A reboot: nothing survives but the state dir.
    shims = []
    for cid in (always, unless, plain, always_stopped):
        info = daemon.inspect(cid)
        shim_pid = (daemon.root / "containers" / info["Id"] / "shim.pid").read_text().strip()
        shims += [int(shim_pid), info["State"]["Pid"]]
    _simulate_reboot(daemon, shims)
    daemon.start()
    for cid in (always, unless, always_stopped):
        st = wait_state(env, cid, lambda s: s["Running"] and pid_alive(s["Pid"]), what="back after the reboot")
        assert st["Pid"] not in shims, st
    time.sleep(1.0)
    assert state(env, plain)["Status"] == "exited"
    assert state(env, unless_stopped)["Status"] == "exited"
