"""`wharf-runner exec`: a new process in a running container, under both
runtimes (the built-in one and runc): in every namespace and the cgroup of
the container, with its capabilities, seccomp filter, no_new_privs, rlimits,
environment and working directory; docker's flags, messages and exit codes;
`exec -it`/`-t` on a pty of the container's (driven through a pty of the
test's own, see test_runner_interactive)."""

from __future__ import annotations

import os
import re
import secrets
import termios
import time
from pathlib import Path

import pytest

from runner_support import ID_RE, cgroup_dirs, output, wait_for
from test_runner_interactive import PROMPT, STTY_SIZE, TTY, Term, cli_bytes

BOTH_RUNTIMES = pytest.mark.parametrize("runner", ["wharf", "runc"], indirect=True)


def start(runner, *flags_and_cmd) -> str:
    """`run -d FLAGS IMAGE CMD` ("--" separates flags from the command);
    the container's id, tracked for the leftover checks."""
    if "--" in flags_and_cmd:
        i = flags_and_cmd.index("--")
        flags, cmd = list(flags_and_cmd[:i]), list(flags_and_cmd[i + 1 :])
    else:
        flags, cmd = [], list(flags_and_cmd)
    proc = runner.cli("run", "-d", *flags, runner.image, *(cmd or ["sleep", "300"]))
    cid = proc.stdout.strip()
    assert ID_RE.match(cid), output(proc)
    return runner.track(cid)


@pytest.fixture
def term():
    """make(daemon, *args, rows=, cols=) -> a CLI command on a pty of its own
    (test_runner_interactive.Term), closed after the test."""
    made: list[Term] = []

    def make(daemon, *args, **kwargs) -> Term:
        t = Term(daemon, *args, **kwargs)
        made.append(t)
        return t

    yield make
    for t in made:
        t.close()


def exec_(runner, *args, check: bool = True):
    return runner.cli("exec", *args, check=check, timeout=60)


def host_pids(cmdline: list[str]) -> list[int]:
    """Host pids whose command line is exactly `cmdline`."""
    want = "\0".join(cmdline) + "\0"
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_text() == want:
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


@BOTH_RUNTIMES
def test_exec_joins_every_namespace_of_the_container(runner):
    cid = start(runner)
    pid = int(runner.fmt(cid, "{{.State.Pid}}"))
    for ns in ["mnt", "pid", "net", "ipc", "uts", "cgroup"]:
        inside = exec_(runner, cid, "readlink", f"/proc/self/ns/{ns}").stdout.strip()
        container = os.readlink(f"/proc/{pid}/ns/{ns}")
        assert inside == container, f"{ns}: exec is in {inside}, the container in {container}"
        assert inside != os.readlink(f"/proc/self/ns/{ns}"), f"{ns}: exec is in the host's namespace"


@BOTH_RUNTIMES
def test_exec_sees_the_containers_processes_hostname_and_files(runner):
    cid = start(runner, "--", "sh", "-c", "echo written-by-the-container > /tmp/marker; exec sleep 300")
    wait_for(
        lambda: exec_(runner, cid, "cat", "/tmp/marker", check=False).stdout == "written-by-the-container\n",
        10,
        "the container's file",
    )
    ps = exec_(runner, cid, "ps", "-o", "pid,args").stdout.splitlines()
    pid1 = [line.split(None, 1) for line in ps[1:] if line.split()[0] == "1"]
    assert pid1 == [["1", "sleep 300"]], ps
    assert len(ps) == 3, f"more than PID 1 and ps itself in the container: {ps}"
    assert exec_(runner, cid, "hostname").stdout == cid[:12] + "\n"
    # The container's network: lo and its bridge interface with its address.
    ip = runner.daemon.inspect(cid)["NetworkSettings"]["IPAddress"]
    assert ip, "no address on the bridge"
    devs = sorted(line.split(":", 1)[0].strip() for line in exec_(runner, cid, "cat", "/proc/net/dev").stdout.splitlines()[2:])
    assert devs == ["eth0", "lo"], devs
    assert f"|-- {ip}\n" in exec_(runner, cid, "cat", "/proc/net/fib_trie").stdout, "not the container's address"
    # What exec writes, the container sees.
    exec_(runner, cid, "sh", "-c", "echo from-exec > /tmp/back")
    assert exec_(runner, cid, "cat", "/tmp/back").stdout == "from-exec\n"
    proc = exec_(runner, cid, "sh", "-c", "echo out; echo err >&2")
    assert (proc.stdout, proc.stderr) == ("out\n", "err\n")


