//! The node agent (`wharf-runner daemon`): owns the state dir, the catalog
//! and every container's lifecycle, and serves the local API (see `api`
//! for the wire contract) on a unix socket.
//!
//! Calls `images` (pull, store, catalog of images), `containers`
//! (lifecycle), `bundle`, `cgroups`, `shim` (as a separate process), and
//! `fleet` (joining a control plane, the node agent); called by `main`
//! only. The CLI never links against this: it speaks HTTP.

pub mod attach;
pub mod catalog;
pub mod commit;
pub mod containers;
pub mod credentials;
pub mod error;
pub mod exec;
pub mod fleet;
pub mod http;
pub mod images;
pub mod network;
pub mod overlay;
pub mod restart;
pub mod stats;
pub mod volumes;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;

pub use error::{Error, Result};

/// Default state dir.
pub const DEFAULT_ROOT: &str = "/var/lib/wharf-runner";
/// Default API socket.
pub const DEFAULT_SOCKET: &str = "/run/wharf-runner/runner.sock";

/// How the daemon is started (flags of `wharf-runner daemon`).
#[derive(Debug, Clone)]
pub struct Config {
    pub root: PathBuf,
    pub socket: PathBuf,
    pub default_registry: String,
    pub insecure_registries: Vec<String>,
    /// The runtime of containers that do not name one.
    pub default_runtime: String,
    /// Extra OCI runtimes as `NAME=PATH` (`runc` is found on PATH).
    pub runtimes: Vec<String>,
    /// The bridge of `--network bridge` (made if missing) and its subnet.
    pub bridge: String,
    pub bridge_subnet: String,
    /// `--join`, `--token`, `--node-name`, `--label` (see `fleet`).
    pub fleet: fleet::JoinOptions,
}

/// The built-in runtime's name (`--runtime wharf`).
pub const BUILTIN_RUNTIME: &str = "wharf";

/// Runs the daemon until SIGTERM or SIGINT. Running containers are left
/// running when it stops: the next start re-attaches to them.
pub async fn run(config: Config) -> Result<()> {
    // Refused before anything (state dir, bridge) is made.
    network::preflight(&config.bridge, &config.bridge_subnet).await?;
    let root = &config.root;
    std::fs::create_dir_all(root)
        .and_then(|()| std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700)))
        .map_err(|e| Error::Internal(format!("state dir {}: {e}", root.display())))?;
    let _lock = lock_root(root)?;
    // Joined (or joining) a fleet: refused before the daemon serves anything.
    let node = fleet::prepare(root, &config.fleet).await?;
    let pool = catalog::open(root).await?;
    let images = Arc::new(
        images::Images::open(
            root,
            pool.clone(),
            images::ImagesConfig {
                default_registry: config.default_registry.clone(),
                insecure_registries: config.insecure_registries.clone(),
            },
        )
        .await?,
    );
    if let Some(node) = &node {
        // The node credential for the fleet's registry, in memory only.
        images.add_session_registry(
            &node.registry,
            crate::image::client::Credentials {
                username: format!("node.{}", node.name),
                password: node.secret.clone(),
            },
            node.server.starts_with("http://"),
        );
    }
    let exe = std::env::current_exe()
        .map_err(|e| Error::Internal(format!("cannot find the wharf-runner binary: {e}")))?;
    let runtimes = containers::Runtimes::new(&config.default_runtime, &config.runtimes)?;
    let network =
        network::Network::open(root, pool.clone(), &config.bridge, &config.bridge_subnet).await?;
    let volumes = Arc::new(volumes::Volumes::open(root, pool.clone())?);
    let containers = containers::Containers::open(
        root,
        pool.clone(),
        images.clone(),
        volumes.clone(),
        exe.clone(),
        runtimes,
        network,
    )
    .await?;
    let execs = exec::Execs::new(containers.clone(), exe);
    if let Some(node) = node {
        fleet::agent::Agent::start(
            node,
            root.clone(),
            containers.clone(),
            images.clone(),
            pool.clone(),
        )
        .await?;
    }

    let socket = &config.socket;
    if let Some(parent) = socket.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| Error::Internal(format!("socket dir {}: {e}", parent.display())))?;
    }
    // The root lock is ours, so a socket file left here is a dead daemon's.
    match std::fs::remove_file(socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::Internal(format!("socket {}: {e}", socket.display()))),
    }
    let listener = tokio::net::UnixListener::bind(socket)
        .map_err(|e| Error::Internal(format!("listening on {}: {e}", socket.display())))?;
    // Only root (and the group, as docker's socket) may drive the daemon.
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| Error::Internal(format!("socket {}: {e}", socket.display())))?;
    tracing::info!(root = %root.display(), socket = %socket.display(), "wharf-runner daemon listening");

    let app = http::router(http::AppState {
        images,
        containers,
        execs,
        volumes,
    });
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await;
    let _ = std::fs::remove_file(socket);
    served.map_err(|e| Error::Internal(format!("serving {}: {e}", socket.display())))?;
    tracing::info!("wharf-runner daemon stopped; containers keep running");
    Ok(())
}

/// One daemon per state dir: an exclusive lock on `<root>/daemon.lock`,
/// held for the daemon's life.
fn lock_root(root: &std::path::Path) -> Result<nix::fcntl::Flock<std::fs::File>> {
    let path = root.join("daemon.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::Internal(format!("{}: {e}", path.display())))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|_| {
        Error::Conflict(format!(
            "another wharf-runner daemon is using {}",
            root.display()
        ))
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("shutting down");
}
