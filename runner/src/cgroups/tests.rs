//! Manager tests: v2 and v1 against fake cgroupfs trees in temp dirs
//! (real directories pre-populated with the files the kernel would show),
//! and v1 for real on this host (hybrid v1, run as root).

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use nix::unistd::Pid;
use oci_spec::runtime::LinuxResources;
use serde_json::json;

use super::*;

/// A cgroupfs stand-in over a temp dir: `create_dir` lays out the control
/// files of the hierarchy the directory is in (as the kernel does),
/// `remove_dir` removes them with it (refusing child cgroups, as the
/// kernel does), `kill` and `cgroup.kill` record and empty `cgroup.procs`,
/// and one file can be made to fail writes with an errno.
struct FakeFs {
    /// Mount (or v2 root) -> files (name, content) a new directory gets.
    templates: Vec<(PathBuf, Vec<(&'static str, &'static str)>)>,
    killed: Mutex<Vec<i32>>,
    fail_write: Option<(&'static str, i32)>,
}

impl FakeFs {
    fn new(templates: Vec<(PathBuf, Vec<(&'static str, &'static str)>)>) -> Self {
        for (dir, files) in &templates {
            std::fs::create_dir_all(dir).unwrap();
            for (name, content) in files {
                std::fs::write(dir.join(name), content).unwrap();
            }
        }
        FakeFs {
            templates,
            killed: Mutex::new(Vec::new()),
            fail_write: None,
        }
    }

    fn remove_from_procs(&self, dir: &Path, pid: Option<i32>) {
        let procs = dir.join("cgroup.procs");
        if let Ok(text) = std::fs::read_to_string(&procs) {
            let kept: Vec<&str> = text
                .split_whitespace()
                .filter(|p| pid.is_some_and(|pid| p.parse() != Ok(pid)))
                .collect();
            std::fs::write(&procs, kept.join("\n")).unwrap();
        }
    }
}

impl CgroupFs for FakeFs {
    fn read(&self, path: &Path) -> io::Result<String> {
        HostFs.read(path)
    }

    fn write(&self, path: &Path, value: &str) -> io::Result<()> {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if let Some((file, errno)) = self.fail_write
            && file == name
        {
            return Err(io::Error::from_raw_os_error(errno));
        }
        if name == "cgroup.kill" {
            self.killed.lock().unwrap().push(-1);
            self.remove_from_procs(path.parent().unwrap(), None);
            return Ok(());
        }
        HostFs.write(path, value)
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir(path)?;
        let (_, files) = self
            .templates
            .iter()
            .filter(|(mount, _)| path.starts_with(mount))
            .max_by_key(|(mount, _)| mount.components().count())
            .expect("directory outside the fake tree");
        for (name, content) in files {
            std::fs::write(path.join(name), content)?;
        }
        Ok(())
    }

    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        for entry in std::fs::read_dir(path)? {
            if entry?.file_type()?.is_dir() {
                return Err(io::Error::from_raw_os_error(nix::libc::EBUSY));
            }
        }
        std::fs::remove_dir_all(path)
    }

    fn kill(&self, pid: i32) -> io::Result<()> {
        self.killed.lock().unwrap().push(pid);
        for (mount, _) in &self.templates {
            for dir in walk(mount) {
                self.remove_from_procs(&dir, Some(pid));
            }
        }
        Ok(())
    }
}

/// Every directory at or under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(walk(&e.path()));
            }
        }
    }
    out
}

fn resources(value: serde_json::Value) -> LinuxResources {
    serde_json::from_value(value).unwrap()
}

fn read(path: impl AsRef<Path>) -> String {
    std::fs::read_to_string(path.as_ref())
        .unwrap_or_else(|e| panic!("{}: {e}", path.as_ref().display()))
}

// ---------------------------------------------------------------- v2 ----

const V2_FILES: &[(&str, &str)] = &[
    ("cgroup.controllers", "cpuset cpu io memory hugetlb pids"),
    ("cgroup.subtree_control", ""),
    ("cgroup.procs", ""),
    ("cgroup.kill", ""),
    ("memory.max", "max"),
    ("memory.swap.max", "max"),
    ("memory.low", "0"),
    ("memory.current", "0"),
    (
        "memory.events",
        "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n",
    ),
    ("cpu.max", "max 100000"),
    ("cpu.weight", "100"),
    ("cpu.stat", "usage_usec 0\nuser_usec 0\nsystem_usec 0\n"),
    ("cpuset.cpus", ""),
    ("cpuset.mems", ""),
    ("pids.max", "max"),
    ("pids.current", "0"),
    ("io.weight", "default 100"),
    ("io.max", ""),
];

