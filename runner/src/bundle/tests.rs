//! Unit tests for `bundle`: docker's rules, checked on the built spec.

use std::collections::HashSet;
use std::path::Path;

use oci_spec::image::ImageConfiguration;
use oci_spec::runtime::{
    Capability, LinuxNamespaceType, LinuxSeccompAction, LinuxSeccompOperator, PosixRlimitType, Spec,
};

use super::*;

const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn image(config: serde_json::Value) -> ImageConfiguration {
    serde_json::from_value(serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": []}
    }))
    .unwrap()
}

fn opts() -> RunOptions {
    RunOptions {
        container_id: ID.to_string(),
        ..RunOptions::default()
    }
}

/// A rootfs with an alpine-like passwd and group.
fn rootfs() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("etc")).unwrap();
    std::fs::write(
        dir.path().join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnginx:x:101:101:nginx:/var/cache/nginx:/sbin/nologin\napp:x:1000:1000::/home/app:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("etc/group"),
        "root:x:0:root\nwheel:x:10:root\nnginx:x:101:nginx\nwww:x:33:nginx,app\napp:x:1000:\n",
    )
    .unwrap();
    dir
}

fn build(config: serde_json::Value, opts: &RunOptions) -> Result<Spec, BundleError> {
    let root = rootfs();
    build_spec(&image(config), opts, root.path())
}

fn args(spec: &Spec) -> Vec<String> {
    spec.process().as_ref().unwrap().args().clone().unwrap()
}

