//! Images on this node: pulling into the store, the catalog's image rows,
//! `images`/`inspect`/`rmi`/`prune`, and registry credentials (`login`).
//!
//! PLACEHOLDER: the interface the rest of the daemon calls; being written.

use std::collections::HashMap;
use std::path::Path;

use oci_spec::image::ImageConfiguration;
use sqlx::SqlitePool;
use tokio::sync::mpsc;

use super::error::{Error, Result};
use crate::api::{ImageSummary, LoginRequest, PruneReport, PullEvent, RemovedImage};
use crate::image::store::Store;

/// Settings for pulling.
#[derive(Debug, Clone, Default)]
pub struct ImagesConfig {
    /// Registry for short names (`busybox` -> `<default>/library/busybox`
    /// when it is docker.io, `<default>/busybox` otherwise).
    pub default_registry: String,
    /// Registries spoken to over plain HTTP besides loopback ones.
    pub insecure_registries: Vec<String>,
}

/// A local image as containers need it.
#[derive(Debug, Clone)]
pub struct ImageRecord {
    /// `sha256:<config digest hex>`.
    pub id: String,
    pub config: ImageConfiguration,
    /// Layer digests, bottom first.
    pub layers: Vec<String>,
}

pub struct Images {
    store: Store,
}

impl Images {
    pub async fn open(root: &Path, _pool: SqlitePool, _config: ImagesConfig) -> Result<Images> {
        let store = Store::open(root).map_err(Error::internal)?;
        Ok(Images { store })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub async fn pull(
        &self,
        _reference: &str,
        _events: mpsc::Sender<PullEvent>,
    ) -> Result<ImageRecord> {
        Err(Error::Internal("not built".into()))
    }

    pub async fn find(&self, name: &str) -> Result<ImageRecord> {
        Err(Error::NotFound(format!("No such image: {name}")))
    }

    pub async fn list(&self, _in_use: &HashMap<String, u64>) -> Result<Vec<ImageSummary>> {
        Ok(Vec::new())
    }

    pub async fn inspect(&self, name: &str) -> Result<serde_json::Value> {
        Err(Error::NotFound(format!("No such image: {name}")))
    }

    pub async fn remove(
        &self,
        name: &str,
        _force: bool,
        _in_use: &HashMap<String, u64>,
    ) -> Result<Vec<RemovedImage>> {
        Err(Error::NotFound(format!("No such image: {name}")))
    }

    pub async fn prune(&self, _all: bool, _in_use: &HashMap<String, u64>) -> Result<PruneReport> {
        Ok(PruneReport::default())
    }

    pub async fn login(&self, _req: LoginRequest) -> Result<()> {
        Err(Error::Internal("not built".into()))
    }

    pub async fn logout(&self, _registry: &str) -> Result<()> {
        Err(Error::Internal("not built".into()))
    }
}