fn v2_tree() -> (tempfile::TempDir, Arc<FakeFs>, Hierarchy) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cgroup");
    let fs = FakeFs::new(vec![(root.clone(), V2_FILES.to_vec())]);
    (tmp, Arc::new(fs), Hierarchy::Unified { root })
}

#[test]
fn v2_writes_converted_limits_and_enables_controllers() {
    let (tmp, fs, h) = v2_tree();
    let r = resources(json!({
        "memory": {"limit": 67108864, "swap": 134217728, "reservation": 33554432},
        "cpu": {"shares": 1024, "quota": 50000, "period": 100000},
        "pids": {"limit": 20},
        "blockIO": {
            "weight": 500,
            "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1048576}]
        }
    }));
    let m = Manager::create(fs.clone(), &h, "wharf", "c1", &r).unwrap();
    let root = tmp.path().join("cgroup");
    let dir = root.join("wharf/c1");
    assert_eq!(m.dirs(), vec![dir.clone()]);
    assert_eq!(
        read(root.join("cgroup.subtree_control")),
        "+cpu +io +memory +pids"
    );
    assert_eq!(
        read(root.join("wharf/cgroup.subtree_control")),
        "+cpu +io +memory +pids"
    );
    assert_eq!(read(dir.join("memory.max")), "67108864");
    // The spec's swap is memory+swap; v2 wants swap alone.
    assert_eq!(read(dir.join("memory.swap.max")), "67108864");
    assert_eq!(read(dir.join("memory.low")), "33554432");
    assert_eq!(read(dir.join("cpu.max")), "50000 100000");
    // runc: 1 + ((1024 - 2) * 9999) / 262142 = 39.
    assert_eq!(read(dir.join("cpu.weight")), "39");
    assert_eq!(read(dir.join("pids.max")), "20");
    // No io.bfq.weight here, so io.weight with 1 + (490 * 9999) / 990.
    assert_eq!(read(dir.join("io.weight")), "4950");
    assert_eq!(read(dir.join("io.max")), "8:0 rbps=1048576");
}

#[test]
fn v2_half_a_cpu_without_a_period_is_50000_100000() {
    let (tmp, fs, h) = v2_tree();
    let r = resources(json!({"cpu": {"quota": 50000}}));
    Manager::create(fs, &h, "wharf", "c1", &r).unwrap();
    assert_eq!(
        read(tmp.path().join("cgroup/wharf/c1/cpu.max")),
        "50000 100000"
    );
}

#[test]
fn v2_unlimited_values_are_max() {
    let (tmp, fs, h) = v2_tree();
    let r = resources(json!({"memory": {"limit": -1}, "pids": {"limit": -1}}));
    Manager::create(fs, &h, "wharf", "c1", &r).unwrap();
    let dir = tmp.path().join("cgroup/wharf/c1");
    assert_eq!(read(dir.join("memory.max")), "max");
    assert_eq!(read(dir.join("memory.swap.max")), "max");
    assert_eq!(read(dir.join("pids.max")), "max");
}

#[test]
fn shares_convert_to_weight_as_runc_does() {
    assert_eq!(shares_to_weight(2), 1);
    assert_eq!(shares_to_weight(1024), 39);
    assert_eq!(shares_to_weight(262_144), 10_000);
    assert_eq!(shares_to_weight(0), 1);
    assert_eq!(blkio_weight_to_io_weight(10), 1);
    assert_eq!(blkio_weight_to_io_weight(1000), 10_000);
}

