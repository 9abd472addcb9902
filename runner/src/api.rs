//! The daemon's local HTTP API: the wire types both sides share, and the
//! frame format of streamed container output.
//!
//! The API is HTTP/1.1 on a unix socket, shaped after the Docker Engine API
//! (paths, status codes, `{"message": ...}` errors) but not a copy of it.
//! Called by `daemon` (server side) and `cli` (client side); calls nothing.
//!
//! | method + path | body / query | answer |
//! |---|---|---|
//! | `GET /_ping` | | `OK` |
//! | `POST /images/pull` | [`PullRequest`] | 200, NDJSON [`PullEvent`]s; a failure after the 200 is a last event with `error` |
//! | `GET /images/json` | | `[ImageSummary]` |
//! | `GET /images/inspect?name=N` | | docker's image inspect JSON |
//! | `DELETE /images?name=N&force=BOOL` | | `[RemovedImage]`; 409 if a container uses it (unless force) |
//! | `POST /images/prune?all=BOOL` | | [`PruneReport`] |
//! | `POST /commit` | [`CommitRequest`] | 201 [`CommitResponse`] |
//! | `POST /images/tag` | [`TagRequest`] | 201; 404 `No such image: X` |
//! | `POST /images/push` | [`PushRequest`] | 200, NDJSON [`PullEvent`]s (docker's push vocabulary); 404 before the stream when the image is not local |
//! | `POST /auth` | [`LoginRequest`] | [`LoginResponse`]; 401 on wrong credentials |
//! | `DELETE /auth?registry=R` | | 204; 404 when not logged in there |
//! | `POST /containers/create` | [`CreateRequest`] | 201 [`CreateResponse`]; 404 `No such image: REF` (the CLI then pulls and retries) |
//! | `POST /containers/{id}/start?attach=BOOL` | | 204, or with attach 200 and a [frame](encode_frame) stream ending with an exit frame |
//! | `POST /containers/{id}/stop?t=SECONDS` | | 204; 304 when not running |
//! | `POST /containers/{id}/restart?t=SECONDS` | | 204: stopped (if running), then started by hand |
//! | `POST /containers/{id}/kill?signal=SIG` | | 204; 409 when not running |
//! | `POST /containers/{id}/wait` | | [`WaitResponse`] once it has stopped |
//! | `DELETE /containers/{id}?force=BOOL&v=BOOL` | | 204; 409 when running (unless force); `v` removes its anonymous volumes |
//! | `GET /containers/json?all=BOOL` | | `[ContainerSummary]` |
//! | `GET /containers/{id}/json` | | docker's container inspect JSON |
//! | `GET /containers/{id}/logs?follow=BOOL&tail=N&timestamps=BOOL` | | 200, frame stream |
//! | `POST /containers/{id}/exec` | [`ExecCreateRequest`] | 201 [`ExecCreateResponse`]; 409 `container ID is not running` |
//! | `POST /exec/{id}/start?detach=BOOL` | | detached: 204 once the command runs; else 200, frame stream ending with an exit frame |
//! | `POST /exec/{id}/start?stdin=BOOL` + `Connection: Upgrade`, `Upgrade: tcp` | raw stdin after the 101, half-closed at its end | 101, then a hijacked stream as attach's (`exec -i`, `exec -t`; detach keys with `-it`) |
//! | `POST /exec/{id}/resize?h=ROWS&w=COLS` | | 200; the exec's terminal size (`exec -t`) |
//! | `GET /exec/{id}/json` | | docker's exec inspect JSON |
//! | `POST /volumes/create` | [`VolumeCreateRequest`] | 201 [`Volume`] (the existing one if the name is taken) |
//! | `GET /volumes?dangling=BOOL` | | `[Volume]`; `dangling`: only unused (true) or used (false) ones |
//! | `GET /volumes/{name}` | | [`Volume`]; 404 `get NAME: no such volume` |
//! | `DELETE /volumes/{name}?force=BOOL` | | 204; 409 when a container uses it; force: no 404 |
//! | `POST /volumes/prune?all=BOOL` | | [`VolumePruneReport`] |
//! | `POST /containers/{id}/attach?stream=1&stdin=BOOL&stdout=1&stderr=1&detachKeys=KEYS` | `Upgrade: tcp` | 101, then a hijacked stream (below); 409 when not running |
//! | `POST /containers/{id}/start?attach=1&stdin=BOOL&detachKeys=KEYS` with `Upgrade: tcp` | | 101: starts a `-i`/`-t` container attached, no output lost |
//! | `POST /containers/{id}/resize?h=ROWS&w=COLS` | | 200; 409 when not running |
//! | `GET /containers/{id}/stats?stream=BOOL&one-shot=BOOL` | | stream (the default): 200, NDJSON [`StatsJson`] every second, each with the previous sample as `precpu_stats`; `stream=false`: one [`StatsJson`] (two readings 0.5 s apart; `one-shot`: one reading, no precpu); zeros for a stopped container |
//!
//! A hijacked stream (after `101 Switching Protocols`): the client writes
//! raw stdin bytes (a half-close is the end of its input, which closes the
//! container's stdin for `run -i`'s StdinOnce); the daemon writes frames,
//! ending with an exit frame `{"StatusCode":N}`, or
//! `{"StatusCode":0,"Detached":true}` when the client typed the detach keys
//! (docker's `ctrl-p,ctrl-q` by default).
//!
//! `{id}` is a full id, a unique id prefix, or a name. Errors: 400 for a bad
//! request, 404 `No such container: X` / `No such image: X`, 409 for a
//! conflict, 500 for the daemon's own failures; always `{"message": ...}`.

