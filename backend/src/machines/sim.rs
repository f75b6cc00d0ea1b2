//! The `sim` driver: simulated machines and processes, so the real reconciler, store and
//! placement code run at 10,000+ machines in one fleetformd.
//!
//! A simulated machine has no OS process. `boot_seconds` after its launch it registers the
//! way an agent does, by applying a [`SyncRequest`] to the store in-process
//! ([`Store::apply_agent_report`]), and from then on it follows its desired state, computed
//! by [`desired_machine`], the rule `/v1/agent/sync` answers real agents with. Like the
//! agent's plan it starts processes up to `process_count` (`STARTING`, then `READY`
//! `start_seconds` later), stops idle extra ones, replaces drained ones and ones of an old
//! build, restarts a simple-mode process once its session is over (reported as exited,
//! requested, and a new one `STARTING`), and stops everything when told to shut down. Ports
//! are fake but distinct on each machine; the address is `sim`. Sessions end through
//! `POST /v1/sessions/{id}/end`, or, with `session_seconds`, by themselves after that long
//! (reported in `ended_sessions`, as a game server would): handy for load tests.
//!
//! Scale: one task ([`SimWorld::run`]) drives every machine of every `sim` location from a
//! heap of deadlines (boot done, process ready, session over, shutdown done, heartbeat), not
//! a task per machine. A machine learns its desired state the way an agent's long-poll does:
//! the store tells the world which machines changed ([`crate::changes`]), and the world
//! reads just those machines' desired states from the store's picture
//! ([`Store::desired_states`], no query), coalesced over [`REFRESH_GAP`]; every machine is
//! read again every [`RESYNC_INTERVAL`] anyway (level-triggered). A machine reports only
//! when something changed, plus a slow heartbeat (`heartbeat_seconds`, 60 s by default).
//! Reports run beside the loop, many at once: the store's writer commits them together.
//!
//! Liveness: a simulated machine is alive from `launch` until `shutdown_seconds` after
//! `terminate`. Machines live in this process's memory only: after a restart of fleetformd
//! every simulated machine is gone, `liveness` says `Gone`, and the reconciler records their
//! end (sessions `LOST`) and launches replacements, as for cloud machines that died.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use fleetform_api::agent::{
    AgentProcessState, DesiredMachine, ProcessExit, ProcessReport, SyncRequest,
};
use fleetform_api::{MachineStatus, SessionMode};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::{LaunchRequest, Liveness, MachineDriver};
use crate::changes::Notice;
use crate::store::{MachineRecord, ReportOutcome, Store};
use crate::time::{new_id, now_ms, rfc3339};
use crate::zones::Demand;
use crate::{Error, Result};

/// How long changed machines gather before their desired states are read together. A
/// machine of a busy parallel-mode zone changes with every placement and every end; its
/// desired state lists all its sessions, so reading it at every change would cost the
/// store's writer more than the changes themselves.
pub const REFRESH_GAP: Duration = Duration::from_millis(100);
/// Every machine's desired state is read again this often, changes or not: the loop stays
/// level-triggered even if a wake-up was missed.
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(5);
/// Machines whose desired states one read takes (so one read holds the store's writer
/// only briefly: writes go between two chunks).
const READ_CHUNK: usize = 64;
/// Reports in flight at once: the store's writer commits all that are queued in one
/// transaction, so many in flight means few commits.
const REPORT_CONCURRENCY: usize = 64;
/// Fake game ports: `PORT_BASE..PORT_BASE + PORT_SPAN`, round robin on each machine.
const PORT_BASE: u16 = 7000;
const PORT_SPAN: u16 = 1000;

/// The settings of one `sim` location (its `[[location]]` table).
#[derive(Debug, Clone, PartialEq)]
pub struct SimSettings {
    /// From launch until the machine registers (`boot_seconds`).
    pub boot: Duration,
    /// From a process's start until it is `READY` (`start_seconds`).
    pub start: Duration,
    /// Sessions end by themselves after this long (`session_seconds`); None: only through
    /// the API.
    pub session: Option<Duration>,
    /// From `terminate` until the machine is gone (`shutdown_seconds`).
    pub shutdown: Duration,
    /// How often a machine with nothing new reports anyway (`heartbeat_seconds`).
    pub heartbeat: Duration,
    /// Instance types the simulated cloud has no capacity for: `launch` fails with
    /// `InsufficientCapacity`, so the reconciler tries the next machine model.
    pub unavailable_instance_types: BTreeSet<String>,
    /// Most machines the location runs at once; launches beyond fail for capacity too.
    pub max_machines: Option<u32>,
}