#[test]
fn v2_processes_oom_and_stats() {
    let (tmp, fs, h) = v2_tree();
    let r = resources(json!({"memory": {"limit": 1048576}}));
    let m = Manager::create(fs, &h, "wharf", "c1", &r).unwrap();
    let dir = tmp.path().join("cgroup/wharf/c1");
    m.add_process(Pid::from_raw(4242)).unwrap();
    assert_eq!(read(dir.join("cgroup.procs")), "4242");
    assert!(!m.oom_killed().unwrap());
    std::fs::write(
        dir.join("memory.events"),
        "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\noom_group_kill 0\n",
    )
    .unwrap();
    assert!(m.oom_killed().unwrap());
    std::fs::write(dir.join("memory.current"), "524288\n").unwrap();
    std::fs::write(dir.join("cpu.stat"), "usage_usec 1500\nuser_usec 1000\n").unwrap();
    std::fs::write(dir.join("pids.current"), "3\n").unwrap();
    assert_eq!(
        m.stats().unwrap(),
        Stats {
            memory_usage: Some(524_288),
            memory_limit: Some(1_048_576),
            cpu_usage_ns: Some(1_500_000),
            pids_current: Some(3),
            ..Stats::default()
        }
    );
}

#[test]
fn v2_destroy_uses_cgroup_kill_and_is_idempotent() {
    let (tmp, fs, h) = v2_tree();
    let m = Manager::create(fs.clone(), &h, "wharf", "c1", &LinuxResources::default()).unwrap();
    let dir = tmp.path().join("cgroup/wharf/c1");
    std::fs::write(dir.join("cgroup.procs"), "10\n11\n").unwrap();
    m.destroy().unwrap();
    assert_eq!(*fs.killed.lock().unwrap(), vec![-1]);
    assert!(!dir.exists());
    assert!(tmp.path().join("cgroup/wharf").exists(), "the parent stays");
    m.destroy().unwrap();
    // And from another process's view, by name.
    Manager::open(fs, &h, "wharf", "c1")
        .unwrap()
        .destroy()
        .unwrap();
}

#[test]
fn v2_destroy_without_cgroup_kill_signals_each_member() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cgroup");
    let files: Vec<_> = V2_FILES
        .iter()
        .copied()
        .filter(|(name, _)| *name != "cgroup.kill")
        .collect();
    let fs = Arc::new(FakeFs::new(vec![(root.clone(), files)]));
    let h = Hierarchy::Unified { root: root.clone() };
    let m = Manager::create(fs.clone(), &h, "wharf", "c1", &LinuxResources::default()).unwrap();
    std::fs::write(root.join("wharf/c1/cgroup.procs"), "10\n11\n").unwrap();
    m.destroy().unwrap();
    assert_eq!(*fs.killed.lock().unwrap(), vec![10, 11]);
    assert!(!root.join("wharf/c1").exists());
}

#[test]
fn v2_refused_memory_limit_names_value_and_file_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cgroup");
    let mut fs = FakeFs::new(vec![(root.clone(), V2_FILES.to_vec())]);
    fs.fail_write = Some(("memory.max", nix::libc::EBUSY));
    let h = Hierarchy::Unified { root: root.clone() };
    let r = resources(json!({"memory": {"limit": 4096}, "pids": {"limit": 5}}));
    let err = Manager::create(Arc::new(fs), &h, "wharf", "c1", &r).unwrap_err();
    assert!(matches!(err, Error::MemoryLimit { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("4096"), "{msg}");
    assert!(msg.contains("memory.max"), "{msg}");
    assert!(!root.join("wharf/c1").exists());
}

#[test]
fn v2_bad_input_is_refused_before_anything_is_made() {
    let (tmp, fs, h) = v2_tree();
    let dir = tmp.path().join("cgroup/wharf/c1");
    let cases = [
        json!({"memory": {"limit": 1048576, "swap": 4096}}),
        json!({"memory": {"swap": 4096}}),
        json!({"memory": {"limit": -5}}),
        json!({"blockIO": {"weight": 5000}}),
        json!({"unified": {"../escape": "1"}}),
    ];
    for case in cases {
        let err =
            Manager::create(fs.clone(), &h, "wharf", "c1", &resources(case.clone())).unwrap_err();
        assert!(
            matches!(err, Error::InvalidResource { .. }),
            "{case}: {err:?}"
        );
        assert!(!dir.exists(), "{case}");
    }
    for name in ["", "..", ".", "a/b"] {
        let err =
            Manager::create(fs.clone(), &h, "wharf", name, &LinuxResources::default()).unwrap_err();
        assert!(
            matches!(err, Error::InvalidName { .. }),
            "{name:?}: {err:?}"
        );
    }
}

#[test]
fn v2_controller_missing_on_the_host_is_unsupported() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cgroup");
    let mut files = V2_FILES.to_vec();
    files[0] = ("cgroup.controllers", "cpu memory");
    let fs = Arc::new(FakeFs::new(vec![(root.clone(), files)]));
    let h = Hierarchy::Unified { root: root.clone() };
    let r = resources(json!({"pids": {"limit": 5}}));
    let err = Manager::create(fs, &h, "wharf", "c1", &r).unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err:?}");
    assert!(err.to_string().contains("pids"), "{err}");
    assert!(!root.join("wharf/c1").exists());
}

