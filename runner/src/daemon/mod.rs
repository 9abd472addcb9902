//! The node agent (`wharf-runner daemon`): owns the state dir, the catalog
//! and every container's lifecycle, and serves the local API (see `api`
//! for the wire contract) on a unix socket.
//!
//! Calls `images` (pull, store, catalog of images), `containers`
//! (lifecycle), `bundle`, `cgroups`, `shim` (as a separate process); called
//! by `main` only. The CLI never links against this: it speaks HTTP.

pub mod catalog;
pub mod credentials;
pub mod error;
pub mod images;

use std::path::PathBuf;

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
}

/// Runs the daemon until SIGTERM/SIGINT.
pub async fn run(config: Config) -> Result<()> {
    let _ = config;
    Err(Error::Internal("the daemon is being built".into()))
}