impl Default for SimSettings {
    fn default() -> Self {
        SimSettings {
            boot: Duration::from_secs(1),
            start: Duration::from_millis(200),
            session: None,
            shutdown: Duration::from_millis(500),
            heartbeat: Duration::from_secs(60),
            unavailable_instance_types: BTreeSet::new(),
            max_machines: None,
        }
    }
}

/// A simulated game-server process.
#[derive(Debug, Clone)]
struct SimProcess {
    id: String,
    port: u16,
    build_id: String,
    started_at: Instant,
    /// RFC 3339, as reported.
    started_at_text: String,
    ready_at: Instant,
    /// Whether it has reached `ready_at` (and says `READY`).
    ready: bool,
    /// It has been assigned a session at some point.
    hosted: bool,
    /// Its active sessions, with when each ends by itself (`session_seconds`).
    sessions: BTreeMap<String, Option<Instant>>,
    /// Sessions it ended itself; the desired state may still list them until the store
    /// has the report.
    ended: BTreeSet<String>,
}

/// Where a simulated machine is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Booting {
        until: Instant,
    },
    /// Booted: it registers as soon as it knows its desired state.
    Up,
    /// `terminate` was called; gone at `until`.
    ShuttingDown {
        until: Instant,
    },
}

/// What a timer did to a machine.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Tick {
    /// Something to report.
    report: bool,
    /// It finished booting and needs its desired state.
    booted: bool,
    /// Its shutdown is over: remove it.
    gone: bool,
}

/// One simulated machine.
#[derive(Debug)]
struct SimMachine {
    location: String,
    driver_ref: String,
    settings: Arc<SimSettings>,
    phase: Phase,
    /// The store's row, once a bulk read found it (reports need its zone and fleet).
    record: Option<MachineRecord>,
    /// The desired state it follows, once known.
    desired: Option<DesiredMachine>,
    processes: Vec<SimProcess>,
    /// Not yet reported: processes that ended and sessions that ended.
    exited: Vec<ProcessExit>,
    ended_sessions: Vec<String>,
    report_seq: u64,
    next_port: u16,
    /// Queued for a report.
    dirty: bool,
    /// A report of it is being applied.
    reporting: bool,
    last_report: Option<Instant>,
    /// The deadline it has in the heap.
    wake_at: Option<Instant>,
}

impl SimMachine {
    fn new(location: &str, driver_ref: String, settings: Arc<SimSettings>) -> Self {
        let until = Instant::now() + settings.boot;
        SimMachine {
            location: location.to_string(),
            driver_ref,
            settings,
            phase: Phase::Booting { until },
            record: None,
            desired: None,
            processes: Vec::new(),
            exited: Vec::new(),
            ended_sessions: Vec::new(),
            report_seq: 0,
            next_port: 0,
            dirty: false,
            reporting: false,
            last_report: None,
            wake_at: None,
        }
    }

    /// The next moment a timer has something to do for it.
    fn next_wake(&self) -> Option<Instant> {
        match self.phase {
            Phase::Booting { until } | Phase::ShuttingDown { until } => Some(until),
            Phase::Up => {
                let processes = self.processes.iter().flat_map(|process| {
                    let ready = (!process.ready).then_some(process.ready_at);
                    ready
                        .into_iter()
                        .chain(process.sessions.values().flatten().copied())
                });
                // A machine already queued for a report has its heartbeat coming.
                let heartbeat = self
                    .last_report
                    .filter(|_| !self.dirty && !self.reporting)
                    .map(|at| at + self.settings.heartbeat);
                processes.chain(heartbeat).min()
            }
        }
    }

    /// Does what is due at `now`.
    fn tick(&mut self, now: Instant, now_ms: i64) -> Tick {
        let mut tick = Tick::default();
        match self.phase {
            Phase::Booting { until } if now >= until => {
                self.phase = Phase::Up;
                tick.booted = true;
            }
            Phase::Booting { .. } => {}
            Phase::ShuttingDown { until } => tick.gone = now >= until,
            Phase::Up => {
                let mut sessions_ended = false;
                for process in &mut self.processes {
                    if !process.ready && now >= process.ready_at {
                        process.ready = true;
                        tick.report = true;
                    }
                    let due: Vec<String> = process
                        .sessions
                        .iter()
                        .filter(|(_, ends)| ends.is_some_and(|ends| now >= ends))
                        .map(|(id, _)| id.clone())
                        .collect();
                    for session in due {
                        process.sessions.remove(&session);
                        process.ended.insert(session.clone());
                        self.ended_sessions.push(session);
                        sessions_ended = true;
                    }
                }
                if sessions_ended {
                    // A game server that ended its session: simple mode restarts it.
                    if let Some(desired) = self.desired.take() {
                        self.follow(&desired, now, now_ms);
                        self.desired = Some(desired);
                    }
                    tick.report = true;
                }
                if self
                    .last_report
                    .is_some_and(|at| now >= at + self.settings.heartbeat)
                {
                    tick.report = true;
                }
            }
        }
        tick
    }