#[test]
fn v2_existing_cgroup_is_not_taken_over_nor_removed() {
    let (tmp, fs, h) = v2_tree();
    Manager::create(fs.clone(), &h, "wharf", "c1", &LinuxResources::default()).unwrap();
    let err = Manager::create(fs, &h, "wharf", "c1", &LinuxResources::default()).unwrap_err();
    assert!(matches!(err, Error::AlreadyExists { .. }), "{err:?}");
    assert!(tmp.path().join("cgroup/wharf/c1").exists());
}

// ---------------------------------------------------------------- v1 ----

const V1_COMMON: &[(&str, &str)] = &[
    ("cgroup.procs", ""),
    ("tasks", ""),
    ("notify_on_release", "0"),
];

fn v1_files(controller: &str, memsw: bool) -> Vec<(&'static str, &'static str)> {
    let mut files = V1_COMMON.to_vec();
    match controller {
        "memory" => {
            files.extend([
                ("memory.limit_in_bytes", "9223372036854771712"),
                ("memory.soft_limit_in_bytes", "9223372036854771712"),
                ("memory.usage_in_bytes", "0"),
                ("memory.swappiness", "60"),
                (
                    "memory.oom_control",
                    "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
                ),
            ]);
            if memsw {
                files.push(("memory.memsw.limit_in_bytes", "9223372036854771712"));
            }
        }
        "cpu,cpuacct" => files.extend([
            ("cpu.shares", "1024"),
            ("cpu.cfs_period_us", "100000"),
            ("cpu.cfs_quota_us", "-1"),
            ("cpuacct.usage", "0"),
        ]),
        "pids" => files.extend([("pids.max", "max"), ("pids.current", "0")]),
        "blkio" => files.extend([
            ("blkio.bfq.weight", "100"),
            ("blkio.throttle.read_bps_device", ""),
            ("blkio.throttle.write_iops_device", ""),
        ]),
        "cpuset" => files.extend([("cpuset.cpus", ""), ("cpuset.mems", "")]),
        other => panic!("{other}"),
    }
    files
}

/// A legacy tree with cpu and cpuacct co-mounted, as many distributions
/// mount them. The cpuset root has cpus and mems set.
fn v1_tree(memsw: bool) -> (tempfile::TempDir, FakeFs, Hierarchy) {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("cgroup");
    let mut templates = Vec::new();
    let mut controllers = BTreeMap::new();
    for mount in ["memory", "cpu,cpuacct", "pids", "blkio", "cpuset"] {
        let dir = base.join(mount);
        templates.push((dir.clone(), v1_files(mount, memsw)));
        for name in mount.split(',') {
            controllers.insert(name.to_string(), dir.clone());
        }
    }
    let fs = FakeFs::new(templates);
    std::fs::write(base.join("cpuset/cpuset.cpus"), "0-3\n").unwrap();
    std::fs::write(base.join("cpuset/cpuset.mems"), "0\n").unwrap();
    (tmp, fs, Hierarchy::Legacy { controllers })
}

