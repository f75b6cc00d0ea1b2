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
//! a task per machine. A booted machine registers like an agent's first sync: it reads its
//! own desired state, starts its processes and reports them. After that, desired states are
//! read in bulk, a zone at a time, when the change counter moved (at most every
//! [`MIN_REFRESH_GAP`], or four times as long as the last read took, so reading never takes
//! more than a fifth of the loop's time), and a machine reports only when something
//! changed, plus a slow heartbeat (`heartbeat_seconds`, 60 s by default: agents sync every
//! few seconds, but each report is a transaction of the store's single writer). Reports go
//! one transaction per machine (the store has no batched report yet), applied by a few
//! tasks beside the loop, so a report queued behind placements holds up no timer.
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
use futures::StreamExt;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::desired::{desired_machine, load_desired};
use super::{LaunchRequest, Liveness, MachineDriver};
use crate::store::{MachineRecord, ProcessRecord, ReportOutcome, Store};
use crate::time::{new_id, now_ms, rfc3339};
use crate::zones::{Changes, Demand};
use crate::{Error, Result};

/// Shortest time between two bulk reads of desired states.
pub const MIN_REFRESH_GAP: Duration = Duration::from_millis(100);
/// Between two bulk reads, at least this many times as long as the last one took: reading
/// a 60,000-process zone takes the simulator at most a fifth of its time.
const REFRESH_COST_FACTOR: u32 = 4;
/// Longest time between two bulk reads, changes or not (or twenty times as long as the last
/// read took): the loop stays level-triggered even if a wake-up was missed.
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(5);
const RESYNC_COST_FACTOR: u32 = 20;
/// Most registrations one round of the loop reads, so timers keep their turn while
/// thousands of machines boot at once.
const MAX_REGISTRATIONS_PER_ROUND: usize = 256;
/// Reports in flight at once. The store writes through one connection, so more would only
/// queue (and take turns from placements); a few keep it busy.
const REPORT_CONCURRENCY: usize = 4;
/// Registrations whose reads are in flight at once (reads have a pool of their own).
const REGISTER_CONCURRENCY: usize = 8;
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
    changes: Changes,
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
    /// A world whose machines report to `store` and signal `changes` and `demand` like
    /// agents syncing through the API do.
    pub fn new(store: Arc<dyn Store>, changes: Changes, demand: Arc<Demand>) -> Self {
        SimWorld {
            shared: Arc::new(Shared {
                store,
                changes,
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
        let mut changes = self.shared.changes.subscribe();
        let mut stale = true;
        let mut last_refresh: Option<Instant> = None;
        let mut refresh_cost = Duration::ZERO;
        // Reports run beside the loop: one waiting for the store's single writer (behind
        // placements, say) must not stop the clock of every other machine.
        let mut reports: JoinSet<(MachineRecord, SyncRequest, Result<ReportOutcome>)> =
            JoinSet::new();
        let mut placement_changed = false;
        loop {
            let now = Instant::now();
            self.state().advance(now, now_ms());
            let more = self.register_round().await;
            let gap = MIN_REFRESH_GAP.max(refresh_cost * REFRESH_COST_FACTOR);
            let resync_gap = RESYNC_INTERVAL.max(refresh_cost * RESYNC_COST_FACTOR);
            let due = last_refresh.is_none_or(|at| now >= at + gap);
            let resync = last_refresh.is_none_or(|at| now >= at + resync_gap);
            if (stale && due) || resync {
                // Mark the counter seen before reading, so a change during the read is
                // read next time.
                changes.borrow_and_update();
                let started = Instant::now();
                stale = match self.refresh(started).await {
                    Ok(()) => false,
                    Err(error) => {
                        tracing::warn!(%error, "sim: reading desired states failed; retrying");
                        true
                    }
                };
                refresh_cost = started.elapsed();
                last_refresh = Some(started);
                tracing::debug!(
                    machines = self.machine_count(),
                    took_ms = refresh_cost.as_millis() as u64,
                    "sim: desired states read"
                );
            }
            let free = REPORT_CONCURRENCY.saturating_sub(reports.len());
            for (record, report) in self.take_reports(free) {
                let store = self.shared.store.clone();
                reports.spawn(async move {
                    let result = store.apply_agent_report(&record, &report, now_ms()).await;
                    (record, report, result)
                });
            }
            if std::mem::take(&mut placement_changed) {
                // Once per round, however many reports finished: waiters re-read anyway.
                self.shared.changes.bump();
            }

            let last = last_refresh.unwrap_or(now);
            let mut wake_at = last + resync_gap;
            if let Some(deadline) = self.state().next_deadline() {
                wake_at = wake_at.min(deadline);
            }
            if stale {
                wake_at = wake_at.min(last + gap);
            }
            if more {
                wake_at = Instant::now();
            }
            tokio::select! {
                biased;
                _ = &mut shutdown => return,
                Some(done) = reports.join_next(), if !reports.is_empty() => {
                    let mut done = Some(done);
                    while let Some(finished) = done {
                        match finished {
                            Ok((record, report, result)) => {
                                placement_changed |= self.report_done(&record, report, result);
                            }
                            Err(error) => tracing::warn!(%error, "sim: report task failed"),
                        }
                        done = reports.try_join_next();
                    }
                }
                _ = tokio::time::sleep_until(wake_at) => {}
                _ = self.shared.wake.notified() => {}
                _ = changes.changed(), if !stale => stale = true,
            }
        }
    }

    /// Registers up to [`MAX_REGISTRATIONS_PER_ROUND`] booted machines: like an agent's first
    /// sync, each reads its own desired state, starts its processes, and is queued for the
    /// report that registers it. True when more wait.
    async fn register_round(&self) -> bool {
        let batch: Vec<String> = {
            let mut state = self.state();
            let count = state.booted.len().min(MAX_REGISTRATIONS_PER_ROUND);
            state.booted.drain(..count).collect()
        };
        if batch.is_empty() {
            return false;
        }
        let store = self.shared.store.as_ref();
        let loaded: Vec<_> = futures::stream::iter(batch)
            .map(|id| async move {
                let result = match store.get_machine(&id).await {
                    Ok(Some(record)) if record.status != MachineStatus::Terminated => {
                        load_desired(store, &record)
                            .await
                            .map(|desired| Some((record, desired)))
                    }
                    Ok(_) => Ok(None),
                    Err(error) => Err(error),
                };
                (id, result)
            })
            .buffer_unordered(REGISTER_CONCURRENCY)
            .collect()
            .await;
        let now = Instant::now();
        let now_ms = now_ms();
        let mut state = self.state();
        for (id, result) in loaded {
            match result {
                Ok(Some((record, desired))) => {
                    let Some(machine) = state.machines.get_mut(&id) else {
                        continue;
                    };
                    machine.record.get_or_insert(record);
                    if machine.desired.is_none() {
                        machine.follow(&desired, now, now_ms);
                        machine.desired = Some(desired);
                        state.mark_dirty(&id);
                        state.reschedule(&id);
                    }
                }
                Ok(None) => {
                    // The store does not know it (any more): like an agent refused with a
                    // 401, it stops.
                    tracing::info!(machine = %id, "sim: machine unknown to the store; it stops");
                    state.remove(&id);
                }
                Err(error) => {
                    tracing::warn!(machine = %id, %error, "sim: registration failed; retrying");
                    state.booted.push_back(id);
                }
            }
        }
        !state.booted.is_empty()
    }

    /// Reads the desired state of every registered simulated machine, a zone at a time, and
    /// makes the machines follow it.
    async fn refresh(&self, now: Instant) -> Result<()> {
        let store = &self.shared.store;
        let known_zones: BTreeSet<String> = {
            let state = self.state();
            if state.machines.is_empty() {
                return Ok(());
            }
            state
                .machines
                .values()
                .filter_map(|m| m.record.as_ref().map(|r| r.zone_id.clone()))
                .collect()
        };
        let locations = self
            .shared
            .locations
            .lock()
            .expect("sim locations poisoned")
            .clone();
        for record in store.list_zones().await? {
            let zone = &record.zone;
            let on_sim = zone
                .spec
                .data_centers
                .iter()
                .any(|dc| locations.contains(&dc.location));
            if !on_sim && !known_zones.contains(&zone.id) {
                continue;
            }
            let observed = store.zone_observation(&zone.id).await?;
            let ours: Vec<&MachineRecord> = {
                let state = self.state();
                observed
                    .machines
                    .iter()
                    .filter(|m| state.machines.contains_key(&m.id))
                    .collect()
            };
            if ours.is_empty() {
                continue;
            }
            let fleet = store.get_fleet(&zone.spec.fleet_id).await?;
            let build = match &fleet {
                Some(fleet) => store.get_build(&fleet.build_id).await?,
                None => None,
            };
            let sessions = store.zone_active_sessions(&zone.id).await?;
            let mut processes: HashMap<&str, Vec<&ProcessRecord>> = HashMap::new();
            for process in &observed.processes {
                processes
                    .entry(process.machine_id.as_str())
                    .or_default()
                    .push(process);
            }
            let mut sessions_of: HashMap<&str, Vec<_>> = HashMap::new();
            for session in &sessions {
                sessions_of
                    .entry(session.machine_id.as_str())
                    .or_default()
                    .push(session);
            }
            let desired: Vec<(&MachineRecord, DesiredMachine)> = ours
                .into_iter()
                .map(|machine| {
                    let desired = desired_machine(
                        machine,
                        fleet.as_ref(),
                        build.as_ref(),
                        processes
                            .get(machine.id.as_str())
                            .into_iter()
                            .flatten()
                            .copied(),
                        sessions_of
                            .get(machine.id.as_str())
                            .into_iter()
                            .flatten()
                            .copied(),
                        now_ms(),
                    );
                    (machine, desired)
                })
                .collect();
            let now_ms = now_ms();
            let mut state = self.state();
            for (record, desired) in desired {
                let Some(machine) = state.machines.get_mut(&record.id) else {
                    continue;
                };
                // Booting and registering machines get theirs from `register_round`.
                if machine.desired.is_none() || machine.desired.as_ref() == Some(&desired) {
                    continue;
                }
                let changed = machine.follow(&desired, now, now_ms);
                machine.desired = Some(desired);
                if changed {
                    state.mark_dirty(&record.id);
                }
                state.reschedule(&record.id);
            }
        }

        Ok(())
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

    /// Records how a report went. True when it changed what placement can use.
    fn report_done(
        &self,
        record: &MachineRecord,
        report: SyncRequest,
        result: Result<ReportOutcome>,
    ) -> bool {
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
                outcome.placement_changed
            }
            Err(Error::Unauthorized) => {
                // The store ended the machine: like an agent on a 401, it stops.
                state.remove(id);
                false
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
                false
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

    async fn liveness(&self, machine_id: &str, _driver_ref: Option<&str>) -> Result<Liveness> {
        Ok(if self.world.state().machines.contains_key(machine_id) {
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
