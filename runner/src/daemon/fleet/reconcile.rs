//! The agent's decisions as pure functions: the desired replicas and the
//! containers that exist -> what to do ([`plan`]), and a replica's status
//! to report ([`status`]). No I/O; `agent` carries the actions out with the
//! daemon's services.
//!
//! Rules: a replica's container is named by its id and labelled with
//! [`REPLICA_LABEL`] (its id), [`DEPLOYMENT_LABEL`] and [`SPEC_LABEL`] (a
//! hash of everything in its spec but the generation). A desired replica
//! without a container is created and started; one whose container carries
//! another spec hash is replaced; one whose container was made but never
//! started is started. A container that stopped is left to its restart
//! policy (the runner core's job) and reported as exited. A container
//! labelled as a replica that is not desired is removed. A container that
//! has the replica's name but no replica label is a user's: never touched,
//! the replica is reported failed.

use std::collections::{BTreeMap, HashMap};

use sha2::{Digest, Sha256};
use wharf_fleet_proto::{
    DEPLOYMENT_LABEL, REPLICA_LABEL, ReplicaSpec, ReplicaState, ReplicaStatus,
};

use crate::daemon::containers::{Observed, ObservedState};

/// The label with the hash of the spec a container was made from.
pub const SPEC_LABEL: &str = "io.wharf.fleet.spec";

/// What the agent does for one replica or container.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Pull, create and start the replica.
    Create(ReplicaSpec),
    /// Its container (this id) was made from another spec: remove it, then
    /// create the replica anew.
    Replace {
        container: String,
        spec: ReplicaSpec,
    },
    /// Its container exists but was never started (a crash between create
    /// and start).
    Start {
        container: String,
        spec: ReplicaSpec,
    },
    /// A replica container that is not desired: stop and remove it.
    Remove { container: String, name: String },
}

/// A spec's hash without its generation: a replica the server re-places
/// on the same node with the same spec keeps its container.
pub fn spec_hash(spec: &ReplicaSpec) -> String {
    let mut s = spec.clone();
    s.generation = 0;
    let json = serde_json::to_vec(&s).unwrap_or_default();
    hex::encode(&Sha256::digest(&json)[..12])
}

/// The labels of a replica's container.
pub fn labels_of(spec: &ReplicaSpec) -> BTreeMap<String, String> {
    BTreeMap::from([
        (REPLICA_LABEL.to_string(), spec.id.clone()),
        (DEPLOYMENT_LABEL.to_string(), spec.deployment.clone()),
        (SPEC_LABEL.to_string(), spec_hash(spec)),
    ])
}

/// The replica a container runs, if it is one of the fleet's.
pub fn replica_of(c: &Observed) -> Option<&str> {
    c.labels.get(REPLICA_LABEL).map(String::as_str)
}

/// What to do to get from `current` to `desired`. `hold` names replicas
/// not to create or start now (they failed a moment ago). Removals come
/// first, so a replaced container's resources (ports, memory) are free
/// before anything new starts.
pub fn plan(
    desired: &[ReplicaSpec],
    current: &[Observed],
    hold: &dyn Fn(&ReplicaSpec) -> bool,
) -> Vec<Action> {
    let by_name: HashMap<&str, &Observed> = current.iter().map(|c| (c.name.as_str(), c)).collect();
    let wanted: HashMap<&str, &ReplicaSpec> = desired.iter().map(|s| (s.id.as_str(), s)).collect();
    let mut removals = Vec::new();
    for c in current {
        if let Some(replica) = replica_of(c)
            && (!wanted.contains_key(replica) || c.name != replica)
        {
            removals.push(Action::Remove {
                container: c.id.clone(),
                name: c.name.clone(),
            });
        }
    }
    let mut rest = Vec::new();
    for spec in desired {
        match by_name.get(spec.id.as_str()) {
            None => {
                if !hold(spec) {
                    rest.push(Action::Create(spec.clone()));
                }
            }
            // Someone else's container with this name: left alone.
            Some(c) if replica_of(c) != Some(spec.id.as_str()) => {}
            Some(c) if c.labels.get(SPEC_LABEL) != Some(&spec_hash(spec)) => {
                if !hold(spec) {
                    rest.push(Action::Replace {
                        container: c.id.clone(),
                        spec: spec.clone(),
                    });
                }
            }
            Some(c) if c.state == ObservedState::Created => {
                if !hold(spec) {
                    rest.push(Action::Start {
                        container: c.id.clone(),
                        spec: spec.clone(),
                    });
                }
            }
            Some(_) => {}
        }
    }
    removals.extend(rest);
    removals
}

