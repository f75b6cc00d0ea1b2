//! The agent's decision step: given what fleetformd wants ([`DesiredMachine`]) and what runs
//! here ([`LocalProcess`]), which processes to start, tell to shut down, stop and kill.
//!
//! Architecture invariant: [`plan`] does no I/O, reads no clock and draws no random numbers;
//! the caller passes the time in. It is level-triggered: the same inputs give the same
//! actions, and the caller records what it did (`shutdown_told_at`, `stop_requested_at`,
//! `killed`) so an action is not repeated.
//!
//! What `process_count` counts: *serving* processes, i.e. live processes of the current build
//! that are not stopping, not told to shut down and not draining. So a process that drains
//! (for a restart, or because its session ended in simple mode) is replaced at once, and
//! fleetformd scales a busy process in by draining it *and* lowering `process_count`.

use std::collections::BTreeSet;
use std::time::Duration;

use fleetform_api::agent::{AgentProcessState, DesiredMachine};
use fleetform_api::SessionMode;
use tokio::time::Instant;

/// After a process is told to shut down (its session ended in simple mode), how long it may
/// take to exit by itself before it gets SIGTERM.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// After SIGTERM, how long a process may take to exit before it gets SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(5);
/// Default for how long a READY process may go without a health beat.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(15);

/// The time limits the plan enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// A READY process with no health beat for this long is killed.
    pub health: Duration,
    /// See [`SHUTDOWN_GRACE`].
    pub shutdown_grace: Duration,
    /// See [`STOP_GRACE`].
    pub stop_grace: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            health: DEFAULT_HEALTH_TIMEOUT,
            shutdown_grace: SHUTDOWN_GRACE,
            stop_grace: STOP_GRACE,
        }
    }
}

/// What the plan needs to know about one live process of this agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalProcess {
    pub process_id: String,
    pub build_id: String,
    pub started_at: Instant,
    /// When it called the SDK `ready`.
    pub ready_at: Option<Instant>,
    /// Its last SDK `health` beat.
    pub last_health: Option<Instant>,
    /// It has been assigned a session at some point.
    pub hosted: bool,
    /// Sessions the game server reported ended through the SDK; they no longer count as
    /// active even while `desired.sessions` still lists them.
    pub ended_sessions: BTreeSet<String>,
    /// When the agent told it (through the SDK) to shut down.
    pub shutdown_told_at: Option<Instant>,
    /// When the agent sent it SIGTERM.
    pub stop_requested_at: Option<Instant>,
    /// The agent sent it SIGKILL; it is only waiting to be reaped.
    pub killed: bool,
}

impl LocalProcess {
    /// The state the agent reports for it.
    pub fn state(&self) -> AgentProcessState {
        if self.killed || self.stop_requested_at.is_some() || self.shutdown_told_at.is_some() {
            AgentProcessState::Stopping
        } else if self.ready_at.is_some() {
            AgentProcessState::Ready
        } else {
            AgentProcessState::Starting
        }
    }
}

/// Why the agent kills a process with SIGKILL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillReason {
    /// READY without a health beat for the health timeout; reported as not requested.
    Unhealthy,
    /// It did not exit within [`STOP_GRACE`] of SIGTERM.
    StopTimeout,
}

/// One thing to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start this many new processes with the current launch spec.
    Start(u32),
    /// Tell the process through the SDK to shut down (`shutdown: true`).
    TellShutdown(String),
    /// Tell it to shut down and send SIGTERM.
    Stop(String),
    /// Send SIGKILL.
    Kill(String, KillReason),
}

