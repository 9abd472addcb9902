//! The `wharf-runner` command line, shaped after docker's: clap
//! definitions, docker-style usage errors (exit 125), and dispatch to the
//! commands, which talk to the daemon over its socket (`client`).
//!
//! `main` sends the hidden `runtime`/`shim` subcommands to `internal`
//! before any tokio runtime exists (they fork), starts the daemon for
//! `daemon`, and otherwise runs one client command. Calls `internal`,
//! `daemon::run` (only for `daemon`), `api` and `bundle::parse`; called by
//! the binary's `main`.

pub mod attach;
pub mod client;
pub mod commit;
pub mod containers;
pub mod exec;
pub mod format;
pub mod images;
pub mod network;
pub mod progress;
pub mod stats;
pub mod tty;
pub mod volumes;

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{ArgAction, Args, Parser, Subcommand};

use crate::api::{Network, PullPolicy, RestartPolicy};
use crate::bundle as parse;
use client::{Client, Error};

/// Exit code of usage errors and of `run`/`create` failures (docker's).
pub const EXIT_USAGE: i32 = 125;

const RUN_USAGE: &str = "wharf-runner run [OPTIONS] IMAGE [COMMAND] [ARG...]";
const CREATE_USAGE: &str = "wharf-runner create [OPTIONS] IMAGE [COMMAND] [ARG...]";
const CONTAINER_RUN_USAGE: &str = "wharf-runner container run [OPTIONS] IMAGE [COMMAND] [ARG...]";
const CONTAINER_CREATE_USAGE: &str =
    "wharf-runner container create [OPTIONS] IMAGE [COMMAND] [ARG...]";

#[derive(Debug, Parser)]
#[command(
    name = "wharf-runner",
    about = "Run containers from images of a wharf registry",
    disable_help_subcommand = true
)]
pub struct Cli {
    /// The daemon's API socket
    #[arg(
        long,
        global = true,
        env = "WHARF_RUNNER_SOCKET",
        default_value = crate::daemon::DEFAULT_SOCKET,
        value_name = "PATH"
    )]
    pub socket: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon (needs root)
    Daemon(DaemonArgs),
    /// Create and run a new container from an image
    #[command(disable_help_flag = true, override_usage = RUN_USAGE)]
    Run(RunArgs),
    /// Create a new container
    #[command(disable_help_flag = true, override_usage = CREATE_USAGE)]
    Create(ContainerOpts),
    /// Start one or more stopped containers
    Start(StartArgs),
    /// Attach local standard input, output, and error streams to a running container
    Attach(AttachArgs),
    /// List containers
    Ps(PsArgs),
    /// Fetch the logs of a container
    Logs(LogsArgs),
    /// List port mappings or a specific mapping for the container
    Port(PortArgs),
    /// Stop one or more running containers
    Stop(StopArgs),
    /// Restart one or more containers
    Restart(StopArgs),
    /// Kill one or more running containers
    Kill(KillArgs),
    /// Remove one or more containers
    Rm(RmArgs),
    /// Block until one or more containers stop, then print their exit codes
    Wait(NamesArgs),
    /// Display a live stream of container(s) resource usage statistics
    Stats(stats::StatsArgs),
    /// Return low-level information on containers or images
    Inspect(InspectArgs),
    /// Execute a command in a running container
    Exec(exec::ExecArgs),
    /// Download an image from a registry
    Pull(PullArgs),
    /// List images
    Images(ImagesArgs),
    /// Remove one or more images
    Rmi(RmiArgs),
    /// Manage images
    #[command(subcommand)]
    Image(ImageCommand),
    /// Manage containers
    #[command(subcommand)]
    Container(ContainerCommand),
    /// Create a new image from a container's changes
    Commit(commit::CommitArgs),
    /// Create a tag TARGET_IMAGE that refers to SOURCE_IMAGE
    Tag(commit::TagArgs),
    /// Upload an image to a registry
    Push(commit::PushArgs),
    /// Log in to a registry
    Login(LoginArgs),
    /// Log out from a registry
    Logout(LogoutArgs),
    /// Manage volumes
    #[command(subcommand)]
    Volume(volumes::VolumeCommand),
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// List images
    #[command(visible_alias = "list")]
    Ls(ImagesArgs),
    /// Remove one or more images
    #[command(visible_alias = "remove")]
    Rm(RmiArgs),
    /// Download an image from a registry
    Pull(PullArgs),
    /// Display detailed information on one or more images
    Inspect(FormatNamesArgs),
    /// Remove unused images
    Prune(PruneArgs),
    /// Create a tag TARGET_IMAGE that refers to SOURCE_IMAGE
    Tag(commit::TagArgs),
    /// Upload an image to a registry
    Push(commit::PushArgs),
}

