//! The fleet control plane (issue #7): runner nodes join with a one-time
//! token, keep a channel open to the server, heartbeat and report; admins
//! create deployments whose replicas the scheduler places on ready nodes.
//! The wire types are `wharf_fleet_proto`'s; this module has no HTTP types
//! (`api/fleet.rs` is the HTTP side) and no SQL (`catalog/fleet.rs`).
//!
//! - State lives in the catalog (nodes, deployments, replicas, events); in
//!   memory are only the open node channels (a `watch` per connected node
//!   that is bumped when its assignments change, and a queue of the other
//!   messages for it) and the pending log relays.
//! - The scheduler (`reconcile`, run by a task every half second and
//!   whenever something changed) is level-based: it marks nodes without a
//!   heartbeat for the TTL `down`, takes replicas off down or removed nodes
//!   (generation bumped), and places unplaced replicas with the pure
//!   `place::plan`. A crash between any two of its steps leaves rows the
//!   next pass finishes. A node's silence is counted from its last
//!   heartbeat or this process's start, whichever is later, so a server
//!   outage moves nothing: nodes get a TTL to come back.
//! - One server process runs the fleet: several server replicas on one
//!   catalog are not supported for the fleet yet (each would schedule, and
//!   a node's channel is only told of changes made by the process it is
//!   connected to).
//!
//! Calls the catalog and `auth::hash_password` (the node's robot user).

pub mod client;
pub mod place;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::Stream;
use sha2::Digest as _;
use tokio::sync::{Notify, mpsc, watch};
use wharf_fleet_proto::{
    DeploymentEvent, DeploymentInfo, DeploymentSpec, Heartbeat, JoinRequest, JoinResponse, LogLine,
    NodeFacts, NodeInfo, NodeStatus, ReplicaInfo, ReplicaSpec, ReplicaState, Report, ServerMessage,
    TokenRequest, TokenResponse,
};

use crate::catalog::fleet::{JoinOutcome, NewNode, NodeRow, ReplicaRow, ReplicaUpdate, TokenState};
use crate::catalog::{Catalog, CatalogError};

/// The scheduler's period when nothing wakes it earlier.
const TICK: Duration = Duration::from_millis(500);
/// How long a node has to start answering a log request.
const LOG_ANSWER_WITHIN: Duration = Duration::from_secs(10);
/// Longest NDJSON log line a node may post.
pub const MAX_LOG_LINE: usize = 64 * 1024;
/// Events shown by `deployments inspect`.
const INSPECT_EVENTS: i64 = 200;
/// Most replicas a deployment may ask for.
const MAX_REPLICAS: u32 = 1000;
/// Default and longest validity of a join token.
const DEFAULT_TOKEN_TTL: u64 = 3600;
const MAX_TOKEN_TTL: u64 = 30 * 24 * 3600;

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("{0}")]
    Internal(String),
}

pub type Result<T, E = FleetError> = std::result::Result<T, E>;

fn invalid(msg: impl Into<String>) -> FleetError {
    FleetError::Invalid(msg.into())
}

/// Node and deployment names: hostname rules, `[a-z0-9]([a-z0-9-]{0,62})`.
pub fn valid_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
}

