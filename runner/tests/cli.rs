//! The real `wharf-runner` binary against a fake daemon: an axum server on
//! a unix socket in a temp dir answering per the `api` contract with
//! canned answers, recording what the CLI asked. Checks the CLI's flows
//! (pull-on-missing, attach, exit codes, error forwarding, tables), not
//! the daemon.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde_json::{Value, json};
use wharf_runner::api::{self, FrameKind};

const ID: &str = "4f6e0c5d7a2b9e8f1a3c5d7e9f0b2d4c6e8a0b1c3d5e7f9a0b2c4d6e8f0a1b2c";

#[derive(Default)]
struct Fake {
    /// "METHOD /path?query" of every request, in order.
    calls: Mutex<Vec<String>>,
    /// Bodies of `POST /containers/create`.
    creates: Mutex<Vec<Value>>,
    /// Whether the image is there (a pull makes it so).
    have_image: Mutex<bool>,
    /// Signalled when a kill arrives (the "slow" container then exits).
    killed: tokio::sync::Notify,
}

type Shared = Arc<Fake>;

fn record(state: &Shared, call: String) {
    state.calls.lock().unwrap().push(call);
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({ "message": message }))).into_response()
}

async fn create(State(state): State<Shared>, axum::Json(body): axum::Json<Value>) -> Response {
    record(&state, "POST /containers/create".into());
    state.creates.lock().unwrap().push(body.clone());
    if body["image"] == "ghost" {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid reference format: repository name must be lowercase",
        );
    }
    if !*state.have_image.lock().unwrap() {
        return error(StatusCode::NOT_FOUND, "No such image: busybox:latest");
    }
    (
        StatusCode::CREATED,
        axum::Json(json!({ "Id": ID, "Warnings": [] })),
    )
        .into_response()
}

async fn pull(State(state): State<Shared>, axum::Json(body): axum::Json<Value>) -> Response {
    record(&state, format!("POST /images/pull {}", body["reference"]));
    let reference = body["reference"].as_str().unwrap_or_default().to_string();
    let mut events = vec![
        json!({"status": "Pulling from library/busybox", "id": "latest"}),
        json!({"status": "Pulling fs layer", "id": "a1b2c3d4e5f6", "total": 2000}),
        json!({"status": "Downloading", "id": "a1b2c3d4e5f6", "current": 1000, "total": 2000}),
        json!({"status": "Downloading", "id": "a1b2c3d4e5f6", "current": 2000, "total": 2000}),
        json!({"status": "Pull complete", "id": "a1b2c3d4e5f6"}),
    ];
    if reference == "broken" {
        events.push(json!({"error": "manifest unknown: the registry has no broken:latest"}));
    } else {
        *state.have_image.lock().unwrap() = true;
        events.push(json!({"status": "Digest: sha256:0123"}));
        events.push(json!({
            "status": "Status: Downloaded newer image for docker.io/library/busybox:latest"
        }));
    }
    let text: String = events.iter().map(|e| format!("{e}\n")).collect();
    Response::new(Body::from(text))
}

