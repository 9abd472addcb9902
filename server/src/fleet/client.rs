//! The admin side of the fleet as the `wharf-server node|deploy|deployments`
//! commands use it: an HTTP client of the running server's fleet API, the
//! parsing of the commands' values (`1h`, `512m`, `1.5`, `k=v`) and the
//! tables they print. `main.rs` only maps arguments onto these.
//!
//! How the CLI is let in: it runs with the server's config and data dir
//! (like `gc`), so with auth on it signs itself a short-lived access token
//! (the server's `auth.token_ttl_secs`) for the first admin user with the
//! server's own key (`auth.key_path`); no password is typed or stored. With
//! auth off the API is open. The server's URL is `--server` /
//! `WHARF_SERVER_URL`, else derived from `listen` (an unspecified address
//! becomes loopback) and TLS (`https` when TLS is on; a self-signed CA in
//! `<data_dir>/tls/ca.crt` is trusted).
//!
//! Calls the catalog and `auth` (to sign the token) and reqwest; never the
//! fleet service itself.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use wharf_fleet_proto::{
    DeploymentInfo, DeploymentSpec, LogLine, NodeInfo, TokenRequest, TokenResponse,
};

use crate::Settings;
use crate::auth::{Auth, Principal};
use crate::catalog::Catalog;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// What the server said (its error message), or a usage error.
    #[error("{0}")]
    Message(String),
    #[error("cannot reach the server at {url}: {error}")]
    Connect { url: String, error: String },
    #[error(transparent)]
    Catalog(#[from] crate::catalog::CatalogError),
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

fn usage(msg: impl Into<String>) -> ClientError {
    ClientError::Message(msg.into())
}

/// The server's URL as this config describes it.
pub fn default_url(settings: &Settings) -> String {
    let tls = settings.tls.self_signed || settings.tls.cert.is_some();
    let addr = settings.listen;
    let ip = match addr.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::from([127, 0, 0, 1]),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let host = match ip {
        IpAddr::V6(v6) => format!("[{v6}]"),
        IpAddr::V4(v4) => v4.to_string(),
    };
    format!(
        "{}://{host}:{}",
        if tls { "https" } else { "http" },
        addr.port()
    )
}

pub struct Client {
    http: reqwest::Client,
    base: String,
    authorization: Option<String>,
}

impl Client {
    /// A client of the server `url` (None: [`default_url`]) that
    /// authenticates as described in the module doc.
    pub async fn for_settings(settings: &Settings, url: Option<String>) -> Result<Client> {
        crate::store::install_tls_provider();
        let base = url
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| default_url(settings))
            .trim_end_matches('/')
            .to_owned();
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10));
        let ca = settings.data_dir.join("tls").join("ca.crt");
        if settings.tls.self_signed
            && let Ok(pem) = std::fs::read(&ca)
        {
            let cert = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| usage(format!("{}: {e}", ca.display())))?;
            builder = builder.add_root_certificate(cert);
        }
        let http = builder
            .build()
            .map_err(|e| usage(format!("HTTP client: {e}")))?;
        let authorization = if settings.auth.enabled {
            std::fs::create_dir_all(&settings.data_dir).ok();
            let catalog = Catalog::open(&settings.catalog_url()).await?;
            let admin = catalog
                .users()
                .await?
                .into_iter()
                .find(|u| u.is_admin)
                .ok_or_else(|| {
                    usage("no admin user in the catalog: start the server once first")
                })?;
            let auth = Auth::new(catalog, settings.auth_config())?;
            let token = auth.issue(&Principal::User(admin), &[]).await?;
            Some(format!("Bearer {}", token.token))
        } else {
            None
        };
        Ok(Client {
            http,
            base,
            authorization,
        })
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let rb = self.http.request(method, format!("{}{path}", self.base));
        match &self.authorization {
            Some(a) => rb.header(reqwest::header::AUTHORIZATION, a),
            None => rb,
        }
    }

    async fn send(&self, rb: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let resp = rb.send().await.map_err(|e| ClientError::Connect {
            url: self.base.clone(),
            error: e.without_url().to_string(),
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let body = resp.bytes().await.unwrap_or_default();
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["errors"][0]["message"].as_str().map(str::to_owned))
            .unwrap_or_else(|| match status {
                StatusCode::NOT_FOUND => {
                    "the server has no fleet API here (is --server right?)".to_owned()
                }
                s => format!("the server answered {s}"),
            });
        Err(ClientError::Message(message))
    }

    async fn json<T: DeserializeOwned>(&self, rb: reqwest::RequestBuilder) -> Result<T> {
        self.send(rb)
            .await?
            .json()
            .await
            .map_err(|e| usage(format!("unreadable answer from the server: {e}")))
    }

    pub async fn create_token(&self, req: &TokenRequest) -> Result<TokenResponse> {
        self.json(self.request(Method::POST, "/api/v1/nodes/tokens").json(req))
            .await
    }

    pub async fn nodes(&self) -> Result<Vec<NodeInfo>> {
        self.json(self.request(Method::GET, "/api/v1/nodes")).await
    }

    pub async fn remove_node(&self, name: &str) -> Result<()> {
        self.send(self.request(
            Method::DELETE,
            &format!("/api/v1/nodes/{}", path_part(name)?),
        ))
        .await?;
        Ok(())
    }

    pub async fn deploy(&self, spec: &DeploymentSpec) -> Result<DeploymentInfo> {
        self.json(self.request(Method::POST, "/api/v1/deployments").json(spec))
            .await
    }

    pub async fn deployments(&self) -> Result<Vec<DeploymentInfo>> {
        self.json(self.request(Method::GET, "/api/v1/deployments"))
            .await
    }

    pub async fn deployment(&self, name: &str) -> Result<DeploymentInfo> {
        self.json(self.request(
            Method::GET,
            &format!("/api/v1/deployments/{}", path_part(name)?),
        ))
        .await
    }

    pub async fn remove_deployment(&self, name: &str) -> Result<()> {
        self.send(self.request(
            Method::DELETE,
            &format!("/api/v1/deployments/{}", path_part(name)?),
        ))
        .await?;
        Ok(())
    }

    /// Streams a deployment's logs to `out`, one line each:
    /// `REPLICA STREAM| LINE` (stderr lines marked).
    pub async fn logs(
        &self,
        name: &str,
        follow: bool,
        tail: Option<u64>,
        out: &mut (dyn std::io::Write + Send),
    ) -> Result<()> {
        let mut path = format!(
            "/api/v1/deployments/{}/logs?follow={}",
            path_part(name)?,
            u8::from(follow)
        );
        if let Some(t) = tail {
            path.push_str(&format!("&tail={t}"));
        }
        let resp = self.send(self.request(Method::GET, &path)).await?;
        let mut body = resp.bytes_stream();
        let mut buf: Vec<u8> = Vec::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| usage(format!("log stream ended: {e}")))?;
            buf.extend_from_slice(&chunk);
            while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buf.drain(..=pos).collect();
                if let Ok(l) = serde_json::from_slice::<LogLine>(&line[..pos]) {
                    let _ = writeln!(out, "{}", log_text(&l));
                }
            }
            let _ = out.flush();
        }
        Ok(())
    }
}

