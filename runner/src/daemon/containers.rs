//! Containers: their catalog rows, their directories, and every step of
//! their life (create, start, the monitor's end, stop, kill, rm, re-attach
//! after a daemon restart).
//!
//! A container's directory `<root>/containers/<id>/` holds its bundle
//! (`config.json`, made at each start from the image and the create
//! request, as docker does), its writable layer (`upper/`, `work/`), the
//! overlay mountpoint `rootfs/`, the files bind-mounted at `/etc/hostname`,
//! `/etc/hosts` and `/etc/resolv.conf`, and the monitor's files (see
//! `shim`: logs, pids, `exit.json`).
//!
//! Start: mount the overlay, write the bundle, make the cgroup
//! (`wharf/<id>`), then spawn `wharf-runner shim` in a session of its own;
//! the shim runs the runtime, which joins the cgroup and writes `init.pid`
//! once the command was executed. The container is running from then on
//! whatever happens to the daemon. When the shim ends (the daemon waits for
//! its child, or after a restart polls its pid), `finish` reads how it
//! ended, asks the cgroup whether the OOM killer struck, removes the cgroup
//! and unmounts the rootfs. A failure at any step undoes the steps before.
//!
//! Calls `images` (to resolve image ids), `overlay`, `bundle`, `cgroups`,
//! `shim` (files), `logs`; called by `api`.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;
use sqlx::SqlitePool;
use tokio::sync::{mpsc, watch};

use super::error::{Error, Result};
use super::images::{ImageRecord, Images};
use super::network;
use super::overlay;
use super::restart::{self, Policy};
use super::volumes::Volumes;
use crate::api::{
    ContainerSummary, CreateRequest, CreateResponse, FrameKind, Network, WaitResponse, encode_frame,
};
use crate::bundle::{self, NetworkMode, RunOptions};
use crate::cgroups::{self, Hierarchy, HostFs, Manager};
use crate::logs::{Entry, Stream};
use crate::shim;

/// The cgroup parent of every container.
const CGROUP_PARENT: &str = cgroups::DEFAULT_PARENT;
/// How long `start` waits for the runtime to report the command executed.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the monitor of a re-attached container checks its shim, and
/// how often log followers look for new lines.
const POLL: Duration = Duration::from_millis(50);
/// How long `kill -9` may take to be seen (stop after its timeout, rm -f).
const KILL_GRACE: Duration = Duration::from_secs(15);
/// Exit code recorded when a container's monitor died without telling.
const UNKNOWN_EXIT: i64 = 255;
/// docker's zero time, for never started/finished.
const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

const HOSTS: &str = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
fe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n";

/// One row of the `containers` table.
#[derive(Debug, Clone, sqlx::FromRow)]
struct Row {
    id: String,
    name: String,
    image: String,
    image_id: String,
    request: String,
    path: String,
    args: String,
    stop_signal: String,
    state: String,
    pid: i64,
    shim_pid: i64,
    shim_start: i64,
    exit_code: i64,
    oom_killed: bool,
    error: String,
    created_at: String,
    started_at: String,
    finished_at: String,
    restart_count: i64,
    manually_stopped: bool,
}

impl Row {
    fn request(&self) -> Result<CreateRequest> {
        serde_json::from_str(&self.request)
            .map_err(|e| Error::Internal(format!("container {}: stored request: {e}", self.id)))
    }

    fn args(&self) -> Vec<String> {
        serde_json::from_str(&self.args).unwrap_or_default()
    }

    fn running(&self) -> bool {
        self.state == "running"
    }
}

/// In-memory companion of a row: serializes state changes and tells
/// waiters when the container stopped.
struct Live {
    /// Held across start, finish and remove of this container.
    lock: tokio::sync::Mutex<()>,
    /// (how many times it has stopped, its last exit code).
    exits: watch::Sender<(u64, i64)>,
    /// The wait before its next restart by policy.
    backoff: Mutex<restart::Backoff>,
    /// The restart its policy scheduled, if one is pending.
    pending: Mutex<PendingRestart>,
}

#[derive(Default)]
struct PendingRestart {
    /// Which scheduled restart is the current one: a timer that fires after
    /// it was cancelled (or replaced) sees another token and does nothing.
    token: u64,
    task: Option<tokio::task::AbortHandle>,
}

impl Live {
    /// Whether a restart by policy is pending (docker's "restarting").
    fn restarting(&self) -> bool {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .task
            .is_some()
    }

    /// Cancels a pending restart; whether there was one.
    fn cancel_restart(&self) -> bool {
        let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        p.token += 1;
        match p.task.take() {
            Some(task) => {
                task.abort();
                true
            }
            None => false,
        }
    }
}

/// The OCI runtimes a container can run under: the built-in one
/// ([`super::BUILTIN_RUNTIME`]) and binaries with runc's command line
/// (`runc` when it is on PATH, and those given with `--add-runtime`).
#[derive(Debug, Clone)]
pub struct Runtimes {
    default: String,
    external: std::collections::BTreeMap<String, PathBuf>,
}

impl Runtimes {
    pub fn new(default: &str, extra: &[String]) -> Result<Runtimes> {
        let mut external = std::collections::BTreeMap::new();
        if let Some(runc) = find_in_path("runc") {
            external.insert("runc".to_string(), runc);
        }
        for spec in extra {
            let bad =
                || Error::BadRequest(format!("invalid --add-runtime {spec:?}: want NAME=PATH"));
            let (name, path) = spec.split_once('=').ok_or_else(bad)?;
            if name.is_empty() || name == super::BUILTIN_RUNTIME || !Path::new(path).is_absolute() {
                return Err(bad());
            }
            external.insert(name.to_string(), PathBuf::from(path));
        }
        let runtimes = Runtimes {
            default: default.to_string(),
            external,
        };
        runtimes.binary(default)?;
        Ok(runtimes)
    }

    /// The name a request's `--runtime` stands for.
    fn name<'a>(&'a self, asked: Option<&'a str>) -> &'a str {
        asked.filter(|n| !n.is_empty()).unwrap_or(&self.default)
    }

    /// The runtime's binary; `None` for the built-in one.
    fn binary(&self, name: &str) -> Result<Option<PathBuf>> {
        if name == super::BUILTIN_RUNTIME {
            return Ok(None);
        }
        self.external
            .get(name)
            .cloned()
            .map(Some)
            .ok_or_else(|| Error::BadRequest(format!("unknown or invalid runtime name: {name}")))
    }
}

fn find_in_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

pub struct Containers {
    runtimes: Runtimes,
    dir: PathBuf,
    pool: SqlitePool,
    images: Arc<Images>,
    volumes: Arc<Volumes>,
    hierarchy: std::result::Result<Hierarchy, String>,
    exe: PathBuf,
    live: Mutex<HashMap<String, Arc<Live>>>,
    network: Arc<network::Network>,
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

fn internal(what: &str) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |e| Error::Internal(format!("{what}: {e}"))
}

/// A new container id: 32 random bytes in hex, as docker's.
fn new_id() -> Result<String> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(internal("reading /dev/urandom"))?;
    Ok(hex::encode(bytes))
}

/// docker's rule for names: `[a-zA-Z0-9][a-zA-Z0-9_.-]+`.
fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() >= 2
        && b.len() <= 128
        && b[0].is_ascii_alphanumeric()
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(c))
}

const ADJECTIVES: &[&str] = &[
    "brave", "calm", "eager", "fond", "gentle", "happy", "jolly", "keen", "lucid", "merry",
    "nimble", "proud", "quiet", "rapid", "steady", "tender", "upbeat", "vivid", "witty", "zealous",
];
const NOUNS: &[&str] = &[
    "anchor", "barge", "buoy", "cargo", "crane", "dock", "ferry", "harbor", "hull", "keel",
    "lantern", "mast", "pier", "quay", "rudder", "sail", "skiff", "tug", "wharf", "yacht",
];

fn random_name(id: &str) -> String {
    let n = u64::from_str_radix(&id[..12], 16).unwrap_or(0);
    let a = ADJECTIVES[(n % ADJECTIVES.len() as u64) as usize];
    let b = NOUNS[((n / 97) % NOUNS.len() as u64) as usize];
    format!("{a}_{b}_{}", &id[..4])
}

/// A signal by docker's names: `KILL`, `SIGKILL`, `9`.
pub fn parse_signal(s: &str) -> Result<Signal> {
    let bad = || Error::BadRequest(format!("invalid signal: {s}"));
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| bad());
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<Signal>().map_err(|_| bad())
}