/// The attached output, cut into chunks that split frames, with pauses.
fn attached_output(exit: bool) -> Body {
    let mut bytes = api::encode_frame(FrameKind::Stdout, b"hello out\n");
    bytes.extend(api::encode_frame(FrameKind::Stderr, b"hello err\n"));
    bytes.extend(api::encode_frame(FrameKind::Stdout, b"second\n"));
    if exit {
        bytes.extend(api::encode_frame(FrameKind::Exit, br#"{"StatusCode":3}"#));
    }
    let chunks: Vec<Vec<u8>> = bytes.chunks(5).map(<[u8]>::to_vec).collect();
    let stream = futures::stream::unfold(chunks.into_iter(), |mut it| async move {
        let chunk = it.next()?;
        tokio::time::sleep(Duration::from_millis(2)).await;
        Some((Ok::<_, std::io::Error>(chunk), it))
    });
    Body::from_stream(stream)
}

async fn start(
    State(state): State<Shared>,
    UrlPath(id): UrlPath<String>,
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> Response {
    let attach = query.get("attach").map(String::as_str) == Some("true");
    record(
        &state,
        format!("POST /containers/{id}/start attach={attach}"),
    );
    if id == "nosuch" {
        return error(StatusCode::NOT_FOUND, "No such container: nosuch");
    }
    if !attach {
        return StatusCode::NO_CONTENT.into_response();
    }
    if id == "slow" {
        // Runs until killed, then exits as a SIGTERM'd process does.
        let stream = futures::stream::unfold(0, move |step| {
            let state = state.clone();
            async move {
                let frame = match step {
                    0 => api::encode_frame(FrameKind::Stdout, b"ready\n"),
                    1 => {
                        state.killed.notified().await;
                        api::encode_frame(FrameKind::Exit, br#"{"StatusCode":143}"#)
                    }
                    _ => return None,
                };
                Some((Ok::<_, std::io::Error>(frame), step + 1))
            }
        });
        return Response::new(Body::from_stream(stream));
    }
    Response::new(attached_output(id != "cut"))
}

async fn kill(
    State(state): State<Shared>,
    UrlPath(id): UrlPath<String>,
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> Response {
    let signal = query.get("signal").cloned().unwrap_or_default();
    record(
        &state,
        format!("POST /containers/{id}/kill signal={signal}"),
    );
    state.killed.notify_one();
    StatusCode::NO_CONTENT.into_response()
}

async fn login(State(state): State<Shared>, axum::Json(body): axum::Json<Value>) -> Response {
    record(&state, format!("POST /auth {body}"));
    if body["password"] != "s3cret" {
        return error(
            StatusCode::UNAUTHORIZED,
            "login attempt to http://localhost:5000/v2/ failed with status: 401 Unauthorized",
        );
    }
    axum::Json(json!({"status": "Login Succeeded"})).into_response()
}

async fn logout(
    State(state): State<Shared>,
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> Response {
    let registry = query.get("registry").cloned().unwrap_or_default();
    record(&state, format!("DELETE /auth registry={registry}"));
    StatusCode::NO_CONTENT.into_response()
}

async fn list(State(state): State<Shared>) -> Response {
    record(&state, "GET /containers/json".into());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    axum::Json(json!([
        {
            "Id": ID, "Name": "web", "Image": "busybox",
            "Command": "sh -c 'while true; do sleep 1; done'",
            "Created": now - 75, "State": "running", "Status": "Up About a minute"
        }
    ]))
    .into_response()
}

async fn remove(State(state): State<Shared>, UrlPath(id): UrlPath<String>) -> Response {
    record(&state, format!("DELETE /containers/{id}"));
    match id.as_str() {
        "busy" => error(
            StatusCode::CONFLICT,
            "cannot remove container \"busy\": container is running: stop the container before removing or force remove",
        ),
        _ => StatusCode::NO_CONTENT.into_response(),
    }
}

async fn inspect(State(state): State<Shared>, UrlPath(id): UrlPath<String>) -> Response {
    record(&state, format!("GET /containers/{id}/json"));
    if id != "web" {
        return error(StatusCode::NOT_FOUND, &format!("No such container: {id}"));
    }
    axum::Json(json!({"Id": ID, "Name": "/web", "State": {"Status": "running", "ExitCode": 0}}))
        .into_response()
}

async fn image_inspect(State(state): State<Shared>) -> Response {
    record(&state, "GET /images/inspect".into());
    error(StatusCode::NOT_FOUND, "No such image: x")
}

/// A fake daemon on `<dir>/runner.sock`.
async fn fake_daemon(dir: &Path, have_image: bool) -> (PathBuf, Shared) {
    let state: Shared = Arc::new(Fake {
        have_image: Mutex::new(have_image),
        ..Fake::default()
    });
    let app = Router::new()
        .route("/containers/create", post(create))
        .route("/images/pull", post(pull))
        .route("/containers/{id}/start", post(start))
        .route("/containers/{id}/kill", post(kill))
        .route("/containers/json", get(list))
        .route("/auth", post(login).delete(logout))
        .route("/containers/{id}", delete(remove))
        .route("/containers/{id}/json", get(inspect))
        .route("/images/inspect", get(image_inspect))
        .with_state(state.clone());
    let socket = dir.join("runner.sock");
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (socket, state)
}

struct Output {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn cli(socket: &Path, args: &[&str]) -> Output {
    cli_with_stdin(socket, args, b"").await
}

async fn cli_with_stdin(socket: &Path, args: &[&str], stdin: &[u8]) -> Output {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_wharf-runner"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .env_remove("WHARF_RUNNER_SOCKET")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let _ = input.write_all(stdin).await;
    drop(input);
    let out = child.wait_with_output().await.unwrap();
    Output {
        code: out.status.code().unwrap(),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_pulls_a_missing_image_then_attaches_and_exits_with_its_code() {
    let dir = tempfile::tempdir().unwrap();
    let (socket, state) = fake_daemon(dir.path(), false).await;
    let out = cli(
        &socket,
        &[
            "run", "--rm", "-e", "A=1", "-h", "box", "busybox", "sh", "-c", "echo hi",
        ],
    )
    .await;
    assert_eq!(out.code, 3, "stderr: {}", out.stderr);
    assert_eq!(out.stdout, "hello out\nsecond\n");
    assert!(
        out.stderr
            .starts_with("Unable to find image 'busybox:latest' locally\n"),
        "{}",
        out.stderr
    );
    // Plain progress (stderr is not a terminal): status lines, no byte counts.
    assert!(
        out.stderr.contains("a1b2c3d4e5f6: Pulling fs layer\n"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("a1b2c3d4e5f6: Pull complete\n"));
    assert!(out.stderr.contains("Digest: sha256:0123\n"));
    assert!(!out.stderr.contains("Downloading"));
    assert!(out.stderr.ends_with("hello err\n"), "{}", out.stderr);

    let calls = state.calls.lock().unwrap().clone();
    assert_eq!(
        calls,
        vec![
            "POST /containers/create".to_string(),
            "POST /images/pull \"busybox\"".into(),
            "POST /containers/create".into(),
            format!("POST /containers/{ID}/start attach=true"),
            // --rm: docker's run returns once the container is gone.
            format!("GET /containers/{ID}/json"),
        ]
    );
    let create = state.creates.lock().unwrap()[1].clone();
    assert_eq!(create["image"], "busybox");
    assert_eq!(create["cmd"], json!(["sh", "-c", "echo hi"]));
    assert_eq!(create["env"], json!(["A=1"]));
    assert_eq!(create["hostname"], "box");
    assert_eq!(create["auto_remove"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_detached_prints_the_full_id() {
    let dir = tempfile::tempdir().unwrap();
    let (socket, state) = fake_daemon(dir.path(), true).await;
    let out = cli(&socket, &["run", "-d", "busybox", "sleep", "100"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, format!("{ID}\n"));
    assert_eq!(out.stderr, "");
    let calls = state.calls.lock().unwrap().clone();
    assert_eq!(
        calls.last().unwrap(),
        &format!("POST /containers/{ID}/start attach=false")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_with_pull_never_does_not_pull() {
    let dir = tempfile::tempdir().unwrap();
    let (socket, state) = fake_daemon(dir.path(), false).await;
    let out = cli(&socket, &["run", "--pull", "never", "busybox"]).await;
    assert_eq!(out.code, 125);
    assert_eq!(out.stdout, "");
    assert_eq!(
        out.stderr,
        "Error response from daemon: No such image: busybox:latest\n"
    );
    assert_eq!(state.calls.lock().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_pull_prints_its_error_and_run_exits_125() {
    let dir = tempfile::tempdir().unwrap();
    let (socket, _) = fake_daemon(dir.path(), false).await;
    let out = cli(&socket, &["run", "broken"]).await;
    assert_eq!(out.code, 125, "{}", out.stderr);
    assert!(
        out.stderr
            .ends_with("manifest unknown: the registry has no broken:latest\n"),
        "{}",
        out.stderr
    );
    let out = cli(&socket, &["pull", "broken"]).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_stream_without_exit_status_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (socket, _) = fake_daemon(dir.path(), true).await;
    let out = cli(&socket, &["start", "-a", "cut"]).await;
    assert_eq!(out.code, 125);
    assert_eq!(out.stdout, "hello out\nsecond\n");
    assert!(out.stderr.starts_with("hello err\n"), "{}", out.stderr);
    assert!(
        out.stderr.contains("without its exit status"),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_prints_progress_and_the_full_reference_on_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let (socket, _) = fake_daemon(dir.path(), false).await;
    let out = cli(&socket, &["pull", "busybox"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        out.stdout,
        "latest: Pulling from library/busybox\n\
         a1b2c3d4e5f6: Pulling fs layer\n\
         a1b2c3d4e5f6: Pull complete\n\
         Digest: sha256:0123\n\
         Status: Downloaded newer image for docker.io/library/busybox:latest\n\
         docker.io/library/busybox:latest\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_not_running_is_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("absent.sock");
    let expected = format!(
        "Cannot connect to the wharf-runner daemon at unix://{}. Is the daemon running? Start it with: wharf-runner daemon\n",
        socket.display()
    );
    let out = cli(&socket, &["ps"]).await;
    assert_eq!((out.code, out.stderr.as_str()), (1, expected.as_str()));
    let out = cli(&socket, &["run", "busybox"]).await;
    assert_eq!((out.code, out.stderr.as_str()), (125, expected.as_str()));
    // A socket file nobody listens on.
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let out = cli(&stale, &["images"]).await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr
            .starts_with("Cannot connect to the wharf-runner daemon")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_errors_are_forwarded_and_rm_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (socket, state) = fake_daemon(dir.path(), true).await;
    let out = cli(&socket, &["rm", "busy", "idle"]).await;
    assert_eq!(out.code, 1);
    assert_eq!(out.stdout, "idle\n");
    assert_eq!(
        out.stderr,
        "Error response from daemon: cannot remove container \"busy\": container is running: stop the container before removing or force remove\n"
    );
    assert_eq!(state.calls.lock().unwrap().len(), 2);

    let out = cli(&socket, &["create", "ghost"]).await;
    assert_eq!(out.code, 125);
    assert_eq!(
        out.stderr,
        "Error response from daemon: invalid reference format: repository name must be lowercase\n"
    );

    let out = cli(&socket, &["start", "nosuch"]).await;
    assert_eq!(out.code, 1);
    assert_eq!(
        out.stderr,
        "Error response from daemon: No such container: nosuch\nError: failed to start containers: nosuch\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ps_prints_docker_table() {
    let dir = tempfile::tempdir().unwrap();
    let (socket, _) = fake_daemon(dir.path(), true).await;
    let out = cli(&socket, &["ps"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines[0],
        "CONTAINER ID   IMAGE     COMMAND                  CREATED              STATUS              PORTS     NAMES"
    );
    assert_eq!(
        lines[1],
        "4f6e0c5d7a2b   busybox   \"sh -c 'while true; …\"   About a minute ago   Up About a minute             web"
    );
    assert_eq!(lines.len(), 2);
    let out = cli(&socket, &["ps", "-q", "--no-trunc"]).await;
    assert_eq!(out.stdout, format!("{ID}\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_prints_json_or_template_and_unknown_objects() {
    let dir = tempfile::tempdir().unwrap();
    let (socket, _) = fake_daemon(dir.path(), true).await;
    let out = cli(
        &socket,
        &[
            "inspect",
            "-f",
            "{{.Name}} {{.State.Status}} {{json .State}}",
            "web",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        out.stdout,
        "/web running {\"ExitCode\":0,\"Status\":\"running\"}\n"
    );
    let out = cli(&socket, &["inspect", "web", "nope"]).await;
    assert_eq!(out.code, 1);
    assert!(
        out.stdout.starts_with("[\n    {\n        \"Id\": "),
        "{}",
        out.stdout
    );
    assert_eq!(out.stderr, "Error: No such object: nope\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_errors_exit_125_without_a_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("absent.sock");
    let out = cli(&socket, &["run", "--foo", "busybox"]).await;
    assert_eq!(out.code, 125);
    assert_eq!(
        out.stderr,
        "unknown flag: --foo\nSee 'wharf-runner run --help'.\n"
    );
    let out = cli(&socket, &["run", "-z", "busybox"]).await;
    assert_eq!(out.code, 125);
    assert_eq!(
        out.stderr,
        "unknown shorthand flag: 'z' in -z\nSee 'wharf-runner run --help'.\n"
    );
    let out = cli(&socket, &["image", "rm"]).await;
    assert_eq!(out.code, 125);
    assert_eq!(
        out.stderr,
        "\"wharf-runner image rm\" requires at least 1 argument.\nSee 'wharf-runner image rm --help'.\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_to_an_attached_cli_are_forwarded_to_the_container() {
    use tokio::io::AsyncBufReadExt;
    let dir = tempfile::tempdir().unwrap();
    let (socket, state) = fake_daemon(dir.path(), true).await;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_wharf-runner"))
        .arg("--socket")
        .arg(&socket)
        .args(["start", "-a", "slow"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).await.unwrap();
    assert_eq!(line, "ready\n");
    let pid = nix::unistd::Pid::from_raw(child.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("the CLI exits once the container does")
        .unwrap();
    assert_eq!(status.code(), Some(143));
    assert!(
        state
            .calls
            .lock()
            .unwrap()
            .contains(&"POST /containers/slow/kill signal=TERM".to_string())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_takes_the_password_from_stdin_and_never_prints_it() {
    let dir = tempfile::tempdir().unwrap();
    let (socket, state) = fake_daemon(dir.path(), true).await;
    let out = cli_with_stdin(
        &socket,
        &["login", "-u", "me", "--password-stdin", "localhost:5000"],
        b"s3cret\n",
    )
    .await;
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "Login Succeeded\n"),
        "{}",
        out.stderr
    );
    assert_eq!(out.stderr, "");
    let call = state.calls.lock().unwrap().last().cloned().unwrap();
    let body: Value = serde_json::from_str(call.strip_prefix("POST /auth ").unwrap()).unwrap();
    assert_eq!(
        body,
        json!({"registry": "localhost:5000", "username": "me", "password": "s3cret"})
    );

    let out = cli(&socket, &["login", "-u", "me", "-p", "wrong"]).await;
    assert_eq!(out.code, 1);
    assert_eq!(
        out.stderr,
        "WARNING! Using --password via the CLI is insecure. Use --password-stdin.\n\
         Error response from daemon: login attempt to http://localhost:5000/v2/ failed with status: 401 Unauthorized\n"
    );
    assert!(!out.stdout.contains("wrong") && !out.stderr.contains("wrong"));
    // The default registry is the daemon's to pick.
    let call = state.calls.lock().unwrap().last().cloned().unwrap();
    assert!(call.contains(r#""registry":"""#), "{call}");

    // No terminal and no username: docker's refusal, nothing sent.
    let calls = state.calls.lock().unwrap().len();
    let out = cli(&socket, &["login"]).await;
    assert_eq!(out.code, 1);
    assert_eq!(
        out.stderr,
        "Error: Cannot perform an interactive login from a non TTY device\n"
    );
    assert_eq!(state.calls.lock().unwrap().len(), calls);

    let out = cli(&socket, &["logout", "localhost:5000"]).await;
    assert_eq!(out.code, 0);
    assert_eq!(
        out.stdout,
        "Removing login credentials for localhost:5000\n"
    );
    assert_eq!(
        state.calls.lock().unwrap().last().unwrap(),
        "DELETE /auth registry=localhost:5000"
    );
}