/// Decides what to do now. See the module documentation for what `process_count` counts.
pub fn plan(
    desired: &DesiredMachine,
    local: &[LocalProcess],
    now: Instant,
    timeouts: Timeouts,
) -> Vec<Action> {
    let mut actions = Vec::new();
    let session_mode = desired
        .launch
        .as_ref()
        .map(|launch| launch.session_mode)
        .unwrap_or_default();
    // Serving processes and whether each hosts an active session.
    let mut serving: Vec<(&LocalProcess, bool)> = Vec::new();

    for process in local {
        let id = &process.process_id;
        if process.killed {
            continue;
        }
        if let Some(stop_requested_at) = process.stop_requested_at {
            if now >= stop_requested_at + timeouts.stop_grace {
                actions.push(Action::Kill(id.clone(), KillReason::StopTimeout));
            }
            continue;
        }
        if desired.shutdown {
            actions.push(Action::Stop(id.clone()));
            continue;
        }
        let active = active_session_count(desired, process);
        if let Some(told_at) = process.shutdown_told_at {
            if now >= told_at + timeouts.shutdown_grace {
                actions.push(Action::Stop(id.clone()));
            }
            continue;
        }
        if let Some(ready_at) = process.ready_at {
            let last_beat = process
                .last_health
                .map_or(ready_at, |beat| beat.max(ready_at));
            if now >= last_beat + timeouts.health {
                actions.push(Action::Kill(id.clone(), KillReason::Unhealthy));
                continue;
            }
        }
        let hosted = process.hosted || active > 0;
        if session_mode == SessionMode::Simple && hosted && active == 0 {
            // Simple mode: one session per process, then a fresh process.
            actions.push(Action::TellShutdown(id.clone()));
            continue;
        }
        let current_build = desired
            .launch
            .as_ref()
            .is_some_and(|launch| launch.build_id == process.build_id);
        let draining = desired.drain.iter().any(|drained| drained == id);
        if !current_build || draining {
            if active == 0 {
                actions.push(Action::Stop(id.clone()));
            }
            continue;
        }
        serving.push((process, active > 0));
    }

    if desired.shutdown {
        return actions;
    }
    let target = if desired.launch.is_some() {
        desired.process_count as usize
    } else {
        0
    };
    if serving.len() < target {
        actions.push(Action::Start((target - serving.len()) as u32));
    } else if serving.len() > target {
        // Stop idle processes only, those not yet READY first (fleetformd cannot have
        // placed a session on them), then the youngest.
        let mut idle: Vec<&LocalProcess> = serving
            .iter()
            .filter(|(_, busy)| !busy)
            .map(|(process, _)| *process)
            .collect();
        idle.sort_by_key(|process| {
            (
                process.ready_at.is_some(),
                std::cmp::Reverse(process.started_at),
            )
        });
        let excess = serving.len() - target;
        for process in idle.into_iter().take(excess) {
            actions.push(Action::Stop(process.process_id.clone()));
        }
    }
    actions
}

