"""kill -9 of wharf-server in the middle of concurrent pushes, then a restart on
the same data dir and port. Nothing the registry serves afterwards may be
corrupt, interrupted uploads resume or are refused cleanly, and nothing is 5xx."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from dataclasses import dataclass

import requests

from support import RegistryApi, describe, digest_matches, error_codes, parse_range_end, sha256_digest

REPO = "crash/blobs"
CHUNK = 256 * 1024
SLOW_UPLOADS = 4
SLOW_CHUNKS = 64  # 16 MiB each, paced so they are mid-flight at the kill
SLOW_PACE = 0.1
SMALL_BLOB = 1024 * 1024
LOOP_PACE = 0.05  # the looping clients make a few dozen blobs, not hundreds
MIN_DOCKER_SECONDS = 3.0  # let docker push get going before the kill


@dataclass
class Attempt:
    """One blob a client tried to upload, and how far it got before the crash."""

    kind: str
    data: bytes
    location: str | None = None  # the last upload URL the server handed out
    acked: int = 0  # bytes the server confirmed with Range
    sent: int = 0  # bytes sent, confirmed or in flight
    completed: bool = False  # the server answered 201
    error: BaseException | None = None

    @property
    def digest(self) -> str:
        return sha256_digest(self.data)


class Uploaders:
    """Client threads that push blobs with requests until told to stop."""

    def __init__(self, base_url: str):
        self.base_url = base_url
        self.attempts: list[Attempt] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []

    def new_attempt(self, kind: str, size: int) -> Attempt:
        attempt = Attempt(kind, os.urandom(size))
        with self.lock:
            self.attempts.append(attempt)
        return attempt

    def spawn(self, target, *args) -> None:
        thread = threading.Thread(target=self._guard, args=(target, *args), daemon=True)
        self.threads.append(thread)
        thread.start()

    def _guard(self, target, *args) -> None:
        api = RegistryApi(self.base_url)  # one session per thread
        try:
            target(api, *args)
        except Exception:  # noqa: BLE001 - recorded on the attempt by the target
            pass

    def _chunked(self, api: RegistryApi, attempt: Attempt, pace: float) -> None:
        try:
            attempt.location = api.start_upload(REPO)

            def on_chunk(location, stored):
                attempt.location, attempt.acked = location, stored
                attempt.sent = min(stored + CHUNK, len(attempt.data))
                if self.stop.is_set():
                    raise InterruptedError("stopped before the next chunk")
                time.sleep(pace)

            attempt.sent = min(CHUNK, len(attempt.data))
            location = api.push_chunks(attempt.location, attempt.data, 0, CHUNK, on_chunk)
            resp = api.finish_upload(location, attempt.digest)
            assert resp.status_code == 201, describe(resp)
            attempt.completed = True
        except BaseException as exc:
            attempt.error = exc
            raise

    def slow_chunked(self, api: RegistryApi) -> None:
        self._chunked(api, self.new_attempt("slow-chunked", SLOW_CHUNKS * CHUNK), SLOW_PACE)

    def fast_chunked_loop(self, api: RegistryApi) -> None:
        while not self.stop.is_set():
            self._chunked(api, self.new_attempt("fast-chunked", 3 * CHUNK + 1), LOOP_PACE)

    def monolithic_loop(self, api: RegistryApi) -> None:
        while not self.stop.is_set():
            attempt = self.new_attempt("monolithic", SMALL_BLOB)
            try:
                resp = api.monolithic_upload(REPO, attempt.data)
                assert resp.status_code == 201, describe(resp)
                attempt.completed = True
            except BaseException as exc:
                attempt.error = exc
                raise
            time.sleep(LOOP_PACE)

    def slow_ones(self) -> list[Attempt]:
        with self.lock:
            return [a for a in self.attempts if a.kind == "slow-chunked"]

    def summary(self) -> str:
        kinds = sorted({a.kind for a in self.attempts})
        return "attempts at the kill: " + ", ".join(
            f"{kind}: {sum(a.completed for a in self.attempts if a.kind == kind)} completed/"
            f"{sum(a.kind == kind for a in self.attempts)}"
            for kind in kinds
        )

    def unexpected_errors(self) -> list[str]:
        """Errors other than the connection dying: the server misbehaved before the kill."""
        return [
            f"{a.kind} upload {a.digest}: {a.error}"
            for a in self.attempts
            if a.error is not None and not isinstance(a.error, (requests.RequestException, InterruptedError))
        ]


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def check_blob_after_crash(api: RegistryApi, attempt: Attempt) -> str | None:
    """A blob is either absent (404) or intact; a 201-acknowledged one must be intact."""
    resp = api.get_blob(REPO, attempt.digest)
    if resp.status_code == 200:
        if not digest_matches(resp.content, attempt.digest):
            return f"CORRUPT blob served for {attempt.kind} {attempt.digest}: {len(resp.content)} bytes"
        return None
    if resp.status_code == 404 and not attempt.completed:
        return None
    why = "acknowledged with 201 before the crash but lost" if attempt.completed else "unexpected status"
    return f"{attempt.kind} blob {attempt.digest} {why}:\n{describe(resp)}"


def check_upload_after_crash(api: RegistryApi, attempt: Attempt) -> tuple[str, str | None]:
    """An interrupted upload session resumes to a correct blob, or is a clean 404.

    Returns (outcome, problem or None)."""
    what = f"interrupted {attempt.kind} upload (acked {attempt.acked}, sent {attempt.sent} bytes)"
    status = api.upload_status(attempt.location)
    if status.status_code == 404:
        if error_codes(status) != ["BLOB_UPLOAD_UNKNOWN"]:
            return "bad", f"{what}: 404 without BLOB_UPLOAD_UNKNOWN:\n{describe(status)}"
        return "refused", None
    if status.status_code != 204:
        return "bad", f"{what}: upload status is not 204 or 404:\n{describe(status)}"
    if attempt.acked == 0:
        return "empty", None  # `Range: 0-0` is ambiguous for an empty upload: nothing to resume
    try:
        stored = parse_range_end(status) + 1
        assert stored <= attempt.sent, f"server claims {stored} bytes stored\n{describe(status)}"
        location = api.push_chunks(api.url(status.headers["Location"]), attempt.data, stored, CHUNK)
        resp = api.finish_upload(location, attempt.digest)
        assert resp.status_code == 201, describe(resp)
        api.assert_blob(REPO, attempt.digest)
    except AssertionError as exc:
        return "bad", f"{what}: resuming failed: {exc}"
    return f"resumed at byte {stored} (acked {attempt.acked})", None


def test_kill9_during_concurrent_pushes(wharf, docker, images, docker_refs):
    ref = docker_refs.tag(images.ensure(images.big), f"{wharf.docker_host}/crash/big:1")
    docker_push = subprocess.Popen(
        [docker.binary, "push", ref], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    pushing_since = time.monotonic()

    uploaders = Uploaders(wharf.url)
    for _ in range(SLOW_UPLOADS):
        uploaders.spawn(uploaders.slow_chunked)
    for loop in (uploaders.fast_chunked_loop, uploaders.monolithic_loop):
        uploaders.spawn(loop)
    wait_for(
        lambda: (
            len(uploaders.slow_ones()) == SLOW_UPLOADS
            and all(a.acked >= 2 * CHUNK for a in uploaders.slow_ones())
        ),
        60,
        "slow uploads to get going",
    )
    wait_for(lambda: time.monotonic() - pushing_since >= MIN_DOCKER_SECONDS, 10, "docker push")
    docker_still_pushing = docker_push.poll() is None

    uploaders.stop.set()
    wharf.kill9()
    for thread in uploaders.threads:
        thread.join(timeout=60)
    assert all(not t.is_alive() for t in uploaders.threads), "client threads hung after the kill"
    wharf.start()  # same data dir, same port

    print(uploaders.summary())
    problems = uploaders.unexpected_errors()
    assert any(a.error for a in uploaders.slow_ones()), "the kill interrupted no upload"
    api = wharf.api()
    for attempt in uploaders.attempts:
        problems.append(check_blob_after_crash(api, attempt))
        if attempt.location and not attempt.completed:
            outcome, problem = check_upload_after_crash(api, attempt)
            print(f"interrupted {attempt.kind} upload: {outcome}")
            problems.append(problem)
    problems = [p for p in problems if p]

    # docker retries on its own; whatever it decided, a fresh push must now work.
    out, _ = docker_push.communicate(timeout=600)
    print(f"docker push across the crash (still pushing at the kill: {docker_still_pushing}) "
          f"exited {docker_push.returncode}:\n{out}")  # fmt: skip
    assert not problems, "\n\n".join(problems)
    digest, _ = docker.push(ref)
    manifest, _, _ = api.manifest_json("crash/big", "1")
    assert api.manifest_digest("crash/big", "1") == digest
    for descriptor in [manifest["config"], *manifest["layers"]]:
        api.assert_blob("crash/big", descriptor["digest"])


def test_upload_resumes_after_graceful_restart(wharf):
    """Upload state lives in the catalog: an idle session continues after a restart."""
    api = wharf.api()
    data = os.urandom(5 * CHUNK + 123)
    location = api.start_upload(REPO)
    location = api.push_chunks(location, data[: 3 * CHUNK], 0, CHUNK)

    wharf.restart()

    status = api.upload_status(location)
    assert status.status_code == 204, describe(status)
    assert parse_range_end(status) + 1 == 3 * CHUNK, describe(status)
    location = api.push_chunks(api.url(status.headers["Location"]), data, 3 * CHUNK, CHUNK)
    resp = api.finish_upload(location, sha256_digest(data))
    assert resp.status_code == 201, describe(resp)
    assert api.assert_blob(REPO, sha256_digest(data)) == data