#[test]
fn v1_writes_limits_in_each_controller() {
    let (tmp, fs, h) = v1_tree(true);
    let r = resources(json!({
        "memory": {"limit": 33554432, "swap": 67108864, "swappiness": 0},
        "cpu": {"shares": 512, "quota": 50000, "period": 100000},
        "pids": {"limit": 20},
        "blockIO": {
            "weight": 500,
            "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1048576}],
            "throttleWriteIOPSDevice": [{"major": 8, "minor": 16, "rate": 100}]
        }
    }));
    let m = Manager::create(Arc::new(fs), &h, "wharf", "c1", &r).unwrap();
    let base = tmp.path().join("cgroup");
    let d = |mount: &str| base.join(mount).join("wharf/c1");
    assert_eq!(
        m.dirs(),
        vec![d("blkio"), d("cpu,cpuacct"), d("memory"), d("pids")],
        "no cpuset unless pinned; cpu and cpuacct share a directory"
    );
    assert_eq!(read(d("memory").join("memory.limit_in_bytes")), "33554432");
    assert_eq!(
        read(d("memory").join("memory.memsw.limit_in_bytes")),
        "67108864"
    );
    assert_eq!(read(d("memory").join("memory.swappiness")), "0");
    assert_eq!(read(d("cpu,cpuacct").join("cpu.shares")), "512");
    assert_eq!(read(d("cpu,cpuacct").join("cpu.cfs_period_us")), "100000");
    assert_eq!(read(d("cpu,cpuacct").join("cpu.cfs_quota_us")), "50000");
    assert_eq!(read(d("pids").join("pids.max")), "20");
    // No blkio.weight in this kernel: the BFQ file takes the same value.
    assert_eq!(read(d("blkio").join("blkio.bfq.weight")), "500");
    assert_eq!(
        read(d("blkio").join("blkio.throttle.read_bps_device")),
        "8:0 1048576"
    );
    assert_eq!(
        read(d("blkio").join("blkio.throttle.write_iops_device")),
        "8:16 100"
    );
    assert!(!base.join("cpuset/wharf").exists());
}

#[test]
fn v1_new_cpuset_is_seeded_from_its_parent() {
    let (tmp, fs, h) = v1_tree(true);
    let r = resources(json!({"cpu": {"cpus": "1"}}));
    let m = Manager::create(Arc::new(fs), &h, "wharf", "c1", &r).unwrap();
    let base = tmp.path().join("cgroup/cpuset");
    assert_eq!(read(base.join("wharf/cpuset.cpus")), "0-3");
    assert_eq!(read(base.join("wharf/cpuset.mems")), "0");
    assert_eq!(read(base.join("wharf/c1/cpuset.cpus")), "1");
    assert_eq!(read(base.join("wharf/c1/cpuset.mems")), "0");
    assert_eq!(m.dir("cpuset"), Some(base.join("wharf/c1").as_path()));
}

#[test]
fn v1_swap_without_memsw_accounting_is_dropped() {
    let (tmp, fs, h) = v1_tree(false);
    let r = resources(json!({"memory": {"limit": 33554432, "swap": 67108864}}));
    Manager::create(Arc::new(fs), &h, "wharf", "c1", &r).unwrap();
    let dir = tmp.path().join("cgroup/memory/wharf/c1");
    assert_eq!(read(dir.join("memory.limit_in_bytes")), "33554432");
    assert!(!dir.join("memory.memsw.limit_in_bytes").exists());
}

#[test]
fn v1_oom_stats_and_destroy() {
    let (tmp, fs, h) = v1_tree(true);
    let fs = Arc::new(fs);
    let r = resources(json!({"memory": {"limit": 33554432}}));
    let m = Manager::create(fs.clone(), &h, "wharf", "c1", &r).unwrap();
    let base = tmp.path().join("cgroup");
    m.add_process(Pid::from_raw(4242)).unwrap();
    for dir in m.dirs() {
        assert_eq!(read(dir.join("cgroup.procs")), "4242");
    }
    assert!(!m.oom_killed().unwrap());
    let mem = base.join("memory/wharf/c1");
    std::fs::write(
        mem.join("memory.oom_control"),
        "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
    )
    .unwrap();
    assert!(m.oom_killed().unwrap());
    std::fs::write(mem.join("memory.usage_in_bytes"), "1048576\n").unwrap();
    std::fs::write(
        base.join("cpu,cpuacct/wharf/c1/cpuacct.usage"),
        "123456789\n",
    )
    .unwrap();
    std::fs::write(base.join("pids/wharf/c1/pids.current"), "1\n").unwrap();
    assert_eq!(
        m.stats().unwrap(),
        Stats {
            memory_usage: Some(1_048_576),
            memory_limit: Some(33_554_432),
            cpu_usage_ns: Some(123_456_789),
            pids_current: Some(1),
            ..Stats::default()
        }
    );
    m.destroy().unwrap();
    assert_eq!(*fs.killed.lock().unwrap(), vec![4242]);
    for dir in m.dirs() {
        assert!(!dir.exists(), "{}", dir.display());
    }
    m.destroy().unwrap();
}