    /// Makes the processes match `desired`, as the agent's plan does, with processes that
    /// start in `start_seconds` and stop at once. True when anything changed.
    fn follow(&mut self, desired: &DesiredMachine, now: Instant, now_ms: i64) -> bool {
        if self.phase != Phase::Up {
            return false;
        }
        if desired.shutdown {
            let changed = !self.processes.is_empty();
            for process in std::mem::take(&mut self.processes) {
                self.exit(process, now_ms);
            }
            return changed;
        }
        let session_mode = desired
            .launch
            .as_ref()
            .map(|launch| launch.session_mode)
            .unwrap_or_default();
        let session_length = self.settings.session;
        for process in &mut self.processes {
            let assigned: BTreeSet<&str> = desired
                .sessions
                .get(&process.id)
                .into_iter()
                .flatten()
                .map(|session| session.id.as_str())
                .collect();
            // Sessions the control plane ended are simply gone; ours stay ended until the
            // desired state forgets them.
            process.ended.retain(|id| assigned.contains(id.as_str()));
            process
                .sessions
                .retain(|id, _| assigned.contains(id.as_str()));
            for id in assigned {
                if process.ended.contains(id) {
                    continue;
                }
                process.hosted = true;
                process
                    .sessions
                    .entry(id.to_string())
                    .or_insert_with(|| session_length.map(|length| now + length));
            }
        }

        let build = desired
            .launch
            .as_ref()
            .map(|launch| launch.build_id.as_str());
        let mut stop: Vec<usize> = Vec::new();
        let mut serving: Vec<usize> = Vec::new();
        for (index, process) in self.processes.iter().enumerate() {
            let busy = !process.sessions.is_empty();
            if session_mode == SessionMode::Simple && process.hosted && !busy {
                // Simple mode: one session per process, then a fresh process.
                stop.push(index);
                continue;
            }
            let draining = desired.drain.contains(&process.id);
            if build != Some(process.build_id.as_str()) || draining {
                if !busy {
                    stop.push(index);
                }
                continue;
            }
            serving.push(index);
        }
        let target = if desired.launch.is_some() {
            desired.process_count as usize
        } else {
            0
        };
        if serving.len() > target {
            // Idle ones only: not yet READY first, then the youngest.
            let mut idle: Vec<usize> = serving
                .iter()
                .copied()
                .filter(|&i| self.processes[i].sessions.is_empty())
                .collect();
            idle.sort_by_key(|&i| {
                let process = &self.processes[i];
                (process.ready, Reverse(process.started_at))
            });
            let excess = serving.len() - target;
            stop.extend(idle.into_iter().take(excess));
        }
        let serving_after = serving.iter().filter(|i| !stop.contains(i)).count();
        let changed = !stop.is_empty() || serving_after < target;
        stop.sort_unstable();
        for index in stop.into_iter().rev() {
            let process = self.processes.remove(index);
            self.exit(process, now_ms);
        }
        if let (Some(build), true) = (build, serving_after < target) {
            let build = build.to_string();
            for _ in serving_after..target {
                self.start_process(&build, now, now_ms);
            }
        }
        changed
    }

    fn exit(&mut self, process: SimProcess, now_ms: i64) {
        self.exited.push(ProcessExit {
            process_id: process.id,
            exit_code: Some(0),
            signal: None,
            requested: true,
            exited_at: rfc3339(now_ms),
            ..ProcessExit::default()
        });
    }

    fn start_process(&mut self, build_id: &str, now: Instant, now_ms: i64) {
        let used: HashSet<u16> = self.processes.iter().map(|p| p.port).collect();
        let port = loop {
            let port = PORT_BASE + self.next_port;
            self.next_port = (self.next_port + 1) % PORT_SPAN;
            if !used.contains(&port) {
                break port;
            }
        };
        let ready_at = now + self.settings.start;
        self.processes.push(SimProcess {
            id: new_id("proc"),
            port,
            build_id: build_id.to_string(),
            started_at: now,
            started_at_text: rfc3339(now_ms),
            ready_at,
            ready: now >= ready_at,
            hosted: false,
            sessions: BTreeMap::new(),
            ended: BTreeSet::new(),
        });
    }

