//! The CLI's side of published ports: parsing `-p`, docker's PORTS column
//! of `ps`, and the `port` command.
//!
//! Called by `cli` (clap value parser, dispatch) and `cli::containers`
//! (`ps`); `port` reads the daemon's inspect answer through `client`.

use hyper::Method;
use serde_json::Value;

use super::client::{Client, Error, encode};
use super::{PortArgs, outln};
use crate::api::PortMapping;

/// One `-p` value: `[IP:][HOSTPORT:]CONTAINERPORT[/PROTO]`, where an empty
/// or missing HOSTPORT is any free port.
pub fn parse_publish(s: &str) -> Result<PortMapping, String> {
    let bad = |why: &str| format!("invalid publish spec {s:?}: {why}");
    if s.len() > 128 {
        return Err(bad("too long"));
    }
    let (spec, proto) = match s.rsplit_once('/') {
        Some((spec, proto)) => (spec, proto.to_ascii_lowercase()),
        None => (s, "tcp".to_string()),
    };
    if proto != "tcp" && proto != "udp" {
        return Err(format!("invalid proto: {proto}"));
    }
    // An IPv6 host address is written in brackets: [::1]:8080:80.
    let (ip, rest) = if let Some(after) = spec.strip_prefix('[') {
        let (ip, rest) = after
            .split_once("]:")
            .ok_or_else(|| bad("unclosed bracket"))?;
        (ip.to_string(), rest)
    } else {
        let parts: Vec<&str> = spec.split(':').collect();
        match parts.len() {
            1 | 2 => (String::new(), spec),
            3 => (parts[0].to_string(), &spec[parts[0].len() + 1..]),
            _ => return Err(bad("too many colons")),
        }
    };
    if !ip.is_empty() && ip.parse::<std::net::IpAddr>().is_err() {
        return Err(format!("invalid IP address: {ip}"));
    }
    let (host, container) = match rest.split_once(':') {
        Some((h, c)) => (h, c),
        None if ip.is_empty() => ("", rest),
        None => return Err(bad("no container port")),
    };
    let port = |p: &str| -> Result<u16, String> {
        p.parse::<u16>()
            .ok()
            .filter(|n| *n != 0)
            .ok_or_else(|| format!("invalid containerPort: {p}"))
    };
    let container_port = port(container)?;
    let host_port = if host.is_empty() {
        0
    } else {
        host.parse::<u16>()
            .map_err(|_| format!("invalid hostPort: {host}"))?
    };
    Ok(PortMapping {
        container_port,
        protocol: proto,
        host_ip: ip,
        host_port,
    })
}

