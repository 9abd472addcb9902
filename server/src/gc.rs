//! Online garbage collection: removes what no tag (or recent push) reaches,
//! while the registry keeps serving pushes and pulls.
//!
//! Called by the server's schedule ([`spawn_schedule`]) and by
//! `wharf-server gc`; calls the catalog (its GC API is `catalog/gc.rs`, the
//! SQL `catalog/gc_queries.rs`) and the blob store. Knows nothing of HTTP.
//! The mark phase reads the rows of every manifest (not their content),
//! reference, tag and blob into memory: fine for hundreds of thousands of
//! manifests, not designed for hundreds of millions.
//!
//! # Mark
//! Per repository, a manifest is kept when it is
//! - tagged, or
//! - used (pushed, re-pushed, tagged, named by an index being pushed) within
//!   the grace period, or
//! - any manifest at all under `untagged = "keep"`, or
//! - a child of a kept index (`manifests` of an index), or
//! - a referrer of a kept manifest: its `subject` is a kept manifest of the
//!   same repository. The rule runs one way only: a kept referrer does not
//!   keep its subject (a tagged signature does not pin the image it signs),
//!   and a referrer whose subject is gone is an ordinary untagged manifest.
//!
//! A blob is kept when a kept manifest of any repository names it (config,
//! layers, an artifact's blobs), or when it was used (uploaded, mounted,
//! named by a manifest put) within the grace period.
//!
//! # Sweep, and why it cannot race a push
//! Every delete re-checks its conditions in the statement that deletes, so
//! anything a push did after the mark wins. Manifests go first (an index
//! before its children; one conditional DELETE each), then blobs, in three
//! steps: the row becomes `deleting` (and its repository links go) in one
//! transaction that re-checks that no manifest refers to it and nothing used
//! it since the cutoff; then the object is deleted; then the row. A push
//! claims the digest in the catalog *before* it places bytes
//! (`Catalog::claim_blob`): if the row is `deleting` the push waits for step
//! three and writes the bytes again, otherwise the claim moves `used_at` and
//! step one, which comes later, leaves the blob alone. The push then makes
//! the row live only if it is still the incarnation it claimed, so a push
//! that stalled past the grace period cannot revive a row (or a new one)
//! whose bytes were collected; it is told to retry. A manifest put marks its
//! blobs used in its own transaction and fails with MANIFEST_BLOB_UNKNOWN if
//! one is `deleting` or gone, so no manifest ever points at a collected blob.
//!
//! Objects no row knows (bytes left by a crash between the store write and
//! the row) are removed once older than the grace period, through the same
//! three steps (a `deleting` row is inserted only where there is none), and
//! upload sessions untouched for `upload_max_age` go with their objects.
//! After a run with no push in flight, the live rows' sizes add up to the
//! bytes under `blobs/`.
//!
//! # One collector at a time
//! A run takes the catalog lease `gc` (a row with an expiry, taken by a
//! conditional upsert) and renews it every minute and right before each
//! blob object it deletes; a run that finds it held by a live holder stops
//! with [`GcError::Busy`], one that cannot renew it stops with
//! [`GcError::LeaseLost`]. Two runs must not overlap: a run takes the
//! `deleting` rows it finds at its start for the leftovers of a dead run and
//! finishes them. (The residual risk is a run that stalls for longer than
//! the lease's five minutes between its renewal and the store delete that
//! follows it.) A dry run takes no lease and changes nothing.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use serde::Serialize;

use crate::catalog::{Catalog, CatalogError, GcManifest, GcReference};
use crate::config::UntaggedPolicy;
use crate::digest::Digest;
use crate::store::{BlobStore, StoreError};

/// The lease's name in the catalog.
const LEASE: &str = "gc";
/// How long a lease lasts without renewal; a run renews it at every step.
const LEASE_TTL: Duration = Duration::from_secs(300);
/// Time between two lease renewals (a fifth of its lifetime), checked at
/// every step of a run, listings included.
const RENEW_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("another garbage collection holds the lease ({holder}, for {secs_left}s more)")]
    Busy { holder: String, secs_left: i64 },
    #[error("the garbage collection lease was lost (taken over after it expired); stopped")]
    LeaseLost,
}