fn sha256_hex(s: &str) -> String {
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

/// Compares two hex digests without stopping at the first difference.
fn same_digest(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn secs(ms: i64) -> i64 {
    ms.div_euclid(1000)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The robot user a node pulls with.
pub fn robot_name(node: &str) -> String {
    format!("node.{node}")
}

/// One word for a deployment from its replicas' states.
pub fn deployment_status(states: &[ReplicaState]) -> &'static str {
    use ReplicaState as S;
    let n = states.len();
    let count = |f: &dyn Fn(&S) -> bool| states.iter().filter(|s| f(s)).count();
    let running = count(&|s| *s == S::Running);
    let ended = count(&|s| matches!(s, S::Exited | S::Failed));
    let pending = count(&|s| *s == S::Pending);
    if n > 0 && running == n {
        "running"
    } else if n > 0 && ended == n {
        "failed"
    } else if n > 0 && pending == n {
        "pending"
    } else if running > 0 && (ended > 0 || pending > 0) {
        "degraded"
    } else if ended > 0 {
        "failed"
    } else {
        "deploying"
    }
}

/// A connected node's channel.
struct NodeChannel {
    /// Which connection (a reconnect replaces the entry).
    id: u64,
    /// Bumped when the node's assignments change.
    assign: watch::Sender<u64>,
    /// Other messages (log requests).
    out: mpsc::Sender<ServerMessage>,
}

/// A log request sent to a node, waiting for its POST.
struct LogRequest {
    node: String,
    replica: String,
    tx: mpsc::Sender<Bytes>,
    made: Instant,
}

struct Inner {
    catalog: Catalog,
    ttl: Duration,
    channels: Mutex<HashMap<String, NodeChannel>>,
    logs: Mutex<HashMap<String, LogRequest>>,
    wake: Notify,
    started: AtomicBool,
    next_id: AtomicU64,
    /// One scheduler pass at a time.
    pass: tokio::sync::Mutex<()>,
    /// When this process started (unix ms): a node is not marked down for
    /// heartbeats it could not send while the server itself was away.
    born: i64,
    /// True once the server shuts down: channels and log streams end, so
    /// the graceful shutdown does not wait for them forever.
    closing: watch::Sender<bool>,
}

/// The fleet service; cheap to clone.
#[derive(Clone)]
pub struct Fleet {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("ttl", &self.inner.ttl)
            .finish()
    }
}

impl Fleet {
    pub fn new(catalog: Catalog, ttl: Duration) -> Fleet {
        Fleet {
            inner: Arc::new(Inner {
                catalog,
                ttl,
                channels: Mutex::new(HashMap::new()),
                logs: Mutex::new(HashMap::new()),
                wake: Notify::new(),
                started: AtomicBool::new(false),
                next_id: AtomicU64::new(1),
                pass: tokio::sync::Mutex::new(()),
                born: now_ms(),
                closing: watch::channel(false).0,
            }),
        }
    }

    /// Seconds between a node's heartbeats: a third of the TTL, at least 1.
    pub fn heartbeat_secs(&self) -> u64 {
        (self.inner.ttl.as_secs() / 3).max(1)
    }

    /// Starts the scheduler task once (idempotent). `serve` calls it; the
    /// node and admin endpoints call it too, so an in-process server used
    /// by tests schedules as soon as the fleet is used.
    pub fn start(&self) {
        if self.inner.started.swap(true, Ordering::SeqCst) {
            return;
        }
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            loop {
                let Some(inner) = weak.upgrade() else { return };
                let fleet = Fleet { inner };
                if let Err(e) = fleet.reconcile().await {
                    tracing::warn!(error = %e, "fleet scheduler pass failed");
                }
                fleet.expire_log_requests();
                let inner = fleet.inner.clone();
                drop(fleet);
                tokio::select! {
                    _ = inner.wake.notified() => {}
                    _ = tokio::time::sleep(TICK) => {}
                }
            }
        });
    }

    /// Ends every node channel and log stream (server shutdown).
    pub fn close(&self) {
        self.inner.closing.send_replace(true);
    }

    /// Resolves once [`Fleet::close`] was called.
    pub fn closed(&self) -> impl Future<Output = ()> + Send + use<> {
        let mut rx = self.inner.closing.subscribe();
        async move {
            let _ = rx.wait_for(|c| *c).await;
        }
    }

    fn wake(&self) {
        self.inner.wake.notify_one();
    }

    fn notify_node(&self, node: &str) {
        if let Some(ch) = self
            .inner
            .channels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(node)
        {
            ch.assign.send_modify(|v| *v = v.wrapping_add(1));
        }
    }

    // ---- tokens and joins -----------------------------------------------------------

    pub async fn create_token(&self, req: &TokenRequest) -> Result<TokenResponse> {
        let ttl = req.ttl_secs.unwrap_or(DEFAULT_TOKEN_TTL);
        if ttl == 0 || ttl > MAX_TOKEN_TTL {
            return Err(invalid(format!(
                "token ttl must be 1 to {MAX_TOKEN_TTL} seconds"
            )));
        }
        if req.pull.len() > 64 {
            return Err(invalid("at most 64 pull patterns"));
        }
        for p in &req.pull {
            if !crate::auth::scope::valid_pattern(p) {
                return Err(invalid(format!(
                    "invalid repository pattern {p:?}: lower-case name characters and '*' only"
                )));
            }
        }
        let token = format!("wharf-join-{}", crate::auth::random_secret());
        let expires_at = now_ms() + ttl as i64 * 1000;
        let pull =
            serde_json::to_string(&req.pull).map_err(|e| FleetError::Internal(e.to_string()))?;
        self.inner
            .catalog
            .fleet_create_token(&sha256_hex(&token), &pull, expires_at)
            .await?;
        Ok(TokenResponse {
            token,
            expires_at: secs(expires_at),
        })
    }

    /// A node joins with a token; `registry` is `host:port` of this server
    /// as the node reached it.
    pub async fn join(&self, req: &JoinRequest, registry: &str) -> Result<JoinResponse> {
        self.start();
        if !valid_name(&req.name) {
            return Err(invalid(format!(
                "invalid node name {:?}: 1-63 lower-case letters, digits and '-', starting with a letter or digit",
                req.name
            )));
        }
        if matches!(req.name.as_str(), "join" | "tokens") {
            return Err(invalid(format!("node name {:?} is reserved", req.name)));
        }
        check_facts(&req.facts)?;
        if req.token.is_empty() || req.token.len() > 256 {
            return Err(FleetError::Unauthorized("invalid join token".into()));
        }
        let token_hash = sha256_hex(&req.token);
        // A cheap check before the slow hash below, so bad tokens cost
        // nothing; the join itself re-checks in its transaction.
        let state = self.inner.catalog.fleet_token_state(&token_hash).await?;
        if state != TokenState::Valid {
            return Err(FleetError::Unauthorized(token_refusal(&state).into()));
        }
        let secret = crate::auth::random_secret();
        let robot = robot_name(&req.name);
        // argon2 is deliberately slow: off the async threads (many nodes
        // may join at once).
        let for_hash = secret.clone();
        let robot_hash = tokio::task::spawn_blocking(move || crate::auth::hash_password(&for_hash))
            .await
            .map_err(|e| FleetError::Internal(e.to_string()))?
            .map_err(|e| FleetError::Internal(e.to_string()))?;
        let facts =
            serde_json::to_string(&req.facts).map_err(|e| FleetError::Internal(e.to_string()))?;
        // A random 256-bit secret needs no slow hash: SHA-256 is enough to
        // keep it out of the catalog (the argon2 hash is for the robot
        // user, which goes through the registry's ordinary login).
        let secret_hash = sha256_hex(&secret);
        let node = NewNode {
            name: &req.name,
            secret_hash: &secret_hash,
            facts: &facts,
            registry,
            free_memory: i64::try_from(req.facts.memory_bytes).unwrap_or(i64::MAX),
            robot: &robot,
            robot_hash: &robot_hash,
        };
        match self.inner.catalog.fleet_join(&token_hash, &node).await? {
            JoinOutcome::Joined => {}
            JoinOutcome::NameTaken => {
                return Err(FleetError::Conflict(format!(
                    "node name {} is taken (remove the node first: wharf-server node remove {})",
                    req.name, req.name
                )));
            }
            JoinOutcome::BadToken => {
                let state = self.inner.catalog.fleet_token_state(&token_hash).await?;
                return Err(FleetError::Unauthorized(token_refusal(&state).into()));
            }
        }
        tracing::info!(node = %req.name, "node joined the fleet");
        self.wake();
        Ok(JoinResponse {
            name: req.name.clone(),
            secret,
            heartbeat_secs: self.heartbeat_secs(),
            registry: registry.to_owned(),
        })
    }

    /// Checks a node's credential.
    pub async fn authenticate(&self, name: &str, secret: &str) -> Result<()> {
        let refused = || FleetError::Unauthorized("unknown node or wrong node secret".into());
        if !valid_name(name) || secret.len() > 256 {
            return Err(refused());
        }
        let row = self
            .inner
            .catalog
            .fleet_node(name)
            .await?
            .ok_or_else(refused)?;
        if same_digest(&row.secret_hash, &sha256_hex(secret)) {
            Ok(())
        } else {
            Err(refused())
        }
    }

    // ---- the node side -------------------------------------------------------------------

    pub async fn heartbeat(&self, node: &str, hb: &Heartbeat) -> Result<()> {
        self.start();
        check_facts(&hb.facts)?;
        let facts =
            serde_json::to_string(&hb.facts).map_err(|e| FleetError::Internal(e.to_string()))?;
        let back = self
            .inner
            .catalog
            .fleet_heartbeat(
                node,
                &facts,
                i64::try_from(hb.free_memory_bytes).unwrap_or(i64::MAX),
                i64::from(hb.running_containers),
            )
            .await?
            .ok_or_else(|| FleetError::Unauthorized("unknown node".into()))?;
        if back {
            tracing::info!(node, "node is ready again");
            self.notify_node(node);
            self.wake();
        }
        Ok(())
    }

    /// The replicas `node` must run.
    pub async fn assignments(&self, node: &str) -> Result<Vec<ReplicaSpec>> {
        let Some(row) = self.inner.catalog.fleet_node(node).await? else {
            return Ok(Vec::new());
        };
        let rows = self.inner.catalog.fleet_node_assignments(node).await?;
        let mut out = Vec::with_capacity(rows.len());
        for (r, spec) in rows {
            let spec: DeploymentSpec = match serde_json::from_str(&spec) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(deployment = %r.deployment, error = %e, "unreadable deployment spec");
                    continue;
                }
            };
            out.push(ReplicaSpec {
                id: r.id,
                deployment: r.deployment,
                generation: r.generation as u64,
                image: image_for(&spec.image, &row.registry),
                container: spec.container,
            });
        }
        Ok(out)
    }

    /// Opens `node`'s channel: an NDJSON stream of [`ServerMessage`]s. An
    /// earlier channel of the same node is closed.
    pub fn connect(&self, node: &str) -> impl Stream<Item = Result<Bytes, Infallible>> + use<> {
        self.start();
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (assign_tx, mut assign_rx) = watch::channel(0u64);
        let (out_tx, mut out_rx) = mpsc::channel::<ServerMessage>(64);
        self.inner
            .channels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                node.to_owned(),
                NodeChannel {
                    id,
                    assign: assign_tx,
                    out: out_tx,
                },
            );
        let (lines_tx, lines_rx) = mpsc::channel::<Bytes>(16);
        let fleet = self.clone();
        let node = node.to_owned();
        let period = Duration::from_secs(self.heartbeat_secs());
        let closed = self.closed();
        tokio::spawn(async move {
            tokio::pin!(closed);
            let line = |m: &ServerMessage| {
                let mut v = serde_json::to_vec(m).unwrap_or_default();
                v.push(b'\n');
                Bytes::from(v)
            };
            let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            let mut send_assign = true;
            loop {
                if send_assign {
                    send_assign = false;
                    assign_rx.borrow_and_update();
                    match fleet.assignments(&node).await {
                        Ok(replicas) => {
                            if lines_tx
                                .send(line(&ServerMessage::Assign { replicas }))
                                .await
                                .is_err()
                            {
                                break;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(node, error = %e, "cannot read a node's assignments");
                            break;
                        }
                    }
                }
                tokio::select! {
                    changed = assign_rx.changed() => {
                        if changed.is_err() { break; }
                        send_assign = true;
                    }
                    msg = out_rx.recv() => {
                        let Some(msg) = msg else { break };
                        if lines_tx.send(line(&msg)).await.is_err() { break; }
                    }
                    _ = ping.tick() => {
                        if lines_tx.send(line(&ServerMessage::Ping)).await.is_err() { break; }
                    }
                    _ = lines_tx.closed() => break,
                    _ = &mut closed => break,
                }
            }
            let mut channels = fleet
                .inner
                .channels
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if channels.get(&node).is_some_and(|c| c.id == id) {
                channels.remove(&node);
            }
        });
        futures::stream::unfold(lines_rx, |mut rx| async move {
            rx.recv().await.map(|b| (Ok(b), rx))
        })
    }

    /// A node's report: only its own replicas; an older generation is
    /// ignored; every change is a deployment event.
    pub async fn report(&self, node: &str, report: &Report) -> Result<()> {
        if report.replicas.len() > 10_000 {
            return Err(invalid("too many replicas in one report"));
        }
        let mine: HashMap<String, ReplicaRow> = self
            .inner
            .catalog
            .fleet_node_assignments(node)
            .await?
            .into_iter()
            .map(|(r, _)| (r.id.clone(), r))
            .collect();
        let mut apply = Vec::new();
        for st in &report.replicas {
            if st.id.len() > 200 {
                return Err(invalid("replica id too long"));
            }
            let generation = i64::try_from(st.generation).unwrap_or(i64::MAX);
            match mine.get(&st.id) {
                Some(row) if row.generation == generation => apply.push((row, st)),
                Some(_) => {} // another generation: stale (or not yet seen)
                None => match self.inner.catalog.fleet_replica(&st.id).await? {
                    // Deleted, or moved away since: the node will drop it.
                    None => {}
                    Some(r) if generation < r.generation => {}
                    Some(_) => {
                        return Err(FleetError::Forbidden(format!(
                            "replica {} is not assigned to node {node}",
                            st.id
                        )));
                    }
                },
            }
        }
        for (row, st) in apply {
            let reason = st.reason.as_deref().map(|r| one_line(r, 1024));
            let container = st.container_id.as_deref().map(|c| one_line(c, 128));
            let state = st.state.as_str();
            let changed = row.state != state
                || row.exit_code != st.exit_code
                || row.reason.as_deref() != reason.as_deref()
                || row.container_id.as_deref() != container.as_deref();
            if !changed {
                continue;
            }
            let update = ReplicaUpdate {
                id: &row.id,
                node,
                generation: row.generation,
                state,
                exit_code: st.exit_code,
                reason: reason.as_deref(),
                container_id: container.as_deref(),
            };
            if !self.inner.catalog.fleet_update_replica(&update).await? {
                continue;
            }
            if row.state != state
                || row.exit_code != st.exit_code
                || row.reason.as_deref() != reason.as_deref()
            {
                let message = match st.state {
                    ReplicaState::Exited => match st.exit_code {
                        Some(c) => format!("exited ({c})"),
                        None => "exited".to_owned(),
                    },
                    ReplicaState::Failed => {
                        format!("failed: {}", reason.as_deref().unwrap_or("unknown reason"))
                    }
                    s => s.as_str().to_owned(),
                };
                self.inner
                    .catalog
                    .fleet_event(&row.deployment, Some(&row.id), Some(node), &message)
                    .await?;
            }
        }
        Ok(())
    }

    // ---- logs -----------------------------------------------------------------------------

    /// Asks the nodes running `deployment`'s replicas for their logs and
    /// returns one NDJSON stream of [`LogLine`]s merged from all of them.
    pub async fn logs(
        &self,
        deployment: &str,
        follow: bool,
        tail: Option<u64>,
    ) -> Result<impl Stream<Item = Result<Bytes, Infallible>> + use<>> {
        self.start();
        if self
            .inner
            .catalog
            .fleet_deployment(deployment)
            .await?
            .is_none()
        {
            return Err(FleetError::NotFound(format!(
                "no such deployment: {deployment}"
            )));
        }
        let replicas = self.inner.catalog.fleet_replicas(Some(deployment)).await?;
        let (tx, rx) = mpsc::channel::<Bytes>(256);
        let mut requests = Vec::new();
        {
            let channels = self
                .inner
                .channels
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let mut logs = self.inner.logs.lock().unwrap_or_else(|e| e.into_inner());
            for r in &replicas {
                let Some(node) = &r.node else { continue };
                let Some(ch) = channels.get(node) else {
                    continue;
                };
                let request = uuid::Uuid::new_v4().simple().to_string();
                let msg = ServerMessage::Logs {
                    request: request.clone(),
                    replica: r.id.clone(),
                    follow,
                    tail,
                };
                if ch.out.try_send(msg).is_err() {
                    continue;
                }
                logs.insert(
                    request.clone(),
                    LogRequest {
                        node: node.clone(),
                        replica: r.id.clone(),
                        tx: tx.clone(),
                        made: Instant::now(),
                    },
                );
                requests.push(request);
            }
        }
        drop(tx);
        if requests.is_empty() {
            return Err(FleetError::Conflict(format!(
                "no replica of {deployment} is on a connected node"
            )));
        }
        // When the client goes away, its requests not yet answered go too.
        struct Forget {
            fleet: Fleet,
            requests: Vec<String>,
        }
        impl Drop for Forget {
            fn drop(&mut self) {
                let mut logs = self
                    .fleet
                    .inner
                    .logs
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                for r in &self.requests {
                    logs.remove(r);
                }
            }
        }
        let guard = Forget {
            fleet: self.clone(),
            requests,
        };
        let closed = Box::pin(self.closed());
        Ok(futures::stream::unfold(
            (rx, guard, closed),
            |(mut rx, guard, mut closed)| async move {
                let next = tokio::select! {
                    b = rx.recv() => b,
                    _ = &mut closed => None,
                };
                next.map(|b| (Ok(b), (rx, guard, closed)))
            },
        ))
    }

    /// A node starts answering log request `request`: the sender to relay
    /// its lines into and the replica they must be of.
    pub fn take_log_request(
        &self,
        node: &str,
        request: &str,
    ) -> Result<(String, mpsc::Sender<Bytes>)> {
        let mut logs = self.inner.logs.lock().unwrap_or_else(|e| e.into_inner());
        match logs.get(request) {
            Some(r) if r.node == node => {
                let r = logs.remove(request).expect("present");
                Ok((r.replica, r.tx))
            }
            Some(_) => Err(FleetError::Forbidden(format!(
                "log request {request} is not for node {node}"
            ))),
            None => Err(FleetError::NotFound(format!(
                "no log request {request} (answered already, or the client left)"
            ))),
        }
    }

    /// One NDJSON line a node posted for `replica`: checked and re-encoded
    /// (nothing but a [`LogLine`] of that replica reaches the client).
    pub fn relay_line(replica: &str, raw: &[u8]) -> Option<Bytes> {
        let line: LogLine = serde_json::from_slice(raw).ok()?;
        if line.replica != replica {
            return None;
        }
        let mut v = serde_json::to_vec(&line).ok()?;
        v.push(b'\n');
        Some(Bytes::from(v))
    }

    fn expire_log_requests(&self) {
        let mut logs = self.inner.logs.lock().unwrap_or_else(|e| e.into_inner());
        logs.retain(|_, r| r.made.elapsed() < LOG_ANSWER_WITHIN && !r.tx.is_closed());
    }

    // ---- the admin side ---------------------------------------------------------------------

    pub async fn nodes(&self) -> Result<Vec<NodeInfo>> {
        self.start();
        let rows = self.inner.catalog.fleet_nodes().await?;
        let mut placed: HashMap<String, Vec<String>> = HashMap::new();
        for r in self.inner.catalog.fleet_replicas(None).await? {
            if let Some(n) = r.node {
                placed.entry(n).or_default().push(r.id);
            }
        }
        Ok(rows
            .into_iter()
            .map(|n| {
                let replicas = placed.remove(&n.name).unwrap_or_default();
                node_info(n, replicas)
            })
            .collect())
    }

    pub async fn node(&self, name: &str) -> Result<NodeInfo> {
        let row = self
            .inner
            .catalog
            .fleet_node(name)
            .await?
            .ok_or_else(|| FleetError::NotFound(format!("no such node: {name}")))?;
        let replicas = self
            .inner
            .catalog
            .fleet_node_assignments(name)
            .await?
            .into_iter()
            .map(|(r, _)| r.id)
            .collect();
        Ok(node_info(row, replicas))
    }

    /// Removes a node and its robot user; its channel closes and its
    /// replicas are placed elsewhere.
    pub async fn remove_node(&self, name: &str) -> Result<()> {
        self.start();
        if !self
            .inner
            .catalog
            .fleet_remove_node(name, &robot_name(name))
            .await?
        {
            return Err(FleetError::NotFound(format!("no such node: {name}")));
        }
        self.inner
            .channels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        tracing::info!(node = name, "node removed from the fleet");
        self.reconcile().await?;
        Ok(())
    }

    /// Stores a deployment and places its replicas (one scheduler pass
    /// before answering, so the answer shows where they went or why not).
    pub async fn create_deployment(&self, spec: DeploymentSpec) -> Result<DeploymentInfo> {
        self.start();
        let spec = normalize_spec(spec)?;
        let name = spec.name.clone().unwrap_or_default();
        let count = spec.replicas.unwrap_or(1);
        let replicas: Vec<(String, i64)> = (0..count)
            .map(|i| (format!("{name}.{i}"), i64::from(i)))
            .collect();
        let json = serde_json::to_string(&spec).map_err(|e| FleetError::Internal(e.to_string()))?;
        let message = format!("created: {} replica(s) of {}", count, spec.image);
        if !self
            .inner
            .catalog
            .fleet_create_deployment(&name, &json, &replicas, &message)
            .await?
        {
            return Err(FleetError::Conflict(format!(
                "deployment {name} exists (remove it first: wharf-server deployments rm {name})"
            )));
        }
        tracing::info!(deployment = %name, replicas = count, "deployment created");
        self.reconcile().await?;
        self.deployment(&name, true).await
    }

    pub async fn deployments(&self) -> Result<Vec<DeploymentInfo>> {
        self.start();
        let mut by_deployment: HashMap<String, Vec<ReplicaRow>> = HashMap::new();
        for r in self.inner.catalog.fleet_replicas(None).await? {
            by_deployment
                .entry(r.deployment.clone())
                .or_default()
                .push(r);
        }
        let mut out = Vec::new();
        for d in self.inner.catalog.fleet_deployments().await? {
            let replicas = by_deployment.remove(&d.name).unwrap_or_default();
            out.push(deployment_info(
                d.name,
                &d.spec,
                d.created_at,
                replicas,
                Vec::new(),
            )?);
        }
        Ok(out)
    }

    pub async fn deployment(&self, name: &str, with_events: bool) -> Result<DeploymentInfo> {
        let d = self
            .inner
            .catalog
            .fleet_deployment(name)
            .await?
            .ok_or_else(|| FleetError::NotFound(format!("no such deployment: {name}")))?;
        let replicas = self.inner.catalog.fleet_replicas(Some(name)).await?;
        let events = if with_events {
            self.inner
                .catalog
                .fleet_events(name, INSPECT_EVENTS)
                .await?
                .into_iter()
                .map(|e| DeploymentEvent {
                    time: secs(e.time),
                    replica: e.replica,
                    node: e.node,
                    message: e.message,
                })
                .collect()
        } else {
            Vec::new()
        };
        deployment_info(d.name, &d.spec, d.created_at, replicas, events)
    }

    /// Deletes a deployment; the nodes running its replicas get their new
    /// (smaller) assignment and remove the containers.
    pub async fn delete_deployment(&self, name: &str) -> Result<()> {
        let nodes = self
            .inner
            .catalog
            .fleet_delete_deployment(name)
            .await?
            .ok_or_else(|| FleetError::NotFound(format!("no such deployment: {name}")))?;
        tracing::info!(deployment = name, "deployment removed");
        for n in nodes {
            self.notify_node(&n);
        }
        Ok(())
    }

    // ---- the scheduler --------------------------------------------------------------------

    /// One scheduler pass (see the module doc).
    pub async fn reconcile(&self) -> Result<()> {
        let _pass = self.inner.pass.lock().await;
        let catalog = &self.inner.catalog;
        let cutoff = now_ms() - self.inner.ttl.as_millis() as i64;
        let mut nodes = catalog.fleet_nodes().await?;
        let mut touched: HashSet<String> = HashSet::new();
        for n in &mut nodes {
            if n.status == "ready"
                && n.last_heartbeat.max(self.inner.born) < cutoff
                && catalog.fleet_mark_down(&n.name, cutoff).await?
            {
                tracing::warn!(node = %n.name, "node is down: no heartbeat within the TTL");
                n.status = "down".into();
            }
        }
        let status: HashMap<&str, &str> = nodes
            .iter()
            .map(|n| (n.name.as_str(), n.status.as_str()))
            .collect();
        let mut replicas = catalog.fleet_replicas(None).await?;
        // Replicas on nodes that are down or gone are placed again.
        for r in &mut replicas {
            let Some(node) = r.node.clone() else { continue };
            let why = match status.get(node.as_str()) {
                Some(&"ready") => continue,
                Some(_) => format!("node {node} down: moving"),
                None => format!("node {node} removed: moving"),
            };
            if catalog
                .fleet_unplace(&r.id, r.generation, &node, &why)
                .await?
            {
                catalog
                    .fleet_event(&r.deployment, Some(&r.id), Some(&node), &why)
                    .await?;
                touched.insert(node);
                r.node = None;
                r.generation += 1;
                r.state = "pending".into();
                r.reason = Some(why);
            }
        }
        let pending: Vec<&ReplicaRow> = replicas.iter().filter(|r| r.node.is_none()).collect();
        if !pending.is_empty() {
            let mut specs: HashMap<String, DeploymentSpec> = HashMap::new();
            for d in catalog.fleet_deployments().await? {
                if let Ok(s) = serde_json::from_str(&d.spec) {
                    specs.insert(d.name, s);
                }
            }
            let base: Vec<place::Candidate> = nodes
                .iter()
                .map(|n| place::Candidate {
                    name: n.name.clone(),
                    ready: n.status == "ready",
                    labels: serde_json::from_str::<NodeFacts>(&n.facts)
                        .map(|f| f.labels)
                        .unwrap_or_default(),
                    free_memory: n.free_memory.max(0) as u64,
                    replicas_here: 0,
                })
                .collect();
            let mut by_deployment: BTreeMap<&str, Vec<&ReplicaRow>> = BTreeMap::new();
            for r in &pending {
                by_deployment
                    .entry(r.deployment.as_str())
                    .or_default()
                    .push(r);
            }
            for (deployment, waiting) in by_deployment {
                let Some(spec) = specs.get(deployment) else {
                    continue;
                };
                let mut candidates = base.clone();
                for c in &mut candidates {
                    c.replicas_here = replicas
                        .iter()
                        .filter(|r| {
                            r.deployment == deployment && r.node.as_deref() == Some(c.name.as_str())
                        })
                        .count();
                }
                let req = place::Requirements {
                    node: spec.node.clone(),
                    selector: spec.selector.clone(),
                    memory: spec.container.memory_bytes.map(|m| m.max(0) as u64),
                    one_per_node: place::fixed_host_ports(&spec.container.ports),
                };
                let plan = place::plan(&req, waiting.len(), &mut candidates);
                for (r, choice) in waiting.iter().zip(plan) {
                    match choice {
                        Ok(node) => {
                            if catalog.fleet_place(&r.id, r.generation, &node).await? {
                                catalog
                                    .fleet_event(
                                        deployment,
                                        Some(&r.id),
                                        Some(&node),
                                        &format!("placed on {node}"),
                                    )
                                    .await?;
                                touched.insert(node);
                            }
                        }
                        Err(why) => {
                            let why = why.to_string();
                            if r.reason.as_deref() != Some(why.as_str())
                                && catalog
                                    .fleet_set_pending_reason(&r.id, r.generation, &why)
                                    .await?
                            {
                                catalog
                                    .fleet_event(deployment, Some(&r.id), None, &why)
                                    .await?;
                            }
                        }
                    }
                }
            }
        }
        for n in touched {
            self.notify_node(&n);
        }
        Ok(())
    }
}

