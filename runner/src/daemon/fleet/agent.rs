//! The node agent's long-lived tasks, started by `daemon::run` when the
//! node has joined:
//!
//! - the channel: `GET /api/v1/node/channel` (NDJSON of `ServerMessage`),
//!   reconnected with a back-off of 100 ms doubling to 3 s; an Assign is
//!   stored in the catalog (`store`) in one transaction, then wakes the
//!   reconciler; a Logs request starts an upload of that replica's logs.
//! - heartbeats every `heartbeat_secs` (facts, free memory, running
//!   containers).
//! - the reconciler: every second and on every Assign, `reconcile::plan`
//!   against the daemon's containers, the actions carried out with
//!   `images` (pull with the node credential) and `containers`, then every
//!   desired replica's status compared with what was last reported and the
//!   changes posted. After a reconnect the full set is reported again.
//!
//! Nothing is stopped because the server cannot be reached: the desired set
//! stays the stored one until the server sends another.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use sqlx::SqlitePool;
use tokio::sync::{Notify, mpsc};
use wharf_fleet_proto::{
    Heartbeat, LogLine, REPLICA_LABEL, ReplicaSpec, ReplicaState, ReplicaStatus, Report,
    ServerMessage,
};

use super::client::{Http, PostError, error_chain};
use super::node::NodeFile;
use super::reconcile::{self, Action, one_line, spec_hash};
use super::{FleetError, facts, store};
use crate::api::{CreateRequest, FrameKind, PullEvent, RestartPolicy, decode_frame};
use crate::daemon::containers::{Containers, Observed, ObservedState};
use crate::daemon::images::Images;

/// How often the reconciler looks at the containers (exits, restarts).
const TICK: Duration = Duration::from_secs(1);
/// Reconnect back-off: first wait and cap.
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(3);
/// A replica that failed (pull denied, start failed) is tried again after
/// this long, or at once when the server sends another spec for it.
const RETRY_AFTER: Duration = Duration::from_secs(30);
/// The longest NDJSON line the channel accepts (an Assign of many replicas).
const MAX_LINE: usize = 8 << 20;
/// Bounds on what an Assign may hold.
const MAX_REPLICAS: usize = 10_000;
/// A container stopped by the agent gets this long before SIGKILL.
const STOP_TIMEOUT_SECS: u64 = 10;

pub struct Agent {
    node: NodeFile,
    root: PathBuf,
    /// Small calls (report, heartbeat) and the channel (a read timeout of a
    /// few heartbeats: a silent server is a dead one).
    api: Http,
    channel: Http,
    /// Log uploads: no read timeout (the server answers at the end).
    logs: Http,
    containers: Arc<Containers>,
    images: Arc<Images>,
    pool: SqlitePool,
    desired: Mutex<Vec<ReplicaSpec>>,
    wake: Notify,
    /// Notified when an Assign from the server has been stored.
    assigned: Notify,
    /// Set when the channel (re)connects: report the full set again.
    report_all: AtomicBool,
}

#[derive(Debug, Clone)]
struct Failure {
    hash: String,
    reason: String,
    at: Instant,
}

impl Agent {
    /// Loads the desired set from the catalog and starts the tasks.
    pub async fn start(
        node: NodeFile,
        root: PathBuf,
        containers: Arc<Containers>,
        images: Arc<Images>,
        pool: SqlitePool,
    ) -> Result<Arc<Agent>, FleetError> {
        let heartbeat = Duration::from_secs(node.heartbeat_secs.max(1));
        let api = Http::for_node(&node.server, &root, &node, Some(Duration::from_secs(30)))?;
        let channel = Http::for_node(
            &node.server,
            &root,
            &node,
            Some(heartbeat * 3 + Duration::from_secs(2)),
        )?;
        let logs = Http::for_node(&node.server, &root, &node, None)?;
        let desired = store::load(&pool).await?;
        tracing::info!(server = %node.server, node = %node.name, replicas = desired.len(), "fleet agent starting");
        let agent = Arc::new(Agent {
            node,
            root,
            api,
            channel,
            logs,
            containers,
            images,
            pool,
            desired: Mutex::new(desired),
            wake: Notify::new(),
            assigned: Notify::new(),
            report_all: AtomicBool::new(true),
        });
        tokio::spawn(agent.clone().channel_loop());
        tokio::spawn(agent.clone().heartbeat_loop());
        tokio::spawn(agent.clone().reconcile_loop());
        Ok(agent)
    }

