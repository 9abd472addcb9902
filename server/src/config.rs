//! Settings, in two steps: what the user wrote (a TOML file, `WHARF_*`
//! environment variables, flags; later ones win) is merged into one TOML
//! table, then deserialized once into validated [`Settings`].
//!
//! A leaf module: nothing here opens files other than the config itself.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// Every setting, with the embedded default: one machine, nothing to install.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Where the SQLite catalog and local blobs live by default.
    pub data_dir: PathBuf,
    pub catalog: CatalogSettings,
    pub storage: StorageSettings,
    pub registry: RegistrySettings,
    pub auth: AuthSettings,
    pub tls: TlsSettings,
    pub log: LogSettings,
    pub metrics: MetricsSettings,
    pub gc: GcSettings,
    pub fleet: FleetSettings,
    /// `[[webhooks]]`: where events are sent (see `events`). File only: an
    /// array of tables has no `WHARF_*` form.
    pub webhooks: Vec<WebhookSettings>,
}

/// TLS on the listener. Off unless `cert` and `key` are set or
/// `self_signed` is on.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSettings {
    /// PEM certificate chain (the server's certificate first).
    pub cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
    /// Make (on first start) and use a CA and a server certificate in
    /// `<data_dir>/tls/`.
    pub self_signed: bool,
    /// Extra names (DNS names or IP addresses) for the self-signed
    /// certificate, besides localhost, 127.0.0.1, the host name and the
    /// listen address.
    pub san: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// `text` (default) or `json` (one JSON object a line).
    pub format: LogFormat,
    /// One access line per `/v2/` request (target `wharf::access`).
    pub access: bool,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            format: LogFormat::Text,
            access: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSettings {
    /// Seconds the catalog figures of `/metrics` (blobs and bytes stored,
    /// upload sessions) are reused before the catalog is asked again.
    pub catalog_refresh_secs: u64,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        MetricsSettings {
            catalog_refresh_secs: 10,
        }
    }
}

/// One `[[webhooks]]` endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    /// `http://` or `https://` URL events are POSTed to.
    pub url: String,
    /// HMAC-SHA256 key of the `X-Wharf-Signature` header. Exactly one of
    /// `secret` and `secret_file` is required.
    #[serde(default)]
    pub secret: Option<WebhookSecret>,
    /// A file holding the secret (trailing newline removed), e.g. a mounted
    /// Kubernetes Secret or a systemd credential.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// Repository patterns (`team/*`, `*`, `tools/linter`); default every
    /// repository.
    #[serde(default = "all_repositories")]
    pub repositories: Vec<String>,
    /// Which events: `push`, `pull`, `delete`; default all three.
    #[serde(default = "all_actions")]
    pub actions: Vec<EventAction>,
    /// Seconds one delivery attempt may take (connect, send, answer).
    #[serde(default = "default_webhook_timeout")]
    pub timeout_secs: u64,
    /// Attempts after the first one before the event is given up.
    #[serde(default = "default_webhook_retries")]
    pub max_retries: u32,
    /// Wait before the first retry; it doubles with each one (capped at
    /// five minutes).
    #[serde(default = "default_webhook_backoff")]
    pub retry_backoff_ms: u64,
}

/// An event kind a webhook may subscribe to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventAction {
    Push,
    Pull,
    Delete,
}

impl EventAction {
    pub const ALL: [EventAction; 3] = [EventAction::Push, EventAction::Pull, EventAction::Delete];

    pub fn as_str(self) -> &'static str {
        match self {
            EventAction::Push => "push",
            EventAction::Pull => "pull",
            EventAction::Delete => "delete",
        }
    }
}

/// A webhook secret: never shown by `Debug`, so settings can be logged.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct WebhookSecret(pub String);

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(<redacted>)")
    }
}

fn all_repositories() -> Vec<String> {
    vec!["*".to_owned()]
}

fn all_actions() -> Vec<EventAction> {
    EventAction::ALL.to_vec()
}

fn default_webhook_timeout() -> u64 {
    5
}

fn default_webhook_retries() -> u32 {
    5
}

fn default_webhook_backoff() -> u64 {
    1000
}