/// Names are checked by the server; here only that they fit a path.
fn path_part(name: &str) -> Result<&str> {
    if name.is_empty()
        || name.len() > 63
        || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(usage(format!("invalid name {name:?}")));
    }
    Ok(name)
}

pub fn log_text(l: &LogLine) -> String {
    if l.stream == "stderr" {
        format!("{} err| {}", l.replica, l.line)
    } else {
        format!("{} | {}", l.replica, l.line)
    }
}

// ---- values of the commands -------------------------------------------------------------

/// `90`, `30s`, `10m`, `1h`, `7d` -> seconds.
pub fn parse_duration(s: &str) -> Result<u64> {
    let bad = || usage(format!("invalid duration {s:?} (like 30s, 10m, 1h, 7d)"));
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    let mul = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(bad()),
    };
    n.checked_mul(mul).filter(|&v| v > 0).ok_or_else(bad)
}

/// docker's `-m`: `512m`, `1g`, `64k`, `1048576` (bytes; `b` allowed).
pub fn parse_size(s: &str) -> Result<i64> {
    let bad = || usage(format!("invalid memory size {s:?} (like 512m or 1g)"));
    let lower = s.to_ascii_lowercase();
    let t = lower.strip_suffix('b').unwrap_or(&lower);
    let (num, mul) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1i64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    let n: f64 = num.parse().map_err(|_| bad())?;
    let v = n * mul as f64;
    if !(v.is_finite() && v >= 1.0 && v < i64::MAX as f64) {
        return Err(bad());
    }
    Ok(v as i64)
}