#[derive(Debug, Subcommand)]
pub enum ContainerCommand {
    /// List containers
    #[command(visible_aliases = ["ps", "list"])]
    Ls(PsArgs),
    /// Create and run a new container from an image
    #[command(disable_help_flag = true, override_usage = CONTAINER_RUN_USAGE)]
    Run(RunArgs),
    /// Create a new container
    #[command(disable_help_flag = true, override_usage = CONTAINER_CREATE_USAGE)]
    Create(ContainerOpts),
    /// Start one or more stopped containers
    Start(StartArgs),
    /// Attach local standard input, output, and error streams to a running container
    Attach(AttachArgs),
    /// Stop one or more running containers
    Stop(StopArgs),
    /// Restart one or more containers
    Restart(StopArgs),
    /// Kill one or more running containers
    Kill(KillArgs),
    /// Remove one or more containers
    #[command(visible_alias = "remove")]
    Rm(RmArgs),
    /// Block until one or more containers stop, then print their exit codes
    Wait(NamesArgs),
    /// Display detailed information on one or more containers
    Inspect(FormatNamesArgs),
    /// Fetch the logs of a container
    Logs(LogsArgs),
    /// List port mappings or a specific mapping for the container
    Port(PortArgs),
    /// Create a new image from a container's changes
    Commit(commit::CommitArgs),
    /// Execute a command in a running container
    Exec(exec::ExecArgs),
    /// Display a live stream of container(s) resource usage statistics
    Stats(stats::StatsArgs),
}

#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// State directory
    #[arg(long, default_value = crate::daemon::DEFAULT_ROOT, value_name = "DIR")]
    pub root: PathBuf,
    /// Registry for short image names
    #[arg(long, default_value = "docker.io", value_name = "HOST")]
    pub default_registry: String,
    /// Registry spoken to over plain HTTP (repeatable)
    #[arg(long = "insecure-registry", value_name = "HOST")]
    pub insecure_registries: Vec<String>,
    /// Runtime for containers that do not ask for one ("wharf" is built in)
    #[arg(long = "default-runtime", default_value = crate::daemon::BUILTIN_RUNTIME, value_name = "NAME")]
    pub default_runtime: String,
    /// An OCI runtime binary with runc's command line, as NAME=PATH (repeatable; "runc" is known)
    #[arg(long = "add-runtime", value_name = "NAME=PATH")]
    pub add_runtimes: Vec<String>,
    /// The bridge containers of --network bridge are attached to (made if missing)
    #[arg(long, default_value = crate::daemon::network::DEFAULT_BRIDGE, value_name = "NAME")]
    pub bridge: String,
    /// The bridge's subnet; its first address is the gateway, on the bridge
    #[arg(long = "bridge-subnet", default_value = crate::daemon::network::DEFAULT_SUBNET, value_name = "CIDR")]
    pub bridge_subnet: String,
    /// Join the fleet of this wharf-server (http(s)://HOST:PORT); needs --token the first time
    #[arg(long, value_name = "URL")]
    pub join: Option<String>,
    /// The join token (from `wharf-server node token create`)
    #[arg(
        long,
        env = "WHARF_RUNNER_JOIN_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
    /// This node's name in the fleet (default: the hostname)
    #[arg(long = "node-name", value_name = "NAME")]
    pub node_name: Option<String>,
    /// A node label for deployment selectors, KEY=VALUE (repeatable)
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Run container in background and print container ID
    #[arg(short, long)]
    pub detach: bool,
    /// Override the key sequence for detaching a container
    #[arg(long = "detach-keys", value_name = "string")]
    pub detach_keys: Option<String>,
    #[command(flatten)]
    pub opts: ContainerOpts,
}