fn token_refusal(state: &TokenState) -> &'static str {
    match state {
        TokenState::Expired => "the join token has expired",
        TokenState::Used => "the join token was already used",
        // Valid here: it was used or expired between the check and the join.
        TokenState::Unknown | TokenState::Valid => "invalid join token",
    }
}

/// `image` as a node pulls it: with this server's `host:port` in front
/// unless it names a registry already.
pub fn image_for(image: &str, registry: &str) -> String {
    let first = image.split('/').next().unwrap_or("");
    let has_host =
        image.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    if has_host || registry.is_empty() {
        image.to_owned()
    } else {
        format!("{registry}/{image}")
    }
}

fn one_line(s: &str, max: usize) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if out.len() > max {
        let mut end = max;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
    }
    out
}

fn bounded(what: &str, s: &str, max: usize) -> Result<()> {
    if s.len() > max || s.chars().any(char::is_control) {
        return Err(invalid(format!(
            "{what} must be at most {max} bytes without control characters"
        )));
    }
    Ok(())
}

fn check_labels(what: &str, labels: &BTreeMap<String, String>) -> Result<()> {
    if labels.len() > 64 {
        return Err(invalid(format!("at most 64 {what}")));
    }
    for (k, v) in labels {
        if k.is_empty() || k.contains('=') || k.contains(',') {
            return Err(invalid(format!("{what}: invalid key {k:?}")));
        }
        bounded(what, k, 128)?;
        bounded(what, v, 256)?;
    }
    Ok(())
}