/// `--cpus 1.5` -> nano CPUs.
pub fn parse_cpus(s: &str) -> Result<i64> {
    let n: f64 = s
        .parse()
        .map_err(|_| usage(format!("invalid --cpus {s:?}")))?;
    if !(n.is_finite() && n > 0.0 && n <= 1024.0) {
        return Err(usage(format!("invalid --cpus {s:?}")));
    }
    Ok((n * 1e9) as i64)
}

/// `k=v` pairs (`--selector`).
pub fn parse_labels(pairs: &[String]) -> Result<BTreeMap<String, String>> {
    pairs
        .iter()
        .map(|p| match p.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
            _ => Err(usage(format!("invalid selector {p:?} (use key=value)"))),
        })
        .collect()
}

// ---- output -------------------------------------------------------------------------

fn table(rows: Vec<Vec<String>>) -> String {
    let cols = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..cols)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, v)| {
                if i + 1 == cols {
                    v.clone()
                } else {
                    format!("{v:<w$}", w = widths[i])
                }
            })
            .collect();
        out.push_str(line.join("   ").trim_end());
        out.push('\n');
    }
    out
}

fn mib(bytes: u64) -> String {
    format!("{} MiB", bytes >> 20)
}

pub fn nodes_table(nodes: &[NodeInfo]) -> String {
    let mut rows = vec![
        [
            "NAME",
            "STATUS",
            "ADDRESSES",
            "CPUS",
            "MEMORY",
            "FREE",
            "CONTAINERS",
            "REPLICAS",
            "LABELS",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for n in nodes {
        rows.push(vec![
            n.name.clone(),
            n.status.as_str().into(),
            n.facts.addresses.join(","),
            n.facts.cpus.to_string(),
            mib(n.facts.memory_bytes),
            mib(n.free_memory_bytes),
            n.running_containers.to_string(),
            n.replicas.len().to_string(),
            crate::fleet::place::selector_text(&n.facts.labels),
        ]);
    }
    table(rows)
}

pub fn deployments_table(deployments: &[DeploymentInfo]) -> String {
    let mut rows = vec![
        ["NAME", "IMAGE", "STATUS", "READY", "NODES"]
            .map(String::from)
            .to_vec(),
    ];
    for d in deployments {
        let running = d
            .replicas
            .iter()
            .filter(|r| r.state == wharf_fleet_proto::ReplicaState::Running)
            .count();
        let mut nodes: Vec<&str> = d
            .replicas
            .iter()
            .filter_map(|r| r.node.as_deref())
            .collect();
        nodes.sort_unstable();
        nodes.dedup();
        rows.push(vec![
            d.name.clone(),
            d.spec.image.clone(),
            d.status.clone(),
            format!("{running}/{}", d.replicas.len()),
            nodes.join(","),
        ]);
    }
    table(rows)
}

/// What `deploy` prints: the status, then each replica and where it went
/// (or why it waits).
pub fn deployment_summary(d: &DeploymentInfo) -> String {
    let mut out = format!("deployment {}: {}\n", d.name, d.status);
    for r in &d.replicas {
        let state = serde_json::to_value(r.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let line = match (&r.node, &r.reason) {
            (Some(n), _) => format!("  {} on {n}: {state}", r.id),
            (None, Some(why)) => format!("  {}: {state}: {why}", r.id),
            (None, None) => format!("  {}: {state}", r.id),
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values() {
        assert_eq!(parse_duration("1h").unwrap(), 3600);
        assert_eq!(parse_duration("90").unwrap(), 90);
        assert_eq!(parse_duration("2d").unwrap(), 172800);
        assert!(parse_duration("1y").is_err());
        assert!(parse_duration("0").is_err());
        assert_eq!(parse_size("512m").unwrap(), 512 << 20);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("lots").is_err());
        assert_eq!(parse_cpus("1.5").unwrap(), 1_500_000_000);
        assert!(parse_cpus("-1").is_err());
        assert_eq!(parse_labels(&["zone=b".into()]).unwrap()["zone"], "b");
        assert!(parse_labels(&["zone".into()]).is_err());
    }

    #[test]
    fn urls_from_the_config() {
        let mut s = Settings {
            listen: "0.0.0.0:5000".parse().unwrap(),
            ..Default::default()
        };
        assert_eq!(default_url(&s), "http://127.0.0.1:5000");
        s.tls.self_signed = true;
        s.listen = "10.1.2.3:443".parse().unwrap();
        assert_eq!(default_url(&s), "https://10.1.2.3:443");
    }
}
