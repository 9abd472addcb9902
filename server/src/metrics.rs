//! The server's Prometheus metrics, served at `/metrics` in the OpenMetrics
//! text format (which Prometheus scrapes natively).
//!
//! Cheap on the hot path: a request touches only atomics and one short
//! histogram lock. Route labels are a small fixed set ([`RouteLabel`]), never
//! raw paths; the counter of each (route, common status) pair is resolved once
//! and kept, so a request does no label hashing or allocation. The figures
//! that come from the catalog (blobs and bytes stored, upload sessions) are
//! read at scrape time through the registry and cached for
//! `metrics.catalog_refresh_secs`, never by walking the store.
//!
//! A leaf: called by `api` (requests, `/metrics`) and by garbage collection
//! ([`Metrics::gc_run`], [`Metrics::gc_failed`]); calls nothing.

use std::sync::Mutex;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// The content type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Which endpoint a request went to: the only route label there is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RouteLabel {
    Base,
    Blob,
    BlobUpload,
    Manifest,
    Tags,
    Catalog,
    Referrers,
    Token,
    Other,
}

impl RouteLabel {
    pub const ALL: [RouteLabel; 9] = [
        RouteLabel::Base,
        RouteLabel::Blob,
        RouteLabel::BlobUpload,
        RouteLabel::Manifest,
        RouteLabel::Tags,
        RouteLabel::Catalog,
        RouteLabel::Referrers,
        RouteLabel::Token,
        RouteLabel::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RouteLabel::Base => "base",
            RouteLabel::Blob => "blob",
            RouteLabel::BlobUpload => "blob_upload",
            RouteLabel::Manifest => "manifest",
            RouteLabel::Tags => "tags",
            RouteLabel::Catalog => "catalog",
            RouteLabel::Referrers => "referrers",
            RouteLabel::Token => "token",
            RouteLabel::Other => "other",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl EncodeLabelValue for RouteLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    route: RouteLabel,
    status: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RouteOnly {
    route: RouteLabel,
}

/// Statuses whose counters are resolved once and kept; any other status
/// goes through the label family (a hash lookup), which is rare.
const COMMON_STATUSES: [u16; 20] = [
    200, 201, 202, 204, 206, 301, 302, 307, 400, 401, 403, 404, 405, 409, 413, 416, 429, 500, 502,
    503,
];

fn status_index(status: u16) -> Option<usize> {
    COMMON_STATUSES.iter().position(|&s| s == status)
}

const N_ROUTES: usize = RouteLabel::ALL.len();
const N_STATUSES: usize = COMMON_STATUSES.len();

/// Latency buckets in seconds: sub-millisecond manifest reads up to minute
/// long blob transfers.
const LATENCY_BUCKETS: [f64; 16] = [
    0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0,
    120.0,
];

/// What the catalog says is stored, as the metrics show it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoredTotals {
    pub blobs: u64,
    pub bytes: u64,
    pub uploads: u64,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_handles: [[OnceLock<Counter>; N_STATUSES]; N_ROUTES],
    latency: [Histogram; N_ROUTES],
    bytes_in: [Counter; N_ROUTES],
    bytes_out: [Counter; N_ROUTES],
    in_flight: Gauge,
    stored_blobs: Gauge,
    stored_bytes: Gauge,
    uploads_in_progress: Gauge,
    gc_runs: Counter,
    gc_failures: Counter,
    gc_bytes_freed: Counter,
    /// When the catalog figures were last read; `None` before the first read.
    refreshed: Mutex<Option<Instant>>,
    refresh_every: Duration,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new(Duration::from_secs(10))
    }
}