/// `[gc]`: the online garbage collector (see `crate::gc`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GcSettings {
    /// Seconds between scheduled runs in the server; 0 turns the schedule
    /// off (`wharf-server gc` still works).
    pub interval_secs: u64,
    /// Manifests and blobs used (pushed, mounted, referenced) more recently
    /// than this are never collected.
    pub grace_secs: u64,
    /// What happens to manifests no tag reaches: `keep` or `delete`.
    pub untagged: UntaggedPolicy,
    /// Upload sessions untouched for this long are removed.
    pub upload_max_age_secs: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UntaggedPolicy {
    Keep,
    Delete,
}

/// `[fleet]`: the control plane of runner nodes (see `crate::fleet`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FleetSettings {
    /// Seconds without a heartbeat before a node is `down` and its
    /// replicas are placed elsewhere; nodes heartbeat every third of it.
    pub node_ttl_secs: u64,
}

impl Default for FleetSettings {
    fn default() -> Self {
        FleetSettings {
            node_ttl_secs: wharf_fleet_proto::DEFAULT_NODE_TTL_SECS,
        }
    }
}

impl Default for GcSettings {
    fn default() -> Self {
        GcSettings {
            interval_secs: 24 * 3600,
            grace_secs: 3600,
            untagged: UntaggedPolicy::Keep,
            upload_max_age_secs: 24 * 3600,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// Require tokens on /v2/. Off in the embedded default (open on loopback).
    pub enabled: bool,
    /// The `service` of the token protocol, and the tokens' audience.
    pub service: String,
    /// The tokens' issuer.
    pub issuer: String,
    /// Token endpoint URL sent in challenges; default `http://<Host>/token`.
    pub realm: Option<String>,
    /// Lifetime of access tokens.
    pub token_ttl_secs: u64,
    /// Lifetime of the refresh tokens `docker login` keeps.
    pub refresh_ttl_secs: u64,
    /// Seconds an access token is still accepted past its expiry. Docker
    /// keeps every token for at least 60 s whatever `expires_in` says, so
    /// the default matches distribution's 60 s.
    pub leeway_secs: u64,
    /// PKCS#8 PEM P-256 key that signs tokens; default `<data_dir>/token-key.pem`,
    /// generated on first start.
    pub key_path: Option<PathBuf>,
    /// Failed logins allowed per user and per client address in a window.
    pub max_failed_logins: u32,
    pub failed_login_window_secs: u64,
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            enabled: false,
            service: "wharf-registry".into(),
            issuer: "wharf".into(),
            realm: None,
            token_ttl_secs: 300,
            refresh_ttl_secs: 30 * 24 * 3600,
            leeway_secs: 60,
            key_path: None,
            max_failed_logins: 5,
            failed_login_window_secs: 60,
        }
    }
}

#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CatalogSettings {
    /// `sqlite://PATH` (defaults to `sqlite://<data_dir>/catalog.db`) or
    /// `postgres://USER:PASSWORD@HOST:PORT/DB` (`postgresql://` too), which
    /// several replicas may share. Logged with the password masked.
    pub url: Option<String>,
}

