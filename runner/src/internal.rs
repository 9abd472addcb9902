//! Hidden subcommands the daemon starts as processes of their own:
//! `wharf-runner runtime run ...` (the built-in OCI runtime) and
//! `wharf-runner shim ...` (a container's monitor). Both fork or clone,
//! so `main` calls them before any async runtime or thread exists.
//!
//! Calls `runtime`, `shim`, `cgroups`; called by `cli::main` only.

use std::path::PathBuf;

const RUNTIME_USAGE: &str = "usage: wharf-runner runtime run --bundle DIR [--pid-file FILE] ID";

/// `wharf-runner runtime run --bundle DIR [--pid-file FILE] ID`: runs the
/// bundle in the foreground (like `runc run`) and exits with the
/// container's exit code, or 125/126/127 when it could not be started.
pub fn runtime_main(args: &[String]) -> i32 {
    let Some((sub, rest)) = args.split_first() else {
        eprintln!("{RUNTIME_USAGE}");
        return 125;
    };
    if sub != "run" {
        eprintln!("{RUNTIME_USAGE}");
        return 125;
    }
    let mut bundle: Option<PathBuf> = None;
    let mut pid_file: Option<PathBuf> = None;
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
    let _ = pid_file;
    match crate::runtime::run(&bundle, &id, &mut |_| Ok(())) {
        Ok(status) => status.code(),
        Err(e) => {
            eprintln!("wharf-runner: {e}");
            e.exit_code()
        }
    }
}

/// `wharf-runner shim ...`: see `shim`.
pub fn shim_main(_args: &[String]) -> i32 {
    eprintln!("wharf-runner shim: not built yet");
    125
}
