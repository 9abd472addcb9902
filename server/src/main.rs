//! The `wharf-server` binary: argument parsing, logging, and a call into the
//! library.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use wharf_server::Settings;

#[derive(Parser)]
#[command(
    name = "wharf-server",
    version,
    about = "wharf's OCI registry and control plane"
)]
struct Cli {
    /// TOML config file (see config/server.toml); WHARF_* variables and flags override it.
    #[arg(long, global = true, env = "WHARF_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (catalog and blobs of the embedded default).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the registry.
    Serve {
        /// Address to listen on, e.g. 127.0.0.1:5000.
        #[arg(long)]
        listen: Option<String>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WHARF_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();

    let mut overrides = Vec::new();
    if let Some(dir) = &cli.data_dir {
        overrides.push(("data_dir", dir.display().to_string()));
    }
    match cli.command {
        Command::Serve { listen } => {
            if let Some(l) = listen {
                overrides.push(("listen", l));
            }
            let settings = Settings::load(cli.config.as_deref(), std::env::vars(), &overrides)?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            rt.block_on(wharf_server::serve(&settings))?;
        }
    }
    Ok(())
}
