//! The image and registry commands (`pull`, `images`, `rmi`,
//! `image prune`, `login`, `logout`) with docker's output, and the pull
//! that `run`/`create` share.
//!
//! Called by `cli::dispatch` and `cli::containers`; calls the daemon
//! through `client`, `progress` and `format`.

use std::io::{BufRead, IsTerminal, Read, Write};

use hyper::{Method, StatusCode};

use super::client::{Client, Error, Lines, encode};
use super::format;
use super::progress::{Progress, Sink};
use super::{ImagesArgs, LoginArgs, LogoutArgs, PruneArgs, PullArgs, RmiArgs, outln};
use crate::api::{
    ImageSummary, LoginRequest, LoginResponse, PruneReport, PullEvent, PullRequest, RemovedImage,
};

/// Passwords and usernames read from stdin are at most this long.
const MAX_SECRET: u64 = 64 * 1024;

/// Pulls `reference`, showing progress on `sink` (nothing when `quiet`).
/// Returns the pulled image's full reference when the daemon named it
/// (`Status: ... for REF`). A failure reported in the stream is returned
/// as its message alone, as docker prints it.
pub async fn pull(
    client: &Client,
    reference: &str,
    sink: Sink,
    quiet: bool,
) -> Result<Option<String>, Error> {
    let body = serde_json::to_vec(&PullRequest {
        reference: reference.to_string(),
    })
    .map_err(|e| Error::Message(format!("encoding the request: {e}")))?;
    let response = client
        .send(Method::POST, "/images/pull", Some(body))
        .await?;
    let mut lines = Lines::new(response.into_body());
    let mut progress = (!quiet).then(|| Progress::new(sink));
    let mut pulled = None;
    let result = loop {
        let line = match lines.next_line().await {
            Ok(Some(line)) => line,
            Ok(None) => break Ok(pulled),
            Err(e) => break Err(e),
        };
        let event: PullEvent = match serde_json::from_slice(&line) {
            Ok(event) => event,
            Err(e) => {
                break Err(Error::Transport(format!(
                    "bad pull event from the daemon: {e}"
                )));
            }
        };
        if let Some(error) = event.error {
            break Err(Error::Message(error));
        }
        if let Some(full) = event
            .status
            .strip_prefix("Status: ")
            .and_then(|s| s.rsplit_once(" for "))
            .map(|(_, r)| r.to_string())
        {
            pulled = Some(full);
        }
        if let Some(p) = progress.as_mut() {
            p.event(&event);
        }
    };
    if let Some(p) = progress.as_mut() {
        p.finish();
    }
    result
}

/// `pull`: progress on stdout, then the full reference.
pub async fn pull_command(client: &Client, args: PullArgs) -> Result<i32, Error> {
    let pulled = pull(client, &args.reference, Sink::Stdout, args.quiet).await?;
    outln(pulled.unwrap_or(args.reference));
    Ok(0)
}

/// docker shows Docker Hub names without `docker.io/` and `library/`.
fn familiar(repository: &str) -> &str {
    let name = repository
        .strip_prefix("docker.io/")
        .or_else(|| repository.strip_prefix("index.docker.io/"))
        .unwrap_or(repository);
    if repository.len() != name.len() {
        name.strip_prefix("library/").unwrap_or(name)
    } else {
        name
    }
}

/// Splits `repo:tag` at the tag's colon (not a registry port's).
fn split_tag(repo_tag: &str) -> (&str, &str) {
    match repo_tag.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo, tag),
        _ => (repo_tag, "<none>"),
    }
}

/// The `images` table (or ids with `-q`).
pub fn images_output(images: &[ImageSummary], args: &ImagesArgs, now: i64) -> String {
    let id = |i: &ImageSummary| {
        if args.no_trunc {
            i.id.clone()
        } else {
            format::short_id(&i.id)
        }
    };
    if args.quiet {
        let mut seen = Vec::new();
        for image in images {
            let id = id(image);
            if !seen.contains(&id) {
                seen.push(id);
            }
        }
        return seen.into_iter().map(|id| id + "\n").collect();
    }
    let mut rows = vec![
        ["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"]
            .map(String::from)
            .to_vec(),
    ];
    for image in images {
        let mut names: Vec<(String, String)> = image
            .repo_tags
            .iter()
            .map(|rt| {
                let (repo, tag) = split_tag(rt);
                (familiar(repo).to_string(), tag.to_string())
            })
            .collect();
        if names.is_empty() {
            names.push(("<none>".into(), "<none>".into()));
        }
        for (repo, tag) in names {
            rows.push(vec![
                repo,
                tag,
                id(image),
                format::ago(image.created, now),
                format::human_size(image.size),
            ]);
        }
    }
    format::table(&rows)
}