fn env(spec: &Spec) -> Vec<String> {
    spec.process().as_ref().unwrap().env().clone().unwrap()
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn entrypoint_and_cmd_follow_docker() {
    let both = serde_json::json!({"Entrypoint": ["/ep", "-x"], "Cmd": ["default"]});
    let cmd_only = serde_json::json!({"Cmd": ["sh", "-c", "echo hi"]});

    // Image alone: entrypoint + cmd.
    assert_eq!(
        args(&build(both.clone(), &opts()).unwrap()),
        strings(&["/ep", "-x", "default"])
    );
    // User args replace Cmd, keep Entrypoint.
    let o = RunOptions {
        cmd: Some(strings(&["mine"])),
        ..opts()
    };
    assert_eq!(
        args(&build(both.clone(), &o).unwrap()),
        strings(&["/ep", "-x", "mine"])
    );
    // --entrypoint replaces Entrypoint and drops the image Cmd.
    let o = RunOptions {
        entrypoint: Some(strings(&["/bin/true"])),
        ..opts()
    };
    assert_eq!(
        args(&build(both.clone(), &o).unwrap()),
        strings(&["/bin/true"])
    );
    // --entrypoint plus args.
    let o = RunOptions {
        entrypoint: Some(strings(&["/bin/echo"])),
        cmd: Some(strings(&["a", "b"])),
        ..opts()
    };
    assert_eq!(
        args(&build(both.clone(), &o).unwrap()),
        strings(&["/bin/echo", "a", "b"])
    );
    // --entrypoint "" clears it: args alone run.
    let o = RunOptions {
        entrypoint: Some(vec![]),
        cmd: Some(strings(&["ls", "/"])),
        ..opts()
    };
    assert_eq!(
        args(&build(both.clone(), &o).unwrap()),
        strings(&["ls", "/"])
    );
    // --entrypoint "" with nothing else: no command.
    let o = RunOptions {
        entrypoint: Some(vec![]),
        ..opts()
    };
    assert!(matches!(build(both, &o), Err(BundleError::NoCommand)));
    // Cmd-only image; empty user args mean "none given".
    let o = RunOptions {
        cmd: Some(vec![]),
        ..opts()
    };
    assert_eq!(
        args(&build(cmd_only, &o).unwrap()),
        strings(&["sh", "-c", "echo hi"])
    );
    // Nothing anywhere, or no config at all.
    let err = build(serde_json::json!({}), &opts()).unwrap_err();
    assert_eq!(err.to_string(), "no command specified");
    let bare: ImageConfiguration = serde_json::from_value(serde_json::json!({
        "architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}
    }))
    .unwrap();
    let root = rootfs();
    assert!(matches!(
        build_spec(&bare, &opts(), root.path()),
        Err(BundleError::NoCommand)
    ));
    let o = RunOptions {
        cmd: Some(strings(&["/bin/sh"])),
        ..opts()
    };
    assert_eq!(
        args(&build_spec(&bare, &o, root.path()).unwrap()),
        strings(&["/bin/sh"])
    );
}

#[test]
fn environment_merges_like_docker() {
    let config = serde_json::json!({
        "Cmd": ["sh"],
        "Env": ["A=image", "B=image", "KEEP=1", "DROP=x"]
    });
    let o = RunOptions {
        env: strings(&["B=user", "C=user=with=equals", "DROP"]),
        ..opts()
    };
    let e = env(&build(config, &o).unwrap());
    assert_eq!(
        e,
        strings(&[
            &format!("PATH={DEFAULT_PATH}"),
            "HOSTNAME=0123456789ab",
            "A=image",
            "B=user",
            "KEEP=1",
            "C=user=with=equals",
            "HOME=/root",
        ])
    );

    // The image's PATH wins over the default; -t adds TERM; HOME kept.
    let config = serde_json::json!({"Cmd": ["sh"], "Env": ["PATH=/opt/bin", "HOME=/data"]});
    let o = RunOptions {
        tty: true,
        ..opts()
    };
    let e = env(&build(config, &o).unwrap());
    assert_eq!(
        e,
        strings(&[
            "PATH=/opt/bin",
            "HOSTNAME=0123456789ab",
            "TERM=xterm",
            "HOME=/data"
        ])
    );

    // Bad names are refused, naming the entry.
    let o = RunOptions {
        env: strings(&["=oops"]),
        ..opts()
    };
    let err = build(serde_json::json!({"Cmd": ["sh"]}), &o).unwrap_err();
    assert!(err.to_string().contains("=oops"), "{err}");
    let o = RunOptions {
        env: strings(&["A=1\0B"]),
        ..opts()
    };
    assert!(matches!(
        build(serde_json::json!({"Cmd": ["sh"]}), &o),
        Err(BundleError::NulByte { .. })
    ));
}

fn process_user(spec: &Spec) -> (u32, u32, Vec<u32>) {
    let user = spec.process().as_ref().unwrap().user();
    (
        user.uid(),
        user.gid(),
        user.additional_gids().clone().unwrap_or_default(),
    )
}

#[test]
fn users_resolve_through_the_image() {
    let cmd = serde_json::json!({"Cmd": ["sh"]});
    let with_user = |user: &str| RunOptions {
        user: Some(user.to_string()),
        ..opts()
    };
    // Default: root, with root's groups and home.
    let spec = build(cmd.clone(), &opts()).unwrap();
    assert_eq!(process_user(&spec), (0, 0, vec![0, 10]));
    // By name: passwd ids, group memberships, HOME.
    let spec = build(cmd.clone(), &with_user("nginx")).unwrap();
    assert_eq!(process_user(&spec), (101, 101, vec![101, 33]));
    assert!(env(&spec).contains(&"HOME=/var/cache/nginx".to_string()));
    // By uid; uid:gid; name:group.
    assert_eq!(
        process_user(&build(cmd.clone(), &with_user("1000")).unwrap()),
        (1000, 1000, vec![33])
    );
    assert_eq!(
        process_user(&build(cmd.clone(), &with_user("1000:33")).unwrap()),
        (1000, 33, vec![])
    );
    assert_eq!(
        process_user(&build(cmd.clone(), &with_user("app:wheel")).unwrap()),
        (1000, 10, vec![])
    );
    // Unknown numeric uid works without an entry.
    let spec = build(cmd.clone(), &with_user("4000:4000")).unwrap();
    assert_eq!(process_user(&spec), (4000, 4000, vec![]));
    assert!(env(&spec).contains(&"HOME=/".to_string()));
    // Unknown names fail, naming the name.
    let err = build(cmd.clone(), &with_user("ghost")).unwrap_err();
    assert!(err.to_string().contains("ghost"), "{err}");
    let err = build(cmd.clone(), &with_user("app:ghosts")).unwrap_err();
    assert!(err.to_string().contains("ghosts"), "{err}");
    // The image's User applies unless -u overrides it.
    let image_user = serde_json::json!({"Cmd": ["sh"], "User": "nginx"});
    assert_eq!(
        process_user(&build(image_user.clone(), &opts()).unwrap()).0,
        101
    );
    assert_eq!(
        process_user(&build(image_user, &with_user("0")).unwrap()).0,
        0
    );
}

fn cap_set(caps: &Option<HashSet<Capability>>) -> HashSet<Capability> {
    caps.clone().unwrap_or_default()
}

#[test]
fn capabilities_are_dockers_fourteen() {
    let spec = build(serde_json::json!({"Cmd": ["sh"]}), &opts()).unwrap();
    let process = spec.process().as_ref().unwrap();
    let caps = process.capabilities().as_ref().unwrap();
    let expected: HashSet<Capability> = [
        "CHOWN",
        "DAC_OVERRIDE",
        "FSETID",
        "FOWNER",
        "MKNOD",
        "NET_RAW",
        "SETGID",
        "SETUID",
        "SETFCAP",
        "SETPCAP",
        "NET_BIND_SERVICE",
        "SYS_CHROOT",
        "KILL",
        "AUDIT_WRITE",
    ]
    .iter()
    .map(|c| c.parse().unwrap())
    .collect();
    assert_eq!(expected.len(), 14);
    assert_eq!(cap_set(caps.bounding()), expected);
    assert_eq!(cap_set(caps.effective()), expected);
    assert_eq!(cap_set(caps.permitted()), expected);
    assert!(caps.inheritable().is_none());
    assert!(caps.ambient().is_none());
    assert_eq!(process.no_new_privileges(), Some(true));

    // Non-root: bounding only, as docker 20.10+.
    let o = RunOptions {
        user: Some("app".into()),
        ..opts()
    };
    let spec = build(serde_json::json!({"Cmd": ["sh"]}), &o).unwrap();
    let caps = spec
        .process()
        .as_ref()
        .unwrap()
        .capabilities()
        .clone()
        .unwrap();
    assert_eq!(cap_set(caps.bounding()), expected);
    assert!(caps.effective().is_none() && caps.permitted().is_none());
}

#[test]
fn mounts_masked_and_readonly_paths_are_dockers() {
    let spec = build(serde_json::json!({"Cmd": ["sh"]}), &opts()).unwrap();
    let mounts = spec.mounts().as_ref().unwrap();
    let table: Vec<(String, String, Vec<String>)> = mounts
        .iter()
        .map(|m| {
            (
                m.destination().display().to_string(),
                m.typ().clone().unwrap(),
                m.options().clone().unwrap(),
            )
        })
        .collect();
    let expect = |dest: &str, typ: &str, options: &[&str]| {
        (dest.to_string(), typ.to_string(), strings(options))
    };
    assert_eq!(
        table,
        vec![
            expect("/proc", "proc", &["nosuid", "noexec", "nodev"]),
            expect(
                "/dev",
                "tmpfs",
                &["nosuid", "strictatime", "mode=755", "size=65536k"]
            ),
            expect(
                "/dev/pts",
                "devpts",
                &[
                    "nosuid",
                    "noexec",
                    "newinstance",
                    "ptmxmode=0666",
                    "mode=0620",
                    "gid=5"
                ]
            ),
            expect("/sys", "sysfs", &["nosuid", "noexec", "nodev", "ro"]),
            expect(
                "/sys/fs/cgroup",
                "cgroup",
                &["ro", "nosuid", "noexec", "nodev"]
            ),
            expect("/dev/mqueue", "mqueue", &["nosuid", "noexec", "nodev"]),
            expect(
                "/dev/shm",
                "tmpfs",
                &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]
            ),
        ]
    );

    let linux = spec.linux().as_ref().unwrap();
    let masked = linux.masked_paths().clone().unwrap();
    for path in [
        "/proc/asound",
        "/proc/acpi",
        "/proc/kcore",
        "/proc/keys",
        "/proc/latency_stats",
        "/proc/timer_list",
        "/proc/timer_stats",
        "/proc/sched_debug",
        "/proc/scsi",
        "/sys/firmware",
        "/sys/devices/virtual/powercap",
    ] {
        assert!(masked.contains(&path.to_string()), "{path} not masked");
    }
    assert_eq!(
        linux.readonly_paths().clone().unwrap(),
        strings(&[
            "/proc/bus",
            "/proc/fs",
            "/proc/irq",
            "/proc/sys",
            "/proc/sysrq-trigger"
        ])
    );
    let devices: Vec<(String, i64, i64)> = linux
        .devices()
        .clone()
        .unwrap()
        .iter()
        .map(|d| (d.path().display().to_string(), d.major(), d.minor()))
        .collect();
    assert_eq!(
        devices,
        vec![
            ("/dev/null".into(), 1, 3),
            ("/dev/zero".into(), 1, 5),
            ("/dev/full".into(), 1, 7),
            ("/dev/random".into(), 1, 8),
            ("/dev/urandom".into(), 1, 9),
            ("/dev/tty".into(), 5, 0),
        ]
    );
    // Device cgroup: deny all first.
    let rules = linux
        .resources()
        .as_ref()
        .unwrap()
        .devices()
        .clone()
        .unwrap();
    assert!(!rules[0].allow() && rules[0].major().is_none());
}