/// `0.0.0.0:8080` (IPv6 in brackets).
fn host_addr(ip: &str, port: &str) -> String {
    let ip = if ip.is_empty() { "0.0.0.0" } else { ip };
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

/// docker's PORTS cell: `0.0.0.0:8080->80/tcp, 0.0.0.0:32768->443/tcp`.
pub fn ports_cell(ports: &[PortMapping]) -> String {
    let mut sorted = ports.to_vec();
    sorted.sort();
    sorted
        .iter()
        .map(|p| {
            format!(
                "{}->{}/{}",
                host_addr(&p.host_ip, &p.host_port.to_string()),
                p.container_port,
                p.protocol
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The lines of `port`: from `NetworkSettings.Ports` of inspect, sorted,
/// `80/tcp -> 0.0.0.0:8080`; with `filter` (`80` or `80/udp`) only that
/// port's host addresses.
pub fn port_lines(ports: &Value, filter: Option<&str>) -> Result<Vec<String>, String> {
    let wanted = match filter {
        Some(f) => {
            let (port, proto) = f.split_once('/').unwrap_or((f, "tcp"));
            let port: u16 = port
                .parse()
                .map_err(|_| format!("Error: invalid port ({port}): must be a number"))?;
            Some(format!("{port}/{}", proto.to_ascii_lowercase()))
        }
        None => None,
    };
    let mut keys: Vec<(u16, String, &Value)> = ports
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| {
                    let port = k.split('/').next()?.parse().ok()?;
                    Some((port, k.clone(), v))
                })
                .collect()
        })
        .unwrap_or_default();
    keys.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    let mut lines = Vec::new();
    for (_, key, bindings) in keys {
        if wanted.as_ref().is_some_and(|w| *w != key) {
            continue;
        }
        for b in bindings.as_array().into_iter().flatten() {
            let ip = b["HostIp"].as_str().unwrap_or("");
            let port = b["HostPort"].as_str().unwrap_or("");
            let addr = host_addr(ip, port);
            lines.push(if wanted.is_some() {
                addr
            } else {
                format!("{key} -> {addr}")
            });
        }
    }
    Ok(lines)
}

/// `port CONTAINER [PRIVATE_PORT[/PROTO]]`.
pub async fn port(client: &Client, args: PortArgs) -> Result<i32, Error> {
    let info: Value = client
        .json(
            Method::GET,
            &format!("/containers/{}/json", encode(&args.container)),
            None::<&()>,
        )
        .await?;
    let lines = port_lines(&info["NetworkSettings"]["Ports"], args.port.as_deref())
        .map_err(Error::Message)?;
    if lines.is_empty()
        && let Some(p) = &args.port
    {
        let key = if p.contains('/') {
            p.clone()
        } else {
            format!("{p}/tcp")
        };
        return Err(Error::Message(format!(
            "Error: No public port '{key}' published for {}",
            args.container
        )));
    }
    for line in lines {
        outln(line);
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(ip: &str, hp: u16, cp: u16, proto: &str) -> PortMapping {
        PortMapping {
            container_port: cp,
            protocol: proto.into(),
            host_ip: ip.into(),
            host_port: hp,
        }
    }

    #[test]
    fn publish_specs_as_docker_takes_them() {
        assert_eq!(parse_publish("8080:80").unwrap(), m("", 8080, 80, "tcp"));
        assert_eq!(parse_publish("80").unwrap(), m("", 0, 80, "tcp"));
        assert_eq!(parse_publish("53/udp").unwrap(), m("", 0, 53, "udp"));
        assert_eq!(
            parse_publish("127.0.0.1:8080:80/tcp").unwrap(),
            m("127.0.0.1", 8080, 80, "tcp")
        );
        assert_eq!(
            parse_publish("127.0.0.1::80").unwrap(),
            m("127.0.0.1", 0, 80, "tcp")
        );
        assert_eq!(parse_publish(":80").unwrap(), m("", 0, 80, "tcp"));
        assert_eq!(
            parse_publish("[::1]:8080:80").unwrap(),
            m("::1", 8080, 80, "tcp")
        );
        assert!(parse_publish("8080:80/sctp").is_err());
        assert!(parse_publish("x:80").is_err());
        assert!(parse_publish("8080:0").is_err());
        assert!(parse_publish("99999:80").is_err());
        assert!(parse_publish("1.2.3:8080:80").is_err());
        assert!(parse_publish("a:b:c:d").is_err());
    }

    #[test]
    fn ps_cell_and_port_lines() {
        let ports = [m("0.0.0.0", 8080, 80, "tcp"), m("0.0.0.0", 5353, 53, "udp")];
        assert_eq!(
            ports_cell(&ports),
            "0.0.0.0:5353->53/udp, 0.0.0.0:8080->80/tcp"
        );
        assert_eq!(ports_cell(&[]), "");
        let json: Value = serde_json::json!({
            "80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}],
            "443/tcp": null,
            "53/udp": [{"HostIp": "127.0.0.1", "HostPort": "5353"}],
        });
        assert_eq!(
            port_lines(&json, None).unwrap(),
            vec!["53/udp -> 127.0.0.1:5353", "80/tcp -> 0.0.0.0:8080"]
        );
        assert_eq!(port_lines(&json, Some("80")).unwrap(), vec!["0.0.0.0:8080"]);
        assert!(port_lines(&json, Some("443")).unwrap().is_empty());
        assert!(port_lines(&json, Some("x")).is_err());
    }
}