    fn desired(&self) -> Vec<ReplicaSpec> {
        self.desired
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    // ------------------------------------------------------------ channel

    async fn channel_loop(self: Arc<Self>) {
        let mut backoff = BACKOFF_START;
        let mut last_error: Option<String> = None;
        loop {
            match self.channel_once().await {
                Ok(()) => {
                    backoff = BACKOFF_START;
                    if last_error.take().is_some() {
                        tracing::info!("fleet channel closed by the server; reconnecting");
                    }
                }
                Err((e, was_up)) => {
                    if was_up {
                        backoff = BACKOFF_START;
                    }
                    // One line per change of trouble, not one per retry.
                    if last_error.as_deref() != Some(e.as_str()) {
                        tracing::warn!(server = %self.node.server, error = %e, "fleet channel down; retrying");
                        last_error = Some(e);
                    }
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// One connection: Err((why, whether it had been up)).
    async fn channel_once(self: &Arc<Self>) -> Result<(), (String, bool)> {
        let resp = self
            .channel
            .request(reqwest::Method::GET, "/api/v1/node/channel")
            .header(reqwest::header::ACCEPT, "application/x-ndjson")
            .send()
            .await
            .map_err(|e| (super::client::unreachable(&e, &self.node.server), false))?;
        let status = resp.status();
        if status == reqwest::StatusCode::UNAUTHORIZED {
            return Err((
                format!(
                    "the server refused this node's credential ({status}): if node {} was removed, remove {} and join again",
                    self.node.name,
                    super::node::path(&self.root).display()
                ),
                false,
            ));
        }
        if !status.is_success() {
            return Err((format!("channel: {status}"), false));
        }
        tracing::info!(server = %self.node.server, node = %self.node.name, "fleet channel connected");
        self.report_all.store(true, Ordering::SeqCst);
        self.wake.notify_one();
        let mut body = resp.bytes_stream();
        let mut buf: Vec<u8> = Vec::new();
        loop {
            let chunk = match body.next().await {
                None => return Ok(()),
                Some(Ok(c)) => c,
                Some(Err(e)) => return Err((format!("channel: {}", error_chain(&e)), true)),
            };
            buf.extend_from_slice(&chunk);
            while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buf.drain(..=nl).collect();
                let line = line.trim_ascii();
                if line.is_empty() {
                    continue;
                }
                match serde_json::from_slice::<ServerMessage>(line) {
                    Ok(m) => self.handle(m).await,
                    Err(e) => {
                        tracing::warn!(error = %e, "fleet channel: message not understood; skipped")
                    }
                }
            }
            if buf.len() > MAX_LINE {
                return Err((format!("channel: a line over {MAX_LINE} bytes"), true));
            }
        }
    }

    async fn handle(self: &Arc<Self>, m: ServerMessage) {
        match m {
            ServerMessage::Ping => {}
            ServerMessage::Assign { replicas } => {
                if let Err(e) = self.assign(replicas).await {
                    tracing::error!(error = %e, "storing the assigned replicas");
                }
            }
            ServerMessage::Logs {
                request,
                replica,
                follow,
                tail,
            } => {
                tokio::spawn(self.clone().upload_logs(request, replica, follow, tail));
            }
        }
    }

    /// Keeps the valid, distinct replicas of an Assign, stores them in one
    /// transaction, then wakes the reconciler.
    async fn assign(&self, replicas: Vec<ReplicaSpec>) -> Result<(), FleetError> {
        let mut seen = HashSet::new();
        let mut keep = Vec::new();
        for r in replicas.into_iter().take(MAX_REPLICAS) {
            if let Err(why) = check_spec(&r) {
                tracing::warn!(replica = %r.id.chars().take(128).collect::<String>(), "assigned replica refused: {why}");
                continue;
            }
            if seen.insert(r.id.clone()) {
                keep.push(r);
            }
        }
        keep.sort_by(|a, b| a.id.cmp(&b.id));
        store::replace(&self.pool, &keep).await?;
        let changed = {
            let mut d = self.desired.lock().unwrap_or_else(|p| p.into_inner());
            let changed = *d != keep;
            *d = keep;
            changed
        };
        if changed {
            tracing::info!(replicas = self.desired().len(), "fleet: new desired set");
        }
        self.assigned.notify_one();
        self.wake.notify_one();
        Ok(())
    }

    // ---------------------------------------------------------- heartbeat

    async fn heartbeat_loop(self: Arc<Self>) {
        let period = Duration::from_secs(self.node.heartbeat_secs.max(1));
        let mut last_failed = false;
        loop {
            let running = self
                .containers
                .observe()
                .await
                .map(|cs| {
                    cs.iter()
                        .filter(|c| c.state == ObservedState::Running)
                        .count()
                })
                .unwrap_or(0);
            let root = self.root.clone();
            let labels = self.node.labels.clone();
            let gathered = tokio::task::spawn_blocking(move || {
                (facts::gather(&root, &labels), facts::memory().1)
            })
            .await;
            if let Ok((facts, free)) = gathered {
                let hb = Heartbeat {
                    facts,
                    free_memory_bytes: free,
                    running_containers: u32::try_from(running).unwrap_or(u32::MAX),
                };
                match self.api.post_json("/api/v1/node/heartbeat", &hb).await {
                    Ok(()) => last_failed = false,
                    Err(e) => {
                        if !last_failed {
                            tracing::warn!(error = %e, "fleet heartbeat failed");
                        }
                        last_failed = true;
                    }
                }
            }
            tokio::time::sleep(period).await;
        }
    }

    // ---------------------------------------------------------- reconcile

    async fn reconcile_loop(self: Arc<Self>) {
        let mut reported: HashMap<String, ReplicaStatus> = HashMap::new();
        let mut failures: HashMap<String, Failure> = HashMap::new();
        // The stored set may be stale after a restart (the server may have
        // moved replicas away while this node was gone): give the server a
        // heartbeat's time to send a fresh one before acting on it, so a
        // returning node does not start pulling what is no longer its own.
        // A server that does not answer leaves the stored set in charge.
        let grace = Duration::from_secs(self.node.heartbeat_secs.max(1));
        let _ = tokio::time::timeout(grace, self.assigned.notified()).await;
        loop {
            if self.report_all.swap(false, Ordering::SeqCst) {
                reported.clear();
            }
            self.tick(&mut reported, &mut failures).await;
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(TICK) => {}
            }
        }
    }

    async fn tick(
        &self,
        reported: &mut HashMap<String, ReplicaStatus>,
        failures: &mut HashMap<String, Failure>,
    ) {
        let desired = self.desired();
        let hashes: HashMap<&str, String> = desired
            .iter()
            .map(|s| (s.id.as_str(), spec_hash(s)))
            .collect();
        failures.retain(|id, f| hashes.get(id.as_str()) == Some(&f.hash));
        let current = match self.containers.observe().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "fleet: listing containers");
                return;
            }
        };
        let hold = |s: &ReplicaSpec| {
            failures
                .get(&s.id)
                .is_some_and(|f| f.at.elapsed() < RETRY_AFTER)
        };
        let actions = reconcile::plan(&desired, &current, &hold);
        let mut work = Vec::new();
        let mut removals = Vec::new();
        let mut starts = Vec::new();
        for action in actions {
            match action {
                Action::Remove { container, name } => removals.push((container, name)),
                Action::Replace { container, spec } => {
                    tracing::info!(replica = %spec.id, "fleet: the spec changed; replacing the container");
                    work.push((spec, Some(container)));
                }
                Action::Create(spec) => work.push((spec, None)),
                Action::Start { container, spec } => starts.push((container, spec)),
            }
        }
        // Removals first (their ports and memory are then free), side by
        // side: each may wait out its stop timeout.
        futures::future::join_all(removals.iter().map(|(container, name)| async move {
            tracing::info!(container = %name, "fleet: removing a replica no longer assigned here");
            if let Err(e) = self.remove(container).await {
                tracing::warn!(container = %name, error = %e, "fleet: removing");
            }
        }))
        .await;
        for (container, spec) in starts {
            let result = self
                .containers
                .start(&container)
                .await
                .map_err(|e| e.to_string());
            record(failures, &spec, result);
        }
        if !work.is_empty() {
            // Report `pulling` for all of them at once, then run them side by side.
            let pulling: Vec<ReplicaStatus> = work
                .iter()
                .map(|(s, _)| ReplicaStatus {
                    id: s.id.clone(),
                    generation: s.generation,
                    state: ReplicaState::Pulling,
                    exit_code: None,
                    reason: None,
                    container_id: None,
                })
                .collect();
            self.post_report(pulling, reported).await;
            // Each image once, then the containers.
            let mut images: Vec<&str> = work.iter().map(|(s, _)| s.image.as_str()).collect();
            images.sort_unstable();
            images.dedup();
            let pulled: HashMap<&str, Result<(), String>> = images
                .iter()
                .copied()
                .zip(futures::future::join_all(images.iter().map(|i| self.pull(i))).await)
                .collect();
            let results = futures::future::join_all(work.iter().map(|(s, old)| async {
                match pulled.get(s.image.as_str()) {
                    Some(Err(e)) => Err(e.clone()),
                    _ => self.deploy(s, old.as_deref()).await,
                }
            }))
            .await;
            for ((spec, _), result) in work.iter().zip(results) {
                record(failures, spec, result);
            }
        }
        let current = if desired.is_empty() && reported.is_empty() {
            Vec::new()
        } else {
            match self.containers.observe().await {
                Ok(c) => c,
                Err(_) => return,
            }
        };
        let by_name: HashMap<&str, &Observed> =
            current.iter().map(|c| (c.name.as_str(), c)).collect();
        reported.retain(|id, _| hashes.contains_key(id.as_str()));
        let statuses: Vec<ReplicaStatus> = desired
            .iter()
            .map(|s| {
                reconcile::status(
                    s,
                    by_name.get(s.id.as_str()).copied(),
                    failures.get(&s.id).map(|f| f.reason.as_str()),
                )
            })
            .filter(|st| reported.get(&st.id) != Some(st))
            .collect();
        if !statuses.is_empty() {
            self.post_report(statuses, reported).await;
        }
    }

