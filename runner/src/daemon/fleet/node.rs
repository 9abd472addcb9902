//! `<root>/node.json`: what joining a fleet gave this node (the server's
//! URL, its name, its credential, the registry it pulls from), written once
//! at join time with mode 0600 through a temp file and a rename, so a crash
//! leaves either no file or a whole one. Also the rules for node names and
//! `--label` values. A leaf: only std and serde.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::FleetError;

/// The file's name in the state dir.
pub const NODE_FILE: &str = "node.json";
/// Bounds on `--label`.
pub const MAX_LABELS: usize = 64;
const MAX_LABEL_KEY: usize = 63;
const MAX_LABEL_VALUE: usize = 253;
/// node.json is small; anything bigger is not ours.
const MAX_FILE: u64 = 64 * 1024;

#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeFile {
    /// The control plane's base URL (`http(s)://host:port`), normalized.
    pub server: String,
    pub name: String,
    /// The node credential (`JoinResponse::secret`).
    pub secret: String,
    /// The registry (`host:port`) images are pulled from.
    pub registry: String,
    pub heartbeat_secs: u64,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl std::fmt::Debug for NodeFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeFile")
            .field("server", &self.server)
            .field("name", &self.name)
            .field("secret", &"<redacted>")
            .field("registry", &self.registry)
            .field("heartbeat_secs", &self.heartbeat_secs)
            .field("labels", &self.labels)
            .finish()
    }
}

pub fn path(root: &Path) -> PathBuf {
    root.join(NODE_FILE)
}

/// Reads `<root>/node.json`; `None` when this node never joined.
pub fn load(root: &Path) -> Result<Option<NodeFile>, FleetError> {
    let p = path(root);
    let bad = |detail: String| FleetError::NodeFile(format!("{}: {detail}", p.display()));
    let meta = match std::fs::metadata(&p) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(bad(e.to_string())),
    };
    if meta.len() > MAX_FILE {
        return Err(bad("too big to be a node file".into()));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        // It holds a credential: never leave it readable by others.
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| bad(e.to_string()))?;
    }
    let bytes = std::fs::read(&p).map_err(|e| bad(e.to_string()))?;
    let node: NodeFile = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    check_name(&node.name).map_err(|e| bad(e.to_string()))?;
    if node.secret.is_empty() || node.registry.is_empty() {
        return Err(bad("no credential or registry in it".into()));
    }
    Ok(Some(node))
}

/// Writes `<root>/node.json` with mode 0600: a temp file made 0600 from
/// the start, synced, renamed over, and the directory synced.
pub fn store(root: &Path, node: &NodeFile) -> Result<(), FleetError> {
    let p = path(root);
    let tmp = root.join(format!("{NODE_FILE}.tmp"));
    let fail = |e: std::io::Error| FleetError::NodeFile(format!("writing {}: {e}", p.display()));
    let body = serde_json::to_vec_pretty(node).map_err(|e| fail(std::io::Error::other(e)))?;
    let _ = std::fs::remove_file(&tmp);
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&body)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &p)?;
        std::fs::File::open(root)?.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(fail(e));
    }
    Ok(())
}

/// Hostname rules, as the server checks them: `[a-z0-9][a-z0-9-]{0,62}`.
pub fn check_name(name: &str) -> Result<(), FleetError> {
    let b = name.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-');
    if ok {
        Ok(())
    } else {
        Err(FleetError::Usage(format!(
            "invalid node name {name:?}: lower-case letters, digits and '-', starting with a letter or digit, at most 63"
        )))
    }
}

/// The default node name: the hostname's first label, lower-cased.
pub fn default_name() -> Result<String, FleetError> {
    let host = nix::unistd::gethostname().map_err(|e| {
        FleetError::Usage(format!("cannot read the hostname ({e}): use --node-name"))
    })?;
    let host = host.to_string_lossy().to_ascii_lowercase();
    let first = host.split('.').next().unwrap_or_default().to_string();
    check_name(&first).map_err(|_| {
        FleetError::Usage(format!(
            "the hostname {host:?} is not a valid node name: use --node-name"
        ))
    })?;
    Ok(first)
}