@BOTH_RUNTIMES
def test_exec_is_in_the_containers_cgroup(runner):
    cid = start(runner)
    assert exec_(runner, cid, "cat", "/proc/self/cgroup").stdout == exec_(runner, cid, "cat", "/proc/1/cgroup").stdout
    tag = secrets.token_hex(2)
    cmd = ["sleep", str(1000 + int(tag, 16))]
    exec_(runner, "-d", cid, *cmd)
    wait_for(lambda: host_pids(cmd), 10, "the exec'd sleep")
    (pid,) = host_pids(cmd)
    dirs = cgroup_dirs(cid)
    assert dirs, "the container has no cgroup"
    for d in dirs:
        procs = (d / "cgroup.procs").read_text().split()
        assert str(pid) in procs, f"exec pid {pid} not in {d}/cgroup.procs: {procs}"


@BOTH_RUNTIMES
def test_exec_has_the_containers_privileges(runner, request):
    cid = start(runner)
    caps = exec_(runner, cid, "grep", "^Cap", "/proc/self/status").stdout
    assert caps == exec_(runner, cid, "grep", "^Cap", "/proc/1/status").stdout
    assert "CapEff:\t00000000a80425fb" in caps, caps
    status = exec_(runner, cid, "cat", "/proc/self/status").stdout
    assert "NoNewPrivs:\t1" in status, status
    assert "Seccomp:\t2" in status, status
    limits = exec_(runner, cid, "grep", "open files", "/proc/self/limits").stdout.split()
    pid1_limits = exec_(runner, cid, "grep", "open files", "/proc/1/limits").stdout.split()
    if request.node.callspec.params["runner"] == "runc":
        # Debian's runc 1.1.5 races the Go runtime, which may raise an exec'd
        # process's soft NOFILE to the hard limit (fixed in runc 1.1.12):
        # only the hard limit is the container's for sure.
        assert limits[4] == pid1_limits[4], (limits, pid1_limits)
    else:
        assert limits == pid1_limits
    # The seccomp filter is the container's: mount and unshare are refused.
    proc = exec_(runner, cid, "unshare", "-m", "true", check=False)
    assert proc.returncode != 0, output(proc)


@BOTH_RUNTIMES
def test_exec_env_workdir_and_user(runner, tmp_path):
    cid = start(runner, "-e", "FROM_RUN=1", "-w", "/etc", "--", "sleep", "300")
    env = exec_(runner, cid, "env").stdout.splitlines()
    assert "FROM_RUN=1" in env and any(e.startswith("PATH=") for e in env), env
    assert f"HOSTNAME={cid[:12]}" in env, env
    env_file = tmp_path / "env"
    env_file.write_text("# comment\nFROM_FILE=f\nFROM_RUN=file\n")
    env = exec_(
        runner, "-e", "EXTRA=x y", "--env-file", str(env_file), "-e", "FROM_HOST", cid, "env",
    ).stdout.splitlines()
    assert "EXTRA=x y" in env and "FROM_FILE=f" in env and "FROM_RUN=file" in env, env
    assert not any(e.startswith("FROM_HOST") for e in env), env
    assert exec_(runner, cid, "pwd").stdout == "/etc\n", "the default workdir is the container's"
    assert exec_(runner, "-w", "/tmp", cid, "pwd").stdout == "/tmp\n"
    assert exec_(runner, cid, "id").stdout.startswith("uid=0(root) gid=0(root)")
    assert exec_(runner, "-u", "nobody", cid, "id", "-u").stdout == "65534\n"
    assert exec_(runner, "-u", "nobody", cid, "id", "-g").stdout == "65534\n"
    assert exec_(runner, "-u", "1000:1001", cid, "id").stdout.startswith("uid=1000 gid=1001")
    # Not root: no effective capabilities (as `run -u`).
    caps = exec_(runner, "-u", "nobody", cid, "grep", "CapEff", "/proc/self/status").stdout
    assert caps == "CapEff:\t0000000000000000\n", caps
    proc = exec_(runner, "-u", "nosuchuser", cid, "id", check=False)
    assert proc.returncode != 0 and "nosuchuser" in proc.stderr, output(proc)