#[test]
fn v1_refused_memory_limit_removes_every_made_dir() {
    let (tmp, mut fs, h) = v1_tree(true);
    fs.fail_write = Some(("memory.limit_in_bytes", nix::libc::EINVAL));
    let r = resources(json!({"memory": {"limit": 33554432}, "pids": {"limit": 20}}));
    let err = Manager::create(Arc::new(fs), &h, "wharf", "c1", &r).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::MemoryLimit { .. }), "{err:?}");
    assert!(msg.contains("33554432"), "{msg}");
    assert!(msg.contains("memory.limit_in_bytes"), "{msg}");
    for mount in ["memory", "cpu,cpuacct", "pids", "blkio", "cpuset"] {
        let dir = tmp.path().join("cgroup").join(mount).join("wharf/c1");
        assert!(!dir.exists(), "{}", dir.display());
    }
}

#[test]
fn v1_refuses_v2_only_settings() {
    let (_tmp, fs, h) = v1_tree(true);
    let r = resources(json!({"unified": {"memory.high": "1000000"}}));
    let err = Manager::create(Arc::new(fs), &h, "wharf", "c1", &r).unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err:?}");
}

// ----------------------------------------------------- v1, for real ----

/// The real tests need this host's v1 memory hierarchy; CI runs on the
/// same kind of machine as root, so its absence is a failure, not a skip.
fn real_hierarchy() -> Hierarchy {
    assert!(
        Path::new("/sys/fs/cgroup/memory/cgroup.procs").exists(),
        "/sys/fs/cgroup/memory is missing: these tests need the host's cgroup v1 memory controller (run as root on a hybrid/legacy host)"
    );
    let h = detect(Path::new("/sys/fs/cgroup")).unwrap();
    assert!(h.v1_controllers().is_some(), "{h:?}");
    h
}

/// A parent of its own per test (`wharf-test-<pid>-<tag>-<n>`), so tests
/// running at once never remove a parent another one is creating under;
/// [`Cleanup`] removes it afterwards and leaves the host as it was.
fn unique_parent(tag: &str) -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "wharf-test-{}-{}-{}",
        std::process::id(),
        tag,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Kills the child and removes the cgroup even when an assertion failed.
struct Cleanup {
    manager: Option<Manager>,
    child: Option<std::process::Child>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(m) = &self.manager {
            let _ = m.destroy();
            for dir in m.dirs() {
                if let Some(parent) = dir.parent() {
                    let _ = std::fs::remove_dir(parent);
                }
            }
        }
    }
}

fn real_read(m: &Manager, controller: &str, file: &str) -> String {
    let dir = m
        .dir(controller)
        .unwrap_or_else(|| panic!("no {controller} dir"));
    read(dir.join(file)).trim().to_string()
}

#[test]
fn real_v1_limits_process_and_destroy() {
    let h = real_hierarchy();
    let parent = unique_parent("limits");
    let id = "c1";
    let r = resources(json!({
        "memory": {"limit": 33554432, "swap": 33554432},
        "cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0", "mems": "0"},
        "pids": {"limit": 20},
        "blockIO": {"weight": 500}
    }));
    let mut guard = Cleanup {
        manager: None,
        child: None,
    };
    let m = Manager::create(Arc::new(HostFs), &h, &parent, id, &r).unwrap();
    let dirs = m.dirs();
    guard.manager = Some(m);
    let m = guard.manager.as_ref().unwrap();
    assert!(dirs.iter().all(|d| d.is_dir()));
    assert_eq!(real_read(m, "memory", "memory.limit_in_bytes"), "33554432");
    if m.dir("memory")
        .unwrap()
        .join("memory.memsw.limit_in_bytes")
        .exists()
    {
        assert_eq!(
            real_read(m, "memory", "memory.memsw.limit_in_bytes"),
            "33554432"
        );
    }
    assert_eq!(real_read(m, "pids", "pids.max"), "20");
    assert_eq!(real_read(m, "cpu", "cpu.cfs_quota_us"), "50000");
    assert_eq!(real_read(m, "cpu", "cpu.cfs_period_us"), "100000");
    assert_eq!(real_read(m, "cpu", "cpu.shares"), "512");
    assert_eq!(real_read(m, "cpuset", "cpuset.cpus"), "0");
    assert_eq!(real_read(m, "cpuset", "cpuset.mems"), "0");
    // Kernels with BFQ only (as here) have no blkio.weight.
    let weight_file = if m.dir("blkio").unwrap().join("blkio.weight").exists() {
        "blkio.weight"
    } else {
        "blkio.bfq.weight"
    };
    let weight = real_read(m, "blkio", weight_file);
    assert!(weight.ends_with("500"), "{weight:?}");

    let child = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    guard.child = Some(child);
    m.add_process(Pid::from_raw(pid)).unwrap();
    for dir in &dirs {
        let procs = read(dir.join("cgroup.procs"));
        assert!(
            procs.split_whitespace().any(|p| p == pid.to_string()),
            "{pid} not in {}: {procs:?}",
            dir.display()
        );
    }
    let own = read(format!("/proc/{pid}/cgroup"));
    assert!(own.contains(&format!(":memory:/{parent}/{id}")), "{own}");
    let stats = m.stats().unwrap();
    assert_eq!(stats.pids_current, Some(1), "{stats:?}");
    assert_eq!(stats.memory_limit, Some(33_554_432), "{stats:?}");
    assert!(stats.cpu_usage_ns.is_some(), "{stats:?}");
    assert!(!m.oom_killed().unwrap());

    // destroy kills the sleeper itself.
    m.destroy().unwrap();
    let status = guard.child.as_mut().unwrap().wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9), "{status:?}");
    for dir in &dirs {
        assert!(!dir.exists(), "{} still there", dir.display());
    }
    m.destroy().unwrap();
}