use serde::{Deserialize, Serialize};

/// `POST /images/pull`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PullRequest {
    /// As the user typed it; short names get the default registry.
    pub reference: String,
}

/// One line of a pull's NDJSON stream (docker's `docker pull` vocabulary).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PullEvent {
    /// The layer this is about: the first 12 hex digits of its digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// "Pulling from team/app", "Pulling fs layer", "Already exists",
    /// "Downloading", "Pull complete", "Digest: sha256:...",
    /// "Status: Downloaded newer image for REF" /
    /// "Status: Image is up to date for REF".
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub status: String,
    /// Bytes received so far ("Downloading").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<u64>,
    /// The layer's size ("Downloading", "Pulling fs layer").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
    /// Set on the last event when the pull failed: one line naming what failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `POST /commit`: a new image from a container's writable layer.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CommitRequest {
    pub container: String,
    /// `REPOSITORY[:TAG]`; none: a dangling image.
    #[serde(default)]
    pub reference: Option<String>,
    #[serde(default)]
    pub comment: String,
    #[serde(default)]
    pub author: String,
    /// `--change` Dockerfile instructions (CMD, ENTRYPOINT, ENV, WORKDIR,
    /// LABEL, USER, EXPOSE, STOPSIGNAL).
    #[serde(default)]
    pub changes: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct CommitResponse {
    /// `sha256:<image id>`.
    pub id: String,
}

/// `POST /images/tag`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TagRequest {
    pub source: String,
    pub target: String,
}

/// `POST /images/push`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PushRequest {
    /// As the user typed it; a local image name (no tag: `latest`).
    pub reference: String,
}

/// `GET /images/json`: one row of `images`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct ImageSummary {
    /// `sha256:<config digest hex>`, docker's image id.
    pub id: String,
    /// `registry/repo:tag` names pointing at it (empty for a dangling image).
    pub repo_tags: Vec<String>,
    /// `registry/repo@sha256:...` (the manifest digest).
    pub repo_digests: Vec<String>,
    /// Seconds since the epoch, from the image config's `created`.
    pub created: i64,
    /// Bytes of the unpacked layers.
    pub size: u64,
    /// How many containers use it.
    pub containers: u64,
}

/// One line of `rmi`'s answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum RemovedImage {
    Untagged(String),
    Deleted(String),
}

/// `POST /images/prune`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct PruneReport {
    pub images_deleted: Vec<RemovedImage>,
    pub space_reclaimed: u64,
}

/// `POST /auth`: check credentials against the registry and keep them.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
pub struct LoginRequest {
    /// `host[:port]`, as in references.
    pub registry: String,
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for LoginRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginRequest")
            .field("registry", &self.registry)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LoginResponse {
    /// "Login Succeeded".
    pub status: String,
}

/// `--pull`: when `run`/`create` pull the image.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PullPolicy {
    Always,
    #[default]
    Missing,
    Never,
}

/// `--network`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// A namespace of its own with only loopback.
    None,
    /// The host's namespace.
    Host,
    /// A namespace of its own with an address on the daemon's bridge
    /// (docker's default).
    #[default]
    Bridge,
}

