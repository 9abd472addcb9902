//! Restart policies (`--restart`): which ends of a container the daemon
//! answers with a new start, how long it waits first (docker's back-off),
//! and which containers come back when the daemon starts (after a daemon
//! restart or a host reboot).
//!
//! Pure rules, no I/O: `containers` calls them when a container's monitor
//! ends, on `stop`/`kill`/`start`, and when the daemon opens its state.

use std::time::Duration;

use crate::api::RestartPolicy;

/// The first wait before a restart; it doubles with each restart...
pub const INITIAL_DELAY: Duration = Duration::from_millis(100);
/// ...up to this...
pub const MAX_DELAY: Duration = Duration::from_secs(60);
/// ...and starts over once a container ran at least this long (docker's
/// restart manager uses the same three numbers).
pub const RESET_AFTER: Duration = Duration::from_secs(10);

/// A checked `--restart`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    No,
    Always,
    /// `on-failure[:max]`; `max` 0: no limit.
    OnFailure {
        max: u32,
    },
    UnlessStopped,
}

impl Policy {
    /// Checks the request's policy, with docker's messages.
    pub fn from_request(p: Option<&RestartPolicy>) -> Result<Policy, String> {
        let Some(p) = p else {
            return Ok(Policy::No);
        };
        let policy = match p.name.as_str() {
            "" | "no" => Policy::No,
            "always" => Policy::Always,
            "unless-stopped" => Policy::UnlessStopped,
            "on-failure" => {
                let max = u32::try_from(p.maximum_retry_count).map_err(|_| {
                    "invalid restart policy: maximum retry count cannot be negative".to_string()
                })?;
                return Ok(Policy::OnFailure { max });
            }
            other => {
                return Err(format!(
                    "invalid restart policy: unknown policy '{other}'; use one of 'no', 'always', 'on-failure', or 'unless-stopped'"
                ));
            }
        };
        if p.maximum_retry_count != 0 {
            return Err(
                "invalid restart policy: maximum retry count can only be used with 'on-failure'"
                    .into(),
            );
        }
        Ok(policy)
    }

    /// The policy as `inspect` shows it.
    pub fn to_api(self) -> RestartPolicy {
        let (name, max) = match self {
            Policy::No => ("no", 0),
            Policy::Always => ("always", 0),
            Policy::OnFailure { max } => ("on-failure", i64::from(max)),
            Policy::UnlessStopped => ("unless-stopped", 0),
        };
        RestartPolicy {
            name: name.into(),
            maximum_retry_count: max,
        }
    }

    /// Whether a container that just ended with `exit_code` starts again.
    /// `manually_stopped`: a user stopped or killed it; `restarts`: how
    /// often the policy has restarted it since it was last started by hand.
    pub fn after_exit(self, exit_code: i64, manually_stopped: bool, restarts: i64) -> bool {
        if manually_stopped {
            return false;
        }
        match self {
            Policy::No => false,
            Policy::Always | Policy::UnlessStopped => true,
            Policy::OnFailure { max } => exit_code != 0 && (max == 0 || restarts < i64::from(max)),
        }
    }

    /// Whether a container that was not running when the daemon started
    /// (it had ended, or the host rebooted) is started again: `always`
    /// even after a manual stop, as docker does; `unless-stopped` unless it
    /// was stopped by hand; `on-failure` if its last end was a failure it
    /// still has retries for.
    pub fn at_daemon_start(self, exit_code: i64, manually_stopped: bool, restarts: i64) -> bool {
        match self {
            Policy::Always => true,
            _ => self.after_exit(exit_code, manually_stopped, restarts),
        }
    }
}

/// The wait before the next restart of one container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Backoff {
    last: Option<Duration>,
}

impl Backoff {
    /// The delay before restarting a container that ran for `ran`.
    pub fn next(&mut self, ran: Duration) -> Duration {
        let delay = match self.last {
            Some(last) if ran < RESET_AFTER => (last * 2).min(MAX_DELAY),
            _ => INITIAL_DELAY,
        };
        self.last = Some(delay);
        delay
    }

    /// A start by hand forgets the back-off.
    pub fn reset(&mut self) {
        self.last = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(s: &str) -> Result<Policy, String> {
        Policy::from_request(Some(&RestartPolicy::parse(s)?))
    }

    #[test]
    fn parses_docker_policies_with_its_messages() {
        assert_eq!(policy("no"), Ok(Policy::No));
        assert_eq!(policy("always"), Ok(Policy::Always));
        assert_eq!(policy("unless-stopped"), Ok(Policy::UnlessStopped));
        assert_eq!(policy("on-failure"), Ok(Policy::OnFailure { max: 0 }));
        assert_eq!(policy("on-failure:3"), Ok(Policy::OnFailure { max: 3 }));
        assert_eq!(Policy::from_request(None), Ok(Policy::No));
        assert!(
            policy("bogus")
                .unwrap_err()
                .contains("unknown policy 'bogus'")
        );
        assert!(
            policy("always:2")
                .unwrap_err()
                .contains("only be used with 'on-failure'")
        );
        assert!(
            policy("on-failure:-1")
                .unwrap_err()
                .contains("cannot be negative")
        );
        assert!(
            policy("on-failure:x")
                .unwrap_err()
                .contains("must be an integer")
        );
        assert!(
            policy(":3")
                .unwrap_err()
                .contains("no policy provided before colon")
        );
        assert_eq!(
            policy("on-failure:5").map(Policy::to_api),
            Ok(RestartPolicy {
                name: "on-failure".into(),
                maximum_retry_count: 5
            })
        );
    }

    #[test]
    fn which_exits_restart() {
        assert!(!Policy::No.after_exit(1, false, 0));
        assert!(Policy::Always.after_exit(0, false, 100));
        assert!(!Policy::Always.after_exit(0, true, 0));
        assert!(Policy::UnlessStopped.after_exit(0, false, 0));
        assert!(!Policy::UnlessStopped.after_exit(137, true, 0));
        let two = Policy::OnFailure { max: 2 };
        assert!(!two.after_exit(0, false, 0));
        assert!(two.after_exit(3, false, 0));
        assert!(two.after_exit(3, false, 1));
        assert!(!two.after_exit(3, false, 2));
        assert!(Policy::OnFailure { max: 0 }.after_exit(1, false, 1000));
    }

    #[test]
    fn which_containers_come_back_with_the_daemon() {
        assert!(Policy::Always.at_daemon_start(0, true, 0));
        assert!(Policy::UnlessStopped.at_daemon_start(0, false, 0));
        assert!(!Policy::UnlessStopped.at_daemon_start(0, true, 0));
        assert!(Policy::OnFailure { max: 1 }.at_daemon_start(1, false, 0));
        assert!(!Policy::OnFailure { max: 1 }.at_daemon_start(0, false, 0));
        assert!(!Policy::No.at_daemon_start(1, false, 0));
    }

    #[test]
    fn backoff_doubles_caps_and_resets_after_a_long_run() {
        let mut b = Backoff::default();
        let short = Duration::from_millis(5);
        assert_eq!(b.next(short), Duration::from_millis(100));
        assert_eq!(b.next(short), Duration::from_millis(200));
        assert_eq!(b.next(short), Duration::from_millis(400));
        for _ in 0..20 {
            b.next(short);
        }
        assert_eq!(b.next(short), MAX_DELAY);
        assert_eq!(b.next(RESET_AFTER), INITIAL_DELAY);
        b.next(short);
        b.reset();
        assert_eq!(b.next(short), INITIAL_DELAY);
    }
}
