"""Webhook events with real clients: a wharf-server configured with
[[webhooks]] pointing at a python http.server receiver in this test, and a
real `docker push` / `docker pull`. Checks that the push event arrives, signed
with the endpoint's secret (HMAC-SHA256 over the exact body), with the digest
and tag docker pushed, that a pull is reported, that a repository outside the
endpoint's patterns causes nothing, and that the secret never reaches the log."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from support import free_port

EVENTS_MEDIA_TYPE = "application/vnd.docker.distribution.events.v1+json"


class Receiver:
    """An HTTP server on a loopback port that records every POST and answers 200."""

    def __init__(self):
        self.received: list[tuple[dict, bytes]] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with outer.lock:
                    outer.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/wharf-events"

    def events(self) -> list[tuple[dict, bytes, dict]]:
        with self.lock:
            got = list(self.received)
        out = []
        for headers, body in got:
            envelope = json.loads(body)
            assert len(envelope["events"]) == 1, envelope
            out.append((headers, body, envelope["events"][0]))
        return out

    def wait_for(self, match, timeout: float = 30.0) -> tuple[dict, bytes, dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for item in self.events():
                if match(item[2]):
                    return item
            time.sleep(0.1)
        raise AssertionError(f"no matching event within {timeout}s; got {[e for _, _, e in self.events()]}")

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def test_docker_push_and_pull_send_signed_events(wharf_factory, receiver, docker, images, docker_refs):
    secret = "whk-" + secrets.token_hex(16)
    server = wharf_factory(
        "wharf-hooks",
        # Debug logs too must never show the secret or the signature.
        env={"WHARF_LOG": "debug"},
        config=(
            "[[webhooks]]\n"
            f'url = "{receiver.url}"\n'
            f'secret = "{secret}"\n'
            'repositories = ["hooks/*"]\n'
            'actions = ["push", "pull"]\n'
            "timeout_secs = 5\n"
        ),
    )
    server.secrets.append(secret)  # the fixture fails the test if it shows up in the log
    server.start()

    src = images.ensure(images.busybox)
    ref = docker_refs.tag(src, f"{server.docker_host}/hooks/busybox:1")
    pushed, _ = docker.push(ref)

    headers, body, event = receiver.wait_for(
        lambda e: e["action"] == "push" and e["target"].get("tag") == "1"
    )
    assert headers["x-wharf-signature"] == signature(secret, body), "HMAC-SHA256 of the exact body"
    assert hmac.compare_digest(headers["x-wharf-signature"], signature(secret, body))
    assert headers["content-type"] == EVENTS_MEDIA_TYPE
    assert headers["x-wharf-event"] == "push"
    assert headers["x-wharf-delivery"] == event["id"]
    target = event["target"]
    assert target["repository"] == "hooks/busybox"
    assert target["digest"] == pushed
    assert target["mediaType"] in (
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
    )
    assert target["size"] > 0
    assert event["request"]["method"] == "PUT"
    assert event["request"]["useragent"].startswith("docker/"), event["request"]
    assert event["request"]["addr"].startswith("127.0.0.1:")

    # A repository outside hooks/*: no event at all.
    other = docker_refs.tag(src, f"{server.docker_host}/other/busybox:1")
    docker.push(other)

    # A pull of the pushed image (removed locally first, so docker must fetch it).
    docker.remove_image(images.busybox.image_id)
    assert docker.pull(ref) == pushed
    headers, body, event = receiver.wait_for(lambda e: e["action"] == "pull")
    assert headers["x-wharf-signature"] == signature(secret, body)
    assert event["target"]["repository"] == "hooks/busybox"
    assert event["target"]["digest"] == pushed
    assert event["request"]["method"] == "GET"

    time.sleep(0.5)
    repos = {e["target"]["repository"] for _, _, e in receiver.events()}
    assert repos == {"hooks/busybox"}, repos
    for headers, body, _ in receiver.events():
        assert headers["x-wharf-signature"] == signature(secret, body)
        server.secrets.append(headers["x-wharf-signature"].removeprefix("sha256=")  # the signatures are secret-derived)
    log = server.log_path.read_text()
    assert "webhook delivered" in log, "debug logs name each delivery"
