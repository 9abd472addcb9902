//! `stats [--no-stream] [--no-trunc] [-a] [--format T] [CONTAINER...]`:
//! docker's live table of each container's CPU %, memory usage / limit,
//! memory %, network and block I/O and pids.
//!
//! The daemon sends docker's stats JSON (`GET /containers/{id}/stats`, see
//! `api::StatsJson`); the figures are computed here exactly as the docker
//! CLI computes them (CPU % from the container's and the host's cpu time
//! deltas against the previous reading, memory without the inactive file
//! cache, block I/O summed over devices) and printed with go-units' sizes
//! (`BytesSize` for memory, 3-digit `HumanSizeWithPrecision` for I/O).
//! With `--no-stream` one reading per container is printed; otherwise one
//! stream per container feeds a table redrawn every second (the screen
//! cleared first on a terminal, blocks one after another otherwise) until
//! interrupted; without container arguments the set of containers is
//! listed again at each redraw, so new ones appear and stopped ones go
//! (unless `-a`).
//!
//! Called by `cli::dispatch`; calls `client`, `format`, `api`.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Args;
use hyper::Method;
use serde_json::{Value, json};

use super::client::{Client, Error, Lines, encode};
use super::format::ListFormat;
use crate::api::{ContainerSummary, MemoryStats, StatsJson};

/// docker's default `stats` format.
const DEFAULT_FORMAT: &str = "table {{.ID}}\t{{.Name}}\t{{.CPUPerc}}\t{{.MemUsage}}\t{{.MemPerc}}\t{{.NetIO}}\t{{.BlockIO}}\t{{.PIDs}}";
/// Between two redraws.
const REDRAW: Duration = Duration::from_secs(1);
/// How long the first draw waits for every container's first reading.
const FIRST_WAIT: Duration = Duration::from_secs(3);

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Show all containers (default shows just running)
    #[arg(short, long)]
    pub all: bool,
    /// Format output using a custom template ('table', 'table TEMPLATE', 'json' or a Go template)
    #[arg(long)]
    pub format: Option<String>,
    /// Disable streaming stats and only pull the first result
    #[arg(long)]
    pub no_stream: bool,
    /// Do not truncate output
    #[arg(long)]
    pub no_trunc: bool,
    #[arg(value_name = "CONTAINER")]
    pub containers: Vec<String>,
}

/// docker's `StatsEntry`: one container's figures, as printed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Entry {
    /// What the user named it by (or its id when listed).
    pub container: String,
    /// Without docker's leading `/`.
    pub name: String,
    pub id: String,
    pub cpu_percentage: f64,
    pub memory: f64,
    pub memory_limit: f64,
    pub memory_percentage: f64,
    pub network_rx: f64,
    pub network_tx: f64,
    pub block_read: f64,
    pub block_write: f64,
    pub pids_current: u64,
    /// The container went away: every figure shows as `--`.
    pub is_invalid: bool,
}

impl Entry {
    /// The entry of one reading, computed the docker CLI's way.
    pub fn from_stats(container: &str, v: &StatsJson) -> Entry {
        let mem = mem_usage_no_cache(&v.memory_stats);
        let limit = v.memory_stats.limit.unwrap_or(0) as f64;
        let (block_read, block_write) = block_io(v);
        let (network_rx, network_tx) = v
            .networks
            .iter()
            .flat_map(|n| n.values())
            .fold((0.0, 0.0), |(rx, tx), n| {
                (rx + n.rx_bytes as f64, tx + n.tx_bytes as f64)
            });
        Entry {
            container: container.to_string(),
            name: v.name.strip_prefix('/').unwrap_or(&v.name).to_string(),
            id: v.id.clone(),
            cpu_percentage: cpu_percent(v),
            memory: mem,
            memory_limit: limit,
            memory_percentage: if limit != 0.0 {
                mem / limit * 100.0
            } else {
                0.0
            },
            network_rx,
            network_tx,
            block_read,
            block_write,
            pids_current: v.pids_stats.current.unwrap_or(0),
            is_invalid: false,
        }
    }

