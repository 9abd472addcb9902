//! The `wharf-runner` binary: everything is in the library; `cli::main`
//! routes the hidden `runtime`/`shim` subcommands before any async
//! runtime starts, then parses the docker-like command line.

fn main() {
    std::process::exit(wharf_runner::cli::main());
}
