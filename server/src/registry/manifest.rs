//! Manifest parsing and validation: which kinds the registry accepts and what
//! each one refers to.
//!
//! Pure functions over bytes; called by the registry service.

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};
use serde::Deserialize;
use serde::de::IgnoredAny;

use super::error::{RegistryError, Result};
use crate::digest::Digest;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_SCHEMA1: [&str; 2] = [
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
];
const DOCKER_FOREIGN_LAYER: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";

/// What the registry needs to know about a manifest to store it.
#[derive(Debug, PartialEq)]
pub struct ParsedManifest {
    pub media_type: String,
    /// The artifact type as the referrers API reports it: `artifactType`,
    /// or for an image manifest without one, its config's media type.
    pub artifact_type: Option<String>,
    pub subject: Option<Digest>,
    /// JSON text of the annotations (only kept when there is a subject).
    pub annotations: Option<String>,
    /// Blobs that must already be in the repository (config and layers).
    pub blobs: Vec<String>,
    /// Manifests that must already be in the repository (an index's children).
    pub manifests: Vec<String>,
}

/// Just enough of any manifest to tell which kind it is.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    schema_version: Option<i64>,
    media_type: Option<String>,
    manifests: Option<IgnoredAny>,
    config: Option<IgnoredAny>,
    layers: Option<IgnoredAny>,
}

fn invalid(msg: impl Into<String>) -> RegistryError {
    RegistryError::ManifestInvalid(msg.into())
}

