//! The fleet node agent (issue #7): joining a wharf-server's control plane
//! (`daemon --join URL --token T`) and, once joined, running what it
//! assigns to this node. The wire is `wharf_fleet_proto`'s contract.
//!
//! - `node`: `<root>/node.json` (0600, atomic), node names, `--label`.
//! - `facts`: what the node says about itself (addresses, arch, memory...).
//! - `client`: the HTTP(S) client for the control plane (system roots plus
//!   the runner's per-registry CA dirs) and the join call.
//! - `store`: the desired replicas in the runner's own catalog.
//! - `reconcile`: the decisions as pure functions.
//! - `agent`: the long-lived parts: the NDJSON channel with reconnects,
//!   heartbeats, reconciliation and reports, log streaming.
//!
//! Calls the daemon's services `containers` (create, start, remove, logs,
//! observe) and `images` (pull, with the node credential added to it in
//! memory only); called by `daemon::run`.

pub mod agent;
pub mod client;
pub mod facts;
pub mod node;
pub mod reconcile;
pub mod store;

use std::path::Path;

use node::NodeFile;

/// `daemon --join URL --token T [--node-name N] [--label k=v]...`.
#[derive(Debug, Clone, Default)]
pub struct JoinOptions {
    pub url: Option<String>,
    pub token: Option<String>,
    pub node_name: Option<String>,
    pub labels: Vec<String>,
}

impl JoinOptions {
    pub fn wanted(&self) -> bool {
        self.url.is_some() || self.token.is_some()
    }
}

/// The agent's one error type (messages are one line, for the daemon's
/// exit message or a log line; they never carry the token or secret).
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// A flag or the combination of flags is wrong.
    #[error("{0}")]
    Usage(String),
    /// `node.json` cannot be read or written.
    #[error("{0}")]
    NodeFile(String),
    /// The join was refused (the server's answer, one line).
    #[error("joining {server}: {message}")]
    Join { server: String, message: String },
    /// The server could not be reached or answered badly.
    #[error("{0}")]
    Http(String),
    #[error("{0}")]
    Daemon(#[from] crate::daemon::Error),
}

impl From<FleetError> for crate::daemon::Error {
    fn from(e: FleetError) -> crate::daemon::Error {
        match e {
            FleetError::Usage(m) => crate::daemon::Error::BadRequest(m),
            FleetError::Daemon(d) => d,
            other => crate::daemon::Error::Internal(other.to_string()),
        }
    }
}

/// At daemon start: the node's identity, joining first when asked to and
/// not joined yet. `None`: not part of a fleet. A node that joined before
/// starts from `node.json` (no token needed); a `--join` naming another
/// server is refused.
pub async fn prepare(root: &Path, opts: &JoinOptions) -> Result<Option<NodeFile>, FleetError> {
    let labels = node::parse_labels(&opts.labels)?;
    if let Some(name) = &opts.node_name {
        node::check_name(name)?;
    }
    let url = opts.url.as_deref().map(node::normalize_url).transpose()?;
    if let Some(mut existing) = node::load(root)? {
        if let Some(url) = &url
            && *url != existing.server
        {
            return Err(FleetError::Usage(format!(
                "this node already joined {} as {}; --join {url} names another server (remove {} to join anew)",
                existing.server,
                existing.name,
                node::path(root).display()
            )));
        }
        if let Some(name) = &opts.node_name
            && *name != existing.name
        {
            return Err(FleetError::Usage(format!(
                "this node joined {} as {}, not {name}",
                existing.server, existing.name
            )));
        }
        if !opts.labels.is_empty() && labels != existing.labels {
            existing.labels = labels;
            node::store(root, &existing)?;
        }
        if opts.token.is_some() {
            tracing::info!(server = %existing.server, node = %existing.name, "already joined; --token is not needed");
        }
        return Ok(Some(existing));
    }
    let Some(url) = url else {
        if opts.token.is_some() {
            return Err(FleetError::Usage("--token needs --join URL".into()));
        }
        return Ok(None);
    };
    let Some(token) = opts.token.as_deref().filter(|t| !t.is_empty()) else {
        return Err(FleetError::Usage(format!(
            "--join {url} needs --token (a join token from `wharf-server node token create`)"
        )));
    };
    let name = match &opts.node_name {
        Some(n) => n.clone(),
        None => node::default_name()?,
    };
    let facts = facts::gather(root, &labels);
    let http = client::Http::new(&url, root, None)?;
    let joined = http.join(token, &name, facts).await?;
    let node = NodeFile {
        server: url,
        name: joined.name,
        secret: joined.secret,
        registry: joined.registry,
        heartbeat_secs: joined.heartbeat_secs,
        labels,
    };
    node::store(root, &node)?;
    tracing::info!(server = %node.server, node = %node.name, registry = %node.registry, "joined the fleet");
    Ok(Some(node))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn joined() -> NodeFile {
        NodeFile {
            server: "http://10.0.0.1:5000".into(),
            name: "n1".into(),
            secret: "s".into(),
            registry: "10.0.0.1:5000".into(),
            heartbeat_secs: 5,
            labels: Default::default(),
        }
    }

    fn opts(url: Option<&str>, token: Option<&str>) -> JoinOptions {
        JoinOptions {
            url: url.map(str::to_string),
            token: token.map(str::to_string),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn without_join_flags_or_node_file_there_is_no_fleet() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            prepare(dir.path(), &opts(None, None))
                .await
                .unwrap()
                .is_none()
        );
        let e = prepare(dir.path(), &opts(None, Some("t")))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("--join"), "{e}");
        let e = prepare(dir.path(), &opts(Some("http://10.0.0.1:5000"), None))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("--token"), "{e}");
        assert!(!node::path(dir.path()).exists());
    }

    #[tokio::test]
    async fn a_joined_node_starts_from_its_file_and_refuses_another_server() {
        let dir = tempfile::tempdir().unwrap();
        node::store(dir.path(), &joined()).unwrap();
        // No token needed; the same URL (any spelling) is fine.
        assert_eq!(
            prepare(dir.path(), &opts(None, None)).await.unwrap(),
            Some(joined())
        );
        let same = prepare(
            dir.path(),
            &opts(Some("http://10.0.0.1:5000/"), Some("old")),
        )
        .await
        .unwrap();
        assert_eq!(same, Some(joined()));
        let e = prepare(dir.path(), &opts(Some("http://10.0.0.2:5000"), Some("t")))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("already joined http://10.0.0.1:5000 as n1"),
            "{e}"
        );
        let mut other_name = opts(None, None);
        other_name.node_name = Some("n2".into());
        assert!(prepare(dir.path(), &other_name).await.is_err());
        // New labels are kept for the heartbeats.
        let mut labelled = opts(None, None);
        labelled.labels = vec!["zone=b".into()];
        let n = prepare(dir.path(), &labelled).await.unwrap().unwrap();
        assert_eq!(n.labels["zone"], "b");
        assert_eq!(node::load(dir.path()).unwrap().unwrap().labels["zone"], "b");
    }

    #[tokio::test]
    async fn an_unreachable_server_is_a_join_error_and_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        // A port nothing listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut o = opts(Some(&format!("http://127.0.0.1:{port}")), Some("t"));
        o.node_name = Some("n1".into());
        let e = prepare(dir.path(), &o).await.unwrap_err().to_string();
        assert!(e.contains("cannot reach the server"), "{e}");
        assert!(!node::path(dir.path()).exists());
    }
}
