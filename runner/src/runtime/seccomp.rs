//! Seccomp filters for the built-in runtime: turns the spec's
//! `linux.seccomp` section (or wharf's default deny list) into classic BPF
//! programs and installs them on the calling thread.
//!
//! Called by `runtime` (the parent compiles the programs before it forks, so
//! a bad profile is an error before anything is created) and by the
//! container child (which installs them last). Calls `seccompiler` for the
//! BPF code generation and `syscalls` for the name-to-number table; calls
//! nothing else in wharf.
//!
//! Why several programs: `seccompiler` builds one filter with a single
//! "on match" action, while a runtime-spec profile can give each rule its
//! own action. The kernel runs every installed filter and keeps the result of
//! highest precedence (KILL > TRAP > ERRNO > TRACE > LOG > ALLOW), taking the
//! data of the most recently installed one among equals. So the profile
//! becomes a base filter (default action on mismatch, ALLOW for every syscall
//! a rule names) followed by one filter per other action (ALLOW on mismatch,
//! that action on match), which gives each rule its own action.

use std::collections::BTreeMap;
use std::str::FromStr;

use nix::libc;
use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction, LinuxSeccompOperator, LinuxSyscall};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use syscalls::Sysno;

/// Syscalls wharf's default profile answers with EPERM, whatever their
/// arguments (besides these, `unshare`/`clone` with `CLONE_NEWUSER` get EPERM
/// and `clone3` gets ENOSYS so the C library falls back to `clone`, whose
/// flags a filter can see). The new mount API (`fsopen`...) is listed so it
/// cannot stand in for `mount`.
pub const DEFAULT_DENIED: &[&str] = &[
    "mount",
    "umount2",
    "pivot_root",
    "kexec_load",
    "kexec_file_load",
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
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "move_mount",
    "open_tree",
    "mount_setattr",
];

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("seccomp filters are not supported on this architecture")]
    UnsupportedArch,
    #[error("seccomp action {0} is not supported by the built-in runtime")]
    UnsupportedAction(String),
    #[error("seccomp rule for {syscall}: {message}")]
    Rule { syscall: String, message: String },
    #[error("cannot compile the seccomp filter: {0}")]
    Compile(String),
    #[error("cannot install the seccomp filter: {0}")]
    Install(std::io::Error),
}

fn target_arch() -> Result<TargetArch, SeccompError> {
    if cfg!(target_arch = "x86_64") {
        Ok(TargetArch::x86_64)
    } else if cfg!(target_arch = "aarch64") {
        Ok(TargetArch::aarch64)
    } else if cfg!(target_arch = "riscv64") {
        Ok(TargetArch::riscv64)
    } else {
        Err(SeccompError::UnsupportedArch)
    }
}

/// The syscall number of `name` on this machine, or None when this
/// architecture has no such syscall (profiles name syscalls of every
/// architecture; like libseccomp, those are skipped).
fn syscall_nr(name: &str) -> Option<i64> {
    Sysno::from_str(name).ok().map(|s| s.id() as i64)
}

/// Rules per syscall: `None` means "whatever the arguments".
type RuleMap = BTreeMap<i64, Option<Vec<SeccompRule>>>;

fn add_rule(map: &mut RuleMap, nr: i64, rule: Option<SeccompRule>) {
    let entry = map.entry(nr).or_insert_with(|| Some(Vec::new()));
    match (entry.as_mut(), rule) {
        (Some(rules), Some(rule)) => rules.push(rule),
        // An unconditional rule makes the conditional ones moot.
        (Some(_), None) => *entry = None,
        (None, _) => {}
    }
}

fn compile(
    map: RuleMap,
    mismatch: SeccompAction,
    on_match: SeccompAction,
) -> Result<BpfProgram, SeccompError> {
    let rules: BTreeMap<i64, Vec<SeccompRule>> = map
        .into_iter()
        .map(|(nr, rules)| (nr, rules.unwrap_or_default()))
        .collect();
    let filter = SeccompFilter::new(rules, mismatch, on_match, target_arch()?)
        .map_err(|e| SeccompError::Compile(e.to_string()))?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| SeccompError::Compile(e.to_string()))
}

/// wharf's default profile: everything allowed but [`DEFAULT_DENIED`],
/// user-namespace creation and `clone3`.
pub fn default_programs() -> Result<Vec<BpfProgram>, SeccompError> {
    let mut denied = RuleMap::new();
    for name in DEFAULT_DENIED {
        if let Some(nr) = syscall_nr(name) {
            add_rule(&mut denied, nr, None);
        }
    }
    let newuser = libc::CLONE_NEWUSER as u64;
    for name in ["unshare", "clone"] {
        if let Some(nr) = syscall_nr(name) {
            // The flags are the first argument of both on the architectures
            // seccompiler supports.
            let cond = SeccompCondition::new(
                0,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::MaskedEq(newuser),
                newuser,
            )
            .map_err(|e| SeccompError::Compile(e.to_string()))?;
            let rule =
                SeccompRule::new(vec![cond]).map_err(|e| SeccompError::Compile(e.to_string()))?;
            add_rule(&mut denied, nr, Some(rule));
        }
    }
    let mut programs = vec![compile(
        denied,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
    )?];
    if let Some(nr) = syscall_nr("clone3") {
        let mut clone3 = RuleMap::new();
        add_rule(&mut clone3, nr, None);
        programs.push(compile(
            clone3,
            SeccompAction::Allow,
            SeccompAction::Errno(libc::ENOSYS as u32),
        )?);
    }
    Ok(programs)
}

