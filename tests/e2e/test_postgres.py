"""wharf-server with its catalog on PostgreSQL (a real cluster, see pg.py):
docker and skopeo round trips, the admin CLI and a server restart keep
everything, the password of the catalog URL never reaches the log, and a bad
URL stops the start with one clear line."""

from __future__ import annotations

import json

from clients import skopeo
from pg import Postgres, make_ca
from support import assert_image_in_registry, digest_matches, new_password, run, server_binary, sha256_digest

NO_TLS = ("--src-tls-verify=false", "--dest-tls-verify=false")


def pg_server(wharf_factory, postgres, name: str, env: dict | None = None):
    """A wharf-server (not started) whose catalog is a fresh database reached as
    a role with a password (the test cluster trusts local roles, but the URL
    still carries the password, which must never be logged)."""
    url = postgres.create_database()
    database = url.rsplit("/", 1)[1]
    password = new_password("pg")
    role = f"{database}_owner"
    postgres.create_role(role, password)
    postgres.sql(f"ALTER DATABASE {database} OWNER TO {role}")
    server_part = postgres.server_url().split("//", 1)[1].split("@", 1)[1]
    catalog_url = f"postgres://{role}:{password}@{server_part}/{database}"
    server = wharf_factory(name, env=env, config=f'[catalog]\nurl = "{catalog_url}"\n')
    server.secrets.append(password)  # wharf_factory fails the test if it shows up in the log
    server.catalog_sql = lambda text: postgres.sql(text, url)
    server.catalog_password = password
    return server


def test_docker_and_skopeo_round_trips_survive_a_restart(wharf_factory, postgres, docker, images, docker_refs,
                                                          tmp_path):  # fmt: skip
    wharf = pg_server(wharf_factory, postgres, "wharf-pg")
    wharf.start()
    log = wharf.log_path.read_text()
    assert "catalog=postgres://" in log and ":***@" in log, log
    assert not (wharf.data_dir / "catalog.db").exists(), "the SQLite catalog was made anyway"
    api = wharf.api()

    # docker push, then pull after removing the local image.
    image = images.busybox
    src = images.ensure(image)
    ref = docker_refs.tag(src, f"{wharf.docker_host}/pg/busybox:1")
    pushed, _ = docker.push(ref)
    assert_image_in_registry(api, "pg/busybox", "1", pushed)
    docker.remove_image(image.image_id)
    assert docker.pull(ref) == pushed
    assert docker.inspect(ref)["Id"] == image.image_id

    # skopeo: daemon -> wharf, wharf -> OCI layout -> wharf (byte-exact manifest).
    skopeo("copy", *NO_TLS, f"docker-daemon:{images.ensure(image)}", f"docker://{wharf.host}/pg/skopeo:1")
    skopeo_digest = api.manifest_digest("pg/skopeo", "1")
    layout = tmp_path / "layout"
    skopeo("copy", *NO_TLS, f"docker://{wharf.host}/pg/skopeo:1", f"oci:{layout}:bb")
    (oci_desc,) = json.loads((layout / "index.json").read_text())["manifests"]
    skopeo("copy", *NO_TLS, f"oci:{layout}:bb", f"docker://{wharf.host}/pg/oci:1")
    _, raw, _ = api.manifest_json("pg/oci", "1")
    algorithm, _, hexdigest = oci_desc["digest"].partition(":")
    assert raw == (layout / "blobs" / algorithm / hexdigest).read_bytes()
    assert digest_matches(raw, oci_desc["digest"])

    # The rows are in PostgreSQL.
    repos = wharf.catalog_sql("SELECT name FROM repositories ORDER BY name").split()
    assert repos == ["pg/busybox", "pg/oci", "pg/skopeo"], repos
    assert int(wharf.catalog_sql("SELECT count(*) FROM manifests")) >= 3
    assert int(wharf.catalog_sql("SELECT count(*) FROM uploads")) == 0, "upload sessions left behind"

    # A restart (a new process, new pool) serves all of it again.
    catalog_before = api.request("GET", "/v2/_catalog").json()
    wharf.restart()
    api = wharf.api()
    assert api.request("GET", "/v2/_catalog").json() == catalog_before
    assert_image_in_registry(api, "pg/busybox", "1", pushed)
    assert api.manifest_digest("pg/skopeo", "1") == skopeo_digest
    assert api.manifest_digest("pg/oci", "1") == oci_desc["digest"]
    docker.remove_image(image.image_id)
    assert docker.pull(ref) == pushed
    skopeo("copy", *NO_TLS, f"docker://{wharf.host}/pg/skopeo:1", f"oci:{tmp_path / 'again'}:bb")