/// Clock ticks since boot at which `pid` started; `None` when it is gone
/// or a zombie (a dead monitor whose parent has not reaped it).
fn process_start(pid: i64) -> Option<i64> {
    if pid <= 0 {
        return None;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // After the comm: state is field 3, starttime field 22 (1-based).
    if fields.first() == Some(&"Z") || fields.first() == Some(&"X") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

fn read_pid(path: &Path) -> Option<i64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn human_duration(d: Duration) -> String {
    crate::api::human_duration(i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn since(rfc3339: &str) -> Duration {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .ok()
        .and_then(|t| {
            (chrono::Utc::now() - t.with_timezone(&chrono::Utc))
                .to_std()
                .ok()
        })
        .unwrap_or_default()
}

fn epoch(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .map(|t| t.timestamp())
        .unwrap_or(0)
}

/// How long a container ran, from its two RFC 3339 times.
fn ran_for(started: &str, finished: &str) -> Duration {
    let parse = |t: &str| chrono::DateTime::parse_from_rfc3339(t).ok();
    match (parse(started), parse(finished)) {
        (Some(a), Some(b)) => (b - a).to_std().unwrap_or_default(),
        _ => Duration::ZERO,
    }
}

fn or_zero(t: &str) -> &str {
    if t.is_empty() { ZERO_TIME } else { t }
}

/// The process a container runs, as docker shows it (Path, Args).
fn process_of(image: &ImageRecord, req: &CreateRequest) -> Result<(String, Vec<String>)> {
    let config = image.config.config().as_ref();
    let opts = RunOptions {
        cmd: req.cmd.clone(),
        entrypoint: entrypoint_of(req),
        ..RunOptions::default()
    };
    let argv = bundle::command_line(
        config.and_then(|c| c.entrypoint().as_deref()),
        config.and_then(|c| c.cmd().as_deref()),
        &opts,
    )
    .map_err(|e| Error::BadRequest(e.to_string()))?;
    let (path, args) = argv.split_first().expect("command_line is never empty");
    Ok((path.clone(), args.to_vec()))
}

/// `--entrypoint ""` clears the image's Entrypoint; a non-empty one is a
/// single word, as docker takes it.
fn entrypoint_of(req: &CreateRequest) -> Option<Vec<String>> {
    req.entrypoint.as_ref().map(|e| {
        if e.is_empty() {
            Vec::new()
        } else {
            vec![e.clone()]
        }
    })
}

fn run_options(id: &str, req: &CreateRequest, mounts: Vec<oci_spec::runtime::Mount>) -> RunOptions {
    RunOptions {
        container_id: id.to_string(),
        cmd: req.cmd.clone(),
        entrypoint: entrypoint_of(req),
        env: req.env.clone(),
        workdir: req.workdir.clone(),
        user: req.user.clone(),
        hostname: req.hostname.clone(),
        memory: req.memory,
        memory_swap: req.memory_swap,
        cpus: req.cpus,
        cpu_shares: req.cpu_shares,
        pids_limit: req.pids_limit,
        network: match req.network {
            Network::None | Network::Bridge => NetworkMode::None,
            Network::Host => NetworkMode::Host,
        },
        network_namespace: None,
        read_only: req.read_only,
        tty: req.tty,
        cgroups_path: format!("/{CGROUP_PARENT}/{id}"),
        mounts,
    }
}

/// Checks what can be checked before anything is made, with docker's
/// messages.
fn validate(req: &CreateRequest) -> Result<()> {
    if let Some(name) = &req.name {
        let name = name.trim_start_matches('/');
        if !valid_name(name) {
            return Err(Error::BadRequest(format!(
                "Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
            )));
        }
    }
    if let Some(m) = req.memory
        && m > 0
        && m < bundle::MIN_MEMORY
    {
        return Err(Error::BadRequest(
            "Minimum memory limit allowed is 6MB".into(),
        ));
    }
    if let Some(cpus) = req.cpus {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        if !(cpus == 0.0 || (0.01..=n as f64).contains(&cpus)) {
            return Err(Error::BadRequest(format!(
                "Range of CPUs is from 0.01 to {n}.00, as there are only {n} CPUs available"
            )));
        }
    }
    if let Some(w) = &req.workdir
        && !w.starts_with('/')
    {
        return Err(Error::BadRequest(format!(
            "the working directory '{w}' is invalid, it needs to be an absolute path"
        )));
    }
    crate::volumes::parse_all(&req.binds, &req.tmpfs).map_err(Error::BadRequest)?;
    if req.labels.len() > MAX_LABELS
        || req
            .labels
            .iter()
            .any(|(k, v)| k.is_empty() || k.len() > MAX_LABEL_KEY || v.len() > MAX_LABEL_VALUE)
    {
        return Err(Error::BadRequest(format!(
            "labels: at most {MAX_LABELS}, keys of 1 to {MAX_LABEL_KEY} bytes, values of at most {MAX_LABEL_VALUE}"
        )));
    }
    Ok(())
}

/// Bounds on a container's labels.
const MAX_LABELS: usize = 256;
const MAX_LABEL_KEY: usize = 256;
const MAX_LABEL_VALUE: usize = 4096;

/// A container as the fleet agent sees it (see `super::fleet`).
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    pub id: String,
    pub name: String,
    pub state: ObservedState,
    pub labels: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObservedState {
    /// Made, never started.
    Created,
    Running,
    /// Stopped with this code; `restarting`: its restart policy will start
    /// it again.
    Exited {
        code: i64,
        restarting: bool,
    },
}

/// What `exec` needs to know of a container (see `super::exec`).
#[derive(Debug, Clone)]
pub struct ExecTarget {
    pub id: String,
    pub name: String,
    /// The container's directory: its bundle (`config.json`), `rootfs/`.
    pub dir: PathBuf,
    pub running: bool,
    /// The host pid of its PID 1 (0 when not known).
    pub pid: i64,
    /// The external runtime binary it runs under; `None`: the built-in one.
    pub runtime: Option<PathBuf>,
}

/// What `stats` needs to know of a container (see `super::stats`).
#[derive(Debug)]
pub struct StatsTarget {
    pub id: String,
    pub name: String,
    /// The host pid of its PID 1; `None` when it is not running.
    pub pid: Option<i32>,
    /// Its cgroup while it runs.
    pub cgroup: Option<Manager>,
}

impl Containers {
    /// The container `name` as `exec` sees it.
    pub async fn exec_target(&self, name: &str) -> Result<ExecTarget> {
        let row = self.resolve(name).await?;
        let req = row.request()?;
        let dir = self.container_dir(&row.id);
        let pid = if row.pid > 0 {
            row.pid
        } else {
            read_pid(&dir.join(shim::INIT_PID_FILE)).unwrap_or(0)
        };
        Ok(ExecTarget {
            running: row.running() && pid > 1,
            runtime: self
                .runtimes
                .binary(self.runtimes.name(req.runtime.as_deref()))?,
            id: row.id,
            name: row.name,
            dir,
            pid,
        })
    }

    /// The container `name` as `stats` sees it: its id, name, the host pid
    /// of its PID 1 while it runs, and its cgroup (see `super::stats`).
    pub async fn stats_target(&self, name: &str) -> Result<StatsTarget> {
        let row = self.resolve(name).await?;
        let pid = if row.pid > 0 {
            row.pid
        } else {
            read_pid(&self.container_dir(&row.id).join(shim::INIT_PID_FILE)).unwrap_or(0)
        };
        let (pid, cgroup) = if row.running() && pid > 1 {
            (i32::try_from(pid).ok(), self.cgroup(&row.id).ok())
        } else {
            (None, None)
        };
        Ok(StatsTarget {
            cgroup,
            pid,
            id: row.id,
            name: row.name,
        })
    }

    /// Opens the containers of `root` and re-attaches to the running ones
    /// (see [`Containers::recover`]).
    pub async fn open(
        root: &Path,
        pool: SqlitePool,
        images: Arc<Images>,
        volumes: Arc<Volumes>,
        exe: PathBuf,
        runtimes: Runtimes,
        network: Arc<network::Network>,
    ) -> Result<Arc<Containers>> {
        let dir = root.join("containers");
        std::fs::create_dir_all(&dir).map_err(internal("creating the containers dir"))?;
        let hierarchy = cgroups::detect(Path::new(cgroups::CGROUP_ROOT)).map_err(|e| e.to_string());
        if let Err(e) = &hierarchy {
            tracing::warn!(error = %e, "no usable cgroup hierarchy; containers cannot start");
        }
        let me = Arc::new(Containers {
            runtimes,
            dir,
            pool,
            images,
            volumes,
            hierarchy,
            exe,
            live: Mutex::new(HashMap::new()),
            network,
        });
        me.recover().await?;
        Ok(me)
    }

    fn container_dir(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    fn live(&self, id: &str) -> Arc<Live> {
        let mut map = self.live.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(id.to_string())
            .or_insert_with(|| {
                Arc::new(Live {
                    lock: tokio::sync::Mutex::new(()),
                    exits: watch::channel((0, 0)).0,
                    backoff: Mutex::new(restart::Backoff::default()),
                    pending: Mutex::new(PendingRestart::default()),
                })
            })
            .clone()
    }

    fn cgroup(&self, id: &str) -> Result<Manager> {
        let h = self
            .hierarchy
            .as_ref()
            .map_err(|e| Error::Internal(e.clone()))?;
        Manager::open(Arc::new(HostFs), h, CGROUP_PARENT, id)
            .map_err(|e| Error::Internal(format!("cgroup of {id}: {e}")))
    }

    async fn rows(&self) -> Result<Vec<Row>> {
        Ok(
            sqlx::query_as::<_, Row>("SELECT * FROM containers ORDER BY created_at DESC")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    async fn row(&self, id: &str) -> Result<Option<Row>> {
        Ok(
            sqlx::query_as::<_, Row>("SELECT * FROM containers WHERE id = ?")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Finds a container by full id, name (with or without docker's
    /// leading `/`) or unique id prefix.
    async fn resolve(&self, name: &str) -> Result<Row> {
        let not_found = || Error::NotFound(format!("No such container: {name}"));
        if name.is_empty() || name.len() > 256 {
            return Err(not_found());
        }
        let plain = name.trim_start_matches('/');
        if let Some(row) =
            sqlx::query_as::<_, Row>("SELECT * FROM containers WHERE id = ? OR name = ?")
                .bind(plain)
                .bind(plain)
                .fetch_optional(&self.pool)
                .await?
        {
            return Ok(row);
        }
        if !plain.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(not_found());
        }
        let mut found = sqlx::query_as::<_, Row>(
            "SELECT * FROM containers WHERE substr(id, 1, length(?1)) = ?1 LIMIT 2",
        )
        .bind(plain.to_ascii_lowercase())
        .fetch_all(&self.pool)
        .await?;
        match found.len() {
            1 => Ok(found.remove(0)),
            0 => Err(not_found()),
            _ => Err(Error::NotFound(format!(
                "multiple IDs found with provided prefix: {name}"
            ))),
        }
    }

    /// What `commit` needs of a container: its image, its create request
    /// and its writable layer (`upper/`), and whether it is running.
    pub async fn commit_source(&self, name: &str) -> Result<super::commit::CommitSource> {
        let r = self.resolve(name).await?;
        Ok(super::commit::CommitSource {
            request: r.request()?,
            upper: self.container_dir(&r.id).join("upper"),
            running: r.running(),
            id: r.id,
            image_id: r.image_id,
        })
    }

    /// How many containers use each image id (for `rmi` and `images`).
    pub async fn images_in_use(&self) -> Result<HashMap<String, u64>> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT image_id, count(*) FROM containers GROUP BY image_id")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().map(|(i, n)| (i, n as u64)).collect())
    }

    /// `create`: checks the request, resolves the image and records the
    /// container with its (empty) directory. The bundle is made at start.
    pub async fn create(&self, mut req: CreateRequest) -> Result<CreateResponse> {
        validate(&req)?;
        let policy = Policy::from_request(req.restart.as_ref()).map_err(Error::BadRequest)?;
        if req.auto_remove && policy != Policy::No {
            return Err(Error::BadRequest(
                "can't create 'AutoRemove' container with restart policy".into(),
            ));
        }
        // Recorded by name, so the container keeps its runtime even if the
        // daemon's default changes.
        let runtime = self.runtimes.name(req.runtime.as_deref()).to_string();
        self.runtimes.binary(&runtime)?;
        req.runtime = Some(runtime);
        let image = self.images.find(&req.image).await?;
        let (path, args) = process_of(&image, &req)?;
        let stop_signal = image
            .config
            .config()
            .as_ref()
            .and_then(|c| c.stop_signal().clone())
            .unwrap_or_else(|| "SIGTERM".to_string());
        parse_signal(&stop_signal)?;
        let id = new_id()?;
        let name = match &req.name {
            Some(n) => n.trim_start_matches('/').to_string(),
            None => random_name(&id),
        };
        let dir = self.container_dir(&id);
        let made = (|| {
            std::fs::create_dir(&dir)?;
            std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
            for sub in ["upper", "work", "rootfs"] {
                std::fs::create_dir(dir.join(sub))?;
            }
            Ok::<_, std::io::Error>(())
        })();
        if let Err(e) = made {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(Error::Internal(format!("creating {}: {e}", dir.display())));
        }
        let request = serde_json::to_string(&req).map_err(Error::internal)?;
        let inserted = sqlx::query(
            "INSERT INTO containers (id, name, image, image_id, request, path, args, stop_signal, state, created_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'created', ?)",
        )
        .bind(&id)
        .bind(&name)
        .bind(&req.image)
        .bind(&image.id)
        .bind(&request)
        .bind(&path)
        .bind(serde_json::to_string(&args).map_err(Error::internal)?)
        .bind(&stop_signal)
        .bind(now())
        .execute(&self.pool)
        .await;
        if let Err(e) = inserted {
            let _ = std::fs::remove_dir_all(&dir);
            if let sqlx::Error::Database(db) = &e
                && db.is_unique_violation()
            {
                let other = self.resolve(&name).await.map(|r| r.id).unwrap_or_default();
                return Err(Error::Conflict(format!(
                    "Conflict. The container name \"/{name}\" is already in use by container \"{other}\". You have to remove (or rename) that container to be able to reuse that name."
                )));
            }
            return Err(e.into());
        }
        if req.network == Network::Bridge
            && let Err(e) = self.network.allocate(&id).await
        {
            let _ = sqlx::query("DELETE FROM containers WHERE id = ?")
                .bind(&id)
                .execute(&self.pool)
                .await;
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        let (volume_specs, _) =
            crate::volumes::parse_all(&req.binds, &req.tmpfs).map_err(Error::BadRequest)?;
        if let Err(e) = self.volumes.attach(&id, &volume_specs).await {
            let _ = sqlx::query("DELETE FROM containers WHERE id = ?")
                .bind(&id)
                .execute(&self.pool)
                .await;
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        let mut warnings = Vec::new();
        if req.network == Network::Host && (!req.publish.is_empty() || req.publish_all) {
            warnings.push("Published ports are discarded when using host network mode".to_string());
        }
        tracing::info!(container = %id, %name, image = %req.image, "created");
        Ok(CreateResponse { id, warnings })
    }

    /// `start` without attaching: returns once the command runs (or fails
    /// with the reason and the exit code docker would give).
    pub async fn start(self: &Arc<Self>, name: &str) -> Result<()> {
        let row = self.resolve(name).await?;
        if row.running() {
            return Ok(());
        }
        let live = self.live(&row.id);
        let mut rx = live.exits.subscribe();
        rx.borrow_and_update();
        self.started_by_hand(&row.id).await?;
        self.launch(&row, false).await?;
        let dir = self.container_dir(&row.id);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if dir.join(shim::INIT_PID_FILE).exists() {
                return Ok(());
            }
            if rx.has_changed().unwrap_or(true) {
                // It ended before the command ran: the runtime's reason is
                // the last thing it logged.
                let code = rx.borrow().1;
                let reason = last_stderr(&dir).unwrap_or_else(|| format!("exit code {code}"));
                return Err(Error::StartFailed {
                    message: format!("failed to start container {}: {reason}", row.name),
                    exit_code: code,
                });
            }
            if Instant::now() >= deadline {
                return Err(Error::Internal(format!(
                    "container {} did not start within {} s",
                    row.id,
                    START_TIMEOUT.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// `start --attach`: starts the container and streams its output from
    /// now on as frames, ending with an exit frame.
    pub async fn start_attached(self: &Arc<Self>, name: &str) -> Result<mpsc::Receiver<Bytes>> {
        let row = self.resolve(name).await?;
        if row.running() {
            return Err(Error::Conflict(format!(
                "container {} is already running",
                row.name
            )));
        }
        let live = self.live(&row.id);
        let rx = live.exits.subscribe();
        let seen = rx.borrow().0;
        let log = self.container_dir(&row.id).join(shim::LOG_FILE);
        let offset = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
        self.started_by_hand(&row.id).await?;
        self.launch(&row, false).await?;
        let (tx, out) = mpsc::channel(64);
        if row.request().is_ok_and(|r| r.auto_remove) {
            // docker's `run --rm` returns once the container is gone: the
            // exit frame waits for the removal (bounded).
            let (inner_tx, mut inner) = mpsc::channel::<Bytes>(64);
            tokio::spawn(follow(log, offset, seen, rx, inner_tx, false, true));
            let dir = self.container_dir(&row.id);
            tokio::spawn(async move {
                while let Some(chunk) = inner.recv().await {
                    if chunk.first() == Some(&(FrameKind::Exit as u8)) {
                        let deadline = Instant::now() + Duration::from_secs(10);
                        // Removal takes a few ms: poll finely (a stat), as
                        // every ms here is a ms of `run --rm`.
                        while dir.exists() && Instant::now() < deadline {
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                    }
                    if tx.send(chunk).await.is_err() {
                        return;
                    }
                }
            });
        } else {
            tokio::spawn(follow(log, offset, seen, rx, tx, false, true));
        }
        Ok(out)
    }

    /// What `attach` (see `attach`) needs of a running container.
    pub(super) async fn attach_target(&self, name: &str) -> Result<AttachTarget> {
        let row = self.resolve(name).await?;
        if !row.running() {
            return Err(Error::Conflict(
                "You cannot attach to a stopped container, start it first".into(),
            ));
        }
        let exits = self.live(&row.id).exits.subscribe();
        self.target(&row, exits)
    }

    /// Starts a container whose shim waits for the first attach client
    /// (an attached `run -i`/`-t` or `start -a -i`), so no output is lost.
    pub(super) async fn start_for_attach(self: &Arc<Self>, name: &str) -> Result<AttachTarget> {
        let row = self.resolve(name).await?;
        if row.running() {
            return Err(Error::Conflict(format!(
                "container {} is already running",
                row.name
            )));
        }
        let exits = self.live(&row.id).exits.subscribe();
        // Made before the start, so a log follower misses nothing.
        let target = self.target(&row, exits)?;
        self.started_by_hand(&row.id).await?;
        self.launch(&row, target.interactive).await?;
        Ok(target)
    }

    fn target(&self, row: &Row, exits: watch::Receiver<(u64, i64)>) -> Result<AttachTarget> {
        let req = row.request()?;
        let dir = self.container_dir(&row.id);
        let log = dir.join(shim::LOG_FILE);
        let seen = exits.borrow().0;
        Ok(AttachTarget {
            id: row.id.clone(),
            interactive: req.tty || req.open_stdin,
            auto_remove: req.auto_remove,
            stdin_once: req.stdin_once,
            seen,
            log_offset: std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0),
            log,
            dir,
            exits,
        })
    }

    /// `resize`: the container must run and have a terminal.
    pub(super) async fn resize_target(&self, name: &str) -> Result<PathBuf> {
        let row = self.resolve(name).await?;
        if !row.running() {
            return Err(Error::Conflict(format!(
                "Container {} is not running",
                row.id
            )));
        }
        Ok(self.container_dir(&row.id))
    }

    /// Makes everything a start needs and spawns the monitor. Undoes what
    /// it made on failure.
    async fn launch(self: &Arc<Self>, row: &Row, wait_attach: bool) -> Result<()> {
        self.launch_as(row, None, wait_attach).await
    }

    /// `launch`; `restart`: the token of the restart by policy this is,
    /// which does nothing if a stop, kill or rm cancelled it meanwhile.
    async fn launch_as(
        self: &Arc<Self>,
        row: &Row,
        restart: Option<u64>,
        wait_attach: bool,
    ) -> Result<()> {
        let t_begin = Instant::now();
        let live = self.live(&row.id);
        let guard = live.lock.lock().await;
        // Re-read under the lock: another start may have won.
        let row = self
            .row(&row.id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("No such container: {}", row.id)))?;
        if let Some(token) = restart {
            let current = live.pending.lock().unwrap_or_else(|p| p.into_inner()).token;
            if current != token || row.manually_stopped || row.running() {
                return Ok(());
            }
        }
        if row.running() {
            return Err(Error::Conflict(format!(
                "container {} is already running",
                row.name
            )));
        }
        let req = row.request()?;
        let image = self.images.find(&row.image_id).await.map_err(|e| match e {
            Error::NotFound(_) => Error::NotFound(format!(
                "No such image: {} (container {} was made from it)",
                row.image, row.name
            )),
            e => e,
        })?;
        let dir = self.container_dir(&row.id);
        let rootfs = dir.join("rootfs");
        for sub in ["upper", "work", "rootfs"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(internal("container dir"))?;
        }
        for stale in [
            shim::EXIT_FILE,
            shim::INIT_PID_FILE,
            shim::RUNTIME_PID_FILE,
            shim::SHIM_PID_FILE,
            crate::stdio::ATTACH_SOCKET,
            crate::stdio::CONSOLE_SOCKET,
        ] {
            let _ = std::fs::remove_file(dir.join(stale));
        }
        let store = self.images.store();
        let mut lower = Vec::with_capacity(image.layers.len());
        for digest in image.layers.iter().rev() {
            let link = store
                .layer_link(digest)
                .map_err(|e| Error::Internal(format!("image {}: {e}", image.id)))?;
            lower.push(store.root().join(link));
        }
        if lower.is_empty() {
            // overlay needs a lower dir; an image without layers gets an
            // empty one.
            let empty = dir.join("empty");
            std::fs::create_dir_all(&empty).map_err(internal("container dir"))?;
            lower.push(empty);
        }
        let layout = overlay::Layout {
            lower,
            upper: dir.join("upper"),
            work: dir.join("work"),
            target: rootfs.clone(),
            volatile: req.auto_remove,
        };
        let t_prepared = Instant::now();
        overlay::mount(&layout).map_err(Error::internal)?;
        let undo_mount = || {
            if let Err(e) = overlay::unmount(&rootfs) {
                tracing::warn!(error = %e, "unmounting {}", rootfs.display());
            }
        };
        let address = match self.network_up(&row, &req, &image).await {
            Ok(a) => a,
            Err(e) => {
                undo_mount();
                self.network.detach(&row.id).await;
                return Err(e);
            }
        };
        let extra = match self.volumes.mounts(&row.id, &req, &rootfs).await {
            Ok(m) => m,
            Err(e) => {
                undo_mount();
                self.network.detach(&row.id).await;
                return Err(e);
            }
        };
        let t_mounted = Instant::now();
        let spec = match self.write_bundle(&row.id, &req, &image, &dir, address, extra) {
            Ok(spec) => spec,
            Err(e) => {
                undo_mount();
                self.network.detach(&row.id).await;
                return Err(e);
            }
        };
        let resources = spec
            .linux()
            .as_ref()
            .and_then(|l| l.resources().clone())
            .unwrap_or_default();
        let hierarchy = match &self.hierarchy {
            Ok(h) => h,
            Err(e) => {
                undo_mount();
                self.network.detach(&row.id).await;
                return Err(Error::Internal(format!("cgroups: {e}")));
            }
        };
        if let Ok(old) = self.cgroup(&row.id) {
            let _ = old.destroy();
        }
        let t_bundled = Instant::now();
        let manager = match Manager::create(
            Arc::new(HostFs),
            hierarchy,
            CGROUP_PARENT,
            &row.id,
            &resources,
        ) {
            Ok(m) => m,
            Err(e) => {
                undo_mount();
                self.network.detach(&row.id).await;
                return Err(Error::Internal(format!(
                    "container {}: cgroup: {e}",
                    row.name
                )));
            }
        };
        let runtime = match self
            .runtimes
            .binary(self.runtimes.name(req.runtime.as_deref()))
        {
            Ok(r) => r,
            Err(e) => {
                let _ = manager.destroy();
                undo_mount();
                self.network.detach(&row.id).await;
                return Err(e);
            }
        };
        let t_cgroup = Instant::now();
        let stdio = shim::Stdio {
            tty: req.tty,
            stdin: req.open_stdin,
            wait_attach,
            detached_runtime: false,
        };
        let spawned = self.spawn_shim(&row.id, &dir, runtime.as_deref(), stdio);
        let child = match spawned {
            Ok(child) => child,
            Err(e) => {
                let _ = manager.destroy();
                undo_mount();
                self.network.detach(&row.id).await;
                return Err(e);
            }
        };
        let shim_pid = child.id().map_or(0, i64::from);
        let shim_start = process_start(shim_pid).unwrap_or(0);
        sqlx::query(
            "UPDATE containers SET state = 'running', pid = 0, shim_pid = ?, shim_start = ?,
             exit_code = 0, oom_killed = 0, error = '', started_at = ?, finished_at = '',
             manually_stopped = 0, restart_count = restart_count + ? WHERE id = ?",
        )
        .bind(shim_pid)
        .bind(shim_start)
        .bind(now())
        .bind(i64::from(restart.is_some()))
        .bind(&row.id)
        .execute(&self.pool)
        .await?;
        drop(guard);
        let t_spawned = Instant::now();
        tracing::info!(container = %row.id, shim = shim_pid, "started");
        let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
        tracing::debug!(
            container = %row.id,
            prepare_ms = ms(t_begin, t_prepared),
            mount_ms = ms(t_prepared, t_mounted),
            bundle_ms = ms(t_mounted, t_bundled),
            cgroup_ms = ms(t_bundled, t_cgroup),
            spawn_ms = ms(t_cgroup, t_spawned),
            "start timings"
        );
        let me = Arc::clone(self);
        let id = row.id.clone();
        tokio::spawn(async move {
            me.watch_pid(&id).await;
            let mut child = child;
            if let Err(e) = child.wait().await {
                tracing::warn!(container = %id, error = %e, "waiting for the monitor");
            }
            me.finish(&id).await;
        });
        Ok(())
    }

    /// Records the container's pid once the runtime wrote it.
    async fn watch_pid(&self, id: &str) {
        let path = self.container_dir(id).join(shim::INIT_PID_FILE);
        let exit = self.container_dir(id).join(shim::EXIT_FILE);
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(pid) = read_pid(&path) {
                let _ =
                    sqlx::query("UPDATE containers SET pid = ? WHERE id = ? AND state = 'running'")
                        .bind(pid)
                        .bind(id)
                        .execute(&self.pool)
                        .await;
                return;
            }
            if exit.exists() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn write_bundle(
        &self,
        id: &str,
        req: &CreateRequest,
        image: &ImageRecord,
        dir: &Path,
        address: Option<std::net::Ipv4Addr>,
        volumes: Vec<oci_spec::runtime::Mount>,
    ) -> Result<oci_spec::runtime::Spec> {
        let host_network = req.network == Network::Host;
        let probe = run_options(id, req, Vec::new());
        let hostname = bundle::hostname(&probe)
            .map_err(|e| Error::BadRequest(e.to_string()))?
            .unwrap_or_default();
        let hosts = if host_network {
            std::fs::read_to_string("/etc/hosts").unwrap_or_else(|_| HOSTS.to_string())
        } else if let Some(ip) = address {
            format!("{HOSTS}{ip}\t{hostname}\n")
        } else {
            HOSTS.to_string()
        };
        let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let resolv = if host_network {
            resolv
        } else {
            // Loopback resolvers of the host are not reachable from the
            // container's own network namespace (docker drops them too).
            resolv
                .lines()
                .filter(|l| {
                    let mut w = l.split_whitespace();
                    !(w.next() == Some("nameserver")
                        && w.next()
                            .is_some_and(|a| a.starts_with("127.") || a == "::1"))
                })
                .map(|l| format!("{l}\n"))
                .collect()
        };
        let resolv = if address.is_some() {
            network::resolv_conf(&resolv)
        } else {
            resolv
        };
        let files = [
            ("hostname", "/etc/hostname", format!("{hostname}\n")),
            ("hosts", "/etc/hosts", hosts),
            ("resolv.conf", "/etc/resolv.conf", resolv),
        ];
        let mut mounts = Vec::new();
        for (file, dest, content) in files {
            let path = dir.join(file);
            shim::write_atomic(&path, content.as_bytes()).map_err(internal("container files"))?;
            mounts.push(
                bundle::bind_mount(&path, dest, false)
                    .map_err(|e| Error::Internal(e.to_string()))?,
            );
        }
        // The user's mounts last; docker drops its own file of a
        // destination the user mounts over.
        mounts.retain(|m| !volumes.iter().any(|v| v.destination() == m.destination()));
        mounts.extend(volumes);
        // Parents before children (docker's order): `-v x:/etc` goes under
        // the /etc/hosts bind, not over it.
        mounts.sort_by_key(|m| m.destination().components().count());
        let mut opts = run_options(id, req, mounts);
        if address.is_some() {
            opts.network_namespace = Some(self.network.netns_path(id));
        }
        let mut spec =
            bundle::build_spec(&image.config, &opts, &dir.join("rootfs")).map_err(|e| match e {
                bundle::BundleError::Write { .. } | bundle::BundleError::Read { .. } => {
                    Error::Internal(e.to_string())
                }
                e => Error::BadRequest(e.to_string()),
            })?;
        if let Some([rows, cols]) = req.console_size
            && req.tty
        {
            crate::stdio::set_console_size(&mut spec, rows, cols);
        }
        bundle::write_bundle(dir, &spec).map_err(|e| Error::Internal(e.to_string()))?;
        Ok(spec)
    }

    fn spawn_shim(
        &self,
        id: &str,
        dir: &Path,
        runtime: Option<&Path>,
        stdio: shim::Stdio,
    ) -> Result<tokio::process::Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("shim.log"))
            .map_err(internal("shim log"))?;
        let mut cmd = tokio::process::Command::new(&self.exe);
        cmd.arg("shim").arg("--bundle").arg(dir);
        if let Some(runtime) = runtime {
            cmd.arg("--runtime").arg(runtime);
        }
        for (on, flag) in [
            (stdio.tty, "--tty"),
            (stdio.stdin, "--stdin"),
            (stdio.wait_attach, "--wait-attach"),
        ] {
            if on {
                cmd.arg(flag);
            }
        }
        cmd.arg(id)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .kill_on_drop(false);
        // No pre_exec hook: without one, std spawns with posix_spawn
        // (vfork-like), not a fork of this large multi-threaded process. The
        // shim makes itself a session leader first thing (see shim_main).
        cmd.spawn().map_err(|e| {
            Error::Internal(format!("starting the monitor {}: {e}", self.exe.display()))
        })
    }

    /// The container's monitor ended: record how, clean up the cgroup and
    /// the mount, tell the waiters, and remove it when `--rm` asked.
    async fn finish(self: &Arc<Self>, id: &str) {
        let t_begin = Instant::now();
        let live = self.live(id);
        let guard = live.lock.lock().await;
        let dir = self.container_dir(id);
        // The row and its request, read once: its runtime, whether it is
        // `--rm`, and its restart policy.
        let row = self.row(id).await.ok().flatten();
        let req = row.as_ref().and_then(|r| r.request().ok());
        let (code, finished, error) = match shim::read_exit(&dir) {
            Some(r) => (i64::from(r.exit_code), r.finished_at, String::new()),
            None => (
                UNKNOWN_EXIT,
                now(),
                "the container's monitor ended without recording an exit status".to_string(),
            ),
        };
        let mut oom = false;
        let cgroup = self.cgroup(id);
        if let Ok(m) = &cgroup {
            oom = m.oom_killed().unwrap_or(false);
        }
        if let Some(req) = &req {
            self.delete_external(id, req).await;
        }
        match cgroup {
            Ok(m) => {
                if let Err(e) = m.destroy() {
                    tracing::warn!(container = %id, error = %e, "removing the cgroup");
                }
            }
            Err(e) => tracing::warn!(container = %id, error = %e, "cgroup"),
        }
        if let Err(e) = overlay::unmount(&dir.join("rootfs")) {
            tracing::warn!(container = %id, error = %e, "unmounting the rootfs");
        }
        if req.as_ref().is_none_or(|r| r.network == Network::Bridge) {
            self.network.detach(id).await;
        }
        let updated = sqlx::query(
            "UPDATE containers SET state = 'exited', pid = 0, shim_pid = 0, shim_start = 0,
             exit_code = ?, oom_killed = ?, error = ?, finished_at = ? WHERE id = ?",
        )
        .bind(code)
        .bind(oom)
        .bind(&error)
        .bind(&finished)
        .bind(id)
        .execute(&self.pool)
        .await;
        if let Err(e) = updated {
            tracing::error!(container = %id, error = %e, "recording the exit");
        }
        tracing::info!(container = %id, exit_code = code, oom_killed = oom, "exited");
        tracing::debug!(container = %id, finish_ms = t_begin.elapsed().as_secs_f64() * 1e3, "finish timings");
        if let (Some(row), Some(req)) = (&row, &req)
            && !req.auto_remove
        {
            let policy = Policy::from_request(req.restart.as_ref()).unwrap_or(Policy::No);
            if policy.after_exit(code, row.manually_stopped, row.restart_count) {
                let ran = ran_for(&row.started_at, &finished);
                let delay = live
                    .backoff
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .next(ran);
                self.schedule_restart(id, &live, delay);
            }
        }
        live.exits.send_modify(|(n, c)| {
            *n += 1;
            *c = code;
        });
        let auto_remove = req.is_some_and(|r| r.auto_remove);
        drop(guard);
        if auto_remove && let Err(e) = self.remove_stopped(id, true).await {
            tracing::warn!(container = %id, error = %e, "auto-remove");
        }
    }

    /// Starts the container again after `delay`, unless the restart is
    /// cancelled (stop, kill, rm, a start by hand) before.
    fn schedule_restart(self: &Arc<Self>, id: &str, live: &Live, delay: Duration) {
        let mut pending = live.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.token += 1;
        let token = pending.token;
        if let Some(old) = pending.task.take() {
            old.abort();
        }
        let me = Arc::clone(self);
        let id = id.to_string();
        tracing::info!(container = %id, delay_ms = delay.as_millis() as u64, "restarting by its policy");
        let task = tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            me.restart_now(&id, token).await;
        });
        pending.task = Some(task.abort_handle());
    }

    async fn restart_now(self: &Arc<Self>, id: &str, token: u64) {
        let live = self.live(id);
        {
            let mut pending = live.pending.lock().unwrap_or_else(|p| p.into_inner());
            if pending.token != token || pending.task.is_none() {
                return;
            }
            // No longer "restarting"; a cancel from now on still changes
            // the token, which launch_as checks under the container's lock.
            pending.task = None;
        }
        let Ok(Some(row)) = self.row(id).await else {
            return;
        };
        if let Err(e) = self.launch_as(&row, Some(token), false).await {
            tracing::warn!(container = %id, error = %e, "restart by policy failed");
            let _ = sqlx::query("UPDATE containers SET error = ? WHERE id = ?")
                .bind(e.to_string())
                .bind(id)
                .execute(&self.pool)
                .await;
        }
    }

    /// A start by hand: no restart pending, a fresh back-off and count, and
    /// the container is no longer "stopped by hand".
    async fn started_by_hand(&self, id: &str) -> Result<()> {
        let live = self.live(id);
        live.cancel_restart();
        live.backoff
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .reset();
        sqlx::query("UPDATE containers SET restart_count = 0, manually_stopped = 0 WHERE id = ?")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A stop or kill by hand: its policy (but `always` at the next daemon
    /// start) leaves it stopped.
    async fn stopped_by_hand(&self, id: &str) -> Result<()> {
        self.live(id).cancel_restart();
        sqlx::query("UPDATE containers SET manually_stopped = 1 WHERE id = ?")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// `restart -t`: stop (if running), then start by hand.
    pub async fn restart(self: &Arc<Self>, name: &str, timeout: Option<u64>) -> Result<()> {
        match self.stop(name, timeout).await {
            Ok(()) | Err(Error::NotModified(_)) => {}
            Err(e) => return Err(e),
        }
        self.start(name).await
    }

    /// `runc delete` for a container an external runtime kept (`--keep`).
    async fn delete_external(&self, id: &str, req: &CreateRequest) {
        let dir = self.container_dir(id);
        let state = dir.join(crate::internal::EXTERNAL_STATE_DIR);
        if !state.exists() {
            return;
        }
        let Ok(Some(binary)) = self
            .runtimes
            .binary(self.runtimes.name(req.runtime.as_deref()))
        else {
            return;
        };
        let out = tokio::process::Command::new(&binary)
            .arg("--root")
            .arg(&state)
            .args(["delete", "--force", id])
            .stdin(std::process::Stdio::null())
            .output()
            .await;
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => tracing::warn!(
                container = %id,
                stderr = %String::from_utf8_lossy(&o.stderr).trim(),
                "{} delete failed", binary.display()
            ),
            Err(e) => tracing::warn!(container = %id, error = %e, "{} delete", binary.display()),
        }
    }

    /// On daemon start: containers whose monitor still runs are watched
    /// again; the others are finished with what their monitor recorded.
    /// Directories without a row (a crash during create or rm) go.
    async fn recover(self: &Arc<Self>) -> Result<()> {
        let rows = self.rows().await?;
        for row in &rows {
            if !row.running() {
                continue;
            }
            let alive = process_start(row.shim_pid).is_some_and(|s| s == row.shim_start);
            let me = Arc::clone(self);
            let id = row.id.clone();
            if alive {
                tracing::info!(container = %id, shim = row.shim_pid, "re-attached");
                if let Err(e) = self.network.restore(&id, &row.name).await {
                    tracing::warn!(container = %id, error = %e, "publishing its ports again");
                }
                let (pid, start) = (row.shim_pid, row.shim_start);
                let pid_file = self.container_dir(&id).join(shim::INIT_PID_FILE);
                if row.pid == 0
                    && let Some(p) = read_pid(&pid_file)
                {
                    sqlx::query("UPDATE containers SET pid = ? WHERE id = ?")
                        .bind(p)
                        .bind(&id)
                        .execute(&self.pool)
                        .await?;
                }
                tokio::spawn(async move {
                    while process_start(pid) == Some(start) {
                        tokio::time::sleep(POLL * 4).await;
                    }
                    me.finish(&id).await;
                });
            } else {
                me.finish(&id).await;
            }
        }
        let known: std::collections::HashSet<&str> = rows.iter().map(|r| r.id.as_str()).collect();
        self.network.remove_orphans(&known).await;
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if known.contains(name.as_str()) {
                    continue;
                }
                tracing::warn!(dir = %entry.path().display(), "removing a container dir without a catalog row");
                let _ = overlay::unmount(&entry.path().join("rootfs"));
                if let Ok(m) = self.cgroup(&name) {
                    let _ = m.destroy();
                }
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        // Containers that were not running when the daemon stopped (or the
        // host went down) and whose policy brings them back.
        for row in rows.iter().filter(|r| r.state == "exited") {
            let Ok(req) = row.request() else { continue };
            let policy = Policy::from_request(req.restart.as_ref()).unwrap_or(Policy::No);
            if req.auto_remove
                || !policy.at_daemon_start(row.exit_code, row.manually_stopped, row.restart_count)
            {
                continue;
            }
            tracing::info!(container = %row.id, "starting by its restart policy");
            let me = Arc::clone(self);
            let row = row.clone();
            tokio::spawn(async move {
                if let Err(e) = me.launch(&row, false).await {
                    tracing::warn!(container = %row.id, error = %e, "restart at daemon start failed");
                }
            });
        }
        Ok(())
    }

    async fn signal(&self, row: &Row, sig: Signal) -> Result<()> {
        let pid_file = self.container_dir(&row.id).join(shim::INIT_PID_FILE);
        let mut pid = if row.pid > 0 {
            row.pid
        } else {
            read_pid(&pid_file).unwrap_or(0)
        };
        // Just started (a restart by policy, say): its command is not
        // executed yet. Wait for it, or for its end.
        let deadline = Instant::now() + START_TIMEOUT;
        while pid <= 1 {
            let running = self.row(&row.id).await?.is_some_and(|r| r.running());
            if !running && row.running() {
                return Ok(());
            }
            if !running || Instant::now() >= deadline {
                return Err(Error::Conflict(format!(
                    "container {} is not running",
                    row.id
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            pid = read_pid(&pid_file).unwrap_or(0);
        }
        match kill(Pid::from_raw(pid as i32), sig) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(e) => Err(Error::Internal(format!(
                "signalling container {}: {e}",
                row.id
            ))),
        }
    }

    /// Waits until the container's stop count moves past `seen`.
    async fn wait_stopped(rx: &mut watch::Receiver<(u64, i64)>, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, rx.changed()).await.is_ok()
    }

    async fn wait_stopped_after_kill(
        &self,
        row: &Row,
        rx: &mut watch::Receiver<(u64, i64)>,
    ) -> Result<bool> {
        self.signal(row, Signal::SIGKILL).await?;
        Ok(Self::wait_stopped(rx, KILL_GRACE).await)
    }

    /// `kill -s SIG`.
    pub async fn kill(&self, name: &str, signal: &str) -> Result<()> {
        let sig = parse_signal(signal)?;
        let row = self.resolve(name).await?;
        if !row.running() {
            if self.live(&row.id).restarting() {
                return Err(Error::Conflict(format!(
                    "Container {} is restarting, wait until the container is running",
                    row.id
                )));
            }
            return Err(Error::Conflict(format!(
                "cannot kill container: {name}: container {} is not running",
                row.id
            )));
        }
        // As docker: killing with SIGKILL or the stop signal is a stop by
        // hand (no restart by policy); other signals are just signals.
        if sig == Signal::SIGKILL || parse_signal(&row.stop_signal).ok() == Some(sig) {
            self.stopped_by_hand(&row.id).await?;
        }
        self.signal(&row, sig).await
    }

    /// `stop -t`: the image's stop signal, then SIGKILL after `timeout`.
    pub async fn stop(&self, name: &str, timeout: Option<u64>) -> Result<()> {
        let row = self.resolve(name).await?;
        let live = self.live(&row.id);
        // A stop by hand first: from here no restart by policy begins, and
        // one being launched is waited for (the lock) and stopped below.
        let was_restarting = live.restarting();
        self.stopped_by_hand(&row.id).await?;
        let row = {
            let _guard = live.lock.lock().await;
            self.row(&row.id).await?.unwrap_or(row)
        };
        if !row.running() {
            if was_restarting {
                // Stopping a restarting container cancels its restart.
                return Ok(());
            }
            return Err(Error::NotModified(format!(
                "container {name} is already stopped"
            )));
        }
        let mut rx = live.exits.subscribe();
        rx.borrow_and_update();
        // It may have stopped before we subscribed.
        let Some(row) = self.row(&row.id).await?.filter(Row::running) else {
            return Ok(());
        };
        let sig = parse_signal(&row.stop_signal).unwrap_or(Signal::SIGTERM);
        self.signal(&row, sig).await?;
        if Self::wait_stopped(&mut rx, Duration::from_secs(timeout.unwrap_or(10))).await {
            return Ok(());
        }
        tracing::info!(container = %row.id, "did not stop in time; killing it");
        self.signal(&row, Signal::SIGKILL).await?;
        if Self::wait_stopped(&mut rx, KILL_GRACE).await {
            Ok(())
        } else {
            Err(Error::Internal(format!(
                "container {} did not exit after SIGKILL",
                row.id
            )))
        }
    }

    /// `wait`: blocks until the container is not running; its exit code.
    pub async fn wait(&self, name: &str) -> Result<WaitResponse> {
        let row = self.resolve(name).await?;
        let live = self.live(&row.id);
        let mut rx = live.exits.subscribe();
        rx.borrow_and_update();
        let row = self.row(&row.id).await?.unwrap_or(row);
        if !row.running() {
            return Ok(WaitResponse {
                status_code: row.exit_code,
            });
        }
        rx.changed()
            .await
            .map_err(|_| Error::Internal("the daemon is shutting down".into()))?;
        let code = rx.borrow().1;
        Ok(WaitResponse { status_code: code })
    }

    /// `rm [-f] [-v]`; `volumes`: its anonymous volumes go too.
    pub async fn remove(&self, name: &str, force: bool, volumes: bool) -> Result<()> {
        let row = self.resolve(name).await?;
        if !row.running() && self.live(&row.id).restarting() {
            if !force {
                return Err(Error::Conflict(format!(
                    "You cannot remove a restarting container {}. Stop the container before attempting removal or force remove",
                    row.id
                )));
            }
            self.live(&row.id).cancel_restart();
        }
        if row.running() {
            if !force {
                return Err(Error::Conflict(format!(
                    "You cannot remove a running container {}. Stop the container before attempting removal or force remove",
                    row.id
                )));
            }
            // No restart by policy for a container being removed.
            self.stopped_by_hand(&row.id).await?;
            let live = self.live(&row.id);
            let mut rx = live.exits.subscribe();
            rx.borrow_and_update();
            let still = self.row(&row.id).await?.is_some_and(|r| r.running());
            if still && !Self::wait_stopped_after_kill(self, &row, &mut rx).await? {
                return Err(Error::Internal(format!(
                    "container {} did not exit after SIGKILL",
                    row.id
                )));
            }
        }
        self.remove_stopped(&row.id, volumes).await
    }

    async fn remove_stopped(&self, id: &str, volumes: bool) -> Result<()> {
        let live = self.live(id);
        live.cancel_restart();
        let _guard = live.lock.lock().await;
        let Some(row) = self.row(id).await? else {
            return Ok(());
        };
        if row.running() {
            return Err(Error::Conflict(format!("container {id} is running again")));
        }
        let dir = self.container_dir(id);
        overlay::unmount(&dir.join("rootfs"))
            .map_err(|e| Error::Internal(format!("unmounting {}: {e}", dir.display())))?;
        if let Ok(m) = self.cgroup(id) {
            m.destroy()
                .map_err(|e| Error::Internal(format!("removing the cgroup of {id}: {e}")))?;
        }
        // Its address is freed with the row (ON DELETE CASCADE).
        self.network.detach(id).await;
        let anonymous = self.volumes.anonymous_of(id).await?;
        // The row goes first: a crash after it leaves a dir that the next
        // start removes (see recover), never a row without its files. Its
        // volume_users rows go with it (ON DELETE CASCADE).
        sqlx::query("DELETE FROM containers WHERE id = ?")
            .bind(id)
            .execute(&self.pool)
            .await?;
        if volumes {
            self.volumes.remove_unused(&anonymous).await;
        }
        if let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(container = %id, error = %e, "removing {}", dir.display());
        }
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        tracing::info!(container = %id, "removed");
        Ok(())
    }

    /// `ps [-a]`.
    pub async fn list(&self, all: bool) -> Result<Vec<ContainerSummary>> {
        let rows = self.rows().await?;
        let mut ports = HashMap::new();
        for r in rows.iter().filter(|r| r.running()) {
            ports.insert(r.id.clone(), self.network.published(&r.id).await?);
        }
        Ok(rows
            .into_iter()
            .filter(|r| all || r.running())
            .map(|r| {
                let restarting = r.state == "exited" && self.live(&r.id).restarting();
                let status = match r.state.as_str() {
                    "running" => format!("Up {}", human_duration(since(&r.started_at))),
                    "exited" if restarting => format!(
                        "Restarting ({}) {} ago",
                        r.exit_code,
                        human_duration(since(&r.finished_at))
                    ),
                    "exited" => format!(
                        "Exited ({}) {} ago",
                        r.exit_code,
                        human_duration(since(&r.finished_at))
                    ),
                    _ => "Created".to_string(),
                };
                let mut command = vec![r.path.clone()];
                command.extend(r.args());
                ContainerSummary {
                    id: r.id.clone(),
                    name: r.name.clone(),
                    image: r.image.clone(),
                    command: command.join(" "),
                    created: epoch(&r.created_at),
                    state: if restarting {
                        "restarting".to_string()
                    } else {
                        r.state.clone()
                    },
                    status,
                    ports: ports.remove(&r.id).unwrap_or_default(),
                }
            })
            .collect())
    }

    /// Every container with its state, exit code and labels (for the fleet
    /// agent's reconciliation and heartbeats).
    pub async fn observe(&self) -> Result<Vec<Observed>> {
        let mut out = Vec::new();
        for r in self.rows().await? {
            let labels = r.request().map(|q| q.labels).unwrap_or_default();
            let state = match r.state.as_str() {
                "running" => ObservedState::Running,
                "exited" => ObservedState::Exited {
                    code: r.exit_code,
                    restarting: self.live(&r.id).restarting(),
                },
                _ => ObservedState::Created,
            };
            out.push(Observed {
                id: r.id,
                name: r.name,
                state,
                labels,
            });
        }
        Ok(out)
    }

    /// `inspect`: docker's keys.
    pub async fn inspect(&self, name: &str) -> Result<serde_json::Value> {
        let r = self.resolve(name).await?;
        let req = r.request()?;
        let dir = self.container_dir(&r.id);
        let image = self.images.find(&r.image_id).await.ok();
        let config = image.as_ref().and_then(|i| i.config.config().clone());
        let mut env: Vec<String> = config
            .as_ref()
            .and_then(|c| c.env().clone())
            .unwrap_or_default();
        env.extend(req.env.iter().cloned());
        let hostname = bundle::hostname(&run_options(&r.id, &req, Vec::new()))
            .ok()
            .flatten()
            .unwrap_or_default();
        let lower: Vec<String> = image
            .map(|i| {
                i.layers
                    .iter()
                    .rev()
                    .filter_map(|d| self.images.store().layer_path(d).ok())
                    .map(|p| p.display().to_string())
                    .collect()
            })
            .unwrap_or_default();
        let entrypoint = match &req.entrypoint {
            Some(e) if e.is_empty() => None,
            Some(e) => Some(vec![e.clone()]),
            None => config.as_ref().and_then(|c| c.entrypoint().clone()),
        };
        let cmd = match &req.cmd {
            Some(c) if !c.is_empty() => Some(c.clone()),
            _ if req.entrypoint.is_some() => None,
            _ => config.as_ref().and_then(|c| c.cmd().clone()),
        };
        let network = match req.network {
            Network::None => "none",
            Network::Host => "host",
            Network::Bridge => "bridge",
        };
        let restarting = !r.running() && self.live(&r.id).restarting();
        let policy = Policy::from_request(req.restart.as_ref())
            .unwrap_or(Policy::No)
            .to_api();
        let network_settings = self.network_settings(&r, &req, config.as_ref()).await?;
        let (mounts, binds, tmpfs, anonymous) = self.volumes.inspect_parts(&r.id, &req).await?;
        // The image's labels with the container's own over them.
        let mut labels = config
            .as_ref()
            .and_then(|c| c.labels().clone())
            .unwrap_or_default();
        labels.extend(req.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
        Ok(json!({
            "Id": r.id,
            "Created": r.created_at,
            "Path": r.path,
            "Args": r.args(),
            "State": {
                "Status": if restarting { "restarting" } else { r.state.as_str() },
                "Running": r.running(),
                "Paused": false,
                "Restarting": restarting,
                "OOMKilled": r.oom_killed,
                "Dead": false,
                "Pid": if r.running() { r.pid } else { 0 },
                "ExitCode": r.exit_code,
                "Error": r.error,
                "StartedAt": or_zero(&r.started_at),
                "FinishedAt": or_zero(&r.finished_at),
            },
            "Image": r.image_id,
            "ResolvConfPath": dir.join("resolv.conf"),
            "HostnamePath": dir.join("hostname"),
            "HostsPath": dir.join("hosts"),
            "LogPath": dir.join(shim::LOG_FILE),
            "Name": format!("/{}", r.name),
            "RestartCount": r.restart_count,
            "Driver": "overlay",
            "Platform": "linux",
            "HostConfig": {
                "NetworkMode": network,
                "PortBindings": network::port_bindings(&req.publish),
                "PublishAllPorts": req.publish_all,
                "AutoRemove": req.auto_remove,
                "RestartPolicy": policy,
                "ReadonlyRootfs": req.read_only,
                "Memory": req.memory.unwrap_or(0),
                "MemorySwap": req.memory_swap.unwrap_or(0),
                "NanoCpus": req.cpus.map_or(0, |c| (c * 1e9).round() as i64),
                "CpuShares": req.cpu_shares.unwrap_or(0),
                "PidsLimit": req.pids_limit,
                "CgroupParent": CGROUP_PARENT,
                "Runtime": self.runtimes.name(req.runtime.as_deref()),
                "Binds": binds,
                "Tmpfs": tmpfs,
            },
            "Mounts": mounts,
            "GraphDriver": {
                "Name": "overlay",
                "Data": {
                    "LowerDir": lower.join(":"),
                    "UpperDir": dir.join("upper"),
                    "WorkDir": dir.join("work"),
                    "MergedDir": dir.join("rootfs"),
                },
            },
            "Config": {
                "Hostname": hostname,
                "User": req.user.clone().or_else(|| config.as_ref().and_then(|c| c.user().clone())).unwrap_or_default(),
                "Env": env,
                "Cmd": cmd,
                "Entrypoint": entrypoint,
                "Image": r.image,
                "WorkingDir": req.workdir.clone().or_else(|| config.as_ref().and_then(|c| c.working_dir().clone())).unwrap_or_default(),
                "Labels": labels,
                "StopSignal": r.stop_signal,
                "Volumes": anonymous,
                "Tty": req.tty,
                "OpenStdin": req.open_stdin,
                "StdinOnce": req.stdin_once,
                "AttachStdin": req.stdin_once,
            },
            "NetworkSettings": network_settings,
        }))
    }

    /// `logs [-f] [--tail N] [-t]` as a frame stream.
    pub async fn logs(
        &self,
        name: &str,
        follow_on: bool,
        tail: Option<usize>,
        timestamps: bool,
    ) -> Result<mpsc::Receiver<Bytes>> {
        let row = self.resolve(name).await?;
        let live = self.live(&row.id);
        let rx = live.exits.subscribe();
        let seen = rx.borrow().0;
        let path = self.container_dir(&row.id).join(shim::LOG_FILE);
        let (tx, out) = mpsc::channel(64);
        let running = self.row(&row.id).await?.is_some_and(|r| r.running());
        let offset = match tail {
            Some(n) => tail_offset(&path, n).map_err(internal("reading the log"))?,
            None => 0,
        };
        tokio::spawn(async move {
            if follow_on && running {
                follow(path, offset, seen, rx, tx, timestamps, false).await;
            } else {
                let mut reader = LogTail::new(path, offset);
                if let Ok(entries) = reader.read_new() {
                    send_entries(&tx, &entries, timestamps).await;
                }
            }
        });
        Ok(out)
    }
}

/// The bridge network's part of a container (see `network`).
impl Containers {
    /// At start, for `--network bridge`: its address (given at create, or
    /// now for a container made before), namespace, veth and published
    /// ports. Undoes itself on failure.
    async fn network_up(
        &self,
        row: &Row,
        req: &CreateRequest,
        image: &ImageRecord,
    ) -> Result<Option<std::net::Ipv4Addr>> {
        if req.network != Network::Bridge {
            return Ok(None);
        }
        let ip = self.network.allocate(&row.id).await?;
        let exposed = exposed_ports(image.config.config().as_ref());
        let wanted = network::wanted_ports(&req.publish, req.publish_all, &exposed);
        self.network.attach(&row.id, ip).await?;
        if let Err(e) = self.network.publish(&row.id, &row.name, ip, &wanted).await {
            self.network.detach(&row.id).await;
            return Err(e);
        }
        Ok(Some(ip))
    }

    /// docker's `NetworkSettings` of `inspect`.
    async fn network_settings(
        &self,
        r: &Row,
        req: &CreateRequest,
        config: Option<&oci_spec::image::Config>,
    ) -> Result<serde_json::Value> {
        let exposed = exposed_ports(config);
        let bridge = req.network == Network::Bridge;
        let ip = if bridge && r.running() {
            self.network.address(&r.id).await?
        } else {
            None
        };
        let published = if r.running() {
            self.network.published(&r.id).await?
        } else {
            Vec::new()
        };
        let subnet = self.network.subnet();
        let (ip_s, prefix, gateway, mac) = match ip {
            Some(ip) => (
                ip.to_string(),
                subnet.prefix,
                subnet.gateway().to_string(),
                network::format_mac(network::mac_of(ip)),
            ),
            None => (String::new(), 0, String::new(), String::new()),
        };
        let name = match req.network {
            Network::None => "none",
            Network::Host => "host",
            Network::Bridge => "bridge",
        };
        let sandbox = if ip.is_some() {
            self.network.netns_path(&r.id).display().to_string()
        } else {
            String::new()
        };
        Ok(json!({
            "SandboxKey": sandbox,
            "Ports": if bridge { network::ports_json(&exposed, &published) } else { json!({}) },
            "IPAddress": ip_s,
            "IPPrefixLen": prefix,
            "Gateway": gateway,
            "MacAddress": mac,
            "Networks": {
                name: {
                    "IPAddress": ip_s,
                    "IPPrefixLen": prefix,
                    "Gateway": gateway,
                    "MacAddress": mac,
                },
            },
        }))
    }
}

/// The image's ExposedPorts keys (`80/tcp`).
fn exposed_ports(config: Option<&oci_spec::image::Config>) -> Vec<String> {
    config
        .and_then(|c| c.exposed_ports().clone())
        .unwrap_or_default()
}

/// The last line the container (or the runtime) wrote on stderr.
fn last_stderr(dir: &Path) -> Option<String> {
    let entries = crate::logs::read_entries(&dir.join(shim::LOG_FILE), Some(50)).ok()?;
    entries
        .iter()
        .rev()
        .find(|e| e.stream == Stream::Stderr && !e.log.trim().is_empty())
        .map(|e| {
            let line = e.log.trim();
            line.strip_prefix("wharf-runner: ")
                .unwrap_or(line)
                .to_string()
        })
}

/// The byte offset from which the last `n` entries of the log start.
fn tail_offset(path: &Path, n: usize) -> std::io::Result<u64> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    // Only complete lines count.
    let end = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if n == 0 {
        return Ok(end as u64);
    }
    let mut seen = 0;
    for (i, b) in bytes[..end].iter().enumerate().rev() {
        if *b == b'\n' && i + 1 != end {
            seen += 1;
            if seen == n {
                return Ok(i as u64 + 1);
            }
        }
    }
    Ok(0)
}

/// Reads a growing json-file log from an offset, whole lines only.
struct LogTail {
    path: PathBuf,
    offset: u64,
}

impl LogTail {
    fn new(path: PathBuf, offset: u64) -> LogTail {
        LogTail { path, offset }
    }

    fn read_new(&mut self) -> std::io::Result<Vec<Entry>> {
        let mut file = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        file.seek(SeekFrom::Start(self.offset))?;
        // Bounded per call; the follower comes back for the rest.
        let mut buf = Vec::new();
        file.take(4 << 20).read_to_end(&mut buf)?;
        let Some(end) = buf.iter().rposition(|&b| b == b'\n') else {
            return Ok(Vec::new());
        };
        self.offset += end as u64 + 1;
        Ok(buf[..end]
            .split(|&b| b == b'\n')
            .filter_map(|line| serde_json::from_slice::<Entry>(line).ok())
            .collect())
    }
}

/// Sends entries as frames; false when the receiver is gone.
async fn send_entries(tx: &mpsc::Sender<Bytes>, entries: &[Entry], timestamps: bool) -> bool {
    for e in entries {
        let kind = match e.stream {
            Stream::Stdout => FrameKind::Stdout,
            Stream::Stderr => FrameKind::Stderr,
        };
        let payload = if timestamps {
            format!("{} {}", e.time, e.log)
        } else {
            e.log.clone()
        };
        if tx
            .send(Bytes::from(encode_frame(kind, payload.as_bytes())))
            .await
            .is_err()
        {
            return false;
        }
    }
    true
}

/// A container being attached to (see `attach`).
pub(super) struct AttachTarget {
    pub id: String,
    /// Made with `-i` or `-t`: its shim serves the attach socket.
    pub interactive: bool,
    /// `--rm`: the exit is told once the container is gone, as docker's
    /// `run --rm` returns after the removal.
    pub auto_remove: bool,
    /// `run -i` attached: the end of the client's input closes the
    /// container's stdin (docker's StdinOnce).
    pub stdin_once: bool,
    pub dir: PathBuf,
    pub log: PathBuf,
    pub log_offset: u64,
    /// The stop count when it was subscribed (see [`follow`]).
    pub seen: u64,
    pub exits: watch::Receiver<(u64, i64)>,
}

impl AttachTarget {
    /// The output of a container without `-i`/`-t` from now on, from its
    /// log, ending with an exit frame.
    pub fn follow_log(&self) -> mpsc::Receiver<Bytes> {
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(follow(
            self.log.clone(),
            self.log_offset,
            self.seen,
            self.exits.clone(),
            tx,
            false,
            true,
        ));
        rx
    }
}

/// Streams the log from `offset` until the container stops (then the rest
/// of the log, and with `exit_frame` the exit code).
/// `seen` is the stop count when the caller subscribed, before it started
/// anything: any other value means the container stopped (values are
/// compared because `changed()` below marks versions seen).
async fn follow(
    path: PathBuf,
    offset: u64,
    seen: u64,
    mut stopped: watch::Receiver<(u64, i64)>,
    tx: mpsc::Sender<Bytes>,
    timestamps: bool,
    exit_frame: bool,
) {
    let mut reader = LogTail::new(path, offset);
    loop {
        let done = stopped.borrow().0 != seen || stopped.has_changed().is_err();
        loop {
            match reader.read_new() {
                Ok(entries) if entries.is_empty() => break,
                Ok(entries) => {
                    if !send_entries(&tx, &entries, timestamps).await {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reading a container log");
                    break;
                }
            }
        }
        if done {
            if exit_frame {
                let code = stopped.borrow().1;
                let body =
                    serde_json::to_vec(&WaitResponse { status_code: code }).unwrap_or_default();
                let _ = tx
                    .send(Bytes::from(encode_frame(FrameKind::Exit, &body)))
                    .await;
            }
            return;
        }
        tokio::select! {
            _ = stopped.changed() => {}
            _ = tokio::time::sleep(POLL) => {}
            _ = tx.closed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_dockers_rule() {
        assert!(valid_name("web-1"));
        assert!(valid_name("a.b_c"));
        assert!(!valid_name("-x"));
        assert!(!valid_name("a"));
        assert!(!valid_name("a/b"));
        assert!(!valid_name("a b"));
    }

    #[test]
    fn signals_by_name_or_number() {
        assert_eq!(parse_signal("KILL").unwrap(), Signal::SIGKILL);
        assert_eq!(parse_signal("sigterm").unwrap(), Signal::SIGTERM);
        assert_eq!(parse_signal("10").unwrap(), Signal::SIGUSR1);
        assert!(parse_signal("NOPE").is_err());
        assert!(parse_signal("999").is_err());
    }

    #[test]
    fn tail_offsets_count_whole_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        std::fs::write(&p, "a\nb\nc\npartial").unwrap();
        assert_eq!(tail_offset(&p, 1).unwrap(), 4);
        assert_eq!(tail_offset(&p, 2).unwrap(), 2);
        assert_eq!(tail_offset(&p, 10).unwrap(), 0);
        assert_eq!(tail_offset(&p, 0).unwrap(), 6);
        assert_eq!(tail_offset(&dir.path().join("none"), 3).unwrap(), 0);
    }

    #[test]
    fn the_process_start_time_of_this_process_is_known() {
        let me = i64::from(std::process::id());
        assert!(process_start(me).is_some());
        assert_eq!(process_start(0), None);
    }
}