/// Debug output (of `Settings` too) never shows the catalog's password.
impl std::fmt::Debug for CatalogSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CatalogSettings")
            .field("url", &self.url.as_deref().map(crate::catalog::redact_url))
            .finish()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSettings {
    /// `filesystem` (the default), `s3` (any S3-compatible store), `gcs`,
    /// `azure` (`bucket` names the container), or `memory` (tests; nothing
    /// persists).
    pub backend: StorageBackend,
    /// Root of the filesystem backend; defaults to `<data_dir>/blobs`.
    pub path: Option<PathBuf>,
    /// fsync blobs before they become visible (survives power loss).
    pub fsync: bool,
    /// S3, GCS: the bucket; Azure: the container (must exist). Also
    /// `AWS_BUCKET` / `GOOGLE_BUCKET` / `AZURE_CONTAINER_NAME`.
    pub bucket: Option<String>,
    /// S3: the endpoint URL, e.g. `http://minio.lan:9000`; AWS itself when
    /// unset. GCS: the API's base URL; Azure: the account's blob endpoint. Also `AWS_ENDPOINT_URL` / `AWS_ENDPOINT`.
    pub endpoint: Option<String>,
    /// S3: the region (`us-east-1` when unset). Also `AWS_REGION` /
    /// `AWS_DEFAULT_REGION`.
    pub region: Option<String>,
    /// S3: the access key id. Also `AWS_ACCESS_KEY_ID`.
    pub access_key_id: Option<String>,
    /// S3: the secret key. Also `AWS_SECRET_ACCESS_KEY`. Never logged.
    pub secret_access_key: Option<Secret>,
    /// S3: a session token for temporary credentials. Also
    /// `AWS_SESSION_TOKEN`. Never logged.
    pub session_token: Option<Secret>,
    /// S3: `https://<bucket>.<endpoint>/key` (AWS's default) instead of
    /// path style `https://<endpoint>/<bucket>/key`, which LAN stores
    /// (MinIO, Ceph RGW, Garage, moto) expect. Off by default.
    pub virtual_hosted_style: bool,
    /// S3: allow a plain-http endpoint (a store on the LAN).
    pub allow_http: bool,
    /// S3: PEM file of extra CA certificates to trust for an https endpoint
    /// (a LAN store with its own CA), on top of the system's.
    pub ca_file: Option<PathBuf>,
    /// S3: size of each part of a multipart upload, in MiB (at least 5, S3's
    /// minimum; at most 10 000 parts per object, so 5 MiB parts cap a blob
    /// at ~48 GiB). Each upload holds about 3 parts in memory.
    pub part_size_mib: u64,
    /// S3: answer blob GETs with a redirect to a presigned URL of the
    /// object, so the bytes go from the store to the client directly.
    pub redirect: bool,
    /// S3: lifetime of the presigned URLs of `redirect`.
    pub redirect_ttl_secs: u64,
}

/// A credential: deserialized like a string, shown as `***` by `Debug`, so
/// logging the settings never leaks it.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"***\"")
    }
}

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    Filesystem,
    S3,
    /// Google Cloud Storage (`GOOGLE_*` environment for credentials).
    Gcs,
    /// Azure Blob Storage (`AZURE_*` environment; `bucket` is the container).
    Azure,
    Memory,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrySettings {
    /// Manifests above this size get 413.
    pub max_manifest_bytes: u64,
    /// When false, every DELETE answers 405 UNSUPPORTED.
    pub delete_enabled: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            listen: SocketAddr::from(([127, 0, 0, 1], 5000)),
            data_dir: PathBuf::from("./wharf-data"),
            catalog: CatalogSettings::default(),
            storage: StorageSettings::default(),
            registry: RegistrySettings::default(),
            auth: AuthSettings::default(),
            tls: TlsSettings::default(),
            log: LogSettings::default(),
            metrics: MetricsSettings::default(),
            gc: GcSettings::default(),
            fleet: FleetSettings::default(),
            webhooks: Vec::new(),
        }
    }
}

impl Default for StorageSettings {
    fn default() -> Self {
        StorageSettings {
            backend: StorageBackend::Filesystem,
            path: None,
            fsync: true,
            bucket: None,
            endpoint: None,
            region: None,
            access_key_id: None,
            secret_access_key: None,
            session_token: None,
            virtual_hosted_style: false,
            allow_http: false,
            ca_file: None,
            part_size_mib: 8,
            redirect: false,
            redirect_ttl_secs: 600,
        }
    }
}

impl Default for RegistrySettings {
    fn default() -> Self {
        let d = crate::registry::Limits::default();
        RegistrySettings {
            max_manifest_bytes: d.max_manifest_bytes,
            delete_enabled: d.delete_enabled,
        }
    }
}

