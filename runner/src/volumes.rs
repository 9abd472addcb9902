//! The grammar of docker's `-v`/`--volume` and `--tmpfs` flags and of
//! volume names, with docker's error messages. Pure parsing: no files, no
//! daemon state.
//!
//! Called by the CLI (to reject a bad flag with exit 125 before asking the
//! daemon) and by the daemon's `containers`/`volumes` (which parse the
//! stored request again: the daemon trusts no client); calls nothing.

use std::path::{Component, Path};

/// Longest `-v`/`--tmpfs` value and volume name accepted.
const MAX_SPEC: usize = 4096;
const MAX_NAME: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("invalid volume specification: '{0}'")]
    Invalid(String),
    #[error(
        "invalid volume specification: '{spec}': invalid mount config for type \"{kind}\": invalid mount path: '{dest}' mount path must be absolute"
    )]
    RelativeDestination {
        spec: String,
        kind: &'static str,
        dest: String,
    },
    #[error(
        "invalid volume specification: '{spec}': invalid mount config for type \"{kind}\": invalid specification: destination can't be '/'"
    )]
    RootDestination { spec: String, kind: &'static str },
    #[error("invalid mode: {0}")]
    Mode(String),
    #[error(
        "create {0}: \"{0}\" includes invalid characters for a local volume name, only \"[a-zA-Z0-9][a-zA-Z0-9_.-]\" are allowed. If you intended to pass a host directory, use absolute path"
    )]
    Name(String),
    #[error("invalid tmpfs option {0:?}")]
    TmpfsOption(String),
    #[error("invalid mount path: '{0}' mount path must be absolute")]
    TmpfsDestination(String),
}

/// Where a `-v` mount's content comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// An absolute host path (`-v /host:/ctr`).
    Host(String),
    /// A named volume (`-v NAME:/ctr`).
    Named(String),
    /// `-v /ctr`: a new volume with a random name.
    Anonymous,
}

/// One parsed `-v` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeSpec {
    pub source: Source,
    /// Absolute, cleaned (`/a/../b` -> `/b`), never `/`.
    pub destination: String,
    pub read_only: bool,
    /// docker's propagation (`rprivate` unless the mode names another).
    pub propagation: String,
    /// `nocopy`: no copy-up of the image's content into a new volume.
    pub no_copy: bool,
    /// The mode as docker shows it in `Mounts[].Mode`.
    pub mode: String,
}

impl VolumeSpec {
    /// docker's `Mounts[].Type`.
    pub fn kind(&self) -> &'static str {
        match self.source {
            Source::Host(_) => "bind",
            _ => "volume",
        }
    }
}

/// docker's rule for volume names: `[a-zA-Z0-9][a-zA-Z0-9_.-]+`.
pub fn valid_volume_name(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() >= 2
        && b.len() <= MAX_NAME
        && b[0].is_ascii_alphanumeric()
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(c))
}

/// Checks a volume name with docker's message.
pub fn check_volume_name(name: &str) -> Result<(), SpecError> {
    if valid_volume_name(name) {
        Ok(())
    } else {
        Err(SpecError::Name(name.chars().take(MAX_NAME).collect()))
    }
}

/// `/a//b/../c/` -> `/a/c`; `None` for a relative path.
fn clean_absolute(path: &str) -> Option<String> {
    if !path.starts_with('/') {
        return None;
    }
    let mut parts: Vec<&str> = Vec::new();
    for c in Path::new(path).components() {
        match c {
            Component::Normal(n) => parts.push(n.to_str()?),
            Component::ParentDir => {
                parts.pop();
            }
            _ => {}
        }
    }
    Some(format!("/{}", parts.join("/")))
}

