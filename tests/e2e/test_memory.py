"""A 2 GiB blob push never brings the server's resident memory near the blob's size.

The registry streams bytes through the hasher into the store; this checks it
for real by pushing 2 GiB in one streamed PATCH and reading the server
process's peak resident set (VmHWM) from /proc afterwards.
"""

from __future__ import annotations

import hashlib

import requests

from support import HTTP_TIMEOUT, describe

BLOB_SIZE = 2 * 1024**3
PIECE = 4 * 1024 * 1024
LIMIT_KIB = 100 * 1024  # 100 MiB


def peak_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc status")


def test_two_gib_push_stays_under_100_mib(wharf):
    api = wharf.api()
    # Varied bytes (not zeros), generated as they are sent and hashed on the way.
    pattern = bytes(range(256)) * (PIECE // 256)
    hasher = hashlib.sha256()

    def body():
        sent = 0
        i = 0
        while sent < BLOB_SIZE:
            piece = pattern[i % 251 :] + pattern[: i % 251]
            hasher.update(piece)
            sent += len(piece)
            i += 1
            yield piece

    location = api.start_upload("mem/big")
    r = requests.patch(api.url(location), data=body(), timeout=HTTP_TIMEOUT * 10)
    assert r.status_code == 202, describe(r)
    assert r.headers["Range"] == f"0-{BLOB_SIZE - 1}", describe(r)
    digest = "sha256:" + hasher.hexdigest()
    r = requests.put(api.url(r.headers["Location"]), params={"digest": digest}, timeout=HTTP_TIMEOUT * 10)
    assert r.status_code == 201, describe(r)

    head = requests.head(api.url(f"/v2/mem/big/blobs/{digest}"), timeout=HTTP_TIMEOUT)
    assert head.status_code == 200 and int(head.headers["Content-Length"]) == BLOB_SIZE, describe(head)

    peak = peak_rss_kib(wharf.proc.pid)
    assert peak < LIMIT_KIB, f"server peak RSS {peak} KiB during a 2 GiB push (limit {LIMIT_KIB} KiB)"