fn check_facts(f: &NodeFacts) -> Result<()> {
    if f.addresses.len() > 64 {
        return Err(invalid("at most 64 addresses"));
    }
    for a in &f.addresses {
        bounded("an address", a, 128)?;
    }
    bounded("os", &f.os, 64)?;
    bounded("arch", &f.arch, 64)?;
    bounded("version", &f.version, 128)?;
    check_labels("labels", &f.labels)
}

/// Checks a deployment spec and fills in its defaults (name, replicas).
pub fn normalize_spec(mut spec: DeploymentSpec) -> Result<DeploymentSpec> {
    let image = spec.image.trim().to_owned();
    if image.is_empty()
        || image.len() > 512
        || image.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(invalid(format!("invalid image reference {:?}", spec.image)));
    }
    check_image(&image)?;
    spec.image = image;
    let name = match spec.name.take() {
        Some(n) => n,
        None => default_name(&spec.image).ok_or_else(|| {
            invalid(format!(
                "cannot derive a deployment name from {}; give --name",
                spec.image
            ))
        })?,
    };
    if !valid_name(&name) {
        return Err(invalid(format!(
            "invalid deployment name {name:?}: 1-63 lower-case letters, digits and '-', starting with a letter or digit"
        )));
    }
    spec.name = Some(name);
    if let Some(node) = &spec.node
        && !valid_name(node)
    {
        return Err(invalid(format!("invalid node name {node:?}")));
    }
    check_labels("selector labels", &spec.selector)?;
    let replicas = spec.replicas.unwrap_or(1);
    if replicas == 0 || replicas > MAX_REPLICAS {
        return Err(invalid(format!("replicas must be 1 to {MAX_REPLICAS}")));
    }
    spec.replicas = Some(replicas);
    if spec.container.env.len() > 256 {
        return Err(invalid("at most 256 environment variables"));
    }
    for e in &spec.container.env {
        bounded("an environment variable", e, 8192)?;
        if !e.contains('=') || e.starts_with('=') {
            return Err(invalid(format!(
                "environment variable {e:?} must be KEY=VALUE"
            )));
        }
    }
    if spec.container.ports.len() > 64 {
        return Err(invalid("at most 64 port mappings"));
    }
    for p in &spec.container.ports {
        let ok = !p.is_empty()
            && p.len() <= 128
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || ".:/-[]".contains(c));
        if !ok {
            return Err(invalid(format!("invalid port mapping {p:?}")));
        }
    }
    if spec.container.memory_bytes.is_some_and(|m| m <= 0) {
        return Err(invalid("the memory limit must be positive"));
    }
    if spec.container.nano_cpus.is_some_and(|c| c <= 0) {
        return Err(invalid("cpus must be positive"));
    }
    if let Some(r) = &spec.container.restart {
        let ok = matches!(
            r.as_str(),
            "no" | "always" | "unless-stopped" | "on-failure"
        ) || r
            .strip_prefix("on-failure:")
            .is_some_and(|n| n.parse::<u32>().is_ok());
        if !ok {
            return Err(invalid(format!(
                "invalid restart policy {r:?} (no, always, unless-stopped, on-failure[:N])"
            )));
        }
    }
    if spec.container.cmd.len() > 256 {
        return Err(invalid("at most 256 command arguments"));
    }
    for a in &spec.container.cmd {
        if a.len() > 8192 || a.contains('\0') {
            return Err(invalid("a command argument is too long or holds a NUL"));
        }
    }
    Ok(spec)
}