/// Parses one `-v` value: `/ctr`, `SRC:/ctr` or `SRC:/ctr:MODE`, where SRC
/// is an absolute host path or a volume name and MODE a comma list of
/// `ro`/`rw`, `z`/`Z`, a propagation and `nocopy`.
pub fn parse_volume(spec: &str) -> Result<VolumeSpec, SpecError> {
    if spec.is_empty() || spec.len() > MAX_SPEC || spec.contains('\0') {
        return Err(SpecError::Invalid(spec.chars().take(MAX_SPEC).collect()));
    }
    let parts: Vec<&str> = spec.split(':').collect();
    let (source, dest, mode) = match parts.as_slice() {
        [d] => (None, *d, None),
        [s, d] => (Some(*s), *d, None),
        [s, d, m] => (Some(*s), *d, Some(*m)),
        _ => return Err(SpecError::Invalid(spec.to_string())),
    };
    if dest.is_empty() || source.is_some_and(str::is_empty) {
        return Err(SpecError::Invalid(spec.to_string()));
    }
    let source = match source {
        None => Source::Anonymous,
        Some(s) if s.starts_with('/') => {
            Source::Host(clean_absolute(s).ok_or_else(|| SpecError::Invalid(spec.to_string()))?)
        }
        Some(s) => {
            check_volume_name(s)?;
            Source::Named(s.to_string())
        }
    };
    let kind = match source {
        Source::Host(_) => "bind",
        _ => "volume",
    };
    let destination = clean_absolute(dest).ok_or_else(|| SpecError::RelativeDestination {
        spec: spec.to_string(),
        kind,
        dest: dest.to_string(),
    })?;
    if destination == "/" {
        return Err(SpecError::RootDestination {
            spec: spec.to_string(),
            kind,
        });
    }
    let mut out = VolumeSpec {
        source,
        destination,
        read_only: false,
        propagation: "rprivate".to_string(),
        no_copy: false,
        mode: mode.unwrap_or("").to_string(),
    };
    let (mut rw_seen, mut prop_seen, mut label_seen) = (false, false, false);
    for word in mode
        .map(|m| m.split(',').collect::<Vec<_>>())
        .unwrap_or_default()
    {
        let bad = || SpecError::Mode(mode.unwrap_or("").to_string());
        match word {
            "ro" | "rw" if !rw_seen => {
                rw_seen = true;
                out.read_only = word == "ro";
            }
            "z" | "Z" if !label_seen => label_seen = true,
            "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" if !prop_seen => {
                if matches!(out.source, Source::Host(_)) {
                    prop_seen = true;
                    out.propagation = word.to_string();
                } else {
                    return Err(bad());
                }
            }
            "nocopy" if !matches!(out.source, Source::Host(_)) && !out.no_copy => {
                out.no_copy = true
            }
            _ => return Err(bad()),
        }
    }
    if !matches!(out.source, Source::Host(_)) {
        // docker's volumes carry no propagation of their own.
        out.propagation = String::new();
        if out.mode.is_empty() {
            out.mode = "z".to_string();
        }
    }
    Ok(out)
}

/// One parsed `--tmpfs` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TmpfsSpec {
    pub destination: String,
    /// The user's options as typed (for `HostConfig.Tmpfs`).
    pub options: String,
    /// The mount's options: docker's `noexec,nosuid,nodev` then the user's.
    pub mount_options: Vec<String>,
}

/// Parses `--tmpfs /path[:opt,opt...]`; options are tmpfs's (`size=`,
/// `mode=`, `uid=`, `gid=`, `nr_inodes=`, `nr_blocks=`) and the generic
/// mount flags (`ro`, `rw`, `exec`, `suid`, `dev` and their `no` forms).
pub fn parse_tmpfs(spec: &str) -> Result<TmpfsSpec, SpecError> {
    if spec.is_empty() || spec.len() > MAX_SPEC || spec.contains('\0') {
        return Err(SpecError::Invalid(spec.chars().take(MAX_SPEC).collect()));
    }
    let (dest, options) = spec.split_once(':').unwrap_or((spec, ""));
    let destination =
        clean_absolute(dest).ok_or_else(|| SpecError::TmpfsDestination(dest.to_string()))?;
    if destination == "/" {
        return Err(SpecError::RootDestination {
            spec: spec.to_string(),
            kind: "tmpfs",
        });
    }
    let mut mount_options: Vec<String> = ["noexec", "nosuid", "nodev"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for opt in options.split(',').filter(|o| !o.is_empty()) {
        let (key, value) = opt.split_once('=').unwrap_or((opt, ""));
        let ok = match key {
            "ro" | "rw" | "exec" | "noexec" | "suid" | "nosuid" | "dev" | "nodev" | "sync"
            | "async" | "atime" | "noatime" | "diratime" | "nodiratime" | "relatime"
            | "norelatime" | "strictatime" => value.is_empty() && !opt.contains('='),
            "size" => {
                let digits = value.trim_end_matches(['k', 'K', 'm', 'M', 'g', 'G', '%']);
                !digits.is_empty()
                    && digits.bytes().all(|b| b.is_ascii_digit())
                    && value.len() - digits.len() <= 1
            }
            "mode" => {
                !value.is_empty() && value.len() <= 5 && u32::from_str_radix(value, 8).is_ok()
            }
            "uid" | "gid" | "nr_inodes" | "nr_blocks" => {
                !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) && value.len() <= 10
            }
            _ => false,
        };
        if !ok {
            return Err(SpecError::TmpfsOption(opt.to_string()));
        }
        // A later flag overrides a default one (exec after noexec...).
        let opposite = match key {
            "exec" => Some("noexec"),
            "suid" => Some("nosuid"),
            "dev" => Some("nodev"),
            _ => None,
        };
        if let Some(o) = opposite {
            mount_options.retain(|m| m != o);
        }
        mount_options.push(opt.to_string());
    }
    Ok(TmpfsSpec {
        destination,
        options: options.to_string(),
        mount_options,
    })
}