/// One published port (`-p`, `-P`): in a create request `host_port` 0 is
/// "any free port" and `host_ip` "" is every address; once the container
/// runs, the ports it was given.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "PascalCase")]
pub struct PortMapping {
    pub container_port: u16,
    /// "tcp" or "udp".
    pub protocol: String,
    #[serde(default)]
    pub host_ip: String,
    #[serde(default)]
    pub host_port: u16,
}

/// `POST /containers/create`: everything `run`/`create` take, parsed by
/// the CLI (sizes in bytes, `--env-file` already read into `env`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CreateRequest {
    pub image: String,
    #[serde(default)]
    pub name: Option<String>,
    /// Arguments after the image; `None`: the image's Cmd.
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    /// `--entrypoint` (one string, as docker takes it; "" clears it).
    #[serde(default)]
    pub entrypoint: Option<String>,
    /// `--env-file` lines then `-e` values, `KEY=VALUE` or bare `KEY`
    /// (the CLI resolves a bare `KEY` from its own environment, as docker).
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub workdir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub hostname: Option<String>,
    /// `-m`, bytes.
    #[serde(default)]
    pub memory: Option<i64>,
    /// `--memory-swap`, bytes; -1 unlimited.
    #[serde(default)]
    pub memory_swap: Option<i64>,
    #[serde(default)]
    pub cpus: Option<f64>,
    #[serde(default)]
    pub cpu_shares: Option<u64>,
    #[serde(default)]
    pub pids_limit: Option<i64>,
    #[serde(default)]
    pub network: Network,
    /// `-p`, in the order given.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publish: Vec<PortMapping>,
    /// `-P`: the image's ExposedPorts on free host ports.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub publish_all: bool,
    #[serde(default)]
    pub read_only: bool,
    /// `--rm`: the daemon removes the container when it exits.
    #[serde(default)]
    pub auto_remove: bool,
    /// `--runtime`: the OCI runtime that runs it; `None`: the daemon's
    /// default (`wharf`, the built-in one, unless configured otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    /// `--restart`; `None`: "no".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<RestartPolicy>,
    /// `-v` values as typed (see [`crate::volumes::parse_volume`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub binds: Vec<String>,
    /// `--tmpfs` values as typed (see [`crate::volumes::parse_tmpfs`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tmpfs: Vec<String>,
    /// `-t`: a pty is the container's stdio and controlling terminal.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tty: bool,
    /// `-i`: the container's stdin stays open for attach clients.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub open_stdin: bool,
    /// `run -i` attached: the end of the first client's input closes the
    /// container's stdin.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stdin_once: bool,
    /// With `-t`: the terminal's size at the start, `[rows, cols]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console_size: Option<[u16; 2]>,
    /// The container's own labels (docker's `--label`), shown by `inspect`
    /// over the image's; the fleet agent marks its containers with them.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
}

/// `--restart`: whether the daemon starts a container again after it
/// stopped (docker's `HostConfig.RestartPolicy`). The CLI only splits
/// `NAME[:COUNT]`; the daemon checks the name and the count.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RestartPolicy {
    /// "no", "always", "on-failure" or "unless-stopped".
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "MaximumRetryCount", default)]
    pub maximum_retry_count: i64,
}

impl RestartPolicy {
    /// docker's `--restart` syntax, `NAME[:COUNT]`, with its messages.
    pub fn parse(s: &str) -> Result<RestartPolicy, String> {
        let (name, count) = match s.split_once(':') {
            Some(("", _)) => {
                return Err(
                    "invalid restart policy format: no policy provided before colon".into(),
                );
            }
            Some((name, count)) => (name, count),
            None => (s, ""),
        };
        let maximum_retry_count = if count.is_empty() {
            0
        } else {
            count.parse::<i64>().map_err(|_| {
                "invalid restart policy format: maximum retry count must be an integer".to_string()
            })?
        };
        Ok(RestartPolicy {
            name: name.to_string(),
            maximum_retry_count,
        })
    }

    /// "no" (or no policy at all).
    pub fn is_none(&self) -> bool {
        self.name.is_empty() || self.name == "no"
    }
}

/// `POST /volumes/create`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct VolumeCreateRequest {
    /// `None` or empty: a random 64-hex name.
    #[serde(default)]
    pub name: Option<String>,
    /// `-d`; only "local" exists.
    #[serde(default)]
    pub driver: Option<String>,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
}

/// A volume as docker's `volume inspect` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct Volume {
    pub created_at: String,
    pub driver: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub mountpoint: String,
    pub name: String,
    /// Driver options; none exist for "local" volumes made here (`null`).
    pub options: Option<std::collections::BTreeMap<String, String>>,
    pub scope: String,
}

