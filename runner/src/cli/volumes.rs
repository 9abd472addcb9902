//! The `volume` commands (`create`, `ls`, `inspect`, `rm`, `prune`) with
//! docker's flags, output and exit codes.
//!
//! Called by `cli::dispatch`; calls the daemon through `client`, and
//! `format` for tables, JSON and `--format`.

use std::collections::BTreeMap;
use std::io::Write;

use clap::{Args, Subcommand};
use hyper::Method;
use serde_json::Value;

use super::client::{Client, Error, encode};
use super::format::{self, Template};
use super::outln;
use crate::api::{Volume, VolumeCreateRequest, VolumePruneReport};

#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    /// Create a volume
    Create(CreateArgs),
    /// List volumes
    #[command(visible_alias = "list")]
    Ls(LsArgs),
    /// Display detailed information on one or more volumes
    Inspect(InspectArgs),
    /// Remove one or more volumes
    #[command(visible_alias = "remove")]
    Rm(RmArgs),
    /// Remove unused local volumes
    Prune(PruneArgs),
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Specify volume driver name
    #[arg(short, long, default_value = "local")]
    pub driver: String,
    /// Set metadata for a volume
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Specify volume name
    #[arg(long = "name", value_name = "NAME")]
    pub name_flag: Option<String>,
    #[arg(value_name = "VOLUME")]
    pub name: Option<String>,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Only display volume names
    #[arg(short, long)]
    pub quiet: bool,
    /// Format output using a Go template
    #[arg(long)]
    pub format: Option<String>,
    /// Provide filter values (dangling=BOOL, name=TEXT, label=KEY[=VALUE], driver=local)
    #[arg(short = 'f', long = "filter", value_name = "FILTER")]
    pub filters: Vec<String>,
}

/// `volume ls --filter`s: what the daemon filters (`dangling`) and what
/// is filtered here.
#[derive(Debug, Default, PartialEq)]
pub struct LsFilter {
    pub dangling: Option<bool>,
    names: Vec<String>,
    labels: Vec<(String, Option<String>)>,
    drivers: Vec<String>,
}

impl LsFilter {
    pub fn parse(filters: &[String]) -> Result<LsFilter, Error> {
        let mut out = LsFilter::default();
        for f in filters {
            let (key, value) = f.split_once('=').ok_or_else(|| {
                Error::Message(format!("bad format of filter (expected name=value): {f}"))
            })?;
            match key {
                "dangling" => {
                    out.dangling = Some(match value {
                        "true" | "1" => true,
                        "false" | "0" => false,
                        _ => {
                            return Err(Error::Message(format!(
                                "Error response from daemon: invalid filter 'dangling={value}'"
                            )));
                        }
                    })
                }
                "name" => out.names.push(value.to_string()),
                "label" => out.labels.push(match value.split_once('=') {
                    Some((k, v)) => (k.to_string(), Some(v.to_string())),
                    None => (value.to_string(), None),
                }),
                "driver" => out.drivers.push(value.to_string()),
                _ => {
                    return Err(Error::Message(format!(
                        "Error response from daemon: invalid filter '{key}'"
                    )));
                }
            }
        }
        Ok(out)
    }

    /// docker: each kind of filter must match (names by substring, any
    /// of several values; every label given).
    pub fn matches(&self, v: &Volume) -> bool {
        (self.names.is_empty() || self.names.iter().any(|n| v.name.contains(n.as_str())))
            && (self.drivers.is_empty() || self.drivers.contains(&v.driver))
            && self
                .labels
                .iter()
                .all(|(k, want)| match (v.labels.get(k), want) {
                    (Some(have), Some(want)) => have == want,
                    (Some(_), None) => true,
                    (None, _) => false,
                })
    }
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Format output using a Go template
    #[arg(short, long)]
    pub format: Option<String>,
    #[arg(value_name = "VOLUME", required = true)]
    pub names: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    /// Force the removal of one or more volumes
    #[arg(short, long)]
    pub force: bool,
    #[arg(value_name = "VOLUME", required = true)]
    pub names: Vec<String>,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Remove all unused volumes, not just anonymous ones
    #[arg(short, long)]
    pub all: bool,
    /// Do not prompt for confirmation
    #[arg(short, long)]
    pub force: bool,
}