    /// The next report; takes the exits and ended sessions it carries.
    fn report(&mut self) -> SyncRequest {
        self.report_seq += 1;
        SyncRequest {
            agent_pid: 0,
            address: "sim".into(),
            report_seq: self.report_seq,
            known_revision: None,
            wait_ms: 0,
            processes: self
                .processes
                .iter()
                .map(|process| ProcessReport {
                    process_id: process.id.clone(),
                    port: process.port,
                    pid: 0,
                    state: if process.ready {
                        AgentProcessState::Ready
                    } else {
                        AgentProcessState::Starting
                    },
                    build_id: process.build_id.clone(),
                    started_at: process.started_at_text.clone(),
                })
                .collect(),
            exited: std::mem::take(&mut self.exited),
            ended_sessions: std::mem::take(&mut self.ended_sessions),
            error: None,
        }
    }
}

/// Every simulated machine, their deadlines and the report queue.
#[derive(Debug, Default)]
struct WorldState {
    machines: HashMap<String, SimMachine>,
    /// Deadlines, earliest first; an entry whose machine has another `wake_at` is stale.
    deadlines: BinaryHeap<Reverse<(Instant, String)>>,
    /// Machines with something to report, in order.
    dirty: VecDeque<String>,
    /// Booted machines waiting to register.
    booted: VecDeque<String>,
    /// Machines per location, for `max_machines`.
    per_location: HashMap<String, u32>,
    launched: u64,
}

impl WorldState {
    fn reschedule(&mut self, id: &str) {
        let Some(machine) = self.machines.get_mut(id) else {
            return;
        };
        let next = machine.next_wake();
        if next != machine.wake_at {
            machine.wake_at = next;
            if let Some(at) = next {
                self.deadlines.push(Reverse((at, id.to_string())));
            }
        }
    }

    fn mark_dirty(&mut self, id: &str) {
        if let Some(machine) = self.machines.get_mut(id) {
            if !machine.dirty {
                machine.dirty = true;
                self.dirty.push_back(id.to_string());
            }
        }
    }

    fn remove(&mut self, id: &str) {
        if let Some(machine) = self.machines.remove(id) {
            if let Some(count) = self.per_location.get_mut(&machine.location) {
                *count = count.saturating_sub(1);
            }
        }
    }

    /// Runs the timers due at `now`.
    fn advance(&mut self, now: Instant, now_ms: i64) {
        let mut due = Vec::new();
        while let Some(Reverse((at, _))) = self.deadlines.peek() {
            if *at > now {
                break;
            }
            due.extend(self.deadlines.pop());
        }
        // Only what was due before this call: a deadline a tick sets waits for the next.
        for Reverse((at, id)) in due {
            let Some(machine) = self.machines.get_mut(&id) else {
                continue;
            };
            if machine.wake_at != Some(at) {
                continue;
            }
            machine.wake_at = None;
            let tick = machine.tick(now, now_ms);
            if tick.gone {
                self.remove(&id);
                continue;
            }
            if tick.booted {
                self.booted.push_back(id.clone());
            }
            if tick.report {
                self.mark_dirty(&id);
            }
            self.reschedule(&id);
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.peek().map(|Reverse((at, _))| *at)
    }
}

#[derive(Debug)]
struct Shared {
    store: Arc<dyn Store>,
    /// Sessions ended per zone, for the forecast (as the agent route records them).
    demand: Arc<Demand>,
    state: Mutex<WorldState>,
    /// Wakes the loop: a machine was launched or terminated.
    wake: Notify,
    /// Names of the `sim` locations, to find the zones that may hold simulated machines.
    locations: Mutex<BTreeSet<String>>,
}

/// The engine behind every `sim` location: the simulated machines and the one task that
/// drives them ([`SimWorld::run`]).
#[derive(Debug, Clone)]
pub struct SimWorld {
    shared: Arc<Shared>,
}

impl SimWorld {
    /// A world whose machines report to `store` and `demand` like agents syncing through
    /// the API do.
    pub fn new(store: Arc<dyn Store>, demand: Arc<Demand>) -> Self {
        SimWorld {
            shared: Arc::new(Shared {
                store,
                demand,
                state: Mutex::new(WorldState::default()),
                wake: Notify::new(),
                locations: Mutex::new(BTreeSet::new()),
            }),
        }
    }

    /// The driver of location `name`, with its settings.
    pub fn driver(&self, name: &str, settings: SimSettings) -> SimDriver {
        self.shared
            .locations
            .lock()
            .expect("sim locations poisoned")
            .insert(name.to_string());
        SimDriver {
            location: name.to_string(),
            settings: Arc::new(settings),
            world: self.clone(),
        }
    }

    /// Simulated machines that exist now (booting, up or shutting down).
    pub fn machine_count(&self) -> usize {
        self.state().machines.len()
    }

