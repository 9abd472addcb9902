//! Parsing tests: docker's flag rules for `run`/`create` and the usage errors.

use clap::Parser;

use super::containers::{create_request, ps_format, ps_output, with_default_tag};
use super::*;
use crate::api::ContainerSummary;

fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(std::iter::once("wharf-runner").chain(args.iter().copied()))
}

fn run_opts(args: &[&str]) -> RunArgs {
    match parse(args).unwrap().command {
        Command::Run(a) => a,
        other => panic!("not run: {other:?}"),
    }
}

#[test]
fn run_flags_stop_at_the_image() {
    let a = run_opts(&[
        "run", "-h", "myhost", "-e", "A=1", "--rm", "busybox", "sh", "-c", "echo hi", "-e", "X",
    ]);
    assert!(a.opts.rm && !a.detach);
    assert_eq!(a.opts.hostname.as_deref(), Some("myhost"));
    let req = create_request(&a.opts, |_| None).unwrap();
    assert_eq!(req.image, "busybox");
    assert_eq!(
        req.cmd,
        Some(vec![
            "sh".into(),
            "-c".into(),
            "echo hi".into(),
            "-e".into(),
            "X".into()
        ])
    );
    assert_eq!(req.env, vec!["A=1"]);
    assert_eq!(req.hostname.as_deref(), Some("myhost"));
    assert!(req.auto_remove);

    // A flag right after the image is the command's, not ours.
    let a = run_opts(&["run", "busybox", "--rm", "-d"]);
    assert!(!a.opts.rm && !a.detach);
    let req = create_request(&a.opts, |_| None).unwrap();
    assert_eq!(req.cmd, Some(vec!["--rm".into(), "-d".into()]));

    let a = run_opts(&["run", "-d", "busybox"]);
    assert!(a.detach);
    assert_eq!(create_request(&a.opts, |_| None).unwrap().cmd, None);
}

#[test]
fn run_resources_and_options() {
    let a = run_opts(&[
        "run",
        "-m",
        "64m",
        "--memory-swap",
        "-1",
        "--cpus",
        "0.5",
        "--cpu-shares",
        "512",
        "--pids-limit",
        "-1",
        "--network",
        "host",
        "--read-only",
        "--pull",
        "never",
        "-w",
        "/tmp",
        "-u",
        "1000:1000",
        "--entrypoint",
        "",
        "--name",
        "web",
        "busybox",
    ]);
    let req = create_request(&a.opts, |_| None).unwrap();
    assert_eq!(req.memory, Some(64 * 1024 * 1024));
    assert_eq!(req.memory_swap, Some(-1));
    assert_eq!(req.cpus, Some(0.5));
    assert_eq!(req.cpu_shares, Some(512));
    assert_eq!(req.pids_limit, Some(-1));
    assert_eq!(req.network, Network::Host);
    assert!(req.read_only);
    assert_eq!(a.opts.pull, PullPolicy::Never);
    assert_eq!(req.workdir.as_deref(), Some("/tmp"));
    assert_eq!(req.user.as_deref(), Some("1000:1000"));
    assert_eq!(req.entrypoint.as_deref(), Some(""));
    assert_eq!(req.name.as_deref(), Some("web"));
    let a = run_opts(&["run", "--memory=1g", "busybox"]);
    assert_eq!(a.opts.memory, Some(1 << 30));
    // Defaults.
    let a = run_opts(&["run", "busybox"]);
    assert_eq!(a.opts.pull, PullPolicy::Missing);
    assert_eq!(a.opts.network, Network::Bridge);
    assert!(a.opts.publish.is_empty() && !a.opts.publish_all);
    let a = run_opts(&[
        "run",
        "-p",
        "8080:80",
        "-p",
        "127.0.0.1::53/udp",
        "-P",
        "busybox",
    ]);
    assert_eq!(a.opts.publish.len(), 2);
    assert_eq!(a.opts.publish[1].protocol, "udp");
    assert!(a.opts.publish_all);
}

#[test]
fn restart_policy_flag() {
    let a = run_opts(&["run", "--restart", "on-failure:3", "busybox"]);
    let req = create_request(&a.opts, |_| None).unwrap();
    let policy = req.restart.expect("a policy");
    assert_eq!(
        (policy.name.as_str(), policy.maximum_retry_count),
        ("on-failure", 3)
    );
    // "no" is no policy at all; --rm with a policy is refused before the daemon.
    let a = run_opts(&["run", "--restart", "no", "--rm", "busybox"]);
    assert_eq!(create_request(&a.opts, |_| None).unwrap().restart, None);
    let a = run_opts(&["run", "--restart", "always", "--rm", "busybox"]);
    let err = create_request(&a.opts, |_| None).unwrap_err().to_string();
    assert!(err.contains("Conflicting options"), "{err}");
}