    /// Posts statuses; they count as reported once the server took them or
    /// refused them (a 4xx will not change by sending again).
    async fn post_report(
        &self,
        replicas: Vec<ReplicaStatus>,
        reported: &mut HashMap<String, ReplicaStatus>,
    ) {
        for st in &replicas {
            tracing::debug!(replica = %st.id, state = ?st.state, "fleet: reporting");
        }
        let report = Report { replicas };
        match self.api.post_json("/api/v1/node/report", &report).await {
            Ok(()) => {}
            Err(PostError::Refused(403, _)) if report.replicas.len() > 1 => {
                // One replica the server no longer counts as ours refuses
                // the batch: send them one by one, so the others get through.
                for st in &report.replicas {
                    let one = Report {
                        replicas: vec![st.clone()],
                    };
                    if let Err(e) = self.api.post_json("/api/v1/node/report", &one).await {
                        tracing::warn!(replica = %st.id, error = %e, "fleet: report refused");
                    }
                }
            }
            Err(PostError::Refused(code, m)) => {
                tracing::warn!(status = code, error = %m, "fleet: report refused");
            }
            Err(e @ PostError::Unreachable(_)) => {
                tracing::debug!(error = %e, "fleet: report not delivered; will retry");
                return;
            }
        }
        for st in report.replicas {
            reported.insert(st.id.clone(), st);
        }
    }