/// The flags `run` and `create` share, then IMAGE [COMMAND] [ARG...].
#[derive(Debug, Args)]
pub struct ContainerOpts {
    /// Print help
    #[arg(long, action = ArgAction::Help)]
    pub help: Option<bool>,
    /// Automatically remove the container when it exits
    #[arg(long)]
    pub rm: bool,
    /// Keep STDIN open even if not attached
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Allocate a pseudo-TTY
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Assign a name to the container
    #[arg(long)]
    pub name: Option<String>,
    /// Set environment variables
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Read in a file of environment variables
    #[arg(long = "env-file", value_name = "FILE")]
    pub env_file: Vec<PathBuf>,
    /// Working directory inside the container
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    pub workdir: Option<String>,
    /// Username or UID (format: <name|uid>[:<group|gid>])
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Overwrite the default ENTRYPOINT of the image
    #[arg(long, allow_hyphen_values = true)]
    pub entrypoint: Option<String>,
    /// Container host name
    #[arg(short = 'h', long)]
    pub hostname: Option<String>,
    /// Memory limit
    #[arg(short = 'm', long, value_parser = parse_size, value_name = "BYTES")]
    pub memory: Option<i64>,
    /// Swap limit equal to memory plus swap: '-1' to enable unlimited swap
    #[arg(long = "memory-swap", value_parser = parse_swap, allow_hyphen_values = true, value_name = "BYTES")]
    pub memory_swap: Option<i64>,
    /// Number of CPUs
    #[arg(long, value_parser = parse_cpus, value_name = "DECIMAL")]
    pub cpus: Option<f64>,
    /// CPU shares (relative weight)
    #[arg(short = 'c', long = "cpu-shares", value_name = "INT")]
    pub cpu_shares: Option<u64>,
    /// Tune container pids limit (set -1 for unlimited)
    #[arg(long = "pids-limit", allow_hyphen_values = true, value_name = "INT")]
    pub pids_limit: Option<i64>,
    /// Connect a container to a network (bridge, none or host)
    #[arg(long, value_parser = parse_network, default_value = "bridge")]
    pub network: Network,
    /// Publish a container's port(s) to the host ([IP:][HOSTPORT:]CONTAINERPORT[/PROTO])
    #[arg(short = 'p', long = "publish", value_parser = network::parse_publish, value_name = "PORT")]
    pub publish: Vec<crate::api::PortMapping>,
    /// Publish all exposed ports to random ports
    #[arg(short = 'P', long = "publish-all")]
    pub publish_all: bool,
    /// Mount the container's root filesystem as read only
    #[arg(long = "read-only")]
    pub read_only: bool,
    /// Pull image before running ("always", "missing", "never")
    #[arg(long, value_parser = parse_pull, default_value = "missing")]
    pub pull: PullPolicy,
    /// Runtime to use for this container ("wharf", "runc", or one the daemon was given)
    #[arg(long, value_name = "STRING")]
    pub runtime: Option<String>,
    /// Restart policy to apply when a container exits ("no", "on-failure[:max-retries]", "always", "unless-stopped")
    #[arg(long, value_parser = RestartPolicy::parse, value_name = "POLICY")]
    pub restart: Option<RestartPolicy>,
    /// Bind mount a volume ([SRC:]DEST[:ro|rw,...])
    #[arg(short = 'v', long = "volume", value_name = "LIST")]
    pub volumes: Vec<String>,
    /// Mount a tmpfs directory (DEST[:OPTIONS])
    #[arg(long = "tmpfs", value_name = "LIST")]
    pub tmpfs: Vec<String>,
    /// Attach a filesystem mount to the container (type=bind|volume|tmpfs,source=..,target=..)
    #[arg(long = "mount", value_name = "MOUNT")]
    pub mounts: Vec<String>,
    /// The image, then the command and its arguments
    #[arg(
        value_name = "IMAGE",
        required = true,
        num_args = 1..,
        trailing_var_arg = true
    )]
    pub args: Vec<String>,
}

