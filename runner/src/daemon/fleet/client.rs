//! The HTTP(S) client for the control plane's endpoints (see
//! `wharf_fleet_proto`'s docs): `https` verified with the system's roots
//! plus the runner's per-registry CA dirs (`/etc/docker/certs.d/HOST:PORT/`,
//! `<root>/certs.d/HOST:PORT/`), plain `http` allowed for LANs. Node calls
//! carry `Basic NAME:SECRET`; the secret never reaches a log or an error.
//! Calls reqwest and `image::client` (CA files); called by the rest of
//! `fleet`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use wharf_fleet_proto::{JoinRequest, JoinResponse, NodeFacts};

use super::FleetError;
use super::node::{self, NodeFile};
use crate::image::client::{DOCKER_CERTS_D, install_crypto_provider, registry_cas};

/// Bounds on what the server sends back to the small calls.
const MAX_RESPONSE: usize = 64 * 1024;
const MAX_SECRET: usize = 1024;
/// The longest heartbeat period a server may ask for.
const MAX_HEARTBEAT_SECS: u64 = 300;

#[derive(Clone)]
pub struct Http {
    base: String,
    client: reqwest::Client,
    auth: Option<(String, String)>,
}

/// The CA dirs the registry client uses too.
pub fn ca_dirs(root: &Path) -> Vec<PathBuf> {
    vec![PathBuf::from(DOCKER_CERTS_D), root.join("certs.d")]
}

impl Http {
    /// A client for `base` (a normalized URL); `read_timeout` bounds each
    /// wait for bytes (none for streams that may be quiet, like log uploads).
    pub fn new(
        base: &str,
        root: &Path,
        read_timeout: Option<Duration>,
    ) -> Result<Http, FleetError> {
        install_crypto_provider();
        let url =
            reqwest::Url::parse(base).map_err(|e| FleetError::Usage(format!("{base}: {e}")))?;
        let host_port = cert_dir_name(&url);
        let mut b = reqwest::Client::builder()
            .tls_backend_rustls()
            .user_agent(format!("wharf-runner/{}", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10));
        if let Some(t) = read_timeout {
            b = b.read_timeout(t);
        }
        if url.scheme() == "https" {
            let cas = registry_cas(&ca_dirs(root), &host_port)
                .map_err(|e| FleetError::Http(e.to_string()))?;
            if !cas.is_empty() {
                b = b.tls_certs_merge(cas);
            }
        }
        let client = b
            .build()
            .map_err(|e| FleetError::Http(format!("HTTP client: {e}")))?;
        Ok(Http {
            base: base.trim_end_matches('/').to_string(),
            client,
            auth: None,
        })
    }

    /// The same client with the node credential on every call.
    pub fn for_node(
        base: &str,
        root: &Path,
        node: &NodeFile,
        read_timeout: Option<Duration>,
    ) -> Result<Http, FleetError> {
        let mut h = Http::new(base, root, read_timeout)?;
        h.auth = Some((node.name.clone(), node.secret.clone()));
        Ok(h)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A request to `path` with the node credential.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.client.request(method, self.url(path));
        match &self.auth {
            Some((name, secret)) => r.basic_auth(name, Some(secret)),
            None => r,
        }
    }

    /// POSTs `body` as JSON to a node endpoint that answers 204.
    pub async fn post_json<T: serde::Serialize>(
        &self,
        path: &str,
        body: &T,
    ) -> Result<(), PostError> {
        let resp = self
            .request(reqwest::Method::POST, path)
            .timeout(Duration::from_secs(30))
            .json(body)
            .send()
            .await
            .map_err(|e| PostError::Unreachable(error_chain(&e)))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let message = error_message(resp).await;
        if status.is_client_error() {
            Err(PostError::Refused(status.as_u16(), message))
        } else {
            Err(PostError::Unreachable(format!("{status}: {message}")))
        }
    }

