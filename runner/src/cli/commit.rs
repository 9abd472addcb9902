//! `commit`, `tag` and `push` with docker's flags and output: commit prints
//! `sha256:<id>`, push prints "The push refers to repository [...]", one
//! line per layer ("Pushed" / "Layer already exists") and
//! `TAG: digest: sha256:... size: N`; a push failure is the registry's one
//! line (`denied: ...`) and exit 1.
//!
//! Called by `cli::dispatch`; calls the daemon through `client` and
//! `progress`.

use clap::Args;
use hyper::{Method, StatusCode};

use super::client::{Client, Error, Lines};
use super::outln;
use super::progress::{Progress, Sink};
use crate::api::{CommitRequest, CommitResponse, PullEvent, PushRequest, TagRequest};

#[derive(Debug, Args)]
pub struct CommitArgs {
    /// Author (e.g., "John Hannibal Smith <hannibal@a-team.com>")
    #[arg(short, long, default_value = "")]
    pub author: String,
    /// Apply Dockerfile instruction to the created image
    #[arg(short, long = "change", value_name = "list")]
    pub changes: Vec<String>,
    /// Commit message
    #[arg(short, long, default_value = "")]
    pub message: String,
    /// Pause container during commit (accepted for docker's sake: the
    /// runner reads a running container's layer live)
    #[arg(
        short,
        long,
        default_value_t = true,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub pause: bool,
    pub container: String,
    #[arg(value_name = "REPOSITORY[:TAG]")]
    pub reference: Option<String>,
}

#[derive(Debug, Args)]
pub struct TagArgs {
    #[arg(value_name = "SOURCE_IMAGE[:TAG]")]
    pub source: String,
    #[arg(value_name = "TARGET_IMAGE[:TAG]")]
    pub target: String,
}

#[derive(Debug, Args)]
pub struct PushArgs {
    /// Suppress verbose output
    #[arg(short, long)]
    pub quiet: bool,
    #[arg(value_name = "NAME[:TAG]")]
    pub reference: String,
}

pub async fn commit(client: &Client, args: CommitArgs) -> Result<i32, Error> {
    let req = CommitRequest {
        container: args.container,
        reference: args.reference,
        comment: args.message,
        author: args.author,
        changes: args.changes,
    };
    let resp: CommitResponse = client.json(Method::POST, "/commit", Some(&req)).await?;
    outln(resp.id);
    Ok(0)
}

pub async fn tag(client: &Client, args: TagArgs) -> Result<i32, Error> {
    let req = TagRequest {
        source: args.source,
        target: args.target,
    };
    let body = serde_json::to_vec(&req)
        .map_err(|e| Error::Message(format!("encoding the request: {e}")))?;
    client.send(Method::POST, "/images/tag", Some(body)).await?;
    Ok(0)
}

pub async fn push(client: &Client, args: PushArgs) -> Result<i32, Error> {
    let body = serde_json::to_vec(&PushRequest {
        reference: args.reference.clone(),
    })
    .map_err(|e| Error::Message(format!("encoding the request: {e}")))?;
    let response = match client.send(Method::POST, "/images/push", Some(body)).await {
        // docker prints this one without the daemon prefix.
        Err(Error::Daemon {
            status: StatusCode::NOT_FOUND,
            message,
            ..
        }) => return Err(Error::Message(message)),
        other => other?,
    };
    let mut lines = Lines::new(response.into_body());
    let mut progress = (!args.quiet).then(|| Progress::new(Sink::Stdout));
    let mut last = None;
    let result = loop {
        let line = match lines.next_line().await {
            Ok(Some(line)) => line,
            Ok(None) => break Ok(0),
            Err(e) => break Err(e),
        };
        let event: PullEvent = match serde_json::from_slice(&line) {
            Ok(event) => event,
            Err(e) => {
                break Err(Error::Transport(format!(
                    "bad push event from the daemon: {e}"
                )));
            }
        };
        if let Some(error) = event.error {
            break Err(Error::Message(error));
        }
        if event.status.contains(": digest: ") {
            last = Some(event.status.clone());
        }
        if let Some(p) = progress.as_mut() {
            p.event(&event);
        }
    };
    if let Some(p) = progress.as_mut() {
        p.finish();
    }
    if args.quiet
        && result.is_ok()
        && let Some(l) = last
    {
        outln(l);
    }
    result
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::cli::{Cli, Command, ContainerCommand, ImageCommand};

    fn parse(args: &[&str]) -> Command {
        Cli::try_parse_from(std::iter::once("wharf-runner").chain(args.iter().copied()))
            .unwrap()
            .command
    }

    #[test]
    fn commit_takes_dockers_flags() {
        let Command::Commit(a) = parse(&[
            "commit",
            "-m",
            "msg",
            "-a",
            "me",
            "-c",
            "ENV A=1",
            "--change",
            "CMD [\"sh\"]",
            "-p",
            "web",
            "team/app:1",
        ]) else {
            panic!("not commit")
        };
        assert_eq!((a.message.as_str(), a.author.as_str()), ("msg", "me"));
        assert_eq!(a.changes, ["ENV A=1", "CMD [\"sh\"]"]);
        assert!(a.pause);
        assert_eq!(a.container, "web");
        assert_eq!(a.reference.as_deref(), Some("team/app:1"));
        let Command::Commit(a) = parse(&["commit", "--pause=false", "web"]) else {
            panic!("not commit")
        };
        assert!(!a.pause && a.reference.is_none());
        assert!(matches!(
            parse(&["container", "commit", "web"]),
            Command::Container(ContainerCommand::Commit(_))
        ));
    }

    #[test]
    fn tag_and_push_have_image_aliases() {
        assert!(matches!(parse(&["tag", "a", "b"]), Command::Tag(_)));
        assert!(matches!(
            parse(&["image", "tag", "a", "b"]),
            Command::Image(ImageCommand::Tag(_))
        ));
        let Command::Push(p) = parse(&["push", "-q", "localhost:5000/a:1"]) else {
            panic!("not push")
        };
        assert!(p.quiet);
        assert_eq!(p.reference, "localhost:5000/a:1");
        assert!(matches!(
            parse(&["image", "push", "a"]),
            Command::Image(ImageCommand::Push(_))
        ));
    }
}