#[test]
fn real_v1_oom_kill_is_detected() {
    let h = real_hierarchy();
    let parent = unique_parent("oom");
    let id = "c1";
    // Memory and memory+swap both 32 MiB: no escape into swap.
    let r = resources(json!({"memory": {"limit": 33554432, "swap": 33554432}}));
    let mut guard = Cleanup {
        manager: None,
        child: None,
    };
    guard.manager = Some(Manager::create(Arc::new(HostFs), &h, &parent, id, &r).unwrap());
    let m = guard.manager.as_ref().unwrap();
    // The shell waits for a line so it is in the cgroup before dd fills
    // a 128 MiB buffer from /dev/zero.
    let child = std::process::Command::new("sh")
        .args([
            "-c",
            "read _ && exec dd if=/dev/zero of=/dev/null bs=128M count=1 2>/dev/null",
        ])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    guard.child = Some(child);
    m.add_process(Pid::from_raw(pid)).unwrap();
    {
        use std::io::Write as _;
        let child = guard.child.as_mut().unwrap();
        child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    }
    let status = guard.child.as_mut().unwrap().wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9), "{status:?}");
    assert!(m.oom_killed().unwrap());
    m.destroy().unwrap();
    assert!(!m.dir("memory").unwrap().exists());
}

#[test]
fn real_v1_existing_id_is_refused_and_kept() {
    let h = real_hierarchy();
    let parent = unique_parent("dup");
    let id = "c1";
    let r = resources(json!({"pids": {"limit": 10}}));
    let guard = Cleanup {
        manager: Some(Manager::create(Arc::new(HostFs), &h, &parent, id, &r).unwrap()),
        child: None,
    };
    let err = Manager::create(Arc::new(HostFs), &h, &parent, id, &r).unwrap_err();
    assert!(matches!(err, Error::AlreadyExists { .. }), "{err:?}");
    for dir in guard.manager.as_ref().unwrap().dirs() {
        assert!(dir.is_dir(), "{}", dir.display());
    }
}

// -------------------------------------------------------------- stats ----

#[test]
fn v2_stats_read_memory_stat_and_io_stat() {
    let (tmp, fs, h) = v2_tree();
    let m = Manager::create(fs, &h, "wharf", "c1", &LinuxResources::default()).unwrap();
    let dir = tmp.path().join("cgroup/wharf/c1");
    std::fs::write(dir.join("memory.current"), "20971520\n").unwrap();
    std::fs::write(
        dir.join("memory.stat"),
        "anon 16777216\nfile 4194304\ninactive_file 1048576\nactive_file 3145728\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("io.stat"),
        "8:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n\
         253:1 rbytes=512 wbytes=0 rios=1 wios=0 dbytes=0 dios=0\n",
    )
    .unwrap();
    let stats = m.stats().unwrap();
    assert_eq!(stats.memory_usage, Some(20_971_520));
    assert_eq!(stats.memory_limit, None, "memory.max says max");
    assert_eq!(stats.memory_stat["inactive_file"], 1_048_576);
    assert_eq!(stats.memory_stat["anon"], 16_777_216);
    let e = |major, minor, op: &str, value| BlkioEntry {
        major,
        minor,
        op: op.into(),
        value,
    };
    assert_eq!(
        stats.blkio,
        vec![
            e(8, 0, "read", 4096),
            e(8, 0, "write", 8192),
            e(253, 1, "read", 512),
            e(253, 1, "write", 0),
        ]
    );
}