/// What a run may remove.
#[derive(Debug, Clone)]
pub struct GcOptions {
    pub grace: Duration,
    pub untagged: UntaggedPolicy,
    pub upload_max_age: Duration,
    /// Report only; change nothing.
    pub dry_run: bool,
}

/// What a run removed (or, in a dry run, would remove).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct GcReport {
    pub dry_run: bool,
    pub manifests_removed: u64,
    pub manifest_bytes_removed: u64,
    pub blobs_removed: u64,
    pub blob_bytes_removed: u64,
    pub uploads_removed: u64,
    pub upload_bytes_removed: u64,
    /// Objects in the store that no catalog row knew.
    pub orphans_removed: u64,
    pub orphan_bytes_removed: u64,
    pub manifests_kept: u64,
    pub blobs_kept: u64,
    /// Candidates a push used (or referenced) between mark and sweep: kept.
    pub skipped: u64,
    /// Objects the store failed to delete (logged; retried next run).
    pub errors: u64,
    pub duration_ms: u64,
}

impl GcReport {
    /// Bytes freed in the store (manifests live in the catalog).
    pub fn bytes_freed(&self) -> u64 {
        self.blob_bytes_removed + self.upload_bytes_removed + self.orphan_bytes_removed
    }
}

impl fmt::Display for GcReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = if self.dry_run {
            "would remove"
        } else {
            "removed"
        };
        writeln!(
            f,
            "garbage collection{} {verb}:",
            if self.dry_run { " (dry run)" } else { "" }
        )?;
        writeln!(
            f,
            "  manifests: {:>8}  ({})",
            self.manifests_removed,
            human(self.manifest_bytes_removed)
        )?;
        writeln!(
            f,
            "  blobs:     {:>8}  ({})",
            self.blobs_removed,
            human(self.blob_bytes_removed)
        )?;
        writeln!(
            f,
            "  uploads:   {:>8}  ({})",
            self.uploads_removed,
            human(self.upload_bytes_removed)
        )?;
        writeln!(
            f,
            "  orphans:   {:>8}  ({}; store objects no catalog row knew)",
            self.orphans_removed,
            human(self.orphan_bytes_removed)
        )?;
        writeln!(
            f,
            "  total:     {} {verb} from the store",
            human(self.bytes_freed())
        )?;
        write!(
            f,
            "kept {} manifests and {} blobs; {} candidates were in use again and kept; \
             {} store errors (retried next run); {} ms",
            self.manifests_kept, self.blobs_kept, self.skipped, self.errors, self.duration_ms
        )
    }
}

