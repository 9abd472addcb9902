//! Placement as a pure function: which ready node gets a replica. No I/O;
//! the scheduler (`fleet::Fleet::reconcile`) feeds it the catalog's rows.
//!
//! Rules: only `ready` nodes; `node` (if set) names the only candidate;
//! every `selector` label must be on the node with the same value; a node
//! whose free memory is below the replica's memory limit is never chosen.
//! A deployment that publishes fixed host ports (`-p 8080:80`) gets at most
//! one replica per node, as two could not both bind the port. Among the
//! rest, spread: fewest replicas of this deployment, then most free memory,
//! then name (so the answer is deterministic).

use std::collections::BTreeMap;
use std::fmt;

/// A node as placement sees it.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub name: String,
    pub ready: bool,
    pub labels: BTreeMap<String, String>,
    pub free_memory: u64,
    /// Replicas of the deployment being placed already on this node.
    pub replicas_here: usize,
}

/// What a replica needs.
#[derive(Debug, Clone, Default)]
pub struct Requirements {
    pub node: Option<String>,
    pub selector: BTreeMap<String, String>,
    pub memory: Option<u64>,
    /// Publishes a fixed host port: one replica per node.
    pub one_per_node: bool,
}

/// Why a replica could not be placed; its `Display` is the one line shown
/// as the replica's reason and in the deployment's events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoPlacement {
    NoNodes,
    NoSuchNode(String),
    NodeNotReady(String),
    NodeDoesNotMatch { node: String, selector: String },
    NoSelectorMatch(String),
    NoMemory { need: u64, matching: usize },
    PortsTaken { matching: usize },
}

impl fmt::Display for NoPlacement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NoPlacement::NoNodes => write!(f, "no ready node"),
            NoPlacement::NoSuchNode(n) => write!(f, "no node named {n}"),
            NoPlacement::NodeNotReady(n) => write!(f, "node {n} is not ready"),
            NoPlacement::NodeDoesNotMatch { node, selector } => {
                write!(f, "node {node} does not match selector {selector}")
            }
            NoPlacement::NoSelectorMatch(s) => write!(f, "no ready node matches selector {s}"),
            NoPlacement::NoMemory { need, matching } => write!(
                f,
                "no ready node has {need} bytes of memory free ({matching} matching node(s))"
            ),
            NoPlacement::PortsTaken { matching } => write!(
                f,
                "every matching node ({matching}) already runs a replica publishing the same host ports"
            ),
        }
    }
}

/// `k=v,k2=v2`, as the CLI takes it.
pub fn selector_text(selector: &BTreeMap<String, String>) -> String {
    selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn matches(c: &Candidate, selector: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| c.labels.get(k) == Some(v))
}

/// The index of the candidate that gets the replica.
pub fn place(req: &Requirements, candidates: &[Candidate]) -> Result<usize, NoPlacement> {
    if let Some(name) = &req.node {
        let Some(c) = candidates.iter().find(|c| &c.name == name) else {
            return Err(NoPlacement::NoSuchNode(name.clone()));
        };
        if !c.ready {
            return Err(NoPlacement::NodeNotReady(name.clone()));
        }
        if !matches(c, &req.selector) {
            return Err(NoPlacement::NodeDoesNotMatch {
                node: name.clone(),
                selector: selector_text(&req.selector),
            });
        }
    }
    let matching: Vec<usize> = candidates
        .iter()
        .enumerate()
        .filter(|(_, c)| c.ready)
        .filter(|(_, c)| req.node.as_ref().is_none_or(|n| &c.name == n))
        .filter(|(_, c)| matches(c, &req.selector))
        .map(|(i, _)| i)
        .collect();
    if matching.is_empty() {
        return Err(if req.selector.is_empty() {
            NoPlacement::NoNodes
        } else {
            NoPlacement::NoSelectorMatch(selector_text(&req.selector))
        });
    }
    let free: Vec<usize> = matching
        .iter()
        .copied()
        .filter(|&i| !req.one_per_node || candidates[i].replicas_here == 0)
        .collect();
    if free.is_empty() {
        return Err(NoPlacement::PortsTaken {
            matching: matching.len(),
        });
    }
    let need = req.memory.unwrap_or(0);
    free.iter()
        .copied()
        .filter(|&i| candidates[i].free_memory >= need)
        .min_by(|&a, &b| {
            let (a, b) = (&candidates[a], &candidates[b]);
            a.replicas_here
                .cmp(&b.replicas_here)
                .then(b.free_memory.cmp(&a.free_memory))
                .then(a.name.cmp(&b.name))
        })
        .ok_or(NoPlacement::NoMemory {
            need,
            matching: matching.len(),
        })
}

/// Whether docker `-p` specs publish a fixed host port (`8080:80`,
/// `127.0.0.1:8080:80`); `80` and `127.0.0.1::80` take a random one.
pub fn fixed_host_ports(ports: &[String]) -> bool {
    ports.iter().any(|p| {
        let spec = p.split('/').next().unwrap_or("");
        let parts: Vec<&str> = spec.split(':').collect();
        parts.len() >= 2 && !parts[parts.len() - 2].is_empty()
    })
}