    async fn remove(&self, container: &str) -> crate::daemon::Result<()> {
        // A graceful stop first; then rm -f for whatever is left.
        match self
            .containers
            .stop(container, Some(STOP_TIMEOUT_SECS))
            .await
        {
            Ok(()) | Err(crate::daemon::Error::NotModified(_)) => {}
            Err(crate::daemon::Error::NotFound(_)) => return Ok(()),
            Err(e) => tracing::debug!(container, error = %e, "fleet: stop before removal"),
        }
        match self.containers.remove(container, true, true).await {
            Ok(()) | Err(crate::daemon::Error::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Pulls an image with the node credential; the error is the reason.
    async fn pull(&self, image: &str) -> Result<(), String> {
        let (tx, mut rx) = mpsc::channel::<PullEvent>(64);
        let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
        let pulled = self.images.pull(image, tx).await;
        let _ = drain.await;
        pulled
            .map(|_| ())
            .map_err(|e| format!("pulling {image}: {e}"))
    }

    /// Create and start one replica whose image was pulled; the error is
    /// the one-line reason. `replacing`: the container of its previous
    /// spec, removed only now (a pull that failed left it running).
    async fn deploy(&self, spec: &ReplicaSpec, replacing: Option<&str>) -> Result<(), String> {
        let req = create_request(spec)?;
        if let Some(old) = replacing {
            self.remove(old)
                .await
                .map_err(|e| format!("removing the container of the previous spec: {e}"))?;
        }
        let created = self
            .containers
            .create(req)
            .await
            .map_err(|e| format!("creating the container: {e}"))?;
        if let Err(e) = self.containers.start(&created.id).await {
            // Nothing half-deployed: the container goes; a retry makes it again.
            let _ = self.containers.remove(&created.id, true, true).await;
            return Err(e.to_string());
        }
        tracing::info!(replica = %spec.id, container = %created.id, "fleet: replica running");
        Ok(())
    }

    // --------------------------------------------------------------- logs

    /// Streams a replica's logs as NDJSON `LogLine`s to
    /// `POST /api/v1/node/logs/{request}` until they end or the server
    /// closes the upload. A replica that is not this node's sends nothing.
    async fn upload_logs(
        self: Arc<Self>,
        request: String,
        replica: String,
        follow: bool,
        tail: Option<u64>,
    ) {
        if !valid_request_id(&request) {
            tracing::warn!("fleet: logs request with an invalid id; ignored");
            return;
        }
        let ours = self.containers.observe().await.ok().and_then(|cs| {
            cs.into_iter()
                .find(|c| c.name == replica && c.labels.get(REPLICA_LABEL) == Some(&replica))
        });
        let frames = match &ours {
            Some(c) => {
                let tail = tail.map(|t| usize::try_from(t).unwrap_or(usize::MAX));
                self.containers.logs(&c.id, follow, tail, true).await.ok()
            }
            None => None,
        };
        let (tx, rx) = mpsc::channel::<Bytes>(64);
        let forward = tokio::spawn(async move {
            let Some(mut frames) = frames else { return };
            let mut buf: Vec<u8> = Vec::new();
            while let Some(chunk) = frames.recv().await {
                buf.extend_from_slice(&chunk);
                loop {
                    let (line, used) = match decode_frame(&buf) {
                        Ok(Some((kind, payload, used))) => {
                            (log_line(&replica, kind, payload), used)
                        }
                        Ok(None) => break,
                        Err(_) => return,
                    };
                    buf.drain(..used);
                    if let Some(l) = line
                        && tx.send(l).await.is_err()
                    {
                        return;
                    }
                }
            }
        });
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|b| (Ok::<_, std::io::Error>(b), rx))
        });
        let sent = self
            .logs
            .request(
                reqwest::Method::POST,
                &format!("/api/v1/node/logs/{request}"),
            )
            .header(reqwest::header::CONTENT_TYPE, "application/x-ndjson")
            .body(reqwest::Body::wrap_stream(stream))
            .send()
            .await;
        // The server answered or went away: stop reading the log.
        forward.abort();
        if let Err(e) = sent {
            tracing::debug!(error = %error_chain(&e), "fleet: logs upload ended");
        }
    }
}