/// The status to report for a desired replica: from its container, or the
/// reason it failed (`failure`, for this spec), or `Assigned` while nothing
/// happened yet.
pub fn status(
    spec: &ReplicaSpec,
    container: Option<&Observed>,
    failure: Option<&str>,
) -> ReplicaStatus {
    let mut st = ReplicaStatus {
        id: spec.id.clone(),
        generation: spec.generation,
        state: ReplicaState::Assigned,
        exit_code: None,
        reason: None,
        container_id: None,
    };
    let ours = container.filter(|c| {
        replica_of(c) == Some(spec.id.as_str())
            && c.labels.get(SPEC_LABEL) == Some(&spec_hash(spec))
    });
    if let Some(reason) = failure {
        st.state = ReplicaState::Failed;
        st.reason = Some(reason.to_string());
        st.container_id = ours.map(|c| c.id.clone());
        return st;
    }
    if let Some(c) = container
        && ours.is_none()
        && replica_of(c).is_none()
    {
        st.state = ReplicaState::Failed;
        st.reason = Some(format!(
            "the name {} is taken by a container the fleet did not make",
            spec.id
        ));
        return st;
    }
    if let Some(c) = ours {
        st.container_id = Some(c.id.clone());
        match c.state {
            ObservedState::Running => st.state = ReplicaState::Running,
            ObservedState::Exited { code, .. } => {
                st.state = ReplicaState::Exited;
                st.exit_code = Some(code);
            }
            ObservedState::Created => st.state = ReplicaState::Assigned,
        }
    }
    st
}

