"""wharf-runner's interactive containers, as docker's: `run -i` (stdin as a
pipe), `run -it` (a real pty, driven here through a pty of our own: `tty`,
`stty size`, resizes, ^C, ^D, exit codes), `run -t`, logs of tty containers,
and `attach` with docker's detach keys, also after a daemon restart. Every
test runs under the built-in runtime and under runc."""

from __future__ import annotations

import fcntl
import os
import re
import select
import signal
import struct
import subprocess
import termios
import time

import pytest

from runner_support import output, wait_for

BOTH_RUNTIMES = pytest.mark.parametrize("runner", ["wharf", "runc"], indirect=True)
PROMPT = re.compile(rb"[#$] (\x1b\[6n)?$")
# The test image links only some applets; these run as `busybox APPLET`.
TTY = "busybox tty"
STTY_SIZE = "busybox stty size"


class Term:
    """A CLI command on a pty of its own (its controlling terminal), read and
    written from the master side as a user at a terminal would."""

    def __init__(self, daemon, *args, rows: int = 24, cols: int = 80):
        self.master, slave = os.openpty()
        self.resize(rows, cols)

        def ctty():
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.proc = subprocess.Popen(
            [str(daemon.binary), *map(str, args)],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=daemon.cli_env(),
            start_new_session=True,
            preexec_fn=ctty,
        )
        os.close(slave)
        self.seen = b""

    def resize(self, rows: int, cols: int) -> None:
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def send(self, data: bytes | str) -> None:
        os.write(self.master, data.encode() if isinstance(data, str) else data)

    def expect(self, pattern, timeout: float = 15.0) -> re.Match:
        """Waits for `pattern` in the output since the last match."""
        rx = re.compile(pattern.encode() if isinstance(pattern, str) else pattern)
        deadline = time.monotonic() + timeout
        while True:
            m = rx.search(self.seen)
            if m:
                self.seen = self.seen[m.end():]
                return m
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {rx.pattern!r}; output so far: {self.seen!r}")
            ready, _, _ = select.select([self.master], [], [], min(left, 0.2))
            if ready:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:
                    chunk = b""
                if not chunk:
                    raise AssertionError(f"the terminal closed waiting for {rx.pattern!r}; output: {self.seen!r}")
                if b"\x1b[6n" in chunk:
                    # busybox's line editor asks where the cursor is, as
                    # a terminal emulator would, answer.
                    self.send(b"\x1b[1;1R")
                self.seen += chunk

    def wait(self, timeout: float = 20.0) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"the command did not end; output: {self.seen!r}")
            # Keep draining so the CLI never blocks on a full pty.
            ready, _, _ = select.select([self.master], [], [], 0.1)
            if ready:
                try:
                    self.seen += os.read(self.master, 65536)
                except OSError:
                    pass
        return self.proc.returncode

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)


@pytest.fixture
def term():
    made: list[Term] = []

    def make(daemon, *args, **kwargs) -> Term:
        t = Term(daemon, *args, **kwargs)
        made.append(t)
        return t

    yield make
    for t in made:
        t.close()