/// Keeps (or clears) a replica's failure after an attempt.
fn record(failures: &mut HashMap<String, Failure>, spec: &ReplicaSpec, result: Result<(), String>) {
    match result {
        Ok(()) => {
            failures.remove(&spec.id);
        }
        Err(reason) => {
            let reason = one_line(&reason);
            tracing::warn!(replica = %spec.id, %reason, "fleet: replica failed");
            failures.insert(
                spec.id.clone(),
                Failure {
                    hash: spec_hash(spec),
                    reason,
                    at: Instant::now(),
                },
            );
        }
    }
}

/// A log frame as one NDJSON `LogLine` (the payload is `TIME LINE\n`, the
/// daemon's `logs -t` form).
fn log_line(replica: &str, kind: FrameKind, payload: &[u8]) -> Option<Bytes> {
    let stream = match kind {
        FrameKind::Stdout => "stdout",
        FrameKind::Stderr => "stderr",
        FrameKind::Exit => return None,
    };
    let text = String::from_utf8_lossy(payload);
    let (time, line) = text.split_once(' ').unwrap_or(("", &text));
    let line = line.strip_suffix('\n').unwrap_or(line);
    let line = line.strip_suffix('\r').unwrap_or(line);
    let mut out = serde_json::to_vec(&LogLine {
        replica: replica.to_string(),
        stream: stream.to_string(),
        time: time.to_string(),
        line: line.to_string(),
    })
    .ok()?;
    out.push(b'\n');
    Some(Bytes::from(out))
}

/// A logs request id goes into a URL path: plain characters, bounded.
pub fn valid_request_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !id.starts_with('.')
}

