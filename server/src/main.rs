//! The `wharf-server` binary: argument parsing, logging, and calls into the
//! library.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use wharf_server::Settings;
use wharf_server::admin;
use wharf_server::catalog::Catalog;
use wharf_server::config::LogFormat;
use wharf_server::fleet::client as fleet;

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
    /// The running server the fleet commands (node, deploy, deployments)
    /// talk to; default: from the config's listen address and TLS.
    #[arg(long, global = true, env = "WHARF_SERVER_URL", value_name = "URL")]
    server: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the registry.
    Serve(ServeArgs),
    /// Manage users.
    #[command(subcommand)]
    User(UserCommand),
    /// Give a user actions (pull,push,delete) on a repository pattern such as team/*.
    Grant {
        user: String,
        pattern: String,
        actions: String,
    },
    /// Take back a user's grant on a pattern.
    Revoke { user: String, pattern: String },
    /// Let anyone pull (without logging in) from repositories matching a pattern.
    Public {
        pattern: String,
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
    /// Manage robot accounts (credentials for machines).
    #[command(subcommand)]
    Robot(RobotCommand),
    /// Collect garbage now: untagged manifests (by [gc] untagged policy),
    /// unreferenced blobs, stale uploads and stray store objects, while the
    /// registry keeps serving. Settings come from [gc] in the config.
    Gc {
        /// Report what would be removed; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Runner nodes of the fleet: join tokens, listing, removal.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Deploy an image to the fleet's runner nodes.
    Deploy(DeployArgs),
    /// The fleet's deployments: list, inspect, logs, remove.
    #[command(subcommand)]
    Deployments(DeploymentsCommand),
    /// Fill the catalog with a large synthetic one (benchmarks and scale
    /// tests of the web catalog; see server/src/seed.rs). Not for a real
    /// registry.
    #[command(hide = true)]
    Seed {
        #[arg(long, default_value_t = 10_000)]
        repositories: u32,
        #[arg(long, default_value_t = 100_000)]
        tags: u32,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args, Default)]
struct ServeArgs {
    /// Address to listen on, e.g. 127.0.0.1:5000.
    #[arg(long)]
    listen: Option<String>,
    /// PEM certificate chain to serve TLS with (needs --tls-key).
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// Serve TLS with a CA and certificate made in <data-dir>/tls on first
    /// start (reused later); prints where to install the CA.
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_key"])]
    tls_self_signed: bool,
    /// Extra name (DNS name or IP address) for the self-signed certificate;
    /// may be given several times.
    #[arg(long, value_name = "NAME")]
    tls_san: Vec<String>,
    /// Log format: text or json (one JSON object a line).
    #[arg(long, value_parser = ["text", "json"])]
    log_format: Option<String>,
}

#[derive(Subcommand)]
enum NodeCommand {
    /// Join tokens.
    #[command(subcommand)]
    Token(NodeTokenCommand),
    /// List the nodes.
    #[command(alias = "list")]
    Ls {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a node: its credential and robot user go, its replicas move.
    #[command(alias = "rm")]
    Remove { name: String },
}

#[derive(Subcommand)]
enum NodeTokenCommand {
    /// Create a one-time join token (printed on standard output).
    Create {
        /// How long it may be used: 30m, 1h, 7d.
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// Repository pattern the joining node may pull (repeatable).
        #[arg(long, value_name = "PATTERN")]
        pull: Vec<String>,
    },
}

#[derive(clap::Args)]
struct DeployArgs {
    /// The image, on this registry (`repo:tag`) or with a registry host.
    image: String,
    /// Only this node.
    #[arg(long, value_name = "NAME")]
    node: Option<String>,
    /// Only nodes with this label (key=value, repeatable).
    #[arg(long, value_name = "K=V")]
    selector: Vec<String>,
    #[arg(long, default_value_t = 1)]
    replicas: u32,
    /// Environment variable (K=V, repeatable).
    #[arg(short = 'e', long = "env", value_name = "K=V")]
    env: Vec<String>,
    /// Published port, as docker's -p (repeatable).
    #[arg(short = 'p', long = "publish", value_name = "PORTS")]
    publish: Vec<String>,
    /// Memory limit (512m, 1g); nodes with less free memory are skipped.
    #[arg(short = 'm', long = "memory", value_name = "SIZE")]
    memory: Option<String>,
    #[arg(long, value_name = "N")]
    cpus: Option<String>,
    /// no, always, unless-stopped, on-failure[:N].
    #[arg(long, value_name = "POLICY")]
    restart: Option<String>,
    /// Deployment name (default: from the image's repository).
    #[arg(long)]
    name: Option<String>,
    /// Command and arguments (after --).
    #[arg(last = true)]
    cmd: Vec<String>,
}

#[derive(Subcommand)]
enum DeploymentsCommand {
    /// List deployments.
    #[command(alias = "list")]
    Ls {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// A deployment as JSON: spec, replicas, events.
    Inspect { name: String },
    /// The logs of every replica, relayed from the nodes.
    Logs {
        name: String,
        #[arg(short = 'f', long)]
        follow: bool,
        #[arg(long, value_name = "N")]
        tail: Option<u64>,
    },
    /// Remove a deployment (its containers are removed on the nodes).
    #[command(alias = "remove")]
    Rm { name: String },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create a user; the password is read from standard input.
    Add {
        name: String,
        #[arg(long)]
        admin: bool,
        #[arg(long, required = true)]
        password_stdin: bool,
    },
    /// List users, their kind and grants.
    List,
    /// Remove a user and their grants.
    Remove { name: String },
    /// Change a user's password (read from standard input).
    Passwd {
        name: String,
        #[arg(long, required = true)]
        password_stdin: bool,
    },
}

#[derive(Subcommand)]
enum RobotCommand {
    /// Create a robot with pull rights on patterns; prints its secret once.
    Add {
        name: String,
        #[arg(long, required = true)]
        pull: Vec<String>,
    },
}

/// The password on standard input, without its trailing newline.
fn read_password() -> anyhow::Result<String> {
    let mut s = String::new();
    std::io::stdin()
        .take(4096)
        .read_to_string(&mut s)
        .context("reading the password from standard input")?;
    let pw = s.trim_end_matches(['\n', '\r']).to_owned();
    if pw.is_empty() {
        bail!("no password on standard input");
    }
    Ok(pw)
}

/// Caps glibc's malloc arenas at two. By default every thread that
/// allocates may get an arena of its own (up to 8 per core); the runtime's
/// worker and blocking threads each kept the freed buffers of an upload or
/// download round in theirs, and resident memory during the small-request
/// benchmark that followed rose from ~17 to ~36 MB (27 MB with two arenas,
/// same throughput). Called before any thread exists. Not an allocator
/// crate: no extra C build, and glibc's trimming stays as it is.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a malloc parameter; called single-threaded.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Gives freed heap memory back to the system after large transfers. glibc
/// returns only the top of a heap on its own; the buffers of an upload or
/// download round stay resident in the middle of it (the small-request
/// benchmark after such rounds measured 33-39 MB against 17 MB on a fresh
/// server). Every 2 s, when more than 16 MiB sit free in malloc's arenas,
/// `malloc_trim` releases them: once after a burst, not on every request.
fn trim_freed_memory_in_background() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const FREE_BEFORE_TRIM: usize = 16 << 20;
        let spawned = std::thread::Builder::new()
            .name("malloc-trim".into())
            .spawn(|| {
                loop {
                    std::thread::sleep(std::time::Duration::from_secs(2));
                    // SAFETY: both only read or adjust malloc's own state.
                    unsafe {
                        if libc::mallinfo2().fordblks > FREE_BEFORE_TRIM {
                            libc::malloc_trim(0);
                        }
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "no malloc-trim thread; freed memory stays resident");
        }
    }
}

fn main() -> std::process::ExitCode {
    limit_malloc_arenas();
    let cli = Cli::parse();

    let mut overrides = Vec::new();
    if let Some(dir) = &cli.data_dir {
        overrides.push(("data_dir", dir.display().to_string()));
    }
    let mut extra_sans = Vec::new();
    if let Command::Serve(a) = &cli.command {
        if let Some(l) = &a.listen {
            overrides.push(("listen", l.clone()));
        }
        if let Some(c) = &a.tls_cert {
            overrides.push(("tls.cert", c.display().to_string()));
        }
        if let Some(k) = &a.tls_key {
            overrides.push(("tls.key", k.display().to_string()));
        }
        if a.tls_self_signed {
            overrides.push(("tls.self_signed", "true".to_owned()));
        }
        if let Some(f) = &a.log_format {
            overrides.push(("log.format", f.clone()));
        }
        extra_sans.clone_from(&a.tls_san);
    }
    let settings = Settings::load(cli.config.as_deref(), std::env::vars(), &overrides);
    let format = settings
        .as_ref()
        .map(|s| s.log.format)
        .unwrap_or(LogFormat::Text);
    init_logging(format);
    let result = settings
        .map_err(anyhow::Error::from)
        .and_then(|mut settings| {
            settings.tls.san.extend(extra_sans);
            if matches!(cli.command, Command::Serve(_)) {
                trim_freed_memory_in_background();
            }
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            rt.block_on(run(cli.command, settings, cli.server))
        });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One clear line (with its causes), no backtrace.
            eprintln!("wharf-server: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Logs to stderr, filtered by `WHARF_LOG` (default `info`), as text or as
/// one JSON object a line (fields at the top level, with the span of the
/// request, so every line of a request carries its `request_id`).
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WHARF_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
}

async fn open_catalog(settings: &Settings) -> anyhow::Result<Catalog> {
    std::fs::create_dir_all(&settings.data_dir)
        .with_context(|| format!("creating {}", settings.data_dir.display()))?;
    Ok(Catalog::open(&settings.catalog_url()).await?)
}

async fn run(command: Command, settings: Settings, server: Option<String>) -> anyhow::Result<()> {
    if let Command::Serve(_) = command {
        wharf_server::serve(&settings).await?;
        return Ok(());
    }
    if let Command::Gc { dry_run, json } = command {
        let catalog = open_catalog(&settings).await?;
        let store = wharf_server::store::BlobStore::open(&settings).await?;
        let mut opts = settings.gc_options();
        opts.dry_run = dry_run;
        let report = wharf_server::gc::collect(&catalog, &store, &opts).await?;
        if json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            println!("{report}");
        }
        return Ok(());
    }
    if let Command::Seed {
        repositories,
        tags,
        json,
    } = command
    {
        let catalog = open_catalog(&settings).await?;
        let store = wharf_server::store::BlobStore::open(&settings).await?;
        let opts = wharf_server::seed::SeedOptions { repositories, tags };
        let report = wharf_server::seed::seed(&catalog, &store, opts).await?;
        if json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            println!("{report}");
        }
        return Ok(());
    }
    let command = match command {
        Command::Node(c) => return node_command(c, &settings, server).await,
        Command::Deploy(a) => return deploy(a, &settings, server).await,
        Command::Deployments(c) => return deployments_command(c, &settings, server).await,
        other => other,
    };
    let catalog = open_catalog(&settings).await?;
    match command {
        Command::Serve(_)
        | Command::Gc { .. }
        | Command::Seed { .. }
        | Command::Node(_)
        | Command::Deploy(_)
        | Command::Deployments(_) => {
            unreachable!("handled above")
        }
        Command::User(UserCommand::Add { name, admin, .. }) => {
            admin::add_user(&catalog, &name, &read_password()?, admin).await?;
            println!("created user {name}{}", if admin { " (admin)" } else { "" });
        }
        Command::User(UserCommand::List) => {
            for line in admin::list_users(&catalog).await? {
                println!("{line}");
            }
        }
        Command::User(UserCommand::Remove { name }) => {
            admin::remove_user(&catalog, &name).await?;
            println!("removed user {name}");
        }
        Command::User(UserCommand::Passwd { name, .. }) => {
            admin::set_password(&catalog, &name, &read_password()?).await?;
            println!("changed the password of {name}");
        }
        Command::Grant {
            user,
            pattern,
            actions,
        } => {
            let granted = admin::grant(&catalog, &user, &pattern, &actions).await?;
            println!("granted {granted} on {pattern} to {user}");
        }
        Command::Revoke { user, pattern } => {
            admin::revoke(&catalog, &user, &pattern).await?;
            println!("revoked {user}'s grant on {pattern}");
        }
        Command::Public { pattern, state } => {
            let on = state == "on";
            admin::set_public(&catalog, &pattern, on).await?;
            println!(
                "{pattern} is {}",
                if on {
                    "public (anonymous pull)"
                } else {
                    "private"
                }
            );
        }
        Command::Robot(RobotCommand::Add { name, pull }) => {
            let secret = admin::add_robot(&catalog, &name, &pull).await?;
            eprintln!(
                "created robot {name} with pull on {}; its secret (shown once):",
                pull.join(", ")
            );
            println!("{secret}");
        }
    }
    Ok(())
}

async fn client(settings: &Settings, server: Option<String>) -> anyhow::Result<fleet::Client> {
    Ok(fleet::Client::for_settings(settings, server).await?)
}

async fn node_command(
    command: NodeCommand,
    settings: &Settings,
    server: Option<String>,
) -> anyhow::Result<()> {
    match command {
        NodeCommand::Token(NodeTokenCommand::Create { ttl, pull }) => {
            let req = wharf_fleet_proto::TokenRequest {
                ttl_secs: Some(fleet::parse_duration(&ttl)?),
                pull,
            };
            let made = client(settings, server).await?.create_token(&req).await?;
            eprintln!("join token (one use, valid for {ttl}):");
            println!("{}", made.token);
        }
        NodeCommand::Ls { json } => {
            let nodes = client(settings, server).await?.nodes().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&nodes)?);
            } else {
                print!("{}", fleet::nodes_table(&nodes));
            }
        }
        NodeCommand::Remove { name } => {
            client(settings, server).await?.remove_node(&name).await?;
            println!("removed node {name}");
        }
    }
    Ok(())
}