def test_users_made_with_the_admin_cli_live_in_postgres(wharf_factory, postgres):
    wharf = pg_server(wharf_factory, postgres, "wharf-pg-auth", env={"WHARF_AUTH_ENABLED": "true"})
    wharf.add_user("admin", admin=True)
    wharf.add_user("alice")
    wharf.grant("alice", "team/*", "pull,push")
    wharf.start()
    users = wharf.catalog_sql("SELECT name FROM users ORDER BY name").split()
    assert users == ["admin", "alice"]

    alice = wharf.api(user="alice")
    data = b"a blob in a postgres-backed registry"
    resp = alice.request("POST", "/v2/team/app/blobs/uploads/", params={"digest": sha256_digest(data)}, data=data)
    assert resp.status_code == 201, resp.text
    resp = alice.request("POST", "/v2/other/app/blobs/uploads/", params={"digest": sha256_digest(data)}, data=data)
    assert resp.status_code in (401, 403), resp.text

    wharf.restart()
    assert wharf.api(user="alice").get_blob("team/app", sha256_digest(data)).content == data


def test_a_bad_catalog_url_is_one_clear_line_without_the_password(tmp_path):
    password = new_password("bad-url")
    for url, expect in [
        (f"postgres://wharf:{password}@127.0.0.1:1/wharf", "cannot open the catalog at postgres://wharf:***@127.0.0.1:1/wharf"),
        (f"mysql://wharf:{password}@db/wharf", "unsupported catalog URL"),
    ]:  # fmt: skip
        proc = run(
            [str(server_binary()), "--data-dir", str(tmp_path / "data"), "serve", "--listen", "127.0.0.1:0"],
            check=False,
            timeout=60,
            env={"PATH": "/usr/bin:/bin", "WHARF_CATALOG_URL": url, "NO_COLOR": "1"},
        )
        assert proc.returncode != 0
        err = proc.stderr.strip()
        assert password not in err + proc.stdout, err
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1, err
        assert lines[0].startswith("wharf-server: error: ") and expect in lines[0], err


def test_tls_to_postgres_is_verified(wharf_factory, tmp_path):
    """With sslmode=verify-full and the CA, the catalog's connections are TLS
    (rustls); against a server whose certificate another CA signed, the start
    fails with one line."""
    tls_pg = Postgres.start(tls=True)
    try:
        url = tls_pg.create_database()
        verified = f"{url}?sslmode=verify-full&sslrootcert={tls_pg.ca_path}"
        wharf = wharf_factory("wharf-pg-tls", config=f'[catalog]\nurl = "{verified}"\n')
        wharf.start()
        data = b"over TLS"
        resp = wharf.api().request("POST", "/v2/tls/app/blobs/uploads/", params={"digest": sha256_digest(data)},
                                   data=data)  # fmt: skip
        assert resp.status_code == 201, resp.text
        plain = tls_pg.sql(
            "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) "
            "WHERE a.application_name = 'wharf-server' AND NOT s.ssl"
        )
        encrypted = tls_pg.sql(
            "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) "
            "WHERE a.application_name = 'wharf-server' AND s.ssl"
        )
        assert int(plain) == 0 and int(encrypted) >= 1, (plain, encrypted)
        wharf.stop()

        other_ca = make_ca(tmp_path, "another-ca")
        proc = run(
            [str(server_binary()), "--data-dir", str(tmp_path / "data"), "serve", "--listen", "127.0.0.1:0"],
            check=False,
            timeout=60,
            env={"PATH": "/usr/bin:/bin", "NO_COLOR": "1",
                 "WHARF_CATALOG_URL": f"{url}?sslmode=verify-full&sslrootcert={other_ca}"},
        )  # fmt: skip
        assert proc.returncode != 0
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "cannot open the catalog at postgres://" in lines[0], proc.stderr
    finally:
        tls_pg.stop()
