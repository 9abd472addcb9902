//! What a node says about itself ([`NodeFacts`]): its non-loopback
//! addresses (getifaddrs), OS, OCI architecture, CPUs, memory
//! (`/proc/meminfo`), free disk of the state dir (statvfs), labels and
//! version. A leaf: reads the host only.

use std::collections::BTreeMap;
use std::path::Path;

use wharf_fleet_proto::NodeFacts;

/// The OCI architecture name of a Rust target architecture.
pub fn oci_arch(rust_arch: &str) -> &str {
    match rust_arch {
        "x86_64" => "amd64",
        "x86" => "386",
        "aarch64" => "arm64",
        "arm" => "arm",
        "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
        "powerpc64" => "ppc64",
        "riscv64" => "riscv64",
        "s390x" => "s390x",
        "loongarch64" => "loong64",
        "mips64" => "mips64",
        other => other,
    }
}

/// `MemTotal` and `MemAvailable` of a `/proc/meminfo` text, in bytes.
pub fn parse_meminfo(text: &str) -> (u64, u64) {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map_or(0, |kib| kib.saturating_mul(1024))
    };
    (field("MemTotal"), field("MemAvailable"))
}

/// (total, available) memory of the host.
pub fn memory() -> (u64, u64) {
    std::fs::read_to_string("/proc/meminfo")
        .map(|t| parse_meminfo(&t))
        .unwrap_or((0, 0))
}

/// The addresses of the host's interfaces, loopback, link-local IPv6 and
/// down interfaces left out, sorted and without duplicates.
pub fn addresses() -> Vec<String> {
    use nix::net::if_::InterfaceFlags;
    let mut out: Vec<String> = Vec::new();
    let Ok(ifaddrs) = nix::ifaddrs::getifaddrs() else {
        return out;
    };
    for ifa in ifaddrs {
        if ifa.flags.contains(InterfaceFlags::IFF_LOOPBACK)
            || !ifa.flags.contains(InterfaceFlags::IFF_UP)
        {
            continue;
        }
        let Some(addr) = ifa.address else { continue };
        if let Some(v4) = addr.as_sockaddr_in() {
            let ip = v4.ip();
            if !ip.is_loopback() {
                out.push(ip.to_string());
            }
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            let ip = v6.ip();
            // fe80::/10 needs a zone to be usable; not an address to give out.
            if !ip.is_loopback() && (ip.segments()[0] & 0xffc0) != 0xfe80 {
                out.push(ip.to_string());
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Free bytes (for an unprivileged user, as `df` shows) on `path`'s
/// filesystem.
// fsblkcnt_t and c_ulong are u64 here but not on every target.
#[allow(clippy::unnecessary_cast)]
pub fn free_disk(path: &Path) -> u64 {
    nix::sys::statvfs::statvfs(path)
        .map(|s| (s.blocks_available() as u64).saturating_mul(s.fragment_size() as u64))
        .unwrap_or(0)
}

pub fn cpus() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

/// Everything at once.
pub fn gather(root: &Path, labels: &BTreeMap<String, String>) -> NodeFacts {
    NodeFacts {
        addresses: addresses(),
        os: std::env::consts::OS.to_string(),
        arch: oci_arch(std::env::consts::ARCH).to_string(),
        cpus: cpus(),
        memory_bytes: memory().0,
        disk_bytes: free_disk(root),
        labels: labels.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_fields_in_bytes() {
        let text =
            "MemTotal:       16318412 kB\nMemFree:         1000 kB\nMemAvailable:    8000000 kB\n";
        assert_eq!(parse_meminfo(text), (16318412 * 1024, 8000000 * 1024));
        assert_eq!(parse_meminfo("garbage"), (0, 0));
    }

    #[test]
    fn oci_architectures() {
        assert_eq!(oci_arch("x86_64"), "amd64");
        assert_eq!(oci_arch("aarch64"), "arm64");
        assert_eq!(oci_arch("s390x"), "s390x");
    }

    #[test]
    fn facts_of_this_host() {
        let dir = tempfile::tempdir().unwrap();
        let labels = BTreeMap::from([("zone".to_string(), "a".to_string())]);
        let f = gather(dir.path(), &labels);
        assert_eq!(f.os, "linux");
        assert_eq!(f.arch, oci_arch(std::env::consts::ARCH));
        assert!(f.cpus >= 1);
        // Compared with what the kernel says by other means.
        let total = nix::sys::sysinfo::sysinfo().unwrap().ram_total();
        assert!(f.memory_bytes > 0 && f.memory_bytes.abs_diff(total) < 1 << 20);
        assert!(f.disk_bytes > 0);
        assert_eq!(f.labels, labels);
        assert_eq!(f.version, env!("CARGO_PKG_VERSION"));
        for a in &f.addresses {
            let ip: std::net::IpAddr = a.parse().unwrap();
            assert!(!ip.is_loopback(), "{a}");
        }
        // Every up, non-loopback IPv4 address `ip` lists is there.
        if let Ok(out) = std::process::Command::new("ip")
            .args(["-4", "-o", "addr", "show", "up"])
            .output()
        {
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let mut words = line.split_whitespace();
                let Some(addr) = words.find(|w| *w == "inet").and(words.next()) else {
                    continue;
                };
                let ip = addr.split('/').next().unwrap();
                if !ip.starts_with("127.") {
                    assert!(
                        f.addresses.iter().any(|a| a == ip),
                        "{ip} not in {:?}",
                        f.addresses
                    );
                }
            }
        }
    }
}