#[derive(Debug, Args)]
pub struct PortArgs {
    #[arg(value_name = "CONTAINER")]
    pub container: String,
    /// PRIVATE_PORT[/PROTO]
    #[arg(value_name = "PRIVATE_PORT")]
    pub port: Option<String>,
}

#[derive(Debug, Args)]
pub struct StartArgs {
    /// Attach STDOUT/STDERR
    #[arg(short, long)]
    pub attach: bool,
    /// Attach container's STDIN
    #[arg(short, long)]
    pub interactive: bool,
    /// Override the key sequence for detaching a container
    #[arg(long = "detach-keys", value_name = "string")]
    pub detach_keys: Option<String>,
    #[arg(value_name = "CONTAINER", required = true)]
    pub containers: Vec<String>,
}

#[derive(Debug, Args)]
pub struct AttachArgs {
    /// Do not attach STDIN
    #[arg(long = "no-stdin")]
    pub no_stdin: bool,
    /// Override the key sequence for detaching a container
    #[arg(long = "detach-keys", value_name = "string")]
    pub detach_keys: Option<String>,
    #[arg(value_name = "CONTAINER")]
    pub container: String,
}

#[derive(Debug, Args)]
pub struct PsArgs {
    /// Show all containers (default shows just running)
    #[arg(short, long)]
    pub all: bool,
    /// Only display container IDs
    #[arg(short, long)]
    pub quiet: bool,
    /// Don't truncate output
    #[arg(long)]
    pub no_trunc: bool,
    /// Format output using a custom template: 'table', 'table TEMPLATE', 'json', or a Go template
    #[arg(long, value_name = "string")]
    pub format: Option<String>,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Follow log output
    #[arg(short, long)]
    pub follow: bool,
    /// Number of lines to show from the end of the logs
    #[arg(short = 'n', long, default_value = "all", value_parser = parse_tail)]
    pub tail: String,
    /// Show timestamps
    #[arg(short, long)]
    pub timestamps: bool,
    #[arg(value_name = "CONTAINER")]
    pub container: String,
}

#[derive(Debug, Args)]
pub struct StopArgs {
    /// Seconds to wait before killing the container
    #[arg(
        short = 't',
        long = "time",
        visible_alias = "timeout",
        allow_hyphen_values = true
    )]
    pub time: Option<i64>,
    #[arg(value_name = "CONTAINER", required = true)]
    pub containers: Vec<String>,
}

#[derive(Debug, Args)]
pub struct KillArgs {
    /// Signal to send to the container
    #[arg(short, long, default_value = "KILL")]
    pub signal: String,
    #[arg(value_name = "CONTAINER", required = true)]
    pub containers: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    /// Force the removal of a running container (uses SIGKILL)
    #[arg(short, long)]
    pub force: bool,
    /// Remove anonymous volumes associated with the container
    #[arg(short = 'v', long = "volumes")]
    pub volumes: bool,
    #[arg(value_name = "CONTAINER", required = true)]
    pub containers: Vec<String>,
}