    /// The fields a `--format` template sees, as docker's `statsContext`
    /// renders them.
    pub fn fields(&self, trunc: bool) -> Value {
        let invalid = |s: String| if self.is_invalid { "--".into() } else { s };
        let name = if self.name.is_empty() {
            "--".to_string()
        } else {
            self.name.clone()
        };
        let id = if trunc {
            self.id.chars().take(12).collect()
        } else {
            self.id.clone()
        };
        json!({
            "Container": self.container,
            "Name": name,
            "ID": id,
            "CPUPerc": invalid(format!("{:.2}%", self.cpu_percentage)),
            "MemUsage": if self.is_invalid {
                "-- / --".to_string()
            } else {
                format!("{} / {}", bytes_size(self.memory), bytes_size(self.memory_limit))
            },
            "MemPerc": invalid(format!("{:.2}%", self.memory_percentage)),
            "NetIO": invalid(format!(
                "{} / {}",
                human_size3(self.network_rx),
                human_size3(self.network_tx)
            )),
            "BlockIO": invalid(format!(
                "{} / {}",
                human_size3(self.block_read),
                human_size3(self.block_write)
            )),
            "PIDs": invalid(self.pids_current.to_string()),
        })
    }
}

/// docker's `calculateCPUPercentUnix`: the container's cpu time over the
/// host's since the previous reading, times the online cpus, in percent.
fn cpu_percent(v: &StatsJson) -> f64 {
    let cpu_delta =
        v.cpu_stats.cpu_usage.total_usage as f64 - v.precpu_stats.cpu_usage.total_usage as f64;
    let system_delta = v.cpu_stats.system_cpu_usage.unwrap_or(0) as f64
        - v.precpu_stats.system_cpu_usage.unwrap_or(0) as f64;
    let online = match v.cpu_stats.online_cpus.unwrap_or(0) {
        0 => v
            .cpu_stats
            .cpu_usage
            .percpu_usage
            .as_ref()
            .map_or(0, Vec::len) as f64,
        n => f64::from(n),
    };
    if system_delta > 0.0 && cpu_delta > 0.0 {
        cpu_delta / system_delta * online * 100.0
    } else {
        0.0
    }
}

/// docker's `calculateMemUsageUnixNoCache`: usage without the inactive
/// file cache (`total_inactive_file` on v1, `inactive_file` on v2).
fn mem_usage_no_cache(mem: &MemoryStats) -> f64 {
    let usage = mem.usage.unwrap_or(0);
    let stat = |key: &str| mem.stats.as_ref().and_then(|s| s.get(key)).copied();
    if let Some(v) = stat("total_inactive_file")
        && v < usage
    {
        return (usage - v) as f64;
    }
    let v = stat("inactive_file").unwrap_or(0);
    if v < usage {
        return (usage - v) as f64;
    }
    usage as f64
}

/// docker's `calculateBlockIO`: bytes of `read` and `write` ops over all
/// devices (case-insensitive: v1 says `Read`).
fn block_io(v: &StatsJson) -> (f64, f64) {
    let mut read = 0.0;
    let mut write = 0.0;
    for e in v.blkio_stats.io_service_bytes_recursive.iter().flatten() {
        match e.op.to_ascii_lowercase().as_str() {
            "read" => read += e.value as f64,
            "write" => write += e.value as f64,
            _ => {}
        }
    }
    (read, write)
}

/// go-units' `BytesSize`: binary units, `%.4g` ("1.234MiB", "64MiB").
pub fn bytes_size(size: f64) -> String {
    custom_size(
        size,
        4,
        1024.0,
        &["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB"],
    )
}

/// go-units' `HumanSizeWithPrecision(size, 3)`: decimal units, `%.3g`
/// ("1.05kB", "0B", and Go's "1e+03kB" for 999.5 kB).
pub fn human_size3(size: f64) -> String {
    custom_size(
        size,
        3,
        1000.0,
        &["B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB"],
    )
}

fn custom_size(mut size: f64, precision: usize, base: f64, units: &[&str]) -> String {
    let mut i = 0;
    while size >= base && i + 1 < units.len() {
        size /= base;
        i += 1;
    }
    format!("{}{}", go_g(size, precision), units[i])
}