/// `1234567` -> `1.2 MiB (1234567 bytes)`.
fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {} ({bytes} bytes)", UNITS[unit])
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn ms_of(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

// ---- mark ------------------------------------------------------------------------

/// A manifest's identity: repository id and digest.
pub type ManifestKey = (i64, String);

/// The outcome of the mark phase.
#[derive(Debug, Default)]
pub struct Marked {
    pub kept: HashSet<ManifestKey>,
    /// Blobs a kept manifest names.
    pub live_blobs: HashSet<String>,
}

/// The mark rules (see the module doc), on the catalog's rows. `cutoff` is
/// the unix-ms time before which a manifest counts as old.
pub fn mark(
    manifests: &[GcManifest],
    tagged: &[ManifestKey],
    refs: &[GcReference],
    policy: UntaggedPolicy,
    cutoff: i64,
) -> Marked {
    let known: HashSet<ManifestKey> = manifests
        .iter()
        .map(|m| (m.repository_id, m.digest.clone()))
        .collect();
    let mut children: HashMap<ManifestKey, Vec<&GcReference>> = HashMap::new();
    for r in refs {
        children
            .entry((r.repository_id, r.manifest.clone()))
            .or_default()
            .push(r);
    }
    let mut referrers: HashMap<ManifestKey, Vec<ManifestKey>> = HashMap::new();
    for m in manifests {
        if let Some(s) = &m.subject {
            referrers
                .entry((m.repository_id, s.clone()))
                .or_default()
                .push((m.repository_id, m.digest.clone()));
        }
    }
    let mut work: Vec<ManifestKey> = tagged
        .iter()
        .filter(|k| known.contains(*k))
        .cloned()
        .collect();
    for m in manifests {
        if policy == UntaggedPolicy::Keep || m.used_at >= cutoff {
            work.push((m.repository_id, m.digest.clone()));
        }
    }
    let mut marked = Marked::default();
    while let Some(key) = work.pop() {
        if !marked.kept.insert(key.clone()) {
            continue;
        }
        for r in children.get(&key).into_iter().flatten() {
            if r.kind == "blob" {
                marked.live_blobs.insert(r.child.clone());
            } else {
                let child = (key.0, r.child.clone());
                if known.contains(&child) {
                    work.push(child);
                }
            }
        }
        for referrer in referrers.get(&key).into_iter().flatten() {
            work.push(referrer.clone());
        }
    }
    marked
}

/// Manifests to delete, parents before children: an index (or a referrer)
/// goes before what it names, so each delete's re-check ("nothing refers to
/// it") holds when its turn comes.
fn deletion_order<'a>(doomed: Vec<&'a GcManifest>, refs: &[GcReference]) -> Vec<&'a GcManifest> {
    let set: HashSet<ManifestKey> = doomed
        .iter()
        .map(|m| (m.repository_id, m.digest.clone()))
        .collect();
    // Depth of each doomed manifest below doomed parents.
    let mut parents: HashMap<ManifestKey, Vec<ManifestKey>> = HashMap::new();
    for r in refs.iter().filter(|r| r.kind == "manifest") {
        let parent = (r.repository_id, r.manifest.clone());
        let child = (r.repository_id, r.child.clone());
        if set.contains(&parent) && set.contains(&child) {
            parents.entry(child).or_default().push(parent);
        }
    }
    fn depth(
        k: &ManifestKey,
        parents: &HashMap<ManifestKey, Vec<ManifestKey>>,
        memo: &mut HashMap<ManifestKey, usize>,
        guard: usize,
    ) -> usize {
        if let Some(d) = memo.get(k) {
            return *d;
        }
        let d = if guard > 64 {
            0
        } else {
            parents
                .get(k)
                .map(|ps| {
                    ps.iter()
                        .map(|p| depth(p, parents, memo, guard + 1) + 1)
                        .max()
                        .unwrap_or(0)
                })
                .unwrap_or(0)
        };
        memo.insert(k.clone(), d);
        d
    }
    let mut memo = HashMap::new();
    let mut out: Vec<(usize, &GcManifest)> = doomed
        .into_iter()
        .map(|m| {
            let k = (m.repository_id, m.digest.clone());
            (depth(&k, &parents, &mut memo, 0), m)
        })
        .collect();
    out.sort_by_key(|(d, _)| *d);
    out.into_iter().map(|(_, m)| m).collect()
}

/// `blobs/<alg>/<xx>/<hex>` -> the digest, if the key is one of ours.
fn digest_of_key(key: &str) -> Option<Digest> {
    let rest = key.strip_prefix("blobs/")?;
    let mut parts = rest.split('/');
    let (alg, xx, hex) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !hex.starts_with(xx) || xx.len() != 2 {
        return None;
    }
    let digest: Digest = format!("{alg}:{hex}").parse().ok()?;
    (BlobStore::blob_key(&digest).as_ref() == key).then_some(digest)
}

// ---- the run -------------------------------------------------------------------------

/// The lease a run holds; renewed at each step.
struct Lease<'a> {
    catalog: &'a Catalog,
    holder: String,
    renewed: Instant,
}

impl Lease<'_> {
    async fn renew(&mut self) -> Result<(), GcError> {
        let until = now_ms() + LEASE_TTL.as_millis() as i64;
        if self.catalog.take_lease(LEASE, &self.holder, until).await? {
            Ok(())
        } else {
            Err(GcError::LeaseLost)
        }
    }

    /// Renews the lease when `RENEW_EVERY` has passed since the last time.
    /// Two collections must never overlap (one could take a `deleting` row
    /// of the other for an interrupted one), so a run that cannot renew
    /// stops.
    async fn tick(&mut self) -> Result<(), GcError> {
        if self.renewed.elapsed() >= RENEW_EVERY {
            self.renew().await?;
            self.renewed = Instant::now();
        }
        Ok(())
    }
}

/// A name for this process in the lease row.
fn holder_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "host".into());
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}/pid{}/{}", std::process::id(), &id[..8])
}

