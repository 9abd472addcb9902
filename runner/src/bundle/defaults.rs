//! The fixed parts of every container's runtime spec, with the values docker
//! uses: capabilities, mounts, masked and read-only paths, device nodes and
//! device-cgroup rules, the default seccomp filter and the open-files rlimit.
//!
//! Pure data: nothing here touches the system except [`current_nofile_hard`],
//! which reads this process's own rlimit. Called by `bundle`; calls only
//! `oci-spec` builders.
//!
//! The values reproduce moby's `oci/defaults.go` and `oci/caps/defaults.go`
//! (docker 20.10+): the same 14 capabilities, the same mount options, the
//! masked paths including `/sys/devices/virtual/powercap` and, as docker 28+
//! does, `/proc/interrupts`.

use std::path::PathBuf;

use oci_spec::OciSpecError;
use oci_spec::runtime::{
    Arch, Capability, LinuxDevice, LinuxDeviceBuilder, LinuxDeviceCgroup, LinuxDeviceCgroupBuilder,
    LinuxDeviceType, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompBuilder,
    LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder, Mount, MountBuilder, PosixRlimit,
    PosixRlimitBuilder, PosixRlimitType,
};

/// Docker's default capability set (moby `oci/caps/defaults.go`).
pub const DEFAULT_CAPABILITIES: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Paths the runtime hides: a directory gets an empty read-only tmpfs, a
/// file gets `/dev/null` bound over it.
pub const MASKED_PATHS: [&str; 12] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths the runtime re-binds read-only.
pub const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Docker's soft `RLIMIT_NOFILE` for containers.
pub const NOFILE_SOFT: u64 = 1024;
/// The hard `RLIMIT_NOFILE` docker (with containerd 2) gives containers; it
/// is lowered to this process's own hard limit when that is smaller.
pub const NOFILE_HARD: u64 = 524_288;

/// `CLONE_NEWUSER`: a new user namespace would give the container a full
/// capability set inside it, so the seccomp filter refuses it.
const CLONE_NEWUSER: u64 = 0x1000_0000;
/// `EPERM`, what docker's profile returns for a refused call.
const EPERM: u32 = 1;
/// `ENOSYS` for `clone3`: its flags sit in a struct seccomp cannot read, so
/// docker answers "not implemented" and libc falls back to `clone`, whose
/// flags the filter can check.
const ENOSYS: u32 = 38;

/// Syscalls refused with `EPERM` whatever their arguments: mounting (old and
/// new mount API), changing root, loading kernel code, eBPF, tracing other
/// processes, the kernel keyring, joining namespaces, raw handles, reboot,
/// swap, perf, and setting the clock. A runtime must skip names its
/// architecture lacks, as runc does.
pub const BLOCKED_SYSCALLS: [&str; 33] = [
    "mount",
    "umount2",
    "pivot_root",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "move_mount",
    "open_tree",
    "mount_setattr",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "bpf",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "keyctl",
    "add_key",
    "request_key",
    "setns",
    "open_by_handle_at",
    "name_to_handle_at",
    "reboot",
    "swapon",
    "swapoff",
    "perf_event_open",
    "acct",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
];