/// `POST /volumes/prune`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct VolumePruneReport {
    pub volumes_deleted: Vec<String>,
    pub space_reclaimed: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct CreateResponse {
    pub id: String,
    #[serde(default)]
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct WaitResponse {
    pub status_code: i64,
}

/// `GET /containers/json`: one row of `ps`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerSummary {
    pub id: String,
    /// The name without docker's leading `/`.
    pub name: String,
    /// The image as the user named it.
    pub image: String,
    /// The command line, joined with spaces.
    pub command: String,
    /// Seconds since the epoch.
    pub created: i64,
    /// "created", "running", "exited".
    pub state: String,
    /// docker's human text: "Up 3 seconds", "Exited (0) 2 minutes ago", "Created".
    pub status: String,
    /// The ports it publishes while running.
    #[serde(default)]
    pub ports: Vec<PortMapping>,
}

/// `POST /containers/{id}/exec`: `exec`'s flags, parsed by the CLI
/// (`--env-file` read and bare `-e KEY` resolved into `env`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ExecCreateRequest {
    /// The command and its arguments (at least the command).
    pub cmd: Vec<String>,
    /// `KEY=VALUE` added to (or replacing in) the container's environment;
    /// a bare `KEY` removes it.
    #[serde(default)]
    pub env: Vec<String>,
    /// `-w`; `None`: the container's working directory.
    #[serde(default)]
    pub workdir: Option<String>,
    /// `-u USER[:GROUP]`; `None`: the container's user.
    #[serde(default)]
    pub user: Option<String>,
    /// `-i`: the command's stdin comes from an upgraded start (`stdin=true`).
    #[serde(default)]
    pub attach_stdin: bool,
    /// `-t`: the command gets a pty of the container's (its output is all
    /// stdout); the start is upgraded, sizes come by `/exec/{id}/resize`.
    #[serde(default)]
    pub tty: bool,
    /// The terminal's initial `[rows, cols]` (`-t`).
    #[serde(default)]
    pub console_size: Option<[u16; 2]>,
    /// `--detach-keys` (with `-it`); `None`: docker's `ctrl-p,ctrl-q`.
    #[serde(default)]
    pub detach_keys: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct ExecCreateResponse {
    pub id: String,
}

/// An error answer: `{"message": "..."}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorBody {
    pub message: String,
    /// Set when a container's command could not be started: the exit code
    /// docker's CLI gives (126 cannot run, 127 not found, 125 otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
}

/// go-units' `HumanDuration` (docker's "Up 5 seconds", "2 hours ago"), shared
/// by the daemon's `ps` status and the CLI's CREATED column: "Less than a second", "5 seconds",
/// "About a minute", "3 hours", "2 weeks"...
pub fn human_duration(seconds: i64) -> String {
    let seconds = seconds.max(0);
    let minutes = seconds / 60;
    let hours = (seconds as f64 / 3600.0).round() as i64;
    if seconds < 1 {
        "Less than a second".into()
    } else if seconds == 1 {
        "1 second".into()
    } else if seconds < 60 {
        format!("{seconds} seconds")
    } else if minutes == 1 {
        "About a minute".into()
    } else if minutes < 60 {
        format!("{minutes} minutes")
    } else if hours == 1 {
        "About an hour".into()
    } else if hours < 48 {
        format!("{hours} hours")
    } else if hours < 24 * 7 * 2 {
        format!("{} days", hours / 24)
    } else if hours < 24 * 30 * 2 {
        format!("{} weeks", hours / 24 / 7)
    } else if hours < 24 * 365 * 2 {
        format!("{} months", hours / 24 / 30)
    } else {
        format!("{} years", seconds / 3600 / 24 / 365)
    }
}

/// Frame stream kinds: the first byte of each frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    Stdout = 1,
    Stderr = 2,
    /// The last frame of an attached start: JSON [`WaitResponse`].
    Exit = 3,
}

/// Frame header length: `[kind, 0, 0, 0, len as u32 big-endian]`, docker's
/// multiplexed stream format, with kind 3 added for the exit status.
pub const FRAME_HEADER: usize = 8;
/// Frames are at most this long (the sender splits bigger payloads).
pub const MAX_FRAME: usize = 1 << 20;

/// Encodes one frame (payloads over [`MAX_FRAME`] are the caller's to split).
pub fn encode_frame(kind: FrameKind, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAME_HEADER + payload.len());
    out.push(kind as u8);
    out.extend_from_slice(&[0, 0, 0]);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A decoded frame: its kind, its payload, and how many bytes it took.