/// Runs one garbage collection. Takes the catalog lease first (not for a
/// dry run); [`GcError::Busy`] when another process holds it.
pub async fn collect(
    catalog: &Catalog,
    store: &BlobStore,
    opts: &GcOptions,
) -> Result<GcReport, GcError> {
    let started = Instant::now();
    let mut lease = None;
    if !opts.dry_run {
        let holder = holder_name();
        let until = now_ms() + LEASE_TTL.as_millis() as i64;
        if !catalog.take_lease(LEASE, &holder, until).await? {
            let held = catalog.lease(LEASE).await?;
            return Err(GcError::Busy {
                holder: held.as_ref().map(|h| h.holder.clone()).unwrap_or_default(),
                secs_left: held
                    .map(|h| (h.expires_at - now_ms()).max(0) / 1000)
                    .unwrap_or(0),
            });
        }
        lease = Some(Lease {
            catalog,
            holder,
            renewed: Instant::now(),
        });
    }
    let result = run(catalog, store, opts, lease.as_mut()).await;
    if let Some(l) = &lease
        && let Err(e) = catalog.release_lease(LEASE, &l.holder).await
    {
        tracing::warn!(error = %e, "could not release the gc lease; it expires on its own");
    }
    let mut report = result?;
    report.duration_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

/// Renews the lease now: right before a blob's object is deleted.
async fn fence(lease: &mut Option<&mut Lease<'_>>) -> Result<(), GcError> {
    if let Some(l) = lease {
        l.renew().await?;
        l.renewed = Instant::now();
    }
    Ok(())
}

async fn tick(lease: &mut Option<&mut Lease<'_>>) -> Result<(), GcError> {
    match lease {
        Some(l) => l.tick().await,
        None => Ok(()),
    }
}

async fn run(
    catalog: &Catalog,
    store: &BlobStore,
    opts: &GcOptions,
    mut lease: Option<&mut Lease<'_>>,
) -> Result<GcReport, GcError> {
    let dry = opts.dry_run;
    let mut report = GcReport {
        dry_run: dry,
        ..GcReport::default()
    };
    let now = now_ms();
    let cutoff = now - opts.grace.as_millis() as i64;

    // ---- mark
    let manifests = catalog.gc_manifests().await?;
    let tagged = catalog.gc_tagged().await?;
    let refs = catalog.gc_references().await?;
    let marked = mark(&manifests, &tagged, &refs, opts.untagged, cutoff);
    report.manifests_kept = marked.kept.len() as u64;

    // ---- manifests
    let doomed: Vec<&GcManifest> = manifests
        .iter()
        .filter(|m| !marked.kept.contains(&(m.repository_id, m.digest.clone())))
        .collect();
    let mut deleted: HashSet<ManifestKey> = HashSet::new();
    for m in deletion_order(doomed, &refs) {
        tick(&mut lease).await?;
        if dry
            || catalog
                .gc_delete_manifest(m.repository_id, &m.digest, cutoff)
                .await?
        {
            tracing::debug!(repository = %m.repository, digest = %m.digest, "gc: manifest");
            report.manifests_removed += 1;
            report.manifest_bytes_removed += m.size;
            deleted.insert((m.repository_id, m.digest.clone()));
        } else {
            report.skipped += 1;
        }
    }
    // Blobs still named by a manifest that stays (kept, or a doomed one
    // whose delete was refused) are not candidates.
    let mut named: HashSet<&str> = HashSet::new();
    for r in refs.iter().filter(|r| r.kind == "blob") {
        if !deleted.contains(&(r.repository_id, r.manifest.clone())) {
            named.insert(r.child.as_str());
        }
    }

    // ---- blobs
    let blobs = catalog.gc_blobs().await?;
    let mut known: HashSet<String> = HashSet::with_capacity(blobs.len());
    for b in &blobs {
        known.insert(b.digest.clone());
        let interrupted = b.state == "deleting";
        if !interrupted
            && (named.contains(b.digest.as_str())
                || marked.live_blobs.contains(&b.digest)
                || b.used_at >= cutoff)
        {
            if b.state == "live" {
                report.blobs_kept += 1;
            }
            continue;
        }
        tick(&mut lease).await?;
        if dry {
            report.blobs_removed += 1;
            report.blob_bytes_removed += b.size;
            continue;
        }
        if interrupted || catalog.gc_mark_blob_deleting(&b.digest, cutoff).await? {
            let Ok(digest) = b.digest.parse::<Digest>() else {
                // A row that no key can hold: only the row goes.
                catalog.gc_forget_blob(&b.digest).await?;
                continue;
            };
            // Still ours? A run whose lease lapsed must not delete bytes a
            // newer run may have let a push place again.
            fence(&mut lease).await?;
            if let Err(e) = store.delete(&BlobStore::blob_key(&digest)).await {
                tracing::warn!(digest = %b.digest, error = %e, "gc: could not delete a blob; next run retries");
                catalog.gc_abandon_delete(&b.digest).await?;
                report.errors += 1;
                continue;
            }
            catalog.gc_forget_blob(&b.digest).await?;
            tracing::debug!(digest = %b.digest, size = b.size, "gc: blob");
            report.blobs_removed += 1;
            report.blob_bytes_removed += b.size;
        } else {
            report.skipped += 1;
            if b.state == "live" {
                report.blobs_kept += 1;
            }
        }
    }

    // ---- upload sessions
    let upload_cutoff = now - opts.upload_max_age.as_millis() as i64;
    let uploads = catalog.gc_uploads().await?;
    let sessions: HashSet<String> = uploads.iter().map(|u| u.id.clone()).collect();
    for u in uploads.iter().filter(|u| u.updated_at < upload_cutoff) {
        tick(&mut lease).await?;
        if dry || catalog.gc_delete_upload(&u.id, upload_cutoff).await? {
            // The row is gone; objects left by a failed delete are
            // removed by a later run as objects no session knows.
            if !dry
                && let Err(e) = store
                    .delete_prefix(&format!("uploads/{}", u.id).as_str().into())
                    .await
            {
                tracing::warn!(upload = %u.id, error = %e, "gc: could not delete an upload's objects");
                report.errors += 1;
            }
            report.uploads_removed += 1;
            report.upload_bytes_removed += u.size;
        } else {
            report.skipped += 1;
        }
    }

    // ---- objects no row knows
    let blob_cutoff = ms_of(SystemTime::now()) - opts.grace.as_millis() as i64;
    let mut listing = store.list("blobs");
    while let Some(obj) = listing.next().await {
        let obj = obj?;
        tick(&mut lease).await?;
        let key = obj.key.as_ref().to_owned();
        if ms_of(obj.last_modified) >= blob_cutoff {
            continue;
        }
        let digest = digest_of_key(&key);
        if digest.as_ref().is_some_and(|d| known.contains(d.as_str())) {
            continue;
        }
        if !dry {
            match &digest {
                // Through a `deleting` row, so a push of the digest that
                // claims it now waits for the delete.
                Some(d) => {
                    if !catalog.gc_claim_orphan(d.as_str(), obj.size).await? {
                        report.skipped += 1;
                        continue;
                    }
                    fence(&mut lease).await?;
                    if let Err(e) = store.delete(&obj.key).await {
                        tracing::warn!(key = %key, error = %e, "gc: could not delete an object");
                        catalog.gc_abandon_delete(d.as_str()).await?;
                        report.errors += 1;
                        continue;
                    }
                    catalog.gc_forget_blob(d.as_str()).await?;
                }
                // Not a blob key: nothing can ever refer to it.
                None => {
                    if let Err(e) = store.delete(&obj.key).await {
                        tracing::warn!(key = %key, error = %e, "gc: could not delete an object");
                        report.errors += 1;
                        continue;
                    }
                }
            }
        }
        tracing::debug!(key = %key, size = obj.size, "gc: orphan object");
        report.orphans_removed += 1;
        report.orphan_bytes_removed += obj.size;
    }
    drop(listing);
    // Upload objects with no session row: staging objects of monolithic
    // uploads (renamed away on success) and parts of cancelled or removed
    // sessions. A write in progress keeps its object young.
    let upload_obj_cutoff =
        ms_of(SystemTime::now()) - opts.grace.max(opts.upload_max_age).as_millis() as i64;
    let mut listing = store.list("uploads");
    while let Some(obj) = listing.next().await {
        let obj = obj?;
        tick(&mut lease).await?;
        if ms_of(obj.last_modified) >= upload_obj_cutoff {
            continue;
        }
        let Some(id) = obj.key.as_ref().split('/').nth(1).map(str::to_owned) else {
            continue;
        };
        if sessions.contains(&id) || catalog.upload_exists(&id).await? {
            continue;
        }
        if !dry && let Err(e) = store.delete(&obj.key).await {
            tracing::warn!(key = %obj.key, error = %e, "gc: could not delete an object");
            report.errors += 1;
            continue;
        }
        report.orphans_removed += 1;
        report.orphan_bytes_removed += obj.size;
    }
    if let Some(l) = lease.as_mut() {
        l.renew().await?;
    }
    Ok(report)
}

/// Finishes the deletions a collection that died left behind (rows stuck in
/// `deleting`, which pushes of those digests wait for), under the lease.
/// Cheap when there are none: one query. Returns how many it finished.
pub async fn recover(catalog: &Catalog, store: &BlobStore) -> Result<u64, GcError> {
    let stuck = catalog.gc_interrupted(1000).await?;
    if stuck.is_empty() {
        return Ok(0);
    }
    let holder = holder_name();
    let until = now_ms() + LEASE_TTL.as_millis() as i64;
    if !catalog.take_lease(LEASE, &holder, until).await? {
        // A collection is running: it finishes them itself.
        return Ok(0);
    }
    let mut done = 0;
    let mut result = Ok(());
    for digest in stuck {
        let deleted = match digest.parse::<Digest>() {
            Ok(d) => store.delete(&BlobStore::blob_key(&d)).await,
            Err(_) => Ok(()),
        };
        let step = match deleted {
            Ok(()) => catalog.gc_forget_blob(&digest).await,
            Err(e) => {
                tracing::warn!(%digest, error = %e, "gc: could not delete a blob");
                catalog.gc_abandon_delete(&digest).await
            }
        };
        if let Err(e) = step {
            result = Err(e.into());
            break;
        }
        done += 1;
    }
    if let Err(e) = catalog.release_lease(LEASE, &holder).await {
        tracing::warn!(error = %e, "could not release the gc lease; it expires on its own");
    }
    result.map(|()| done)
}

/// How often the schedule looks for deletions a dead collection left.
const RECOVER_EVERY: Duration = Duration::from_secs(60);

/// Called with each scheduled run's outcome, a report or the error (the
/// server updates its GC metrics with it); a round skipped because another
/// replica holds the lease is not reported.
pub type ReportHook = Arc<dyn Fn(Result<&GcReport, &GcError>) + Send + Sync>;

/// Runs [`collect`] every `interval` in the background (the first run one
/// interval after the start), and [`recover`] every minute in between.
/// Replicas that find the lease taken skip that round. Stops when the
/// returned handle is aborted.
pub fn spawn_schedule(
    catalog: Catalog,
    store: BlobStore,
    opts: GcOptions,
    interval: Duration,
    hook: Option<ReportHook>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let step = interval.min(RECOVER_EVERY);
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + step, step);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_run = tokio::time::Instant::now() + interval;
        loop {
            ticker.tick().await;
            if tokio::time::Instant::now() < next_run {
                match recover(&catalog, &store).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(
                        blobs = n,
                        "finished deletions an interrupted collection left"
                    ),
                    Err(e) => {
                        tracing::warn!(error = %e, "finishing an interrupted collection failed")
                    }
                }
                continue;
            }
            next_run = tokio::time::Instant::now() + interval;
            match collect(&catalog, &store, &opts).await {
                Ok(report) => {
                    tracing::info!(
                        manifests = report.manifests_removed,
                        blobs = report.blobs_removed,
                        uploads = report.uploads_removed,
                        orphans = report.orphans_removed,
                        bytes_freed = report.bytes_freed(),
                        skipped = report.skipped,
                        duration_ms = report.duration_ms,
                        "garbage collection done"
                    );
                    if let Some(h) = &hook {
                        h(Ok(&report));
                    }
                }
                Err(GcError::Busy { holder, .. }) => {
                    tracing::debug!(%holder, "garbage collection skipped: another replica runs it");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "garbage collection failed");
                    if let Some(h) = &hook {
                        h(Err(&e));
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests;