/// Every key, as `section.key`; `WHARF_SECTION_KEY` sets it from the
/// environment. Unknown `WHARF_*` variables are ignored (they may belong to
/// other tools); unknown keys in the file are an error.
const KEYS: &[&str] = &[
    "listen",
    "data_dir",
    "catalog.url",
    "storage.backend",
    "storage.path",
    "storage.fsync",
    "storage.bucket",
    "storage.endpoint",
    "storage.region",
    "storage.access_key_id",
    "storage.secret_access_key",
    "storage.session_token",
    "storage.virtual_hosted_style",
    "storage.allow_http",
    "storage.ca_file",
    "storage.part_size_mib",
    "storage.redirect",
    "storage.redirect_ttl_secs",
    "registry.max_manifest_bytes",
    "registry.delete_enabled",
    "auth.enabled",
    "auth.service",
    "auth.issuer",
    "auth.realm",
    "auth.token_ttl_secs",
    "auth.refresh_ttl_secs",
    "auth.leeway_secs",
    "auth.key_path",
    "auth.max_failed_logins",
    "auth.failed_login_window_secs",
    "tls.cert",
    "tls.key",
    "tls.self_signed",
    "log.format",
    "log.access",
    "metrics.catalog_refresh_secs",
    "gc.interval_secs",
    "gc.grace_secs",
    "gc.untagged",
    "gc.upload_max_age_secs",
    "fleet.node_ttl_secs",
];

impl Settings {
    /// Settings for tests and embedding: the defaults, under `data_dir`.
    pub fn with_data_dir(data_dir: impl Into<PathBuf>) -> Settings {
        Settings {
            data_dir: data_dir.into(),
            ..Settings::default()
        }
    }

    /// Merges the config file (if any), the environment and `overrides`
    /// (`section.key`, value; from flags) and validates the result.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &[(&str, String)],
    ) -> Result<Settings, ConfigError> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                text.parse::<toml::Table>()
                    .map_err(|e| ConfigError::Invalid(format!("{}: {e}", path.display())))?
            }
            None => toml::Table::new(),
        };
        for (name, value) in env {
            let Some(rest) = name.strip_prefix("WHARF_") else {
                continue;
            };
            let wanted = rest.to_ascii_lowercase();
            if let Some(key) = KEYS.iter().find(|k| k.replace('.', "_") == wanted) {
                set(&mut table, key, &value);
            }
        }
        for (key, value) in overrides {
            set(&mut table, key, value);
        }
        let settings = table
            .try_into::<Settings>()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let s = &self.storage;
        let multipart = matches!(
            s.backend,
            StorageBackend::S3 | StorageBackend::Gcs | StorageBackend::Azure
        );
        if multipart && s.part_size_mib < 5 {
            return Err(ConfigError::Invalid(format!(
                "storage.part_size_mib = {} is below the minimum part size of 5 MiB (S3, GCS)",
                s.part_size_mib
            )));
        }
        if self.fleet.node_ttl_secs == 0 || self.fleet.node_ttl_secs > 24 * 3600 {
            return Err(ConfigError::Invalid(format!(
                "fleet.node_ttl_secs = {} must be 1 to 86400",
                self.fleet.node_ttl_secs
            )));
        }
        if s.redirect && s.backend != StorageBackend::S3 {
            return Err(ConfigError::Invalid(
                "storage.redirect needs backend = \"s3\" (only S3 presigns URLs)".into(),
            ));
        }
        Ok(())
    }

    pub fn catalog_url(&self) -> String {
        self.catalog
            .url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("catalog.db").display()))
    }

    pub fn storage_path(&self) -> PathBuf {
        self.storage
            .path
            .clone()
            .unwrap_or_else(|| crate::store::default_local_root(&self.data_dir))
    }

    pub fn auth_config(&self) -> crate::auth::AuthConfig {
        let a = &self.auth;
        crate::auth::AuthConfig {
            issuer: a.issuer.clone(),
            service: a.service.clone(),
            realm: a.realm.clone().filter(|r| !r.is_empty()),
            https: self.tls.self_signed || self.tls.cert.is_some(),
            token_ttl_secs: a.token_ttl_secs.max(1),
            refresh_ttl_secs: a.refresh_ttl_secs.max(1),
            leeway_secs: a.leeway_secs,
            key_path: a
                .key_path
                .clone()
                .unwrap_or_else(|| self.data_dir.join("token-key.pem")),
            max_failures: a.max_failed_logins,
            failure_window_secs: a.failed_login_window_secs,
        }
    }

    pub fn gc_options(&self) -> crate::gc::GcOptions {
        use std::time::Duration;
        crate::gc::GcOptions {
            grace: Duration::from_secs(self.gc.grace_secs),
            untagged: self.gc.untagged,
            upload_max_age: Duration::from_secs(self.gc.upload_max_age_secs),
            dry_run: false,
        }
    }

    pub fn limits(&self) -> crate::registry::Limits {
        crate::registry::Limits {
            max_manifest_bytes: self.registry.max_manifest_bytes,
            delete_enabled: self.registry.delete_enabled,
        }
    }
}