def cli_bytes(runner, *args) -> subprocess.CompletedProcess:
    """The CLI with its output as bytes (text mode would turn a tty's \\r\\n into \\n)."""
    return subprocess.run(
        [str(runner.daemon.binary), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=runner.daemon.cli_env(),
        timeout=60,
    )


def running(runner, name: str) -> bool:
    return runner.fmt(name, "{{.State.Running}}") == "true"


@BOTH_RUNTIMES
def test_run_i_passes_stdin_and_its_end(runner):
    proc = runner.cli("run", "--rm", "-i", runner.image, "cat", input="hi\nthere\n")
    assert (proc.returncode, proc.stdout) == (0, "hi\nthere\n"), output(proc)
    proc = runner.cli(
        "run", "--rm", "-i", runner.image, "sh", "-c", "read x; echo got $x; exit 4", input="abc\n", check=False
    )
    assert (proc.returncode, proc.stdout) == (4, "got abc\n"), output(proc)
    # A container that stops reading (and exits) ends the run even though
    # the input goes on.
    proc = subprocess.run(
        f"yes | {runner.daemon.binary} run --rm -i {runner.image} head -n 2",
        shell=True, capture_output=True, text=True, timeout=60, env=runner.daemon.cli_env(),
    )
    assert (proc.returncode, proc.stdout) == (0, "y\ny\n"), output(proc)
    # -it wants a terminal on stdin, as docker's; nothing is made.
    before = runner.cli("ps", "-a", "-q").stdout
    proc = runner.cli("run", "--rm", "-it", runner.image, "cat", input="x\n", check=False)
    assert (proc.returncode, proc.stderr) == (1, "the input device is not a TTY\n"), output(proc)
    assert runner.cli("ps", "-a", "-q").stdout == before
    # Without -i the container's stdin is empty, as docker's.
    proc = runner.cli("run", "--rm", runner.image, "cat", input="ignored\n")
    assert proc.stdout == "", output(proc)


@BOTH_RUNTIMES
def test_run_it_is_a_real_terminal(runner, term):
    t = term(runner.daemon, "run", "--rm", "-it", runner.image, "sh", rows=30, cols=100)
    t.expect(PROMPT)
    t.send(f"{TTY}\r")
    t.expect(r"/dev/pts/\d+\r\n")
    t.send(f"{STTY_SIZE}\r")
    t.expect(r"\r\n30 100\r\n")
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
    t.send("exit 3\r")
    assert t.wait() == 3, t.seen


@BOTH_RUNTIMES
def test_ctrl_d_ends_the_shell_and_the_terminal_is_restored(runner, term):
    t = term(runner.daemon, "run", "--rm", "-it", runner.image, "sh")
    t.expect(PROMPT)
    t.send(b"\x04")
    assert t.wait() == 0, t.seen
    # The CLI put its terminal back as it found it (canonical mode, echo).
    attrs = termios.tcgetattr(t.master)
    assert attrs[3] & termios.ICANON and attrs[3] & termios.ECHO


@BOTH_RUNTIMES
def test_run_t_without_i_and_logs_of_a_tty_container(runner):
    proc = cli_bytes(runner, "run", "--rm", "-t", runner.image, "busybox", "tty")
    assert proc.returncode == 0 and re.fullmatch(rb"/dev/pts/\d+\r\n", proc.stdout), proc
    proc = runner.cli("run", "--rm", "-t", runner.image, "sh", "-c", "exit 7", check=False)
    assert proc.returncode == 7, output(proc)
    cid = runner.track(runner.cli("run", "-d", "-t", runner.image, "sh", "-c", "echo hello-tty").stdout.strip())
    assert runner.cli("wait", cid).stdout.strip() == "0"
    logs = cli_bytes(runner, "logs", cid)
    assert logs.stdout == b"hello-tty\r\n", logs


@BOTH_RUNTIMES
def test_detached_it_container_attach_and_detach_keys(runner, term):
    name = f"attach-{os.getpid()}-{time.monotonic_ns() % 100000}"
    cid = runner.track(runner.cli("run", "-d", "-it", "--name", name, runner.image, "sh").stdout.strip())
    t = term(runner.daemon, "attach", name)
    time.sleep(0.3)
    t.send("echo hi-$((40+2))\r")
    t.expect(r"hi-42")
    t.send(b"\x10\x11")
    assert t.wait() == 0, t.seen
    assert running(runner, cid), "detaching stopped the container"
    # --detach-keys: ^P^Q is just input then, and ctrl-a,d detaches.
    t1 = term(runner.daemon, "attach", "--detach-keys", "ctrl-a,d", name)
    time.sleep(0.3)
    t1.send(b"\x10\x11echo still-$((2+3))\r")
    t1.expect(r"still-5")
    t1.send(b"\x01d")
    assert t1.wait() == 0, t1.seen
    assert running(runner, cid), "detaching stopped the container"
    t2 = term(runner.daemon, "attach", name)
    time.sleep(0.3)
    t2.send("exit 5\r")
    assert t2.wait() == 5, t2.seen
    assert runner.cli("wait", cid).stdout.strip() == "5"


@BOTH_RUNTIMES
def test_attach_after_a_daemon_restart(runner, term):
    cid = runner.track(runner.cli("run", "-d", "-it", runner.image, "sh").stdout.strip())
    runner.daemon.restart()
    t = term(runner.daemon, "attach", cid)
    time.sleep(0.3)
    t.send("echo back-$((1+1))\r")
    t.expect(r"back-2")
    t.send("exit 9\r")
    assert t.wait() == 9, t.seen
    assert runner.cli("wait", cid).stdout.strip() == "9"


@BOTH_RUNTIMES
def test_resize_and_attach_errors_are_dockers(runner):
    cid = runner.track(runner.cli("create", runner.image, "true").stdout.strip())
    proc = runner.cli("attach", cid, check=False)
    assert proc.returncode == 1
    assert "You cannot attach to a stopped container, start it first" in proc.stderr, output(proc)
    proc = runner.cli("attach", "no-such-container", check=False)
    assert "No such container: no-such-container" in proc.stderr, output(proc)


@BOTH_RUNTIMES
def test_attach_to_a_plain_container_follows_its_output(runner):
    cid = runner.track(
        runner.cli("run", "-d", runner.image, "sh", "-c", "sleep 2; echo late; exit 2").stdout.strip()
    )
    proc = runner.cli("attach", cid, check=False)
    assert (proc.returncode, proc.stdout) == (2, "late\n"), output(proc)


@BOTH_RUNTIMES
def test_start_ai_and_a_missing_command_under_a_tty(runner):
    cid = runner.track(runner.cli("create", "-i", runner.image, "sh", "-c", "read x; echo got-$x").stdout.strip())
    proc = runner.cli("start", "-a", "-i", cid, input="y\n")
    assert (proc.returncode, proc.stdout) == (0, "got-y\n"), output(proc)
    proc = runner.cli("run", "--rm", "-t", runner.image, "no-such-command", check=False)
    assert proc.returncode == 127, output(proc)
    assert "no-such-command" in proc.stdout + proc.stderr, output(proc)