    fn state(&self) -> MutexGuard<'_, WorldState> {
        self.shared.state.lock().expect("sim world poisoned")
    }

    /// Drives every simulated machine until `shutdown` resolves.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let listener = self.shared.store.changes().listen();
        // Machines whose desired state may have changed, read at `refresh_at`.
        let mut changed: HashSet<String> = HashSet::new();
        let mut refresh_at: Option<Instant> = None;
        let mut next_resync = Instant::now() + RESYNC_INTERVAL;
        // Reports run beside the loop: one waiting for the store (behind placements, say)
        // must not stop the clock of every other machine.
        let mut reports: JoinSet<(MachineRecord, SyncRequest, Result<ReportOutcome>)> =
            JoinSet::new();
        loop {
            let now = Instant::now();
            self.state().advance(now, now_ms());
            let notices = listener.take();
            if !notices.is_empty() {
                let ours = self.ours(&notices);
                if !ours.is_empty() && refresh_at.is_none() {
                    refresh_at = Some(now + REFRESH_GAP);
                }
                changed.extend(ours);
            }
            // Booted machines register like an agent's first sync: they read their desired
            // state, start their processes and report.
            let booted: Vec<String> = self.state().booted.drain(..).collect();
            if !booted.is_empty() {
                self.refresh(booted, true).await;
            }
            if refresh_at.is_some_and(|at| now >= at) {
                refresh_at = None;
                let ids: Vec<String> = changed.drain().collect();
                self.refresh(ids, false).await;
            }
            if now >= next_resync {
                next_resync = now + RESYNC_INTERVAL;
                let ids: Vec<String> = {
                    let state = self.state();
                    state
                        .machines
                        .iter()
                        .filter(|(_, m)| m.desired.is_some())
                        .map(|(id, _)| id.clone())
                        .collect()
                };
                self.refresh(ids, false).await;
            }
            let free = REPORT_CONCURRENCY.saturating_sub(reports.len());
            for (record, report) in self.take_reports(free) {
                let store = self.shared.store.clone();
                reports.spawn(async move {
                    let result = store.apply_agent_report(&record, &report, now_ms()).await;
                    (record, report, result)
                });
            }

            let mut wake_at = next_resync;
            if let Some(deadline) = self.state().next_deadline() {
                wake_at = wake_at.min(deadline);
            }
            if let Some(at) = refresh_at {
                wake_at = wake_at.min(at);
            }
            let more_reports = !self.state().dirty.is_empty() && reports.len() < REPORT_CONCURRENCY;
            if more_reports || !self.state().booted.is_empty() {
                wake_at = Instant::now();
            }
            tokio::select! {
                biased;
                _ = &mut shutdown => return,
                Some(done) = reports.join_next(), if !reports.is_empty() => {
                    let mut done = Some(done);
                    while let Some(finished) = done {
                        match finished {
                            Ok((record, report, result)) => self.report_done(&record, report, result),
                            Err(error) => tracing::warn!(%error, "sim: report task failed"),
                        }
                        done = reports.try_join_next();
                    }
                }
                _ = tokio::time::sleep_until(wake_at) => {}
                _ = self.shared.wake.notified() => {}
                _ = listener.notified() => {}
            }
        }
    }

    /// The simulated machines a batch of notices is about.
    fn ours(&self, notices: &HashSet<Notice>) -> Vec<String> {
        let state = self.state();
        let mut ids = Vec::new();
        for notice in notices {
            match notice {
                Notice::Machine { machine_id, .. } if state.machines.contains_key(machine_id) => {
                    ids.push(machine_id.clone());
                }
                Notice::Fleet { fleet_id } => ids.extend(
                    state
                        .machines
                        .iter()
                        .filter(|(_, m)| m.record.as_ref().is_some_and(|r| &r.fleet_id == fleet_id))
                        .map(|(id, _)| id.clone()),
                ),
                _ => {}
            }
        }
        ids
    }

    /// Reads the desired states of `ids` (a chunk at a time) and makes the machines follow
    /// them. `registering`: these machines just booted (each reports once it knows what to
    /// run); a booted machine the store does not know stops, like an agent refused with a
    /// 401.
    async fn refresh(&self, ids: Vec<String>, registering: bool) {
        for chunk in ids.chunks(READ_CHUNK) {
            let read = self.shared.store.desired_states(chunk, now_ms()).await;
            let desired = match read {
                Ok(desired) => desired,
                Err(error) => {
                    tracing::warn!(%error, "sim: reading desired states failed; retrying");
                    if registering {
                        self.state().booted.extend(chunk.iter().cloned());
                    }
                    continue;
                }
            };
            let now = Instant::now();
            let now_ms = now_ms();
            let mut state = self.state();
            let mut known: HashSet<&str> = HashSet::new();
            for (record, desired) in desired {
                let id = record.id.clone();
                let Some(machine) = state.machines.get_mut(&id) else {
                    continue;
                };
                if record.status == MachineStatus::Terminated {
                    continue;
                }
                if let Some(found) = chunk.iter().find(|c| **c == id) {
                    known.insert(found.as_str());
                }
                if machine.phase != Phase::Up {
                    // Still booting: it reads its state once it is up.
                    continue;
                }
                let first = machine.desired.is_none();
                machine.record = Some(record);
                if !first && machine.desired.as_ref() == Some(&desired) {
                    continue;
                }
                let changed = machine.follow(&desired, now, now_ms);
                machine.desired = Some(desired);
                if changed || first {
                    state.mark_dirty(&id);
                }
                state.reschedule(&id);
            }
            if registering {
                for id in chunk.iter().filter(|id| !known.contains(id.as_str())) {
                    tracing::info!(machine = %id, "sim: machine unknown to the store; it stops");
                    state.remove(id);
                }
            }
        }
    }

    /// Takes up to `limit` queued reports, at most one in flight per machine (a report
    /// overtaken by a newer one would be ignored, and the exits it carries lost).
    fn take_reports(&self, limit: usize) -> Vec<(MachineRecord, SyncRequest)> {
        let mut state = self.state();
        let mut batch = Vec::new();
        let mut deferred = Vec::new();
        while batch.len() < limit {
            let Some(id) = state.dirty.pop_front() else {
                break;
            };
            let Some(machine) = state.machines.get_mut(&id) else {
                continue;
            };
            if machine.reporting {
                deferred.push(id);
                continue;
            }
            machine.dirty = false;
            // Not registered until it knows what to run; gone when shutting down.
            let (Some(record), Some(_), Phase::Up) =
                (&machine.record, &machine.desired, machine.phase)
            else {
                continue;
            };
            let record = record.clone();
            machine.reporting = true;
            batch.push((record, machine.report()));
        }
        for id in deferred.into_iter().rev() {
            state.dirty.push_front(id);
        }
        batch
    }

    /// Records how a report went.
    fn report_done(
        &self,
        record: &MachineRecord,
        report: SyncRequest,
        result: Result<ReportOutcome>,
    ) {
        let id = record.id.as_str();
        let mut state = self.state();
        if let Some(machine) = state.machines.get_mut(id) {
            machine.reporting = false;
        }
        match result {
            Ok(outcome) => {
                if let Some(machine) = state.machines.get_mut(id) {
                    machine.last_report = Some(Instant::now());
                }
                state.reschedule(id);
                // As the agent route does: ended sessions free slots for the forecast.
                self.shared
                    .demand
                    .record_ends(&record.zone_id, now_ms(), outcome.sessions_ended);
            }
            Err(Error::Unauthorized) => {
                // The store ended the machine: like an agent on a 401, it stops.
                state.remove(id);
            }
            Err(error) => {
                tracing::warn!(machine = %id, %error, "sim: report failed; retrying");
                if let Some(machine) = state.machines.get_mut(id) {
                    let mut exited = report.exited;
                    exited.append(&mut machine.exited);
                    machine.exited = exited;
                    let mut ended = report.ended_sessions;
                    ended.append(&mut machine.ended_sessions);
                    machine.ended_sessions = ended;
                }
                state.mark_dirty(id);
            }
        }
    }
}

