//! Hidden subcommands the daemon starts as processes of their own:
//! `wharf-runner runtime run ...` (the built-in OCI runtime) and
//! `wharf-runner shim ...` (a container's monitor). Both fork or clone,
//! so `main` calls them before any async runtime or thread exists.
//!
//! Calls `runtime`, `shim`, `cgroups`; called by `cli::main` only.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::unistd::Pid;
use oci_spec::runtime::LinuxResources;

use crate::cgroups;
use crate::runtime::HookError;

const RUNTIME_USAGE: &str =
    "usage: wharf-runner runtime run --bundle DIR [--pid-file FILE] [--console-socket PATH] ID";

/// `wharf-runner runtime run --bundle DIR [--pid-file FILE] ID`: runs the
/// bundle in the foreground (like `runc run`) and exits with the
/// container's exit code, or 125/126/127 when it could not be started.
pub fn runtime_main(args: &[String]) -> i32 {
    let Some((sub, rest)) = args.split_first() else {
        eprintln!("{RUNTIME_USAGE}");
        return 125;
    };
    if sub == "exec" {
        return crate::exec_main::runtime_exec_main(rest);
    }
    if sub == "reap" {
        return crate::exec_main::reap_main(rest);
    }
    if sub != "run" {
        eprintln!("{RUNTIME_USAGE}");
        return 125;
    }
    let mut bundle: Option<PathBuf> = None;
    let mut pid_file: Option<PathBuf> = None;
    let mut console_socket: Option<PathBuf> = None;
    let mut id: Option<String> = None;
    let mut it = rest.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| -> Option<PathBuf> {
            if arg == name {
                it.next().map(PathBuf::from)
            } else {
                arg.strip_prefix(&format!("{name}=")).map(PathBuf::from)
            }
        };
        if let Some(v) = value("--bundle") {
            bundle = Some(v);
        } else if let Some(v) = value("--pid-file") {
            pid_file = Some(v);
        } else if let Some(v) = value("--console-socket") {
            console_socket = Some(v);
        } else if id.is_none() && !arg.starts_with('-') {
            id = Some(arg.clone());
        } else {
            eprintln!("{RUNTIME_USAGE}");
            return 125;
        }
    }
    let (Some(bundle), Some(id)) = (bundle, id) else {
        eprintln!("{RUNTIME_USAGE}");
        return 125;
    };
    // runc's protocol: connect now, the container sends its pty master.
    let console = match &console_socket {
        Some(path) => match std::os::unix::net::UnixStream::connect(path) {
            Ok(s) => Some(std::os::fd::OwnedFd::from(s)),
            Err(e) => {
                eprintln!("wharf-runner: console socket {}: {e}", path.display());
                return 125;
            }
        },
        None => None,
    };
    let cgroup = match cgroup_of(&bundle) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("wharf-runner: container {id}: {e}");
            return 125;
        }
    };
    let mut before_start = |pid: Pid| -> Result<(), HookError> {
        if let Some((parent, name, resources)) = &cgroup {
            let hierarchy = cgroups::detect(Path::new(cgroups::CGROUP_ROOT))?;
            let fs: Arc<dyn cgroups::CgroupFs> = Arc::new(cgroups::HostFs);
            // The daemon makes the cgroup before starting us (so a bad limit
            // fails its `start` cleanly); run standalone, we make it.
            let mut manager = cgroups::Manager::open(fs.clone(), &hierarchy, parent, name)?;
            if manager.dirs().is_empty() {
                manager = cgroups::Manager::create(fs, &hierarchy, parent, name, resources)?;
            }
            manager.add_process(pid)?;
        }
        Ok(())
    };
    let mut started = |pid: Pid| {
        if let Some(path) = &pid_file
            && let Err(e) = crate::shim::write_atomic(path, pid.as_raw().to_string().as_bytes())
        {
            eprintln!("wharf-runner: pid file {}: {e}", path.display());
        }
    };
    match crate::runtime::run_with_console(&bundle, &id, console, &mut before_start, &mut started) {
        Ok(status) => status.code(),
        Err(e) => {
            eprintln!("wharf-runner: {e}");
            e.exit_code()
        }
    }
}

/// The cgroup the bundle asks for: `linux.cgroupsPath` of the form
/// `/PARENT/NAME` (the daemon writes `/wharf/<id>`), and its resources.
/// `None` when the spec names none.
pub(crate) fn cgroup_of(bundle: &Path) -> Result<Option<(String, String, LinuxResources)>, String> {
    let spec = crate::bundle::load_bundle(bundle).map_err(|e| e.to_string())?;
    let Some(linux) = spec.linux() else {
        return Ok(None);
    };
    let Some(path) = linux.cgroups_path() else {
        return Ok(None);
    };
    let text = path.to_string_lossy();
    let parts: Vec<&str> = text.trim_start_matches('/').split('/').collect();
    let [parent, name] = parts.as_slice() else {
        return Err(format!(
            "linux.cgroupsPath {text:?}: the built-in runtime takes /PARENT/NAME"
        ));
    };
    Ok(Some((
        parent.to_string(),
        name.to_string(),
        linux.resources().clone().unwrap_or_default(),
    )))
}

const SHIM_USAGE: &str =
    "usage: wharf-runner shim --bundle DIR [--runtime PATH] [--tty] [--stdin] [--wait-attach] ID";