/// `images`.
pub async fn images(client: &Client, args: ImagesArgs) -> Result<i32, Error> {
    let mut images: Vec<ImageSummary> = client
        .json(Method::GET, "/images/json", None::<&()>)
        .await?;
    images.sort_by_key(|i| std::cmp::Reverse(i.created));
    let text = images_output(&images, &args, format::now());
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
    Ok(0)
}

/// `rmi`: `Untagged: X` / `Deleted: sha256:...` lines.
pub async fn rmi(client: &Client, args: RmiArgs) -> Result<i32, Error> {
    let mut code = 0;
    for name in &args.images {
        let path = format!("/images?name={}&force={}", encode(name), args.force);
        match client
            .json::<Vec<RemovedImage>>(Method::DELETE, &path, None::<&()>)
            .await
        {
            Ok(removed) => {
                for r in removed {
                    match r {
                        RemovedImage::Untagged(x) => outln(format!("Untagged: {x}")),
                        RemovedImage::Deleted(x) => outln(format!("Deleted: {x}")),
                    }
                }
            }
            Err(e @ Error::Connect(_)) => return Err(e),
            Err(e) => {
                eprintln!("{e}");
                code = 1;
            }
        }
    }
    Ok(code)
}

/// The text `image prune` prints for a report.
pub fn prune_output(report: &PruneReport) -> String {
    let mut out = String::new();
    if !report.images_deleted.is_empty() {
        out.push_str("Deleted Images:\n");
        for r in &report.images_deleted {
            match r {
                RemovedImage::Untagged(x) => out.push_str(&format!("untagged: {x}\n")),
                RemovedImage::Deleted(x) => out.push_str(&format!("deleted: {x}\n")),
            }
        }
        out.push('\n');
    }
    out.push_str(&format!(
        "Total reclaimed space: {}\n",
        format::human_size(report.space_reclaimed)
    ));
    out
}

/// Asks a yes/no question on stdin (docker's `[y/N]` prompt).
pub(super) fn confirm(question: &str) -> bool {
    print!("{question} [y/N] ");
    let _ = std::io::stdout().flush();
    let mut answer = String::new();
    let _ = std::io::stdin().lock().take(1024).read_line(&mut answer);
    matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}

/// `image prune`.
pub async fn prune(client: &Client, args: PruneArgs) -> Result<i32, Error> {
    if !args.force {
        let warning = if args.all {
            "WARNING! This will remove all images without at least one container associated to them.\nAre you sure you want to continue?"
        } else {
            "WARNING! This will remove all dangling images.\nAre you sure you want to continue?"
        };
        if !confirm(warning) {
            outln("Total reclaimed space: 0B");
            return Ok(0);
        }
    }
    let report: PruneReport = client
        .json(
            Method::POST,
            &format!("/images/prune?all={}", args.all),
            None::<&()>,
        )
        .await?;
    let _ = std::io::stdout()
        .lock()
        .write_all(prune_output(&report).as_bytes());
    Ok(0)
}

