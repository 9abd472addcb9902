//! Registry credentials kept by `login`: `<root>/auth.json` in docker's
//! `config.json` shape (`{"auths": {"host:port": {"auth":
//! base64("user:pass")}}}`), mode 0600 from the moment it is created,
//! replaced atomically on every change.
//!
//! Called by `images` (login, logout, and the client config of each pull);
//! calls std fs only. Passwords never appear in logs or errors: errors name
//! the file and the registry, nothing else.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::image::client::Credentials;
use crate::image::reference::{DOCKER_HUB, Reference};

/// auth.json is small; a bigger file is refused rather than read.
const MAX_FILE: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: {detail}", path.display())]
    Bad { path: PathBuf, detail: String },
    #[error("invalid registry address {0:?}")]
    BadRegistry(String),
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct File {
    #[serde(default)]
    auths: BTreeMap<String, Entry>,
}

#[derive(Default, Serialize, Deserialize)]
struct Entry {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    auth: String,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Entry(<redacted>)")
    }
}

/// The credentials file: loaded once, rewritten on each change. Not
/// synchronised: the owner (`Images`) holds it behind a mutex.
#[derive(Debug)]
pub struct CredentialStore {
    path: PathBuf,
    auths: BTreeMap<String, Credentials>,
}

/// The registry as keys and references write it: `https://` and paths
/// stripped, docker.io's aliases (`index.docker.io`, docker's
/// `https://index.docker.io/v1/` key) folded into `docker.io`; otherwise
/// kept as written, as references keep it.
pub fn normalize_registry(registry: &str) -> Result<String, CredentialsError> {
    let bad = || CredentialsError::BadRegistry(registry.to_string());
    let r = registry.trim();
    let r = r
        .strip_prefix("https://")
        .or_else(|| r.strip_prefix("http://"))
        .unwrap_or(r);
    let r = r.split('/').next().unwrap_or("");
    if r.is_empty() {
        return Err(bad());
    }
    let r = r.to_string();
    if matches!(
        r.to_ascii_lowercase().as_str(),
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com"
    ) {
        return Ok(DOCKER_HUB.to_string());
    }
    // The reference grammar validates host and port.
    let probe = Reference::parse_with_default(&format!("{r}/x"), &r).map_err(|_| bad())?;
    if probe.registry() != r {
        return Err(bad());
    }
    Ok(r)
}

impl CredentialStore {
    /// Loads `path` (a missing file is an empty store). Entries whose key or
    /// value cannot be understood are skipped with a warning naming the key.
    pub fn load(path: impl Into<PathBuf>) -> Result<Self, CredentialsError> {
        let path = path.into();
        let io_err = |op, source| CredentialsError::Io {
            op,
            path: path.clone(),
            source,
        };
        let mut auths = BTreeMap::new();
        let bytes = match fs::metadata(&path) {
            Ok(m) if m.len() > MAX_FILE => {
                return Err(CredentialsError::Bad {
                    path,
                    detail: format!("larger than {MAX_FILE} bytes"),
                });
            }
            Ok(_) => fs::read(&path).map_err(|e| io_err("read", e))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(Self { path, auths });
            }
            Err(e) => return Err(io_err("read", e)),
        };
        let file: File = serde_json::from_slice(&bytes).map_err(|e| CredentialsError::Bad {
            path: path.clone(),
            detail: format!("not a credentials file ({e})"),
        })?;
        for (key, entry) in file.auths {
            let Ok(registry) = normalize_registry(&key) else {
                tracing::warn!(path = %path.display(), key, "skipping credentials for an invalid registry address");
                continue;
            };
            match decode_auth(&entry.auth) {
                Some(c) => {
                    auths.insert(registry, c);
                }
                None => {
                    tracing::warn!(path = %path.display(), key, "skipping unreadable credentials");
                }
            }
        }
        Ok(Self { path, auths })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Credentials per registry (as references write it), for
    /// `ClientConfig::credentials`.
    pub fn all(&self) -> &BTreeMap<String, Credentials> {
        &self.auths
    }

    pub fn get(&self, registry: &str) -> Option<&Credentials> {
        self.auths.get(registry)
    }

    /// Sets the registry's credentials and rewrites the file. On failure the
    /// file and the in-memory state are both unchanged.
    pub fn set(&mut self, registry: &str, creds: Credentials) -> Result<(), CredentialsError> {
        let mut next = self.auths.clone();
        next.insert(registry.to_string(), creds);
        self.write(&next)?;
        self.auths = next;
        Ok(())
    }

    /// Removes the registry's credentials; false when there were none.
    pub fn remove(&mut self, registry: &str) -> Result<bool, CredentialsError> {
        if !self.auths.contains_key(registry) {
            return Ok(false);
        }
        let mut next = self.auths.clone();
        next.remove(registry);
        self.write(&next)?;
        self.auths = next;
        Ok(true)
    }