fn action(action: LinuxSeccompAction, errno: Option<u32>) -> Result<SeccompAction, SeccompError> {
    Ok(match action {
        LinuxSeccompAction::ScmpActAllow => SeccompAction::Allow,
        LinuxSeccompAction::ScmpActErrno => {
            SeccompAction::Errno(errno.unwrap_or(libc::EPERM as u32))
        }
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            SeccompAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => SeccompAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => SeccompAction::Trap,
        LinuxSeccompAction::ScmpActLog => SeccompAction::Log,
        LinuxSeccompAction::ScmpActTrace => SeccompAction::Trace(errno.unwrap_or(0)),
        other @ LinuxSeccompAction::ScmpActNotify => {
            return Err(SeccompError::UnsupportedAction(other.to_string()));
        }
    })
}

/// The rule (argument conditions) of one spec entry; None when it has none.
fn rule_of(syscall: &LinuxSyscall, name: &str) -> Result<Option<SeccompRule>, SeccompError> {
    let args = match syscall.args() {
        Some(args) if !args.is_empty() => args,
        _ => return Ok(None),
    };
    let bad = |message: String| SeccompError::Rule {
        syscall: name.to_string(),
        message,
    };
    let mut conditions = Vec::with_capacity(args.len());
    for arg in args {
        let index = u8::try_from(arg.index())
            .ok()
            .filter(|i| *i < 6)
            .ok_or_else(|| bad(format!("argument index {} is out of range", arg.index())))?;
        let (op, value) = match arg.op() {
            LinuxSeccompOperator::ScmpCmpEq => (SeccompCmpOp::Eq, arg.value()),
            LinuxSeccompOperator::ScmpCmpNe => (SeccompCmpOp::Ne, arg.value()),
            LinuxSeccompOperator::ScmpCmpLt => (SeccompCmpOp::Lt, arg.value()),
            LinuxSeccompOperator::ScmpCmpLe => (SeccompCmpOp::Le, arg.value()),
            LinuxSeccompOperator::ScmpCmpGt => (SeccompCmpOp::Gt, arg.value()),
            LinuxSeccompOperator::ScmpCmpGe => (SeccompCmpOp::Ge, arg.value()),
            // libseccomp's convention: value is the mask, valueTwo the datum.
            LinuxSeccompOperator::ScmpCmpMaskedEq => (
                SeccompCmpOp::MaskedEq(arg.value()),
                arg.value_two().unwrap_or(0),
            ),
        };
        conditions.push(
            SeccompCondition::new(index, SeccompCmpArgLen::Qword, op, value)
                .map_err(|e| bad(e.to_string()))?,
        );
    }
    SeccompRule::new(conditions)
        .map(Some)
        .map_err(|e| bad(e.to_string()))
}

/// The programs for a runtime-spec profile, in installation order. Empty
/// when the profile allows everything.
pub fn spec_programs(profile: &LinuxSeccomp) -> Result<Vec<BpfProgram>, SeccompError> {
    let default = action(profile.default_action(), profile.default_errno_ret())?;
    // Every syscall some rule names (ALLOW in the base filter), and the
    // rules grouped by their action, in first-seen order.
    let mut named = RuleMap::new();
    let mut groups: Vec<(SeccompAction, RuleMap)> = Vec::new();
    for syscall in profile.syscalls().iter().flatten() {
        let act = action(syscall.action(), syscall.errno_ret())?;
        if act == default {
            continue;
        }
        for name in syscall.names() {
            let Some(nr) = syscall_nr(name) else { continue };
            let rule = rule_of(syscall, name)?;
            add_rule(&mut named, nr, rule.clone());
            if act != SeccompAction::Allow {
                let idx = match groups.iter().position(|(a, _)| *a == act) {
                    Some(i) => i,
                    None => {
                        groups.push((act.clone(), RuleMap::new()));
                        groups.len() - 1
                    }
                };
                add_rule(&mut groups[idx].1, nr, rule);
            }
        }
    }
    let mut programs = Vec::new();
    if default != SeccompAction::Allow {
        programs.push(compile(named, default, SeccompAction::Allow)?);
    }
    for (act, rules) in groups {
        programs.push(compile(rules, SeccompAction::Allow, act)?);
    }
    Ok(programs)
}