/// `wharf-runner shim --bundle DIR [--runtime PATH] ID`: the container's
/// monitor. Runs `wharf-runner runtime run --bundle DIR --pid-file
/// DIR/init.pid ID` (or, with `--runtime`, that binary with runc's command
/// line and its state under `DIR/runc`) with its output logged into DIR and
/// records its end (see `shim`). Started by the daemon in a session of its
/// own, so it outlives the daemon.
pub fn shim_main(args: &[String]) -> i32 {
    // A session of its own keeps the shim (and so the container) alive when
    // the daemon or its terminal goes away. Fails only for a process-group
    // leader, which a shim spawned by the daemon is not.
    if let Err(e) = nix::unistd::setsid() {
        eprintln!("wharf-runner shim: setsid: {e}");
    }
    let mut bundle: Option<PathBuf> = None;
    let mut runtime: Option<PathBuf> = None;
    let mut id: Option<String> = None;
    let mut io = crate::shim::Stdio::default();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--bundle" => bundle = it.next().map(PathBuf::from),
            "--runtime" => runtime = it.next().map(PathBuf::from),
            "--tty" => io.tty = true,
            "--stdin" => io.stdin = true,
            "--wait-attach" => io.wait_attach = true,
            a if id.is_none() && !a.starts_with('-') => id = Some(a.to_string()),
            _ => {
                eprintln!("{SHIM_USAGE}");
                return 125;
            }
        }
    }
    let (Some(bundle), Some(id)) = (bundle, id) else {
        eprintln!("{SHIM_USAGE}");
        return 125;
    };
    let pid_file = bundle.join(crate::shim::INIT_PID_FILE);
    let result = match &runtime {
        // The built-in runtime runs in a fork of the shim: the same code as
        // `wharf-runner runtime run --bundle DIR --pid-file FILE ID`, one
        // exec fewer.
        None => {
            let mut args: Vec<String> = vec![
                "run".into(),
                "--bundle".into(),
                bundle.display().to_string(),
                "--pid-file".into(),
                pid_file.display().to_string(),
            ];
            if io.tty {
                // Relative: the runtime runs in the container dir, whose
                // path may be too long for a socket address.
                args.extend([
                    "--console-socket".into(),
                    crate::stdio::CONSOLE_SOCKET.into(),
                ]);
            }
            args.push(id.clone());
            crate::shim::run_with_stdio(
                &bundle,
                crate::shim::Start::Forked(&|| runtime_main(&args)),
                io,
            )
        }
        // `--keep`: the container (and so its cgroup) stays after it exits,
        // so the daemon can read the OOM counter before `delete`. With a
        // terminal, runc sends the pty master only when detached (`run
        // --detach`, which keeps the container too): the shim then reaps
        // the container as a subreaper.
        Some(runtime) => {
            let mut command: Vec<std::ffi::OsString> = vec![
                runtime.clone().into(),
                "--root".into(),
                bundle.join(EXTERNAL_STATE_DIR).into(),
                "run".into(),
            ];
            if io.tty {
                io.detached_runtime = true;
                command.extend([
                    "--detach".into(),
                    "--console-socket".into(),
                    crate::stdio::CONSOLE_SOCKET.into(),
                ]);
            } else {
                command.push("--keep".into());
            }
            command.extend([
                "--bundle".into(),
                bundle.clone().into(),
                "--pid-file".into(),
                pid_file.into(),
                id.into(),
            ]);
            crate::shim::run_with_stdio(&bundle, crate::shim::Start::Command(&command), io)
        }
    };
    let record = match result {
        Ok(record) => record,
        Err(e) => {
            eprintln!("wharf-runner shim: {e}");
            return 125;
        }
    };
    if runtime.is_some() {
        translate_runtime_failure(&bundle, record);
    }
    0
}

/// Where an external runtime keeps its state for one container (its
/// `--root`), inside the container's directory.
pub const EXTERNAL_STATE_DIR: &str = "runc";

/// An external runtime that could not exec the command exits 1 with
/// "unable to start container process: exec: ..." on stderr; docker turns
/// that into 127 (not found) or 126 (cannot be run), and so do we, so a
/// container behaves the same under every runtime.
fn translate_runtime_failure(bundle: &Path, record: crate::shim::ExitRecord) {
    if record.exit_code != 1 || record.signal.is_some() {
        return;
    }
    let log = bundle.join(crate::shim::LOG_FILE);
    let Ok(entries) = crate::logs::read_entries(&log, Some(5)) else {
        return;
    };
    let Some(line) = entries
        .iter()
        .rev()
        .find(|e| e.stream == crate::logs::Stream::Stderr)
        .map(|e| e.log.as_str())
    else {
        return;
    };
    if !line.contains("unable to start container process: exec:") {
        return;
    }
    let code = if line.contains("no such file or directory")
        || line.contains("executable file not found")
    {
        127
    } else if line.contains("permission denied") || line.contains("exec format error") {
        126
    } else {
        125
    };
    let record = crate::shim::ExitRecord {
        exit_code: code,
        ..record
    };
    if let Ok(json) = serde_json::to_vec(&record)
        && let Err(e) = crate::shim::write_atomic(&bundle.join(crate::shim::EXIT_FILE), &json)
    {
        eprintln!("wharf-runner shim: recording the exit: {e}");
    }
}
