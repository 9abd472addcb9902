//! Webhook events: push, pull and delete notifications POSTed to the
//! `[[webhooks]]` endpoints of the config.
//!
//! Who calls whom: the `api` layer calls [`Events::notify`] after a request
//! succeeded. It is the one place where the repository, the tag, the digest,
//! media type and size (from the registry's answer), the actor (the token's
//! subject) and the request (client address, method, user agent, request id)
//! are all known; the registry stays free of HTTP and of events. This module
//! calls no other layer: it uses `config` (the settings) and
//! `auth::scope::pattern_matches` (a pure function, the `team/*` patterns of
//! grants), and talks to the endpoints over HTTP (reqwest, rustls with ring).
//!
//! Delivery never slows the request. `notify` first checks each endpoint's
//! actions and repository patterns, which allocates nothing, so a registry
//! with no matching webhook pays only that check. When one matches, the body
//! is serialized once and one job per matching endpoint goes on a bounded
//! queue ([`QUEUE_CAPACITY`]); when the queue is full the job is dropped,
//! counted ([`EventStats::dropped`]) and warned about (at most every 10 s).
//! One task takes jobs off the queue and runs up to [`MAX_IN_FLIGHT`]
//! deliveries at once. An attempt that fails to connect, times out
//! (`timeout_secs`) or gets 408, 429 or a 5xx is retried after an exponential
//! back-off (`retry_backoff_ms`, doubling, capped at [`MAX_BACKOFF`], at
//! least a `Retry-After` in seconds) up to `max_retries` times; any other
//! answer that is not 2xx (3xx included: redirects are not followed) is final.
//!
//! Delivery is at least once while the process runs (a retry after a lost
//! answer sends the same event again: receivers dedupe on the event `id`)
//! and at most once across restarts: jobs still queued when the server stops
//! are lost. Events of different requests may arrive out of order.
//!
//! The body is distribution's notification envelope, `{"events":[{...}]}`
//! of media type [`MEDIA_TYPE`], one event per request, and is signed:
//! `X-Wharf-Signature: sha256=<hex HMAC-SHA256 of the exact body>` with the
//! endpoint's secret. Secrets are never logged, and URLs are logged without
//! their credentials and query.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hmac::{Hmac, Mac};
use serde::Serialize;
use tokio::sync::{Semaphore, mpsc};

use crate::auth::scope::{pattern_matches, valid_pattern};
pub use crate::config::EventAction;
use crate::config::WebhookSettings;

/// Media type of the body: distribution's notification envelope.
pub const MEDIA_TYPE: &str = "application/vnd.docker.distribution.events.v1+json";
/// `sha256=<hex>`: HMAC-SHA256 of the exact body with the endpoint's secret.
pub const SIGNATURE_HEADER: &str = "x-wharf-signature";
/// The event's action (`push`, `pull`, `delete`).
pub const EVENT_HEADER: &str = "x-wharf-event";
/// The event's id, the same on every attempt.
pub const DELIVERY_HEADER: &str = "x-wharf-delivery";
/// Deliveries waiting for their first attempt; past this, new ones are dropped.
pub const QUEUE_CAPACITY: usize = 1024;
/// Deliveries (attempts and back-off waits) in progress at once.
pub const MAX_IN_FLIGHT: usize = 32;
/// The longest wait between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Drops are warned about at most this often.
const DROP_WARN_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    #[error("webhook #{index}: {message}")]
    Invalid { index: usize, message: String },
    #[error("webhook #{index}: cannot read secret_file {path}: {source}")]
    SecretFile {
        index: usize,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("webhooks: cannot build the HTTP client: {0}")]
    Client(String),
}

/// What an event is about. Borrowed, so making one costs nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct Target<'a> {
    pub repository: &'a str,
    pub digest: Option<&'a str>,
    pub media_type: Option<&'a str>,
    pub size: Option<u64>,
    pub tag: Option<&'a str>,
}

/// The request that caused an event, and who made it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Origin<'a> {
    /// The client's address (the peer of the connection).
    pub addr: Option<SocketAddr>,
    pub method: &'a str,
    pub host: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    /// The request id; a new one is made when the request has none.
    pub request_id: Option<&'a str>,
    /// The user or robot named by the token; `None` when anonymous or when
    /// auth is off.
    pub actor: Option<&'a str>,
}