async fn deploy(a: DeployArgs, settings: &Settings, server: Option<String>) -> anyhow::Result<()> {
    let spec = wharf_fleet_proto::DeploymentSpec {
        name: a.name,
        image: a.image,
        node: a.node,
        selector: fleet::parse_labels(&a.selector)?,
        replicas: Some(a.replicas),
        container: wharf_fleet_proto::ContainerSpec {
            env: a.env,
            ports: a.publish,
            memory_bytes: a.memory.as_deref().map(fleet::parse_size).transpose()?,
            nano_cpus: a.cpus.as_deref().map(fleet::parse_cpus).transpose()?,
            restart: a.restart,
            cmd: a.cmd,
        },
    };
    let made = client(settings, server).await?.deploy(&spec).await?;
    print!("{}", fleet::deployment_summary(&made));
    Ok(())
}

async fn deployments_command(
    command: DeploymentsCommand,
    settings: &Settings,
    server: Option<String>,
) -> anyhow::Result<()> {
    match command {
        DeploymentsCommand::Ls { json } => {
            let all = client(settings, server).await?.deployments().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                print!("{}", fleet::deployments_table(&all));
            }
        }
        DeploymentsCommand::Inspect { name } => {
            let d = client(settings, server).await?.deployment(&name).await?;
            println!("{}", serde_json::to_string_pretty(&d)?);
        }
        DeploymentsCommand::Logs { name, follow, tail } => {
            let c = client(settings, server).await?;
            c.logs(&name, follow, tail, &mut std::io::stdout()).await?;
        }
        DeploymentsCommand::Rm { name } => {
            client(settings, server)
                .await?
                .remove_deployment(&name)
                .await?;
            println!("removed deployment {name}");
        }
    }
    Ok(())
}
