//! `GET /containers/{id}/stats`: one reading of a container's resource
//! usage in docker's stats JSON, or a stream of them every second.
//!
//! A reading takes the container's cgroup figures (cpu time, memory and
//! its `memory.stat`, pids, block io; see `cgroups::Manager::stats`), the
//! host's cpu time from `/proc/stat` (docker's `system_cpu_usage`: user to
//! softirq, in nanoseconds), the online cpus, the host's memory (the limit
//! shown for a container without one, as docker does) and the interface
//! counters of the container's network namespace from
//! `/proc/<pid>/net/dev` (read through its PID 1, so they are the
//! container's own view: no rx/tx swap as with the host end of a veth).
//! CPU % is left to the client, from the reading and the one before it
//! (`precpu_stats`), as docker leaves it.
//!
//! Called by `http`; calls `containers` (to resolve the container) and
//! `cgroups`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::containers::{Containers, StatsTarget};
use super::error::Result;
use crate::api::{
    BlkioStatEntry, BlkioStats, CpuStats, CpuUsage, MemoryStats, NetworkStats, PidsStats, StatsJson,
};

/// Between two readings of a stream.
const INTERVAL: Duration = Duration::from_secs(1);
/// Between the two readings of a single answer (its `precpu_stats` and
/// its own).
const PRIME: Duration = Duration::from_millis(500);
/// docker's "no time" for a container that is not running.
const ZERO_TIME: &str = "0001-01-01T00:00:00Z";
/// Host files are read up to this many bytes (they are a few KiB).
const MAX_PROC_FILE: u64 = 1024 * 1024;

/// One answer: two readings [`PRIME`] apart (the first as precpu), or
/// with `one_shot` a single reading without precpu.
pub async fn once(containers: &Containers, name: &str, one_shot: bool) -> Result<StatsJson> {
    let target = containers.stats_target(name).await?;
    if one_shot {
        return Ok(read(target).await);
    }
    let id = target.id.clone();
    let first = read(target).await;
    tokio::time::sleep(PRIME).await;
    let second = read(containers.stats_target(&id).await?).await;
    Ok(with_previous(second, &first))
}

/// A stream of NDJSON readings, one every [`INTERVAL`], each with the one
/// before as precpu (the first after [`PRIME`]). It ends when the client
/// goes away or the container is removed. A missing container is an error
/// before the stream starts.
pub async fn stream(containers: Arc<Containers>, name: &str) -> Result<mpsc::Receiver<Bytes>> {
    let target = containers.stats_target(name).await?;
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    tokio::spawn(async move {
        let id = target.id.clone();
        let mut previous = read(target).await;
        let mut wait = PRIME;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = tx.closed() => return,
            }
            wait = INTERVAL;
            let Ok(target) = containers.stats_target(&id).await else {
                return;
            };
            let current = read(target).await;
            let out = with_previous(current.clone(), &previous);
            let mut line = match serde_json::to_vec(&out) {
                Ok(line) => line,
                Err(e) => {
                    tracing::warn!(container = %id, error = %e, "encoding stats");
                    return;
                }
            };
            line.push(b'\n');
            if tx.send(Bytes::from(line)).await.is_err() {
                return;
            }
            previous = current;
        }
    });
    Ok(rx)
}

/// `current` with `previous`'s cpu figures as its precpu.
fn with_previous(mut current: StatsJson, previous: &StatsJson) -> StatsJson {
    current.precpu_stats = previous.cpu_stats.clone();
    current.preread = previous.read.clone();
    current
}

/// One reading (file reads on a blocking thread). A container that is not
/// running reads as zeros, as docker's do.
async fn read(target: StatsTarget) -> StatsJson {
    match tokio::task::spawn_blocking(move || sample(&target)).await {
        Ok(stats) => stats,
        Err(e) => {
            tracing::warn!(error = %e, "stats reading failed");
            StatsJson::default()
        }
    }
}

