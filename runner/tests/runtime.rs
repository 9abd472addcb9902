//! The built-in runtime end to end: each test writes a bundle (a busybox
//! rootfs and a docker-shaped config.json) and runs it through the real
//! `wharf-runner runtime run` binary, so the clone happens in a fresh
//! single-threaded process rather than in the multi-threaded test harness.
//! Needs root (namespaces, mounts) and a static busybox at /bin/busybox
//! (Debian's busybox-static); they fail without them.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxNamespaceBuilder, LinuxNamespaceType,
    LinuxSeccompAction, LinuxSeccompBuilder, LinuxSyscallBuilder, Mount, MountBuilder,
    PosixRlimitBuilder, PosixRlimitType, ProcessBuilder, RootBuilder, Spec, SpecBuilder,
    UserBuilder,
};

const APPLETS: &[&str] = &[
    "sh", "ls", "cat", "echo", "hostname", "id", "ps", "mount", "true", "false", "sleep", "grep",
    "unshare", "touch",
];

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> Mount {
    MountBuilder::default()
        .destination(dest)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .build()
        .unwrap()
}

/// Docker's default spec for `args`: its mounts, the 14 default
/// capabilities, masked and read-only paths, every namespace but user.
fn docker_spec(args: &[&str]) -> Spec {
    use Capability as C;
    let caps: HashSet<Capability> = [
        C::Chown,
        C::DacOverride,
        C::Fsetid,
        C::Fowner,
        C::Mknod,
        C::NetRaw,
        C::Setgid,
        C::Setuid,
        C::Setfcap,
        C::Setpcap,
        C::NetBindService,
        C::SysChroot,
        C::Kill,
        C::AuditWrite,
    ]
    .into_iter()
    .collect();
    let process = ProcessBuilder::default()
        .args(args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .env(vec![
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
            "HOME=/root".to_string(),
        ])
        .cwd("/")
        .user(UserBuilder::default().uid(0u32).gid(0u32).build().unwrap())
        .capabilities(
            LinuxCapabilitiesBuilder::default()
                .bounding(caps.clone())
                .effective(caps.clone())
                .permitted(caps)
                // oci-spec's defaults would add runc's example set here.
                .inheritable(HashSet::new())
                .ambient(HashSet::new())
                .build()
                .unwrap(),
        )
        .no_new_privileges(false)
        .build()
        .unwrap();
    let namespaces = [
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Network,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Cgroup,
    ]
    .into_iter()
    .map(|t| LinuxNamespaceBuilder::default().typ(t).build().unwrap())
    .collect::<Vec<_>>();
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .masked_paths(strings(&[
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
        ]))
        .readonly_paths(strings(&[
            "/proc/bus",
            "/proc/fs",
            "/proc/irq",
            "/proc/sys",
            "/proc/sysrq-trigger",
        ]))
        .build()
        .unwrap();
    SpecBuilder::default()
        .version("1.0.2")
        .root(
            RootBuilder::default()
                .path("rootfs")
                .readonly(false)
                .build()
                .unwrap(),
        )
        .hostname("wharf-test")
        .process(process)
        .mounts(vec![
            mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
            mount(
                "/dev",
                "tmpfs",
                "tmpfs",
                &["nosuid", "strictatime", "mode=755", "size=65536k"],
            ),
            mount(
                "/dev/pts",
                "devpts",
                "devpts",
                &[
                    "nosuid",
                    "noexec",
                    "newinstance",
                    "ptmxmode=0666",
                    "mode=0620",
                    "gid=5",
                ],
            ),
            mount(
                "/sys",
                "sysfs",
                "sysfs",
                &["nosuid", "noexec", "nodev", "ro"],
            ),
            mount(
                "/sys/fs/cgroup",
                "cgroup",
                "cgroup",
                &["ro", "nosuid", "noexec", "nodev"],
            ),
            mount(
                "/dev/mqueue",
                "mqueue",
                "mqueue",
                &["nosuid", "noexec", "nodev"],
            ),
            mount(
                "/dev/shm",
                "tmpfs",
                "shm",
                &["nosuid", "noexec", "nodev", "mode=1777", "size=67108864"],
            ),
        ])
        .linux(linux)
        .build()
        .unwrap()
}

/// A bundle directory with a busybox rootfs; the spec is written by `run`.
fn bundle() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let rootfs = dir.path().join("rootfs");
    for d in ["bin", "proc", "sys", "dev", "tmp", "etc", "mnt", "root"] {
        fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    for applet in APPLETS {
        symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    fs::write(rootfs.join("etc/hostname"), "not a program\n").unwrap();
    fs::set_permissions(
        rootfs.join("etc/hostname"),
        fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    dir
}

fn command(dir: &Path, spec: &Spec) -> Command {
    spec.save(dir.join("config.json")).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wharf-runner"));
    cmd.args(["runtime", "run", "--bundle"])
        .arg(dir)
        .arg("test-container")
        .stdin(Stdio::null());
    cmd
}

fn run_spec(spec: &Spec) -> Output {
    let dir = bundle();
    command(dir.path(), spec).output().unwrap()
}

fn run(args: &[&str]) -> Output {
    run_spec(&docker_spec(args))
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

macro_rules! require_root {
    () => {
        // Never a silent skip: CI runs as root with busybox-static installed.
        assert!(
            is_root() && Path::new("/bin/busybox").exists(),
            "the runtime tests need root and /bin/busybox (apt-get install busybox-static)"
        );
    };
}

#[test]
fn the_command_is_pid_1_and_sees_only_its_own_processes() {
    require_root!();
    let out = run(&["sh", "-c", "echo $$"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out), "1");

    let out = run(&["ls", "/proc"]);
    assert!(out.status.success(), "{out:?}");
    let pids: Vec<String> = stdout(&out)
        .split_whitespace()
        .filter(|e| e.chars().all(|c| c.is_ascii_digit()))
        .map(String::from)
        .collect();
    assert_eq!(pids, vec!["1".to_string()], "{}", stdout(&out));
}

#[test]
fn the_hostname_is_the_specs() {
    require_root!();
    let out = run(&["hostname"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out), "wharf-test");
}

#[test]
fn capabilities_are_dockers_default_set() {
    require_root!();
    let out = run(&["grep", "CapEff", "/proc/self/status"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out), "CapEff:\t00000000a80425fb");

    // The same with no_new_privs, where seccomp goes in last.
    let mut spec = docker_spec(&[
        "grep",
        "-E",
        "CapEff|NoNewPrivs|Seccomp:",
        "/proc/self/status",
    ]);
    let mut process = spec.process().clone().unwrap();
    process.set_no_new_privileges(Some(true));
    spec.set_process(Some(process));
    let out = run_spec(&spec);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    assert!(text.contains("CapEff:\t00000000a80425fb"), "{text}");
    assert!(text.contains("NoNewPrivs:\t1"), "{text}");
    assert!(text.contains("Seccomp:\t2"), "{text}");
}

#[test]
fn proc_sys_is_read_only_and_kcore_is_masked() {
    require_root!();
    let out = run(&["sh", "-c", "echo evil > /proc/sys/kernel/hostname"]);
    assert!(!out.status.success(), "{out:?}");

    let out = run(&["cat", "/proc/kcore"]);
    assert!(out.stdout.is_empty(), "{out:?}");
}

#[test]
fn mount_and_user_namespaces_are_refused() {
    require_root!();
    let out = run(&["mount", "-t", "tmpfs", "x", "/mnt"]);
    assert!(!out.status.success(), "{out:?}");

    let out = run(&["unshare", "-U", "true"]);
    assert!(!out.status.success(), "{out:?}");
}

#[test]
fn the_exit_code_propagates() {
    require_root!();
    let out = run(&["sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7), "{out:?}");
}

#[test]
fn a_container_killed_from_outside_exits_137() {
    require_root!();
    let dir = bundle();
    let spec = docker_spec(&["sh", "-c", "echo ready; exec sleep 30"]);
    let mut child = command(dir.path(), &spec)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut buf = [0u8; 6];
    std::io::Read::read_exact(&mut stdout, &mut buf).unwrap();
    // The container's init is the runtime's only child (what the OOM
    // killer or `docker kill` hits).
    let children = fs::read_to_string(format!("/proc/{0}/task/{0}/children", child.id())).unwrap();
    let init: i32 = children.split_whitespace().next().unwrap().parse().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(init),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(137));
}

#[test]
fn a_missing_command_is_127_and_a_non_executable_one_126() {
    require_root!();
    let out = run(&["no-such-command"]);
    assert_eq!(out.status.code(), Some(127), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no-such-command") && err.contains("not found"),
        "{err}"
    );

    let out = run(&["/etc/hostname"]);
    assert_eq!(out.status.code(), Some(126), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/etc/hostname"), "{err}");
}

#[test]
fn the_network_namespace_has_only_loopback() {
    require_root!();
    let out = run(&["ls", "/sys/class/net"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out), "lo");
}

#[test]
fn user_rlimits_and_read_only_root_apply() {
    require_root!();
    let mut spec = docker_spec(&[
        "sh",
        "-c",
        "id; ulimit -n; grep CapEff /proc/self/status; touch /x || echo ro",
    ]);
    let mut process = spec.process().clone().unwrap();
    process.set_user(
        UserBuilder::default()
            .uid(1000u32)
            .gid(1000u32)
            .additional_gids(vec![1001u32])
            .build()
            .unwrap(),
    );
    process.set_rlimits(Some(vec![
        PosixRlimitBuilder::default()
            .typ(PosixRlimitType::RlimitNofile)
            .soft(512u64)
            .hard(1024u64)
            .build()
            .unwrap(),
    ]));
    spec.set_process(Some(process));
    let mut root = spec.root().clone().unwrap();
    root.set_readonly(Some(true));
    spec.set_root(Some(root));
    let out = run_spec(&spec);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    assert!(text.contains("uid=1000 gid=1000 groups=1001"), "{text}");
    assert!(text.contains("\n512\n"), "{text}");
    assert!(text.contains("CapEff:\t0000000000000000"), "{text}");
    assert!(text.ends_with("ro"), "{text}");
}

#[test]
fn signals_sent_to_the_runtime_reach_the_container() {
    require_root!();
    let dir = bundle();
    let spec = docker_spec(&[
        "sh",
        "-c",
        "trap 'exit 3' TERM; echo ready; while true; do sleep 0.1; done",
    ]);
    let mut child = command(dir.path(), &spec)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut buf = [0u8; 6];
    std::io::Read::read_exact(&mut stdout, &mut buf).unwrap();
    assert_eq!(&buf, b"ready\n");
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert_eq!(status.code(), Some(3));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the container ignored SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_bad_bundle_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_wharf-runner"))
        .args(["runtime", "run", "--bundle"])
        .arg(dir.path())
        .arg("c1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&out.stderr).contains("config.json"));
}

#[test]
fn a_specs_seccomp_profile_replaces_the_default() {
    require_root!();
    let mut spec = docker_spec(&[
        "sh",
        "-c",
        "mkdir /tmp/a && echo made; unshare -U true && echo unshared",
    ]);
    let profile = LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActAllow)
        .syscalls(vec![
            LinuxSyscallBuilder::default()
                .names(vec!["mkdir".to_string(), "mkdirat".to_string()])
                .action(LinuxSeccompAction::ScmpActErrno)
                .errno_ret(13u32)
                .build()
                .unwrap(),
        ])
        .build()
        .unwrap();
    let mut linux = spec.linux().clone().unwrap();
    linux.set_seccomp(Some(profile));
    spec.set_linux(Some(linux));
    let out = run_spec(&spec);
    let text = stdout(&out);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!text.contains("made"), "{text}");
    assert!(err.contains("Permission denied"), "{err}");
    // wharf's default deny list is not installed: creating a user namespace
    // needs no capability, only that list stops it.
    assert!(text.contains("unshared"), "{text}");
}

#[test]
fn bind_mounts_and_a_missing_workdir_work_and_a_bad_source_is_named() {
    require_root!();
    let dir = bundle();
    fs::create_dir(dir.path().join("data")).unwrap();
    fs::write(dir.path().join("data/file"), "hello\n").unwrap();
    let mut spec = docker_spec(&["sh", "-c", "pwd; cat /data/file; touch /data/x || echo ro"]);
    let mut mounts = spec.mounts().clone().unwrap();
    mounts.push(mount("/data", "bind", "data", &["rbind", "ro"]));
    spec.set_mounts(Some(mounts));
    let mut process = spec.process().clone().unwrap();
    process.set_cwd("/work/dir".into());
    spec.set_process(Some(process));
    let out = command(dir.path(), &spec).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out), "/work/dir\nhello\nro");

    let mut mounts = spec.mounts().clone().unwrap();
    mounts.push(mount("/missing", "bind", "/no/such/source", &["rbind"]));
    spec.set_mounts(Some(mounts));
    let out = command(dir.path(), &spec).output().unwrap();
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/no/such/source"), "{err}");
}

/// Runs `wharf_runner::runtime::run` with a hook, in a fresh process (this
/// test binary re-executed for one test, on a single test thread).
#[test]
#[ignore = "helper: run by before_start_runs_while_the_container_waits"]
fn hook_helper() {
    let Some(dir) = std::env::var_os("WHARF_RUNTIME_HOOK_BUNDLE") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let fail = std::env::var_os("WHARF_RUNTIME_HOOK_FAIL").is_some();
    let marker = dir.join("rootfs/tmp/hook-ran");
    let result = wharf_runner::runtime::run(&dir, "hooked", &mut |pid| {
        if fail {
            return Err("no cgroup for you".into());
        }
        // The child is still the runtime (it has not exec'd yet).
        let exe = fs::read_link(format!("/proc/{pid}/exe"))?;
        fs::write(&marker, format!("{}\n", exe.display()))?;
        Ok(())
    });
    match result {
        Ok(status) => println!("status={}", status.code()),
        Err(e) => println!("error={e}"),
    }
}

#[test]
fn before_start_runs_while_the_container_waits() {
    require_root!();
    let dir = bundle();
    docker_spec(&["cat", "/tmp/hook-ran"])
        .save(dir.path().join("config.json"))
        .unwrap();
    let helper = |fail: bool| {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args([
            "--exact",
            "hook_helper",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("WHARF_RUNTIME_HOOK_BUNDLE", dir.path())
        .stdin(Stdio::null());
        if fail {
            cmd.env("WHARF_RUNTIME_HOOK_FAIL", "1");
        }
        String::from_utf8_lossy(&cmd.output().unwrap().stdout).into_owned()
    };
    let out = helper(false);
    let runtime_exe = std::env::current_exe().unwrap();
    assert!(
        out.contains(&format!("{}\n", runtime_exe.display())),
        "{out}"
    );
    assert!(out.contains("status=0"), "{out}");

    fs::remove_file(dir.path().join("rootfs/tmp/hook-ran")).unwrap();
    let out = helper(true);
    assert!(
        out.contains("error=container hooked: the before-start hook failed: no cgroup for you"),
        "{out}"
    );
    assert!(!dir.path().join("rootfs/tmp/hook-ran").exists());
}

#[test]
fn namespaced_sysctls_domainname_and_oom_score_apply() {
    require_root!();
    let mut spec = docker_spec(&[
        "sh",
        "-c",
        "cat /proc/sys/net/ipv4/ip_forward /proc/self/oom_score_adj /proc/sys/kernel/domainname",
    ]);
    let mut linux = spec.linux().clone().unwrap();
    linux.set_sysctl(Some(
        [("net.ipv4.ip_forward".to_string(), "1".to_string())].into(),
    ));
    spec.set_linux(Some(linux.clone()));
    spec.set_domainname(Some("example.test".to_string()));
    let mut process = spec.process().clone().unwrap();
    process.set_oom_score_adj(Some(500));
    spec.set_process(Some(process));
    let out = run_spec(&spec);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out), "1\n500\nexample.test");

    linux.set_sysctl(Some([("kernel.panic".to_string(), "1".to_string())].into()));
    spec.set_linux(Some(linux));
    let out = run_spec(&spec);
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("kernel.panic"));
}