/// Media type without parameters (`; charset=utf-8`), lower-cased.
fn essence(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

fn is_manifest_type(t: &str) -> bool {
    [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST].contains(&t)
}

pub fn parse(content_type: Option<&str>, bytes: &[u8]) -> Result<ParsedManifest> {
    let probe: Probe = serde_json::from_slice(bytes)
        .map_err(|e| invalid(format!("manifest is not valid JSON: {e}")))?;
    let header = content_type.map(essence).filter(|t| !t.is_empty());
    if probe.schema_version == Some(1)
        || header
            .as_deref()
            .is_some_and(|h| DOCKER_SCHEMA1.contains(&h))
    {
        return Err(RegistryError::ManifestInvalid(
            "Docker schema 1 manifests are not supported; push with a current client (schema 2 or OCI)".into(),
        ));
    }
    if probe.schema_version != Some(2) {
        return Err(invalid("manifest must have schemaVersion 2"));
    }
    let declared = probe.media_type.as_deref();
    let media_type = match (header.as_deref().filter(|h| is_manifest_type(h)), declared) {
        (Some(h), Some(d)) if h != d => {
            return Err(invalid(format!(
                "manifest mediaType {d:?} does not match Content-Type {h:?}"
            )));
        }
        (Some(h), _) => h.to_owned(),
        (None, Some(d)) => d.to_owned(),
        (None, None) if probe.manifests.is_some() => OCI_INDEX.to_owned(),
        (None, None) if probe.config.is_some() || probe.layers.is_some() => OCI_MANIFEST.to_owned(),
        (None, None) => return Err(invalid("cannot tell the manifest's media type")),
    };
    match media_type.as_str() {
        OCI_MANIFEST | DOCKER_MANIFEST => parse_image(media_type, bytes),
        OCI_INDEX | DOCKER_LIST => parse_index(media_type, bytes),
        other => Err(invalid(format!(
            "unsupported manifest media type {other:?}"
        ))),
    }
}

fn subject_of(subject: Option<&Descriptor>) -> Result<Option<Digest>> {
    subject
        .map(|s| {
            s.digest()
                .to_string()
                .parse::<Digest>()
                .map_err(|e| invalid(format!("subject digest: {e}")))
        })
        .transpose()
}

/// A media type is printable text (RFC 6838); a control character (NUL
/// above all, which PostgreSQL text cannot hold) makes the manifest invalid.
fn check_artifact_type(t: Option<&str>) -> Result<()> {
    match t {
        Some(t) if t.chars().any(char::is_control) => Err(invalid(format!(
            "artifact type {t:?} has a control character"
        ))),
        _ => Ok(()),
    }
}

fn annotations_json(
    subject: &Option<Digest>,
    annotations: Option<&std::collections::HashMap<String, String>>,
) -> Option<String> {
    subject.as_ref()?;
    annotations
        .filter(|a| !a.is_empty())
        .and_then(|a| serde_json::to_string(a).ok())
}

fn parse_image(media_type: String, bytes: &[u8]) -> Result<ParsedManifest> {
    let m: ImageManifest = serde_json::from_slice(bytes)
        .map_err(|e| invalid(format!("invalid image manifest: {e}")))?;
    let is_foreign = |d: &&Descriptor| {
        d.urls().as_ref().is_some_and(|u| !u.is_empty())
            || d.media_type().to_string() == DOCKER_FOREIGN_LAYER
    };
    let mut blobs = vec![m.config().digest().to_string()];
    blobs.extend(
        m.layers()
            .iter()
            .filter(|d| !is_foreign(d))
            .map(|d| d.digest().to_string()),
    );
    let subject = subject_of(m.subject().as_ref())?;
    let artifact_type = m
        .artifact_type()
        .as_ref()
        .map(|t| t.to_string())
        .or_else(|| Some(m.config().media_type().to_string()));
    check_artifact_type(artifact_type.as_deref())?;
    Ok(ParsedManifest {
        annotations: annotations_json(&subject, m.annotations().as_ref()),
        media_type,
        artifact_type,
        subject,
        blobs,
        manifests: Vec::new(),
    })
}

fn parse_index(media_type: String, bytes: &[u8]) -> Result<ParsedManifest> {
    let i: ImageIndex =
        serde_json::from_slice(bytes).map_err(|e| invalid(format!("invalid image index: {e}")))?;
    let subject = subject_of(i.subject().as_ref())?;
    let artifact_type = i.artifact_type().as_ref().map(|t| t.to_string());
    check_artifact_type(artifact_type.as_deref())?;
    Ok(ParsedManifest {
        annotations: annotations_json(&subject, i.annotations().as_ref()),
        artifact_type,
        media_type,
        subject,
        blobs: Vec::new(),
        manifests: i
            .manifests()
            .iter()
            .map(|d| d.digest().to_string())
            .collect(),
    })
}

/// Config media types whose blob is an image config (os, architecture, ...).
pub const IMAGE_CONFIG_TYPES: [&str; 2] = [
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
];

/// What the browse summary of a manifest is made of, read from its bytes
/// alone (see `Registry::summarize`).
#[derive(Debug, Default, PartialEq)]
pub struct SummaryParts {
    /// An image: config + layers (foreign layers included: their size is
    /// what a client downloads).
    pub image_size: Option<i64>,
    /// An image whose config is an image config: (digest, size).
    pub config: Option<(String, i64)>,
    /// An index: its children and their platforms ("os/arch[/variant]";
    /// attestation entries, `unknown/unknown`, left out).
    pub children: Vec<String>,
    pub platforms: Vec<String>,
}

/// "os/arch[/variant]", or None when os or arch is missing or unknown.
pub fn platform_string(os: &str, arch: &str, variant: Option<&str>) -> Option<String> {
    if os.is_empty() || arch.is_empty() || os == "unknown" || arch == "unknown" {
        return None;
    }
    Some(match variant.filter(|v| !v.is_empty()) {
        Some(v) => format!("{os}/{arch}/{v}"),
        None => format!("{os}/{arch}"),
    })
}

/// The summary parts of a stored manifest; a manifest that does not parse
/// (none should: they were validated when pushed) has none.
pub fn summary_parts(media_type: &str, bytes: &[u8]) -> SummaryParts {
    match media_type {
        OCI_INDEX | DOCKER_LIST => {
            let Ok(i) = serde_json::from_slice::<ImageIndex>(bytes) else {
                return SummaryParts::default();
            };
            let mut platforms = Vec::new();
            for d in i.manifests() {
                if let Some(p) = d.platform().as_ref().and_then(|p| {
                    platform_string(
                        &p.os().to_string(),
                        &p.architecture().to_string(),
                        p.variant().as_deref(),
                    )
                }) && !platforms.contains(&p)
                {
                    platforms.push(p);
                }
            }
            SummaryParts {
                children: i
                    .manifests()
                    .iter()
                    .map(|d| d.digest().to_string())
                    .collect(),
                platforms,
                ..SummaryParts::default()
            }
        }
        _ => {
            let Ok(m) = serde_json::from_slice::<ImageManifest>(bytes) else {
                return SummaryParts::default();
            };
            let size =
                m.config().size() as i64 + m.layers().iter().map(|l| l.size() as i64).sum::<i64>();
            let config_type = m.config().media_type().to_string();
            SummaryParts {
                image_size: Some(size),
                config: IMAGE_CONFIG_TYPES
                    .contains(&config_type.as_str())
                    .then(|| (m.config().digest().to_string(), m.config().size() as i64)),
                ..SummaryParts::default()
            }
        }
    }
}

/// The platform an image config names ("os/arch[/variant]").
pub fn config_platform(bytes: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Platform {
        #[serde(default)]
        os: String,
        #[serde(default)]
        architecture: String,
        #[serde(default)]
        variant: Option<String>,
    }
    let p: Platform = serde_json::from_slice(bytes).ok()?;
    platform_string(&p.os, &p.architecture, p.variant.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn image(media_type: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{media_type}",
              "config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{D1}","size":2}},
              "layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{D2}","size":3}}]}}"#
        )
    }

    #[test]
    fn image_manifest_lists_its_blobs() {
        let p = parse(Some(OCI_MANIFEST), image(OCI_MANIFEST).as_bytes()).unwrap();
        assert_eq!(p.media_type, OCI_MANIFEST);
        assert_eq!(p.blobs, vec![D1.to_string(), D2.to_string()]);
        assert_eq!(
            p.artifact_type.as_deref(),
            Some("application/vnd.oci.image.config.v1+json")
        );
        assert!(p.subject.is_none());
    }

    #[test]
    fn media_type_from_header_or_body() {
        let p = parse(None, image(DOCKER_MANIFEST).as_bytes()).unwrap();
        assert_eq!(p.media_type, DOCKER_MANIFEST);
        let err = parse(Some(OCI_MANIFEST), image(DOCKER_MANIFEST).as_bytes()).unwrap_err();
        assert!(matches!(err, RegistryError::ManifestInvalid(_)));
    }

    #[test]
    fn index_lists_children_and_subject() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[
                {{"mediaType":"{OCI_MANIFEST}","digest":"{D1}","size":10,"platform":{{"os":"linux","architecture":"amd64"}}}}],
                "subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{D2}","size":10}},
                "annotations":{{"a":"b"}}}}"#
        );
        let p = parse(Some(OCI_INDEX), body.as_bytes()).unwrap();
        assert_eq!(p.manifests, vec![D1.to_string()]);
        assert_eq!(p.subject.unwrap().as_str(), D2);
        assert_eq!(p.annotations.as_deref(), Some(r#"{"a":"b"}"#));
    }

    #[test]
    fn refuses_bad_manifests() {
        for bad in [
            "not json",
            "{}",
            r#"{"schemaVersion":1,"fsLayers":[]}"#,
            r#"{"schemaVersion":2,"config":{"digest":"nope"}}"#,
            r#"{"schemaVersion":2,"mediaType":"text/plain"}"#,
        ] {
            assert!(
                matches!(
                    parse(None, bad.as_bytes()),
                    Err(RegistryError::ManifestInvalid(_))
                ),
                "{bad}"
            );
        }
    }
}