fn sample(target: &StatsTarget) -> StatsJson {
    let mut out = StatsJson {
        name: format!("/{}", target.name),
        id: target.id.clone(),
        read: ZERO_TIME.into(),
        preread: ZERO_TIME.into(),
        ..StatsJson::default()
    };
    let (Some(pid), Some(cgroup)) = (target.pid, &target.cgroup) else {
        return out;
    };
    out.read = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    // A container that stops between the lookup and the reads loses its
    // files: what could not be read stays empty.
    let stats = match cgroup.stats() {
        Ok(stats) => stats,
        Err(e) => {
            tracing::debug!(container = %target.id, error = %e, "reading the cgroup");
            Default::default()
        }
    };
    out.cpu_stats = CpuStats {
        cpu_usage: CpuUsage {
            total_usage: stats.cpu_usage_ns.unwrap_or(0),
            percpu_usage: None,
        },
        system_cpu_usage: read_proc("/proc/stat").and_then(|t| system_cpu_usage(&t)),
        online_cpus: online_cpus(),
    };
    let host_memory = read_proc("/proc/meminfo").and_then(|t| mem_total(&t));
    out.memory_stats = MemoryStats {
        usage: stats.memory_usage,
        limit: match (stats.memory_limit, host_memory) {
            (Some(l), Some(h)) => Some(l.min(h)),
            (l, h) => l.or(h),
        },
        stats: Some(stats.memory_stat),
    };
    out.pids_stats = PidsStats {
        current: stats.pids_current,
    };
    out.blkio_stats = BlkioStats {
        io_service_bytes_recursive: Some(
            stats
                .blkio
                .into_iter()
                .map(|e| BlkioStatEntry {
                    major: e.major,
                    minor: e.minor,
                    op: e.op,
                    value: e.value,
                })
                .collect(),
        ),
    };
    out.networks = networks(pid);
    out
}

/// The interfaces of `pid`'s network namespace but `lo`; `None` when it
/// is the host's own (`--network host`: docker shows no network there).
fn networks(pid: i32) -> Option<BTreeMap<String, NetworkStats>> {
    use std::os::unix::fs::MetadataExt;
    let theirs = std::fs::metadata(format!("/proc/{pid}/ns/net")).ok()?;
    let ours = std::fs::metadata("/proc/self/ns/net").ok()?;
    if (theirs.dev(), theirs.ino()) == (ours.dev(), ours.ino()) {
        return None;
    }
    let text = read_proc(&format!("/proc/{pid}/net/dev"))?;
    Some(net_dev(&text))
}

/// A small file of /proc, bounded; `None` when unreadable.
fn read_proc(path: &str) -> Option<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)
        .ok()?
        .take(MAX_PROC_FILE)
        .read_to_string(&mut text)
        .ok()?;
    Some(text)
}

/// docker's online cpus: `sysconf(_SC_NPROCESSORS_ONLN)`.
fn online_cpus() -> Option<u32> {
    nix::unistd::sysconf(nix::unistd::SysconfVar::_NPROCESSORS_ONLN)
        .ok()
        .flatten()
        .and_then(|n| u32::try_from(n).ok())
}

/// docker's `system_cpu_usage`: the first seven fields of `/proc/stat`'s
/// `cpu` line (user, nice, system, idle, iowait, irq, softirq), clock
/// ticks (USER_HZ, 100 on Linux) turned into nanoseconds.
fn system_cpu_usage(proc_stat: &str) -> Option<u64> {
    const NANOS_PER_TICK: u64 = 1_000_000_000 / 100;
    let line = proc_stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some("cpu"))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(7)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    if fields.len() < 7 {
        return None;
    }
    Some(fields.iter().sum::<u64>().saturating_mul(NANOS_PER_TICK))
}

/// `MemTotal` of `/proc/meminfo`, in bytes.
fn mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut words = line.split_whitespace().skip(1);
    let value: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => value.checked_mul(1024),
        None => Some(value),
        Some(_) => None,
    }
}