/// The driver of one `sim` location: a handle on the shared [`SimWorld`].
#[derive(Debug)]
pub struct SimDriver {
    location: String,
    settings: Arc<SimSettings>,
    world: SimWorld,
}

impl SimDriver {
    /// This location's settings.
    pub fn settings(&self) -> &SimSettings {
        &self.settings
    }
}

#[async_trait]
impl MachineDriver for SimDriver {
    fn kind(&self) -> &'static str {
        "sim"
    }

    fn heartbeat_interval(&self) -> Option<Duration> {
        Some(self.settings.heartbeat)
    }

    async fn launch(&self, request: &LaunchRequest) -> Result<String> {
        let short = |reason: &str| Error::InsufficientCapacity {
            instance_type: request.instance_type.clone(),
            reason: reason.to_string(),
        };
        if self
            .settings
            .unavailable_instance_types
            .contains(&request.instance_type)
        {
            return Err(short("the simulated cloud has none of this type"));
        }
        let driver_ref = {
            let mut state = self.world.state();
            if let Some(machine) = state.machines.get(&request.machine_id) {
                return Ok(machine.driver_ref.clone());
            }
            let count = state.per_location.entry(self.location.clone()).or_default();
            if self.settings.max_machines.is_some_and(|max| *count >= max) {
                return Err(short("the location runs its most machines"));
            }
            *count += 1;
            state.launched += 1;
            let driver_ref = format!("sim/{}/{}", self.location, state.launched);
            let machine =
                SimMachine::new(&self.location, driver_ref.clone(), self.settings.clone());
            state.machines.insert(request.machine_id.clone(), machine);
            state.reschedule(&request.machine_id);
            driver_ref
        };
        self.world.shared.wake.notify_one();
        Ok(driver_ref)
    }

    async fn terminate(&self, machine_id: &str, _driver_ref: Option<&str>) -> Result<()> {
        {
            let mut state = self.world.state();
            let Some(machine) = state.machines.get_mut(machine_id) else {
                return Ok(());
            };
            if matches!(machine.phase, Phase::ShuttingDown { .. }) {
                return Ok(());
            }
            // Its processes die with it; the store ends them when the reconciler sees the
            // machine gone.
            machine.processes.clear();
            machine.phase = Phase::ShuttingDown {
                until: Instant::now() + self.settings.shutdown,
            };
            state.reschedule(machine_id);
        }
        self.world.shared.wake.notify_one();
        Ok(())
    }

    async fn liveness(&self, machine_id: &str, driver_ref: Option<&str>) -> Result<Liveness> {
        Ok(self
            .liveness_known(machine_id, driver_ref)
            .expect("the sim always knows"))
    }

    fn liveness_known(&self, machine_id: &str, _driver_ref: Option<&str>) -> Option<Liveness> {
        Some(if self.world.state().machines.contains_key(machine_id) {
            Liveness::Alive
        } else {
            Liveness::Gone
        })
    }

    fn boot_estimate(&self) -> Duration {
        self.settings.boot + self.settings.start
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetform_api::agent::{AssignedSession, LaunchSpec};

    fn settings(start_ms: u64, session_ms: Option<u64>) -> Arc<SimSettings> {
        Arc::new(SimSettings {
            boot: Duration::ZERO,
            start: Duration::from_millis(start_ms),
            session: session_ms.map(Duration::from_millis),
            ..SimSettings::default()
        })
    }

    fn up_machine(settings: Arc<SimSettings>) -> SimMachine {
        let mut machine = SimMachine::new("sim", "sim/sim/1".into(), settings);
        machine.phase = Phase::Up;
        machine
    }

    fn desired(mode: SessionMode, count: u32) -> DesiredMachine {
        DesiredMachine {
            shutdown: false,
            launch: Some(LaunchSpec {
                build_id: "bld-1".into(),
                source: "file:///b".into(),
                sha256: None,
                launch_path: "server".into(),
                launch_parameters: None,
                session_mode: mode,
                sessions_per_process: 1,
            }),
            process_count: count,
            sessions: BTreeMap::new(),
            drain: Vec::new(),
        }
    }

    fn with_session(mut desired: DesiredMachine, process: &str, session: &str) -> DesiredMachine {
        desired
            .sessions
            .entry(process.to_string())
            .or_default()
            .push(AssignedSession {
                id: session.into(),
                max_players: None,
                properties: BTreeMap::new(),
            });
        desired
    }

    fn states(machine: &mut SimMachine) -> Vec<AgentProcessState> {
        machine.report().processes.iter().map(|p| p.state).collect()
    }

    #[test]
    fn starts_processes_then_they_become_ready() {
        let mut machine = up_machine(settings(200, None));
        let t0 = Instant::now();
        assert!(machine.follow(&desired(SessionMode::Simple, 3), t0, 0));
        assert_eq!(machine.processes.len(), 3);
        let ports: BTreeSet<u16> = machine.processes.iter().map(|p| p.port).collect();
        assert_eq!(ports.len(), 3, "ports are distinct on a machine");
        assert_eq!(machine.next_wake(), Some(t0 + Duration::from_millis(200)));
        let tick = machine.tick(t0 + Duration::from_millis(200), 0);
        assert!(tick.report);
        assert_eq!(states(&mut machine), vec![AgentProcessState::Ready; 3]);
        // Following the same state again changes nothing.
        assert!(!machine.follow(&desired(SessionMode::Simple, 3), t0, 0));
    }

    #[test]
    fn zero_start_time_reports_ready_at_once() {
        let mut machine = up_machine(settings(0, None));
        machine.follow(&desired(SessionMode::Simple, 2), Instant::now(), 0);
        assert_eq!(states(&mut machine), vec![AgentProcessState::Ready; 2]);
    }

    #[test]
    fn simple_mode_restarts_a_process_once_its_session_ended_through_the_api() {
        let mut machine = up_machine(settings(0, None));
        let t0 = Instant::now();
        machine.follow(&desired(SessionMode::Simple, 2), t0, 0);
        let first = machine.processes[0].id.clone();
        let busy = with_session(desired(SessionMode::Simple, 2), &first, "s1");
        assert!(
            !machine.follow(&busy, t0, 0),
            "a placement changes nothing to report"
        );
        // The session ended through the API: the store drains the spent process.
        let mut after = desired(SessionMode::Simple, 2);
        after.drain = vec![first.clone()];
        assert!(machine.follow(&after, t0, 0));
        let report = machine.report();
        assert_eq!(report.exited.len(), 1);
        assert_eq!(report.exited[0].process_id, first);
        assert!(report.exited[0].requested);
        assert_eq!(report.processes.len(), 2, "replaced");
        assert!(report.processes.iter().all(|p| p.process_id != first));
    }

    #[test]
    fn sessions_end_by_themselves_with_session_seconds() {
        let mut machine = up_machine(settings(0, Some(1000)));
        let t0 = Instant::now();
        machine.follow(&desired(SessionMode::Simple, 1), t0, 0);
        let process = machine.processes[0].id.clone();
        let busy = with_session(desired(SessionMode::Simple, 1), &process, "s1");
        machine.follow(&busy, t0, 0);
        machine.desired = Some(busy);
        assert_eq!(machine.next_wake(), Some(t0 + Duration::from_secs(1)));
        let tick = machine.tick(t0 + Duration::from_secs(1), 0);
        assert!(tick.report);
        let report = machine.report();
        assert_eq!(report.ended_sessions, vec!["s1".to_string()]);
        assert_eq!(report.exited.len(), 1, "simple mode: the process restarts");
        assert_eq!(report.processes.len(), 1);
        assert_ne!(report.processes[0].process_id, process);
    }

    #[test]
    fn parallel_mode_keeps_the_process_after_a_session() {
        let mut machine = up_machine(settings(0, Some(1000)));
        let t0 = Instant::now();
        machine.follow(&desired(SessionMode::Parallel, 1), t0, 0);
        let process = machine.processes[0].id.clone();
        let busy = with_session(desired(SessionMode::Parallel, 1), &process, "s1");
        machine.follow(&busy, t0, 0);
        machine.desired = Some(busy);
        machine.tick(t0 + Duration::from_secs(1), 0);
        let report = machine.report();
        assert_eq!(report.ended_sessions, vec!["s1".to_string()]);
        assert!(report.exited.is_empty());
        assert_eq!(report.processes[0].process_id, process);
    }

    #[test]
    fn scale_in_stops_idle_processes_only_and_shutdown_stops_all() {
        let mut machine = up_machine(settings(0, None));
        let t0 = Instant::now();
        machine.follow(&desired(SessionMode::Simple, 3), t0, 0);
        let busy_id = machine.processes[2].id.clone();
        let one = with_session(desired(SessionMode::Simple, 1), &busy_id, "s1");
        assert!(machine.follow(&one, t0, 0));
        let ids: Vec<&str> = machine.processes.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, vec![busy_id.as_str()], "the busy process stays");
        let mut shutdown = desired(SessionMode::Simple, 0);
        shutdown.shutdown = true;
        assert!(machine.follow(&shutdown, t0, 0));
        assert!(machine.processes.is_empty());
        assert_eq!(machine.report().exited.len(), 3);
    }

    #[test]
    fn a_new_build_replaces_idle_processes() {
        let mut machine = up_machine(settings(0, None));
        let t0 = Instant::now();
        machine.follow(&desired(SessionMode::Simple, 2), t0, 0);
        let mut next = desired(SessionMode::Simple, 2);
        next.launch.as_mut().unwrap().build_id = "bld-2".into();
        assert!(machine.follow(&next, t0, 0));
        assert!(machine.processes.iter().all(|p| p.build_id == "bld-2"));
        assert_eq!(machine.processes.len(), 2);
    }

    #[test]
    fn heartbeat_is_due_after_the_interval() {
        let mut machine = up_machine(settings(0, None));
        let t0 = Instant::now();
        machine.last_report = Some(t0);
        let heartbeat = machine.settings.heartbeat;
        assert_eq!(machine.next_wake(), Some(t0 + heartbeat));
        assert!(!machine.tick(t0, 0).report);
        assert!(machine.tick(t0 + heartbeat, 0).report);
        // Queued for its report: no heartbeat deadline until it has been sent.
        machine.dirty = true;
        assert_eq!(machine.next_wake(), None);
    }
}