    /// Writes `auths` to a temp file created with mode 0600 beside the
    /// file, syncs it, renames it over the file and syncs the dir.
    fn write(&self, auths: &BTreeMap<String, Credentials>) -> Result<(), CredentialsError> {
        let file = File {
            auths: auths
                .iter()
                .map(|(k, c)| {
                    let raw = format!("{}:{}", c.username, c.password);
                    let auth = base64::engine::general_purpose::STANDARD.encode(raw);
                    (k.clone(), Entry { auth })
                })
                .collect(),
        };
        let mut bytes = serde_json::to_vec_pretty(&file).map_err(|e| CredentialsError::Bad {
            path: self.path.clone(),
            detail: e.to_string(),
        })?;
        bytes.push(b'\n');
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "auth.json".into());
        let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
        let io_err = |op, path: &Path| {
            let path = path.to_path_buf();
            move |source| CredentialsError::Io { op, path, source }
        };
        // A leftover of a crash: it holds credentials too, so remove it.
        let _ = fs::remove_file(&tmp);
        let result = (|| -> io::Result<()> {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()
        })();
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            return Err(io_err("write", &tmp)(e));
        }
        if let Err(e) = fs::rename(&tmp, &self.path) {
            let _ = fs::remove_file(&tmp);
            return Err(io_err("rename into", &self.path)(e));
        }
        fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("sync", &dir))?;
        Ok(())
    }
}

fn decode_auth(auth: &str) -> Option<Credentials> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(auth.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (user, pass) = text.split_once(':')?;
    Some(Credentials {
        username: user.to_string(),
        password: pass.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn creds(u: &str, p: &str) -> Credentials {
        Credentials {
            username: u.into(),
            password: p.into(),
        }
    }

    #[test]
    fn round_trip_in_docker_shape_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.json");
        let mut s = CredentialStore::load(&path).unwrap();
        assert!(s.all().is_empty());
        s.set("localhost:5000", creds("alice", "p:ss w0rd"))
            .unwrap();
        s.set("docker.io", creds("bob", "x")).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let json: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        assert_eq!(
            json["auths"]["localhost:5000"]["auth"],
            base64::engine::general_purpose::STANDARD.encode("alice:p:ss w0rd")
        );
        let again = CredentialStore::load(&path).unwrap();
        assert_eq!(
            again.get("localhost:5000"),
            Some(&creds("alice", "p:ss w0rd"))
        );
        assert_eq!(again.get("docker.io"), Some(&creds("bob", "x")));
        // No temp file left beside it.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);

        let mut s = again;
        assert!(s.remove("localhost:5000").unwrap());
        assert!(!s.remove("localhost:5000").unwrap());
        let again = CredentialStore::load(&path).unwrap();
        assert!(again.get("localhost:5000").is_none());
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn reads_docker_keys_and_skips_junk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.json");
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        fs::write(
            &path,
            serde_json::json!({"auths": {
                "https://index.docker.io/v1/": {"auth": b64("hub:pw")},
                "registry.example.com:5000": {"auth": b64("u:p")},
                "bad host!": {"auth": b64("u:p")},
                "other.example.com": {"auth": "%%%"},
            }})
            .to_string(),
        )
        .unwrap();
        let s = CredentialStore::load(&path).unwrap();
        assert_eq!(s.get("docker.io"), Some(&creds("hub", "pw")));
        assert_eq!(s.get("registry.example.com:5000"), Some(&creds("u", "p")));
        assert_eq!(s.all().len(), 2);

        fs::write(&path, b"not json").unwrap();
        let e = CredentialStore::load(&path).unwrap_err().to_string();
        assert!(e.contains("auth.json"), "{e}");
    }

    #[test]
    fn a_failed_write_changes_nothing_and_leaks_no_password() {
        let dir = tempfile::tempdir().unwrap();
        // The file's dir does not exist: the write fails.
        let path = dir.path().join("missing/auth.json");
        let mut s = CredentialStore::load(&path).unwrap();
        let e = s
            .set("localhost:5000", creds("alice", "secret-pw"))
            .unwrap_err();
        assert!(!e.to_string().contains("secret-pw"), "{e}");
        assert!(s.get("localhost:5000").is_none());
        assert!(!format!("{s:?}").contains("secret-pw"));
    }

    #[test]
    fn registries_are_normalized() {
        for (given, want) in [
            ("localhost:5000", "localhost:5000"),
            ("http://localhost:5000/", "localhost:5000"),
            ("https://index.docker.io/v1/", "docker.io"),
            ("index.docker.io", "docker.io"),
            ("docker.io", "docker.io"),
            ("Registry.Example.com", "Registry.Example.com"),
            ("[::1]:5000", "[::1]:5000"),
        ] {
            assert_eq!(normalize_registry(given).unwrap(), want, "{given}");
        }
        for bad in ["", "https://", "a b", "host:port", "-x.io"] {
            assert!(normalize_registry(bad).is_err(), "{bad:?}");
        }
    }
}