/// A reference `[host[:port]/]repo[:tag|@digest]` whose repository and
/// tag follow the distribution grammar (what the node will pull).
fn check_image(image: &str) -> Result<()> {
    let bad = |why: &str| invalid(format!("invalid image reference {image:?}: {why}"));
    let (rest, digest) = match image.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (image, None),
    };
    if let Some(d) = digest
        && d.parse::<crate::digest::Digest>().is_err()
    {
        return Err(bad("bad digest"));
    }
    let (path, tag) = match rest.rfind(':') {
        Some(i) if !rest[i..].contains('/') => (&rest[..i], Some(&rest[i + 1..])),
        _ => (rest, None),
    };
    if let Some(t) = tag
        && !crate::names::valid_tag(t)
    {
        return Err(bad("bad tag"));
    }
    let repo = match path.split_once('/') {
        Some((first, repo))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            repo
        }
        _ => path,
    };
    if crate::names::RepoName::parse(repo).is_none() {
        return Err(bad("the repository must be lower-case name components"));
    }
    Ok(())
}

/// `registry:5000/team/web:1.2` -> `web`.
fn default_name(image: &str) -> Option<String> {
    let no_digest = image.split('@').next()?;
    let last = no_digest.rsplit('/').next()?;
    let repo = last.split(':').next()?;
    let mut name: String = repo
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .collect();
    name = name.trim_matches('-').to_owned();
    name.truncate(63);
    let name = name.trim_end_matches('-').to_owned();
    valid_name(&name).then_some(name)
}

