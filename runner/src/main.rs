//! The `wharf-runner` binary.
//!
//! For now only `wharf-runner runtime run --bundle DIR ID`: the built-in
//! runtime's single-threaded process (no async runtime is started before
//! it clones). The rest of the CLI comes later.

use std::path::PathBuf;

fn usage() -> ! {
    eprintln!("usage: wharf-runner runtime run --bundle DIR ID");
    std::process::exit(125);
}

fn runtime_run(args: &[String]) -> ! {
    let mut bundle: Option<PathBuf> = None;
    let mut id: Option<String> = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if arg == "--bundle" || arg == "-b" {
            bundle = Some(it.next().unwrap_or_else(|| usage()).into());
        } else if let Some(dir) = arg.strip_prefix("--bundle=") {
            bundle = Some(dir.into());
        } else if id.is_none() && !arg.starts_with('-') {
            id = Some(arg.clone());
        } else {
            usage();
        }
    }
    let (Some(bundle), Some(id)) = (bundle, id) else {
        usage()
    };
    match wharf_runner::runtime::run(&bundle, &id, &mut |_| Ok(())) {
        Ok(status) => std::process::exit(status.code()),
        Err(e) => {
            eprintln!("wharf-runner: {e}");
            std::process::exit(e.exit_code());
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [cmd, sub, rest @ ..] if cmd == "runtime" && sub == "run" => runtime_run(rest),
        _ => {
            eprintln!("wharf-runner: the runner is not built yet; see ARCHITECTURE.md");
            usage();
        }
    }
}