    /// `POST /api/v1/nodes/join`: the token's one use.
    pub async fn join(
        &self,
        token: &str,
        name: &str,
        facts: NodeFacts,
    ) -> Result<JoinResponse, FleetError> {
        let fail = |message: String| FleetError::Join {
            server: self.base.clone(),
            message,
        };
        let req = JoinRequest {
            token: token.to_string(),
            name: name.to_string(),
            facts,
        };
        let resp = self
            .client
            .post(self.url("/api/v1/nodes/join"))
            .timeout(Duration::from_secs(30))
            .json(&req)
            .send()
            .await
            .map_err(|e| fail(unreachable(&e, &self.base)))?;
        let status = resp.status();
        if !status.is_success() {
            let detail = error_message(resp).await;
            return Err(fail(match status.as_u16() {
                401 => format!(
                    "the join token was refused (expired, already used or unknown): {detail}"
                ),
                409 => format!(
                    "the node name {name:?} is taken (choose another with --node-name): {detail}"
                ),
                400 => format!("the server refused the join request: {detail}"),
                s => format!("unexpected answer {s}: {detail}"),
            }));
        }
        let body = read_limited(resp, MAX_RESPONSE)
            .await
            .map_err(|e| fail(format!("reading the answer: {e}")))?;
        let joined: JoinResponse = serde_json::from_slice(&body)
            .map_err(|e| fail(format!("the answer is not a join response: {e}")))?;
        node::check_name(&joined.name)
            .map_err(|e| fail(format!("the server named the node badly: {e}")))?;
        if joined.secret.is_empty()
            || joined.secret.len() > MAX_SECRET
            || joined.secret.chars().any(char::is_control)
        {
            return Err(fail("the server gave no usable node credential".into()));
        }
        if !valid_registry(&joined.registry) {
            return Err(fail(format!(
                "the server named an invalid registry {:?}",
                joined.registry
            )));
        }
        let mut joined = joined;
        joined.heartbeat_secs = joined.heartbeat_secs.clamp(1, MAX_HEARTBEAT_SECS);
        Ok(joined)
    }
}

/// Why a node call failed: refused by the server (4xx; retrying the same
/// call will not help) or not answered (network, 5xx: retry later).
#[derive(Debug)]
pub enum PostError {
    Refused(u16, String),
    Unreachable(String),
}

impl std::fmt::Display for PostError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PostError::Refused(s, m) => write!(f, "refused ({s}): {m}"),
            PostError::Unreachable(m) => write!(f, "{m}"),
        }
    }
}

/// Why a call got no answer, on one line; an untrusted certificate says
/// where its CA goes.
pub fn unreachable(e: &reqwest::Error, base: &str) -> String {
    let chain = error_chain(e);
    if chain.contains("certificate") {
        let host = reqwest::Url::parse(base)
            .map(|u| cert_dir_name(&u))
            .unwrap_or_default();
        format!(
            "the server's certificate is not trusted (put its CA in /etc/docker/certs.d/{host}/ca.crt or <state dir>/certs.d/{host}/ca.crt): {chain}"
        )
    } else {
        format!("cannot reach the server: {chain}")
    }
}

/// The `certs.d` directory name of a server: `HOST:PORT`, or `HOST` for
/// the scheme's default port (docker's rule).
fn cert_dir_name(url: &reqwest::Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    }
}

/// `host[:port]` as a registry reference starts.
pub fn valid_registry(r: &str) -> bool {
    !r.is_empty()
        && r.len() <= 255
        && r.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
}

/// A reqwest error with its sources, on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let t = inner.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = inner.source();
    }
    s
}

async fn read_limited(mut resp: reqwest::Response, max: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| error_chain(&e))? {
        if out.len() + chunk.len() > max {
            return Err(format!("over {max} bytes"));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// The one line an error answer carries: `{"message"}`, the registry's
/// `{"errors":[{"message"}]}`, or its text, bounded.
async fn error_message(resp: reqwest::Response) -> String {
    let status = resp.status();
    let body = read_limited(resp, 8 * 1024).await.unwrap_or_default();
    let json: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
    let from_json = json.as_ref().and_then(|v| {
        v.get("message")
            .and_then(|m| m.as_str())
            .or_else(|| v.get("errors")?.get(0)?.get("message")?.as_str())
            .or_else(|| v.get("error").and_then(|m| m.as_str()))
            .map(str::to_string)
    });
    let text = from_json.unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_string());
    let text = super::reconcile::one_line(&text);
    if text.is_empty() {
        status.to_string()
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registries_are_host_and_port() {
        for ok in ["10.0.0.1:5000", "reg.lan", "[::1]:5000"] {
            assert!(valid_registry(ok), "{ok}");
        }
        for bad in ["", "a/b", "x y", "a@b"] {
            assert!(!valid_registry(bad), "{bad}");
        }
    }
}
