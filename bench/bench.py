#!/usr/bin/env python3
"""wharf's benchmark driver (started by bench/run, which builds and installs).

Registry: wharf-server vs the CNCF distribution registry (Debian's
docker-registry), both on loopback with fresh temp data, the same workload
against each, systems alternating inside every round (the first system of a
round alternates too). Runner: wharf-runner vs `runc run` vs `docker run`, and
pull+unpack with wharf-runner vs `docker pull` vs `skopeo copy` + `umoci
unpack`, repetitions interleaved across systems.

Tools: wrk (small requests, concurrent downloads), curl (one big download),
Python with sendfile (uploads: the bodies stream from files made once),
openssl and dd (the physical limits). Memory: VmRSS of each server process,
sampled every 25 ms. Only the standard library and `requests` (through the
e2e helpers) are used.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import hashlib
import http.client
import json
import mmap
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import traceback
from pathlib import Path
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "e2e"))

from support import RegistryApi, free_port, sha256_digest  # noqa: E402
from runner_support import (  # noqa: E402
    DOCKER_CONFIG,
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST,
    Entry,
    Image,
    RunnerDaemon,
    busybox_entries,
    busybox_image,
    dir_entry,
    make_layer,
    unique_bridge,
)

KiB, MiB = 1 << 10, 1 << 20
MB = 1e6
NOTES_MARK = "<!-- notes -->"
ACCEPT = f"{DOCKER_MANIFEST}, application/vnd.oci.image.manifest.v1+json"
WHARF, DIST = "wharf", "distribution"

QUICK = dict(
    rounds=1, small_dur=1, conns=[1, 16, 64], big=16 * MiB, chunk=2 * MiB, conc_n=64, conc_size=256 * KiB,
    dl_dur=1, mixed_sizes=[1, 10], mixed_ops={1: 32, 10: 16}, mixed_file=32 * MiB, runs=5, pull_runs=1,
    pull_layer=4 * MiB, repos=10, tags=10, catalog_repos=10_000, catalog_tags=100_000, catalog_n=10,
    fleet_nodes=50,
)  # fmt: skip
FULL = dict(
    rounds=3, small_dur=4, conns=[1, 16, 64], big=256 * MiB, chunk=8 * MiB, conc_n=64, conc_size=4 * MiB,
    dl_dur=3, mixed_sizes=[1, 10, 100], mixed_ops={1: 400, 10: 160, 100: 48}, mixed_file=256 * MiB, runs=50,
    pull_runs=5, pull_layer=40 * MiB, repos=50, tags=50, catalog_repos=10_000, catalog_tags=100_000, catalog_n=50,
    fleet_nodes=50,
)  # fmt: skip
GROUPS = ("small", "upload", "download", "mixed", "run", "pull", "catalog", "fleet")

# The web catalog at scale: each (label, path, who) is requested `catalog_n` times on one keep-alive
# connection of a wharf-server whose catalog `wharf-server seed` filled (10,000 repositories, 100,000 tags,
# `library/big` with 10,000 of them; `library/*` and `team-a/*` public). who: "admin" (a bearer token) or
# "anonymous" (sees the public repositories only: listings filtered in SQL). HTML pages of the web UI are
# measured as anonymous; a build without the UI answers them with the API's JSON 404 and they are skipped.
CATALOG_URLS = [
    ("stats", "/api/v1/stats", "admin"),
    ("stats, anonymous", "/api/v1/stats", "anonymous"),
    ("repositories, first page", "/api/v1/repositories", "admin"),
    ("repositories, last page", "/api/v1/repositories?offset=9990&limit=25", "admin"),
    ("repositories by push time", "/api/v1/repositories?sort=pushed", "admin"),
    ("repositories, search", "/api/v1/repositories?q=api-00", "admin"),
    ("repositories, search, no match", "/api/v1/repositories?q=%27%3B%20drop%20table", "admin"),
    ("repositories, anonymous", "/api/v1/repositories?sort=pushed", "anonymous"),
    ("repository", "/api/v1/repositories/library/big", "admin"),
    ("tags (10,000), first page", "/api/v1/repositories/library/big/tags", "admin"),
    ("tags (10,000), last page", "/api/v1/repositories/library/big/tags?offset=9975", "admin"),
    ("tags (10,000), by push time", "/api/v1/repositories/library/big/tags?sort=pushed&offset=5000", "admin"),
    ("tags (10,000), search", "/api/v1/repositories/library/big/tags?q=1.5", "admin"),
    ("tags (10)", "/api/v1/repositories/team-a/api-00001/tags", "admin"),
    ("manifest by tag (config read)", "/api/v1/repositories/library/big/manifests/latest", "admin"),
    ("index by tag", "/api/v1/repositories/data/api-00005/manifests/latest", "admin"),
    ("referrers", "/api/v1/repositories/library/big/manifests/{big_latest}/referrers", "admin"),
    ("page: repositories", "/", "anonymous"),
    ("page: repositories, search", "/?q=api", "anonymous"),
    ("page: repositories by push time, deep", "/?sort=pushed&offset=150", "anonymous"),
    ("page: repository (10,000 tags)", "/r/library/big", "anonymous"),
    ("page: repository, last tags", "/r/library/big?offset=9975", "anonymous"),
    ("page: repository (10 tags)", "/r/team-a/api-00001", "anonymous"),
    ("page: manifest (config, history)", "/r/library/big/-/manifest/latest", "anonymous"),
    ("page: index", "/r/library/web-00050/-/manifest/latest", "anonymous"),
]


class BenchError(Exception):
    pass


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def sh(cmd, check=True, timeout=600, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("stdin", subprocess.DEVNULL)
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise BenchError(
            f"command failed ({proc.returncode}): {' '.join(map(str, cmd))}\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
        )
    return proc


def median(xs):
    return statistics.median(xs) if xs else None


def p95(xs):
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(0.95 * (len(s) - 1))))]


# ----------------------------------------------------------------------------- memory


class RssSampler:
    """VmRSS of one process every `interval` s; `begin()`/`end()` bracket a
    window and `end()` returns the peak (kB) seen inside it."""

    def __init__(self, pid: int, interval: float = 0.025):
        self.pid, self.interval = pid, interval
        self.current = self.peak = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.sample()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def sample(self) -> int:
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        kb = int(line.split()[1])
                        with self._lock:
                            self.current = kb
                            self.peak = max(self.peak, kb)
                        return kb
        except OSError:
            pass
        return 0

    def _loop(self):
        while not self._stop.wait(self.interval):
            self.sample()

    def begin(self):
        with self._lock:
            self.peak = 0
        self.sample()

    def end(self) -> int:
        self.sample()
        with self._lock:
            return self.peak

    def stop(self):
        self._stop.set()


# ----------------------------------------------------------------------------- registries


class Registry:
    name = ""

    def __init__(self, tmp: Path, logdir: Path):
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.host}"
        self.data = tmp / f"{self.name}-data"
        self.data.mkdir(parents=True)
        self.log_path = logdir / f"{self.name}.log"
        self.proc: subprocess.Popen | None = None
        self.rss: RssSampler | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self):
        env = {**os.environ, "NO_COLOR": "1"}
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                         env=env, start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise BenchError(f"{self.name} exited with {self.proc.returncode} at start; log {self.log_path}:\n"
                                 + self.log_path.read_text(errors="replace")[-3000:])  # fmt: skip
            try:
                c = http.client.HTTPConnection(self.host, timeout=2)
                c.request("GET", "/v2/")
                r = c.getresponse()
                r.read()
                c.close()
                if r.status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise BenchError(f"{self.name} did not answer GET /v2/ in 30 s; log {self.log_path}")
            time.sleep(0.05)
        self.rss = RssSampler(self.proc.pid)

    def check_alive(self):
        if self.proc.poll() is not None:
            raise BenchError(f"{self.name} died (exit {self.proc.returncode}); log {self.log_path}")

    def stop(self):
        if self.rss:
            self.rss.stop()
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class WharfServer(Registry):
    name = WHARF

    def __init__(self, binary: Path, tmp: Path, logdir: Path):
        self.binary = binary
        super().__init__(tmp, logdir)

    def command(self):
        # The access log off, as for distribution below (`env` execs, so the
        # pid is the server's).
        return ["env", "WHARF_LOG_ACCESS=false", str(self.binary), "serve", "--listen", self.host,
                "--data-dir", str(self.data)]  # fmt: skip


class Distribution(Registry):
    name = DIST

    def command(self):
        cfg = self.data.parent / "distribution.yml"
        # Debian's shipped config (in-memory blob descriptor cache, delete on),
        # without auth, with the access log off (wharf's is turned off too).
        cfg.write_text(
            "version: 0.1\n"
            "log:\n  level: error\n  accesslog:\n    disabled: true\n"
            "storage:\n  cache:\n    blobdescriptor: inmemory\n"
            f"  filesystem:\n    rootdirectory: {self.data}\n  delete:\n    enabled: true\n"
            f"http:\n  addr: {self.host}\n  headers:\n    X-Content-Type-Options: [nosniff]\n"
        )
        return ["docker-registry", "serve", str(cfg)]


# ----------------------------------------------------------------------------- raw HTTP


def conn(host: str) -> http.client.HTTPConnection:
    return http.client.HTTPConnection(host, timeout=300)


def request(c, method, path, body=b"", headers=None, expect=(200,)):
    c.request(method, path, body=body, headers=headers or {})
    r = c.getresponse()
    data = r.read()
    if r.status not in expect:
        raise BenchError(f"{method} {path} -> {r.status} (expected {expect}): {data[:500]!r}")
    return r, data


def location_path(r) -> str:
    loc = r.getheader("Location")
    if not loc:
        raise BenchError("upload response without Location")
    parts = urlsplit(loc)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def with_query(path: str, query: str) -> str:
    return path + ("&" if "?" in path else "?") + query


def send_file_request(c, method, path, f, offset, size, headers, expect):
    """A request whose body is `size` bytes of file `f` from `offset`, sent with sendfile."""
    c.putrequest(method, path, skip_accept_encoding=True)
    for k, v in headers.items():
        c.putheader(k, v)
    c.putheader("Content-Length", str(size))
    c.endheaders()
    if size:
        sent = c.sock.sendfile(f, offset, size)
        if sent != size:
            raise BenchError(f"sendfile sent {sent} of {size} bytes")
    r = c.getresponse()
    data = r.read()
    if r.status not in expect:
        raise BenchError(f"{method} {path} -> {r.status} (expected {expect}): {data[:500]!r}")
    return r


def upload_blob(c, repo, f, offset, size, digest, chunk: int | None = None):
    """POST, then one PUT with the body (chunk None) or PATCHes of `chunk` bytes and a closing PUT."""
    r, _ = request(c, "POST", f"/v2/{repo}/blobs/uploads/", expect=(202,))
    loc = location_path(r)
    octet = {"Content-Type": "application/octet-stream"}
    if chunk is None:
        send_file_request(c, "PUT", with_query(loc, f"digest={digest}"), f, offset, size, octet, (201,))
        return
    done = 0
    while done < size:
        n = min(chunk, size - done)
        hdr = {**octet, "Content-Range": f"{done}-{done + n - 1}"}
        r = send_file_request(c, "PATCH", loc, f, offset + done, n, hdr, (202,))
        loc = location_path(r)
        done += n
    send_file_request(c, "PUT", with_query(loc, f"digest={digest}"), f, 0, 0, {}, (201,))


def read_blob(c, path, buf) -> int:
    c.request("GET", path)
    r = c.getresponse()
    if r.status != 200:
        data = r.read()
        raise BenchError(f"GET {path} -> {r.status}: {data[:300]!r}")
    total = 0
    while True:
        n = r.readinto(buf)
        if not n:
            break
        total += n
    return total


def put_manifest(c, repo, ref, layers: list[tuple[str, int]], config: tuple[str, int]) -> bytes:
    doc = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": DOCKER_CONFIG, "digest": config[0], "size": config[1]},
        "layers": [{"mediaType": DOCKER_LAYER_GZIP, "digest": d, "size": s} for d, s in layers],
    }
    raw = json.dumps(doc).encode()
    request(c, "PUT", f"/v2/{repo}/manifests/{ref}", raw, {"Content-Type": DOCKER_MANIFEST}, expect=(201,))
    return raw


# ----------------------------------------------------------------------------- wrk

LAT_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def parse_wrk(out: str) -> dict:
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s|m)\b", out, re.M)
    total = re.search(r"^\s+(\d+) requests in ([\d.]+)(us|ms|s|m),", out, re.M)
    if not (rps and p99 and total):
        raise BenchError(f"cannot parse wrk output:\n{out}")
    res = {
        "rps": float(rps.group(1)),
        "p99_ms": float(p99.group(1)) * LAT_UNITS[p99.group(2)],
        "requests": int(total.group(1)),
    }
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sockerr = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    problems = []
    if non2xx:
        problems.append(f"{non2xx.group(1)} non-2xx responses")
    if sockerr and any(int(x) for x in sockerr.groups()):
        problems.append(f"socket errors {sockerr.group(0)}")
    if res["requests"] == 0:
        problems.append("no request completed")
    res["problems"] = problems
    return res


def run_wrk(url: str, conns: int, dur: float, script: Path | None = None, headers=()) -> dict:
    cmd = ["wrk", "--latency", "-t", str(min(conns, 2)), "-c", str(conns), "-d", f"{dur}s", "--timeout", "10s"]
    for h in headers:
        cmd += ["-H", h]
    if script:
        cmd += ["-s", str(script)]
    cmd.append(url)
    out = sh(cmd, timeout=dur + 60).stdout
    return parse_wrk(out)


def run_ab_head(url: str, conns: int, dur: float, csv: Path) -> dict:
    """HEAD load with ab (-i -k): wrk 4.1 cannot do HEAD on responses with a Content-Length (wg/wrk#198:
    its parser waits for a body that never comes)."""
    cmd = ["ab", "-q", "-i", "-k", "-c", str(conns), "-t", str(dur), "-n", "100000000", "-e", str(csv), url]
    out = sh(cmd, timeout=dur + 60).stdout
    rps = re.search(r"^Requests per second:\s+([\d.]+)", out, re.M)
    done = re.search(r"^Complete requests:\s+(\d+)", out, re.M)
    failed = re.search(r"^Failed requests:\s+(\d+)", out, re.M)
    non2xx = re.search(r"^Non-2xx responses:\s+(\d+)", out, re.M)
    p99 = re.search(r"^99,([\d.]+)$", csv.read_text(), re.M)
    if not (rps and done and failed and p99):
        raise BenchError(f"cannot parse ab output:\n{out}")
    problems = []
    if int(failed.group(1)):
        problems.append(f"{failed.group(1)} failed requests")
    if non2xx and int(non2xx.group(1)):
        problems.append(f"{non2xx.group(1)} non-2xx responses")
    if int(done.group(1)) == 0:
        problems.append("no request completed")
    return {"rps": float(rps.group(1)), "p99_ms": float(p99.group(1)), "requests": int(done.group(1)),
            "problems": problems}  # fmt: skip


# ----------------------------------------------------------------------------- the benchmark


class Bench:
    def __init__(self, args):
        self.args = args
        self.quick = args.quick
        self.p = dict(QUICK if args.quick else FULL)
        if args.rounds:
            self.p["rounds"] = args.rounds
        self.only = set(args.only.split(",")) if args.only else set(GROUPS)
        self.bin_dir = Path(args.bin_dir)
        self.logdir = Path(args.logdir)
        self.docker = args.docker
        self.tmp = Path(tempfile.mkdtemp(prefix="wharf-bench.", dir=args.tmpdir))
        self.results: dict[tuple, list] = {}  # (group, key, system) -> values (one per round/run)
        self.errors: list[str] = []
        self.notes: list[str] = []
        self.regs: dict[str, Registry] = {}
        self.daemon: RunnerDaemon | None = None
        self.docker_refs: list[str] = []
        self.started = time.time()
        self.load_start = " ".join(f"{x:.2f}" for x in os.getloadavg())

    # --- bookkeeping
    def add(self, group, key, system, value):
        self.results.setdefault((group, key, system), []).append(value)

    def med(self, group, key, system):
        return median(self.results.get((group, key, system), []))

    def error(self, msg: str):
        """Quick mode stops at the first error; full mode records it in the report (and exits 1 at the end)."""
        log(f"ERROR: {msg}")
        if self.quick:
            raise BenchError(msg)
        self.errors.append(msg)

    def guarded(self, what: str, fn, *a):
        try:
            return fn(*a)
        except BenchError as e:
            self.error(f"{what}: {e}")
        except Exception as e:  # noqa: BLE001 -- anything else is a bench error too
            self.error(f"{what}: {type(e).__name__}: {e}\n{traceback.format_exc()}")

    def order(self, rnd: int) -> list[Registry]:
        regs = [self.regs[WHARF], self.regs[DIST]]
        return regs if rnd % 2 == 0 else regs[::-1]

    # --- data
    def random_file(self, name: str, size: int) -> Path:
        path = self.tmp / name
        with open(path, "wb") as f:
            left = size
            while left:
                n = min(left, 8 * MiB)
                f.write(os.urandom(n))
                left -= n
        return path

    @staticmethod
    def file_digest(path: Path, offset=0, size=None) -> str:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            end = len(mm) if size is None else offset + size
            return "sha256:" + hashlib.sha256(memoryview(mm)[offset:end]).hexdigest()

    # --- run
    def run(self) -> int:
        try:
            self.setup_registries()
            rounds = self.p["rounds"]
            for rnd in range(rounds):
                log(f"round {rnd + 1}/{rounds} (first: {self.order(rnd)[0].name})")
                if "small" in self.only:
                    self.guarded("small requests", self.small_requests, rnd)
                if "upload" in self.only or "download" in self.only:
                    self.guarded("uploads/downloads", self.transfers, rnd)
                if "mixed" in self.only:
                    self.guarded("mixed", self.mixed, rnd)
            for reg in self.regs.values():
                reg.check_alive()
            if "catalog" in self.only:
                self.guarded("web catalog at scale", self.catalog)
            if "fleet" in self.only:
                self.guarded("fleet at scale", self.fleet)
            if "run" in self.only or "pull" in self.only:
                self.guarded("runner", self.runner)
        except BenchError as e:
            self.errors.append(str(e))
            log(f"ERROR: {e}")
        finally:
            self.teardown()
        self.write_report()
        if self.errors:
            log(f"{len(self.errors)} error(s); see {self.args.out}")
            return 1
        log(f"report written to {self.args.out}")
        return 0

    # --- the fleet at scale
    def fleet(self):
        """`fleet_nodes` runner daemons, each in a network namespace of its own, join one wharf-server (TLS,
        auth) over a bridge — the LAN of the fleet's e2e tests (tests/e2e/fleet_support.py). Timed: from the
        daemons' start to every node ready, and from `wharf-server deploy --replicas N` (one per node) to the
        server having every replica reported running."""
        from concurrent.futures import ThreadPoolExecutor

        from fleet_support import Fleet, Lan

        os.environ["WHARF_SERVER_BIN"] = str(self.bin_dir / "wharf-server")
        os.environ["WHARF_RUNNER_BIN"] = str(self.bin_dir / "wharf-runner")
        n = self.p["fleet_nodes"]
        names = [f"n{i}" for i in range(n)]
        lan = Lan(["server", *names])
        fleet = None
        try:
            (self.tmp / "fleet").mkdir()
            fleet = Fleet(lan, self.tmp / "fleet")
            fleet.push_busybox("bench/fleet")
            daemons = [fleet.runner(m, "--token", fleet.token("--pull", "bench/*"), "--node-name", m) for m in names]
            t = time.monotonic()
            with ThreadPoolExecutor(16) as pool:
                list(pool.map(lambda d: d.start(), daemons))

            def ready() -> int:
                return sum(1 for x in fleet.nodes().values() if x["status"] == "ready")

            while ready() < n:
                if time.monotonic() - t > 120:
                    raise BenchError(f"only {ready()} of {n} nodes ready after 120 s")
                time.sleep(0.1)
            self.add("fleet", "join", WHARF, time.monotonic() - t)
            t = time.monotonic()
            fleet.admin("deploy", f"{fleet.server.host}/bench/fleet:1", "--name", "bench", "--replicas", str(n),
                        "--", "sleep", "3600")  # fmt: skip
            while True:
                running = fleet.running("bench")
                if len(running) == n:
                    break
                if time.monotonic() - t > 120:
                    raise BenchError(f"only {len(running)} of {n} replicas running after 120 s")
                time.sleep(0.1)
            self.add("fleet", "deploy", WHARF, time.monotonic() - t)
            if sorted(running.values()) != sorted(names):
                raise BenchError(f"replicas not one per node: {sorted(running.values())}")
            self.fleet_n = n
        finally:
            if fleet is not None:
                with ThreadPoolExecutor(16) as pool:
                    list(pool.map(fleet.close_runner, list(fleet.runners.values())))
                fleet.server.stop()
            lan.close()

    # --- the web catalog at scale
    def catalog(self):
        """Seeds a wharf-server of its own (auth on, team-a/* public) with `wharf-server seed`, then times each of
        CATALOG_URLS; the server's log is catalog.log."""
        data = self.tmp / "catalog-data"
        data.mkdir()
        binary = str(self.bin_dir / "wharf-server")
        password = "bench-" + os.urandom(8).hex()
        env = {**os.environ, "NO_COLOR": "1", "WHARF_AUTH_ENABLED": "true", "WHARF_ADMIN_PASSWORD": password,
               "WHARF_LOG_ACCESS": "false"}  # fmt: skip
        log(f"web catalog: seeding {self.p['catalog_repos']} repositories, {self.p['catalog_tags']} tags")
        t = time.monotonic()
        out = sh([binary, "--data-dir", str(data), "seed", "--repositories", str(self.p["catalog_repos"]),
                  "--tags", str(self.p["catalog_tags"]), "--json"], env=env, timeout=1200).stdout  # fmt: skip
        report = json.loads(out.strip().splitlines()[-1])
        self.catalog_seed = dict(report, wall=time.monotonic() - t)
        for pattern in ("library/*", "team-a/*"):
            sh([binary, "--data-dir", str(data), "public", pattern, "on"], env=env)
        port = free_port()
        host = f"127.0.0.1:{port}"
        with open(self.logdir / "catalog.log", "ab") as logf:
            proc = subprocess.Popen([binary, "serve", "--listen", host, "--data-dir", str(data)], env=env,
                                    stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, start_new_session=True)  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while True:
                if proc.poll() is not None:
                    raise BenchError(f"catalog server exited with {proc.returncode}; log {self.logdir}/catalog.log")
                try:
                    c = conn(host)
                    c.request("GET", "/healthz")
                    r = c.getresponse()
                    r.read()
                    c.close()
                    if r.status == 200:
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise BenchError("catalog server did not come up in 60 s")
                time.sleep(0.1)
            c = conn(host)
            basic = base64.b64encode(f"admin:{password}".encode()).decode()
            c.request("GET", "/token?service=wharf-registry", headers={"Authorization": f"Basic {basic}"})
            r = c.getresponse()
            token = json.loads(r.read())["token"]
            c.request("GET", "/api/v1/repositories/library/big/manifests/latest",
                      headers={"Authorization": f"Bearer {token}"})  # fmt: skip
            r = c.getresponse()
            big_latest = json.loads(r.read())["digest"]
            self.catalog_skipped = []
            for label, path, who in CATALOG_URLS:
                path = path.format(big_latest=big_latest)
                headers = {"Authorization": f"Bearer {token}"} if who == "admin" else {}
                times = []
                for i in range(self.p["catalog_n"] + 1):
                    t = time.perf_counter()
                    c.request("GET", path, headers=headers)
                    r = c.getresponse()
                    body = r.read()
                    ms = (time.perf_counter() - t) * 1000
                    page = not path.startswith("/api/")
                    if page and r.status == 404 and r.getheader("content-type", "").startswith("application/json"):
                        break  # no web UI in this build: the API's fallback answered
                    if r.status != 200:
                        raise BenchError(f"GET {path} ({who}) -> {r.status}: {body[:300]!r}")
                    if i:  # the first is a warm-up
                        times.append(ms)
                if not times:
                    self.catalog_skipped.append(label)
                    log(f"  {label}: skipped (this build has no web UI)")
                    continue
                self.results[("catalog", label, "wharf")] = times
                self.catalog_paths = getattr(self, "catalog_paths", {})
                self.catalog_paths[label] = (path, who)
                log(f"  {label}: median {median(times):.1f} ms, p95 {p95(times):.1f} ms")
            c.close()
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            shutil.rmtree(data, ignore_errors=True)

    def setup_registries(self):
        self.regs[WHARF] = WharfServer(self.bin_dir / "wharf-server", self.tmp, self.logdir)
        self.regs[DIST] = Distribution(self.tmp, self.logdir)
        for reg in self.regs.values():
            reg.start()
        time.sleep(1.0)
        for reg in self.regs.values():
            self.add("mem", "idle", reg.name, reg.rss.sample())
            log(f"{reg.name} up on {reg.host}, pid {reg.proc.pid}, idle RSS {reg.rss.current / 1024:.1f} MiB")
        # Small-request fixtures: one image under `tags` tags, and `repos` repositories.
        self.small_image = busybox_image()
        for reg in self.regs.values():
            api = RegistryApi(reg.url)
            digest = self.small_image.push(api, "bench/small", "latest", docker=True)
            c = conn(reg.host)
            raw, _ = self.small_image.manifest(docker=True)
            for i in range(self.p["tags"]):
                request(c, "PUT", f"/v2/bench/small/manifests/t{i:03d}", raw, {"Content-Type": DOCKER_MANIFEST},
                        expect=(201,))  # fmt: skip
            for i in range(self.p["repos"]):
                self.small_image.push(api, f"bench/repo{i:03d}", "latest", docker=True)
            c.close()
            self.small_manifest_digest = digest
        self.small_blob = self.small_image.layers[0].digest

    # --- small requests
    def small_requests(self, rnd):
        kinds = [
            ("manifest GET by tag", "/v2/bench/small/manifests/latest", None, [f"Accept: {ACCEPT}"]),
            ("blob HEAD", f"/v2/bench/small/blobs/{self.small_blob}", "ab", []),
            ("tags list", "/v2/bench/small/tags/list", None, []),
            ("/v2/_catalog", "/v2/_catalog", None, []),
        ]
        for reg in self.order(rnd):
            reg.rss.begin()
            for kind, path, script, headers in kinds:
                for conns in self.p["conns"]:
                    if script == "ab":
                        res = run_ab_head(reg.url + path, conns, self.p["small_dur"], self.tmp / "ab.csv")
                    else:
                        res = run_wrk(reg.url + path, conns, self.p["small_dur"], None, headers)
                    if res["problems"]:
                        self.error(f"{reg.name} {kind} c={conns}: {'; '.join(res['problems'])}")
                    self.add("small", (kind, conns, "rps"), reg.name, res["rps"])
                    self.add("small", (kind, conns, "p99"), reg.name, res["p99_ms"])
            peak = reg.rss.end()
            self.add("mem", "small", reg.name, peak)
            reg.check_alive()
            log(f"  small requests on {reg.name}: peak RSS {peak / 1024:.1f} MiB")

    # --- uploads and downloads
    def transfers(self, rnd):
        big, chunk, n, size = self.p["big"], self.p["chunk"], self.p["conc_n"], self.p["conc_size"]
        files = {k: self.random_file(f"{k}-{rnd}.bin", big if k != "conc" else n * size)
                 for k in ("mono", "chunked", "conc")}  # fmt: skip
        digests = {k: self.file_digest(files[k]) for k in ("mono", "chunked")}
        conc_digests = [self.file_digest(files["conc"], i * size, size) for i in range(n)]
        self.physical_limits(files["mono"])
        upload_kinds = [
            ("monolithic", f"monolithic {big // MiB} MiB"),
            ("chunked", f"chunked {big // MiB} MiB in {chunk // MiB} MiB chunks"),
            ("concurrent", f"{n} concurrent x {self.size_label(size)}"),
        ]
        self.upload_labels = dict(upload_kinds)
        for reg in self.order(rnd):
            repo = f"bench/up{rnd}"
            if "upload" in self.only:
                reg.rss.begin()
                for kind, label in upload_kinds:
                    t = self.timed_upload(reg, repo, kind, files, digests, conc_digests)
                    total = big if kind != "concurrent" else n * size
                    self.add("upload", kind, reg.name, total / MB / t)
                peak = reg.rss.end()
                self.add("mem", "upload", reg.name, peak)
                log(f"  uploads on {reg.name}: " + ", ".join(
                    f"{k} {self.results[('upload', k, reg.name)][-1]:.0f} MB/s" for k, _ in upload_kinds)
                    + f"; peak RSS {peak / 1024:.1f} MiB")  # fmt: skip
            else:  # downloads need the blobs
                for kind, _ in upload_kinds:
                    self.timed_upload(reg, repo, kind, files, digests, conc_digests)
            if "download" in self.only:
                reg.rss.begin()
                self.downloads(reg, repo, digests["mono"], conc_digests, big)
                self.add("mem", "download", reg.name, reg.rss.end())
            reg.check_alive()
        for f in files.values():
            f.unlink()

    @staticmethod
    def size_label(size):
        return f"{size // MiB} MiB" if size >= MiB else f"{size // KiB} KiB"

    def timed_upload(self, reg, repo, kind, files, digests, conc_digests) -> float:
        big, chunk, n, size = self.p["big"], self.p["chunk"], self.p["conc_n"], self.p["conc_size"]
        if kind in ("monolithic", "chunked"):
            key = "mono" if kind == "monolithic" else "chunked"
            c = conn(reg.host)
            with open(files[key], "rb") as f:
                t0 = time.perf_counter()
                upload_blob(c, repo, f, 0, big, digests[key], chunk if kind == "chunked" else None)
                t = time.perf_counter() - t0
            c.close()
            return t
        barrier = threading.Barrier(n + 1)
        errs = []

        def worker(i):
            c = conn(reg.host)
            c.connect()
            with open(files["conc"], "rb") as f:
                barrier.wait()
                try:
                    upload_blob(c, repo, f, i * size, size, conc_digests[i])
                except Exception as e:  # noqa: BLE001
                    errs.append(f"{type(e).__name__}: {e}")
            c.close()

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
        for th in threads:
            th.start()
        barrier.wait()
        t0 = time.perf_counter()
        for th in threads:
            th.join()
        t = time.perf_counter() - t0
        if errs:
            raise BenchError(f"{reg.name}: {len(errs)} of {n} concurrent uploads failed: {errs[0]}")
        return t

    def downloads(self, reg, repo, big_digest, conc_digests, big):
        url = f"{reg.url}/v2/{repo}/blobs/{big_digest}"
        out = sh(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{size_download} %{time_total}", url]).stdout
        code, got, secs = out.split()
        if code != "200" or int(got) != big:
            raise BenchError(f"{reg.name}: GET big blob -> {code}, {got} of {big} bytes")
        self.add("download", "single", reg.name, big / MB / float(secs))
        # 64 connections, each fetching the 4 MiB blobs in turn, for dl_dur seconds.
        lua = self.tmp / f"download-{reg.name}.lua"
        paths = ", ".join(f'"/v2/{repo}/blobs/{d}"' for d in conc_digests)
        lua.write_text(
            f"local paths = {{{paths}}}\nlocal i = 0\n"
            "function setup(thread) thread:set('offset', math.random(#paths)) end\n"
            "function init(args) i = tonumber(wrk.thread:get('offset')) or 0 end\n"
            "function request()\n  i = i % #paths + 1\n  return wrk.format('GET', paths[i])\nend\n"
        )
        res = run_wrk(reg.url + "/", self.p["conc_n"], self.p["dl_dur"], lua)
        if res["problems"]:
            self.error(f"{reg.name} concurrent downloads: {'; '.join(res['problems'])}")
        self.add("download", "concurrent", reg.name, res["rps"] * self.p["conc_size"] / MB)
        log(f"  downloads on {reg.name}: single {self.results[('download', 'single', reg.name)][-1]:.0f} MB/s, "
            f"concurrent {self.results[('download', 'concurrent', reg.name)][-1]:.0f} MB/s")  # fmt: skip

    def physical_limits(self, path: Path):
        size = path.stat().st_size
        t0 = time.perf_counter()
        out = sh(["openssl", "dgst", "-sha256", path]).stdout
        t = time.perf_counter() - t0
        if not re.search(r"= [0-9a-f]{64}$", out.strip()):
            raise BenchError(f"openssl dgst output: {out}")
        self.add("limit", "sha256", "limit", size / MB / t)
        ddout = self.tmp / "dd.out"
        t0 = time.perf_counter()
        sh(["dd", f"if={path}", f"of={ddout}", "bs=8M", "oflag=direct"])
        t = time.perf_counter() - t0
        ddout.unlink()
        self.add("limit", "dd write", "limit", size / MB / t)
        t0 = time.perf_counter()
        sh(["dd", f"if={path}", "of=/dev/null", "bs=8M"])
        t = time.perf_counter() - t0
        self.add("limit", "read", "limit", size / MB / t)

    # --- mixed (zb-like)
    def mixed(self, rnd):
        if not hasattr(self, "mixed_file"):
            self.mixed_setup()
        for size_mb in self.p["mixed_sizes"]:
            plan = self.mixed_plan[size_mb]
            for reg in self.order(rnd):
                reg.rss.begin()
                t, moved, nops = self.mixed_run(reg, rnd, size_mb, plan)
                peak = reg.rss.end()
                self.add("mem", "mixed", reg.name, peak)
                self.add("mixed", (size_mb, "MB/s"), reg.name, moved / MB / t)
                self.add("mixed", (size_mb, "ops/s"), reg.name, nops / t)
                log(f"  mixed {size_mb} MB on {reg.name}: {moved / MB / t:.0f} MB/s, {nops / t:.1f} ops/s")
                reg.check_alive()

    def mixed_setup(self):
        fsize = self.p["mixed_file"]
        self.mixed_file = self.random_file("mixed.bin", fsize)
        rounds = self.p["rounds"]
        self.mixed_plan = {}
        self.mixed_pushes = {}
        for size_mb in self.p["mixed_sizes"]:
            size = size_mb * 1_000_000
            nops = self.p["mixed_ops"][size_mb]
            rng = random.Random(size_mb)
            plan = ["push" if rng.random() < 0.25 else "pull" for _ in range(nops)]
            npush = plan.count("push")
            slots = rounds * npush + 8
            step = (fsize - size - 1) // slots
            if step < 1:
                raise BenchError(f"mixed data file too small for {size_mb} MB")
            # offsets 0..: pushes (unique per round), last 4 slots: the images pulled
            offsets = [k * step for k in range(slots)]
            self.mixed_plan[size_mb] = plan
            pushes = {}
            for r in range(rounds):
                for j in range(npush):
                    off = offsets[r * npush + j]
                    pushes[(r, j)] = (off, self.file_digest(self.mixed_file, off, size))
            self.mixed_pushes[size_mb] = pushes
            pulls = [(offsets[-1 - k], self.file_digest(self.mixed_file, offsets[-1 - k], size)) for k in range(4)]
            # A tiny config shared by the images of this size.
            config = json.dumps({"architecture": "amd64", "os": "linux", "size": size_mb}).encode()
            cfg = (sha256_digest(config), len(config))
            for reg in self.regs.values():
                c = conn(reg.host)
                r, _ = request(c, "POST", f"/v2/bench/mixed{size_mb}/blobs/uploads/", expect=(202,))
                request(c, "PUT", with_query(location_path(r), f"digest={cfg[0]}"), config,
                        {"Content-Type": "application/octet-stream"}, expect=(201,))  # fmt: skip
                with open(self.mixed_file, "rb") as f:
                    for k, (off, dig) in enumerate(pulls):
                        upload_blob(c, f"bench/mixed{size_mb}", f, off, size, dig)
                        put_manifest(c, f"bench/mixed{size_mb}", f"pull{k}", [(dig, size)], cfg)
                c.close()
            self.mixed_cfg = getattr(self, "mixed_cfg", {})
            self.mixed_cfg[size_mb] = (cfg, pulls)

    def mixed_run(self, reg, rnd, size_mb, plan):
        size = size_mb * 1_000_000
        cfg, pulls = self.mixed_cfg[size_mb]
        pushes = self.mixed_pushes[size_mb]
        repo = f"bench/mixed{size_mb}"
        ops = []
        j = 0
        for k, op in enumerate(plan):
            if op == "push":
                ops.append(("push", j))
                j += 1
            else:
                ops.append(("pull", k % len(pulls)))
        lock = threading.Lock()
        next_op = [0]
        moved = [0]
        errs = []
        clients = 16
        barrier = threading.Barrier(clients + 1)

        def worker():
            c = conn(reg.host)
            c.connect()
            buf = bytearray(1 * MiB)
            f = open(self.mixed_file, "rb")
            barrier.wait()
            try:
                while True:
                    with lock:
                        if next_op[0] >= len(ops) or errs:
                            break
                        op, arg = ops[next_op[0]]
                        next_op[0] += 1
                    if op == "pull":
                        _, raw = request(c, "GET", f"/v2/{repo}/manifests/pull{arg}", headers={"Accept": ACCEPT})
                        doc = json.loads(raw)
                        got = read_blob(c, f"/v2/{repo}/blobs/{doc['config']['digest']}", buf)
                        got += sum(read_blob(c, f"/v2/{repo}/blobs/{layer['digest']}", buf) for layer in doc["layers"])
                        if got < size:
                            raise BenchError(f"pulled {got} bytes, expected {size}+")
                    else:
                        off, dig = pushes[(rnd, arg)]
                        upload_blob(c, repo, f, off, size, dig)
                        put_manifest(c, repo, f"push{rnd}-{arg}", [(dig, size)], cfg)
                    with lock:
                        moved[0] += size
            except Exception as e:  # noqa: BLE001
                errs.append(f"{type(e).__name__}: {e}")
            finally:
                f.close()
                c.close()

        threads = [threading.Thread(target=worker) for _ in range(clients)]
        for th in threads:
            th.start()
        barrier.wait()
        t0 = time.perf_counter()
        for th in threads:
            th.join()
        t = time.perf_counter() - t0
        if errs:
            raise BenchError(f"{reg.name} mixed {size_mb} MB: {errs[0]}")
        return t, moved[0], len(ops)

    # --- runner
    def runner(self):
        wharf = self.regs[WHARF]
        # A bridge of its own, so the benchmark never shares one with a daemon on this host.
        bridge, subnet = unique_bridge()
        self.daemon = RunnerDaemon(self.bin_dir / "wharf-runner", self.tmp / "runner-root",
                                   self.tmp / "runner-sock" / "runner.sock", self.logdir / "wharf-runner.log",
                                   wharf.host, bridge=bridge, bridge_subnet=subnet)  # fmt: skip
        self.daemon.start()
        if "run" in self.only:
            self.guarded("runner: run", self.runner_run, wharf)
        if "pull" in self.only:
            self.guarded("runner: pull", self.runner_pull, wharf)

    def cli(self, *args, check=True, timeout=600):
        return sh([self.daemon.binary, *args], check=check, timeout=timeout, env=self.daemon.cli_env())

    def runner_run(self, wharf):
        api = RegistryApi(wharf.url)
        busybox_image().push(api, "bench/busybox", "1", docker=True)
        ref = f"{wharf.host}/bench/busybox:1"
        docker_ref = f"localhost:{wharf.port}/bench/busybox:1"
        self.cli("pull", ref)
        sh([self.docker, "pull", docker_ref])
        self.docker_refs.append(docker_ref)
        # runc: a bundle with the same busybox rootfs, `runc spec` with args ["true"], no terminal.
        bundle = self.tmp / "runc-bundle"
        rootfs = bundle / "rootfs"
        rootfs.mkdir(parents=True)
        import io

        with tarfile.open(fileobj=io.BytesIO(busybox_image().layers[0].tar)) as tar:
            tar.extractall(rootfs)
        sh(["runc", "spec", "--bundle", bundle])
        spec = json.loads((bundle / "config.json").read_text())
        spec["process"]["args"] = ["true"]
        spec["process"]["terminal"] = False
        (bundle / "config.json").write_text(json.dumps(spec, indent=2))
        runc_root = self.tmp / "runc-state"
        counter = [0]

        def runc_cmd():
            counter[0] += 1
            return ["runc", "--root", str(runc_root), "run", "--bundle", str(bundle), f"wharf-bench-{os.getpid()}-{counter[0]}"]

        systems = [
            # --network none on both sides (runc's bundle has an empty network namespace too).
            ("wharf-runner run --rm --network none",
             lambda: [str(self.daemon.binary), "run", "--rm", "--network", "none", ref, "true"]),
            ("runc run", runc_cmd),
            ("docker run --rm --network none", lambda: [self.docker, "run", "--rm", "--network", "none", docker_ref, "true"]),
        ]  # fmt: skip
        self.run_systems = [name for name, _ in systems]
        env = self.daemon.cli_env()
        n = self.p["runs"]
        for i in range(n + 1):  # the first repetition warms up and is not counted
            rot = i % len(systems)
            for name, cmd in systems[rot:] + systems[:rot]:
                argv = cmd()
                t0 = time.perf_counter()
                proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, env=env, timeout=120)  # fmt: skip
                t = time.perf_counter() - t0
                if proc.returncode != 0:
                    raise BenchError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr[-1000:]!r}")
                if i:
                    self.add("run", name, "runner", t * 1000)
        log("  run: " + ", ".join(f"{name} {self.med('run', name, 'runner'):.1f} ms" for name in self.run_systems))

    def runner_pull(self, wharf):
        layer_size = self.p["pull_layer"]
        log(f"  building a 5-layer image of ~{5 * layer_size // MiB} MiB")
        layers = []
        for k in range(5):
            # The bottom layer carries busybox too: 5 layers in all, as in the issue.
            entries: list[Entry] = (busybox_entries() if k == 0 else []) + [dir_entry(f"data{k}")]
            for j in range(100):  # small, compressible files
                text = (f"layer {k} file {j} " * 64).encode()
                entries.append(Entry(f"data{k}/small{j:03d}.txt", tarfile.REGTYPE, text))
            big_files = 8
            for j in range(big_files):
                entries.append(Entry(f"data{k}/big{j}.bin", tarfile.REGTYPE, os.urandom(layer_size // big_files)))
            layers.append(make_layer(entries, compresslevel=1))
        image = Image(layers)
        image.push(RegistryApi(wharf.url), "bench/big", "1", docker=True)
        total = sum(len(layer.blob) for layer in image.layers)
        self.pull_size = total
        self.pull_layers = len(image.layers)
        del layers, image
        ref = f"{wharf.host}/bench/big:1"
        docker_ref = f"localhost:{wharf.port}/bench/big:1"
        self.docker_refs.append(docker_ref)
        oci_dir, bundle = self.tmp / "oci", self.tmp / "umoci-bundle"

        def clear_wharf():
            self.cli("rmi", ref, check=False)
            self.cli("image", "prune", "-a", "-f")

        def clear_docker():
            sh([self.docker, "rmi", docker_ref], check=False)

        def clear_skopeo():
            shutil.rmtree(oci_dir, ignore_errors=True)
            shutil.rmtree(bundle, ignore_errors=True)

        def pull_wharf():
            self.cli("pull", ref)

        def pull_docker():
            sh([self.docker, "pull", docker_ref])

        def pull_skopeo():
            sh(["skopeo", "copy", "--quiet", "--src-tls-verify=false", f"docker://{ref}", f"oci:{oci_dir}:1"])
            sh(["umoci", "unpack", "--image", f"{oci_dir}:1", bundle])

        systems = [
            ("wharf-runner pull", clear_wharf, pull_wharf),
            ("docker pull", clear_docker, pull_docker),
            ("skopeo copy + umoci unpack", clear_skopeo, pull_skopeo),
        ]
        self.pull_systems = [name for name, _, _ in systems]
        for i in range(self.p["pull_runs"]):
            rot = i % len(systems)
            for name, clear, pull in systems[rot:] + systems[:rot]:
                clear()
                sh(["sync"])
                t0 = time.perf_counter()
                pull()
                self.add("pull", name, "runner", time.perf_counter() - t0)
            log(f"  pull run {i + 1}: " + ", ".join(
                f"{n} {self.results[('pull', n, 'runner')][-1]:.2f} s" for n in self.pull_systems))  # fmt: skip
        for _, clear, _ in systems:
            clear()

    # --- teardown
    def teardown(self):
        for ref in self.docker_refs:
            sh([self.docker, "rmi", ref], check=False)
        if self.daemon is not None:
            try:
                self.daemon.stop()
            except Exception as e:  # noqa: BLE001
                self.error_nofail(f"wharf-runner daemon stop: {e}")
            self.daemon.remove_bridge()
            # Unpacked layers and container dirs may hold mounts the daemon left: unmount before removing.
        for reg in self.regs.values():
            reg.stop()
        if not self.args.keep:
            for m in sorted(mounts_under(self.tmp), reverse=True):
                subprocess.run(["umount", "-l", m], capture_output=True)
            shutil.rmtree(self.tmp, ignore_errors=True)

    def error_nofail(self, msg):
        log(f"ERROR: {msg}")
        self.errors.append(msg)

    # --- report
    def write_report(self):
        out = Path(self.args.out)
        notes = ""
        if out.exists():
            text = out.read_text()
            if NOTES_MARK in text:
                notes = text[text.index(NOTES_MARK) + len(NOTES_MARK):]
        body = Report(self).render()
        out.write_text(body + "\n" + NOTES_MARK + (notes if notes else "\n"))


def mounts_under(path: Path) -> list[str]:
    prefix = str(path).rstrip("/") + "/"
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4])
            if mp.startswith(prefix):
                found.append(mp)
    return found


# ----------------------------------------------------------------------------- report


def fmt(x, digits=0, unit=""):
    if x is None:
        return "—"
    if digits == 0 and abs(x) >= 100:
        return f"{x:,.0f}{unit}"
    return f"{x:.{max(digits, 1) if abs(x) < 100 else digits}f}{unit}"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def fr(r):
    return "—" if r is None else f"{r:.2f}x"


def table(head, rows):
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def version(cmd, pattern=None):
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        text = (proc.stdout + proc.stderr).strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unavailable ({e})"
    if pattern:
        m = re.search(pattern, text, re.M)
        return m.group(1) if m else text.splitlines()[0] if text else "?"
    return text.splitlines()[0] if text else "?"


class Report:
    def __init__(self, bench: Bench):
        self.b = bench
        self.targets = []  # (target, measured, met)

    def target(self, what, measured, met):
        self.targets.append((what, measured, "—" if met is None else ("met" if met else "MISSED")))

    def render(self) -> str:
        b = self.b
        mode = "quick" if b.quick else "full"
        parts = [
            "# wharf benchmarks",
            "",
            f"Generated by `bench/run{' --quick' if b.quick else ''}` ({mode} mode: {b.p['rounds']} round(s)) on "
            f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}, in {time.time() - b.started:.0f} s. "
            f"wharf build: **{b.args.build_label}**"
            + (" — debug-build numbers, not comparable with release ones." if "debug" in b.args.build_label else ".")
            + " Everything above the notes marker is regenerated; write findings below it.",
            "",
            "Medians over rounds (registry) or runs (runner); systems alternate within each round, and the first "
            "system of a round alternates too. Ratios are wharf/peer (higher is better for rates, lower is better "
            "for times: those are marked).",
            "",
            self.machine(),
            "",
        ]
        if b.errors:
            parts += ["## Errors", "", *(f"- {e.splitlines()[0]}" for e in b.errors), ""]
        for section in (self.small, self.upload, self.download, self.mixed, self.memory, self.web_catalog, self.run,
                        self.pull, self.fleet):  # fmt: skip
            try:
                text = section()
            except Exception as e:  # noqa: BLE001
                text = f"(section failed: {type(e).__name__}: {e})"
                b.errors.append(text)
            if text:
                parts += [text, ""]
        parts += ["## Targets", ""]
        if b.quick:
            parts += ["Quick mode: small sizes, 1 s workloads and few runs, so these verdicts are indicative only.", ""]
        parts += [table(["target", "measured", "result"], self.targets), ""]
        return "\n".join(parts)

    def machine(self):
        cpu = "?"
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        mem = "?"
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal"):
                    mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
        osname = "?"
        try:
            for line in open("/etc/os-release"):
                if line.startswith("PRETTY_NAME="):
                    osname = line.split("=", 1)[1].strip().strip('"')
        except OSError:
            pass
        commit = version(["git", "-C", str(REPO), "describe", "--always", "--dirty"])
        d = self.b.docker
        rows = [
            ("machine", f"{os.cpu_count()} cores ({cpu}), {mem} memory, kernel {platform.release()}, {osname}"),
            ("wharf", f"commit {commit}, {self.b.args.build_label} build"),
            ("distribution", version(["docker-registry", "--version"])),
            ("runc", version(["runc", "--version"])),
            ("docker", version([d, "version", "--format", "client {{.Client.Version}}, daemon {{.Server.Version}}"])),
            ("skopeo", version(["skopeo", "--version"])),
            ("umoci", version(["umoci", "--version"])),
            ("wrk", version(["wrk", "-v"], r"^(wrk \S+)")),
            ("curl", version(["curl", "--version"], r"^(curl \S+)")),
            ("ab", version(["ab", "-V"], r"(Version \S+)")),
            ("openssl", version(["openssl", "version"], r"^(OpenSSL \S+)")),
            ("load average", f"{self.b.load_start} at the start, {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
                             "at the end (1/5/15 min; the machine is shared, so other work may run)"),
        ]
        return "## Machine and versions\n\n" + table(["", ""], rows)

    # each section returns markdown or ""
    def small(self):
        b = self.b
        if not any(k[0] == "small" for k in b.results):
            return ""
        rows = []
        kinds = []
        for (g, key, _), _v in b.results.items():
            if g == "small" and key[0] not in kinds:
                kinds.append(key[0])
        for kind in kinds:
            for c in b.p["conns"]:
                w, d = b.med("small", (kind, c, "rps"), WHARF), b.med("small", (kind, c, "rps"), DIST)
                wp, dp = b.med("small", (kind, c, "p99"), WHARF), b.med("small", (kind, c, "p99"), DIST)
                rows.append([kind, c, fmt(w), fmt(d), fr(ratio(w, d)), fmt(wp, 2), fmt(dp, 2)])
                if c == 16:
                    r = ratio(w, d)
                    self.target(f"{kind}: req/s at 16 connections ≥ 12x distribution",
                                f"{fmt(w)} vs {fmt(d)} req/s = {fr(r)}", None if r is None else r >= 12)  # fmt: skip
                    self.target(f"{kind}: p99 at 16 connections < 2 ms", f"{fmt(wp, 2)} ms",
                                None if wp is None else wp < 2)  # fmt: skip
        head = ["request", "connections", "wharf req/s", "distribution req/s", "wharf/distribution",
                "wharf p99 ms", "distribution p99 ms"]  # fmt: skip
        return (f"## Small requests ({b.p['small_dur']} s each: wrk --latency; blob HEAD with `ab -i -k`, as Debian's wrk "
                "4.1 cannot do HEAD on responses with a Content-Length, wg/wrk#198)\n\n" + table(head, rows))

    def upload(self):
        b = self.b
        if not any(k[0] == "upload" for k in b.results):
            return ""
        sha, dd = b.med("limit", "sha256", "limit"), b.med("limit", "dd write", "limit")
        rows = []
        for kind, label in b.upload_labels.items():
            w, d = b.med("upload", kind, WHARF), b.med("upload", kind, DIST)
            rows.append([label, fmt(w), fmt(d), fr(ratio(w, d)), fmt(sha), fmt(dd), f"{fmt(100 * ratio(w, sha))} %"
                         if ratio(w, sha) else "—"])  # fmt: skip
            r, rs = ratio(w, d), ratio(w, sha)
            self.target(f"upload {label}: ≥ 4x distribution", f"{fmt(w)} vs {fmt(d)} MB/s = {fr(r)}",
                        None if r is None else r >= 4)  # fmt: skip
            self.target(f"upload {label}: ≥ 70% of sha256 speed", f"{fmt(w)} vs {fmt(sha)} MB/s = "
                        f"{fmt(100 * rs) if rs else '—'} %", None if rs is None else rs >= 0.7)  # fmt: skip
        head = ["upload", "wharf MB/s", "distribution MB/s", "wharf/distribution", "limit: openssl sha256 MB/s",
                "limit: dd oflag=direct MB/s", "wharf / sha256"]  # fmt: skip
        return ("## Blob upload (digest verified by the server; bodies sent with sendfile from a file)\n\n"
                + table(head, rows))  # fmt: skip

    def download(self):
        b = self.b
        if not any(k[0] == "download" for k in b.results):
            return ""
        rd = b.med("limit", "read", "limit")
        rows = []
        labels = {"single": f"{b.p['big'] // MiB} MiB, 1 connection (curl)",
                  "concurrent": f"{b.p['conc_n']} concurrent x {b.size_label(b.p['conc_size'])} (wrk, "
                                f"{b.p['dl_dur']} s)"}  # fmt: skip
        for kind, label in labels.items():
            w, d = b.med("download", kind, WHARF), b.med("download", kind, DIST)
            rr = ratio(w, rd)
            rows.append([label, fmt(w), fmt(d), fr(ratio(w, d)), fmt(rd), f"{fmt(100 * rr)} %" if rr else "—"])
            if kind == "single":
                r = ratio(w, d)
                self.target("download at 1 connection ≥ distribution", f"{fmt(w)} vs {fmt(d)} MB/s = {fr(r)}",
                            None if r is None else r >= 1)  # fmt: skip
                self.target("download at 1 connection ≥ 80% of a file read", f"{fmt(w)} vs {fmt(rd)} MB/s = "
                            f"{fmt(100 * rr) if rr else '—'} %", None if rr is None else rr >= 0.8)  # fmt: skip
        head = ["download", "wharf MB/s", "distribution MB/s", "wharf/distribution", "limit: file read MB/s (dd)",
                "wharf / read"]  # fmt: skip
        return "## Blob download\n\n" + table(head, rows)

    def mixed(self):
        b = self.b
        if not any(k[0] == "mixed" for k in b.results):
            return ""
        rows = []
        for s in b.p["mixed_sizes"]:
            w, d = b.med("mixed", (s, "MB/s"), WHARF), b.med("mixed", (s, "MB/s"), DIST)
            wo, do = b.med("mixed", (s, "ops/s"), WHARF), b.med("mixed", (s, "ops/s"), DIST)
            rows.append([f"{s} MB", b.p["mixed_ops"][s], fmt(w), fmt(d), fr(ratio(w, d)), fmt(wo, 1), fmt(do, 1)])
        head = ["image size", "operations", "wharf MB/s", "distribution MB/s", "wharf/distribution", "wharf ops/s",
                "distribution ops/s"]  # fmt: skip
        return ("## Mixed, like zot's zb: 75% pull / 25% push, 16 clients\n\nA pull is manifest + config + layer "
                "GETs, a push is layer upload + manifest PUT; single-layer images.\n\n" + table(head, rows))

    def memory(self):
        b = self.b
        rows = []
        labels = [("idle", "idle (after start)"), ("small", "peak, small requests"), ("upload", "peak, uploads"),
                  ("download", "peak, downloads"), ("mixed", "peak, mixed")]  # fmt: skip
        for key, label in labels:
            w, d = b.results.get(("mem", key, WHARF)), b.results.get(("mem", key, DIST))
            if not w and not d:
                continue
            wm, dm = (max(w) * 1024 / MB if w else None), (max(d) * 1024 / MB if d else None)
            rows.append([label, fmt(wm, 1), fmt(dm, 1), fr(ratio(wm, dm))])
            if key == "small":
                self.target("server RSS at peak during small requests < 30 MB", f"{fmt(wm, 1)} MB",
                            None if wm is None else wm < 30)  # fmt: skip
            if key == "upload":
                self.target("server RSS never above 100 MB during uploads", f"{fmt(wm, 1)} MB",
                            None if wm is None else wm <= 100)  # fmt: skip
        if not rows:
            return ""
        return ("## Server resident memory (VmRSS sampled every 25 ms; max over rounds)\n\n"
                + table(["", "wharf MB", "distribution MB", "wharf/distribution (lower is better)"], rows))

    def web_catalog(self):
        b = self.b
        paths = getattr(b, "catalog_paths", {})
        if not paths:
            return ""
        rows, worst = [], None
        for label, (path, who) in paths.items():
            v = b.results.get(("catalog", label, "wharf"), [])
            m, p = median(v), p95(v)
            worst = p if worst is None or (p is not None and p > worst) else worst
            rows.append([label, f"`{path}`", who, len(v), fmt(m, 1), fmt(p, 1)])
        self.target("web catalog at scale: every /api/v1 call and page < 100 ms (p95, 10,000 repositories / "
                    "100,000 tags)", f"slowest p95 {fmt(worst, 1)} ms", None if worst is None else worst < 100)  # fmt: skip
        skipped = getattr(b, "catalog_skipped", [])
        seed = b.catalog_seed
        return (f"## Web catalog at scale\n\n`wharf-server seed` filled a catalog with {seed['repositories']:,} "
                f"repositories, {seed['tags']:,} tags, {seed['manifests']:,} manifests and {seed['blobs']:,} blobs "
                f"in {seed['seconds']:.1f} s; then each call was made {b.p['catalog_n']} times (after a warm-up) on "
                "one keep-alive connection, auth on (admin: a bearer token; anonymous: only `library/*` and "
                "`team-a/*` are public)."
                + (f" Not measured (no web UI in this build): {', '.join(skipped)}." if skipped else "")
                + "\n\n" + table(["call", "path", "as", "n", "median ms", "p95 ms"], rows))

    def fleet(self):
        b = self.b
        n = getattr(b, "fleet_n", None)
        if n is None:
            return ""
        join, deploy = b.med("fleet", "join", WHARF), b.med("fleet", "deploy", WHARF)
        self.target(f"a deployment to {n} nodes running everywhere < 10 s", f"{fmt(deploy, 2)} s",
                    None if deploy is None else deploy < 10)  # fmt: skip
        return (f"## Fleet at scale\n\n{n} runner daemons, each in a network namespace of its own on one bridge "
                "with the server's (TLS, auth on, node TTL 3 s), join with one token each; then one deployment of "
                f"{n} replicas (spread: one per node) of the busybox test image running `sleep`.\n\n"
                + table(["step", "seconds"], [[f"start {n} daemons until every node is ready", fmt(join, 2)],
                                              ["`wharf-server deploy` until every replica is reported running",
                                               fmt(deploy, 2)]]))  # fmt: skip

    def run(self):
        b = self.b
        names = getattr(b, "run_systems", [])
        if not any(("run", n, "runner") in b.results for n in names):
            return ""
        w = b.med("run", names[0], "runner")
        rows = []
        for n in names:
            v = b.results.get(("run", n, "runner"), [])
            m = median(v)
            rows.append([f"`{n}`", len(v), fmt(m, 1), fmt(p95(v), 1), fr(ratio(w, m)) if n != names[0] else "—"])
        runc, docker = b.med("run", names[1], "runner"), b.med("run", names[2], "runner")
        self.target("run --rm IMAGE true under bare `runc run`", f"{fmt(w, 1)} vs {fmt(runc, 1)} ms",
                    None if w is None or runc is None else w < runc)  # fmt: skip
        r = ratio(docker, w)
        self.target("run --rm IMAGE true ≥ 15x faster than `docker run`", f"{fmt(w, 1)} vs {fmt(docker, 1)} ms = "
                    f"{fr(r)} faster", None if r is None else r >= 15)  # fmt: skip
        return (f"## Runner: start-to-exit of `true` in an already pulled busybox image\n\nTimes in ms; the first "
                "repetition of each is a warm-up and not counted; the systems take turns run by run. runc runs a "
                "bundle from `runc spec` (args [\"true\"], no terminal) on a plain directory with the same busybox "
                "rootfs: no overlay, no image store, no seccomp filter.\n\n"
                + table(["system", "runs", "median ms", "p95 ms", "wharf/this (lower is better)"], rows))

    def pull(self):
        b = self.b
        names = getattr(b, "pull_systems", [])
        if not any(("pull", n, "runner") in b.results for n in names):
            return ""
        w = b.med("pull", names[0], "runner")
        rows = []
        for n in names:
            v = b.results.get(("pull", n, "runner"), [])
            m = median(v)
            rows.append([f"`{n}`", len(v), fmt(m, 2), fmt(min(v) if v else None, 2), fmt(max(v) if v else None, 2),
                         fr(ratio(w, m)) if n != names[0] else "—"])  # fmt: skip
        docker = b.med("pull", names[1], "runner")
        r = ratio(docker, w)
        self.target("pull and unpack ≥ 2x faster than `docker pull`", f"{fmt(w, 2)} vs {fmt(docker, 2)} s = "
                    f"{fr(r)} faster", None if r is None else r >= 2)  # fmt: skip
        return (f"## Runner: pull and unpack of a {b.pull_layers}-layer image of {b.pull_size / MB:.0f} MB "
                "(compressed) from wharf-server\n\nSeconds; state cleared before each run (`rmi` + `image prune -a "
                "-f`, `docker rmi`, `rm -rf` of the OCI layout and bundle) and `sync`ed, outside the timing.\n\n"
                + table(["system", "runs", "median s", "min s", "max s", "wharf/this (lower is better)"], rows))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 round, ~1-2 s per workload, small sizes")
    ap.add_argument("--out", default=str(REPO / "BENCHMARKS.md"))
    ap.add_argument("--bin-dir", required=True)
    ap.add_argument("--build-label", default="release")
    ap.add_argument("--logdir", default=None)
    ap.add_argument("--docker", default=shutil.which("docker") or "/usr/bin/docker")
    ap.add_argument("--rounds", type=int, default=0, help="override the number of rounds")
    ap.add_argument("--only", default="", help=f"comma-separated subset of {','.join(GROUPS)} (for development)")
    ap.add_argument("--tmpdir", default=None, help="where the temp data dirs go (default: $TMPDIR or /tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (for debugging)")
    args = ap.parse_args()
    if args.logdir is None:
        args.logdir = tempfile.mkdtemp(prefix="wharf-bench-logs.")
    Path(args.logdir).mkdir(parents=True, exist_ok=True)
    bad = set(args.only.split(",")) - set(GROUPS) if args.only else set()
    if bad:
        ap.error(f"unknown groups in --only: {', '.join(sorted(bad))}")
    return Bench(args).run()


if __name__ == "__main__":
    sys.exit(main())
