"""The web catalog in a real browser: Debian's headless Chromium driven through
/usr/bin/chromedriver by selenium (an explicit Service path, so
selenium-manager downloads nothing).

Two images are pushed with docker (busybox, and a several-layer image built
from it with env, labels, ports and a command); the test opens the UI signed
out (a private repository's name is nowhere), searches, signs in, opens the
repository and a manifest, checks that the layers shown are exactly the layers
of the manifest fetched over /v2, deletes a tag through its confirmation page
and checks over /v2 that it is gone; the fleet pages are opened too, as an
admin, with two nodes joined over the fleet API. A screenshot of each page is saved under
$WHARF_TEST_ARTIFACTS/web (or the test's tmp dir) and the path printed.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest
import requests
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from support import AUTH_ENV

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
LAPTOP = (1280, 900)
PHONE = (390, 844)


def chromium(javascript: bool = True):
    """A headless Chromium (Debian's) through /usr/bin/chromedriver, with a fresh profile."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            pytest.fail(f"{path} missing: apt-get install chromium chromium-driver (scripts/test does)")
    # Belt and braces: selenium-manager must never fetch a driver or browser.
    os.environ["SE_OFFLINE"] = "true"
    profile = tempfile.mkdtemp(prefix="wharf-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    if not javascript:
        opts.add_experimental_option("prefs", {"profile.managed_default_content_settings.javascript": 2})
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        f"--window-size={LAPTOP[0]},{LAPTOP[1]}",
    ):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    driver.wharf_profile = profile
    return driver


def close(driver) -> None:
    driver.quit()
    shutil.rmtree(driver.wharf_profile, ignore_errors=True)


@pytest.fixture
def browser():
    driver = chromium()
    try:
        yield driver
    finally:
        close(driver)


@pytest.fixture
def artifacts(tmp_path) -> Path:
    base = os.environ.get("WHARF_TEST_ARTIFACTS")
    out = Path(base) / "web" if base else tmp_path / "screenshots"
    out.mkdir(parents=True, exist_ok=True)
    print(f"\nweb UI screenshots: {out}")
    return out


def shot(driver, out: Path, name: str, size=LAPTOP) -> None:
    driver.set_window_size(*size)
    # Full page height, so the screenshot shows the whole page.
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(size[0], max(size[1], min(int(height) + 140, 4000)))
    path = out / f"{name}.png"
    assert driver.save_screenshot(str(path)), f"screenshot {path}"
    driver.set_window_size(*size)


def build_multilayer(docker, base_ref: str, workdir: Path) -> str:
    """FROM the busybox image: three COPY layers, env, labels, a port, a command."""
    ctx = workdir / "multi"
    ctx.mkdir()
    lines = [f"FROM {base_ref}"]
    for i in range(3):
        (ctx / f"part{i}.txt").write_text(f"part {i}\n" * (2000 * (i + 1)))
        lines.append(f"COPY part{i}.txt /srv/part{i}.txt")
    lines += [
        "ENV APP_MODE=production GREETING=hello",
        'LABEL org.opencontainers.image.title="web test" org.example.note="<b>not bold</b>"',
        "EXPOSE 8080/tcp",
        "WORKDIR /srv",
        'ENTRYPOINT ["/bin/sh", "-c"]',
        'CMD ["echo hello from wharf"]',
    ]
    (ctx / "Dockerfile").write_text("\n".join(lines) + "\n")
    ref = "wharf-e2e/web-multi:latest"
    docker("build", "-q", "-t", ref, ctx, env={"DOCKER_BUILDKIT": "0"})
    return ref


def wait_for(driver, css: str):
    return WebDriverWait(driver, 20).until(EC.presence_of_element_located((By.CSS_SELECTOR, css)))


def test_web_catalog_in_chromium(
    wharf_factory, docker, docker_config, images, docker_refs, browser, artifacts, tmp_path
):
    server = wharf_factory("wharf-web", env=AUTH_ENV)
    server.add_user("admin", admin=True)
    server.add_user("alice")
    server.grant("alice", "team/*", "pull,push,delete")
    server.public("pub/*")
    server.start()
    host = server.docker_host
    base = f"http://{host}"

    # Two images pushed with docker: busybox (public), and a multi-layer one (private, two tags).
    admin = docker_config("admin")
    admin.login(host, "admin", server.users["admin"])
    tools = docker_refs.tag(images.ensure(images.busybox), f"{host}/pub/tools:1.0")
    admin.push(tools)
    multi = docker_refs.track(build_multilayer(docker, images.ensure(images.busybox), tmp_path))
    for tag in ("v1", "v2"):
        admin.push(docker_refs.tag(multi, f"{host}/team/app:{tag}"))
    v1_digest = server.api("admin").manifest_digest("team/app", "v1")
    manifest, _, _ = server.api("admin").manifest_json("team/app", "v1")
    pushed_layers = [layer["digest"] for layer in manifest["layers"]]
    assert len(pushed_layers) >= 4, manifest

    d = browser
    # Signed out: only the public repository, and not a trace of the private one.
    d.get(base + "/")
    wait_for(d, "#stats")
    assert "pub/tools" in d.page_source
    assert "team/app" not in d.page_source
    assert d.find_element(By.ID, "stats").text.startswith("1 repository"), d.find_element(By.ID, "stats").text
    shot(d, artifacts, "01-repositories-signed-out")
    d.get(base + "/r/team/app")
    assert "team/app" not in d.find_element(By.TAG_NAME, "main").text.replace("Not found", "")
    assert "Not found" in d.page_source
    shot(d, artifacts, "02-not-found")
    d.get(base + "/?q=team")
    assert "team/app" not in d.page_source.replace('value="team"', "")

    # A search string with HTML or SQL is shown as text and matches nothing.
    evil = "<img src=x onerror=alert(1)>' OR 1=1 --"
    before = d.find_element(By.TAG_NAME, "main")
    box = d.find_element(By.NAME, "q")
    box.clear()
    box.send_keys(evil)
    box.submit()
    WebDriverWait(d, 20).until(EC.staleness_of(before))
    wait_for(d, ".empty")
    assert d.find_element(By.NAME, "q").get_attribute("value") == evil
    assert evil in d.find_element(By.CSS_SELECTOR, "main q").text
    assert not d.find_elements(By.CSS_SELECTOR, "main img"), "the search string became markup"
    assert "No repository matches" in d.page_source

    # Sign in.
    d.get(base + "/login")
    d.find_element(By.ID, "username").send_keys("alice")
    d.find_element(By.ID, "password").send_keys(server.users["alice"])
    shot(d, artifacts, "03-sign-in")
    d.find_element(By.CSS_SELECTOR, "form.card button[type=submit]").click()
    wait_for(d, "#repositories")
    assert "Signed in as" in d.page_source
    cookies = {c["name"]: c for c in d.get_cookies()}
    assert cookies["wharf_session"]["httpOnly"] and cookies["wharf_session"]["sameSite"] == "Strict"

    # Search, then the list: both repositories now.
    before = d.find_element(By.ID, "repositories")
    box = d.find_element(By.NAME, "q")
    box.send_keys("app")
    box.submit()
    WebDriverWait(d, 20).until(EC.staleness_of(before))  # the results page, not the old one
    wait_for(d, "#repositories")
    names = [a.text for a in d.find_elements(By.CSS_SELECTOR, "#repositories a.repo")]
    assert names == ["team/app"], names
    d.get(base + "/")
    wait_for(d, "#repositories")
    names = [a.text for a in d.find_elements(By.CSS_SELECTOR, "#repositories a.repo")]
    assert names == ["pub/tools", "team/app"], names
    t = d.find_element(By.CSS_SELECTOR, "#repositories time")
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", t.get_attribute("title")), t.get_attribute("title")
    assert re.fullmatch(r"just now|\d+ minutes? ago", t.text), t.text
    shot(d, artifacts, "04-repositories")
    shot(d, artifacts, "05-repositories-phone", size=PHONE)

    # The repository: tags, commands with a working copy button (shown by the script).
    d.find_element(By.LINK_TEXT, "team/app").click()
    wait_for(d, "#tags")
    tags = [a.text for a in d.find_elements(By.CSS_SELECTOR, "#tags a.tagname")]
    assert sorted(tags) == ["v1", "v2"], tags
    pull = d.find_element(By.ID, "cmd-pull").text
    assert re.fullmatch(rf"docker pull {re.escape(host)}/team/app:v[12]", pull), pull
    assert d.find_element(By.ID, "cmd-run").text.startswith(f"wharf-runner run {host}/team/app:")
    copy = d.find_element(By.CSS_SELECTOR, "button[data-copy=cmd-pull]")
    assert copy.is_displayed()
    copy.click()
    WebDriverWait(d, 5).until(lambda _: copy.text in ("Copied", "Press Ctrl+C"))
    shot(d, artifacts, "06-repository")

    # The manifest of v1: its layers are exactly the pushed manifest's.
    d.find_element(By.LINK_TEXT, "v1").click()
    wait_for(d, "#layers")
    assert d.find_element(By.ID, "digest").text == v1_digest
    shown = [row.get_attribute("data-digest") for row in d.find_elements(By.CSS_SELECTOR, "#layers tr.layer")]
    assert shown == pushed_layers, (shown, pushed_layers)
    config = d.find_element(By.ID, "config").text
    for want in ("APP_MODE=production", "8080/tcp", "echo hello from wharf", "/srv", "<b>not bold</b>"):
        assert want in config, (want, config)
    history = d.find_element(By.ID, "history").text
    assert "COPY" in history or "copy" in history, history
    assert "linux/amd64" in d.page_source
    shot(d, artifacts, "07-manifest")

    # Delete v2 through the confirmation page.
    d.get(base + "/r/team/app")
    wait_for(d, "#tags")
    d.find_element(By.CSS_SELECTOR, "tr[data-tag=v2] a.danger").click()
    wait_for(d, "#confirm-delete")
    shot(d, artifacts, "08-confirm-delete")
    d.find_element(By.ID, "confirm-delete").click()
    wait_for(d, ".notice")
    assert "v2" in d.find_element(By.CSS_SELECTOR, ".notice").text
    tags = [a.text for a in d.find_elements(By.CSS_SELECTOR, "#tags a.tagname")]
    assert tags == ["v1"], tags
    shot(d, artifacts, "09-after-delete")
    resp = server.api("admin").get_manifest("team/app", "v2")
    assert resp.status_code == 404, resp.status_code
    assert server.api("admin").tags("team/app") == ["v1"]

    # Signed out again: the private repository is gone from view.
    d.find_element(By.CSS_SELECTOR, "header form button").click()
    wait_for(d, "#stats")
    assert "team/app" not in d.page_source
    print(f"web UI screenshots: {sorted(p.name for p in artifacts.iterdir())}")


def test_reading_works_without_javascript(wharf, docker, images, docker_refs, artifacts):
    """Auth off (everything visible, no sign-in), JavaScript disabled: every page reads."""
    host = wharf.docker_host
    ref = docker_refs.tag(images.ensure(images.busybox), f"{host}/tools/busybox:1")
    docker.push(ref)
    manifest, _, _ = wharf.api().manifest_json("tools/busybox", "1")
    d = chromium(javascript=False)
    try:
        d.get(f"http://{host}/")
        wait_for(d, "#repositories")
        assert "Sign in" not in d.page_source, "auth is off: no sign-in"
        d.find_element(By.LINK_TEXT, "tools/busybox").click()
        wait_for(d, "#tags")
        assert d.find_element(By.ID, "cmd-pull").text == f"docker pull {host}/tools/busybox:1"
        copy = d.find_element(By.CSS_SELECTOR, "button[data-copy=cmd-pull]")
        assert not copy.is_displayed(), "without JavaScript the copy button stays hidden"
        t = d.find_element(By.CSS_SELECTOR, "#tags time")
        assert t.text == "just now" or t.text.endswith("ago"), t.text
        assert t.get_attribute("title").endswith(" UTC")
        d.find_element(By.LINK_TEXT, "1").click()
        wait_for(d, "#layers")
        shown = [row.get_attribute("data-digest") for row in d.find_elements(By.CSS_SELECTOR, "#layers tr.layer")]
        assert shown == [layer["digest"] for layer in manifest["layers"]]
        shot(d, artifacts, "10-manifest-no-javascript")
    finally:
        close(d)


def test_fleet_pages_in_chromium(wharf_factory, browser, artifacts):
    """The Nodes and Deployments pages, as an admin sees them: two nodes
    joined (over the fleet API, as a runner does), a deployment of two
    replicas they report running, and one whose selector matches no node."""
    server = wharf_factory("wharf-fleet-web", env={**AUTH_ENV, "WHARF_FLEET_NODE_TTL_SECS": "600"})
    server.add_user("admin", admin=True)
    server.start()
    base = f"http://{server.docker_host}"
    admin = ("admin", server.users["admin"])

    def api(method: str, path: str, **kwargs) -> requests.Response:
        resp = requests.request(method, base + path, timeout=10, **kwargs)
        assert resp.status_code < 300, (path, resp.status_code, resp.text)
        return resp

    nodes = {}
    for name, zone, mem in (("rack1-node1", "a", 16), ("rack1-node2", "b", 8)):
        token = api("POST", "/api/v1/nodes/tokens", auth=admin, json={"ttl_secs": 600}).json()["token"]
        facts = {
            "addresses": [f"192.168.10.{len(nodes) + 11}"], "os": "linux", "arch": "amd64", "cpus": 4,
            "memory_bytes": mem << 30, "disk_bytes": 120 << 30, "labels": {"zone": zone}, "version": "0.1.0",
        }
        secret = api("POST", "/api/v1/nodes/join", json={"token": token, "name": name, "facts": facts}).json()["secret"]
        nodes[name] = (name, secret)
        api("POST", "/api/v1/node/heartbeat", auth=nodes[name],
            json={"facts": facts, "free_memory_bytes": (mem - 3) << 30, "running_containers": 1})  # fmt: skip
    api("POST", "/api/v1/deployments", auth=admin, json={
        "name": "web", "image": "team/web:1.4", "replicas": 2, "env": ["MODE=prod"], "ports": ["8080:80"],
        "cmd": ["httpd", "-f", "-p", "80"], "restart": "always",
    })  # fmt: skip
    api("POST", "/api/v1/deployments", auth=admin, json={"name": "batch", "image": "team/batch:2",
                                                          "selector": {"zone": "c"}})  # fmt: skip
    for r in api("GET", "/api/v1/deployments/web", auth=admin).json()["replicas"]:
        report = {"id": r["id"], "generation": r["generation"], "state": "running", "exit_code": None,
                  "reason": None, "container_id": os.urandom(32).hex()}  # fmt: skip
        api("POST", "/api/v1/node/report", auth=nodes[r["node"]], json={"replicas": [report]})

    d = browser
    d.get(base + "/nodes")
    d.find_element(By.ID, "username").send_keys("admin")
    d.find_element(By.ID, "password").send_keys(server.users["admin"])
    d.find_element(By.CSS_SELECTOR, "form.card button[type=submit]").click()
    wait_for(d, "#nodes")
    rows = d.find_elements(By.CSS_SELECTOR, "#nodes tbody tr")
    assert [r.find_element(By.TAG_NAME, "b").text for r in rows] == ["rack1-node1", "rack1-node2"]
    assert all("ready" in r.text for r in rows), [r.text for r in rows]
    assert "zone=a" in rows[0].text and "192.168.10.11" in rows[0].text
    shot(d, artifacts, "10-nodes")
    d.find_element(By.LINK_TEXT, "Deployments").click()
    wait_for(d, "#deployments")
    text = d.find_element(By.ID, "deployments").text
    assert "web" in text and "running" in text and "2 / 2" in text, text
    assert "batch" in text and "pending" in text, text
    shot(d, artifacts, "11-deployments")
    d.find_element(By.LINK_TEXT, "web").click()
    wait_for(d, "#replicas")
    replicas = d.find_element(By.ID, "replicas").text
    assert "web.0" in replicas and "web.1" in replicas and "rack1-node1" in replicas, replicas
    assert "httpd -f -p 80" in d.find_element(By.TAG_NAME, "main").text
    shot(d, artifacts, "12-deployment")
    d.get(base + "/deployments/batch")
    wait_for(d, "#events")
    assert "zone=c" in d.find_element(By.ID, "events").text
