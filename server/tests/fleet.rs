//! The fleet control plane (issue #7) against a real server (the in-process
//! router on a loopback port, SQLite or PostgreSQL catalog) with fake
//! runner nodes made of plain HTTP calls: joins (good, expired, reused,
//! taken name), the channel's Assign sets, placement over two nodes,
//! selectors that match nothing, a node that stops heartbeating (down,
//! its replica moved) and comes back (ready, no duplicate), reports of
//! another node's replica, a removed node, the logs relay end to end, the
//! admin check, and the CLI binary against the server.

mod common;

use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use common::Server;
use futures::{Stream, StreamExt};
use reqwest::StatusCode;
use serde_json::{Value, json};
use wharf_fleet_proto::{
    DeploymentInfo, JoinResponse, NodeFacts, NodeInfo, NodeStatus, ReplicaSpec, ReplicaState,
    ServerMessage,
};

const TTL: u64 = 2;
const WAIT: Duration = Duration::from_secs(10);

fn http() -> reqwest::Client {
    common::install_crypto_provider();
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

async fn fleet_server() -> Server {
    Server::start_with(|s| s.fleet.node_ttl_secs = TTL).await
}

fn facts(labels: &[(&str, &str)]) -> NodeFacts {
    NodeFacts {
        addresses: vec!["10.0.0.2".into()],
        os: "linux".into(),
        arch: "amd64".into(),
        cpus: 2,
        memory_bytes: 4 << 30,
        disk_bytes: 10 << 30,
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        version: "test".into(),
    }
}

/// The admin side, auth off (or with an Authorization header).
struct Admin {
    base: String,
    http: reqwest::Client,
    auth: Option<String>,
}

impl Admin {
    fn of(srv: &Server) -> Admin {
        Admin {
            base: srv.url(""),
            http: http(),
            auth: None,
        }
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let rb = self.http.request(method, format!("{}{path}", self.base));
        match &self.auth {
            Some(a) => rb.header("authorization", a),
            None => rb,
        }
    }

    async fn token_with(&self, ttl: u64, pull: &[&str]) -> String {
        let r = self
            .req(reqwest::Method::POST, "/api/v1/nodes/tokens")
            .json(&json!({"ttl_secs": ttl, "pull": pull}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "create token");
        r.json::<Value>().await.unwrap()["token"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    async fn token(&self) -> String {
        self.token_with(3600, &["team/*"]).await
    }

    async fn deploy(&self, spec: Value) -> (StatusCode, Value) {
        let r = self
            .req(reqwest::Method::POST, "/api/v1/deployments")
            .json(&spec)
            .send()
            .await
            .unwrap();
        (r.status(), r.json().await.unwrap())
    }

    async fn deployment(&self, name: &str) -> DeploymentInfo {
        let r = self
            .req(reqwest::Method::GET, &format!("/api/v1/deployments/{name}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "inspect {name}");
        r.json().await.unwrap()
    }

    async fn nodes(&self) -> Vec<NodeInfo> {
        let r = self
            .req(reqwest::Method::GET, "/api/v1/nodes")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json().await.unwrap()
    }

    async fn node_status(&self, name: &str) -> NodeStatus {
        self.nodes()
            .await
            .into_iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
            .status
    }
}

/// A fake runner node: HTTP calls only.
struct Node {
    name: String,
    secret: String,
    /// Sent again in every heartbeat, as a runner does.
    facts: NodeFacts,
    base: String,
    http: reqwest::Client,
}

async fn join_raw(
    srv: &Server,
    token: &str,
    name: &str,
    labels: &[(&str, &str)],
) -> reqwest::Response {
    http()
        .post(srv.url("/api/v1/nodes/join"))
        .json(&json!({"token": token, "name": name, "facts": facts(labels)}))
        .send()
        .await
        .unwrap()
}

async fn error_message(r: reqwest::Response) -> String {
    let v: Value = r.json().await.unwrap();
    v["errors"][0]["message"].as_str().unwrap_or("").to_owned()
}

impl Node {
    async fn join(srv: &Server, token: &str, name: &str, labels: &[(&str, &str)]) -> Node {
        let r = join_raw(srv, token, name, labels).await;
        assert_eq!(r.status(), 200, "join {name}");
        let j: JoinResponse = r.json().await.unwrap();
        assert_eq!(j.name, name);
        Node {
            name: name.into(),
            secret: j.secret,
            facts: facts(labels),
            base: srv.url(""),
            http: http(),
        }
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .basic_auth(&self.name, Some(&self.secret))
    }

    async fn heartbeat(&self) -> StatusCode {
        self.req(reqwest::Method::POST, "/api/v1/node/heartbeat")
            .json(&json!({"facts": self.facts, "free_memory_bytes": 2u64 << 30, "running_containers": 1}))
            .send()
            .await
            .unwrap()
            .status()
    }

    /// Heartbeats every 300 ms until the task is aborted.
    fn keep_alive(&self) -> tokio::task::JoinHandle<()> {
        let node = Node {
            name: self.name.clone(),
            secret: self.secret.clone(),
            facts: self.facts.clone(),
            base: self.base.clone(),
            http: self.http.clone(),
        };
        tokio::spawn(async move {
            loop {
                node.heartbeat().await;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    }

    async fn report(&self, replicas: Value) -> (StatusCode, String) {
        let r = self
            .req(reqwest::Method::POST, "/api/v1/node/report")
            .json(&json!({ "replicas": replicas }))
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body = r.text().await.unwrap_or_default();
        (status, body)
    }

    async fn channel(&self) -> Channel {
        let r = self
            .req(reqwest::Method::GET, "/api/v1/node/channel")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "channel of {}", self.name);
        Channel {
            stream: Box::pin(r.bytes_stream()),
            buf: Vec::new(),
        }
    }
}

struct Channel {
    stream: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    buf: Vec<u8>,
}

impl Channel {
    /// The next message; None when the stream ended.
    async fn next(&mut self) -> Option<ServerMessage> {
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                return Some(serde_json::from_slice(&line[..pos]).expect("a ServerMessage line"));
            }
            match tokio::time::timeout(WAIT, self.stream.next()).await {
                Err(_) => panic!("no message on the channel within {WAIT:?}"),
                Ok(None) | Ok(Some(Err(_))) => return None,
                Ok(Some(Ok(b))) => self.buf.extend_from_slice(&b),
            }
        }
    }

    /// The next Assign set (pings skipped).
    async fn assign(&mut self) -> Vec<ReplicaSpec> {
        loop {
            match self.next().await.expect("channel open") {
                ServerMessage::Assign { replicas } => return replicas,
                _ => continue,
            }
        }
    }

    /// Assign sets until one satisfies `ok`.
    async fn assign_until(&mut self, ok: impl Fn(&[ReplicaSpec]) -> bool) -> Vec<ReplicaSpec> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let a = self.assign().await;
            if ok(&a) {
                return a;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no matching Assign: last {a:?}"
            );
        }
    }

    /// The next log request (other messages skipped).
    async fn log_request(&mut self) -> (String, String, bool, Option<u64>) {
        loop {
            match self.next().await.expect("channel open") {
                ServerMessage::Logs {
                    request,
                    replica,
                    follow,
                    tail,
                } => return (request, replica, follow, tail),
                _ => continue,
            }
        }
    }
}

async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn ids(a: &[ReplicaSpec]) -> Vec<String> {
    let mut v: Vec<String> = a.iter().map(|r| r.id.clone()).collect();
    v.sort();
    v
}

#[tokio::test]
async fn joins_good_expired_reused_and_taken() {
    let srv = fleet_server().await;
    let admin = Admin::of(&srv);
    let token = admin.token().await;

    let r = join_raw(&srv, &token, "n1", &[]).await;
    assert_eq!(r.status(), 200);
    let j: JoinResponse = r.json().await.unwrap();
    assert_eq!(j.heartbeat_secs, 1, "ttl/3, at least 1");
    assert_eq!(j.registry, srv.addr.to_string());
    assert!(j.secret.len() >= 43, "256-bit secret");

    // The node pulls as robot node.n1 with the token's patterns.
    let catalog = srv.catalog().await;
    let robot = catalog.user("node.n1").await.unwrap().expect("robot user");
    assert!(robot.is_robot);
    assert_eq!(
        catalog.grants(robot.id).await.unwrap(),
        vec![("team/*".to_owned(), "pull".to_owned())]
    );

    // Reused.
    let r = join_raw(&srv, &token, "n2", &[]).await;
    assert_eq!(r.status(), 401);
    assert_eq!(error_message(r).await, "the join token was already used");
    // Unknown.
    let r = join_raw(&srv, "wharf-join-nope", "n2", &[]).await;
    assert_eq!(r.status(), 401);
    assert_eq!(error_message(r).await, "invalid join token");
    // Expired.
    let short = admin.token_with(1, &[]).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = join_raw(&srv, &short, "n2", &[]).await;
    assert_eq!(r.status(), 401);
    assert_eq!(error_message(r).await, "the join token has expired");
    // Taken name: 409, and the token is not used up by the refusal.
    let fresh = admin.token().await;
    let r = join_raw(&srv, &fresh, "n1", &[]).await;
    assert_eq!(r.status(), 409);
    assert!(error_message(r).await.contains("node name n1 is taken"));
    let r = join_raw(&srv, &fresh, "n2", &[]).await;
    assert_eq!(r.status(), 200, "the token survived the 409");
    // Bad names and facts.
    let another = admin.token().await;
    for bad in ["", "N1", "-x", "a.b", &"x".repeat(64)] {
        assert_eq!(
            join_raw(&srv, &another, bad, &[]).await.status(),
            400,
            "{bad:?}"
        );
    }
    let r = http()
        .post(srv.url("/api/v1/nodes/join"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // One token, racing joins: exactly one gets in.
    let raced = admin.token().await;
    let joins = (0..6).map(|i| {
        let (url, token) = (srv.url("/api/v1/nodes/join"), raced.clone());
        tokio::spawn(async move {
            http()
                .post(url)
                .json(&json!({"token": token, "name": format!("r{i}"), "facts": facts(&[])}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    });
    let mut statuses = Vec::new();
    for j in joins.collect::<Vec<_>>() {
        statuses.push(j.await.unwrap());
    }
    statuses.sort();
    assert_eq!(statuses, [200, 401, 401, 401, 401, 401]);
    let names: Vec<String> = admin.nodes().await.into_iter().map(|n| n.name).collect();
    assert_eq!(names.len(), 3, "{names:?}");
    assert_eq!(names[..2], ["n1", "n2"]);
}

#[tokio::test]
async fn two_replicas_spread_over_two_nodes_and_reports() {
    let srv = fleet_server().await;
    let admin = Admin::of(&srv);
    let n1 = Node::join(&srv, &admin.token().await, "n1", &[]).await;
    let n2 = Node::join(&srv, &admin.token().await, "n2", &[]).await;
    let (_k1, _k2) = (n1.keep_alive(), n2.keep_alive());
    let mut c1 = n1.channel().await;
    let mut c2 = n2.channel().await;
    assert!(c1.assign().await.is_empty(), "Assign on connect");
    assert!(c2.assign().await.is_empty());

    let (status, body) = admin
        .deploy(json!({"name": "web", "image": "team/web:1", "replicas": 2,
                       "env": ["A=1"], "cmd": ["sleep", "100"]}))
        .await;
    assert_eq!(status, 201, "{body}");
    let a1 = c1.assign_until(|a| !a.is_empty()).await;
    let a2 = c2.assign_until(|a| !a.is_empty()).await;
    assert_eq!(a1.len(), 1, "{a1:?}");
    assert_eq!(a2.len(), 1, "{a2:?}");
    let mut both = vec![a1[0].id.clone(), a2[0].id.clone()];
    both.sort();
    assert_eq!(both, ["web.0", "web.1"]);
    assert_eq!(a1[0].image, format!("{}/team/web:1", srv.addr));
    assert_eq!(a1[0].container.env, ["A=1"]);
    assert_eq!(a1[0].container.cmd, ["sleep", "100"]);
    assert_eq!(a1[0].deployment, "web");

    // n1 reports its replica running; n2 pulling.
    let (r1, r2) = (&a1[0], &a2[0]);
    let (s, b) = n1
        .report(
            json!([{"id": r1.id, "generation": r1.generation, "state": "running",
                        "exit_code": null, "reason": null, "container_id": "c1"}]),
        )
        .await;
    assert_eq!(s, 204, "{b}");
    n2.report(
        json!([{"id": r2.id, "generation": r2.generation, "state": "pulling",
                      "exit_code": null, "reason": null, "container_id": null}]),
    )
    .await;
    let d = admin.deployment("web").await;
    let mine = d.replicas.iter().find(|r| r.id == r1.id).unwrap();
    assert_eq!(mine.state, ReplicaState::Running);
    assert_eq!(mine.node.as_deref(), Some("n1"));
    assert_eq!(mine.container_id.as_deref(), Some("c1"));
    assert_eq!(d.status, "deploying");
    assert!(
        d.events
            .iter()
            .any(|e| e.message == "running" && e.replica.as_deref() == Some(&r1.id)),
        "{:?}",
        d.events
    );
    assert!(d.events.iter().any(|e| e.message == "placed on n1"));

    // n1 may not report n2's replica.
    let (s, b) = n1
        .report(
            json!([{"id": r2.id, "generation": r2.generation, "state": "failed",
                        "exit_code": null, "reason": "x", "container_id": null}]),
        )
        .await;
    assert_eq!(s, 403, "{b}");
    assert!(
        b.contains(&format!("replica {} is not assigned to node n1", r2.id)),
        "{b}"
    );
    // An older generation is ignored.
    let (s, _) = n1
        .report(
            json!([{"id": r1.id, "generation": r1.generation - 1, "state": "failed",
                        "exit_code": null, "reason": "old", "container_id": null}]),
        )
        .await;
    assert_eq!(s, 204);
    // Both end: status words follow.
    n2.report(
        json!([{"id": r2.id, "generation": r2.generation, "state": "exited",
                      "exit_code": 3, "reason": null, "container_id": "c2"}]),
    )
    .await;
    let d = admin.deployment("web").await;
    assert_eq!(
        d.replicas.iter().find(|r| r.id == r1.id).unwrap().state,
        ReplicaState::Running
    );
    assert_eq!(d.status, "degraded");
    assert!(d.events.iter().any(|e| e.message == "exited (3)"));

    // Delete: both nodes' Assign sets become empty.
    let r = admin
        .req(reqwest::Method::DELETE, "/api/v1/deployments/web")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    c1.assign_until(|a| a.is_empty()).await;
    c2.assign_until(|a| a.is_empty()).await;
    let r = admin
        .req(reqwest::Method::GET, "/api/v1/deployments/web")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(error_message(r).await, "no such deployment: web");
}

#[tokio::test]
async fn selectors_and_bad_specs() {
    let srv = fleet_server().await;
    let admin = Admin::of(&srv);
    let a = Node::join(&srv, &admin.token().await, "a1", &[("zone", "a")]).await;
    let _k = a.keep_alive();

    let (s, body) = admin
        .deploy(json!({"name": "zb", "image": "team/web:1", "selector": {"zone": "b"}}))
        .await;
    assert_eq!(s, 201, "{body}");
    let d: DeploymentInfo = serde_json::from_value(body).unwrap();
    assert_eq!(d.status, "pending");
    assert_eq!(d.replicas[0].node, None);
    assert_eq!(
        d.replicas[0].reason.as_deref(),
        Some("no ready node matches selector zone=b")
    );
    assert!(
        d.events
            .iter()
            .any(|e| e.message == "no ready node matches selector zone=b")
    );

    // The matching selector places it.
    let (s, body) = admin
        .deploy(json!({"name": "za", "image": "team/web:1", "selector": {"zone": "a"}}))
        .await;
    assert_eq!(s, 201);
    assert_eq!(body["replicas"][0]["node"], "a1");

    // More memory than any node has free.
    let (_, body) = admin
        .deploy(json!({"name": "big", "image": "team/web:1", "memory_bytes": 64i64 << 30}))
        .await;
    assert_eq!(body["status"], "pending");
    assert!(
        body["replicas"][0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("no ready node has"),
        "{body}"
    );

    // Name taken, bad specs.
    let (s, body) = admin
        .deploy(json!({"name": "za", "image": "team/web:1"}))
        .await;
    assert_eq!(s, 409, "{body}");
    for bad in [
        json!({"image": ""}),
        json!({"image": "Team/Web"}),
        json!({"name": "Bad_Name", "image": "x"}),
        json!({"image": "x", "replicas": 0}),
        json!({"image": "x", "restart": "sometimes"}),
        json!({"image": "x", "env": ["NOVALUE"]}),
        json!({"nope": 1}),
    ] {
        let (s, body) = admin.deploy(bad.clone()).await;
        assert_eq!(s, 400, "{bad}: {body}");
    }
    let names: Vec<String> = reqwest_json::<Vec<DeploymentInfo>>(&admin, "/api/v1/deployments")
        .await
        .into_iter()
        .map(|d| d.name)
        .collect();
    assert_eq!(names, ["big", "za", "zb"]);
}

async fn reqwest_json<T: serde::de::DeserializeOwned>(admin: &Admin, path: &str) -> T {
    let r = admin.req(reqwest::Method::GET, path).send().await.unwrap();
    assert_eq!(r.status(), 200, "{path}");
    r.json().await.unwrap()
}

#[tokio::test]
async fn a_node_without_heartbeat_is_down_and_its_replica_moves_then_it_comes_back() {
    let srv = fleet_server().await;
    let admin = Admin::of(&srv);
    let n1 = Node::join(&srv, &admin.token().await, "n1", &[]).await;
    let n2 = Node::join(&srv, &admin.token().await, "n2", &[]).await;
    let k1 = n1.keep_alive();
    let _k2 = n2.keep_alive();
    let mut c1 = n1.channel().await;
    let mut c2 = n2.channel().await;
    let (s, _) = admin
        .deploy(json!({"name": "web", "image": "team/web:1", "replicas": 2}))
        .await;
    assert_eq!(s, 201);
    let a1 = c1.assign_until(|a| a.len() == 1).await;
    c2.assign_until(|a| a.len() == 1).await;
    let moved = a1[0].clone();

    // n1 stops: no heartbeat, channel gone.
    k1.abort();
    drop(c1);
    let stopped = tokio::time::Instant::now();
    eventually("n1 down", || async {
        admin.node_status("n1").await == NodeStatus::Down
    })
    .await;
    assert!(
        stopped.elapsed() < Duration::from_secs(TTL + 3),
        "down after {:?}",
        stopped.elapsed()
    );
    let a2 = c2.assign_until(|a| a.len() == 2).await;
    assert_eq!(ids(&a2), ["web.0", "web.1"]);
    let now_on_n2 = a2.iter().find(|r| r.id == moved.id).unwrap();
    assert!(now_on_n2.generation > moved.generation, "generation bumped");
    let d = admin.deployment("web").await;
    assert!(d.replicas.iter().all(|r| r.node.as_deref() == Some("n2")));
    assert!(
        d.events
            .iter()
            .any(|e| e.message == "node n1 down: moving" && e.replica.as_deref() == Some(&moved.id)),
        "{:?}",
        d.events
    );
    // A late report from n1 of its old generation is ignored, not refused.
    let (s, _) = n1
        .report(
            json!([{"id": moved.id, "generation": moved.generation, "state": "running",
                        "exit_code": null, "reason": null, "container_id": "old"}]),
        )
        .await;
    assert_eq!(s, 204);
    let d = admin.deployment("web").await;
    let r = d.replicas.iter().find(|r| r.id == moved.id).unwrap();
    assert_eq!(r.node.as_deref(), Some("n2"));
    assert_ne!(r.container_id.as_deref(), Some("old"));

    // n1 comes back: ready, and its Assign no longer holds the moved replica.
    let _k1 = n1.keep_alive();
    eventually("n1 ready", || async {
        admin.node_status("n1").await == NodeStatus::Ready
    })
    .await;
    let mut c1 = n1.channel().await;
    assert!(c1.assign().await.is_empty(), "no duplicate on n1");
    // And it stays so: nothing is moved back.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let d = admin.deployment("web").await;
    assert!(d.replicas.iter().all(|r| r.node.as_deref() == Some("n2")));
}

#[tokio::test]
async fn a_server_outage_moves_nothing() {
    let mut srv = fleet_server().await;
    let admin = Admin::of(&srv);
    let n1 = Node::join(&srv, &admin.token().await, "n1", &[]).await;
    let n2 = Node::join(&srv, &admin.token().await, "n2", &[]).await;
    let (k1, k2) = (n1.keep_alive(), n2.keep_alive());
    let (s, _) = admin
        .deploy(json!({"name": "web", "image": "team/web:1", "replicas": 2}))
        .await;
    assert_eq!(s, 201);
    let before = admin.deployment("web").await.replicas;
    assert!(before.iter().all(|r| r.node.is_some()));
    // The server is away for longer than the TTL: no heartbeat arrives.
    k1.abort();
    k2.abort();
    // (New clients: an open pooled connection would keep the old server's
    // state, and so its scheduler, alive in this process.)
    drop(admin);
    let (mut n1, mut n2) = (n1, n2);
    n1.http = http();
    n2.http = http();
    srv.restart_after(Duration::from_millis(TTL * 1000 + 1000))
        .await;
    let admin = Admin::of(&srv);
    // The scheduler runs (as `serve` starts it at boot) before the nodes
    // are back.
    admin.nodes().await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    n1.base = srv.url("");
    n2.base = srv.url("");
    let (_k1, _k2) = (n1.keep_alive(), n2.keep_alive());
    tokio::time::sleep(Duration::from_millis(TTL * 1000 + 500)).await;
    assert_eq!(admin.node_status("n1").await, NodeStatus::Ready);
    assert_eq!(admin.node_status("n2").await, NodeStatus::Ready);
    let d = admin.deployment("web").await;
    for (a, b) in before.iter().zip(&d.replicas) {
        assert_eq!(
            (&a.id, &a.node, a.generation),
            (&b.id, &b.node, b.generation)
        );
    }
    assert!(
        !d.events.iter().any(|e| e.message.contains("down")),
        "{:?}",
        d.events
    );
}

#[tokio::test]
async fn a_removed_node_is_refused() {
    let srv = fleet_server().await;
    let admin = Admin::of(&srv);
    let n1 = Node::join(&srv, &admin.token().await, "n1", &[]).await;
    let n2 = Node::join(&srv, &admin.token().await, "n2", &[]).await;
    let _k2 = n2.keep_alive();
    let mut c1 = n1.channel().await;
    c1.assign().await;
    let (s, _) = admin
        .deploy(json!({"name": "one", "image": "team/web:1", "node": "n1"}))
        .await;
    assert_eq!(s, 201);
    c1.assign_until(|a| a.len() == 1).await;

    let r = admin
        .req(reqwest::Method::DELETE, "/api/v1/nodes/n1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    // The channel ends; every further call gets 401.
    loop {
        match c1.next().await {
            None => break,
            Some(_) => continue,
        }
    }
    assert_eq!(n1.heartbeat().await, 401);
    let r = n1
        .req(reqwest::Method::GET, "/api/v1/node/channel")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let (s, _) = n1.report(json!([])).await;
    assert_eq!(s, 401);
    assert!(
        srv.catalog().await.user("node.n1").await.unwrap().is_none(),
        "robot removed"
    );
    // Its replica waits (it was pinned to n1) and says why.
    let d = admin.deployment("one").await;
    assert_eq!(d.replicas[0].node, None);
    assert_eq!(d.replicas[0].reason.as_deref(), Some("no node named n1"));
    let r = admin
        .req(reqwest::Method::DELETE, "/api/v1/nodes/n1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // Wrong secret.
    let wrong = Node {
        name: "n2".into(),
        secret: "not-it".into(),
        facts: facts(&[]),
        base: srv.url(""),
        http: http(),
    };
    assert_eq!(wrong.heartbeat().await, 401);
}

async fn post_lines(node: &Node, request: &str, lines: Vec<Value>) -> StatusCode {
    let mut body = String::new();
    for l in lines {
        body.push_str(&l.to_string());
        body.push('\n');
    }
    node.req(
        reqwest::Method::POST,
        &format!("/api/v1/node/logs/{request}"),
    )
    .body(body)
    .send()
    .await
    .unwrap()
    .status()
}

fn line(replica: &str, text: &str) -> Value {
    json!({"replica": replica, "stream": "stdout", "time": "2026-11-28T12:00:00Z", "line": text})
}

#[tokio::test]
async fn logs_are_relayed_from_the_nodes() {
    let srv = fleet_server().await;
    let admin = Admin::of(&srv);
    let n1 = Node::join(&srv, &admin.token().await, "n1", &[]).await;
    let n2 = Node::join(&srv, &admin.token().await, "n2", &[]).await;
    let (_k1, _k2) = (n1.keep_alive(), n2.keep_alive());
    let mut c1 = n1.channel().await;
    let mut c2 = n2.channel().await;
    admin
        .deploy(json!({"name": "web", "image": "team/web:1", "replicas": 2}))
        .await;
    let r1 = c1.assign_until(|a| a.len() == 1).await[0].id.clone();
    let r2 = c2.assign_until(|a| a.len() == 1).await[0].id.clone();

    // Not following: both replicas' lines, merged, then the end.
    let get = admin
        .req(reqwest::Method::GET, "/api/v1/deployments/web/logs?tail=10")
        .send();
    let reader = tokio::spawn(async move {
        let r = get.await.unwrap();
        (r.status(), r.text().await.unwrap())
    });
    let (q1, rep1, follow, tail) = c1.log_request().await;
    assert_eq!(
        (rep1.as_str(), follow, tail),
        (r1.as_str(), false, Some(10))
    );
    let (q2, rep2, _, _) = c2.log_request().await;
    assert_eq!(rep2, r2);
    // n2 may not answer n1's request.
    assert_eq!(post_lines(&n2, &q1, vec![]).await, 403);
    assert_eq!(
        post_lines(
            &n1,
            &q1,
            vec![line(&r1, "one"), line(&r2, "forged"), line(&r1, "two")]
        )
        .await,
        204
    );
    assert_eq!(post_lines(&n2, &q2, vec![line(&r2, "three")]).await, 204);
    let (status, text) = tokio::time::timeout(WAIT, reader).await.unwrap().unwrap();
    assert_eq!(status, 200);
    let got: Vec<(String, String)> = text
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (
                v["replica"].as_str().unwrap().into(),
                v["line"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(got.len(), 3, "{text}");
    assert!(got.contains(&(r1.clone(), "one".into())));
    assert!(got.contains(&(r1.clone(), "two".into())));
    assert!(got.contains(&(r2.clone(), "three".into())));
    // A request is answered once.
    assert_eq!(post_lines(&n1, &q1, vec![]).await, 404);

    // Following: lines arrive while the node's upload is still open.
    let resp = admin.req(
        reqwest::Method::GET,
        "/api/v1/deployments/web/logs?follow=1",
    );
    let resp = tokio::spawn(async move { resp.send().await.unwrap() });
    let (q1, _, follow, _) = c1.log_request().await;
    assert!(follow);
    let (_q2, _, _, _) = c2.log_request().await;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let upload = n1
        .req(reqwest::Method::POST, &format!("/api/v1/node/logs/{q1}"))
        .body(reqwest::Body::wrap_stream(futures::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|b| (b, rx)) },
        )))
        .send();
    let upload = tokio::spawn(upload);
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    tx.send(Ok(Bytes::from(format!("{}\n", line(&r1, "live")))))
        .await
        .unwrap();
    let first = tokio::time::timeout(WAIT, body.next())
        .await
        .expect("a followed line arrives while the upload is open")
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&first).contains("\"live\""));
    // The client leaves: the node's upload is answered and ends.
    drop(body);
    tx.send(Ok(Bytes::from(format!("{}\n", line(&r1, "after")))))
        .await
        .ok();
    let done = tokio::time::timeout(WAIT, upload)
        .await
        .expect("upload ends")
        .unwrap();
    assert_eq!(done.unwrap().status(), 204);

    // A deployment without connected nodes, an unknown one.
    drop((c1, c2));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = admin
        .req(reqwest::Method::GET, "/api/v1/deployments/web/logs")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    assert_eq!(
        error_message(r).await,
        "no replica of web is on a connected node"
    );
    let r = admin
        .req(reqwest::Method::GET, "/api/v1/deployments/nope/logs")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_needs_an_admin_and_the_cli_works() {
    let (srv, ()) = Server::start_auth(
        |s| s.fleet.node_ttl_secs = TTL,
        async |catalog| {
            wharf_server::admin::add_user(catalog, "admin", "admin-pw", true)
                .await
                .unwrap();
            wharf_server::admin::add_user(catalog, "bob", "bob-pw", false)
                .await
                .unwrap();
        },
    )
    .await;
    let r = http().get(srv.url("/api/v1/nodes")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = http()
        .get(srv.url("/api/v1/nodes"))
        .basic_auth("bob", Some("bob-pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = http()
        .post(srv.url("/api/v1/deployments"))
        .basic_auth("bob", Some("bob-pw"))
        .json(&json!({"image": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = http()
        .get(srv.url("/api/v1/nodes"))
        .basic_auth("admin", Some("admin-pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // The CLI: it signs itself an admin token with the server's key.
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_wharf-server"))
            .arg("--data-dir")
            .arg(srv.data_dir())
            .arg("--server")
            .arg(srv.url(""))
            .args(args)
            .env("WHARF_AUTH_ENABLED", "true")
            .env("WHARF_CATALOG_URL", srv.settings().catalog_url())
            .env("WHARF_LOG", "warn")
            .output()
            .expect("run wharf-server");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let cli = async |args: Vec<&'static str>| {
        let args = args.clone();
        tokio::task::block_in_place(|| cli(&args))
    };
    let (ok, token, err) = cli(vec![
        "node", "token", "create", "--ttl", "1h", "--pull", "team/*",
    ])
    .await;
    assert!(ok, "{err}");
    let token = token.trim().to_owned();
    assert!(token.starts_with("wharf-join-"), "{token}");
    let n1 = Node::join(&srv, &token, "n1", &[("zone", "a")]).await;
    let _k = n1.keep_alive();
    let mut c1 = n1.channel().await;

    let (ok, out, err) = cli(vec![
        "deploy",
        "team/web:1",
        "--name",
        "web",
        "--replicas",
        "2",
        "-e",
        "A=1",
        "-m",
        "64m",
        "--restart",
        "always",
        "--",
        "sleep",
        "100",
    ])
    .await;
    assert!(ok, "{err}");
    assert!(out.contains("deployment web:"), "{out}");
    assert!(out.contains("web.0 on n1"), "{out}");
    let (ok, out, _) = cli(vec![
        "deploy",
        "team/web:1",
        "--name",
        "zb",
        "--selector",
        "zone=b",
    ])
    .await;
    assert!(ok);
    assert!(
        out.contains("no ready node matches selector zone=b"),
        "{out}"
    );

    // Logs: the node answers both replicas' requests; the CLI prints them.
    let answer = tokio::spawn(async move {
        for _ in 0..2 {
            let (q, replica, follow, tail) = c1.log_request().await;
            assert_eq!((follow, tail), (false, Some(5)));
            let stream = if replica == "web.1" {
                "stderr"
            } else {
                "stdout"
            };
            let l = json!({"replica": replica, "stream": stream, "time": "t",
                           "line": format!("hello from {replica}")});
            assert_eq!(post_lines(&n1, &q, vec![l]).await, 204);
        }
    });
    let (ok, out, err) = cli(vec!["deployments", "logs", "web", "--tail", "5"]).await;
    assert!(ok, "{err}");
    let mut lines: Vec<&str> = out.lines().collect();
    lines.sort();
    assert_eq!(
        lines,
        ["web.0 | hello from web.0", "web.1 err| hello from web.1"]
    );
    answer.await.unwrap();

    let (ok, out, err) = cli(vec!["deployments", "ls"]).await;
    assert!(ok, "{err}");
    let web = out
        .lines()
        .find(|l| l.starts_with("web "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        web.contains("team/web:1") && web.contains("0/2") && web.contains("n1"),
        "{out}"
    );
    let (ok, out, _) = cli(vec!["deployments", "inspect", "web"]).await;
    assert!(ok);
    let d: DeploymentInfo = serde_json::from_str(&out).unwrap();
    assert_eq!(d.spec.container.memory_bytes, Some(64 << 20));
    assert_eq!(d.spec.container.cmd, ["sleep", "100"]);
    let (ok, out, _) = cli(vec!["node", "ls"]).await;
    assert!(ok);
    assert!(
        out.lines()
            .any(|l| l.starts_with("n1 ") && l.contains("ready")),
        "{out}"
    );

    let (ok, _, err) = cli(vec!["deployments", "inspect", "nope"]).await;
    assert!(!ok);
    assert_eq!(err.trim(), "wharf-server: error: no such deployment: nope");
    let (ok, _, err) = cli(vec!["deploy", "team/web:1", "--name", "web"]).await;
    assert!(!ok);
    assert!(err.contains("deployment web exists"), "{err}");
    let (ok, _, _) = cli(vec!["deployments", "rm", "web"]).await;
    assert!(ok);
    let (ok, _, err) = cli(vec!["deployments", "rm", "web"]).await;
    assert!(!ok);
    assert_eq!(err.trim(), "wharf-server: error: no such deployment: web");
}