/// The mounts docker gives every container, in mount order.
pub fn default_mounts() -> Result<Vec<Mount>, OciSpecError> {
    let table: [(&str, &str, &str, &[&str]); 7] = [
        ("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        (
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        (
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
        (
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        ),
        (
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["ro", "nosuid", "noexec", "nodev"],
        ),
        (
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        (
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
    ];
    table
        .iter()
        .map(|(dest, typ, source, options)| {
            MountBuilder::default()
                .destination(*dest)
                .typ(*typ)
                .source(*source)
                .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
                .build()
        })
        .collect()
}

/// A bind mount as docker writes one (`rbind`, `rprivate`, and `ro` when
/// asked), for volumes and the `/etc/hosts`-style files.
pub fn bind_mount(
    source: impl Into<PathBuf>,
    destination: impl Into<PathBuf>,
    readonly: bool,
) -> Result<Mount, OciSpecError> {
    let mut options = vec!["rbind".to_string(), "rprivate".to_string()];
    if readonly {
        options.push("ro".to_string());
    }
    MountBuilder::default()
        .destination(destination)
        .typ("bind")
        .source(source)
        .options(options)
        .build()
}

/// The device nodes the runtime creates in the container's `/dev`: the
/// runtime-spec's default devices (null, zero, full, random, urandom, tty),
/// listed explicitly so a runtime can simply iterate them. `/dev/console`
/// and `/dev/ptmx` are the runtime's business (terminal and devpts).
pub fn default_devices() -> Result<Vec<LinuxDevice>, OciSpecError> {
    [
        ("/dev/null", 1, 3),
        ("/dev/zero", 1, 5),
        ("/dev/full", 1, 7),
        ("/dev/random", 1, 8),
        ("/dev/urandom", 1, 9),
        ("/dev/tty", 5, 0),
    ]
    .iter()
    .map(|(path, major, minor)| {
        LinuxDeviceBuilder::default()
            .path(*path)
            .typ(LinuxDeviceType::C)
            .major(*major)
            .minor(*minor)
            .file_mode(0o666u32)
            .uid(0u32)
            .gid(0u32)
            .build()
    })
    .collect()
}

/// The device-cgroup rules: deny everything, then allow the default nodes,
/// the pty slaves and `/dev/ptmx`, and deny `/dev/fuse` (docker's list, plus
/// `full`, pts and ptmx, which runc would otherwise add itself).
pub fn default_device_cgroup() -> Result<Vec<LinuxDeviceCgroup>, OciSpecError> {
    let deny_all = LinuxDeviceCgroupBuilder::default()
        .allow(false)
        .access("rwm")
        .build()?;
    let mut rules = vec![deny_all];
    let table: [(bool, i64, Option<i64>); 10] = [
        (true, 1, Some(5)),     // zero
        (true, 1, Some(3)),     // null
        (true, 1, Some(9)),     // urandom
        (true, 1, Some(8)),     // random
        (true, 1, Some(7)),     // full
        (true, 5, Some(0)),     // tty
        (true, 5, Some(1)),     // console
        (true, 5, Some(2)),     // ptmx
        (true, 136, None),      // pts/*
        (false, 10, Some(229)), // fuse
    ];
    for (allow, major, minor) in table {
        let mut builder = LinuxDeviceCgroupBuilder::default()
            .allow(allow)
            .typ(LinuxDeviceType::C)
            .major(major)
            .access("rwm");
        if let Some(minor) = minor {
            builder = builder.minor(minor);
        }
        rules.push(builder.build()?);
    }
    Ok(rules)
}

/// The seccomp architectures for this build: the native one and the ones
/// its kernel can also execute (as docker's profile lists them), so a
/// 32-bit binary cannot slip past the filter.
fn seccomp_architectures() -> Vec<Arch> {
    if cfg!(target_arch = "x86_64") {
        vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]
    } else if cfg!(target_arch = "aarch64") {
        vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm]
    } else {
        vec![Arch::ScmpArchNative]
    }
}

/// The default seccomp filter: allow everything except [`BLOCKED_SYSCALLS`]
/// (`EPERM`), `unshare` and `clone` when their flags hold `CLONE_NEWUSER`
/// (`EPERM`), and `clone3` (`ENOSYS`, see above).
///
/// A deny-list rather than docker's allow-list: it is short enough for the
/// built-in runtime to compile, and it still covers every call the issue
/// names. Argument rules use `SCMP_CMP_MASKED_EQ` with `value` as the mask
/// and `valueTwo` as the expected result, as libseccomp and runc read them.
pub fn default_seccomp() -> Result<LinuxSeccomp, OciSpecError> {
    let blocked = LinuxSyscallBuilder::default()
        .names(
            BLOCKED_SYSCALLS
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        )
        .action(LinuxSeccompAction::ScmpActErrno)
        .errno_ret(EPERM)
        .build()?;
    let newuser_flag = LinuxSeccompArgBuilder::default()
        .index(0usize)
        .value(CLONE_NEWUSER)
        .value_two(CLONE_NEWUSER)
        .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
        .build()?;
    let mut syscalls: Vec<LinuxSyscall> = vec![blocked];
    for name in ["unshare", "clone"] {
        syscalls.push(
            LinuxSyscallBuilder::default()
                .names(vec![name.to_string()])
                .action(LinuxSeccompAction::ScmpActErrno)
                .errno_ret(EPERM)
                .args(vec![newuser_flag])
                .build()?,
        );
    }
    syscalls.push(
        LinuxSyscallBuilder::default()
            .names(vec!["clone3".to_string()])
            .action(LinuxSeccompAction::ScmpActErrno)
            .errno_ret(ENOSYS)
            .build()?,
    );
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActAllow)
        .architectures(seccomp_architectures())
        .syscalls(syscalls)
        .build()
}

/// This process's hard `RLIMIT_NOFILE`, or `None` when it cannot be read.
pub fn current_nofile_hard() -> Option<u64> {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .ok()
        .map(|(_soft, hard)| hard)
}

/// The container's `RLIMIT_NOFILE`: docker's 1024 / 524288, lowered to
/// `current_hard`. Without `CAP_SYS_RESOURCE` (this machine's root lacks it)
/// setrlimit fails if the hard limit would rise, so the spec never asks for
/// more than the runner itself has. Unknown → 1024 / 1024.
pub fn nofile_rlimit(current_hard: Option<u64>) -> Result<PosixRlimit, OciSpecError> {
    let hard = current_hard.unwrap_or(NOFILE_SOFT).min(NOFILE_HARD);
    let soft = NOFILE_SOFT.min(hard);
    PosixRlimitBuilder::default()
        .typ(PosixRlimitType::RlimitNofile)
        .soft(soft)
        .hard(hard)
        .build()
}