/// Go's `%.{precision}g`: `precision` significant digits, exponent form
/// when the exponent is below -4 or at least the precision, trailing
/// zeros removed.
pub fn go_g(v: f64, precision: usize) -> String {
    if v == 0.0 || !v.is_finite() {
        return if v.is_finite() {
            "0".into()
        } else {
            v.to_string()
        };
    }
    let precision = precision.max(1);
    let sci = format!("{:.*e}", precision - 1, v);
    let Some((mantissa, exp)) = sci.split_once('e') else {
        return sci;
    };
    let exp: i32 = exp.parse().unwrap_or(0);
    let trim = |s: &str| -> String {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s.to_string()
        }
    };
    if exp < -4 || exp >= precision as i32 {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{}e{sign}{:02}", trim(mantissa), exp.abs())
    } else {
        let decimals = (precision as i32 - 1 - exp).max(0) as usize;
        trim(&format!("{v:.decimals$}"))
    }
}

/// `stats --format`: docker's `table` prefix or a line template, over
/// each entry's [`Entry::fields`].
#[derive(Debug)]
pub struct StatsFormat(ListFormat);

impl StatsFormat {
    pub fn parse(format: Option<&str>) -> Result<StatsFormat, String> {
        ListFormat::parse(format, DEFAULT_FORMAT).map(StatsFormat)
    }

    /// The whole block for `entries`.
    pub fn render(&self, entries: &[Entry], trunc: bool) -> String {
        let header = json!({
            "Container": "CONTAINER",
            "Name": "NAME",
            "ID": "CONTAINER ID",
            "CPUPerc": "CPU %",
            "MemUsage": "MEM USAGE / LIMIT",
            "MemPerc": "MEM %",
            "NetIO": "NET I/O",
            "BlockIO": "BLOCK I/O",
            "PIDs": "PIDS",
        });
        let rows: Vec<Value> = entries.iter().map(|e| e.fields(trunc)).collect();
        self.0.render(&header, &rows)
    }
}

/// `stats`.
pub async fn stats(client: &Client, args: StatsArgs) -> Result<i32, Error> {
    let format = StatsFormat::parse(args.format.as_deref()).map_err(Error::Message)?;
    let trunc = !args.no_trunc;
    if args.no_stream {
        let entries = once(client, &args).await?;
        print_block(&format.render(&entries, trunc), false);
        return Ok(0);
    }
    stream(client, &args, &format, trunc).await
}

/// The running (or with `-a` all) containers, newest first: (id, name).
async fn listed(client: &Client, all: bool) -> Result<Vec<(String, String)>, Error> {
    let mut list: Vec<ContainerSummary> = client
        .json(
            Method::GET,
            &format!("/containers/json?all={all}"),
            None::<&()>,
        )
        .await?;
    list.sort_by_key(|c| std::cmp::Reverse(c.created));
    Ok(list.into_iter().map(|c| (c.id, c.name)).collect())
}

/// `--no-stream`: one reading of each container, asked for all at once.
async fn once(client: &Client, args: &StatsArgs) -> Result<Vec<Entry>, Error> {
    let explicit = !args.containers.is_empty();
    let names: Vec<(String, String)> = if explicit {
        args.containers
            .iter()
            .map(|c| (c.clone(), c.clone()))
            .collect()
    } else {
        listed(client, args.all).await?
    };
    let readings = futures::future::join_all(names.iter().map(|(key, _)| async move {
        let path = format!("/containers/{}/stats?stream=false", encode(key));
        client
            .json::<StatsJson>(Method::GET, &path, None::<&()>)
            .await
    }))
    .await;
    let mut entries = Vec::new();
    let mut errors = Vec::new();
    for ((key, name), reading) in names.iter().zip(readings) {
        match reading {
            Ok(v) => entries.push(Entry::from_stats(key, &v)),
            Err(e @ Error::Connect(_)) => return Err(e),
            // A listed container removed meanwhile: shown as gone.
            Err(_) if !explicit => entries.push(gone(key, name)),
            Err(e) => errors.push(e.to_string()),
        }
    }
    if !errors.is_empty() {
        return Err(Error::Message(errors.join("\n")));
    }
    Ok(entries)
}

fn gone(key: &str, name: &str) -> Entry {
    Entry {
        container: key.to_string(),
        name: name.to_string(),
        id: key.to_string(),
        is_invalid: true,
        ..Entry::default()
    }
}