/// Places `count` replicas one after the other, each seeing the ones
/// before it (their node gets one more replica and less free memory).
pub fn plan(
    req: &Requirements,
    count: usize,
    candidates: &mut [Candidate],
) -> Vec<Result<String, NoPlacement>> {
    (0..count)
        .map(|_| {
            let i = place(req, candidates)?;
            let c = &mut candidates[i];
            c.replicas_here += 1;
            c.free_memory = c.free_memory.saturating_sub(req.memory.unwrap_or(0));
            Ok(c.name.clone())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn node(name: &str, free: u64, labels: &[(&str, &str)]) -> Candidate {
        Candidate {
            name: name.into(),
            ready: true,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            free_memory: free,
            replicas_here: 0,
        }
    }

    fn selector(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn spreads_over_nodes_then_prefers_free_memory() {
        let mut nodes = vec![node("a", 2 * GIB, &[]), node("b", 4 * GIB, &[])];
        let got = plan(&Requirements::default(), 3, &mut nodes);
        // b has more memory, then a has fewer replicas, then b again.
        assert_eq!(got, vec![Ok("b".into()), Ok("a".into()), Ok("b".into())]);
    }

    #[test]
    fn fewest_replicas_wins_over_memory() {
        let mut nodes = vec![node("a", GIB, &[]), node("b", 8 * GIB, &[])];
        nodes[1].replicas_here = 1;
        assert_eq!(place(&Requirements::default(), &nodes), Ok(0));
    }

    #[test]
    fn skips_down_nodes() {
        let mut nodes = vec![node("a", 8 * GIB, &[]), node("b", GIB, &[])];
        nodes[0].ready = false;
        assert_eq!(place(&Requirements::default(), &nodes), Ok(1));
        nodes[1].ready = false;
        assert_eq!(
            place(&Requirements::default(), &nodes),
            Err(NoPlacement::NoNodes)
        );
        assert_eq!(
            place(&Requirements::default(), &[]),
            Err(NoPlacement::NoNodes)
        );
    }

    #[test]
    fn selector_must_match_every_label() {
        let nodes = vec![
            node("a", GIB, &[("zone", "a")]),
            node("b", GIB, &[("zone", "b"), ("disk", "ssd")]),
        ];
        let req = Requirements {
            selector: selector(&[("zone", "b")]),
            ..Default::default()
        };
        assert_eq!(place(&req, &nodes), Ok(1));
        let req = Requirements {
            selector: selector(&[("zone", "b"), ("disk", "hdd")]),
            ..Default::default()
        };
        let err = place(&req, &nodes).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no ready node matches selector disk=hdd,zone=b"
        );
        let req = Requirements {
            selector: selector(&[("zone", "c")]),
            ..Default::default()
        };
        assert_eq!(
            place(&req, &nodes).unwrap_err().to_string(),
            "no ready node matches selector zone=c"
        );
    }

    #[test]
    fn named_node_only() {
        let mut nodes = vec![node("a", 8 * GIB, &[]), node("b", GIB, &[])];
        let req = Requirements {
            node: Some("b".into()),
            ..Default::default()
        };
        assert_eq!(
            plan(&req, 2, &mut nodes),
            vec![Ok("b".into()), Ok("b".into())]
        );
        nodes[1].ready = false;
        assert_eq!(
            place(&req, &nodes),
            Err(NoPlacement::NodeNotReady("b".into()))
        );
        let req = Requirements {
            node: Some("zz".into()),
            ..Default::default()
        };
        assert_eq!(
            place(&req, &nodes),
            Err(NoPlacement::NoSuchNode("zz".into()))
        );
    }

    #[test]
    fn never_below_the_memory_limit() {
        let mut nodes = vec![node("a", GIB, &[]), node("b", 3 * GIB / 2, &[])];
        let req = Requirements {
            memory: Some(GIB),
            ..Default::default()
        };
        // b first (more free), then a; then neither has 1 GiB left.
        let got = plan(&req, 3, &mut nodes);
        assert_eq!(got[0], Ok("b".into()));
        assert_eq!(got[1], Ok("a".into()));
        assert_eq!(
            got[2],
            Err(NoPlacement::NoMemory {
                need: GIB,
                matching: 2
            })
        );
    }

    #[test]
    fn fixed_host_ports_mean_one_replica_per_node() {
        assert!(fixed_host_ports(&["8080:80".into()]));
        assert!(fixed_host_ports(&["127.0.0.1:8080:80/udp".into()]));
        assert!(!fixed_host_ports(&["80".into(), "127.0.0.1::80".into()]));
        let req = Requirements {
            one_per_node: true,
            ..Requirements::default()
        };
        let mut nodes = vec![node("a", 4 << 30, &[]), node("b", 4 << 30, &[])];
        let plan = plan(&req, 3, &mut nodes);
        assert!(plan[0].is_ok() && plan[1].is_ok(), "{plan:?}");
        assert_ne!(plan[0], plan[1]);
        assert_eq!(plan[2], Err(NoPlacement::PortsTaken { matching: 2 }));
        assert!(
            plan[2]
                .as_ref()
                .unwrap_err()
                .to_string()
                .contains("host ports")
        );
    }
}