impl Metrics {
    /// `refresh_every`: how long the catalog figures are reused between
    /// scrapes (zero: read at every scrape).
    pub fn new(refresh_every: Duration) -> Metrics {
        let mut registry = Registry::with_prefix("wharf");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by route and status",
            requests.clone(),
        );
        let latency_family = Family::<RouteOnly, Histogram>::new_with_constructor(
            (|| Histogram::new(LATENCY_BUCKETS)) as fn() -> Histogram,
        );
        registry.register_with_unit(
            "http_request_duration",
            "Time from a request's arrival to its response headers, by route",
            Unit::Seconds,
            latency_family.clone(),
        );
        let bytes_in_family = Family::<RouteOnly, Counter>::default();
        registry.register_with_unit(
            "http_request_body",
            "Request body bytes received, by route",
            Unit::Bytes,
            bytes_in_family.clone(),
        );
        let bytes_out_family = Family::<RouteOnly, Counter>::default();
        registry.register_with_unit(
            "http_response_body",
            "Response body bytes sent, by route",
            Unit::Bytes,
            bytes_out_family.clone(),
        );
        let per_route = |f: &dyn Fn(RouteOnly) -> Counter| -> [Counter; N_ROUTES] {
            RouteLabel::ALL.map(|route| f(RouteOnly { route }))
        };
        let latency =
            RouteLabel::ALL.map(|route| latency_family.get_or_create_owned(&RouteOnly { route }));
        let bytes_in = per_route(&|l| bytes_in_family.get_or_create_owned(&l));
        let bytes_out = per_route(&|l| bytes_out_family.get_or_create_owned(&l));
        let in_flight = Gauge::default();
        registry.register(
            "http_requests_in_flight",
            "Requests being handled now",
            in_flight.clone(),
        );
        let stored_blobs = Gauge::default();
        registry.register(
            "stored_blobs",
            "Blobs in the catalog (verified and stored)",
            stored_blobs.clone(),
        );
        let stored_bytes = Gauge::default();
        registry.register_with_unit(
            "stored",
            "Sum of the sizes of the stored blobs, from the catalog",
            Unit::Bytes,
            stored_bytes.clone(),
        );
        let uploads_in_progress = Gauge::default();
        registry.register(
            "uploads_in_progress",
            "Upload sessions open in the catalog (all replicas)",
            uploads_in_progress.clone(),
        );
        let gc_runs = Counter::default();
        registry.register(
            "gc_runs",
            "Garbage collection runs completed",
            gc_runs.clone(),
        );
        let gc_failures = Counter::default();
        registry.register(
            "gc_failures",
            "Garbage collection runs that failed",
            gc_failures.clone(),
        );
        let gc_bytes_freed = Counter::default();
        registry.register_with_unit(
            "gc_freed",
            "Blob bytes deleted by garbage collection",
            Unit::Bytes,
            gc_bytes_freed.clone(),
        );
        Metrics {
            registry,
            requests,
            request_handles: std::array::from_fn(|_| std::array::from_fn(|_| OnceLock::new())),
            latency,
            bytes_in,
            bytes_out,
            in_flight,
            stored_blobs,
            stored_bytes,
            uploads_in_progress,
            gc_runs,
            gc_failures,
            gc_bytes_freed,
            refreshed: Mutex::new(None),
            refresh_every,
        }
    }

    /// Counts one answered request.
    pub fn request_done(&self, route: RouteLabel, status: u16, elapsed: Duration) {
        match status_index(status) {
            Some(i) => self.request_handles[route.index()][i]
                .get_or_init(|| {
                    self.requests
                        .get_or_create_owned(&RequestLabels { route, status })
                })
                .inc(),
            None => self
                .requests
                .get_or_create(&RequestLabels { route, status })
                .inc(),
        };
        self.latency[route.index()].observe(elapsed.as_secs_f64());
    }

    pub fn bytes_in(&self, route: RouteLabel, n: u64) {
        if n > 0 {
            self.bytes_in[route.index()].inc_by(n);
        }
    }

    pub fn bytes_out(&self, route: RouteLabel, n: u64) {
        if n > 0 {
            self.bytes_out[route.index()].inc_by(n);
        }
    }

    /// One more request in progress until the guard is dropped.
    pub fn in_flight(&self) -> InFlight<'_> {
        self.in_flight.inc();
        InFlight(&self.in_flight)
    }

    /// For garbage collection: a run finished and deleted `bytes_freed`
    /// bytes of blobs (0 for a run that found nothing or a dry run).
    pub fn gc_run(&self, bytes_freed: u64) {
        self.gc_runs.inc();
        self.gc_bytes_freed.inc_by(bytes_freed);
    }

    /// For garbage collection: a run failed.
    pub fn gc_failed(&self) {
        self.gc_failures.inc();
    }

    /// Whether the catalog figures are due to be read again. Marks them as
    /// read now when they are, so concurrent scrapes read once.
    pub fn stored_totals_due(&self) -> bool {
        let mut last = self.refreshed.lock().unwrap_or_else(|p| p.into_inner());
        let due = last.is_none_or(|t| t.elapsed() >= self.refresh_every);
        if due {
            *last = Some(Instant::now());
        }
        due
    }

    pub fn set_stored_totals(&self, t: StoredTotals) {
        let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.stored_blobs.set(clamp(t.blobs));
        self.stored_bytes.set(clamp(t.bytes));
        self.uploads_in_progress.set(clamp(t.uploads));
    }

    /// Forgets when the catalog figures were read, so the next scrape reads
    /// them (after a failed read).
    pub fn stored_totals_stale(&self) {
        *self.refreshed.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "could not encode the metrics");
        }
        out
    }
}

/// Decrements the in-flight gauge when dropped.
pub struct InFlight<'a>(&'a Gauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_gc_show_in_the_text() {
        let m = Metrics::new(Duration::ZERO);
        m.request_done(RouteLabel::Manifest, 200, Duration::from_micros(300));
        m.request_done(RouteLabel::Manifest, 200, Duration::from_micros(300));
        m.request_done(RouteLabel::Blob, 418, Duration::from_millis(3));
        m.bytes_out(RouteLabel::Blob, 10);
        m.gc_run(1234);
        m.set_stored_totals(StoredTotals {
            blobs: 3,
            bytes: 99,
            uploads: 1,
        });
        let text = m.encode();
        assert!(
            text.contains("wharf_http_requests_total{route=\"manifest\",status=\"200\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("wharf_http_requests_total{route=\"blob\",status=\"418\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("wharf_http_response_body_bytes_total{route=\"blob\"} 10"),
            "{text}"
        );
        assert!(text.contains("wharf_gc_runs_total 1"), "{text}");
        assert!(text.contains("wharf_gc_freed_bytes_total 1234"), "{text}");
        assert!(text.contains("wharf_stored_bytes 99"), "{text}");
        assert!(text.contains("wharf_stored_blobs 3"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn catalog_figures_are_read_once_per_period() {
        let m = Metrics::new(Duration::from_secs(3600));
        assert!(m.stored_totals_due());
        assert!(!m.stored_totals_due());
        m.stored_totals_stale();
        assert!(m.stored_totals_due());
    }
}