/// The entries being streamed, in display order; `None` until the first
/// reading arrives.
type Shared = Arc<Mutex<Vec<Slot>>>;

struct Slot {
    key: String,
    entry: Entry,
    received: bool,
    task: tokio::task::JoinHandle<()>,
}

/// Opens one container's stream (a missing container fails here) and
/// starts the task that keeps its slot up to date.
async fn watch(client: &Client, key: &str, name: &str, shared: &Shared) -> Result<(), Error> {
    let path = format!("/containers/{}/stats?stream=true", encode(key));
    let response = client.send(Method::GET, &path, None).await?;
    let task_shared = shared.clone();
    let task_key = key.to_string();
    let task = tokio::spawn(async move {
        let mut lines = Lines::new(response.into_body());
        loop {
            let update = match lines.next_line().await {
                Ok(Some(line)) => match serde_json::from_slice::<StatsJson>(&line) {
                    Ok(v) => Some(Entry::from_stats(&task_key, &v)),
                    Err(_) => continue,
                },
                Ok(None) | Err(_) => None,
            };
            let mut slots = task_shared.lock().unwrap_or_else(|p| p.into_inner());
            let Some(slot) = slots.iter_mut().find(|s| s.key == task_key) else {
                return;
            };
            slot.received = true;
            match update {
                Some(entry) => slot.entry = entry,
                None => {
                    slot.entry.is_invalid = true;
                    return;
                }
            }
        }
    });
    let mut slots = shared.lock().unwrap_or_else(|p| p.into_inner());
    slots.push(Slot {
        key: key.to_string(),
        entry: Entry {
            container: key.to_string(),
            name: name.to_string(),
            id: key.to_string(),
            ..Entry::default()
        },
        received: false,
        task,
    });
    Ok(())
}

async fn stream(
    client: &Client,
    args: &StatsArgs,
    format: &StatsFormat,
    trunc: bool,
) -> Result<i32, Error> {
    let shared: Shared = Arc::new(Mutex::new(Vec::new()));
    let explicit = !args.containers.is_empty();
    if explicit {
        let opened =
            futures::future::join_all(args.containers.iter().map(|c| watch(client, c, c, &shared)))
                .await;
        let mut errors = Vec::new();
        for result in opened {
            match result {
                Ok(()) => {}
                Err(e @ Error::Connect(_)) => return Err(e),
                Err(e) => errors.push(e.to_string()),
            }
        }
        if !errors.is_empty() {
            for slot in shared.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                slot.task.abort();
            }
            return Err(Error::Message(errors.join("\n")));
        }
        // Keep the order the user gave.
        let mut slots = shared.lock().unwrap_or_else(|p| p.into_inner());
        slots.sort_by_key(|s| args.containers.iter().position(|c| *c == s.key));
    } else {
        refresh(client, args.all, &shared).await?;
    }
    let terminal = std::io::stdout().is_terminal();
    // The first draw waits for every container's first reading.
    let start = tokio::time::Instant::now();
    while start.elapsed() < FIRST_WAIT {
        let ready = shared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .all(|s| s.received);
        if ready {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    loop {
        let entries: Vec<Entry> = shared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|s| s.entry.clone())
            .collect();
        if !print_block(&format.render(&entries, trunc), terminal) {
            return Ok(0);
        }
        tokio::time::sleep(REDRAW).await;
        if !explicit {
            refresh(client, args.all, &shared).await?;
        }
    }
}

/// Listing mode: streams for containers that appeared, none for those
/// that are no longer listed.
async fn refresh(client: &Client, all: bool, shared: &Shared) -> Result<(), Error> {
    let list = listed(client, all).await?;
    {
        let mut slots = shared.lock().unwrap_or_else(|p| p.into_inner());
        slots.retain(|s| {
            let keep = list.iter().any(|(id, _)| *id == s.key);
            if !keep {
                s.task.abort();
            }
            keep
        });
    }
    let known: Vec<String> = shared
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|s| s.key.clone())
        .collect();
    for (id, name) in &list {
        if known.contains(id) {
            continue;
        }
        match watch(client, id, name, shared).await {
            Ok(()) => {}
            Err(e @ Error::Connect(_)) => return Err(e),
            // Removed between the listing and the stream.
            Err(_) => {}
        }
    }
    let order: HashMap<&str, usize> = list
        .iter()
        .enumerate()
        .map(|(i, (id, _))| (id.as_str(), i))
        .collect();
    let mut slots = shared.lock().unwrap_or_else(|p| p.into_inner());
    slots.sort_by_key(|s| order.get(s.key.as_str()).copied().unwrap_or(usize::MAX));
    Ok(())
}