#[derive(Debug, Args)]
pub struct NamesArgs {
    #[arg(value_name = "CONTAINER", required = true)]
    pub containers: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ObjectType {
    Container,
    Image,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Return JSON for specified type
    #[arg(long = "type", value_enum)]
    pub object_type: Option<ObjectType>,
    #[command(flatten)]
    pub names: FormatNamesArgs,
}

#[derive(Debug, Args)]
pub struct FormatNamesArgs {
    /// Format output using a Go template
    #[arg(short, long)]
    pub format: Option<String>,
    #[arg(value_name = "NAME", required = true)]
    pub names: Vec<String>,
}

#[derive(Debug, Args)]
pub struct PullArgs {
    /// Suppress verbose output
    #[arg(short, long)]
    pub quiet: bool,
    #[arg(value_name = "NAME[:TAG|@DIGEST]")]
    pub reference: String,
}

#[derive(Debug, Args)]
pub struct ImagesArgs {
    /// Show all images (default hides intermediate images)
    #[arg(short, long)]
    pub all: bool,
    /// Only show image IDs
    #[arg(short, long)]
    pub quiet: bool,
    /// Don't truncate output
    #[arg(long)]
    pub no_trunc: bool,
}

#[derive(Debug, Args)]
pub struct RmiArgs {
    /// Force removal of the image
    #[arg(short, long)]
    pub force: bool,
    #[arg(value_name = "IMAGE", required = true)]
    pub images: Vec<String>,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Remove all unused images, not just dangling ones
    #[arg(short, long)]
    pub all: bool,
    /// Do not prompt for confirmation
    #[arg(short, long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// Username
    #[arg(short, long)]
    pub username: Option<String>,
    /// Password
    #[arg(short, long)]
    pub password: Option<String>,
    /// Take the password from stdin
    #[arg(long)]
    pub password_stdin: bool,
    /// The registry (default: the daemon's default registry)
    #[arg(value_name = "SERVER")]
    pub server: Option<String>,
}

#[derive(Debug, Args)]
pub struct LogoutArgs {
    #[arg(value_name = "SERVER")]
    pub server: Option<String>,
}

fn parse_size(s: &str) -> Result<i64, String> {
    parse::parse_memory(s).map_err(|e| e.to_string())
}

fn parse_swap(s: &str) -> Result<i64, String> {
    if s == "-1" {
        return Ok(-1);
    }
    parse_size(s)
}

fn parse_cpus(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("failed to parse {s} as a rational number")),
    }
}

fn parse_network(s: &str) -> Result<Network, String> {
    match s {
        "none" => Ok(Network::None),
        "host" => Ok(Network::Host),
        "bridge" | "default" => Ok(Network::Bridge),
        _ => Err(format!(
            "network {s} not found: only \"bridge\", \"none\" and \"host\" are supported"
        )),
    }
}

fn parse_pull(s: &str) -> Result<PullPolicy, String> {
    match s {
        "always" => Ok(PullPolicy::Always),
        "missing" => Ok(PullPolicy::Missing),
        "never" => Ok(PullPolicy::Never),
        _ => Err(format!(
            "invalid pull option: '{s}': must be one of \"always\", \"missing\" or \"never\""
        )),
    }
}

fn parse_tail(s: &str) -> Result<String, String> {
    if s == "all" || s.parse::<u64>().is_ok() {
        Ok(s.to_string())
    } else {
        Err(format!("expected \"all\" or a number, got {s:?}"))
    }
}

/// The subcommand path the user typed (`run`, `image rm`), for usage
/// messages; empty when there is none.
fn command_path(args: &[String]) -> String {
    let mut words = Vec::new();
    let mut it = args.iter().skip(1);
    while let Some(arg) = it.next() {
        if arg == "--socket" {
            it.next();
            continue;
        }
        if arg.starts_with('-') {
            if words.is_empty() {
                continue;
            }
            break;
        }
        words.push(arg.as_str());
        if words.len() == 2 || !matches!(words[0], "image" | "container" | "volume") {
            break;
        }
    }
    words.join(" ")
}