/// Counters since start, for logs and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventStats {
    /// Deliveries put on the queue.
    pub queued: u64,
    /// Deliveries a receiver answered with 2xx.
    pub delivered: u64,
    /// Deliveries given up (final answer or retries exhausted).
    pub failed: u64,
    /// Deliveries dropped because the queue was full.
    pub dropped: u64,
    /// Attempts after a first one.
    pub retries: u64,
}

/// The webhooks of a server: which endpoints want which events, and the
/// queue their deliveries go through.
pub struct Events {
    /// `None` when no webhook is configured: `notify` returns at once.
    inner: Option<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Job>,
    /// `host:port` of this replica, for the events' `source`.
    source_addr: String,
    /// Identifies this server process among replicas.
    instance_id: String,
}

struct Shared {
    endpoints: Vec<Endpoint>,
    client: reqwest::Client,
    queued: AtomicU64,
    delivered: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    retries: AtomicU64,
    started: Instant,
    /// Milliseconds since `started` of the last warning about drops, plus one
    /// (0: never warned).
    last_drop_warning: AtomicU64,
}

struct Endpoint {
    url: reqwest::Url,
    /// The URL without credentials or query, for logs.
    shown: String,
    key: Vec<u8>,
    repositories: Vec<String>,
    actions: u8,
    timeout: Duration,
    max_retries: u32,
    backoff: Duration,
}

struct Job {
    endpoint: usize,
    action: EventAction,
    id: Arc<str>,
    body: Bytes,
}

fn action_bit(a: EventAction) -> u8 {
    match a {
        EventAction::Push => 1,
        EventAction::Pull => 2,
        EventAction::Delete => 4,
    }
}

impl Endpoint {
    fn wants(&self, bit: u8, repository: &str) -> bool {
        self.actions & bit != 0
            && self
                .repositories
                .iter()
                .any(|p| pattern_matches(p, repository))
    }

    fn from_settings(index: usize, w: &WebhookSettings) -> Result<Endpoint, EventsError> {
        let invalid = |message: String| EventsError::Invalid { index, message };
        let url = reqwest::Url::parse(&w.url)
            .map_err(|e| invalid(format!("url is not a valid URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
            return Err(invalid("url must be an http:// or https:// URL".into()));
        }
        let key = match (&w.secret, &w.secret_file) {
            (Some(s), None) => s.0.clone().into_bytes(),
            (None, Some(path)) => {
                let text =
                    std::fs::read_to_string(path).map_err(|source| EventsError::SecretFile {
                        index,
                        path: path.clone(),
                        source,
                    })?;
                text.trim_end_matches(['\n', '\r']).as_bytes().to_vec()
            }
            (Some(_), Some(_)) => {
                return Err(invalid("set either secret or secret_file, not both".into()));
            }
            (None, None) => return Err(invalid("a secret or secret_file is required".into())),
        };
        if key.is_empty() {
            return Err(invalid("the secret is empty".into()));
        }
        if w.repositories.is_empty() {
            return Err(invalid(
                "repositories is empty (use [\"*\"] for all)".into(),
            ));
        }
        if let Some(bad) = w.repositories.iter().find(|p| !valid_pattern(p)) {
            return Err(invalid(format!(
                "{bad:?} is not a repository pattern (lowercase name, `*` for any run of characters)"
            )));
        }
        if w.actions.is_empty() {
            return Err(invalid("actions is empty (push, pull, delete)".into()));
        }
        if w.timeout_secs == 0 {
            return Err(invalid("timeout_secs must be at least 1".into()));
        }
        let mut shown = url.clone();
        let _ = shown.set_username("");
        let _ = shown.set_password(None);
        shown.set_query(None);
        shown.set_fragment(None);
        Ok(Endpoint {
            shown: shown.to_string(),
            url,
            key,
            repositories: w.repositories.clone(),
            actions: w.actions.iter().fold(0, |acc, a| acc | action_bit(*a)),
            timeout: Duration::from_secs(w.timeout_secs),
            max_retries: w.max_retries,
            backoff: Duration::from_millis(w.retry_backoff_ms.max(1)),
        })
    }
}

/// `sha256=<hex>`: the HMAC-SHA256 of `body` under `secret`, as sent in
/// [`SIGNATURE_HEADER`].
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes keys of any length.
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(secret)
        .expect("HMAC accepts keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Whether `header` is the signature of `body` under `secret` (compared in
/// constant time): what a receiver checks.
pub fn verify_signature(secret: &[u8], body: &[u8], header: &str) -> bool {
    let Some(hex_mac) = header.trim().strip_prefix("sha256=") else {
        return false;
    };
    let Ok(tag) = hex::decode(hex_mac) else {
        return false;
    };
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(secret)
        .expect("HMAC accepts keys of any length");
    mac.update(body);
    mac.verify_slice(&tag).is_ok()
}

/// The wait before retry number `retry` (0 for the first retry):
/// `initial * 2^retry`, at most [`MAX_BACKOFF`].
pub fn backoff_delay(initial: Duration, retry: u32) -> Duration {
    let factor = 1u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX);
    initial.saturating_mul(factor).min(MAX_BACKOFF)
}

// ---- the body -----------------------------------------------------------------

#[derive(Serialize)]
struct Envelope<'a> {
    events: [Event<'a>; 1],
}

#[derive(Serialize)]
struct Event<'a> {
    id: &'a str,
    timestamp: String,
    action: &'static str,
    target: TargetJson<'a>,
    request: RequestJson<'a>,
    actor: ActorJson<'a>,
    source: SourceJson<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TargetJson<'a> {
    repository: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    media_type: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    digest: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    size: Option<u64>,
    /// distribution sends the size twice, as `size` and `length`.
    #[serde(skip_serializing_if = "Option::is_none")]
    length: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tag: Option<&'a str>,
}

#[derive(Serialize)]
struct RequestJson<'a> {
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    addr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    host: Option<&'a str>,
    method: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    useragent: Option<&'a str>,
}