/// Prints one block; on a terminal the screen is cleared first (docker's
/// `ESC[2J ESC[H`). False when stdout is gone (a closed pipe).
fn print_block(text: &str, clear: bool) -> bool {
    let mut out = std::io::stdout().lock();
    let result = (|| {
        if clear {
            out.write_all(b"\x1b[2J\x1b[H")?;
        }
        out.write_all(text.as_bytes())?;
        out.flush()
    })();
    result.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{BlkioStatEntry, CpuStats, CpuUsage, NetworkStats};
    use std::collections::BTreeMap;

    #[test]
    fn go_g_matches_go() {
        assert_eq!(go_g(64.0, 4), "64");
        assert_eq!(go_g(1.2345, 4), "1.234");
        assert_eq!(go_g(1.5, 4), "1.5");
        assert_eq!(go_g(1023.9, 4), "1024");
        assert_eq!(go_g(1.05, 3), "1.05");
        assert_eq!(go_g(999.5, 3), "1e+03");
        assert_eq!(go_g(12.345, 3), "12.3");
        assert_eq!(go_g(0.0, 3), "0");
        assert_eq!(go_g(0.00001234, 3), "1.23e-05");
    }

    #[test]
    fn sizes_like_go_units() {
        assert_eq!(bytes_size(0.0), "0B");
        assert_eq!(bytes_size(64.0 * 1024.0 * 1024.0), "64MiB");
        assert_eq!(bytes_size(1_294_336.0), "1.234MiB");
        assert_eq!(bytes_size(512.0), "512B");
        assert_eq!(bytes_size(3.5 * 1024.0 * 1024.0 * 1024.0), "3.5GiB");
        assert_eq!(human_size3(0.0), "0B");
        assert_eq!(human_size3(1050.0), "1.05kB");
        assert_eq!(human_size3(999.0), "999B");
        assert_eq!(human_size3(999_500.0), "1e+03kB");
        assert_eq!(human_size3(20_971_520.0), "21MB");
    }

    fn reading() -> StatsJson {
        let mut v = StatsJson {
            name: "/web".into(),
            id: "0123456789abcdef0123".into(),
            ..StatsJson::default()
        };
        v.cpu_stats = CpuStats {
            cpu_usage: CpuUsage {
                total_usage: 1_500_000_000,
                percpu_usage: None,
            },
            system_cpu_usage: Some(20_000_000_000),
            online_cpus: Some(2),
        };
        v.precpu_stats = CpuStats {
            cpu_usage: CpuUsage {
                total_usage: 1_000_000_000,
                percpu_usage: None,
            },
            system_cpu_usage: Some(19_000_000_000),
            online_cpus: Some(2),
        };
        v.memory_stats = MemoryStats {
            usage: Some(3 * 1024 * 1024),
            limit: Some(64 * 1024 * 1024),
            stats: Some(BTreeMap::from([
                ("total_inactive_file".to_string(), 1024 * 1024),
                ("inactive_file".to_string(), 5),
            ])),
        };
        v.pids_stats.current = Some(4);
        v.blkio_stats.io_service_bytes_recursive = Some(vec![
            BlkioStatEntry {
                major: 8,
                minor: 0,
                op: "Read".into(),
                value: 1000,
            },
            BlkioStatEntry {
                major: 8,
                minor: 0,
                op: "Write".into(),
                value: 2000,
            },
            BlkioStatEntry {
                major: 8,
                minor: 0,
                op: "Total".into(),
                value: 3000,
            },
            BlkioStatEntry {
                major: 8,
                minor: 16,
                op: "read".into(),
                value: 50,
            },
        ]);
        v.networks = Some(BTreeMap::from([(
            "eth0".to_string(),
            NetworkStats {
                rx_bytes: 1050,
                tx_bytes: 0,
                ..NetworkStats::default()
            },
        )]));
        v
    }

    #[test]
    fn entry_is_computed_like_the_docker_cli() {
        let e = Entry::from_stats("web", &reading());
        // 0.5 s of 1 s of host time (2 cpus' worth) * 2 cpus = 100%.
        assert!((e.cpu_percentage - 100.0).abs() < 1e-9, "{e:?}");
        // v1: total_inactive_file is subtracted.
        assert_eq!(e.memory, 2.0 * 1024.0 * 1024.0);
        assert!((e.memory_percentage - 3.125).abs() < 1e-9);
        assert_eq!((e.block_read, e.block_write), (1050.0, 2000.0));
        let f = e.fields(true);
        assert_eq!(f["ID"], "0123456789ab");
        assert_eq!(f["Name"], "web");
        assert_eq!(f["CPUPerc"], "100.00%");
        assert_eq!(f["MemUsage"], "2MiB / 64MiB");
        assert_eq!(f["MemPerc"], "3.12%");
        assert_eq!(f["NetIO"], "1.05kB / 0B");
        assert_eq!(f["BlockIO"], "1.05kB / 2kB");
        assert_eq!(f["PIDs"], "4");
        assert_eq!(e.fields(false)["ID"], "0123456789abcdef0123");
    }

    #[test]
    fn v2_subtracts_inactive_file_and_no_precpu_is_zero_cpu() {
        let mut v = reading();
        v.memory_stats.stats = Some(BTreeMap::from([("inactive_file".to_string(), 1024 * 1024)]));
        v.precpu_stats = CpuStats::default();
        v.cpu_stats.system_cpu_usage = Some(0);
        let e = Entry::from_stats("web", &v);
        assert_eq!(e.memory, 2.0 * 1024.0 * 1024.0);
        assert_eq!(e.cpu_percentage, 0.0);
    }

    #[test]
    fn a_stopped_container_shows_zeros_and_a_gone_one_dashes() {
        let v = StatsJson {
            name: "/old".into(),
            id: "abc".into(),
            ..StatsJson::default()
        };
        let f = Entry::from_stats("old", &v).fields(true);
        assert_eq!(f["CPUPerc"], "0.00%");
        assert_eq!(f["MemUsage"], "0B / 0B");
        assert_eq!(f["MemPerc"], "0.00%");
        assert_eq!(f["NetIO"], "0B / 0B");
        assert_eq!(f["BlockIO"], "0B / 0B");
        assert_eq!(f["PIDs"], "0");
        let f = gone("abc", "old").fields(true);
        assert_eq!(f["CPUPerc"], "--");
        assert_eq!(f["MemUsage"], "-- / --");
        assert_eq!(f["PIDs"], "--");
        assert_eq!(f["Name"], "old");
    }

    #[test]
    fn default_table_and_custom_formats() {
        let e = Entry::from_stats("web", &reading());
        let table = StatsFormat::parse(None)
            .unwrap()
            .render(std::slice::from_ref(&e), true);
        let mut lines = table.lines();
        assert_eq!(
            lines.next().unwrap(),
            "CONTAINER ID   NAME      CPU %     MEM USAGE / LIMIT   MEM %     NET I/O       BLOCK I/O      PIDS"
        );
        assert_eq!(
            lines.next().unwrap(),
            "0123456789ab   web       100.00%   2MiB / 64MiB        3.12%     1.05kB / 0B   1.05kB / 2kB   4"
        );
        let plain = StatsFormat::parse(Some("{{.Name}} {{.CPUPerc}} {{.MemUsage}}"))
            .unwrap()
            .render(std::slice::from_ref(&e), true);
        assert_eq!(plain, "web 100.00% 2MiB / 64MiB\n");
        let custom = StatsFormat::parse(Some("table {{.Container}}\\t{{.PIDs}}"))
            .unwrap()
            .render(std::slice::from_ref(&e), true);
        assert_eq!(custom, "CONTAINER   PIDS\nweb         4\n");
        let json_line = StatsFormat::parse(Some("json")).unwrap().render(&[e], true);
        let v: Value = serde_json::from_str(json_line.trim()).unwrap();
        assert_eq!(v["MemPerc"], "3.12%");
        assert_eq!(v["Container"], "web");
        assert!(StatsFormat::parse(Some("{{.Name")).is_err());
    }
}