/// Reads one line from the terminal without echoing it.
fn read_hidden_line() -> std::io::Result<String> {
    use nix::sys::termios::{LocalFlags, SetArg, tcgetattr, tcsetattr};
    let stdin = std::io::stdin();
    let old = tcgetattr(&stdin).map_err(std::io::Error::from)?;
    let mut quiet = old.clone();
    quiet.local_flags.remove(LocalFlags::ECHO);
    quiet.local_flags.insert(LocalFlags::ECHONL);
    tcsetattr(&stdin, SetArg::TCSANOW, &quiet).map_err(std::io::Error::from)?;
    let mut line = String::new();
    let read = stdin.lock().take(MAX_SECRET).read_line(&mut line);
    let _ = tcsetattr(&stdin, SetArg::TCSANOW, &old);
    read?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

fn prompt(text: &str) -> Result<String, Error> {
    print!("{text}");
    let _ = std::io::stdout().flush();
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .take(MAX_SECRET)
        .read_line(&mut line)
        .map_err(|e| Error::Message(format!("Error: reading {text:?}: {e}")))?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

/// `login`: credentials from flags, stdin or prompts; the daemon checks
/// them against the registry and keeps them. Never prints the password.
pub async fn login(client: &Client, args: LoginArgs) -> Result<i32, Error> {
    let interactive = std::io::stdin().is_terminal();
    if args.password.is_some() && args.password_stdin {
        return Err(Error::Message(
            "Error: --password and --password-stdin are mutually exclusive".into(),
        ));
    }
    if args.password_stdin && args.username.is_none() {
        return Err(Error::Message(
            "Error: Must provide --username with --password-stdin".into(),
        ));
    }
    let username = match args.username {
        Some(u) => u,
        None if interactive => prompt("Username: ")?,
        None => {
            return Err(Error::Message(
                "Error: Cannot perform an interactive login from a non TTY device".into(),
            ));
        }
    };
    if username.trim().is_empty() {
        return Err(Error::Message("Error: Non-null Username Required".into()));
    }
    let password = if let Some(p) = args.password {
        eprintln!("WARNING! Using --password via the CLI is insecure. Use --password-stdin.");
        p
    } else if args.password_stdin {
        let mut text = String::new();
        std::io::stdin()
            .lock()
            .take(MAX_SECRET)
            .read_to_string(&mut text)
            .map_err(|e| Error::Message(format!("Error: reading the password: {e}")))?;
        text.trim_end_matches(['\r', '\n']).to_string()
    } else if interactive {
        print!("Password: ");
        let _ = std::io::stdout().flush();
        read_hidden_line()
            .map_err(|e| Error::Message(format!("Error: reading the password: {e}")))?
    } else {
        return Err(Error::Message(
            "Error: Cannot perform an interactive login from a non TTY device".into(),
        ));
    };
    if password.is_empty() {
        return Err(Error::Message("Error: Password Required".into()));
    }
    let request = LoginRequest {
        registry: args.server.unwrap_or_default(),
        username,
        password,
    };
    let answer: LoginResponse = client.json(Method::POST, "/auth", Some(&request)).await?;
    outln(answer.status);
    Ok(0)
}

/// `logout`.
pub async fn logout(client: &Client, args: LogoutArgs) -> Result<i32, Error> {
    let server = args.server.unwrap_or_default();
    let shown = if server.is_empty() {
        "the default registry".to_string()
    } else {
        server.clone()
    };
    let path = format!("/auth?registry={}", encode(&server));
    match client.call(Method::DELETE, &path).await {
        Ok(()) => {
            outln(format!("Removing login credentials for {shown}"));
            Ok(0)
        }
        Err(Error::Daemon { status, .. }) if status == StatusCode::NOT_FOUND => {
            outln(format!("Not logged in to {shown}"));
            Ok(0)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(id: &str, tags: &[&str], created: i64, size: u64) -> ImageSummary {
        ImageSummary {
            id: id.into(),
            repo_tags: tags.iter().map(|s| s.to_string()).collect(),
            repo_digests: vec![],
            created,
            size,
            containers: 0,
        }
    }

    #[test]
    fn images_table_like_docker() {
        let now = 1_000_000;
        let list = vec![
            image(
                "sha256:0123456789abcdef0123",
                &[
                    "localhost:5000/busybox:latest",
                    "docker.io/library/alpine:3",
                ],
                now - 14 * 86400,
                4_260_000,
            ),
            image("sha256:fedcba9876543210", &[], now - 7200, 1000),
        ];
        let args = ImagesArgs {
            all: false,
            quiet: false,
            no_trunc: false,
        };
        assert_eq!(
            images_output(&list, &args, now),
            "REPOSITORY               TAG       IMAGE ID       CREATED       SIZE\n\
             localhost:5000/busybox   latest    0123456789ab   2 weeks ago   4.26MB\n\
             alpine                   3         0123456789ab   2 weeks ago   4.26MB\n\
             <none>                   <none>    fedcba987654   2 hours ago   1kB\n"
        );
        let quiet = ImagesArgs {
            quiet: true,
            ..args
        };
        assert_eq!(
            images_output(&list, &quiet, now),
            "0123456789ab\nfedcba987654\n"
        );
    }

    #[test]
    fn prune_output_like_docker() {
        let report = PruneReport {
            images_deleted: vec![
                RemovedImage::Untagged("busybox:latest".into()),
                RemovedImage::Deleted("sha256:aa".into()),
            ],
            space_reclaimed: 12_300_000,
        };
        assert_eq!(
            prune_output(&report),
            "Deleted Images:\nuntagged: busybox:latest\ndeleted: sha256:aa\n\nTotal reclaimed space: 12.3MB\n"
        );
        assert_eq!(
            prune_output(&PruneReport::default()),
            "Total reclaimed space: 0B\n"
        );
    }
}
