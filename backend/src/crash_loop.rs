//! The crash-loop rule: when a fleet's current build is declared broken (the fleet turns
//! `UNAVAILABLE`, event `CRASH_LOOP`) and when the fleet recovers (`FLEET_RECOVERED`).
//!
//! The rule, for the fleet's current build:
//! - **Enter** when, in the last [`WINDOW_MS`] (60 s), at least [`MIN_START_CRASHES`] (3)
//!   of its processes crashed within [`START_CRASH_MS`] (60 s) of their own start, no
//!   process of the build is READY now, and none became READY in that window. A crash
//!   whose start is unknown counts as a start crash. Crashes before the fleet's last
//!   launch change or recovery do not count.
//! - **Recover** when a process of the build is READY now or became READY since the verdict
//!   (or, outside this function, when the fleet's build or launch settings change).
//! - Otherwise nothing changes: a verdict stays while the agents' backoff spaces the
//!   crashes out beyond the window, so the status does not flap between restarts.
//!
//! Why "at start" and "no READY": a build that cannot get a single process to READY is
//! what a studio must hear about at once; a build whose processes serve and sometimes
//! crash later is listed in the crashes, but its fleet still hosts sessions.
//!
//! Architecture invariant: [`assess`] does no I/O and reads no clock; the store gathers
//! the inputs and writes the outcome in the transaction of the agent report.

/// How far back crashes count.
pub const WINDOW_MS: i64 = 60_000;
/// A crash this soon after its process started is a crash at start.
pub const START_CRASH_MS: i64 = 60_000;
/// How many crashes at start within [`WINDOW_MS`] make a crash loop.
pub const MIN_START_CRASHES: usize = 3;

/// One crash of a process of the build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrashSample {
    /// When it exited.
    pub at_ms: i64,
    /// When its process started, if known.
    pub started_at_ms: Option<i64>,
}

impl CrashSample {
    /// Whether it crashed within [`START_CRASH_MS`] of its start (or its start is unknown).
    pub fn at_start(&self) -> bool {
        self.started_at_ms
            .is_none_or(|started| self.at_ms - started <= START_CRASH_MS)
    }
}

/// What the store knows about the fleet's current build.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuildHealth {
    /// The fleet is already `UNAVAILABLE` for this build, since then.
    pub looping_since_ms: Option<i64>,
    /// Its crashes that may count (at or after the fleet's `crash_count_from`).
    pub crashes: Vec<CrashSample>,
    /// When one of its processes last became READY.
    pub last_ready_ms: Option<i64>,
    /// One of its processes is READY now.
    pub ready_now: bool,
}

/// What the rule decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing changes.
    Steady,
    /// The build crash-loops: the fleet becomes `UNAVAILABLE`.
    CrashLoop {
        /// Crashes at start in the window.
        start_crashes: usize,
    },
    /// A process of the build is READY: the fleet is available again.
    Recovered,
}

