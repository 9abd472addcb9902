//! The `wharf-runner` binary; everything is in the library (for now only
//! the hidden `runtime` subcommand: the CLI is being built).

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match args.split_first() {
        Some((cmd, rest)) if cmd == "runtime" => wharf_runner::internal::runtime_main(rest),
        Some((cmd, rest)) if cmd == "shim" => wharf_runner::internal::shim_main(rest),
        _ => {
            eprintln!("wharf-runner: the CLI is being built");
            125
        }
    };
    std::process::exit(code);
}