#[test]
fn interactive_flags_parse_like_dockers() {
    let a = run_opts(&["run", "-dit", "--detach-keys", "ctrl-a,x", "busybox", "sh"]);
    assert!(a.detach && a.opts.interactive && a.opts.tty);
    assert_eq!(a.detach_keys.as_deref(), Some("ctrl-a,x"));
    let req = create_request(&a.opts, |_| None).unwrap();
    assert!(req.tty && req.open_stdin && req.stdin_once);
    let a = run_opts(&["run", "-i", "busybox", "cat"]);
    let req = create_request(&a.opts, |_| None).unwrap();
    assert!(req.open_stdin && !req.tty && req.console_size.is_none());
    match parse(&["attach", "--no-stdin", "web"]).unwrap().command {
        Command::Attach(a) => assert!(a.no_stdin && a.container == "web"),
        other => panic!("{other:?}"),
    }
    assert!(parse(&["container", "attach", "web"]).is_ok());
    match parse(&["start", "-ai", "web"]).unwrap().command {
        Command::Start(s) => assert!(s.attach && s.interactive),
        other => panic!("{other:?}"),
    }
}

#[test]
fn bad_values_are_usage_errors() {
    for args in [
        &["run", "-m", "64x", "busybox"][..],
        &["run", "--cpus", "lots", "busybox"],
        &["run", "--network", "mynet", "busybox"],
        &["run", "-p", "80:80:80:80", "busybox"],
        &["run", "--pull", "sometimes", "busybox"],
        &["run"],
        &["run", "--restart", ":3", "busybox"],
        &["create", "-d", "busybox"],
        &["stop"],
    ] {
        assert!(parse(args).is_err(), "{args:?} parsed");
    }
}

#[test]
fn env_files_then_env_flags() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("env");
    std::fs::write(&file, "# c\nA=from file\nPASS\n").unwrap();
    let f = file.to_str().unwrap();
    let a = run_opts(&[
        "run",
        "--env-file",
        f,
        "-e",
        "B=2",
        "-e",
        "PASS",
        "-e",
        "GONE",
        "busybox",
    ]);
    let lookup = |k: &str| (k == "PASS").then(|| "through".to_string());
    let req = create_request(&a.opts, lookup).unwrap();
    assert_eq!(
        req.env,
        vec!["A=from file", "PASS=through", "B=2", "PASS=through", "GONE"]
    );
    let a = run_opts(&["run", "--env-file", "/nonexistent/env", "busybox"]);
    let err = create_request(&a.opts, |_| None).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/env"), "{err}");
    let a = run_opts(&["run", "-e", "A B=1", "busybox"]);
    assert!(create_request(&a.opts, |_| None).is_err());
}

#[test]
fn usage_errors_are_docker_like() {
    let args = |a: &[&str]| -> Vec<String> {
        std::iter::once("wharf-runner")
            .chain(a.iter().copied())
            .map(String::from)
            .collect()
    };
    assert_eq!(command_path(&args(&["run", "--foo", "busybox"])), "run");
    assert_eq!(
        command_path(&args(&["--socket", "/s", "image", "rm", "x"])),
        "image rm"
    );
    assert_eq!(command_path(&args(&["container", "--help"])), "container");

    let a = args(&["run", "--foo", "busybox"]);
    let err = Cli::try_parse_from(&a).unwrap_err();
    assert_eq!(err.kind(), clap::error::ErrorKind::UnknownArgument);
    assert_eq!(usage_error(err, &a), EXIT_USAGE);
}

#[test]
fn unknown_image_names_get_the_default_tag() {
    assert_eq!(with_default_tag("busybox"), "busybox:latest");
    assert_eq!(
        with_default_tag("localhost:5000/busybox"),
        "localhost:5000/busybox:latest"
    );
    assert_eq!(
        with_default_tag("localhost:5000/busybox:1"),
        "localhost:5000/busybox:1"
    );
    assert_eq!(with_default_tag("busybox@sha256:aa"), "busybox@sha256:aa");
}