/// Turns a clap error into docker's usage message; returns the exit code.
fn usage_error(err: clap::Error, args: &[String]) -> i32 {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    match err.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = err.print();
            return 0;
        }
        _ => {}
    }
    let path = match err.kind() {
        ErrorKind::InvalidSubcommand => String::new(),
        _ => command_path(args),
    };
    let full = if path.is_empty() {
        "wharf-runner".to_string()
    } else {
        format!("wharf-runner {path}")
    };
    let context = |kind: ContextKind| match err.get(kind) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        Some(ContextValue::Strings(v)) => v.first().cloned(),
        _ => None,
    };
    let first_line = || {
        err.render()
            .to_string()
            .lines()
            .next()
            .unwrap_or("")
            .trim_start_matches("error: ")
            .to_string()
    };
    let message = match err.kind() {
        ErrorKind::UnknownArgument => {
            let arg = context(ContextKind::InvalidArg).unwrap_or_default();
            match arg.strip_prefix("--") {
                Some(long) => format!("unknown flag: --{}", long.split('=').next().unwrap_or("")),
                None => {
                    let short = arg.trim_start_matches('-').chars().next().unwrap_or('?');
                    format!("unknown shorthand flag: '{short}' in {arg}")
                }
            }
        }
        ErrorKind::InvalidSubcommand => {
            let sub = context(ContextKind::InvalidSubcommand).unwrap_or_default();
            format!("wharf-runner: '{sub}' is not a wharf-runner command.")
        }
        ErrorKind::MissingRequiredArgument | ErrorKind::TooFewValues if path.ends_with("exec") => {
            format!("\"{full}\" requires at least 2 arguments.")
        }
        ErrorKind::MissingRequiredArgument => {
            format!("\"{full}\" requires at least 1 argument.")
        }
        ErrorKind::ValueValidation | ErrorKind::InvalidValue => {
            match (
                context(ContextKind::InvalidArg),
                context(ContextKind::InvalidValue),
            ) {
                (Some(arg), Some(value)) => {
                    let flag = arg.split(' ').next().unwrap_or(&arg).to_string();
                    let reason = std::error::Error::source(&err)
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| "invalid value".into());
                    format!("invalid argument \"{value}\" for \"{flag}\" flag: {reason}")
                }
                _ => first_line(),
            }
        }
        _ => first_line(),
    };
    eprintln!("{message}");
    eprintln!("See '{full} --help'.");
    EXIT_USAGE
}

/// The binary's entry point; returns the process exit code.
pub fn main() -> i32 {
    let args: Vec<String> = std::env::args_os()
        .map(|a: OsString| a.to_string_lossy().into_owned())
        .collect();
    // These fork: no tokio runtime or thread may exist yet.
    match args.get(1).map(String::as_str) {
        Some("runtime") => return crate::internal::runtime_main(&args[2..]),
        Some("shim") => return crate::internal::shim_main(&args[2..]),
        _ => {}
    }
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(err) => return usage_error(err, &args),
    };
    if let Command::Daemon(daemon) = cli.command {
        return run_daemon(cli.socket, daemon);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wharf-runner: starting the async runtime: {e}");
            return 1;
        }
    };
    let failure = failure_code(&cli.command);
    let client = Client::new(cli.socket);
    match runtime.block_on(dispatch(&client, cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{e}");
            failure
        }
    }
}

fn run_daemon(socket: PathBuf, args: DaemonArgs) -> i32 {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let config = crate::daemon::Config {
        root: args.root,
        socket,
        default_registry: args.default_registry,
        insecure_registries: args.insecure_registries,
        default_runtime: args.default_runtime,
        runtimes: args.add_runtimes,
        bridge: args.bridge,
        bridge_subnet: args.bridge_subnet,
        fleet: crate::daemon::fleet::JoinOptions {
            url: args.join,
            token: args.token,
            node_name: args.node_name,
            labels: args.labels,
        },
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wharf-runner daemon: starting the async runtime: {e}");
            return 1;
        }
    };
    match runtime.block_on(crate::daemon::run(config)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("wharf-runner daemon: {e}");
            1
        }
    }
}