#[derive(Serialize)]
struct ActorJson<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SourceJson<'a> {
    addr: &'a str,
    #[serde(rename = "instanceID")]
    instance_id: &'a str,
}

/// The JSON body of one event.
fn event_body(
    id: &str,
    action: EventAction,
    target: &Target<'_>,
    origin: &Origin<'_>,
    request_id: &str,
    source_addr: &str,
    instance_id: &str,
) -> Result<Vec<u8>, serde_json::Error> {
    let envelope = Envelope {
        events: [Event {
            id,
            timestamp: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
            action: action.as_str(),
            target: TargetJson {
                repository: target.repository,
                media_type: target.media_type,
                digest: target.digest,
                size: target.size,
                length: target.size,
                tag: target.tag,
            },
            request: RequestJson {
                id: request_id,
                addr: origin.addr.map(|a| a.to_string()),
                host: origin.host,
                method: origin.method,
                useragent: origin.user_agent,
            },
            actor: ActorJson {
                name: origin.actor.filter(|a| !a.is_empty()),
            },
            source: SourceJson {
                addr: source_addr,
                instance_id,
            },
        }],
    };
    serde_json::to_vec(&envelope)
}

// ---- the service ------------------------------------------------------------

impl Events {
    /// No webhooks: every `notify` returns at once.
    pub fn disabled() -> Events {
        Events { inner: None }
    }