pub async fn dispatch(client: &Client, command: VolumeCommand) -> Result<i32, Error> {
    match command {
        VolumeCommand::Create(a) => create(client, a).await,
        VolumeCommand::Ls(a) => ls(client, a).await,
        VolumeCommand::Inspect(a) => inspect(client, a).await,
        VolumeCommand::Rm(a) => rm(client, a).await,
        VolumeCommand::Prune(a) => prune(client, a).await,
    }
}

async fn create(client: &Client, args: CreateArgs) -> Result<i32, Error> {
    let name = match (args.name_flag, args.name) {
        (Some(a), Some(b)) if a != b => {
            return Err(Error::Message(format!(
                "conflicting options: either specify --name or provide positional arg, not both ({a} != {b})"
            )));
        }
        (a, b) => a.or(b),
    };
    let mut labels = BTreeMap::new();
    for l in &args.labels {
        let (k, v) = l.split_once('=').unwrap_or((l, ""));
        labels.insert(k.to_string(), v.to_string());
    }
    let req = VolumeCreateRequest {
        name,
        driver: Some(args.driver),
        labels,
    };
    let v: Volume = client
        .json(Method::POST, "/volumes/create", Some(&req))
        .await?;
    outln(v.name);
    Ok(0)
}

/// docker's `volume ls` table (or names with `-q`).
pub fn ls_output(volumes: &[Volume], quiet: bool) -> String {
    if quiet {
        return volumes.iter().map(|v| format!("{}\n", v.name)).collect();
    }
    let mut rows = vec![vec!["DRIVER".to_string(), "VOLUME NAME".to_string()]];
    for v in volumes {
        rows.push(vec![v.driver.clone(), v.name.clone()]);
    }
    format::table(&rows)
}

async fn ls(client: &Client, args: LsArgs) -> Result<i32, Error> {
    let filter = LsFilter::parse(&args.filters)?;
    let path = match filter.dangling {
        Some(d) => format!("/volumes?dangling={d}"),
        None => "/volumes".to_string(),
    };
    let mut volumes: Vec<Volume> = client.json(Method::GET, &path, None::<&()>).await?;
    volumes.retain(|v| filter.matches(v));
    if let Some(f) = &args.format {
        let t = Template::parse(f).map_err(Error::Message)?;
        for v in &volumes {
            outln(t.render(&serde_json::to_value(v).unwrap_or(Value::Null)));
        }
        return Ok(0);
    }
    let _ = std::io::stdout()
        .lock()
        .write_all(ls_output(&volumes, args.quiet).as_bytes());
    Ok(0)
}

async fn inspect(client: &Client, args: InspectArgs) -> Result<i32, Error> {
    let template = args
        .format
        .as_deref()
        .map(Template::parse)
        .transpose()
        .map_err(Error::Message)?;
    let mut found = Vec::new();
    let mut code = 0;
    for name in &args.names {
        match client
            .json::<Value>(
                Method::GET,
                &format!("/volumes/{}", encode(name)),
                None::<&()>,
            )
            .await
        {
            Ok(v) => found.push(v),
            Err(e @ Error::Connect(_)) => return Err(e),
            Err(e) => {
                eprintln!("{e}");
                code = 1;
            }
        }
    }
    match template {
        Some(t) => found.iter().for_each(|v| outln(t.render(v))),
        None => outln(format::json_pretty(&Value::Array(found))),
    }
    Ok(code)
}

async fn rm(client: &Client, args: RmArgs) -> Result<i32, Error> {
    let mut code = 0;
    for name in &args.names {
        let path = format!("/volumes/{}?force={}", encode(name), args.force);
        match client.call(Method::DELETE, &path).await {
            Ok(()) => outln(name),
            Err(e @ Error::Connect(_)) => return Err(e),
            Err(e) => {
                eprintln!("{e}");
                code = 1;
            }
        }
    }
    Ok(code)
}

