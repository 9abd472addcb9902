//! The image side of the runner: parse references, talk to registries, keep
//! blobs and unpacked layers in a content-addressed store, and pull images
//! into it.
//!
//! Direction of calls: `pull` calls `client` (network), `store` (disk) and
//! the layer unpacker (`unpack`, behind `pull::LayerUnpacker`, wired by
//! `pull::SafeUnpacker`);
//! `client` and `store` call nothing else in the runner; `reference` is
//! plain data used by all of them. Callers above this module (daemon, CLI,
//! bundle) use `pull::pull` and `store::Store`, never the client's HTTP
//! details.

pub mod client;
pub mod export;
pub mod pull;
pub mod push;
pub mod reference;
pub mod store;
#[cfg(test)]
mod testutil;
pub mod unpack;

use std::fmt;

/// The platform an image must match when the registry serves an index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Self {
        Self {
            os: os.to_string(),
            architecture: architecture.to_string(),
            variant: variant.map(str::to_string),
        }
    }

    /// This machine's platform in OCI terms (GOOS/GOARCH names).
    pub fn host() -> Self {
        let (arch, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", Some("v8")),
            "arm" => ("arm", Some("v7")),
            "x86" => ("386", None),
            "powerpc64" => ("ppc64le", None),
            "s390x" => ("s390x", None),
            "riscv64" => ("riscv64", None),
            other => (other, None),
        };
        Self::new(std::env::consts::OS, arch, variant)
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}
