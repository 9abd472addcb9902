"""Blobs on Azure Blob Storage: wharf-server with `backend = "azure"` against
Azurite (Microsoft's Azure Storage emulator, from npm), credentials from the
AZURE_* environment as on a real account. skopeo copies an image in and out,
and monolithic and chunked uploads above the 5 MiB part size go through
object_store's block uploads; the container then holds exactly the verified
blobs and no upload part.

S3 is the scaled-out store the rest of the suite runs on (test_replicas.py);
this checks that the Azure backend is real, not only configurable."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests

from clients import skopeo
from support import describe, free_port, sha256_digest

MIB = 1024 * 1024
ACCOUNT = "devstoreaccount1"
# Azurite's documented, well-known development key: not a secret.
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def azurite_binary() -> str:
    """azurite-blob, installed by scripts/test (npm) under WHARF_AZURITE_DIR."""
    candidates = [os.environ.get("WHARF_AZURITE_BIN", ""), shutil.which("azurite-blob") or ""]
    for c in candidates:
        if c and Path(c).is_file():
            return c
    pytest.fail("azurite-blob not found: scripts/test installs it with npm (set WHARF_AZURITE_BIN)")


class Azurite:
    def __init__(self, workdir: Path):
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}/{ACCOUNT}"
        self.log_path = workdir / "azurite.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    azurite_binary(),
                    "--blobHost", "127.0.0.1",
                    "--blobPort", str(self.port),
                    "--inMemoryPersistence",
                    "--skipApiVersionCheck",
                    "--disableTelemetry",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"azurite exited with {self.proc.returncode}: {self.log_path.read_text()}")
            try:
                requests.get(f"http://127.0.0.1:{self.port}/", timeout=2)
                return
            except requests.RequestException:
                time.sleep(0.1)
        raise AssertionError("azurite not ready after 30 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def client(self):
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient.from_connection_string(
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint={self.endpoint};"
        )

    def blobs(self, container: str, prefix: str = "") -> dict[str, int]:
        c = self.client().get_container_client(container)
        return {b.name: b.size for b in c.list_blobs(name_starts_with=prefix or None)}


@pytest.fixture
def azurite(tmp_path):
    a = Azurite(tmp_path)
    a.start()
    try:
        yield a
    finally:
        a.stop()


def blob_key(digest: str) -> str:
    algorithm, hex_ = digest.split(":", 1)
    return f"blobs/{algorithm}/{hex_[:2]}/{hex_}"


def azure_server(wharf_factory, azurite: Azurite, container: str, name: str = "wharf"):
    config = "\n".join(
        [
            "[storage]",
            'backend = "azure"',
            f'bucket = "{container}"',
            f'endpoint = "{azurite.endpoint}"',
            "allow_http = true",
            "part_size_mib = 5",
        ]
    )
    return wharf_factory(
        name,
        config=config + "\n",
        env={"AZURE_STORAGE_ACCOUNT_NAME": ACCOUNT, "AZURE_STORAGE_ACCOUNT_KEY": ACCOUNT_KEY},
    )


def test_blobs_on_azure_blob_storage(azurite, wharf_factory, images, tmp_path):
    container = "wharf-e2e"
    azurite.client().create_container(container)
    server = azure_server(wharf_factory, azurite, container)
    server.start()
    api = server.api()

    # Uploads above the part size: monolithic, and chunked (parts per chunk).
    data = os.urandom(11 * MIB + 5)
    digest = sha256_digest(data)
    r = api.monolithic_upload("cloud/blob", data, digest)
    assert r.status_code == 201, describe(r)
    chunked = os.urandom(7 * MIB + 3)
    chunked_digest = api.chunked_upload("cloud/blob", chunked, 3 * MIB)
    assert api.assert_blob("cloud/blob", digest) == data
    assert api.assert_blob("cloud/blob", chunked_digest) == chunked
    # A wrong digest stores nothing.
    wrong = sha256_digest(b"not these bytes")
    r = api.monolithic_upload("cloud/blob", b"these bytes", wrong)
    assert r.status_code == 400 and "DIGEST_INVALID" in r.text, describe(r)

    # An image in and out with skopeo, byte for byte.
    src = images.ensure(images.busybox)
    skopeo("copy", "--dest-tls-verify=false", f"docker-daemon:{src}", f"docker://{server.host}/cloud/bb:1")
    layout = tmp_path / "layout"
    skopeo("copy", "--src-tls-verify=false", f"docker://{server.host}/cloud/bb:1", f"oci:{layout}:bb")
    manifest, _, _ = api.manifest_json("cloud/bb", "1")
    pulled = {p.name: p.read_bytes() for p in (layout / "blobs" / "sha256").iterdir()}
    for desc in [manifest["config"], *manifest["layers"]]:
        body = api.assert_blob("cloud/bb", desc["digest"])
        assert sha256_digest(body) == desc["digest"]

    # The container holds exactly the verified blobs, and no upload parts.
    stored = azurite.blobs(container)
    assert stored.get(blob_key(digest)) == len(data)
    assert stored.get(blob_key(chunked_digest)) == len(chunked)
    assert blob_key(wrong) not in stored
    for desc in manifest["layers"]:
        assert stored.get(blob_key(desc["digest"])) == desc["size"]
    assert not [k for k in stored if k.startswith("uploads/")], stored
    assert pulled, "skopeo pulled nothing"

    # Restarted, the server serves the same bytes from the container.
    server.stop()
    server.start()
    assert server.api().assert_blob("cloud/blob", digest) == data


def test_a_missing_container_fails_the_start(azurite, wharf_factory):
    server = azure_server(wharf_factory, azurite, "no-such-container")
    with pytest.raises(AssertionError, match="exited"):
        server.start()
    log = server.log_path.read_text().lower()
    assert "container" in log or "not found" in log or "404" in log, server.log_tail()