#[test]
fn extra_mounts_follow_the_defaults() {
    let o = RunOptions {
        mounts: vec![bind_mount("/srv/data", "/data", true).unwrap()],
        ..opts()
    };
    let spec = build(serde_json::json!({"Cmd": ["sh"]}), &o).unwrap();
    let last = spec.mounts().as_ref().unwrap().last().unwrap().clone();
    assert_eq!(last.destination(), Path::new("/data"));
    assert_eq!(
        last.options().clone().unwrap(),
        strings(&["rbind", "rprivate", "ro"])
    );
}

fn namespace_types(spec: &Spec) -> Vec<LinuxNamespaceType> {
    spec.linux()
        .as_ref()
        .unwrap()
        .namespaces()
        .clone()
        .unwrap()
        .iter()
        .map(|n| n.typ())
        .collect()
}

#[test]
fn namespaces_and_host_network() {
    let spec = build(serde_json::json!({"Cmd": ["sh"]}), &opts()).unwrap();
    assert_eq!(
        namespace_types(&spec),
        vec![
            LinuxNamespaceType::Pid,
            LinuxNamespaceType::Mount,
            LinuxNamespaceType::Uts,
            LinuxNamespaceType::Ipc,
            LinuxNamespaceType::Network,
            LinuxNamespaceType::Cgroup,
        ]
    );
    assert_eq!(spec.hostname().as_deref(), Some("0123456789ab"));

    let o = RunOptions {
        network: NetworkMode::Host,
        ..opts()
    };
    let spec = build(serde_json::json!({"Cmd": ["sh"]}), &o).unwrap();
    let types = namespace_types(&spec);
    assert!(!types.contains(&LinuxNamespaceType::Network));
    assert_eq!(types.len(), 5);
    // The host's hostname, as docker does with --network host.
    let host = nix::unistd::gethostname().unwrap().into_string().unwrap();
    assert_eq!(spec.hostname().as_deref(), Some(host.as_str()));

    // -h wins, and is checked.
    let o = RunOptions {
        hostname: Some("web-1".into()),
        ..opts()
    };
    let spec = build(serde_json::json!({"Cmd": ["sh"]}), &o).unwrap();
    assert_eq!(spec.hostname().as_deref(), Some("web-1"));
    assert!(env(&spec).contains(&"HOSTNAME=web-1".to_string()));
    let o = RunOptions {
        hostname: Some("a".repeat(65)),
        ..opts()
    };
    assert!(matches!(
        build(serde_json::json!({"Cmd": ["sh"]}), &o),
        Err(BundleError::InvalidHostname(..))
    ));
}

