fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match args.split_first() {
        Some((cmd, rest)) if cmd == "runtime" => wharf_runner::internal::runtime_main(rest),
        Some((cmd, rest)) if cmd == "shim" => wharf_runner::internal::shim_main(rest),
        Some((cmd, rest)) if cmd == "daemon" => {
            tracing_subscriber::fmt().with_writer(std::io::stderr).init();
            let rt = tokio::runtime::Runtime::new().unwrap();
            let cfg = wharf_runner::daemon::Config { root: rest[0].clone().into(), socket: rest[1].clone().into(), default_registry: "docker.io".into(), insecure_registries: vec![] };
            match rt.block_on(wharf_runner::daemon::run(cfg)) { Ok(()) => 0, Err(e) => { eprintln!("{e}"); 1 } }
        }
        _ => 125,
    };
    std::process::exit(code);
}