pub type Frame<'a> = (FrameKind, &'a [u8], usize);

/// Decodes the frame at the front of `buf`: `Ok(Some((kind, payload,
/// consumed)))`, `Ok(None)` when more bytes are needed, `Err` on a bad
/// header (unknown kind or over [`MAX_FRAME`]).
pub fn decode_frame(buf: &[u8]) -> Result<Option<Frame<'_>>, String> {
    if buf.len() < FRAME_HEADER {
        return Ok(None);
    }
    let kind = match buf[0] {
        1 => FrameKind::Stdout,
        2 => FrameKind::Stderr,
        3 => FrameKind::Exit,
        k => return Err(format!("bad frame kind {k}")),
    };
    let len = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize;
    if len > MAX_FRAME {
        return Err(format!("frame of {len} bytes is over the limit"));
    }
    if buf.len() < FRAME_HEADER + len {
        return Ok(None);
    }
    Ok(Some((
        kind,
        &buf[FRAME_HEADER..FRAME_HEADER + len],
        FRAME_HEADER + len,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_wait_for_more_bytes() {
        let mut buf = encode_frame(FrameKind::Stdout, b"hello\n");
        buf.extend(encode_frame(FrameKind::Exit, br#"{"StatusCode":3}"#));
        let (k, p, n) = decode_frame(&buf).unwrap().unwrap();
        assert_eq!((k, p), (FrameKind::Stdout, &b"hello\n"[..]));
        let (k, p, _) = decode_frame(&buf[n..]).unwrap().unwrap();
        assert_eq!(k, FrameKind::Exit);
        let w: WaitResponse = serde_json::from_slice(p).unwrap();
        assert_eq!(w.status_code, 3);
        assert_eq!(decode_frame(&buf[..5]).unwrap(), None);
        assert_eq!(decode_frame(&buf[..n - 1]).unwrap(), None);
        assert!(decode_frame(&[9, 0, 0, 0, 0, 0, 0, 0]).is_err());
    }

    #[test]
    fn login_request_debug_hides_the_password() {
        let r = LoginRequest {
            registry: "r".into(),
            username: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{r:?}").contains("hunter2"));
    }
}

/// `GET /containers/{id}/stats`: docker's stats JSON (the fields wharf
/// fills; the docker CLI's computations work on it unchanged).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct StatsJson {
    /// docker's `/name`.
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub id: String,
    /// RFC 3339 time of this reading (`0001-01-01T00:00:00Z`: none, the
    /// container is not running).
    #[serde(default)]
    pub read: String,
    /// The time of the reading in `precpu_stats`.
    #[serde(default)]
    pub preread: String,
    #[serde(default)]
    pub pids_stats: PidsStats,
    #[serde(default)]
    pub blkio_stats: BlkioStats,
    #[serde(default)]
    pub num_procs: u32,
    #[serde(default)]
    pub cpu_stats: CpuStats,
    #[serde(default)]
    pub precpu_stats: CpuStats,
    #[serde(default)]
    pub memory_stats: MemoryStats,
    /// Per interface of the container's network namespace (not `lo`);
    /// absent for `--network host` and stopped containers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub networks: Option<std::collections::BTreeMap<String, NetworkStats>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PidsStats {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct BlkioStats {
    /// v1: the kernel's ops (`Read`, `Write`, `Sync`, ...); v2: `read`
    /// and `write`.
    #[serde(default)]
    pub io_service_bytes_recursive: Option<Vec<BlkioStatEntry>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct BlkioStatEntry {
    pub major: u64,
    pub minor: u64,
    pub op: String,
    pub value: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CpuStats {
    #[serde(default)]
    pub cpu_usage: CpuUsage,
    /// Nanoseconds of host CPU time (all CPUs, from `/proc/stat`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_cpu_usage: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub online_cpus: Option<u32>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CpuUsage {
    /// Nanoseconds of CPU time the container used.
    #[serde(default)]
    pub total_usage: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percpu_usage: Option<Vec<u64>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct MemoryStats {
    /// Bytes charged to the cgroup (page cache included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<u64>,
    /// The limit, or the host's memory when there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// `memory.stat` (v1: `total_inactive_file`, ...; v2: `inactive_file`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<std::collections::BTreeMap<String, u64>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct NetworkStats {
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub rx_dropped: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_dropped: u64,
}