/// docker's exit code when a command fails before or outside the
/// container: 125 for run/create/start -a, 1 otherwise.
fn failure_code(command: &Command) -> i32 {
    match command {
        Command::Run(_)
        | Command::Create(_)
        | Command::Container(ContainerCommand::Run(_) | ContainerCommand::Create(_)) => EXIT_USAGE,
        Command::Start(a) | Command::Container(ContainerCommand::Start(a)) if a.attach => {
            EXIT_USAGE
        }
        _ => 1,
    }
}

async fn dispatch(client: &Client, command: Command) -> Result<i32, Error> {
    use ContainerCommand as C;
    use ImageCommand as I;
    match command {
        Command::Daemon(_) => Ok(0),
        Command::Run(a) | Command::Container(C::Run(a)) => containers::run(client, a).await,
        Command::Create(a) | Command::Container(C::Create(a)) => {
            containers::create(client, a).await
        }
        Command::Start(a) | Command::Container(C::Start(a)) => containers::start(client, a).await,
        Command::Attach(a) | Command::Container(C::Attach(a)) => attach::attach(client, a).await,
        Command::Ps(a) | Command::Container(C::Ls(a)) => containers::ps(client, a).await,
        Command::Logs(a) | Command::Container(C::Logs(a)) => containers::logs(client, a).await,
        Command::Port(a) | Command::Container(C::Port(a)) => network::port(client, a).await,
        Command::Stop(a) | Command::Container(C::Stop(a)) => containers::stop(client, a).await,
        Command::Restart(a) | Command::Container(C::Restart(a)) => {
            containers::restart(client, a).await
        }
        Command::Kill(a) | Command::Container(C::Kill(a)) => containers::kill(client, a).await,
        Command::Rm(a) | Command::Container(C::Rm(a)) => containers::rm(client, a).await,
        Command::Wait(a) | Command::Container(C::Wait(a)) => containers::wait(client, a).await,
        Command::Exec(a) | Command::Container(C::Exec(a)) => exec::exec(client, a).await,
        Command::Stats(a) | Command::Container(C::Stats(a)) => stats::stats(client, a).await,
        Command::Inspect(a) => containers::inspect(client, a.object_type, a.names).await,
        Command::Container(C::Inspect(a)) => {
            containers::inspect(client, Some(ObjectType::Container), a).await
        }
        Command::Image(I::Inspect(a)) => {
            containers::inspect(client, Some(ObjectType::Image), a).await
        }
        Command::Pull(a) | Command::Image(I::Pull(a)) => images::pull_command(client, a).await,
        Command::Images(a) | Command::Image(I::Ls(a)) => images::images(client, a).await,
        Command::Rmi(a) | Command::Image(I::Rm(a)) => images::rmi(client, a).await,
        Command::Image(I::Prune(a)) => images::prune(client, a).await,
        Command::Commit(a) | Command::Container(C::Commit(a)) => commit::commit(client, a).await,
        Command::Tag(a) | Command::Image(I::Tag(a)) => commit::tag(client, a).await,
        Command::Push(a) | Command::Image(I::Push(a)) => commit::push(client, a).await,
        Command::Login(a) => images::login(client, a).await,
        Command::Logout(a) => images::logout(client, a).await,
        Command::Volume(c) => volumes::dispatch(client, c).await,
    }
}

/// Prints one line on stdout, ignoring a closed pipe (`| head`).
pub(crate) fn outln(text: impl std::fmt::Display) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout().lock(), "{text}");
}

#[cfg(test)]
mod tests;