/// Installs `programs` on the calling thread, in order. Hand-written rather
/// than `seccompiler::apply_filter` because that one always sets
/// no_new_privs, which the spec decides on its own.
pub fn install(programs: &[BpfProgram]) -> Result<(), SeccompError> {
    #[repr(C)]
    struct SockFprog {
        len: u16,
        filter: *const seccompiler::sock_filter,
    }
    for program in programs {
        let len = u16::try_from(program.len())
            .map_err(|_| SeccompError::Compile("the filter is too large".into()))?;
        let prog = SockFprog {
            len,
            filter: program.as_ptr(),
        };
        // SAFETY: `prog` points at a live, correctly sized BPF program; the
        // kernel copies it before returning.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0,
                &prog as *const SockFprog,
            )
        };
        if rc != 0 {
            return Err(SeccompError::Install(std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxSeccompArgBuilder, LinuxSeccompBuilder, LinuxSyscallBuilder};

    #[test]
    fn the_default_profile_compiles_and_knows_every_name() {
        for name in DEFAULT_DENIED.iter().chain(&["unshare", "clone", "clone3"]) {
            assert!(syscall_nr(name).is_some(), "{name}");
        }
        let programs = default_programs().unwrap();
        assert_eq!(programs.len(), 2);
        assert!(programs.iter().all(|p| !p.is_empty()));
    }

    fn syscall(names: &[&str], act: LinuxSeccompAction) -> LinuxSyscall {
        LinuxSyscallBuilder::default()
            .names(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .action(act)
            .build()
            .unwrap()
    }

    #[test]
    fn a_docker_like_profile_becomes_a_base_filter_and_one_per_action() {
        let personality = LinuxSyscallBuilder::default()
            .names(vec!["personality".to_string()])
            .action(LinuxSeccompAction::ScmpActAllow)
            .args(vec![
                LinuxSeccompArgBuilder::default()
                    .index(0usize)
                    .value(0u64)
                    .op(LinuxSeccompOperator::ScmpCmpEq)
                    .build()
                    .unwrap(),
            ])
            .build()
            .unwrap();
        let clone3 = LinuxSyscallBuilder::default()
            .names(vec!["clone3".to_string()])
            .action(LinuxSeccompAction::ScmpActErrno)
            .errno_ret(libc::ENOSYS as u32)
            .build()
            .unwrap();
        let profile = LinuxSeccompBuilder::default()
            .default_action(LinuxSeccompAction::ScmpActErrno)
            .syscalls(vec![
                syscall(
                    &["read", "write", "no_such_syscall_anywhere"],
                    LinuxSeccompAction::ScmpActAllow,
                ),
                personality,
                clone3,
            ])
            .build()
            .unwrap();
        let programs = spec_programs(&profile).unwrap();
        assert_eq!(programs.len(), 2);
    }

    #[test]
    fn an_allow_everything_profile_needs_no_filter() {
        let profile = LinuxSeccompBuilder::default()
            .default_action(LinuxSeccompAction::ScmpActAllow)
            .syscalls(vec![syscall(&["read"], LinuxSeccompAction::ScmpActAllow)])
            .build()
            .unwrap();
        assert!(spec_programs(&profile).unwrap().is_empty());
    }

    #[test]
    fn notify_and_bad_argument_indexes_are_refused() {
        let profile = LinuxSeccompBuilder::default()
            .default_action(LinuxSeccompAction::ScmpActAllow)
            .syscalls(vec![syscall(&["read"], LinuxSeccompAction::ScmpActNotify)])
            .build()
            .unwrap();
        assert!(matches!(
            spec_programs(&profile),
            Err(SeccompError::UnsupportedAction(_))
        ));
        let bad = LinuxSyscallBuilder::default()
            .names(vec!["read".to_string()])
            .action(LinuxSeccompAction::ScmpActErrno)
            .args(vec![
                LinuxSeccompArgBuilder::default()
                    .index(9usize)
                    .value(0u64)
                    .op(LinuxSeccompOperator::ScmpCmpEq)
                    .build()
                    .unwrap(),
            ])
            .build()
            .unwrap();
        let profile = LinuxSeccompBuilder::default()
            .default_action(LinuxSeccompAction::ScmpActAllow)
            .syscalls(vec![bad])
            .build()
            .unwrap();
        let err = spec_programs(&profile).unwrap_err().to_string();
        assert!(err.contains("read") && err.contains("9"), "{err}");
    }

    #[test]
    fn unconditional_rules_win_over_conditional_ones() {
        let mut map = RuleMap::new();
        let cond = SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, 1).unwrap();
        add_rule(&mut map, 1, Some(SeccompRule::new(vec![cond]).unwrap()));
        add_rule(&mut map, 1, None);
        assert!(map[&1].is_none());
    }
}
