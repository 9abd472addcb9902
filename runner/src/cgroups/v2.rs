//! cgroup v2: one unified tree, so the container gets the single directory
//! `<root>/<parent>/<id>`. Controllers must be enabled top-down through
//! `cgroup.subtree_control` of the root and of the parent before their
//! files appear in the container's directory. Turns the spec's resources
//! into v2 writes (`memory.max`, `memory.swap.max`, `cpu.max`,
//! `cpu.weight`, `io.max`, ...) with runc's conversions from the v1-shaped
//! values of the spec, and reads usage.
//!
//! Called by the `Manager` (mod.rs); calls only [`CgroupFs`].

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use oci_spec::runtime::LinuxResources;

use super::{
    BlkioEntry, CgroupFs, Error, Manager, Result, Stats, Write, blkio_weight_to_io_weight,
    check_blkio_weight, create_new_dir, device, ensure_dir, memory_limits, note_unapplied,
    shares_to_weight,
};

/// Controllers enabled for the container whenever the host offers them
/// (for limits, usage and OOM events); `cpuset` only when pinned.
const CONTROLLERS: &[&str] = &["cpu", "io", "memory", "pids"];

/// The kernel's default CFS period, written with a quota given alone so
/// `cpu.max` always reads "quota period".
const DEFAULT_PERIOD: u64 = 100_000;

/// The v2 writes for `resources`, in the order they must happen.
pub(super) fn plan(resources: &LinuxResources) -> Result<Vec<Write>> {
    note_unapplied(resources);
    let mut out = Vec::new();
    let (limit, swap) = memory_limits(resources)?;
    if let Some(memory) = resources.memory() {
        if let Some(l) = limit {
            out.push(Write::new("memory", "memory.max", max_or(l)));
        }
        // The spec's swap is memory+swap; v2 limits swap alone.
        let swap_max = match (swap, limit) {
            (Some(-1), _) => Some("max".to_string()),
            (Some(s), Some(l)) => Some((s - l).to_string()),
            // Memory unlimited and swap unset: unlimited swap as well
            // (runc's reading of "both unlimited").
            (None, Some(-1)) => Some("max".to_string()),
            _ => None,
        };
        if let Some(value) = swap_max {
            out.push(Write::new("memory", "memory.swap.max", value).optional());
        }
        if let Some(r) = memory.reservation() {
            out.push(Write::new("memory", "memory.low", max_or(r)));
        }
        if memory.swappiness().is_some() {
            tracing::warn!("memory.swappiness has no cgroup v2 file; not applied");
        }
    }
    if let Some(cpu) = resources.cpu() {
        if let Some(shares) = cpu.shares().filter(|s| *s != 0) {
            out.push(Write::new("cpu", "cpu.weight", shares_to_weight(shares)));
        }
        let quota = cpu.quota().filter(|q| *q != 0);
        let period = cpu.period().filter(|p| *p != 0);
        if quota.is_some() || period.is_some() {
            let quota = match quota {
                Some(q) if q > 0 => q.to_string(),
                _ => "max".to_string(),
            };
            let period = period.unwrap_or(DEFAULT_PERIOD);
            out.push(Write::new("cpu", "cpu.max", format!("{quota} {period}")));
        }
        if let Some(burst) = cpu.burst() {
            out.push(Write::new("cpu", "cpu.max.burst", burst));
        }
        if let Some(idle) = cpu.idle() {
            out.push(Write::new("cpu", "cpu.idle", idle));
        }
        if cpu.realtime_period().is_some_and(|p| p != 0)
            || cpu.realtime_runtime().is_some_and(|r| r != 0)
        {
            return Err(Error::Unsupported {
                setting: "cpu.realtimeRuntime".into(),
                detail: "cgroup v2 has no realtime cpu limits".into(),
            });
        }
        if let Some(cpus) = cpu.cpus().as_deref().filter(|c| !c.is_empty()) {
            out.push(Write::new("cpuset", "cpuset.cpus", cpus));
        }
        if let Some(mems) = cpu.mems().as_deref().filter(|m| !m.is_empty()) {
            out.push(Write::new("cpuset", "cpuset.mems", mems));
        }
    }
    if let Some(pids) = resources.pids() {
        let value = if pids.limit() > 0 {
            pids.limit().to_string()
        } else {
            "max".to_string()
        };
        out.push(Write::new("pids", "pids.max", value));
    }
    if let Some(io) = resources.block_io() {
        // As runc: BFQ's io.bfq.weight takes the v1 range as is; the
        // generic io.weight needs the conversion.
        if let Some(w) = io.weight() {
            check_blkio_weight("blockIO.weight", w)?;
            out.push(
                Write::new("io", "io.bfq.weight", w)
                    .or_file("io.weight", blkio_weight_to_io_weight(w)),
            );
        }
        for dev in io.weight_device().iter().flatten() {
            if let Some(w) = dev.weight() {
                check_blkio_weight("blockIO.weightDevice", w)?;
                let (major, minor) = (dev.major(), dev.minor());
                out.push(
                    Write::new("io", "io.bfq.weight", format!("{major}:{minor} {w}")).or_file(
                        "io.weight",
                        format!("{major}:{minor} {}", blkio_weight_to_io_weight(w)),
                    ),
                );
            }
        }
        let throttles = [
            ("rbps", io.throttle_read_bps_device()),
            ("wbps", io.throttle_write_bps_device()),
            ("riops", io.throttle_read_iops_device()),
            ("wiops", io.throttle_write_iops_device()),
        ];
        for (key, devices) in throttles {
            for dev in devices.iter().flatten() {
                let value = format!("{}:{} {key}={}", dev.major(), dev.minor(), dev.rate());
                out.push(Write::new("io", "io.max", value));
            }
        }
    }
    for (key, value) in resources.unified().iter().flatten() {
        if key.contains('/') || key.starts_with('.') || key.starts_with("cgroup.") {
            return Err(Error::InvalidResource {
                setting: format!("unified.{key}"),
                reason: "not a controller file name".into(),
            });
        }
        let controller = match key.split('.').next().unwrap_or("") {
            "cpu" => "cpu",
            "cpuset" => "cpuset",
            "io" => "io",
            "memory" => "memory",
            "pids" => "pids",
            "hugetlb" => "hugetlb",
            "rdma" => "rdma",
            "misc" => "misc",
            other => {
                return Err(Error::Unsupported {
                    setting: format!("unified.{key}"),
                    detail: format!("unknown controller {other:?}"),
                });
            }
        };
        out.push(Write::new(controller, key, value));
    }
    Ok(out)
}