/// Checks an assigned spec before anything is made of it.
fn check_spec(r: &ReplicaSpec) -> Result<(), String> {
    let name_ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 128
            && s.as_bytes()[0].is_ascii_alphanumeric()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    };
    if !name_ok(&r.id) || r.id.len() < 2 {
        return Err("invalid replica id".into());
    }
    if !name_ok(&r.deployment) {
        return Err("invalid deployment name".into());
    }
    if r.image.is_empty() || r.image.len() > 1024 {
        return Err("invalid image".into());
    }
    if r.container.env.len() > 1024 || r.container.cmd.len() > 1024 || r.container.ports.len() > 256
    {
        return Err("too many env, cmd or port values".into());
    }
    Ok(())
}

/// The runner core's create request for a replica.
pub fn create_request(spec: &ReplicaSpec) -> Result<CreateRequest, String> {
    let restart = spec
        .container
        .restart
        .as_deref()
        .map(RestartPolicy::parse)
        .transpose()?
        .filter(|r| !r.is_none());
    let publish = spec
        .container
        .ports
        .iter()
        .map(|p| crate::cli::network::parse_publish(p))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(CreateRequest {
        image: spec.image.clone(),
        name: Some(spec.id.clone()),
        cmd: (!spec.container.cmd.is_empty()).then(|| spec.container.cmd.clone()),
        env: spec.container.env.clone(),
        memory: spec.container.memory_bytes.filter(|m| *m > 0),
        cpus: spec
            .container
            .nano_cpus
            .filter(|n| *n > 0)
            .map(|n| n as f64 / 1e9),
        restart,
        publish,
        labels: reconcile::labels_of(spec),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_frames_become_log_lines() {
        let l = log_line("web.0", FrameKind::Stderr, b"2026-11-28T12:00:00.1Z oops\n").unwrap();
        let v: serde_json::Value = serde_json::from_slice(&l).unwrap();
        assert_eq!(v["replica"], "web.0");
        assert_eq!(v["stream"], "stderr");
        assert_eq!(v["time"], "2026-11-28T12:00:00.1Z");
        assert_eq!(v["line"], "oops");
        assert!(l.ends_with(b"\n"));
        assert!(log_line("web.0", FrameKind::Exit, b"{}").is_none());
    }

    #[test]
    fn request_ids_are_path_safe() {
        assert!(valid_request_id("3f2a-11_x"));
        for bad in ["", "../x", "a/b", "a b", ".hidden", &"a".repeat(129)] {
            assert!(!valid_request_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_spec_becomes_a_create_request() {
        let spec = ReplicaSpec {
            id: "web.0".into(),
            deployment: "web".into(),
            generation: 3,
            image: "reg:5000/web:1".into(),
            container: wharf_fleet_proto::ContainerSpec {
                env: vec!["A=1".into()],
                ports: vec!["8080:80".into()],
                memory_bytes: Some(64 << 20),
                nano_cpus: Some(500_000_000),
                restart: Some("on-failure:3".into()),
                cmd: vec!["sh".into(), "-c".into(), "true".into()],
            },
        };
        let r = create_request(&spec).unwrap();
        assert_eq!(r.name.as_deref(), Some("web.0"));
        assert_eq!(r.cpus, Some(0.5));
        assert_eq!(r.memory, Some(64 << 20));
        assert_eq!(r.publish.len(), 1);
        let restart = r.restart.unwrap();
        assert_eq!(
            (restart.name.as_str(), restart.maximum_retry_count),
            ("on-failure", 3)
        );
        assert_eq!(r.labels[REPLICA_LABEL], "web.0");
        assert_eq!(r.labels[wharf_fleet_proto::DEPLOYMENT_LABEL], "web");
        let mut bad = spec.clone();
        bad.container.ports = vec!["not a port".into()];
        assert!(create_request(&bad).is_err());
        let mut no = spec;
        no.container.restart = Some("no".into());
        no.container.cmd.clear();
        let r = create_request(&no).unwrap();
        assert!(r.restart.is_none() && r.cmd.is_none());
    }

    #[test]
    fn specs_are_checked() {
        let mut s = ReplicaSpec {
            id: "web.0".into(),
            deployment: "web".into(),
            generation: 1,
            image: "reg/x".into(),
            container: wharf_fleet_proto::ContainerSpec {
                env: vec![],
                ports: vec![],
                memory_bytes: None,
                nano_cpus: None,
                restart: None,
                cmd: vec![],
            },
        };
        check_spec(&s).unwrap();
        s.id = "../etc".into();
        assert!(check_spec(&s).is_err());
    }
}