fn node_info(n: NodeRow, replicas: Vec<String>) -> NodeInfo {
    let facts = serde_json::from_str(&n.facts).unwrap_or(NodeFacts {
        addresses: Vec::new(),
        os: String::new(),
        arch: String::new(),
        cpus: 0,
        memory_bytes: 0,
        disk_bytes: 0,
        labels: BTreeMap::new(),
        version: String::new(),
    });
    NodeInfo {
        name: n.name,
        status: if n.status == "ready" {
            NodeStatus::Ready
        } else {
            NodeStatus::Down
        },
        facts,
        free_memory_bytes: n.free_memory.max(0) as u64,
        running_containers: u32::try_from(n.running_containers).unwrap_or(u32::MAX),
        joined_at: secs(n.joined_at),
        last_heartbeat: secs(n.last_heartbeat),
        replicas,
    }
}

fn deployment_info(
    name: String,
    spec: &str,
    created_at: i64,
    replicas: Vec<ReplicaRow>,
    events: Vec<DeploymentEvent>,
) -> Result<DeploymentInfo> {
    let spec: DeploymentSpec = serde_json::from_str(spec)
        .map_err(|e| FleetError::Internal(format!("deployment {name}: {e}")))?;
    let states: Vec<ReplicaState> = replicas
        .iter()
        .map(|r| ReplicaState::from_word(&r.state))
        .collect();
    Ok(DeploymentInfo {
        status: deployment_status(&states).to_owned(),
        name,
        spec,
        created_at: secs(created_at),
        replicas: replicas
            .into_iter()
            .map(|r| ReplicaInfo {
                state: ReplicaState::from_word(&r.state),
                id: r.id,
                node: r.node,
                generation: r.generation.max(0) as u64,
                exit_code: r.exit_code,
                reason: r.reason,
                container_id: r.container_id,
                updated_at: secs(r.updated_at),
            })
            .collect(),
        events,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ReplicaState as S;

    #[test]
    fn names_follow_hostname_rules() {
        assert!(valid_name("n1"));
        assert!(valid_name("web-2"));
        assert!(!valid_name(""));
        assert!(!valid_name("-a"));
        assert!(!valid_name("A"));
        assert!(!valid_name("a.b"));
        assert!(!valid_name(&"a".repeat(64)));
    }

    #[test]
    fn status_words() {
        assert_eq!(deployment_status(&[S::Running, S::Running]), "running");
        assert_eq!(deployment_status(&[S::Pending, S::Pending]), "pending");
        assert_eq!(deployment_status(&[S::Running, S::Pending]), "degraded");
        assert_eq!(deployment_status(&[S::Failed, S::Exited]), "failed");
        assert_eq!(deployment_status(&[S::Running, S::Failed]), "degraded");
        assert_eq!(deployment_status(&[S::Assigned, S::Pulling]), "deploying");
        assert_eq!(deployment_status(&[S::Running, S::Pulling]), "deploying");
    }

    #[test]
    fn specs_get_defaults_and_bad_ones_are_refused() {
        let spec = normalize_spec(DeploymentSpec {
            image: "127.0.0.1:5000/team/web_app.v2:1".into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(spec.name.as_deref(), Some("web-app-v2"));
        assert_eq!(spec.replicas, Some(1));
        for bad in [
            DeploymentSpec {
                image: "".into(),
                ..Default::default()
            },
            DeploymentSpec {
                image: "a b".into(),
                ..Default::default()
            },
            DeploymentSpec {
                image: "x".into(),
                name: Some("Bad".into()),
                ..Default::default()
            },
            DeploymentSpec {
                image: "x".into(),
                replicas: Some(0),
                ..Default::default()
            },
            DeploymentSpec {
                image: "x".into(),
                container: wharf_fleet_proto::ContainerSpec {
                    env: vec!["NOEQ".into()],
                    ..Default::default()
                },
                ..Default::default()
            },
            DeploymentSpec {
                image: "x".into(),
                container: wharf_fleet_proto::ContainerSpec {
                    restart: Some("sometimes".into()),
                    ..Default::default()
                },
                ..Default::default()
            },
            DeploymentSpec {
                image: "x".into(),
                container: wharf_fleet_proto::ContainerSpec {
                    memory_bytes: Some(-1),
                    ..Default::default()
                },
                ..Default::default()
            },
            DeploymentSpec {
                image: "x".into(),
                container: wharf_fleet_proto::ContainerSpec {
                    ports: vec!["80;rm".into()],
                    ..Default::default()
                },
                ..Default::default()
            },
        ] {
            assert!(
                matches!(normalize_spec(bad.clone()), Err(FleetError::Invalid(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn images_get_the_registry_unless_they_name_one() {
        assert_eq!(
            image_for("busybox:1", "10.0.0.1:5000"),
            "10.0.0.1:5000/busybox:1"
        );
        assert_eq!(image_for("team/app", "reg:5000"), "reg:5000/team/app");
        assert_eq!(image_for("reg.lan/team/app", "x:1"), "reg.lan/team/app");
        assert_eq!(image_for("localhost/app", "x:1"), "localhost/app");
        assert_eq!(
            image_for("10.0.0.1:5000/app@sha256:ab", "x:1"),
            "10.0.0.1:5000/app@sha256:ab"
        );
    }

    #[tokio::test]
    async fn close_ends_the_channels() {
        use futures::StreamExt;
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("c.db").display());
        let fleet = Fleet::new(Catalog::open(&url).await.unwrap(), Duration::from_secs(3));
        let mut channel = Box::pin(fleet.connect("n1"));
        let first = channel.next().await.unwrap().unwrap();
        assert_eq!(&first[..], b"{\"type\":\"assign\",\"replicas\":[]}\n");
        fleet.close();
        let end = tokio::time::timeout(Duration::from_secs(5), channel.next()).await;
        assert!(matches!(end, Ok(None)), "the channel ends on close");
    }

    #[test]
    fn relayed_lines_are_checked() {
        let good = br#"{"replica":"web.0","stream":"stdout","time":"t","line":"hi"}"#;
        assert!(Fleet::relay_line("web.0", good).is_some());
        assert!(Fleet::relay_line("web.1", good).is_none());
        assert!(Fleet::relay_line("web.0", b"not json").is_none());
    }
}