@BOTH_RUNTIMES
def test_exec_exit_codes_and_messages(runner):
    cid = start(runner)
    assert exec_(runner, cid, "sh", "-c", "exit 7", check=False).returncode == 7
    proc = exec_(runner, cid, "nope", check=False)
    assert proc.returncode == 127, output(proc)
    assert proc.stderr == (
        'OCI runtime exec failed: exec failed: unable to start container process: '
        'exec: "nope": executable file not found in $PATH: unknown\n'
    ), output(proc)
    assert proc.stdout == ""
    proc = exec_(runner, cid, "/etc/passwd", check=False)
    assert proc.returncode == 126, output(proc)
    assert proc.stderr.startswith("OCI runtime exec failed: "), output(proc)
    proc = exec_(runner, "-d", cid, "nope", check=False)
    assert proc.returncode == 127 and "executable file not found" in proc.stderr, output(proc)

    proc = exec_(runner, "no-such-container-x", "true", check=False)
    assert (proc.returncode, proc.stderr) == (1, "Error response from daemon: No such container: no-such-container-x\n")
    runner.cli("kill", cid)
    wait_for(lambda: runner.fmt(cid, "{{.State.Running}}") == "false", 15, "the container to stop")
    proc = exec_(runner, cid, "true", check=False)
    assert (proc.returncode, proc.stderr) == (1, f"Error response from daemon: container {cid} is not running\n")


@BOTH_RUNTIMES
def test_exec_detached_leaves_the_process_running(runner):
    cid = start(runner)
    proc = exec_(runner, "-d", cid, "sleep", "777")
    assert (proc.stdout, proc.stderr) == ("", ""), output(proc)
    ps = exec_(runner, cid, "ps", "-o", "args").stdout.splitlines()
    assert "sleep 777" in ps, ps
    exec_ids = runner.daemon.inspect(cid)["ExecIDs"]
    assert exec_ids and all(ID_RE.match(i) for i in exec_ids), exec_ids
    # The container's end takes its exec processes with it.
    runner.cli("rm", "-f", cid)
    wait_for(lambda: not host_pids(["sleep", "777"]), 10, "the exec'd process to end with its container")


@BOTH_RUNTIMES
def test_exec_interactive_pipes_stdin(runner):
    cid = start(runner)
    proc = runner.cli("exec", "-i", cid, "cat", input="hello\n", timeout=60)
    assert (proc.returncode, proc.stdout) == (0, "hello\n"), output(proc)
    proc = runner.cli(
        "exec", "-i", cid, "sh", "-c", "read x; echo got $x; echo err >&2; exit 3", input="abc\n", check=False, timeout=60,
    )
    assert (proc.returncode, proc.stdout, proc.stderr) == (3, "got abc\n", "err\n"), output(proc)
    big = "x" * (2 << 20)
    proc = runner.cli("exec", "-i", cid, "wc", "-c", input=big, timeout=60)
    assert proc.stdout.strip() == str(len(big)), output(proc)
    # Without -i the command's stdin is empty.
    proc = runner.cli("exec", cid, "cat", input="ignored\n", timeout=60)
    assert proc.stdout == "", output(proc)
    proc = runner.cli("exec", "-i", cid, "nope", input="", check=False, timeout=60)
    assert proc.returncode == 127 and "executable file not found" in proc.stderr, output(proc)