#[test]
fn ps_table_like_docker() {
    let now = 10_000;
    let list = vec![
        ContainerSummary {
            id: "0123456789abcdef0123456789abcdef".into(),
            name: "web".into(),
            image: "localhost:5000/busybox".into(),
            command: "sh -c 'while true; do sleep 1; done'".into(),
            created: now - 75,
            state: "running".into(),
            status: "Up 5 seconds".into(),
            ports: vec![crate::api::PortMapping {
                container_port: 80,
                protocol: "tcp".into(),
                host_ip: "0.0.0.0".into(),
                host_port: 8080,
            }],
        },
        ContainerSummary {
            id: "fedcba9876543210".into(),
            name: "old".into(),
            image: "busybox".into(),
            command: "true".into(),
            created: now - 7200,
            state: "exited".into(),
            status: "Exited (0) 2 minutes ago".into(),
            ports: Vec::new(),
        },
    ];
    let args = PsArgs {
        all: true,
        quiet: false,
        no_trunc: false,
        format: None,
    };
    assert_eq!(
        ps_output(&list, &args, None, now),
        "CONTAINER ID   IMAGE                    COMMAND                  CREATED              STATUS                     PORTS                  NAMES\n\
         0123456789ab   localhost:5000/busybox   \"sh -c 'while true; …\"   About a minute ago   Up 5 seconds               0.0.0.0:8080->80/tcp   web\n\
         fedcba987654   busybox                  \"true\"                   2 hours ago          Exited (0) 2 minutes ago                          old\n"
    );
    let quiet = PsArgs {
        quiet: true,
        ..args
    };
    assert_eq!(
        ps_output(&list, &quiet, None, now),
        "0123456789ab\nfedcba987654\n"
    );
    let full = PsArgs {
        quiet: true,
        no_trunc: true,
        all: true,
        format: None,
    };
    assert!(ps_output(&list, &full, None, now).starts_with("0123456789abcdef0123456789abcdef\n"));

    // --format as docker's: a line template, `table` with headers, json; -q wins.
    let plain = ps_format(Some("{{.Names}} {{.State}}")).unwrap();
    let text = ps_output(&list, &full_args(false), plain.as_ref(), now);
    let names: Vec<&str> = text.lines().collect();
    assert_eq!(names.len(), list.len(), "{text}");
    assert!(
        names
            .iter()
            .all(|l| l.ends_with(" running") || l.ends_with(" exited")),
        "{text}"
    );
    let table = ps_format(Some("table {{.ID}}\\t{{.Names}}")).unwrap();
    let text = ps_output(&list, &full_args(false), table.as_ref(), now);
    assert!(
        text.starts_with("CONTAINER ID   NAMES\n0123456789ab   "),
        "{text}"
    );
    let json = ps_format(Some("json")).unwrap();
    let text = ps_output(&list, &full_args(false), json.as_ref(), now);
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(first["ID"], "0123456789ab");
    assert_eq!(
        ps_output(&list, &full_args(true), json.as_ref(), now),
        "0123456789ab\nfedcba987654\n"
    );
    assert!(ps_format(Some("{{.Names")).is_err());
}

fn full_args(quiet: bool) -> PsArgs {
    PsArgs {
        all: true,
        quiet,
        no_trunc: false,
        format: None,
    }
}

#[test]
fn help_stays_on_long_help_for_run_and_create() {
    for args in [
        &["run", "--help"][..],
        &["create", "--help"],
        &["container", "run", "--help"],
    ] {
        let err = parse(args).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::DisplayHelp, "{args:?}");
    }
    // -h is --hostname there, and still help elsewhere.
    assert!(matches!(
        parse(&["create", "-h", "x", "busybox"]).unwrap().command,
        Command::Create(ContainerOpts { hostname: Some(ref h), .. }) if h == "x"
    ));
    assert_eq!(
        parse(&["ps", "-h"]).unwrap_err().kind(),
        clap::error::ErrorKind::DisplayHelp
    );
}

#[test]
fn other_commands_parse_like_docker() {
    match parse(&["stop", "-t", "3", "a", "b"]).unwrap().command {
        Command::Stop(a) => assert_eq!((a.time, a.containers.len()), (Some(3), 2)),
        other => panic!("{other:?}"),
    }
    match parse(&["logs", "-f", "--tail", "10", "-t", "c"])
        .unwrap()
        .command
    {
        Command::Logs(a) => assert!(a.follow && a.timestamps && a.tail == "10"),
        other => panic!("{other:?}"),
    }
    assert!(parse(&["logs", "--tail", "ten", "c"]).is_err());
    match parse(&["kill", "-s", "TERM", "c"]).unwrap().command {
        Command::Kill(a) => assert_eq!(a.signal, "TERM"),
        other => panic!("{other:?}"),
    }
    match parse(&["inspect", "--type", "image", "-f", "{{.Id}}", "x"])
        .unwrap()
        .command
    {
        Command::Inspect(a) => {
            assert_eq!(a.object_type, Some(ObjectType::Image));
            assert_eq!(a.names.format.as_deref(), Some("{{.Id}}"));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        parse(&["image", "ls", "-q"]).unwrap().command,
        Command::Image(ImageCommand::Ls(ImagesArgs { quiet: true, .. }))
    ));
    assert!(matches!(
        parse(&["container", "ps", "-a"]).unwrap().command,
        Command::Container(ContainerCommand::Ls(PsArgs { all: true, .. }))
    ));
    match parse(&[
        "--socket",
        "/tmp/s",
        "daemon",
        "--root",
        "/r",
        "--insecure-registry",
        "a:5000",
        "--insecure-registry",
        "b",
    ])
    .unwrap()
    {
        Cli {
            socket,
            command: Command::Daemon(d),
        } => {
            assert_eq!(socket, std::path::Path::new("/tmp/s"));
            assert_eq!(d.root, std::path::Path::new("/r"));
            assert_eq!(d.default_registry, "docker.io");
            assert_eq!(d.insecure_registries, vec!["a:5000", "b"]);
        }
        other => panic!("{other:?}"),
    }
    match parse(&["login", "-u", "me", "--password-stdin", "localhost:5000"])
        .unwrap()
        .command
    {
        Command::Login(a) => {
            assert_eq!(a.username.as_deref(), Some("me"));
            assert!(a.password_stdin);
            assert_eq!(a.server.as_deref(), Some("localhost:5000"));
        }
        other => panic!("{other:?}"),
    }
}
