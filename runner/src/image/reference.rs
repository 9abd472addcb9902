//! Image references (`busybox`, `localhost:5000/team/app:1.0`,
//! `host/x:tag@sha256:...`) parsed the way docker parses them, validated
//! against the distribution spec's grammar, and printed in canonical form.
//!
//! Pure data: nothing here does I/O. The client and pull code call into this
//! module; it calls nothing of theirs.
//!
//! Hand-written rather than taken from a crate: the `oci-client` crate's
//! reference parser pulls in its whole client (and a regex engine), and the
//! grammar is small enough to state directly as the functions below.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// The registry docker uses for names without a registry part.
pub const DOCKER_HUB: &str = "docker.io";
/// Where docker.io's API actually lives.
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";
const MAX_NAME_LEN: usize = 255;
const MAX_TAG_LEN: usize = 128;

/// Why a reference string was refused. Each message quotes the bad part.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReferenceError {
    #[error("empty image reference")]
    Empty,
    #[error("invalid image reference {reference:?}: {reason}")]
    Invalid { reference: String, reason: String },
}

/// A parsed image reference. The registry is always set (the default one
/// filled in), and at least one of tag and digest is set (`latest` is filled
/// in when neither was given).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<String>,
}

impl Reference {
    /// Parses with docker.io as the default registry.
    pub fn parse(s: &str) -> Result<Self, ReferenceError> {
        Self::parse_with_default(s, DOCKER_HUB)
    }

    /// Parses `s`; a name without a registry part goes to `default_registry`.
    /// Only docker.io adds the `library/` prefix to one-component names.
    pub fn parse_with_default(s: &str, default_registry: &str) -> Result<Self, ReferenceError> {
        if s.is_empty() {
            return Err(ReferenceError::Empty);
        }
        let bad = |reason: &str| ReferenceError::Invalid {
            reference: s.to_string(),
            reason: reason.to_string(),
        };
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => {
                validate_digest(d).map_err(|e| bad(&e))?;
                (r, Some(d.to_string()))
            }
            None => (s, None),
        };
        // A tag is a ':' after the last '/' (a ':' before it is a port).
        let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let t = &rest[last_slash + i + 1..];
                validate_tag(t).map_err(|e| bad(&e))?;
                (&rest[..last_slash + i], Some(t.to_string()))
            }
            None => (rest, None),
        };
        if name.is_empty() {
            return Err(bad("missing repository name"));
        }
        let (registry, path) = match name.split_once('/') {
            Some((first, remainder)) if is_registry_component(first) => {
                validate_registry(first).map_err(|e| bad(&e))?;
                let registry = if first == "index.docker.io" {
                    DOCKER_HUB
                } else {
                    first
                };
                (registry.to_string(), remainder.to_string())
            }
            _ => (default_registry.to_string(), name.to_string()),
        };
        let repository = if registry == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        validate_repository(&repository).map_err(|e| bad(&e))?;
        if registry.len() + 1 + repository.len() > MAX_NAME_LEN {
            return Err(bad("name longer than 255 characters"));
        }
        let tag = if tag.is_none() && digest.is_none() {
            Some("latest".to_string())
        } else {
            tag
        };
        Ok(Self {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The registry as written (`docker.io`, `localhost:5000`).
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The host (and port) to talk to: docker.io's API host for docker.io.
    pub fn registry_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// The repository path, e.g. `library/busybox`.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }

    /// What to put after `/manifests/`: the digest when there is one (it
    /// pins the content), the tag otherwise.
    pub fn manifest_reference(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }

    /// The same repository at another digest (used after resolving an index).
    pub fn with_digest(&self, digest: &str) -> Self {
        Self {
            digest: Some(digest.to_string()),
            ..self.clone()
        }
    }

    /// True for loopback registries (localhost, 127.0.0.0/8, [::1], any
    /// port): they are spoken to over plain HTTP, as docker does. Others use
    /// TLS unless listed as insecure in the runner's config (see
    /// `ClientConfig::insecure_registries`).
    pub fn plain_http(&self) -> bool {
        is_loopback_host(&self.registry)
    }
}

/// Whether a `host[:port]` names this machine's loopback.
pub(crate) fn is_loopback_host(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        match rest.split_once(']') {
            Some((h, _)) => return h == "::1",
            None => return false,
        }
    } else {
        registry.split(':').next().unwrap_or("")
    };
    host == "localhost"
        || host
            .parse::<Ipv4Addr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// docker's rule: the first component is a registry when it has a '.' or a
/// ':', is `localhost`, or has upper-case letters (never valid in a path).
fn is_registry_component(first: &str) -> bool {
    first.contains('.')
        || first.contains(':')
        || first == "localhost"
        || first.chars().any(|c| c.is_ascii_uppercase())
}

/// host = domain-component ('.' domain-component)* | '[' ipv6 ']', then an
/// optional ':' port.
fn validate_registry(r: &str) -> Result<(), String> {
    let (host, port) = if let Some(rest) = r.strip_prefix('[') {
        let (ip, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("bad registry {r:?}"))?;
        if ip.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("bad IPv6 address in registry {r:?}"));
        }
        match after {
            "" => (None, None),
            p => (
                None,
                Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| format!("bad registry {r:?}"))?,
                ),
            ),
        }
    } else {
        match r.split_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(r), None),
        }
    };
    if let Some(host) = host {
        let ok = !host.is_empty()
            && host.split('.').all(|c| {
                !c.is_empty()
                    && c.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-')
                    && !c.starts_with('-')
                    && !c.ends_with('-')
            });
        if !ok {
            return Err(format!("bad registry host {host:?}"));
        }
    }
    if let Some(p) = port
        && (p.is_empty() || p.len() > 5 || !p.chars().all(|c| c.is_ascii_digit()))
    {
        return Err(format!("bad registry port {p:?}"));
    }
    Ok(())
}