#[test]
fn root_terminal_and_cgroups_path() {
    let o = RunOptions {
        read_only: true,
        tty: true,
        cgroups_path: "/wharf/abc".into(),
        ..opts()
    };
    let spec = build(serde_json::json!({"Cmd": ["sh"]}), &o).unwrap();
    let root = spec.root().as_ref().unwrap();
    assert_eq!(root.path(), Path::new("rootfs"));
    assert_eq!(root.readonly(), Some(true));
    assert_eq!(spec.process().as_ref().unwrap().terminal(), Some(true));
    assert_eq!(
        spec.linux().as_ref().unwrap().cgroups_path().as_deref(),
        Some(Path::new("/wharf/abc"))
    );
    // No container id and no -h: no hostname at all.
    let o = RunOptions {
        container_id: String::new(),
        ..opts()
    };
    let spec = build(serde_json::json!({"Cmd": ["sh"]}), &o).unwrap();
    assert!(spec.hostname().is_none());
    assert!(!env(&spec).iter().any(|e| e.starts_with("HOSTNAME=")));
    assert!(spec.annotations().is_none());
    assert_eq!(spec.root().as_ref().unwrap().readonly(), Some(false));
    assert!(spec.linux().as_ref().unwrap().cgroups_path().is_none());
}

#[test]
fn working_directory_rules() {
    let cwd = |config: serde_json::Value, workdir: Option<&str>| {
        let o = RunOptions {
            workdir: workdir.map(String::from),
            ..opts()
        };
        build(config, &o).map(|s| s.process().as_ref().unwrap().cwd().clone())
    };
    let image = serde_json::json!({"Cmd": ["sh"], "WorkingDir": "/app"});
    assert_eq!(
        cwd(serde_json::json!({"Cmd": ["sh"]}), None).unwrap(),
        Path::new("/")
    );
    assert_eq!(cwd(image.clone(), None).unwrap(), Path::new("/app"));
    assert_eq!(
        cwd(image.clone(), Some("/srv/./x/../y/")).unwrap(),
        Path::new("/srv/y")
    );
    assert_eq!(cwd(image.clone(), Some("/../..")).unwrap(), Path::new("/"));
    let err = cwd(image, Some("relative")).unwrap_err();
    assert!(err.to_string().contains("\"relative\""), "{err}");
}