/// Applies the rule (see the module documentation) at `now_ms`.
pub fn assess(health: &BuildHealth, now_ms: i64) -> Verdict {
    if let Some(since) = health.looping_since_ms {
        let ready_since = health.last_ready_ms.is_some_and(|ready| ready >= since);
        return if health.ready_now || ready_since {
            Verdict::Recovered
        } else {
            Verdict::Steady
        };
    }
    let window_start = now_ms - WINDOW_MS;
    let start_crashes = health
        .crashes
        .iter()
        .filter(|crash| crash.at_ms >= window_start && crash.at_start())
        .count();
    let ready_in_window = health.ready_now
        || health
            .last_ready_ms
            .is_some_and(|ready| ready >= window_start);
    if start_crashes >= MIN_START_CRASHES && !ready_in_window {
        Verdict::CrashLoop { start_crashes }
    } else {
        Verdict::Steady
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_000_000;

    /// A crash `ago_s` seconds before NOW of a process that lived `lived_s` seconds.
    fn crash(ago_s: i64, lived_s: Option<i64>) -> CrashSample {
        let at_ms = NOW - ago_s * 1000;
        CrashSample {
            at_ms,
            started_at_ms: lived_s.map(|lived| at_ms - lived * 1000),
        }
    }

    #[test]
    fn assess_table() {
        let quick = |ago_s| crash(ago_s, Some(1));
        let cases: Vec<(&str, BuildHealth, Verdict)> = vec![
            ("no crash", BuildHealth::default(), Verdict::Steady),
            (
                "two quick crashes are not a loop",
                BuildHealth {
                    crashes: vec![quick(1), quick(5)],
                    ..BuildHealth::default()
                },
                Verdict::Steady,
            ),
            (
                "three quick crashes in a minute are",
                BuildHealth {
                    crashes: vec![quick(1), quick(5), quick(20)],
                    ..BuildHealth::default()
                },
                Verdict::CrashLoop { start_crashes: 3 },
            ),
            (
                "crashes older than the window do not count",
                BuildHealth {
                    crashes: vec![quick(1), quick(5), quick(61)],
                    ..BuildHealth::default()
                },
                Verdict::Steady,
            ),
            (
                "a crash exactly at the window's edge counts",
                BuildHealth {
                    crashes: vec![quick(1), quick(5), quick(60)],
                    ..BuildHealth::default()
                },
                Verdict::CrashLoop { start_crashes: 3 },
            ),
            (
                "crashes after a long life are not crashes at start",
                BuildHealth {
                    crashes: vec![quick(1), crash(5, Some(3600)), crash(9, Some(61))],
                    ..BuildHealth::default()
                },
                Verdict::Steady,
            ),
            (
                "a crash 60 s after its start is still at start",
                BuildHealth {
                    crashes: vec![quick(1), quick(2), crash(3, Some(60))],
                    ..BuildHealth::default()
                },
                Verdict::CrashLoop { start_crashes: 3 },
            ),
            (
                "unknown starts count as at start",
                BuildHealth {
                    crashes: vec![crash(1, None), crash(2, None), crash(3, None)],
                    ..BuildHealth::default()
                },
                Verdict::CrashLoop { start_crashes: 3 },
            ),
            (
                "a READY process means the build can serve",
                BuildHealth {
                    crashes: vec![quick(1), quick(2), quick(3)],
                    ready_now: true,
                    ..BuildHealth::default()
                },
                Verdict::Steady,
            ),
            (
                "a process that became READY in the window too",
                BuildHealth {
                    crashes: vec![quick(1), quick(2), quick(3)],
                    last_ready_ms: Some(NOW - 30_000),
                    ..BuildHealth::default()
                },
                Verdict::Steady,
            ),
            (
                "READY before the window does not help",
                BuildHealth {
                    crashes: vec![quick(1), quick(2), quick(3)],
                    last_ready_ms: Some(NOW - 61_000),
                    ..BuildHealth::default()
                },
                Verdict::CrashLoop { start_crashes: 3 },
            ),
            (
                "looping stays while nothing is READY, however few the crashes",
                BuildHealth {
                    looping_since_ms: Some(NOW - 120_000),
                    last_ready_ms: Some(NOW - 130_000),
                    ..BuildHealth::default()
                },
                Verdict::Steady,
            ),
            (
                "looping recovers when a process is READY",
                BuildHealth {
                    looping_since_ms: Some(NOW - 10_000),
                    crashes: vec![quick(1), quick(2), quick(3)],
                    ready_now: true,
                    ..BuildHealth::default()
                },
                Verdict::Recovered,
            ),
            (
                "looping recovers when one became READY since the verdict",
                BuildHealth {
                    looping_since_ms: Some(NOW - 10_000),
                    last_ready_ms: Some(NOW - 5_000),
                    ..BuildHealth::default()
                },
                Verdict::Recovered,
            ),
        ];
        for (name, health, expected) in cases {
            assert_eq!(assess(&health, NOW), expected, "case {name}");
        }
    }
}
