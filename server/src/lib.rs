//! wharf-server: an OCI distribution registry (and, later, the control plane
//! of wharf's runner nodes).
//!
//! Layers, each calling only the ones below it:
//! `api` (HTTP, axum) -> `registry` (the spec's rules) -> `catalog` (SQL)
//! and `store` (blob bytes). `digest`, `names` and `config` are leaves that
//! any layer may use. `events` (webhooks) sits beside the registry: the api
//! layer calls it after a request succeeded. `metrics` (Prometheus counters)
//! is a leaf the api and garbage collection write to; `tls` (rustls
//! listener, self-signed CA) serves only this file's `serve` path.
//! `browse` (the web catalog's service) sits between `api` and the
//! registry: `api` -> `browse` -> (`registry`, `catalog`). `web` (the HTML
//! UI at `/`, merged into the api router) calls `browse` and `auth` only:
//! `web` -> (`browse`, `auth`). `fleet` (the control plane of runner
//! nodes) sits beside the registry: `api` -> `fleet` -> `catalog`.

pub mod admin;
pub mod api;
pub mod auth;
pub mod browse;
pub mod catalog;
pub mod config;
pub mod digest;
pub mod events;
pub mod fleet;
pub mod gc;
pub mod metrics;
pub mod names;
pub mod registry;
pub mod seed;
pub mod store;
pub mod tls;
pub mod web;

use std::sync::Arc;

pub use api::AppState;
pub use config::Settings;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Catalog(#[from] catalog::CatalogError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("server: {0}")]
    Serve(std::io::Error),
    #[error(transparent)]
    Auth(#[from] auth::AuthError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Events(#[from] events::EventsError),
    #[error("filling in the browse summaries of older manifests: {0}")]
    Summaries(String),
}

/// Opens the catalog and the blob store the settings name.
pub async fn build_state(settings: &Settings) -> Result<AppState, StartError> {
    std::fs::create_dir_all(&settings.data_dir).map_err(|source| StartError::DataDir {
        path: settings.data_dir.clone(),
        source,
    })?;
    let catalog = catalog::Catalog::open(&settings.catalog_url()).await?;
    let catalog_for_fleet = catalog.clone();
    let store = store::BlobStore::open(settings).await?;
    let auth = if settings.auth.enabled {
        let auth = auth::Auth::new(catalog.clone(), settings.auth_config())?;
        let admin_password = std::env::var("WHARF_ADMIN_PASSWORD").ok();
        auth.ensure_admin(admin_password.as_deref()).await?;
        Some(Arc::new(auth))
    } else {
        None
    };
    let events = events::Events::start(&settings.webhooks, settings.listen)?;
    let registry = Arc::new(registry::Registry::new(catalog, store, settings.limits()));
    // Manifests of an older catalog get their browse summaries (sizes,
    // platforms) once; a catalog made by this version has none missing.
    registry
        .summarize_missing()
        .await
        .map_err(|e| StartError::Summaries(e.to_string()))?;
    let metrics = metrics::Metrics::new(std::time::Duration::from_secs(
        settings.metrics.catalog_refresh_secs,
    ));
    Ok(AppState {
        browse: browse::Browse::new(registry.clone()),
        registry,
        auth,
        metrics: Arc::new(metrics),
        access_log: settings.log.access,
        events: Arc::new(events),
        fleet: fleet::Fleet::new(
            catalog_for_fleet,
            std::time::Duration::from_secs(settings.fleet.node_ttl_secs),
        ),
    })
}

/// The HTTP application.
pub fn app(state: AppState) -> axum::Router {
    api::router(state)
}

/// Serves `app` on an already bound listener until `shutdown` resolves.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    serve_on_with(listener, app, None, shutdown).await
}

/// Serves `app` on an already bound listener, over TLS when `tls` is given,
/// until `shutdown` resolves. Accepted sockets get TCP_NODELAY either way.
pub async fn serve_on_with(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    use axum::serve::ListenerExt;
    match tls {
        None => {
            // Nagle would hold back the small responses that dominate pulls.
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
                .map_err(StartError::Serve)
        }
        Some(config) => {
            // The handlers read the peer as `ConnectInfo<SocketAddr>`;
            // axum gives it only for its own listeners, so it is copied over.
            let app = app.layer(axum::middleware::map_request(
                |mut req: axum::extract::Request| async move {
                    let peer = req
                        .extensions()
                        .get::<axum::extract::ConnectInfo<tls::Peer>>()
                        .map(|c| c.0.0);
                    if let Some(peer) = peer {
                        req.extensions_mut()
                            .insert(axum::extract::ConnectInfo(peer));
                    }
                    req
                },
            ));
            let listener = tls::TlsListener::new(listener, config).map_err(StartError::Serve)?;
            let app = app.into_make_service_with_connect_info::<tls::Peer>();
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
                .map_err(StartError::Serve)
        }
    }
}

/// Binds the configured address and serves until SIGINT or SIGTERM.
pub async fn serve(settings: &Settings) -> Result<(), StartError> {
    // TLS files first: a bad path or key is one clear error before anything
    // else starts.
    let tls = tls::server_config(settings)?;
    let state = build_state(settings).await?;
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: settings.listen,
            source,
        })?;
    if !settings.auth.enabled && !settings.listen.ip().is_loopback() {
        tracing::warn!(
            listen = %settings.listen,
            "AUTH IS OFF and the registry listens on a non-loopback address: anyone who can \
             reach it can push, pull and delete. Set [auth] enabled = true (see config/server.toml)."
        );
    }
    if let Some(made) = tls.as_ref().and_then(|t| t.self_signed.as_ref()) {
        tls::log_ca_instructions(made, settings.listen);
    }
    tracing::info!(
        listen = %settings.listen,
        tls = tls.is_some(),
        auth = settings.auth.enabled,
        data_dir = %settings.data_dir.display(),
        catalog = %catalog::redact_url(&settings.catalog_url()),
        "wharf-server is serving the registry"
    );
    let gc = (settings.gc.interval_secs > 0).then(|| {
        let metrics = state.metrics.clone();
        let hook: gc::ReportHook = std::sync::Arc::new(move |run| match run {
            Ok(report) => metrics.gc_run(report.bytes_freed()),
            Err(_) => metrics.gc_failed(),
        });
        gc::spawn_schedule(
            state.registry.catalog().clone(),
            state.registry.store().clone(),
            settings.gc_options(),
            std::time::Duration::from_secs(settings.gc.interval_secs),
            Some(hook),
        )
    });
    state.fleet.start();
    let fleet = state.fleet.clone();
    // Node channels and followed logs never end by themselves: they are
    // closed when the shutdown starts, or it would wait for them forever.
    let shutdown = async move {
        shutdown_signal().await;
        fleet.close();
    };
    let served = serve_on_with(listener, app(state), tls.map(|t| t.config), shutdown).await;
    if let Some(gc) = gc {
        gc.abort();
    }
    served
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}