pub fn prune_output(report: &VolumePruneReport) -> String {
    let mut out = String::new();
    if !report.volumes_deleted.is_empty() {
        out.push_str("Deleted Volumes:\n");
        for v in &report.volumes_deleted {
            out.push_str(v);
            out.push('\n');
        }
        out.push('\n');
    }
    out.push_str(&format!(
        "Total reclaimed space: {}\n",
        format::human_size(report.space_reclaimed)
    ));
    out
}

async fn prune(client: &Client, args: PruneArgs) -> Result<i32, Error> {
    if !args.force {
        let warning = if args.all {
            "WARNING! This will remove all local volumes not used by at least one container.\nAre you sure you want to continue?"
        } else {
            "WARNING! This will remove anonymous local volumes not used by at least one container.\nAre you sure you want to continue?"
        };
        if !super::images::confirm(warning) {
            outln("Total reclaimed space: 0B");
            return Ok(0);
        }
    }
    let report: VolumePruneReport = client
        .json(
            Method::POST,
            &format!("/volumes/prune?all={}", args.all),
            None::<&()>,
        )
        .await?;
    let _ = std::io::stdout()
        .lock()
        .write_all(prune_output(&report).as_bytes());
    Ok(0)
}

/// What one `--mount` becomes: a `-v` value or a `--tmpfs` value.
#[derive(Debug, PartialEq, Eq)]
pub enum MountFlag {
    Volume(String),
    Tmpfs(String),
}