fn resources_of(o: &RunOptions) -> Result<oci_spec::runtime::LinuxResources, BundleError> {
    build(serde_json::json!({"Cmd": ["sh"]}), o)
        .map(|s| s.linux().as_ref().unwrap().resources().clone().unwrap())
}

#[test]
fn memory_limits_and_swap_default() {
    let o = RunOptions {
        memory: Some(parse_memory("64m").unwrap()),
        ..opts()
    };
    let memory = resources_of(&o).unwrap().memory().unwrap();
    assert_eq!(memory.limit(), Some(67_108_864));
    assert_eq!(memory.swap(), Some(2 * 67_108_864));

    let o = RunOptions {
        memory: Some(64 << 20),
        memory_swap: Some(-1),
        ..opts()
    };
    assert_eq!(resources_of(&o).unwrap().memory().unwrap().swap(), Some(-1));
    let o = RunOptions {
        memory: Some(64 << 20),
        memory_swap: Some(100 << 20),
        ..opts()
    };
    assert_eq!(
        resources_of(&o).unwrap().memory().unwrap().swap(),
        Some(100 << 20)
    );

    for (memory, swap, what) in [
        (Some(1 << 20), None, "--memory"),
        (Some(-5), None, "--memory"),
        (None, Some(100 << 20), "--memory-swap"),
        (Some(64 << 20), Some(32 << 20), "--memory-swap"),
        (Some(64 << 20), Some(-7), "--memory-swap"),
    ] {
        let o = RunOptions {
            memory,
            memory_swap: swap,
            ..opts()
        };
        let err = resources_of(&o).unwrap_err();
        assert!(err.to_string().contains(what), "{memory:?}/{swap:?}: {err}");
    }
    assert!(resources_of(&opts()).unwrap().memory().is_none());
}

#[test]
fn cpu_and_pids_limits() {
    let o = RunOptions {
        cpus: Some(0.5),
        cpu_shares: Some(512),
        pids_limit: Some(100),
        ..opts()
    };
    let resources = resources_of(&o).unwrap();
    let cpu = resources.cpu().clone().unwrap();
    assert_eq!(cpu.quota(), Some(50_000));
    assert_eq!(cpu.period(), Some(100_000));
    assert_eq!(cpu.shares(), Some(512));
    assert_eq!(resources.pids().unwrap().limit(), 100);

    let o = RunOptions {
        cpu_shares: Some(1),
        pids_limit: Some(-1),
        ..opts()
    };
    let resources = resources_of(&o).unwrap();
    assert_eq!(resources.cpu().clone().unwrap().shares(), Some(2));
    assert!(resources.pids().is_none());

    for cpus in [0.0, -1.0, f64::NAN, 100_000.0] {
        let o = RunOptions {
            cpus: Some(cpus),
            ..opts()
        };
        let err = resources_of(&o).unwrap_err();
        assert!(err.to_string().contains("--cpus"), "{err}");
    }
}