    /// Validates the endpoints and starts the delivery task (so it must be
    /// called within a tokio runtime). `listen` names this replica in the
    /// events' `source`.
    pub fn start(webhooks: &[WebhookSettings], listen: SocketAddr) -> Result<Events, EventsError> {
        if webhooks.is_empty() {
            return Ok(Events::disabled());
        }
        let endpoints = webhooks
            .iter()
            .enumerate()
            .map(|(i, w)| Endpoint::from_settings(i, w))
            .collect::<Result<Vec<_>, _>>()?;
        // reqwest is built with `rustls-no-provider`: ring is the provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .tls_backend_rustls()
            .user_agent(concat!("wharf-server/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| EventsError::Client(error_chain(&e)))?;
        let shared = Arc::new(Shared {
            endpoints,
            client,
            queued: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            started: Instant::now(),
            last_drop_warning: AtomicU64::new(0),
        });
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        tokio::spawn(run_deliveries(shared.clone(), rx));
        let host = hostname().unwrap_or_else(|| listen.ip().to_string());
        for e in &shared.endpoints {
            tracing::info!(url = %e.shown, "webhook endpoint configured");
        }
        Ok(Events {
            inner: Some(Inner {
                shared,
                tx,
                source_addr: format!("{host}:{}", listen.port()),
                instance_id: uuid::Uuid::new_v4().to_string(),
            }),
        })
    }

    /// Whether any endpoint wants `action` on `repository`. Allocates nothing.
    pub fn wants(&self, action: EventAction, repository: &str) -> bool {
        let Some(inner) = &self.inner else {
            return false;
        };
        let bit = action_bit(action);
        inner
            .shared
            .endpoints
            .iter()
            .any(|e| e.wants(bit, repository))
    }

    /// Queues the event for every endpoint that wants it; never waits.
    pub fn notify(&self, action: EventAction, target: &Target<'_>, origin: &Origin<'_>) {
        let Some(inner) = &self.inner else { return };
        let bit = action_bit(action);
        let wanted = |(_, e): &(usize, &Endpoint)| e.wants(bit, target.repository);
        let mut matching = inner.shared.endpoints.iter().enumerate().filter(wanted);
        let Some((first, _)) = matching.next() else {
            return;
        };
        let id: Arc<str> = uuid::Uuid::new_v4().to_string().into();
        let made_id;
        let request_id = match origin.request_id {
            Some(r) => r,
            None => {
                made_id = uuid::Uuid::new_v4().to_string();
                &made_id
            }
        };
        let body = match event_body(
            &id,
            action,
            target,
            origin,
            request_id,
            &inner.source_addr,
            &inner.instance_id,
        ) {
            Ok(b) => Bytes::from(b),
            Err(e) => {
                tracing::error!(error = %e, "could not serialize a webhook event");
                return;
            }
        };
        for endpoint in std::iter::once(first).chain(matching.map(|(i, _)| i)) {
            let job = Job {
                endpoint,
                action,
                id: id.clone(),
                body: body.clone(),
            };
            match inner.tx.try_send(job) {
                Ok(()) => {
                    inner.shared.queued.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => inner.shared.dropped(endpoint),
            }
        }
    }

    /// Counters since start (all zero when no webhook is configured).
    pub fn stats(&self) -> EventStats {
        let Some(inner) = &self.inner else {
            return EventStats::default();
        };
        let s = &inner.shared;
        EventStats {
            queued: s.queued.load(Ordering::Relaxed),
            delivered: s.delivered.load(Ordering::Relaxed),
            failed: s.failed.load(Ordering::Relaxed),
            dropped: s.dropped.load(Ordering::Relaxed),
            retries: s.retries.load(Ordering::Relaxed),
        }
    }
}

/// The outcome of one attempt.
enum Attempt {
    Delivered,
    /// Not retried: the receiver refused the event.
    Final(String),
    /// Retried after the back-off, or at least `after` (`Retry-After`).
    Retry {
        reason: String,
        after: Option<Duration>,
    },
}

impl Shared {
    fn dropped(&self, endpoint: usize) {
        let total = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        let now = self.started.elapsed().as_millis() as u64 + 1;
        let last = self.last_drop_warning.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= DROP_WARN_EVERY.as_millis() as u64;
        if due
            && self
                .last_drop_warning
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                url = %self.endpoints[endpoint].shown,
                dropped_total = total,
                queue = QUEUE_CAPACITY,
                "webhook queue is full: event dropped (receivers are slow or down)"
            );
        }
    }

    async fn deliver(&self, job: Job) {
        let ep = &self.endpoints[job.endpoint];
        let sig = signature(&ep.key, &job.body);
        let mut retry = 0u32;
        loop {
            let wait = match self.attempt(ep, &job, &sig).await {
                Attempt::Delivered => {
                    self.delivered.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(url = %ep.shown, id = %job.id, action = job.action.as_str(),
                        attempts = retry + 1, "webhook delivered");
                    return;
                }
                Attempt::Final(reason) => {
                    self.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(url = %ep.shown, id = %job.id, action = job.action.as_str(),
                        %reason, "webhook refused by the receiver; not retried");
                    return;
                }
                Attempt::Retry { reason, after } => {
                    if retry >= ep.max_retries {
                        self.failed.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(url = %ep.shown, id = %job.id, action = job.action.as_str(),
                            attempts = retry + 1, %reason, "webhook given up");
                        return;
                    }
                    let wait = backoff_delay(ep.backoff, retry)
                        .max(after.unwrap_or_default())
                        .min(MAX_BACKOFF);
                    tracing::info!(url = %ep.shown, id = %job.id, action = job.action.as_str(),
                        attempt = retry + 1, %reason, retry_in_ms = wait.as_millis() as u64,
                        "webhook attempt failed; will retry");
                    wait
                }
            };
            tokio::time::sleep(wait).await;
            retry += 1;
            self.retries.fetch_add(1, Ordering::Relaxed);
        }
    }

    async fn attempt(&self, ep: &Endpoint, job: &Job, sig: &str) -> Attempt {
        let sent = self
            .client
            .post(ep.url.clone())
            .timeout(ep.timeout)
            .header(reqwest::header::CONTENT_TYPE, MEDIA_TYPE)
            .header(SIGNATURE_HEADER, sig)
            .header(EVENT_HEADER, job.action.as_str())
            .header(DELIVERY_HEADER, &*job.id)
            .body(job.body.clone())
            .send()
            .await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) => {
                // Without the URL: it may carry credentials.
                let e = e.without_url();
                let reason = if e.is_timeout() {
                    format!("timed out after {} s", ep.timeout.as_secs())
                } else {
                    error_chain(&e)
                };
                return Attempt::Retry {
                    reason,
                    after: None,
                };
            }
        };
        let status = resp.status();
        if status.is_success() {
            return Attempt::Delivered;
        }
        let reason = format!("answered {status}");
        if status.is_server_error()
            || status == reqwest::StatusCode::REQUEST_TIMEOUT
            || status == reqwest::StatusCode::TOO_MANY_REQUESTS
        {
            let after = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            Attempt::Retry { reason, after }
        } else {
            Attempt::Final(reason)
        }
    }
}

