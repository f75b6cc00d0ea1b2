//! Retry pacing: exponential backoff for syncs, and crash-loop protection for process starts.

use std::time::Duration;

use tokio::time::Instant;

/// Exponential backoff: `min`, doubling on each failure, capped at `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max,
            next: min,
        }
    }

    /// The delay before the next try after a failure; doubles the one after it.
    pub fn fail(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    /// Forgets past failures.
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

/// A process that exits by itself sooner than this after starting counts as a failed start.
pub const EARLY_EXIT: Duration = Duration::from_secs(10);

/// Keeps a game server that keeps failing right after start from being restarted in a hot
/// loop: each failed start (spawn error, or an unrequested exit within [`EARLY_EXIT`]) delays
/// the next start by 1 s, doubling up to 30 s; a process that lives longer resets it.
#[derive(Debug, Clone)]
pub struct StartBackoff {
    backoff: Backoff,
    not_before: Option<Instant>,
}

impl Default for StartBackoff {
    fn default() -> Self {
        StartBackoff {
            backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(30)),
            not_before: None,
        }
    }
}

impl StartBackoff {
    /// Whether a process may be started at `now`.
    pub fn allows(&self, now: Instant) -> bool {
        self.not_before.is_none_or(|at| now >= at)
    }

    /// When starts are allowed again, if they are held back.
    pub fn not_before(&self) -> Option<Instant> {
        self.not_before
    }

    /// A process could not be spawned at all.
    pub fn spawn_failed(&mut self, now: Instant) {
        self.not_before = Some(now + self.backoff.fail());
    }

    /// A process exited without being asked to, after running for `lived`.
    pub fn unrequested_exit(&mut self, lived: Duration, now: Instant) {
        if lived < EARLY_EXIT {
            self.not_before = Some(now + self.backoff.fail());
        } else {
            self.reset();
        }
    }

    /// Forgets past failures (e.g. a new build arrived).
    pub fn reset(&mut self) {
        self.backoff.reset();
        self.not_before = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let delays: Vec<u128> = (0..7).map(|_| backoff.fail().as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 2000, 2000]);
        backoff.reset();
        assert_eq!(backoff.fail(), Duration::from_millis(100));
    }

    #[test]
    fn start_backoff_table() {
        let now = Instant::now();
        let s = Duration::from_secs;
        struct Case {
            name: &'static str,
            exits_lived_secs: &'static [u64],
            allowed_after_secs: u64,
        }
        let cases = [
            Case {
                name: "no failure",
                exits_lived_secs: &[],
                allowed_after_secs: 0,
            },
            Case {
                name: "one early exit waits 1s",
                exits_lived_secs: &[0],
                allowed_after_secs: 1,
            },
            Case {
                name: "three early exits wait 4s",
                exits_lived_secs: &[1, 1, 1],
                allowed_after_secs: 4,
            },
            Case {
                name: "many early exits cap at 30s",
                exits_lived_secs: &[0; 9],
                allowed_after_secs: 30,
            },
            Case {
                name: "a long-lived process resets",
                exits_lived_secs: &[0, 0, 0, 60],
                allowed_after_secs: 0,
            },
            Case {
                name: "after a reset the delay starts over",
                exits_lived_secs: &[0, 0, 0, 60, 2],
                allowed_after_secs: 1,
            },
        ];
        for case in cases {
            let mut backoff = StartBackoff::default();
            for lived in case.exits_lived_secs {
                backoff.unrequested_exit(s(*lived), now);
            }
            let wait = case.allowed_after_secs;
            assert!(
                backoff.allows(now + s(wait)),
                "case {}: not allowed after {wait}s",
                case.name
            );
            if wait > 0 {
                assert!(
                    !backoff.allows(now + s(wait) - Duration::from_millis(1)),
                    "case {}: allowed before {wait}s",
                    case.name
                );
            }
        }
    }
}