#[test]
fn nofile_is_clamped_to_our_hard_limit() {
    let r = nofile_rlimit(Some(20_000)).unwrap();
    assert_eq!((r.soft(), r.hard()), (1024, 20_000));
    let r = nofile_rlimit(Some(u64::MAX)).unwrap();
    assert_eq!((r.soft(), r.hard()), (1024, NOFILE_HARD));
    let r = nofile_rlimit(Some(512)).unwrap();
    assert_eq!((r.soft(), r.hard()), (512, 512));
    let r = nofile_rlimit(None).unwrap();
    assert_eq!((r.soft(), r.hard()), (1024, 1024));

    let spec = build(serde_json::json!({"Cmd": ["sh"]}), &opts()).unwrap();
    let rlimits = spec.process().as_ref().unwrap().rlimits().clone().unwrap();
    assert_eq!(rlimits.len(), 1);
    assert_eq!(rlimits[0].typ(), PosixRlimitType::RlimitNofile);
    let (_, our_hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    assert!(rlimits[0].hard() <= our_hard);
    assert!(rlimits[0].soft() <= rlimits[0].hard());
}

#[test]
fn seccomp_blocks_the_dangerous_calls() {
    let spec = build(serde_json::json!({"Cmd": ["sh"]}), &opts()).unwrap();
    let seccomp = spec.linux().as_ref().unwrap().seccomp().clone().unwrap();
    assert_eq!(seccomp.default_action(), LinuxSeccompAction::ScmpActAllow);
    let syscalls = seccomp.syscalls().clone().unwrap();
    let unconditional: HashSet<&str> = syscalls
        .iter()
        .filter(|s| s.args().is_none() && s.action() == LinuxSeccompAction::ScmpActErrno)
        .flat_map(|s| s.names().iter().map(String::as_str))
        .collect();
    for name in [
        "mount",
        "umount2",
        "pivot_root",
        "kexec_load",
        "init_module",
        "finit_module",
        "delete_module",
        "bpf",
        "ptrace",
        "keyctl",
        "add_key",
        "request_key",
        "setns",
        "open_by_handle_at",
        "reboot",
        "swapon",
        "swapoff",
        "perf_event_open",
        "clone3",
    ] {
        assert!(unconditional.contains(name), "{name} not blocked");
    }
    for name in ["unshare", "clone"] {
        let rule = syscalls
            .iter()
            .find(|s| s.names() == &vec![name.to_string()])
            .unwrap_or_else(|| panic!("no rule for {name}"));
        let arg = rule.args().clone().unwrap()[0];
        assert_eq!(arg.index(), 0);
        assert_eq!(arg.op(), LinuxSeccompOperator::ScmpCmpMaskedEq);
        assert_eq!(
            (arg.value(), arg.value_two()),
            (0x1000_0000, Some(0x1000_0000))
        );
    }
}

#[test]
fn config_json_round_trips() {
    let o = RunOptions {
        memory: Some(64 << 20),
        cpus: Some(0.5),
        tty: true,
        user: Some("nginx".into()),
        cgroups_path: "/wharf/x".into(),
        ..opts()
    };
    let spec = build(
        serde_json::json!({"Cmd": ["nginx", "-g", "daemon off;"]}),
        &o,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_bundle(dir.path(), &spec).unwrap();
    // Rewriting replaces the file and leaves no temporary behind.
    write_bundle(dir.path(), &spec).unwrap();
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("config.json")]);
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("config.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert_eq!(load_bundle(dir.path()).unwrap(), spec);
    // oci-spec's own loader accepts it too.
    assert_eq!(Spec::load(dir.path().join("config.json")).unwrap(), spec);

    // The wire names are the runtime-spec's.
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).unwrap()).unwrap();
    assert_eq!(json["ociVersion"], "1.1.0");
    assert_eq!(json["root"]["path"], "rootfs");
    assert_eq!(json["process"]["noNewPrivileges"], true);
    assert_eq!(json["process"]["user"]["uid"], 101);
    assert_eq!(json["process"]["rlimits"][0]["type"], "RLIMIT_NOFILE");
    assert_eq!(json["linux"]["cgroupsPath"], "/wharf/x");
    assert_eq!(json["linux"]["resources"]["memory"]["limit"], 64 << 20);
    assert_eq!(json["linux"]["resources"]["cpu"]["quota"], 50_000);
    assert_eq!(json["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ALLOW");
    assert!(
        json["process"]["capabilities"]["bounding"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("CAP_NET_BIND_SERVICE"))
    );
    assert_eq!(json["linux"]["maskedPaths"][0], "/proc/asound");
    assert_eq!(json["linux"]["namespaces"][0]["type"], "pid");
}

#[test]
fn write_bundle_names_a_missing_directory() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let spec = build(serde_json::json!({"Cmd": ["sh"]}), &opts()).unwrap();
    let err = write_bundle(&missing, &spec).unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
}