/// path-component = [a-z0-9]+ (separator [a-z0-9]+)*, separator = '.' | '_'
/// | '__' | '-'+ ; components joined by '/'.
pub(crate) fn validate_repository(repo: &str) -> Result<(), String> {
    if repo.is_empty() {
        return Err("empty repository name".into());
    }
    for comp in repo.split('/') {
        if !valid_path_component(comp) {
            return Err(format!(
                "bad repository path component {comp:?} (lower-case letters, digits and single separators . _ __ - only)"
            ));
        }
    }
    Ok(())
}

fn valid_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: '.', '_', '__', or one or more '-'.
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// tag = [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
fn validate_tag(t: &str) -> Result<(), String> {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut chars = t.chars();
    let ok = match chars.next() {
        Some(first) => word(first) && chars.all(|c| word(c) || c == '.' || c == '-'),
        None => false,
    };
    if !ok || t.len() > MAX_TAG_LEN {
        return Err(format!(
            "bad tag {t:?} (letters, digits, _ . -, at most 128, not starting with . or -)"
        ));
    }
    Ok(())
}

/// Only sha256 is accepted: it is what every registry serves, and a digest
/// we cannot verify is no better than none.
pub(crate) fn validate_digest(d: &str) -> Result<(), String> {
    match d.split_once(':') {
        Some(("sha256", hex))
            if hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
        {
            Ok(())
        }
        Some(("sha256", _)) => Err(format!(
            "bad digest {d:?} (sha256 needs 64 lower-case hex digits)"
        )),
        Some((alg, _)) => Err(format!(
            "unsupported digest algorithm {alg:?} in {d:?} (only sha256)"
        )),
        None => Err(format!("bad digest {d:?} (expected sha256:<hex>)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn p(s: &str) -> Reference {
        Reference::parse(s).unwrap()
    }

    #[test]
    fn short_names_go_to_docker_hub_library() {
        let r = p("busybox");
        assert_eq!(r.registry(), "docker.io");
        assert_eq!(r.repository(), "library/busybox");
        assert_eq!(r.tag(), Some("latest"));
        assert_eq!(r.to_string(), "docker.io/library/busybox:latest");
        assert_eq!(r.registry_host(), "registry-1.docker.io");
        assert_eq!(p("user/app:1").to_string(), "docker.io/user/app:1");
        assert_eq!(
            p("index.docker.io/busybox").to_string(),
            "docker.io/library/busybox:latest"
        );
    }

    #[test]
    fn short_names_with_another_default_registry_get_no_library_prefix() {
        let r = Reference::parse_with_default("busybox", "registry.example.com:5000").unwrap();
        assert_eq!(r.to_string(), "registry.example.com:5000/busybox:latest");
        let r = Reference::parse_with_default("team/app:2", "localhost:5000").unwrap();
        assert_eq!(r.to_string(), "localhost:5000/team/app:2");
    }

    #[test]
    fn registries_ports_tags_and_digests() {
        let r = p("localhost:5000/team/app:1.0");
        assert_eq!(
            (r.registry(), r.repository(), r.tag(), r.digest()),
            ("localhost:5000", "team/app", Some("1.0"), None)
        );
        let r = p(&format!("host.io/x@{D}"));
        assert_eq!((r.tag(), r.digest()), (None, Some(D)));
        assert_eq!(r.manifest_reference(), D);
        assert_eq!(r.to_string(), format!("host.io/x@{D}"));
        let r = p(&format!("host.io/x:tag@{D}"));
        assert_eq!((r.tag(), r.digest()), (Some("tag"), Some(D)));
        assert_eq!(r.manifest_reference(), D);
        assert_eq!(r.to_string(), format!("host.io/x:tag@{D}"));
        assert_eq!(p("localhost/app").registry(), "localhost");
        assert_eq!(p("[::1]:5000/app").registry(), "[::1]:5000");
        assert_eq!(p("Foo/app").registry(), "Foo");
        // No '.' or ':' and not localhost: a path component, not a registry.
        assert_eq!(p("team/app").registry(), "docker.io");
    }

    #[test]
    fn grammar_is_enforced() {
        for bad in [
            "",
            "UPPER",
            "app:",
            "app:-tag",
            "app:.tag",
            "a..b",
            "a___b",
            "-app",
            "app-",
            "host.io/",
            "host.io//app",
            "app@sha256:abc",
            "app@md5:abcd",
            "app@sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
            "host:port/app",
            "ho_st.io/app",
            "[::zz]/app",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} should be refused");
        }
        let long_tag = format!("app:{}", "a".repeat(129));
        assert!(Reference::parse(&long_tag).is_err());
        let long_name = format!("host.io/{}", "a".repeat(260));
        assert!(Reference::parse(&long_name).is_err());
        for good in ["a-b", "a--b", "a__b", "a.b", "a_b/c-d/e.f", "app:V1_2.3-x"] {
            assert!(Reference::parse(good).is_ok(), "{good:?} should parse");
        }
        let e = Reference::parse("app:-x").unwrap_err().to_string();
        assert!(e.contains("\"-x\""), "{e}");
    }

    #[test]
    fn plain_http_only_for_loopback() {
        for (r, want) in [
            ("localhost:5000/a", true),
            ("localhost/a", true),
            ("127.0.0.1:5000/a", true),
            ("127.3.4.5/a", true),
            ("[::1]:5000/a", true),
            ("[::1]/a", true),
            ("128.0.0.1:5000/a", false),
            ("registry.example.com/a", false),
            ("busybox", false),
            ("localhost.example.com/a", false),
        ] {
            assert_eq!(p(r).plain_http(), want, "{r}");
        }
    }
}