/// Translates docker's `--mount type=bind|volume|tmpfs,source=..,target=..
/// [,readonly][,bind-propagation=..][,volume-nocopy][,tmpfs-size=..]
/// [,tmpfs-mode=..]` into the `-v`/`--tmpfs` grammar the daemon takes. A
/// bind's source must exist (docker's rule for `--mount`, unlike `-v`).
pub fn parse_mount_flag(spec: &str) -> Result<MountFlag, String> {
    let bad = |why: &str| format!("invalid argument \"{spec}\" for \"--mount\" flag: {why}");
    let (mut kind, mut source, mut target) = ("volume".to_string(), None, None);
    let (mut ro, mut propagation, mut nocopy) = (false, None, false);
    let (mut size, mut mode) = (None, None);
    for field in spec.split(',').filter(|f| !f.is_empty()) {
        let (key, value) = match field.split_once('=') {
            Some((k, v)) => (k.to_ascii_lowercase(), Some(v.to_string())),
            None => (field.to_ascii_lowercase(), None),
        };
        let flag = |v: &Option<String>| match v.as_deref() {
            None | Some("1") | Some("true") => Ok(true),
            Some("0") | Some("false") => Ok(false),
            Some(other) => Err(bad(&format!("invalid value for {key}: {other}"))),
        };
        let need = |v: Option<String>| {
            v.ok_or_else(|| bad(&format!("invalid field '{field}' must be a key=value pair")))
        };
        match key.as_str() {
            "type" => kind = need(value)?,
            "source" | "src" => source = Some(need(value)?),
            "target" | "destination" | "dst" => target = Some(need(value)?),
            "readonly" | "ro" => ro = flag(&value)?,
            "bind-propagation" => propagation = Some(need(value)?),
            "volume-nocopy" => nocopy = flag(&value)?,
            "tmpfs-size" => size = Some(need(value)?),
            "tmpfs-mode" => mode = Some(need(value)?),
            _ => return Err(bad(&format!("unexpected key '{key}' in '{field}'"))),
        }
    }
    let target = target.ok_or_else(|| bad("target is required"))?;
    match kind.as_str() {
        "bind" => {
            let source =
                source.ok_or_else(|| bad("source is required when specifying volume-driver"))?;
            if !std::path::Path::new(&source).exists() {
                return Err(format!(
                    "Error response from daemon: invalid mount config for type \"bind\": bind source path does not exist: {source}"
                ));
            }
            let mut mode = vec![if ro { "ro" } else { "rw" }.to_string()];
            mode.extend(propagation);
            Ok(MountFlag::Volume(format!(
                "{source}:{target}:{}",
                mode.join(",")
            )))
        }
        "volume" => {
            let mut mode = vec![if ro { "ro" } else { "rw" }.to_string()];
            if nocopy {
                mode.push("nocopy".into());
            }
            match source.filter(|s| !s.is_empty()) {
                Some(source) => Ok(MountFlag::Volume(format!(
                    "{source}:{target}:{}",
                    mode.join(",")
                ))),
                None if !ro && !nocopy => Ok(MountFlag::Volume(target)),
                None => Err(bad("an anonymous volume takes no options here; use -v")),
            }
        }
        "tmpfs" => {
            let mut opts = Vec::new();
            if ro {
                opts.push("ro".to_string());
            }
            opts.extend(size.map(|s| format!("size={s}")));
            opts.extend(mode.map(|m| format!("mode={m}")));
            Ok(MountFlag::Tmpfs(if opts.is_empty() {
                target
            } else {
                format!("{target}:{}", opts.join(","))
            }))
        }
        other => Err(bad(&format!("invalid mount type: {other}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vol(name: &str) -> Volume {
        Volume {
            created_at: String::new(),
            driver: "local".into(),
            labels: BTreeMap::new(),
            mountpoint: String::new(),
            name: name.into(),
            options: None,
            scope: "local".into(),
        }
    }

    #[test]
    fn ls_like_docker() {
        let v = [vol("data"), vol("cache")];
        assert_eq!(
            ls_output(&v, false),
            "DRIVER    VOLUME NAME\nlocal     data\nlocal     cache\n"
        );
        assert_eq!(ls_output(&v, true), "data\ncache\n");
    }

    #[test]
    fn mount_flags_become_volume_and_tmpfs_values() {
        assert_eq!(
            parse_mount_flag("type=bind,source=/tmp,target=/data,readonly").unwrap(),
            MountFlag::Volume("/tmp:/data:ro".into())
        );
        assert_eq!(
            parse_mount_flag("type=bind,src=/tmp,dst=/d,bind-propagation=rshared").unwrap(),
            MountFlag::Volume("/tmp:/d:rw,rshared".into())
        );
        assert_eq!(
            parse_mount_flag("source=cache,target=/c,volume-nocopy").unwrap(),
            MountFlag::Volume("cache:/c:rw,nocopy".into())
        );
        assert_eq!(
            parse_mount_flag("target=/anon").unwrap(),
            MountFlag::Volume("/anon".into())
        );
        assert_eq!(
            parse_mount_flag("type=tmpfs,destination=/t,tmpfs-size=1048576,tmpfs-mode=1777")
                .unwrap(),
            MountFlag::Tmpfs("/t:size=1048576,mode=1777".into())
        );
        assert!(
            parse_mount_flag("type=bind,source=/no/such/dir/here,target=/d")
                .unwrap_err()
                .ends_with("bind source path does not exist: /no/such/dir/here")
        );
        assert!(parse_mount_flag("type=bind,source=/tmp").is_err());
        assert!(parse_mount_flag("type=nfs,target=/x").is_err());
        assert!(parse_mount_flag("type=volume,target=/x,bogus=1").is_err());
    }

    #[test]
    fn ls_filters() {
        let mut v = vol("web-data");
        v.labels.insert("app".into(), "web".into());
        let f = |list: &[&str]| {
            LsFilter::parse(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
        };
        assert!(f(&[]).matches(&v));
        assert!(f(&["name=data", "name=zzz"]).matches(&v));
        assert!(!f(&["name=zzz"]).matches(&v));
        assert!(f(&["label=app", "label=app=web"]).matches(&v));
        assert!(!f(&["label=app=db"]).matches(&v));
        assert!(!f(&["label=other"]).matches(&v));
        assert!(!f(&["driver=nfs"]).matches(&v));
        assert_eq!(f(&["dangling=true"]).dangling, Some(true));
        assert!(LsFilter::parse(&["dangling=maybe".into()]).is_err());
        assert!(LsFilter::parse(&["bogus=1".into()]).is_err());
        assert!(LsFilter::parse(&["noequals".into()]).is_err());
    }

    #[test]
    fn prune_like_docker() {
        let r = VolumePruneReport {
            volumes_deleted: vec!["a".into()],
            space_reclaimed: 0,
        };
        assert_eq!(
            prune_output(&r),
            "Deleted Volumes:\na\n\nTotal reclaimed space: 0B\n"
        );
    }
}