/// -1 is "max" in v2 files.
fn max_or(value: i64) -> String {
    if value == -1 {
        "max".to_string()
    } else {
        value.to_string()
    }
}

/// Enables the needed controllers from `root` down, makes `<root>/<parent>`
/// when missing and `<root>/<parent>/<id>`. Returns the container's
/// directory; nothing of the container's is left on error.
pub(super) fn create(
    fs: &dyn CgroupFs,
    root: &Path,
    parent: &str,
    id: &str,
    writes: &[Write],
) -> Result<PathBuf> {
    let available = controllers(fs, &root.join("cgroup.controllers"))?;
    let mut wanted: BTreeSet<&str> = CONTROLLERS
        .iter()
        .copied()
        .filter(|c| available.contains(*c))
        .collect();
    for w in writes {
        if !available.contains(w.controller) {
            return Err(Error::Unsupported {
                setting: w.file.clone(),
                detail: format!(
                    "the {} controller is not in {}",
                    w.controller,
                    root.join("cgroup.controllers").display()
                ),
            });
        }
        wanted.insert(w.controller);
    }
    enable(fs, root, &wanted)?;
    let parent_dir = root.join(parent);
    ensure_dir(fs, &parent_dir)?;
    enable(fs, &parent_dir, &wanted)?;
    let dir = parent_dir.join(id);
    create_new_dir(fs, &dir)?;
    Ok(dir)
}

/// The controllers listed in a `cgroup.controllers` or
/// `cgroup.subtree_control` file.
fn controllers(fs: &dyn CgroupFs, path: &Path) -> Result<BTreeSet<String>> {
    let text = fs.read(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(text.split_whitespace().map(str::to_string).collect())
}

/// Enables `wanted` in `dir/cgroup.subtree_control` (those not enabled
/// yet, in one write).
fn enable(fs: &dyn CgroupFs, dir: &Path, wanted: &BTreeSet<&str>) -> Result<()> {
    let path = dir.join("cgroup.subtree_control");
    let enabled = controllers(fs, &path)?;
    let missing: Vec<String> = wanted
        .iter()
        .filter(|c| !enabled.contains(**c))
        .map(|c| format!("+{c}"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let value = missing.join(" ");
    fs.write(&path, &value).map_err(|source| Error::Write {
        path,
        value,
        source,
    })
}

/// Usage from `memory.current`, `memory.max`, `memory.stat`, `cpu.stat`
/// (usage_usec), `pids.current` and `io.stat`.
pub(super) fn stats(m: &Manager, dir: &Path) -> Result<Stats> {
    Ok(Stats {
        memory_usage: m.read_number(&dir.join("memory.current"))?,
        memory_limit: m.read_number(&dir.join("memory.max"))?,
        cpu_usage_ns: m
            .read_keyed(&dir.join("cpu.stat"), "usage_usec")?
            .map(|us| us.saturating_mul(1000)),
        pids_current: m.read_number(&dir.join("pids.current"))?,
        memory_stat: m.read_flat(&dir.join("memory.stat"))?,
        blkio: m
            .read_optional(&dir.join("io.stat"))?
            .map(|text| parse_io_stat(&text))
            .unwrap_or_default(),
    })
}

/// `io.stat` lines `MAJOR:MINOR rbytes=N wbytes=N rios=N ...` as docker
/// reports them on v2: one `read` and one `write` entry per device.
pub(super) fn parse_io_stat(text: &str) -> Vec<BlkioEntry> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let Some((major, minor)) = words.next().and_then(device) else {
            continue;
        };
        for word in words {
            let op = match word.split_once('=') {
                Some(("rbytes", v)) => ("read", v),
                Some(("wbytes", v)) => ("write", v),
                _ => continue,
            };
            if let Ok(value) = op.1.parse() {
                out.push(BlkioEntry {
                    major,
                    minor,
                    op: op.0.to_string(),
                    value,
                });
            }
        }
    }
    out
}