/// One line of an error, bounded, for a report's `reason`.
pub fn one_line(reason: &str) -> String {
    let line: String = reason
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    if line.len() <= 512 {
        return line;
    }
    let mut end = 509;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &line[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: &str, gen_: u64) -> ReplicaSpec {
        ReplicaSpec {
            id: id.into(),
            deployment: id.split('.').next().unwrap().into(),
            generation: gen_,
            image: "reg:5000/app:1".into(),
            container: wharf_fleet_proto::ContainerSpec {
                env: vec!["A=1".into()],
                ports: vec![],
                memory_bytes: None,
                nano_cpus: None,
                restart: None,
                cmd: vec![],
            },
        }
    }

    fn container(
        id: &str,
        name: &str,
        labels: BTreeMap<String, String>,
        state: ObservedState,
    ) -> Observed {
        Observed {
            id: id.into(),
            name: name.into(),
            state,
            labels,
        }
    }

    fn of(s: &ReplicaSpec, id: &str, state: ObservedState) -> Observed {
        container(id, &s.id, labels_of(s), state)
    }

    const NO_HOLD: &dyn Fn(&ReplicaSpec) -> bool = &|_| false;

    #[test]
    fn missing_replicas_are_created_and_present_ones_left_alone() {
        let a = spec("web.0", 1);
        let b = spec("web.1", 1);
        let current = vec![of(&a, "c1", ObservedState::Running)];
        assert_eq!(
            plan(&[a.clone(), b.clone()], &current, NO_HOLD),
            vec![Action::Create(b)]
        );
        // Exited: its restart policy decides, not the agent.
        let exited = vec![of(
            &a,
            "c1",
            ObservedState::Exited {
                code: 3,
                restarting: false,
            },
        )];
        assert!(plan(std::slice::from_ref(&a), &exited, NO_HOLD).is_empty());
    }

    #[test]
    fn undesired_replica_containers_are_removed_and_others_never() {
        let a = spec("web.0", 1);
        let stale = spec("old.0", 4);
        let current = vec![
            of(&a, "c1", ObservedState::Running),
            of(&stale, "c2", ObservedState::Running),
            container("c3", "users-own", BTreeMap::new(), ObservedState::Running),
        ];
        assert_eq!(
            plan(std::slice::from_ref(&a), &current, NO_HOLD),
            vec![Action::Remove {
                container: "c2".into(),
                name: "old.0".into()
            }]
        );
        // An empty desired set removes every replica, nothing else.
        assert_eq!(plan(&[], &current, NO_HOLD).len(), 2);
    }

    #[test]
    fn a_new_generation_of_the_same_spec_keeps_the_container() {
        let a1 = spec("web.0", 1);
        let a2 = spec("web.0", 2);
        let current = vec![of(&a1, "c1", ObservedState::Running)];
        assert!(plan(std::slice::from_ref(&a2), &current, NO_HOLD).is_empty());
        let st = status(&a2, current.first(), None);
        assert_eq!((st.state, st.generation), (ReplicaState::Running, 2));
    }

    #[test]
    fn a_changed_spec_replaces_the_container_after_removals() {
        let old = spec("web.0", 1);
        let mut new = spec("web.0", 2);
        new.image = "reg:5000/app:2".into();
        let gone = spec("x.0", 1);
        let current = vec![
            of(&old, "c1", ObservedState::Running),
            of(&gone, "c2", ObservedState::Running),
        ];
        assert_eq!(
            plan(std::slice::from_ref(&new), &current, NO_HOLD),
            vec![
                Action::Remove {
                    container: "c2".into(),
                    name: "x.0".into()
                },
                Action::Replace {
                    container: "c1".into(),
                    spec: new.clone()
                }
            ]
        );
        // Until replaced, the old container is not this spec's.
        let st = status(&new, current.first(), None);
        assert_eq!(st.state, ReplicaState::Assigned);
    }

    #[test]
    fn a_created_container_is_started_and_held_replicas_wait() {
        let a = spec("web.0", 1);
        let b = spec("web.1", 1);
        let current = vec![of(&a, "c1", ObservedState::Created)];
        let desired = [a.clone(), b.clone()];
        assert_eq!(
            plan(&desired, &current, NO_HOLD),
            vec![
                Action::Start {
                    container: "c1".into(),
                    spec: a.clone()
                },
                Action::Create(b.clone())
            ]
        );
        assert!(plan(&desired, &current, &|_| true).is_empty());
    }

    #[test]
    fn a_users_container_with_the_replica_name_is_not_touched() {
        let a = spec("web.0", 1);
        let current = vec![container(
            "c9",
            "web.0",
            BTreeMap::new(),
            ObservedState::Running,
        )];
        assert!(plan(std::slice::from_ref(&a), &current, NO_HOLD).is_empty());
        let st = status(&a, current.first(), None);
        assert_eq!(st.state, ReplicaState::Failed);
        assert!(st.reason.unwrap().contains("taken"));
    }

    #[test]
    fn statuses_follow_the_container() {
        let a = spec("web.0", 7);
        assert_eq!(status(&a, None, None).state, ReplicaState::Assigned);
        let run = of(&a, "c1", ObservedState::Running);
        let st = status(&a, Some(&run), None);
        assert_eq!(st.state, ReplicaState::Running);
        assert_eq!(st.container_id.as_deref(), Some("c1"));
        assert_eq!(st.generation, 7);
        let ex = of(
            &a,
            "c1",
            ObservedState::Exited {
                code: 137,
                restarting: true,
            },
        );
        let st = status(&a, Some(&ex), None);
        assert_eq!((st.state, st.exit_code), (ReplicaState::Exited, Some(137)));
        let st = status(&a, None, Some("pull access denied"));
        assert_eq!(st.state, ReplicaState::Failed);
        assert_eq!(st.reason.as_deref(), Some("pull access denied"));
    }

    #[test]
    fn reasons_are_one_bounded_line() {
        assert_eq!(one_line("a\n\n  b  \n"), "a; b");
        let long = "é".repeat(600);
        let l = one_line(&long);
        assert!(l.len() <= 512 && l.ends_with("..."));
    }

    #[test]
    fn spec_hash_ignores_only_the_generation() {
        let a = spec("web.0", 1);
        let mut b = spec("web.0", 9);
        assert_eq!(spec_hash(&a), spec_hash(&b));
        b.container.env.push("B=2".into());
        assert_ne!(spec_hash(&a), spec_hash(&b));
    }
}