#[test]
fn v2_stats_without_io_stat_or_memory_stat_are_empty() {
    let (_tmp, fs, h) = v2_tree();
    let m = Manager::create(fs, &h, "wharf", "c1", &LinuxResources::default()).unwrap();
    let stats = m.stats().unwrap();
    assert!(stats.memory_stat.is_empty());
    assert!(stats.blkio.is_empty());
    assert_eq!(stats.cpu_usage_ns, Some(0));
}

#[test]
fn v1_stats_read_memory_stat_and_fall_back_to_the_throttle_blkio_file() {
    let (tmp, fs, h) = v1_tree(false);
    let m = Manager::create(Arc::new(fs), &h, "wharf", "c1", &LinuxResources::default()).unwrap();
    let base = tmp.path().join("cgroup");
    let mem = base.join("memory/wharf/c1");
    std::fs::write(mem.join("memory.usage_in_bytes"), "25165824\n").unwrap();
    std::fs::write(
        mem.join("memory.stat"),
        "cache 4194304\nrss 20971520\ninactive_file 1048576\n\
         total_cache 4194304\ntotal_inactive_file 2097152\n",
    )
    .unwrap();
    let blkio = base.join("blkio/wharf/c1");
    // BFQ's file is there but empty (no I/O seen by the scheduler): the
    // throttle layer's counts are taken instead.
    std::fs::write(
        blkio.join("blkio.bfq.io_service_bytes_recursive"),
        "Total 0\n",
    )
    .unwrap();
    std::fs::write(
        blkio.join("blkio.throttle.io_service_bytes_recursive"),
        "8:0 Read 4096\n8:0 Write 12288\n8:0 Sync 0\n8:0 Async 16384\n\
         8:0 Discard 0\n8:0 Total 16384\nTotal 16384\n",
    )
    .unwrap();
    let stats = m.stats().unwrap();
    assert_eq!(stats.memory_usage, Some(25_165_824));
    assert_eq!(stats.memory_limit, None, "v1's huge limit is no limit");
    assert_eq!(stats.memory_stat["total_inactive_file"], 2_097_152);
    assert_eq!(stats.memory_stat["rss"], 20_971_520);
    let ops: Vec<(&str, u64)> = stats
        .blkio
        .iter()
        .map(|e| (e.op.as_str(), e.value))
        .collect();
    assert_eq!(
        ops,
        vec![
            ("Read", 4096),
            ("Write", 12288),
            ("Sync", 0),
            ("Async", 16384),
            ("Discard", 0),
            ("Total", 16384),
        ]
    );
    assert!(stats.blkio.iter().all(|e| (e.major, e.minor) == (8, 0)));
}

#[test]
fn v1_blkio_prefers_the_first_file_with_devices() {
    let (tmp, fs, h) = v1_tree(false);
    let m = Manager::create(Arc::new(fs), &h, "wharf", "c1", &LinuxResources::default()).unwrap();
    let blkio = tmp.path().join("cgroup/blkio/wharf/c1");
    std::fs::write(
        blkio.join("blkio.bfq.io_service_bytes_recursive"),
        "8:16 Read 100\n8:16 Write 200\nTotal 300\n",
    )
    .unwrap();
    std::fs::write(
        blkio.join("blkio.throttle.io_service_bytes_recursive"),
        "8:16 Read 999\nTotal 999\n",
    )
    .unwrap();
    let stats = m.stats().unwrap();
    assert_eq!(stats.blkio.len(), 2);
    assert_eq!(stats.blkio[0].value, 100);
    assert_eq!(stats.blkio[0].major, 8);
    assert_eq!(stats.blkio[0].minor, 16);
}

#[test]
fn flat_files_skip_lines_that_are_not_numbers() {
    let map = flat("cache 10\nbogus\nrss x\nhierarchical_memory_limit 9223372036854771712\n");
    assert_eq!(map.len(), 2);
    assert_eq!(map["cache"], 10);
    assert_eq!(device("8:0"), Some((8, 0)));
    assert_eq!(device("8"), None);
    assert_eq!(device("a:b"), None);
}