/// `--label k=v` values into a map, bounded.
pub fn parse_labels(values: &[String]) -> Result<BTreeMap<String, String>, FleetError> {
    if values.len() > MAX_LABELS {
        return Err(FleetError::Usage(format!(
            "at most {MAX_LABELS} --label values"
        )));
    }
    let mut out = BTreeMap::new();
    for v in values {
        let Some((k, val)) = v.split_once('=') else {
            return Err(FleetError::Usage(format!(
                "invalid label {v:?}: expected KEY=VALUE"
            )));
        };
        let key_ok = !k.is_empty()
            && k.len() <= MAX_LABEL_KEY
            && k.bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"._-/".contains(&c));
        let value_ok = val.len() <= MAX_LABEL_VALUE && !val.chars().any(char::is_control);
        if !key_ok || !value_ok {
            return Err(FleetError::Usage(format!(
                "invalid label {v:?}: keys of 1 to {MAX_LABEL_KEY} letters, digits, '.', '_', '-', '/'; values of at most {MAX_LABEL_VALUE} printable bytes"
            )));
        }
        out.insert(k.to_string(), val.to_string());
    }
    Ok(out)
}

/// A `--join` URL as it is stored and compared: `scheme://host[:port]`
/// with the path's trailing `/` removed; only http and https.
pub fn normalize_url(url: &str) -> Result<String, FleetError> {
    let bad = |why: &str| FleetError::Usage(format!("invalid --join URL {url:?}: {why}"));
    let parsed = reqwest::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(bad("only http:// and https:// URLs"));
    }
    if parsed.host_str().is_none() {
        return Err(bad("no host"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(bad("no credentials in the URL; use --token"));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(bad("no query or fragment"));
    }
    let s = parsed.as_str().trim_end_matches('/').to_string();
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> NodeFile {
        NodeFile {
            server: "http://10.0.0.1:5000".into(),
            name: "n1".into(),
            secret: "s3cret".into(),
            registry: "10.0.0.1:5000".into(),
            heartbeat_secs: 5,
            labels: BTreeMap::from([("zone".into(), "a".into())]),
        }
    }

    #[test]
    fn node_file_is_0600_atomic_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().is_none());
        // A temp file left by a crash mid-write is not the node file and is
        // replaced by the next write.
        std::fs::write(dir.path().join("node.json.tmp"), "{half").unwrap();
        assert!(load(dir.path()).unwrap().is_none());
        store(dir.path(), &sample()).unwrap();
        let meta = std::fs::metadata(path(dir.path())).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert!(!dir.path().join("node.json.tmp").exists());
        assert_eq!(load(dir.path()).unwrap(), Some(sample()));
        // Rewritten whole.
        let mut other = sample();
        other.heartbeat_secs = 1;
        store(dir.path(), &other).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(other));
        // Made readable by someone: put back to 0600 when read.
        std::fs::set_permissions(path(dir.path()), std::fs::Permissions::from_mode(0o644)).unwrap();
        load(dir.path()).unwrap();
        let meta = std::fs::metadata(path(dir.path())).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn a_broken_node_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(path(dir.path()), "{not json").unwrap();
        let e = load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("node.json"), "{e}");
        let mut bad = sample();
        bad.name = "Bad_Name".into();
        std::fs::write(path(dir.path()), serde_json::to_vec(&bad).unwrap()).unwrap();
        assert!(load(dir.path()).is_err());
    }

    #[test]
    fn the_secret_is_not_in_debug_output() {
        let shown = format!("{:?}", sample());
        assert!(!shown.contains("s3cret"), "{shown}");
    }

    #[test]
    fn node_names_follow_hostname_rules() {
        for ok in ["n1", "a", "node-7", "0abc", &"a".repeat(63)] {
            check_name(ok).unwrap();
        }
        for bad in ["", "-a", "A1", "a_b", "a.b", &"a".repeat(64), "ü"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn labels_are_parsed_and_bounded() {
        let l = parse_labels(&["zone=a".into(), "gpu=".into(), "zone=b".into()]).unwrap();
        assert_eq!(l["zone"], "b");
        assert_eq!(l["gpu"], "");
        for bad in ["novalue", "=x", "k y=1", "k=\u{7}"] {
            assert!(parse_labels(&[bad.into()]).is_err(), "{bad:?}");
        }
        let many: Vec<String> = (0..=MAX_LABELS).map(|i| format!("k{i}=v")).collect();
        assert!(parse_labels(&many).is_err());
    }

    #[test]
    fn join_urls_are_normalized() {
        assert_eq!(
            normalize_url("http://10.0.0.1:5000/").unwrap(),
            "http://10.0.0.1:5000"
        );
        assert_eq!(
            normalize_url("https://Server.LAN:5000").unwrap(),
            "https://server.lan:5000"
        );
        for bad in ["ftp://x", "not a url", "http://u:p@x:1", "http://x/?a=1"] {
            assert!(normalize_url(bad).is_err(), "{bad:?}");
        }
    }
}