/// `/proc/<pid>/net/dev`: per interface but `lo`, receive bytes, packets,
/// errs, drop (fields 1-4) and transmit bytes, packets, errs, drop
/// (fields 9-12).
fn net_dev(text: &str) -> BTreeMap<String, NetworkStats> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some((name, counters)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        if name == "lo" || name.is_empty() || name.contains('|') {
            continue;
        }
        let n: Vec<u64> = counters
            .split_whitespace()
            .map_while(|w| w.parse().ok())
            .collect();
        if n.len() < 12 {
            continue;
        }
        out.insert(
            name.to_string(),
            NetworkStats {
                rx_bytes: n[0],
                rx_packets: n[1],
                rx_errors: n[2],
                rx_dropped: n[3],
                tx_bytes: n[8],
                tx_packets: n[9],
                tx_errors: n[10],
                tx_dropped: n[11],
            },
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_cpu_usage_sums_user_to_softirq_in_nanoseconds() {
        let text = "cpu  100 20 30 1000 5 1 2 7 0 0\ncpu0 50 10 15 500 2 1 1 3 0 0\n";
        // 100+20+30+1000+5+1+2 ticks, steal (7) left out as docker does.
        assert_eq!(system_cpu_usage(text), Some(1158 * 10_000_000));
        assert_eq!(system_cpu_usage("cpu0 1 2 3 4 5 6 7\n"), None);
        assert_eq!(system_cpu_usage("cpu 1 2 3\n"), None);
    }

    #[test]
    fn mem_total_is_in_bytes() {
        let text = "MemTotal:        4015852 kB\nMemFree:          123 kB\n";
        assert_eq!(mem_total(text), Some(4_015_852 * 1024));
        assert_eq!(mem_total("MemFree: 1 kB\n"), None);
    }

    #[test]
    fn net_dev_skips_lo_and_headers() {
        let text = "Inter-|   Receive                                                |  Transmit\n \
             face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
             lo:     100       1    0    0    0     0          0         0      100       1    0    0    0     0       0          0\n  \
             eth0:    1296      16    1    2    0     0          0         0      846       9    3    4    0     0       0          0\n";
        let map = net_dev(text);
        assert_eq!(map.len(), 1);
        let eth0 = &map["eth0"];
        assert_eq!(
            (
                eth0.rx_bytes,
                eth0.rx_packets,
                eth0.rx_errors,
                eth0.rx_dropped
            ),
            (1296, 16, 1, 2)
        );
        assert_eq!(
            (
                eth0.tx_bytes,
                eth0.tx_packets,
                eth0.tx_errors,
                eth0.tx_dropped
            ),
            (846, 9, 3, 4)
        );
    }

    #[test]
    fn a_stopped_container_reads_as_zeros() {
        let stats = sample(&StatsTarget {
            id: "abc".into(),
            name: "web".into(),
            pid: None,
            cgroup: None,
        });
        assert_eq!(stats.name, "/web");
        assert_eq!(stats.read, ZERO_TIME);
        assert_eq!(stats.cpu_stats, CpuStats::default());
        assert_eq!(stats.memory_stats, MemoryStats::default());
        assert!(stats.networks.is_none());
    }

    #[test]
    fn precpu_comes_from_the_previous_reading() {
        let mut first = StatsJson {
            read: "t1".into(),
            ..StatsJson::default()
        };
        first.cpu_stats.cpu_usage.total_usage = 5;
        let mut second = StatsJson {
            read: "t2".into(),
            ..StatsJson::default()
        };
        second.cpu_stats.cpu_usage.total_usage = 9;
        let out = with_previous(second, &first);
        assert_eq!(out.precpu_stats.cpu_usage.total_usage, 5);
        assert_eq!(out.cpu_stats.cpu_usage.total_usage, 9);
        assert_eq!(out.preread, "t1");
    }

    #[test]
    fn this_host_has_cpu_time_and_cpus() {
        let text = read_proc("/proc/stat").unwrap();
        assert!(system_cpu_usage(&text).unwrap() > 0);
        assert!(online_cpus().unwrap() >= 1);
        assert!(mem_total(&read_proc("/proc/meminfo").unwrap()).unwrap() > 0);
    }
}