/// Parses every `-v` and `--tmpfs` of a request and checks that no two
/// mounts share a destination (docker's "Duplicate mount point").
pub fn parse_all(
    binds: &[String],
    tmpfs: &[String],
) -> Result<(Vec<VolumeSpec>, Vec<TmpfsSpec>), String> {
    let volumes = binds
        .iter()
        .map(|b| parse_volume(b))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let tmpfs = tmpfs
        .iter()
        .map(|t| parse_tmpfs(t))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let mut seen = std::collections::HashSet::new();
    for dest in volumes
        .iter()
        .map(|v| &v.destination)
        .chain(tmpfs.iter().map(|t| &t.destination))
    {
        if !seen.insert(dest.clone()) {
            return Err(format!("Duplicate mount point: {dest}"));
        }
    }
    Ok((volumes, tmpfs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_named_and_anonymous_volumes() {
        let v = parse_volume("/srv/data:/data").unwrap();
        assert_eq!(v.source, Source::Host("/srv/data".into()));
        assert_eq!(v.destination, "/data");
        assert!(!v.read_only);
        assert_eq!(v.propagation, "rprivate");
        assert_eq!(v.kind(), "bind");
        let v = parse_volume("/srv//x/../data/:/a/b/:ro").unwrap();
        assert_eq!(v.source, Source::Host("/srv/data".into()));
        assert_eq!(v.destination, "/a/b");
        assert!(v.read_only);
        assert_eq!(v.mode, "ro");
        let v = parse_volume("cache:/var/cache:ro,nocopy").unwrap();
        assert_eq!(v.source, Source::Named("cache".into()));
        assert!(v.read_only && v.no_copy);
        assert_eq!(v.kind(), "volume");
        assert_eq!(v.propagation, "");
        let v = parse_volume("/data").unwrap();
        assert_eq!(v.source, Source::Anonymous);
        assert_eq!(v.mode, "z");
        let v = parse_volume("/h:/c:rw,rshared").unwrap();
        assert_eq!(v.propagation, "rshared");
    }

    #[test]
    fn bad_volume_specs_get_dockers_messages() {
        assert_eq!(
            parse_volume("/h:rel").unwrap_err().to_string(),
            "invalid volume specification: '/h:rel': invalid mount config for type \"bind\": invalid mount path: 'rel' mount path must be absolute"
        );
        assert_eq!(
            parse_volume("vol:/").unwrap_err().to_string(),
            "invalid volume specification: 'vol:/': invalid mount config for type \"volume\": invalid specification: destination can't be '/'"
        );
        assert!(matches!(
            parse_volume("/h:/c:bogus"),
            Err(SpecError::Mode(m)) if m == "bogus"
        ));
        assert!(parse_volume("/h:/c:ro,rw").is_err());
        assert!(parse_volume("vol:/c:rshared").is_err());
        assert!(parse_volume("/h:/c:nocopy").is_err());
        assert!(parse_volume("a:b:c:d").is_err());
        assert!(parse_volume("").is_err());
        assert!(parse_volume(":/c").is_err());
        assert!(parse_volume("/").is_err());
        assert!(
            parse_volume("bad@name:/c")
                .unwrap_err()
                .to_string()
                .starts_with("create bad@name: \"bad@name\" includes invalid characters")
        );
        assert!(parse_volume("../x:/c").is_err());
        assert!(parse_volume(&"a".repeat(5000)).is_err());
    }

    #[test]
    fn volume_names_follow_dockers_rule() {
        assert!(valid_volume_name("data"));
        assert!(valid_volume_name("a.b_c-1"));
        assert!(valid_volume_name(&"f".repeat(64)));
        assert!(!valid_volume_name("a"));
        assert!(!valid_volume_name("-a"));
        assert!(!valid_volume_name(".."));
        assert!(!valid_volume_name("a/b"));
        assert!(!valid_volume_name("a b"));
        assert!(!valid_volume_name(""));
    }

    #[test]
    fn tmpfs_specs() {
        let t = parse_tmpfs("/run").unwrap();
        assert_eq!(t.destination, "/run");
        assert_eq!(t.mount_options, ["noexec", "nosuid", "nodev"]);
        let t = parse_tmpfs("/tmp:size=64m,mode=1777,exec").unwrap();
        assert_eq!(t.options, "size=64m,mode=1777,exec");
        assert_eq!(
            t.mount_options,
            ["nosuid", "nodev", "size=64m", "mode=1777", "exec"]
        );
        assert!(parse_tmpfs("tmp").is_err());
        assert!(parse_tmpfs("/").is_err());
        assert!(parse_tmpfs("/t:size=lots").is_err());
        assert!(parse_tmpfs("/t:mode=999").is_err());
        assert!(parse_tmpfs("/t:uid=x").is_err());
        assert!(parse_tmpfs("/t:ro=1").is_err());
        assert!(parse_tmpfs("/t:huge=always").is_err());
        assert!(parse_tmpfs("/t:size=10%").is_ok());
    }

    #[test]
    fn duplicate_destinations_are_refused() {
        let binds = vec!["/a:/x".to_string(), "v1:/y".to_string()];
        assert!(parse_all(&binds, &["/z".to_string()]).is_ok());
        let err = parse_all(&binds, &["/x/".to_string()]).unwrap_err();
        assert_eq!(err, "Duplicate mount point: /x");
    }
}