/// Keys that are always strings, even when the value looks like a number
/// (a MinIO access key may be all digits).
const STRING_KEYS: &[&str] = &[
    "storage.bucket",
    "storage.endpoint",
    "storage.region",
    "storage.access_key_id",
    "storage.secret_access_key",
    "storage.session_token",
];

/// Sets `section.key` in the table; a value that parses as a TOML scalar
/// (bool, integer) is taken as one, anything else as a string.
fn set(table: &mut toml::Table, key: &str, raw: &str) {
    let value = Some(raw)
        .filter(|_| !STRING_KEYS.contains(&key))
        .map(|raw| format!("v = {raw}"))
        .unwrap_or_default()
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .filter(|v| v.is_bool() || v.is_integer())
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()));
    match key.split_once('.') {
        Some((section, k)) => {
            let entry = table
                .entry(section)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if let Some(t) = entry.as_table_mut() {
                t.insert(k.to_owned(), value);
            }
        }
        None => {
            table.insert(key.to_owned(), value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_env_and_flags_layer_in_order() {
        let s = Settings::load(None, Vec::new(), &[]).unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:5000");
        assert!(s.registry.delete_enabled);
        let env = vec![
            ("WHARF_LISTEN".to_string(), "0.0.0.0:6000".to_string()),
            (
                "WHARF_REGISTRY_DELETE_ENABLED".to_string(),
                "false".to_string(),
            ),
            ("WHARF_SERVER_BIN".to_string(), "/ignored".to_string()),
        ];
        let s = Settings::load(None, env, &[("listen", "127.0.0.1:7000".into())]).unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:7000");
        assert!(!s.registry.delete_enabled);
    }

    #[test]
    fn s3_example_parses_and_secrets_stay_out_of_debug() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/server-scaled.toml");
        let s = Settings::load(Some(&example), Vec::new(), &[]).unwrap();
        assert_eq!(s.storage.backend, StorageBackend::S3);
        assert!(s.catalog_url().starts_with("postgres://"));
        assert_eq!(s.storage.bucket.as_deref(), Some("wharf"));
        assert!(!s.storage.virtual_hosted_style);
        let env = vec![
            (
                "WHARF_STORAGE_SECRET_ACCESS_KEY".to_string(),
                "hunter2-very-secret".to_string(),
            ),
            ("WHARF_STORAGE_ALLOW_HTTP".to_string(), "true".to_string()),
            (
                "WHARF_STORAGE_ACCESS_KEY_ID".to_string(),
                "12345678".to_string(),
            ),
        ];
        let s = Settings::load(Some(&example), env, &[]).unwrap();
        assert_eq!(
            s.storage.secret_access_key.as_ref().map(Secret::expose),
            Some("hunter2-very-secret")
        );
        assert!(s.storage.allow_http);
        assert_eq!(s.storage.access_key_id.as_deref(), Some("12345678"));
        let shown = format!("{s:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn s3_settings_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let small = dir.path().join("small.toml");
        std::fs::write(&small, "[storage]\nbackend = \"s3\"\npart_size_mib = 4\n").unwrap();
        let err = Settings::load(Some(&small), Vec::new(), &[]).unwrap_err();
        assert!(err.to_string().contains("5 MiB"), "{err}");
        let redirect = dir.path().join("redirect.toml");
        std::fs::write(&redirect, "[storage]\nredirect = true\n").unwrap();
        let err = Settings::load(Some(&redirect), Vec::new(), &[]).unwrap_err();
        assert!(err.to_string().contains("s3"), "{err}");
    }

    #[test]
    fn example_config_parses_and_bad_keys_fail() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/server.toml");
        Settings::load(Some(&example), Vec::new(), &[]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "[storage]\nbakend = \"s3\"\n").unwrap();
        let err = Settings::load(Some(&bad), Vec::new(), &[]).unwrap_err();
        assert!(err.to_string().contains("bakend"), "{err}");
    }
}
