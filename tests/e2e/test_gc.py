"""Garbage collection with the real docker: two images sharing a base layer,
one tag deleted through the API, `wharf-server gc --dry-run` reports and
removes nothing, `wharf-server gc` removes exactly the layers and config only
the deleted image had, and the other image still pulls and runs; with the
catalog on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest

GC_CONFIG = """
[gc]
interval_secs = 0
grace_secs = 0
untagged = "delete"
upload_max_age_secs = 3600
"""

MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
    ]
)


def blobs_on_disk(data_dir: Path) -> dict[str, int]:
    """digest -> size of every object under the store's blobs/ dir."""
    root = data_dir / "blobs" / "blobs"
    found = {}
    for path in root.rglob("*"):
        if path.is_file():
            found[f"{path.parent.parent.name}:{path.name}"] = path.stat().st_size
    return found


def image_blobs(api, repo: str, tag: str) -> tuple[str, dict[str, int]]:
    """The manifest digest and {digest: size} of the config and layers."""
    resp = api.request("GET", f"/v2/{repo}/manifests/{tag}", headers={"Accept": MANIFEST_TYPES})
    assert resp.status_code == 200, resp.text
    manifest = resp.json()
    blobs = {manifest["config"]["digest"]: manifest["config"]["size"]}
    for layer in manifest["layers"]:
        blobs[layer["digest"]] = layer["size"]
    return resp.headers["Docker-Content-Digest"], blobs


def build(docker, base: str, tag: str, workdir: Path, content: str) -> str:
    ctx = workdir / tag.replace("/", "_").replace(":", "_")
    ctx.mkdir(parents=True)
    (ctx / "own.txt").write_text(content)
    (ctx / "Dockerfile").write_text(f"FROM {base}\nCOPY own.txt /own.txt\n")
    docker("build", "-q", "-t", tag, ctx, env={"DOCKER_BUILDKIT": "0"})
    return tag


def gc(server, *flags) -> dict:
    out = server.cli("gc", "--json", *flags).stdout
    return json.loads(out)


@pytest.mark.parametrize("catalog", ["sqlite", "postgres"])
def test_gc_removes_exactly_the_unshared_layers(
    request, catalog, wharf_factory, docker, images, docker_refs, tmp_path
):
    config = GC_CONFIG
    if catalog == "postgres":
        postgres = request.getfixturevalue("postgres")
        url = postgres.create_database()
        config += f'\n[catalog]\nurl = "{url}"\n'

        def catalog_sql(text: str) -> None:
            postgres.sql(text, url)
    else:

        def catalog_sql(text: str) -> None:
            with sqlite3.connect(server.data_dir / "catalog.db") as db:
                db.execute(text)

    server = wharf_factory("gc", config=config)
    server.start()
    api = server.api()
    base = images.ensure(images.busybox)
    local_a = docker_refs.track(build(docker, base, "wharf-e2e/gc-a:latest", tmp_path, "only in a\n"))
    local_b = docker_refs.track(build(docker, base, "wharf-e2e/gc-b:latest", tmp_path, "only in b\n"))
    ref_a = docker_refs.tag(local_a, f"{server.docker_host}/gc/app:a")
    ref_b = docker_refs.tag(local_b, f"{server.docker_host}/gc/app:b")
    docker.push(ref_a)
    pushed_b, _ = docker.push(ref_b)

    digest_a, blobs_a = image_blobs(api, "gc/app", "a")
    _, blobs_b = image_blobs(api, "gc/app", "b")
    shared = set(blobs_a) & set(blobs_b)
    only_a = set(blobs_a) - shared
    assert len(shared) == 1, "the images should share exactly the busybox layer"
    assert len(only_a) == 2, "image a should have its own config and its own layer"

    # Delete the tag (not the manifest): the manifest becomes untagged, and
    # under untagged = "delete" it goes with its unshared blobs.
    resp = api.request("DELETE", "/v2/gc/app/manifests/a")
    assert resp.status_code == 202, resp.text
    time.sleep(0.5)  # grace_secs = 0 still compares millisecond times

    before = blobs_on_disk(server.data_dir)
    assert set(blobs_a) | set(blobs_b) <= set(before)

    dry = gc(server, "--dry-run")
    assert dry["dry_run"] is True
    assert dry["manifests_removed"] == 1, dry
    assert dry["blobs_removed"] == 2, dry
    assert dry["blob_bytes_removed"] == sum(blobs_a[d] for d in only_a), dry
    assert blobs_on_disk(server.data_dir) == before, "a dry run removed something"
    text = server.cli("gc", "--dry-run").stdout
    assert "would remove" in text and "blobs:" in text, text
    assert api.request("GET", f"/v2/gc/app/manifests/{digest_a}").status_code == 200

    done = gc(server)
    assert done["dry_run"] is False
    for key in ("manifests_removed", "blobs_removed", "blob_bytes_removed"):
        assert done[key] == dry[key], (key, dry, done)
    after = blobs_on_disk(server.data_dir)
    assert set(after) == set(before) - only_a, "exactly the unshared blobs must go"
    for d in only_a:
        resp = api.request("GET", f"/v2/gc/app/blobs/{d}")
        assert resp.status_code == 404, resp.text
    assert api.request("GET", f"/v2/gc/app/manifests/{digest_a}").status_code == 404

    # Nothing more to do, and the server (which kept running) serves b whole.
    again = gc(server)
    assert again["manifests_removed"] == again["blobs_removed"] == again["orphans_removed"] == 0, again
    docker("rmi", ref_b)
    docker("rmi", local_b)
    assert docker.pull(ref_b) == pushed_b
    out = docker("run", "--rm", "--network", "none", ref_b, "cat", "/own.txt").stdout
    assert out == "only in b\n"

    # Another replica's collection holds the lease: a run is refused with a
    # clear message, a dry run (which takes no lease) still works.
    until = int(time.time() * 1000) + 60_000
    catalog_sql(f"UPDATE leases SET holder = 'replica-2', expires_at = {until} WHERE name = 'gc'")
    busy = server.cli("gc", check=False)
    assert busy.returncode != 0
    assert "another garbage collection holds the lease (replica-2" in busy.stderr, busy.stderr
    assert server.cli("gc", "--dry-run", check=False).returncode == 0
    assert server.panics() == []