/// Sessions fleetformd assigned to the process that the game server has not ended.
pub fn active_session_count(desired: &DesiredMachine, process: &LocalProcess) -> usize {
    desired
        .sessions
        .get(&process.process_id)
        .map_or(0, |sessions| {
            sessions
                .iter()
                .filter(|session| !process.ended_sessions.contains(&session.id))
                .count()
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetform_api::agent::{AssignedSession, LaunchSpec};

    /// Test fixture: a desired machine built fluently.
    fn desired(count: u32) -> DesiredMachine {
        DesiredMachine {
            shutdown: false,
            launch: Some(LaunchSpec {
                build_id: "b1".into(),
                source: "file:///builds/b1".into(),
                sha256: None,
                launch_path: "server".into(),
                launch_parameters: None,
                session_mode: SessionMode::Simple,
                sessions_per_process: 1,
            }),
            process_count: count,
            sessions: Default::default(),
            drain: vec![],
        }
    }

    trait DesiredExt {
        fn session(self, process: &str, session: &str) -> Self;
        fn drain(self, process: &str) -> Self;
        fn parallel(self) -> Self;
        fn build(self, build_id: &str) -> Self;
        fn no_launch(self) -> Self;
        fn shutdown(self) -> Self;
    }

    impl DesiredExt for DesiredMachine {
        fn session(mut self, process: &str, session: &str) -> Self {
            self.sessions
                .entry(process.into())
                .or_default()
                .push(AssignedSession {
                    id: session.into(),
                    max_players: None,
                    properties: Default::default(),
                });
            self
        }
        fn drain(mut self, process: &str) -> Self {
            self.drain.push(process.into());
            self
        }
        fn parallel(mut self) -> Self {
            let launch = self.launch.as_mut().unwrap();
            launch.session_mode = SessionMode::Parallel;
            launch.sessions_per_process = 4;
            self
        }
        fn build(mut self, build_id: &str) -> Self {
            self.launch.as_mut().unwrap().build_id = build_id.into();
            self
        }
        fn no_launch(mut self) -> Self {
            self.launch = None;
            self
        }
        fn shutdown(mut self) -> Self {
            self.shutdown = true;
            self
        }
    }

    /// Test fixture: a process started at `t0 + started_secs`, ready at that moment and
    /// beating health at `t0 + 100s` (the default "now" of the tests).
    fn proc(id: &str, started_secs: u64) -> LocalProcess {
        let t0 = base();
        LocalProcess {
            process_id: id.into(),
            build_id: "b1".into(),
            started_at: t0 + secs(started_secs),
            ready_at: Some(t0 + secs(started_secs)),
            last_health: Some(t0 + secs(100)),
            hosted: false,
            ended_sessions: BTreeSet::new(),
            shutdown_told_at: None,
            stop_requested_at: None,
            killed: false,
        }
    }

    trait ProcExt {
        fn starting(self) -> Self;
        fn hosted(self) -> Self;
        fn ended(self, session: &str) -> Self;
        fn told_at(self, at_secs: u64) -> Self;
        fn stopped_at(self, at_secs: u64) -> Self;
        fn killed(self) -> Self;
        fn last_health(self, at_secs: Option<u64>) -> Self;
    }

    impl ProcExt for LocalProcess {
        fn starting(mut self) -> Self {
            self.ready_at = None;
            self.last_health = None;
            self
        }
        fn hosted(mut self) -> Self {
            self.hosted = true;
            self
        }
        fn ended(mut self, session: &str) -> Self {
            self.hosted = true;
            self.ended_sessions.insert(session.into());
            self
        }
        fn told_at(mut self, at_secs: u64) -> Self {
            self.shutdown_told_at = Some(base() + secs(at_secs));
            self
        }
        fn stopped_at(mut self, at_secs: u64) -> Self {
            self.stop_requested_at = Some(base() + secs(at_secs));
            self
        }
        fn killed(mut self) -> Self {
            self.killed = true;
            self
        }
        fn last_health(mut self, at_secs: Option<u64>) -> Self {
            self.last_health = at_secs.map(|at| base() + secs(at));
            self
        }
    }

    fn base() -> Instant {
        // A fixed origin per thread is enough: tests only compare offsets from it.
        thread_local!(static BASE: Instant = Instant::now());
        BASE.with(|base| *base)
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn stop(id: &str) -> Action {
        Action::Stop(id.into())
    }
    fn tell(id: &str) -> Action {
        Action::TellShutdown(id.into())
    }
    fn kill(id: &str, reason: KillReason) -> Action {
        Action::Kill(id.into(), reason)
    }

    #[test]
    fn plan_table() {
        use KillReason::*;
        struct Case {
            name: &'static str,
            desired: DesiredMachine,
            local: Vec<LocalProcess>,
            now_secs: u64,
            expected: Vec<Action>,
        }
        let cases = vec![
            Case {
                name: "empty machine starts the count",
                desired: desired(3),
                local: vec![],
                now_secs: 100,
                expected: vec![Action::Start(3)],
            },
            Case {
                name: "at count does nothing",
                desired: desired(2),
                local: vec![proc("a", 1), proc("b", 2)],
                now_secs: 100,
                expected: vec![],
            },
            Case {
                name: "no launch spec runs nothing and stops idle processes",
                desired: desired(2).no_launch(),
                local: vec![proc("a", 1)],
                now_secs: 100,
                expected: vec![stop("a")],
            },
            Case {
                name: "scale in stops starting processes first, then the youngest idle",
                desired: desired(1),
                local: vec![
                    proc("old", 1),
                    proc("young", 50),
                    proc("boot", 90).starting(),
                ],
                now_secs: 100,
                expected: vec![stop("boot"), stop("young")],
            },
            Case {
                name: "scale in never stops a process hosting a session",
                desired: desired(0).parallel().session("a", "s1"),
                local: vec![proc("a", 1), proc("b", 2)],
                now_secs: 100,
                expected: vec![stop("b")],
            },
            Case {
                name: "simple mode: session ended through the SDK tells shutdown and replaces",
                desired: desired(1).session("a", "s1"),
                local: vec![proc("a", 1).ended("s1")],
                now_secs: 100,
                expected: vec![tell("a"), Action::Start(1)],
            },
            Case {
                name: "simple mode: session removed by the control plane tells shutdown",
                desired: desired(1),
                local: vec![proc("a", 1).hosted()],
                now_secs: 100,
                expected: vec![tell("a"), Action::Start(1)],
            },
            Case {
                name: "simple mode: active session keeps the process",
                desired: desired(1).session("a", "s1"),
                local: vec![proc("a", 1).hosted()],
                now_secs: 100,
                expected: vec![],
            },
            Case {
                name: "parallel mode: no restart between sessions",
                desired: desired(1).parallel(),
                local: vec![proc("a", 1).ended("s1")],
                now_secs: 100,
                expected: vec![],
            },
            Case {
                name: "told process gets SIGTERM after the shutdown grace",
                desired: desired(1),
                local: vec![
                    proc("a", 1).hosted().told_at(89),
                    proc("b", 2).hosted().told_at(91),
                ],
                now_secs: 100,
                expected: vec![stop("a"), Action::Start(1)],
            },
            Case {
                name: "stopping process gets SIGKILL after the stop grace",
                desired: desired(0),
                local: vec![proc("a", 1).stopped_at(95), proc("b", 1).stopped_at(96)],
                now_secs: 100,
                expected: vec![kill("a", StopTimeout)],
            },
            Case {
                name: "killed process is only waited for",
                desired: desired(1),
                local: vec![proc("a", 1).stopped_at(10).killed()],
                now_secs: 100,
                expected: vec![Action::Start(1)],
            },
            Case {
                name: "ready process without health beat is killed and replaced",
                desired: desired(1),
                local: vec![proc("a", 1).last_health(Some(84))],
                now_secs: 100,
                expected: vec![kill("a", Unhealthy), Action::Start(1)],
            },
            Case {
                name: "health timeout counts from ready when no beat came",
                desired: desired(2),
                local: vec![
                    proc("a", 90).last_health(None),
                    proc("b", 80).last_health(None),
                ],
                now_secs: 100,
                expected: vec![kill("b", Unhealthy), Action::Start(1)],
            },
            Case {
                name: "starting process has no health timeout",
                desired: desired(1),
                local: vec![proc("a", 1).starting()],
                now_secs: 100,
                expected: vec![],
            },
            Case {
                name: "drained idle process stops and is replaced",
                desired: desired(2).drain("a"),
                local: vec![proc("a", 1), proc("b", 2)],
                now_secs: 100,
                expected: vec![stop("a"), Action::Start(1)],
            },
            Case {
                name: "drained busy process stays until idle",
                desired: desired(1).drain("a").session("a", "s1"),
                local: vec![proc("a", 1).hosted(), proc("b", 2)],
                now_secs: 100,
                expected: vec![],
            },
            Case {
                name: "new build replaces idle old processes, busy ones stay",
                desired: desired(2).build("b2").session("busy", "s1"),
                local: vec![proc("idle", 1), proc("busy", 2).hosted()],
                now_secs: 100,
                expected: vec![stop("idle"), Action::Start(2)],
            },
            Case {
                name: "shutdown stops everything, busy or not, and starts nothing",
                desired: desired(2).shutdown().session("a", "s1"),
                local: vec![
                    proc("a", 1).hosted(),
                    proc("b", 2),
                    proc("c", 3).stopped_at(99),
                ],
                now_secs: 100,
                expected: vec![stop("a"), stop("b")],
            },
        ];
        for case in cases {
            let actions = plan(
                &case.desired,
                &case.local,
                base() + secs(case.now_secs),
                Timeouts::default(),
            );
            assert_eq!(actions, case.expected, "case: {}", case.name);
        }
    }

    #[test]
    fn reported_state_follows_the_lifecycle() {
        assert_eq!(proc("a", 1).starting().state(), AgentProcessState::Starting);
        assert_eq!(proc("a", 1).state(), AgentProcessState::Ready);
        assert_eq!(proc("a", 1).told_at(5).state(), AgentProcessState::Stopping);
        assert_eq!(
            proc("a", 1).stopped_at(5).state(),
            AgentProcessState::Stopping
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        prop_compose! {
            fn arb_case()(
                count in 0u32..6,
                parallel in any::<bool>(),
                new_build in any::<bool>(),
                procs in proptest::collection::vec(
                    (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>(), 0u64..100, proptest::option::of(0u64..100)),
                    0..8,
                ),
            ) -> (DesiredMachine, Vec<LocalProcess>) {
                let mut machine = desired(count);
                if parallel { machine = machine.parallel(); }
                if new_build { machine = machine.build("b2"); }
                let mut local = Vec::new();
                for (index, (busy, ready, drained, hosted, started, beat)) in procs.into_iter().enumerate() {
                    let id = format!("p{index}");
                    let mut process = proc(&id, started).last_health(beat);
                    if !ready { process = process.starting(); }
                    if hosted { process = process.hosted(); }
                    if busy { machine = machine.session(&id, &format!("s{index}")); }
                    if drained { machine = machine.drain(&id); }
                    local.push(process);
                }
                (machine, local)
            }
        }

        proptest! {
            /// Architecture invariant: short of a machine shutdown or a dead game server, the
            /// agent never stops a process that hosts an active session.
            #[test]
            fn never_stops_a_process_hosting_a_session((machine, local) in arb_case()) {
                let actions = plan(&machine, &local, base() + secs(100), Timeouts::default());
                for action in actions {
                    if let Action::Stop(id) | Action::TellShutdown(id) = &action {
                        let process = local.iter().find(|p| &p.process_id == id).unwrap();
                        prop_assert_eq!(active_session_count(&machine, process), 0, "{:?}", action);
                    }
                }
            }

            /// The plan never asks for more serving processes than `process_count`.
            #[test]
            fn never_starts_beyond_the_count((machine, local) in arb_case()) {
                let actions = plan(&machine, &local, base() + secs(100), Timeouts::default());
                let started: u32 = actions.iter().map(|a| match a { Action::Start(n) => *n, _ => 0 }).sum();
                prop_assert!(started <= machine.process_count);
            }
        }
    }
}
