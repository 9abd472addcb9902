//! cgroup v1: each controller is its own hierarchy, so the container gets a
//! directory `<mount>/<parent>/<id>` in every controller it uses. Turns the
//! spec's resources into v1 control-file writes (`memory.limit_in_bytes`,
//! `cpu.cfs_quota_us`, `blkio.throttle.*`, ...), makes the directories
//! (seeding a new cpuset from its parent, as the kernel leaves it empty),
//! and reads usage.
//!
//! Called by the `Manager` (mod.rs); calls only [`CgroupFs`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use oci_spec::runtime::LinuxResources;

use super::{
    BlkioEntry, CgroupFs, Error, Manager, Result, Stats, Write, check_blkio_weight, create_new_dir,
    device, ensure_dir, memory_limits, note_unapplied,
};

/// The controllers a container always joins when the host has them
/// (memory for limits and OOM detection, cpu and cpuacct for limits and
/// usage, pids, blkio). `cpuset` is joined only when the spec pins cpus or
/// memory nodes.
pub(super) const CONTROLLERS: &[&str] = &["blkio", "cpu", "cpuacct", "cpuset", "memory", "pids"];

/// The v1 writes for `resources`, in the order they must happen.
pub(super) fn plan(resources: &LinuxResources) -> Result<Vec<Write>> {
    note_unapplied(resources);
    if resources.unified().as_ref().is_some_and(|u| !u.is_empty()) {
        return Err(Error::Unsupported {
            setting: "unified".into(),
            detail: "cgroup v2 settings on a cgroup v1 host".into(),
        });
    }
    let mut out = Vec::new();
    let (limit, swap) = memory_limits(resources)?;
    if let Some(memory) = resources.memory() {
        // A new cgroup is unlimited, so the memory limit goes first and
        // memsw (which must stay >= it) second.
        if let Some(l) = limit {
            out.push(Write::new("memory", "memory.limit_in_bytes", l));
        }
        if let Some(s) = swap {
            // Without swap accounting the kernel has no memsw files; docker
            // then drops the swap limit with a warning, and so does wharf.
            out.push(Write::new("memory", "memory.memsw.limit_in_bytes", s).optional());
        }
        if let Some(r) = memory.reservation() {
            out.push(Write::new("memory", "memory.soft_limit_in_bytes", r));
        }
        if let Some(s) = memory.swappiness() {
            if s > 100 {
                return Err(Error::InvalidResource {
                    setting: "memory.swappiness".into(),
                    reason: format!("{s} is above 100"),
                });
            }
            out.push(Write::new("memory", "memory.swappiness", s));
        }
        if memory.disable_oom_killer() == Some(true) {
            out.push(Write::new("memory", "memory.oom_control", 1));
        }
    }
    if let Some(cpu) = resources.cpu() {
        if let Some(shares) = cpu.shares().filter(|s| *s != 0) {
            out.push(Write::new("cpu", "cpu.shares", shares));
        }
        // Period before quota, as runc does (the kernel checks the quota
        // against the period in force).
        if let Some(period) = cpu.period().filter(|p| *p != 0) {
            out.push(Write::new("cpu", "cpu.cfs_period_us", period));
        }
        if let Some(quota) = cpu.quota().filter(|q| *q != 0) {
            out.push(Write::new("cpu", "cpu.cfs_quota_us", quota));
        }
        if let Some(burst) = cpu.burst() {
            out.push(Write::new("cpu", "cpu.cfs_burst_us", burst));
        }
        if let Some(idle) = cpu.idle() {
            out.push(Write::new("cpu", "cpu.idle", idle));
        }
        if let Some(p) = cpu.realtime_period().filter(|p| *p != 0) {
            out.push(Write::new("cpu", "cpu.rt_period_us", p));
        }
        if let Some(r) = cpu.realtime_runtime().filter(|r| *r != 0) {
            out.push(Write::new("cpu", "cpu.rt_runtime_us", r));
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
        if let Some(w) = io.weight() {
            check_blkio_weight("blockIO.weight", w)?;
            // Kernels with BFQ but without CFQ only have the bfq file.
            out.push(Write::new("blkio", "blkio.weight", w).or_file("blkio.bfq.weight", w));
        }
        for dev in io.weight_device().iter().flatten() {
            if let Some(w) = dev.weight() {
                check_blkio_weight("blockIO.weightDevice", w)?;
                let value = format!("{}:{} {w}", dev.major(), dev.minor());
                out.push(
                    Write::new("blkio", "blkio.weight_device", &value)
                        .or_file("blkio.bfq.weight_device", &value),
                );
            }
        }
        let throttles = [
            (
                "blkio.throttle.read_bps_device",
                io.throttle_read_bps_device(),
            ),
            (
                "blkio.throttle.write_bps_device",
                io.throttle_write_bps_device(),
            ),
            (
                "blkio.throttle.read_iops_device",
                io.throttle_read_iops_device(),
            ),
            (
                "blkio.throttle.write_iops_device",
                io.throttle_write_iops_device(),
            ),
        ];
        for (file, devices) in throttles {
            for dev in devices.iter().flatten() {
                let value = format!("{}:{} {}", dev.major(), dev.minor(), dev.rate());
                out.push(Write::new("blkio", file, value));
            }
        }
    }
    Ok(out)
}

/// Makes `<mount>/<parent>/<id>` in every controller the container joins;
/// returns controller -> directory. Undoes its own directories on error.
pub(super) fn create(
    fs: &dyn CgroupFs,
    mounts: &BTreeMap<String, PathBuf>,
    parent: &str,
    id: &str,
    writes: &[Write],
) -> Result<BTreeMap<String, PathBuf>> {
    let needs_cpuset = writes.iter().any(|w| w.controller == "cpuset");
    for w in writes {
        if !mounts.contains_key(w.controller) {
            return Err(Error::Unsupported {
                setting: w.file.clone(),
                detail: format!("the {} controller is not mounted", w.controller),
            });
        }
    }
    let mut dirs = BTreeMap::new();
    let mut made: Vec<PathBuf> = Vec::new();
    let result = (|| {
        for name in CONTROLLERS {
            if *name == "cpuset" && !needs_cpuset {
                continue;
            }
            let Some(mount) = mounts.get(*name) else {
                continue;
            };
            let dir = mount.join(parent).join(id);
            // Co-mounted controllers (cpu,cpuacct) share one directory.
            if !made.contains(&dir) {
                let parent_dir = mount.join(parent);
                if ensure_dir(fs, &parent_dir)? && *name == "cpuset" {
                    seed_cpuset(fs, mount, &parent_dir)?;
                }
                create_new_dir(fs, &dir)?;
                made.push(dir.clone());
                if *name == "cpuset" {
                    seed_cpuset(fs, &parent_dir, &dir)?;
                }
            }
            dirs.insert(name.to_string(), dir);
        }
        Ok(())
    })();
    match result {
        Ok(()) => Ok(dirs),
        Err(e) => {
            for dir in made.iter().rev() {
                let _ = fs.remove_dir(dir);
            }
            Err(e)
        }
    }
}

/// A new v1 cpuset starts with no cpus and no memory nodes, and no task
/// can join it until both are set: copy the parent's.
fn seed_cpuset(fs: &dyn CgroupFs, from: &Path, to: &Path) -> Result<()> {
    for file in ["cpuset.cpus", "cpuset.mems"] {
        let target = to.join(file);
        let current = fs.read(&target).map_err(|source| Error::Read {
            path: target.clone(),
            source,
        })?;
        if !current.trim().is_empty() {
            continue;
        }
        let source_path = from.join(file);
        let value = fs.read(&source_path).map_err(|source| Error::Read {
            path: source_path,
            source,
        })?;
        let value = value.trim();
        fs.write(&target, value).map_err(|source| Error::Write {
            path: target,
            value: value.to_string(),
            source,
        })?;
    }
    Ok(())
}

/// The block-io statistics files, in the order runc tries them: CFQ's,
/// BFQ's (blk-mq kernels without CFQ), then the throttle layer's, which
/// every kernel has but which misses I/O merged below it. The first one
/// with a device line wins.
const BLKIO_FILES: &[&str] = &[
    "blkio.io_service_bytes_recursive",
    "blkio.bfq.io_service_bytes_recursive",
    "blkio.throttle.io_service_bytes_recursive",
];

/// Usage from `memory.usage_in_bytes`, `memory.limit_in_bytes`,
/// `memory.stat`, `cpuacct.usage`, `pids.current` and the blkio
/// `io_service_bytes_recursive` files.
pub(super) fn stats(m: &Manager, dirs: &BTreeMap<String, PathBuf>) -> Result<Stats> {
    let mut stats = Stats::default();
    if let Some(dir) = dirs.get("memory") {
        stats.memory_usage = m.read_number(&dir.join("memory.usage_in_bytes"))?;
        // v1 reports "unlimited" as a huge page-aligned number.
        stats.memory_limit = m
            .read_number(&dir.join("memory.limit_in_bytes"))?
            .filter(|l| *l < (1 << 62));
        stats.memory_stat = m.read_flat(&dir.join("memory.stat"))?;
    }
    if let Some(dir) = dirs.get("cpuacct") {
        stats.cpu_usage_ns = m.read_number(&dir.join("cpuacct.usage"))?;
    }
    if let Some(dir) = dirs.get("pids") {
        stats.pids_current = m.read_number(&dir.join("pids.current"))?;
    }
    if let Some(dir) = dirs.get("blkio") {
        for file in BLKIO_FILES {
            if let Some(text) = m.read_optional(&dir.join(file))? {
                stats.blkio = parse_blkio(&text);
                if !stats.blkio.is_empty() {
                    break;
                }
            }
        }
    }
    Ok(stats)
}

/// Lines `MAJOR:MINOR Op bytes` (the last line, `Total N`, has no device
/// and is left out).
pub(super) fn parse_blkio(text: &str) -> Vec<BlkioEntry> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let (major, minor) = device(words.next()?)?;
            let op = words.next()?.to_string();
            let value = words.next()?.parse().ok()?;
            Some(BlkioEntry {
                major,
                minor,
                op,
                value,
            })
        })
        .collect()
}