async fn run_deliveries(shared: Arc<Shared>, mut rx: mpsc::Receiver<Job>) {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    while let Some(job) = rx.recv().await {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            shared.deliver(job).await;
            drop(permit);
        });
    }
}

/// The host's name (a pod's name in Kubernetes), through gethostname(2)
/// rather than /proc, which a hardened unit may hide.
fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]).trim().to_owned();
    (!name.is_empty()).then_some(name)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(url: &str) -> WebhookSettings {
        WebhookSettings {
            url: url.into(),
            secret: Some(crate::config::WebhookSecret("s3cret".into())),
            secret_file: None,
            repositories: vec!["team/*".into(), "tools/linter".into()],
            actions: vec![EventAction::Push, EventAction::Delete],
            timeout_secs: 5,
            max_retries: 3,
            retry_backoff_ms: 100,
        }
    }

    #[test]
    fn signature_is_hmac_sha256_of_the_body() {
        // RFC 4231 test case 2.
        let sig = signature(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            sig,
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert!(verify_signature(
            b"Jefe",
            b"what do ya want for nothing?",
            &sig
        ));
        assert!(!verify_signature(
            b"Jefe",
            b"what do ya want for nothing!",
            &sig
        ));
        assert!(!verify_signature(
            b"other",
            b"what do ya want for nothing?",
            &sig
        ));
        assert!(!verify_signature(b"Jefe", b"x", "sha1=00"));
        assert!(!verify_signature(b"Jefe", b"x", "sha256=zz"));
    }

    #[test]
    fn endpoints_filter_by_action_and_pattern() {
        let ep = Endpoint::from_settings(0, &hook("http://127.0.0.1:9/hook")).unwrap();
        let push = action_bit(EventAction::Push);
        assert!(ep.wants(push, "team/app"));
        assert!(ep.wants(push, "team/a/b"));
        assert!(ep.wants(push, "tools/linter"));
        assert!(!ep.wants(push, "teams/app"));
        assert!(!ep.wants(push, "tools/linter2"));
        assert!(!ep.wants(action_bit(EventAction::Pull), "team/app"));
        assert!(ep.wants(action_bit(EventAction::Delete), "team/app"));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let base = Duration::from_millis(500);
        let schedule: Vec<_> = (0..5).map(|r| backoff_delay(base, r).as_millis()).collect();
        assert_eq!(schedule, [500, 1000, 2000, 4000, 8000]);
        assert_eq!(backoff_delay(base, 20), MAX_BACKOFF);
        assert_eq!(backoff_delay(base, u32::MAX), MAX_BACKOFF);
        assert_eq!(backoff_delay(Duration::from_secs(3600), 0), MAX_BACKOFF);
    }

    #[test]
    fn bad_endpoints_are_refused_with_a_reason() {
        type Tweak = Box<dyn Fn(&mut WebhookSettings)>;
        let cases: Vec<(Tweak, &str)> = vec![
            (Box::new(|w| w.url = "ftp://x/".into()), "http"),
            (Box::new(|w| w.url = "not a url".into()), "valid URL"),
            (Box::new(|w| w.secret = None), "secret"),
            (
                Box::new(|w| w.secret = Some(crate::config::WebhookSecret(String::new()))),
                "empty",
            ),
            (
                Box::new(|w| w.secret_file = Some("/nonexistent".into())),
                "not both",
            ),
            (
                Box::new(|w| w.repositories = vec!["Team/*".into()]),
                "pattern",
            ),
            (Box::new(|w| w.repositories.clear()), "repositories"),
            (Box::new(|w| w.actions.clear()), "actions"),
            (Box::new(|w| w.timeout_secs = 0), "timeout_secs"),
        ];
        for (tweak, want) in cases {
            let mut w = hook("http://127.0.0.1:9/");
            tweak(&mut w);
            let err = Endpoint::from_settings(2, &w)
                .err()
                .expect(want)
                .to_string();
            assert!(err.starts_with("webhook #2: "), "{err}");
            assert!(err.contains(want), "{err} should mention {want}");
            assert!(!err.contains("s3cret"), "{err}");
        }
    }

    #[test]
    fn secret_file_and_logged_url() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "from-file\n").unwrap();
        let mut w = hook("https://user:pw@hooks.example:8443/in?token=abc");
        w.secret = None;
        w.secret_file = Some(path);
        let ep = Endpoint::from_settings(0, &w).unwrap();
        assert_eq!(ep.key, b"from-file");
        assert_eq!(ep.shown, "https://hooks.example:8443/in");
        let dbg = format!("{:?}", hook("http://x/"));
        assert!(!dbg.contains("s3cret"), "{dbg}");
    }

    #[test]
    fn body_is_a_distribution_envelope() {
        let target = Target {
            repository: "team/app",
            digest: Some("sha256:abc"),
            media_type: Some("application/vnd.oci.image.manifest.v1+json"),
            size: Some(42),
            tag: Some("v1"),
        };
        let origin = Origin {
            addr: Some("10.1.2.3:4567".parse().unwrap()),
            method: "PUT",
            host: Some("registry:5000"),
            user_agent: Some("docker/27"),
            request_id: None,
            actor: Some("alice"),
        };
        let body = event_body(
            "ev1",
            EventAction::Push,
            &target,
            &origin,
            "req1",
            "node:5000",
            "inst",
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let e = &v["events"][0];
        assert_eq!(e["id"], "ev1");
        assert_eq!(e["action"], "push");
        assert_eq!(e["target"]["repository"], "team/app");
        assert_eq!(e["target"]["digest"], "sha256:abc");
        assert_eq!(
            e["target"]["mediaType"],
            "application/vnd.oci.image.manifest.v1+json"
        );
        assert_eq!(e["target"]["size"], 42);
        assert_eq!(e["target"]["tag"], "v1");
        assert_eq!(e["request"]["addr"], "10.1.2.3:4567");
        assert_eq!(e["request"]["method"], "PUT");
        assert_eq!(e["request"]["useragent"], "docker/27");
        assert_eq!(e["request"]["id"], "req1");
        assert_eq!(e["actor"]["name"], "alice");
        assert_eq!(e["source"]["addr"], "node:5000");
        chrono::DateTime::parse_from_rfc3339(e["timestamp"].as_str().unwrap()).unwrap();
        // Anonymous: an empty actor object.
        let anon = Origin {
            actor: Some(""),
            ..origin
        };
        let body = event_body("e", EventAction::Pull, &target, &anon, "r", "n", "i").unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["events"][0]["actor"], serde_json::json!({}));
    }

    #[tokio::test]
    async fn no_matching_endpoint_queues_nothing() {
        let events = Events::start(
            &[hook("http://127.0.0.1:9/")],
            "127.0.0.1:5000".parse().unwrap(),
        )
        .unwrap();
        let origin = Origin {
            method: "GET",
            ..Origin::default()
        };
        let target = Target {
            repository: "other/app",
            ..Target::default()
        };
        assert!(!events.wants(EventAction::Push, "other/app"));
        events.notify(EventAction::Push, &target, &origin);
        // Pull is not subscribed, even on a matching repository.
        let target = Target {
            repository: "team/app",
            ..Target::default()
        };
        events.notify(EventAction::Pull, &target, &origin);
        assert_eq!(events.stats(), EventStats::default());
        let disabled = Events::disabled();
        assert!(!disabled.wants(EventAction::Push, "team/app"));
        disabled.notify(EventAction::Push, &target, &origin);
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_without_waiting() {
        // A receiver that accepts connections and never answers: every
        // delivery hangs, the in-flight slots fill, then the queue.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let holder = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((sock, _)) = listener.accept().await {
                held.push(sock);
            }
        });
        let mut w = hook(&format!("http://{addr}/"));
        w.repositories = vec!["*".into()];
        w.actions = EventAction::ALL.to_vec();
        w.timeout_secs = 60;
        let events = Events::start(&[w], "127.0.0.1:5000".parse().unwrap()).unwrap();
        let target = Target {
            repository: "team/app",
            digest: Some("sha256:00"),
            ..Target::default()
        };
        let origin = Origin {
            method: "GET",
            ..Origin::default()
        };
        // Let the delivery task take the first jobs into its slots.
        for _ in 0..MAX_IN_FLIGHT + 1 {
            events.notify(EventAction::Pull, &target, &origin);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while events.stats().queued < (MAX_IN_FLIGHT + 1) as u64 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let started = Instant::now();
        let extra = QUEUE_CAPACITY + 50;
        for _ in 0..extra {
            events.notify(EventAction::Pull, &target, &origin);
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "notify waited: {:?}",
            started.elapsed()
        );
        let stats = events.stats();
        assert!(stats.dropped >= 50, "{stats:?}");
        assert_eq!(
            stats.queued + stats.dropped,
            (MAX_IN_FLIGHT + 1 + extra) as u64,
            "{stats:?}"
        );
        assert_eq!(stats.delivered, 0);
        holder.abort();
    }

    #[test]
    fn the_documented_example_is_valid() {
        // config/server.toml shows a [[webhooks]] table commented out.
        let example =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/server.toml");
        let text = std::fs::read_to_string(example).unwrap();
        let start = text.find("# [[webhooks]]").expect("a [[webhooks]] example");
        let table: String = text[start..]
            .lines()
            .map(|l| l.strip_prefix("# ").unwrap_or(l))
            .collect::<Vec<_>>()
            .join("\n");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hooks.toml");
        std::fs::write(&file, table).unwrap();
        let s = crate::Settings::load(Some(&file), Vec::new(), &[]).unwrap();
        assert_eq!(s.webhooks.len(), 1);
        let ep = Endpoint::from_settings(0, &s.webhooks[0]).unwrap();
        assert!(ep.wants(action_bit(EventAction::Push), "team/app"));
        assert!(!ep.wants(action_bit(EventAction::Pull), "team/app"));
    }

    #[test]
    fn hostname_is_known() {
        let h = hostname().expect("a host name");
        assert!(!h.contains('\0'), "{h:?}");
    }
}
