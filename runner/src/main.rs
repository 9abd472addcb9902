//! The `wharf-runner` binary.

fn main() {
    eprintln!("wharf-runner: the runner is not built yet; see ARCHITECTURE.md");
    std::process::exit(125);
}