@BOTH_RUNTIMES
def test_exec_it_is_a_real_terminal(runner, term):
    cid = start(runner)
    t = term(runner.daemon, "exec", "-it", cid, "sh", rows=33, cols=101)
    t.expect(PROMPT)
    t.send(f"{TTY}\r")
    t.expect(r"/dev/pts/\d+\r\n")
    t.send(f"{STTY_SIZE}\r")
    t.expect(r"\r\n33 101\r\n")
    t.resize(40, 120)
    time.sleep(0.5)
    t.send(f"{STTY_SIZE}\r")
    t.expect(r"\r\n40 120\r\n")
    # ^C reaches the shell's foreground job through the pty.
    started = time.monotonic()
    t.send("sleep 100; echo after-sleep\r")
    time.sleep(1)
    t.send(b"\x03")
    t.expect(PROMPT, timeout=10)
    assert time.monotonic() - started < 20
    assert b"after-sleep" not in t.seen
    t.send("exit 5\r")
    assert t.wait() == 5, t.seen
    # The container goes on; nothing of the exec is left.
    assert runner.fmt(cid, "{{.State.Running}}") == "true"
    wait_for(lambda: runner.fmt(cid, "{{json .ExecIDs}}") == "null", 10, "the exec to be gone from ExecIDs")


@BOTH_RUNTIMES
def test_exec_it_ctrl_d_and_detach_keys(runner, term):
    cid = start(runner)
    t = term(runner.daemon, "exec", "-it", cid, "sh")
    t.expect(PROMPT)
    t.send(b"\x04")
    assert t.wait() == 0, t.seen
    attrs = termios.tcgetattr(t.master)
    assert attrs[3] & termios.ICANON and attrs[3] & termios.ECHO, "the terminal was not restored"
    # docker's detach keys leave the exec'd process running.
    t = term(runner.daemon, "exec", "-it", "--detach-keys", "ctrl-a,d", cid, "sh")
    t.expect(PROMPT)
    t.send("exec sleep 654\r")
    time.sleep(0.5)
    t.send(b"\x01d")
    assert t.wait() == 0, t.seen
    assert host_pids(["sleep", "654"]), "detaching ended the exec'd process"


@BOTH_RUNTIMES
def test_exec_t_without_i(runner):
    cid = start(runner)
    proc = cli_bytes(runner, "exec", "-t", cid, "busybox", "tty")
    assert proc.returncode == 0 and re.fullmatch(rb"/dev/pts/\d+\r\n", proc.stdout), proc
    # A terminal's output is all stdout, with the pty's line endings.
    proc = cli_bytes(runner, "exec", "-t", cid, "sh", "-c", "echo out; echo err >&2; exit 6")
    assert (proc.returncode, proc.stdout, proc.stderr) == (6, b"out\r\nerr\r\n", b""), proc
    proc = cli_bytes(runner, "exec", "-t", cid, "no-such-command")
    assert proc.returncode == 127 and b"no-such-command" in proc.stderr, proc
    # -dt: the command runs on a terminal of its own in the background.
    proc = runner.cli("exec", "-d", "-t", cid, "sh", "-c", "busybox tty > /tmp/tty-of-exec; sleep 300")
    assert proc.returncode == 0, output(proc)
    wait_for(lambda: exec_(runner, cid, "cat", "/tmp/tty-of-exec", check=False).stdout.startswith("/dev/pts/"),
             10, "the detached exec's tty")


@BOTH_RUNTIMES
def test_exec_it_wants_a_terminal(runner):
    cid = start(runner)
    proc = runner.cli("exec", "-it", cid, "true", input="", check=False, timeout=60)
    assert (proc.returncode, proc.stderr) == (1, "the input device is not a TTY\n"), output(proc)
    assert runner.fmt(cid, "{{json .ExecIDs}}") == "null", "an exec instance was made"
    proc = runner.cli("exec", cid, check=False)
    assert proc.returncode != 0 and '"wharf-runner exec" requires at least 2 arguments.' in proc.stderr, output(proc)
