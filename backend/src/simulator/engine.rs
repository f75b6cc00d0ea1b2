//! The event loop of the simulator.
//!
//! Time advances from event to event (no sleeping): session ends, machine boots and process
//! starts come from [`Queues`], session requests from the trace (spread over their minute
//! by the seeded generator), planner passes every `tick`. At equal times, queued events come
//! first (a slot freed at `t` serves a request at `t`), then requests, then the planner.
//!
//! Placement is fast without changing its answer: each data center keeps its processes
//! that can take a session in an ordered index whose first entry is the one
//! [`placement::choose`] would pick inside that data center (the order of `choose` with
//! priority and latency equal: the strategy's machine and process activity, then the
//! process id), and `choose` itself picks among the data centers' first entries. A test
//! checks the index against `choose` over every candidate.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::fmt::Write;

use fleetform_api::{MachineStatus, MachineType, PlacementStrategy, SessionMode, ZoneSpecView};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::trace::{standard_normal, Trace, TraceRow};
use super::{
    slots_per_machine, ForecastInput, MinuteSample, Report, SessionDistribution, SimConfig,
    LOGNORMAL_SIGMA,
};
use crate::autoscale::forecast::{forecast_arrivals, forecast_net_demand, ArrivalHistory};
use crate::autoscale::{self, Launch, MachineView, Observed, Plan};
use crate::placement::{self, Candidate};

const MINUTE_MS: i64 = 60_000;
const HOUR_MS: f64 = 3_600_000.0;
/// Passes one tick may run when plans come back partial (the reconciler requeues at once).
const MAX_PASSES_PER_TICK: usize = 1_000;
/// The shortest session: a drawn length is never below one second.
const MIN_SESSION_MS: i64 = 1_000;

/// The kinds of queued events, in the order they run at equal times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum EventKind {
    SessionEnd,
    /// The end of a session that was missed: the lower bound still counts it.
    MissedEnd,
    MachineBooted,
    ProcessReady,
}

/// The queued events. Boots and process starts take a constant delay, so their queues are
/// in time order by construction; session ends need a heap. Within a kind, equal times run
/// in the order of the process id (or of queuing), so the loop is deterministic.
#[derive(Debug, Default)]
struct Queues {
    /// (end, process id, process slot).
    session_ends: BinaryHeap<Reverse<(i64, u64, usize)>>,
    missed_ends: BinaryHeap<Reverse<i64>>,
    /// (boot done, machine).
    boots: VecDeque<(i64, usize)>,
    /// (ready, process id, process slot).
    readies: VecDeque<(i64, u64, usize)>,
}

impl Queues {
    /// The time and kind of the next event.
    fn next(&self) -> Option<(i64, EventKind)> {
        [
            self.session_ends
                .peek()
                .map(|Reverse((at, _, _))| (*at, EventKind::SessionEnd)),
            self.missed_ends
                .peek()
                .map(|Reverse(at)| (*at, EventKind::MissedEnd)),
            self.boots
                .front()
                .map(|(at, _)| (*at, EventKind::MachineBooted)),
            self.readies
                .front()
                .map(|(at, _, _)| (*at, EventKind::ProcessReady)),
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

/// The integrals of the report, over piecewise-constant state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Meter {
    integrated_to_ms: i64,
    /// Machine-milliseconds.
    pub(super) machine_ms: u128,
    /// Milliseconds of `ceil(demand / slots_per_machine)` machines.
    pub(super) lower_bound_ms: u128,
    /// Session-milliseconds (served sessions).
    pub(super) session_ms: u128,
}

impl Meter {
    pub(super) fn new(start_ms: i64) -> Self {
        Meter {
            integrated_to_ms: start_ms,
            machine_ms: 0,
            lower_bound_ms: 0,
            session_ms: 0,
        }
    }

    /// Moves the start of the next interval to `to_ms` without counting the time before.
    pub(super) fn skip_to(&mut self, to_ms: i64) {
        self.integrated_to_ms = self.integrated_to_ms.max(to_ms);
    }

    /// Adds the time since the last call at the given state. The clairvoyant lower bound
    /// serves every request, so its demand counts the missed sessions (for as long as they
    /// would have lasted) as well as the active ones.
    pub(super) fn advance(
        &mut self,
        to_ms: i64,
        machines: u32,
        active_sessions: u32,
        missed_sessions: u32,
        slots_per_machine: u32,
    ) {
        let elapsed = (to_ms - self.integrated_to_ms).max(0) as u128;
        let demand = active_sessions + missed_sessions;
        self.machine_ms += u128::from(machines) * elapsed;
        self.lower_bound_ms += u128::from(demand.div_ceil(slots_per_machine.max(1))) * elapsed;
        self.session_ms += u128::from(active_sessions) * elapsed;
        self.integrated_to_ms = self.integrated_to_ms.max(to_ms);
    }
}

/// Index key of a machine in its data center: (machine activity, process activity, process
/// id, machine, process slot), ascending in `choose`'s order of preference.
type Key = (u32, u32, u64, usize, usize);

#[derive(Debug)]
struct Machine {
    id: String,
    data_center: usize,
    processes_per_machine: u32,
    booted: bool,
    alive: bool,
    target: u32,
    /// Slots of its live processes.
    processes: Vec<usize>,
    active_sessions: u32,
    /// Processes hosting at least one session.
    busy_processes: u32,
    /// Free session slots inside the busy processes (parallel mode).
    free_slots_in_busy: u32,
    /// Its position in `observed.machines`.
    view: usize,
    /// Its entry in the data center's index.
    entry: Option<Key>,
}

#[derive(Debug)]
struct Process {
    pid: u64,
    machine: usize,
    ready: bool,
    active_sessions: u32,
    started_ms: i64,
}

/// The session requests of the trace, in time order, with their lengths.
struct Arrivals<'a> {
    rows: &'a [TraceRow],
    next_row: usize,
    /// The current minute's requests: (arrival, length), sorted by arrival.
    current: Vec<(i64, i64)>,
    position: usize,
    rng: StdRng,
    mean_ms: f64,
    distribution: SessionDistribution,
}

impl Arrivals<'_> {
    fn peek(&mut self) -> Option<(i64, i64)> {
        while self.position >= self.current.len() {
            let first = self.rows.get(self.next_row)?;
            let minute = first.minute;
            self.current.clear();
            self.position = 0;
            while let Some(row) = self.rows.get(self.next_row) {
                if row.minute != minute {
                    break;
                }
                for _ in 0..row.session_requests {
                    let at = minute * MINUTE_MS + self.rng.gen_range(0..MINUTE_MS);
                    let length = match row.session_minutes {
                        Some(minutes) => (minutes * MINUTE_MS as f64).round() as i64,
                        None => self.draw_length(),
                    };
                    self.current.push((at, length.max(MIN_SESSION_MS)));
                }
                self.next_row += 1;
            }
            // Stable: equal arrival times keep the order they were drawn in.
            self.current.sort_by_key(|(at, _)| *at);
        }
        self.current.get(self.position).copied()
    }

    fn draw_length(&mut self) -> i64 {
        let mean = self.mean_ms;
        let length = match self.distribution {
            SessionDistribution::Fixed => mean,
            SessionDistribution::Exponential => -mean * (1.0 - self.rng.gen::<f64>()).ln(),
            SessionDistribution::Lognormal => {
                let sigma = LOGNORMAL_SIGMA;
                let mu = mean.ln() - sigma * sigma / 2.0;
                (mu + sigma * standard_normal(&mut self.rng)).exp()
            }
        };
        length.round() as i64
    }
}

pub(super) struct Engine<'a> {
    spec: &'a ZoneSpecView,
    config: &'a SimConfig,
    /// Check every placement against `choose` over all candidates (tests).
    check_placement: bool,
    slots_per_process: u32,
    slots_per_machine: u32,
    machines: Vec<Machine>,
    processes: Vec<Option<Process>>,
    free_process_slots: Vec<usize>,
    /// What the planner sees; its `machines` are the live machines, kept in place.
    observed: Observed,
    /// `observed.machines[i]` is `machines[view_owner[i]]`.
    view_owner: Vec<usize>,
    /// Per data center (spec order): its machines with a process that can take a session.
    index: Vec<BTreeSet<Key>>,
    queues: Queues,
    next_pid: u64,
    arrivals_history: ArrivalHistory,
    /// Session ends per minute (for [`ForecastInput::Net`]).
    ends_history: ArrivalHistory,
    now_ms: i64,
    /// The last plan said the zone cools down (the zone's status is `AVAILABLE_COOLDOWN`).
    cooling: bool,
    no_latencies: BTreeMap<String, u32>,
    /// Reused candidates of [`Engine::choose`] (their strings keep their buffers).
    scratch: Vec<Candidate>,
    scratch_keys: Vec<Key>,

    // Running totals.
    active_sessions: u32,
    /// Sessions that would be running had the missed requests been served.
    missed_sessions: u32,
    ready_slots: u32,
    machine_slots: u32,
    live_machines: u32,
    booting_machines: u32,
    meter: Meter,
    /// Where scoring starts: after the warm-up.
    score_from_ms: i64,
    requests: u64,
    misses: u64,
    peak_machines: u32,
    peak_active_sessions: u32,
    launches: u64,
    terminations: u64,
    refused_terminations: u64,
    plan_passes: u64,
    next_sample_ms: i64,
    minute_requests: u32,
    minute_misses: u32,
    timeline: Vec<MinuteSample>,
}

impl<'a> Engine<'a> {
    pub(super) fn new(
        spec: &'a ZoneSpecView,
        trace: &Trace,
        config: &'a SimConfig,
        check_placement: bool,
    ) -> Self {
        let first_minute = trace.span().map_or(0, |(first, _)| first);
        let start_ms = first_minute * MINUTE_MS;
        Engine {
            spec,
            config,
            check_placement,
            slots_per_process: config.fleet.slots_per_process(),
            slots_per_machine: slots_per_machine(spec, config.fleet).max(1),
            machines: Vec::new(),
            processes: Vec::new(),
            free_process_slots: Vec::new(),
            observed: Observed {
                // The zone is created when the replay starts.
                idle_since_ms: start_ms,
                ..Observed::default()
            },
            view_owner: Vec::new(),
            index: vec![BTreeSet::new(); spec.data_centers.len()],
            queues: Queues::default(),
            next_pid: 0,
            arrivals_history: ArrivalHistory::default(),
            ends_history: ArrivalHistory::default(),
            now_ms: start_ms,
            cooling: false,
            no_latencies: BTreeMap::new(),
            scratch: Vec::new(),
            scratch_keys: Vec::new(),
            active_sessions: 0,
            missed_sessions: 0,
            ready_slots: 0,
            machine_slots: 0,
            live_machines: 0,
            booting_machines: 0,
            meter: Meter::new(start_ms),
            score_from_ms: start_ms + config.warmup_minutes * MINUTE_MS,
            requests: 0,
            misses: 0,
            peak_machines: 0,
            peak_active_sessions: 0,
            launches: 0,
            terminations: 0,
            refused_terminations: 0,
            plan_passes: 0,
            next_sample_ms: start_ms + MINUTE_MS,
            minute_requests: 0,
            minute_misses: 0,
            timeline: Vec::new(),
        }
    }

    pub(super) fn run(mut self, trace: &Trace) -> Report {
        let Some((first_minute, last_minute)) = trace.span() else {
            return self.report(0);
        };
        let end_ms = (last_minute + 1) * MINUTE_MS;
        let mut arrivals = Arrivals {
            rows: &trace.rows,
            next_row: 0,
            current: Vec::new(),
            position: 0,
            rng: StdRng::seed_from_u64(self.config.seed),
            mean_ms: self.config.session_minutes * MINUTE_MS as f64,
            distribution: self.config.session_distribution,
        };
        self.timeline
            .reserve((last_minute - first_minute + 1) as usize);
        self.add_bare_metal();
        let mut next_tick_ms = first_minute * MINUTE_MS;
        loop {
            let event = self.queues.next();
            let event_ms = event.map_or(i64::MAX, |(at, _)| at);
            let arrival = arrivals.peek();
            let arrival_ms = arrival.map_or(i64::MAX, |(at, _)| at);
            let now = event_ms.min(arrival_ms).min(next_tick_ms);
            if now >= end_ms {
                break;
            }
            self.advance(now);
            if event_ms == now {
                self.handle(event.expect("peeked").1);
            } else if arrival_ms == now {
                let (_, length_ms) = arrival.expect("peeked");
                arrivals.position += 1;
                self.arrive(length_ms);
            } else {
                self.tick();
                next_tick_ms += self.config.tick_ms;
            }
        }
        self.advance(end_ms);
        self.report(last_minute - first_minute + 1)
    }

    fn report(self, simulated_minutes: i64) -> Report {
        let hours = |ms: u128| ms as f64 / HOUR_MS;
        let machine_hours = hours(self.meter.machine_ms);
        let lower_bound_machine_hours = hours(self.meter.lower_bound_ms);
        Report {
            requests: self.requests,
            misses: self.misses,
            miss_rate: if self.requests == 0 {
                0.0
            } else {
                self.misses as f64 / self.requests as f64
            },
            machine_hours,
            lower_bound_machine_hours,
            cost_ratio: if lower_bound_machine_hours > 0.0 {
                machine_hours / lower_bound_machine_hours
            } else {
                0.0
            },
            slots_per_machine: self.slots_per_machine,
            session_hours: hours(self.meter.session_ms),
            peak_machines: self.peak_machines,
            peak_active_sessions: self.peak_active_sessions,
            launches: self.launches,
            terminations: self.terminations,
            refused_terminations: self.refused_terminations,
            plan_passes: self.plan_passes,
            simulated_minutes,
            warmup_minutes: self.config.warmup_minutes,
            timeline: self.timeline,
        }
    }

    // --- time ---------------------------------------------------------------------------

    /// Moves the clock to `to_ms`: integrates the costs and takes the minute samples on the
    /// way (the state is constant between events).
    fn advance(&mut self, to_ms: i64) {
        while self.next_sample_ms <= to_ms {
            let boundary = self.next_sample_ms;
            self.integrate(boundary);
            self.timeline.push(MinuteSample {
                minute: boundary / MINUTE_MS - 1,
                requests: self.minute_requests,
                misses: self.minute_misses,
                active_sessions: self.active_sessions,
                ready_slots: self.ready_slots,
                machine_slots: self.machine_slots,
                machines: self.live_machines,
                booting_machines: self.booting_machines,
            });
            self.minute_requests = 0;
            self.minute_misses = 0;
            self.next_sample_ms += MINUTE_MS;
        }
        self.integrate(to_ms);
        self.now_ms = to_ms;
    }

    fn integrate(&mut self, to_ms: i64) {
        // The warm-up is replayed but not scored.
        if to_ms <= self.score_from_ms {
            self.meter.skip_to(to_ms);
            return;
        }
        self.meter.skip_to(self.score_from_ms);
        self.meter.advance(
            to_ms,
            self.live_machines,
            self.active_sessions,
            self.missed_sessions,
            self.slots_per_machine,
        );
    }

    /// Runs the next event, of `kind`.
    fn handle(&mut self, kind: EventKind) {
        let queues = &mut self.queues;
        match kind {
            EventKind::SessionEnd => {
                let Some(Reverse((_, pid, slot))) = queues.session_ends.pop() else {
                    return;
                };
                self.end_session(slot, pid);
            }
            EventKind::MissedEnd => {
                queues.missed_ends.pop();
                self.missed_sessions -= 1;
            }
            EventKind::MachineBooted => {
                let Some((_, machine)) = queues.boots.pop_front() else {
                    return;
                };
                self.boot(machine);
            }
            EventKind::ProcessReady => {
                let Some((_, pid, slot)) = queues.readies.pop_front() else {
                    return;
                };
                let Some(process) = self.process_mut(slot, pid) else {
                    return;
                };
                if process.ready {
                    return;
                }
                process.ready = true;
                let machine = process.machine;
                self.ready_slots += self.slots_per_process;
                self.refresh_entry(machine);
            }
        }
    }

    // --- sessions -----------------------------------------------------------------------

    /// A session request arrives now.
    fn arrive(&mut self, length_ms: i64) {
        let scored = self.now_ms >= self.score_from_ms;
        self.requests += u64::from(scored);
        self.minute_requests += 1;
        self.arrivals_history
            .record(self.now_ms.div_euclid(MINUTE_MS), 1);
        let Some((machine, slot)) = self.choose() else {
            self.misses += u64::from(scored);
            self.minute_misses += 1;
            self.missed_sessions += 1;
            self.queues
                .missed_ends
                .push(Reverse(self.now_ms + length_ms));
            if self.cooling {
                // The placement API wakes a zone in cooldown: its idle clock restarts.
                self.observed.idle_since_ms = self.observed.idle_since_ms.max(self.now_ms);
            }
            return;
        };
        let slots = self.slots_per_process;
        let process = self.processes[slot].as_mut().expect("indexed process");
        process.active_sessions += 1;
        let pid = process.pid;
        let first_session = process.active_sessions == 1;
        let entry = &mut self.machines[machine];
        entry.active_sessions += 1;
        if first_session {
            entry.busy_processes += 1;
            entry.free_slots_in_busy += slots - 1;
        } else {
            entry.free_slots_in_busy -= 1;
        }
        self.active_sessions += 1;
        self.peak_active_sessions = self.peak_active_sessions.max(self.active_sessions);
        self.queues
            .session_ends
            .push(Reverse((self.now_ms + length_ms, pid, slot)));
        self.refresh_entry(machine);
    }

    /// The process [`placement::choose`] picks for a session now: (machine, process slot).
    fn choose(&mut self) -> Option<(usize, usize)> {
        // The first entry of each data center's index, as `choose` candidates (reusing the
        // buffers of the last request's).
        let mut keys = std::mem::take(&mut self.scratch_keys);
        let mut candidates = std::mem::take(&mut self.scratch);
        keys.clear();
        keys.extend(
            self.index
                .iter()
                .filter_map(|entries| entries.first().copied()),
        );
        for (position, key) in keys.iter().enumerate() {
            match candidates.get_mut(position) {
                Some(candidate) => self.fill_candidate(candidate, key),
                None => candidates.push(self.candidate(key)),
            }
        }
        let candidates_now = &candidates[..keys.len()];
        let chosen = placement::choose(
            candidates_now,
            &self.no_latencies,
            None,
            self.spec.placement_strategy,
        )
        .map(|chosen| {
            candidates_now
                .iter()
                .position(|c| std::ptr::eq(c, chosen))
                .expect("chosen among the candidates")
        });
        if let (Some(position), true) = (chosen, self.check_placement) {
            self.check_choice(&candidates[position].process_id);
        }
        let picked = chosen.map(|position| keys[position]);
        self.scratch = candidates;
        self.scratch_keys = keys;
        let (_, _, _, machine, slot) = picked?;
        Some((machine, slot))
    }

    /// Asserts that `choose` over every candidate picks `process_id` too.
    fn check_choice(&self, process_id: &str) {
        let all: Vec<Candidate> = (0..self.machines.len())
            .filter(|&m| self.machines[m].alive && self.machines[m].booted)
            .flat_map(|machine| self.all_candidates_of(machine))
            .collect();
        let reference =
            placement::choose(&all, &self.no_latencies, None, self.spec.placement_strategy)
                .map(|c| c.process_id.as_str());
        assert_eq!(
            reference,
            Some(process_id),
            "the index disagrees with choose over every candidate"
        );
    }

    /// Overwrites `candidate` with the one `key` stands for, reusing its strings.
    fn fill_candidate(&self, candidate: &mut Candidate, key: &Key) {
        let &(_, _, pid, machine, slot) = key;
        let machine = &self.machines[machine];
        let dc = &self.spec.data_centers[machine.data_center];
        candidate.process_id.clear();
        let _ = write!(candidate.process_id, "p{pid:016}");
        candidate.machine_id.clear();
        candidate.machine_id.push_str(&machine.id);
        candidate.data_center.clear();
        candidate.data_center.push_str(&dc.name);
        candidate.priority = dc.priority;
        candidate.machine_active_sessions = machine.active_sessions;
        candidate.process_active_sessions = self.processes[slot]
            .as_ref()
            .map_or(0, |p| p.active_sessions);
    }

    fn candidate(&self, key: &Key) -> Candidate {
        let &(_, _, pid, machine, slot) = key;
        let machine = &self.machines[machine];
        let dc = &self.spec.data_centers[machine.data_center];
        Candidate {
            process_id: process_id(pid),
            machine_id: machine.id.clone(),
            data_center: dc.name.clone(),
            priority: dc.priority,
            bare_metal: dc.machine_type == MachineType::BareMetal,
            machine_active_sessions: machine.active_sessions,
            process_active_sessions: self.processes[slot]
                .as_ref()
                .map_or(0, |p| p.active_sessions),
        }
    }

    /// Every process of `machine` that could take a session, as `choose` candidates.
    fn all_candidates_of(&self, machine: usize) -> Vec<Candidate> {
        self.machines[machine]
            .processes
            .iter()
            .filter_map(|&slot| {
                let process = self.processes[slot].as_ref()?;
                self.takes_session(process).then(|| {
                    self.candidate(&(0, process.active_sessions, process.pid, machine, slot))
                })
            })
            .collect()
    }

    fn takes_session(&self, process: &Process) -> bool {
        process.ready && process.active_sessions < self.slots_per_process
    }

    fn end_session(&mut self, slot: usize, pid: u64) {
        let Some(process) = self.process_mut(slot, pid) else {
            return;
        };
        process.active_sessions -= 1;
        let machine = process.machine;
        let now_idle = process.active_sessions == 0;
        let slots = self.slots_per_process;
        let entry = &mut self.machines[machine];
        entry.active_sessions -= 1;
        if now_idle {
            entry.busy_processes -= 1;
            entry.free_slots_in_busy -= slots - 1;
        } else {
            entry.free_slots_in_busy += 1;
        }
        self.active_sessions -= 1;
        self.ends_history
            .record(self.now_ms.div_euclid(MINUTE_MS), 1);
        if self.config.fleet.session_mode == SessionMode::Simple {
            // One session per process: the agent replaces it with a fresh one.
            self.remove_process(machine, slot);
            self.fit_processes(machine);
        } else {
            self.refresh_entry(machine);
        }
    }

    // --- machines and processes ---------------------------------------------------------

    fn process_mut(&mut self, slot: usize, pid: u64) -> Option<&mut Process> {
        self.processes
            .get_mut(slot)?
            .as_mut()
            .filter(|process| process.pid == pid)
    }

    fn add_bare_metal(&mut self) {
        for (dc_index, dc) in self.spec.data_centers.iter().enumerate() {
            if dc.machine_type != MachineType::BareMetal {
                continue;
            }
            let per_machine = autoscale::processes_per_machine(dc);
            let instance_type = dc
                .machine_models
                .first()
                .map_or_else(|| "bare_metal".to_string(), |m| m.instance_type.clone());
            for _ in 0..dc.bare_metal_machines.unwrap_or(0) {
                let machine = self.add_machine(dc_index, &instance_type, per_machine, per_machine);
                self.boot(machine);
            }
        }
    }

    fn add_machine(
        &mut self,
        data_center: usize,
        instance_type: &str,
        processes_per_machine: u32,
        target: u32,
    ) -> usize {
        let index = self.machines.len();
        let id = format!("m{index:08}");
        self.observed.machines.push(MachineView {
            id: id.clone(),
            data_center: self.spec.data_centers[data_center].name.clone(),
            instance_type: instance_type.to_string(),
            status: MachineStatus::Launching,
            processes_per_machine,
            running_processes: 0,
            busy_processes: 0,
            active_sessions: 0,
            free_slots_in_busy: 0,
            created_at_ms: self.now_ms,
        });
        self.view_owner.push(index);
        self.machines.push(Machine {
            id,
            data_center,
            processes_per_machine,
            booted: false,
            alive: true,
            target,
            processes: Vec::new(),
            active_sessions: 0,
            busy_processes: 0,
            free_slots_in_busy: 0,
            view: self.observed.machines.len() - 1,
            entry: None,
        });
        self.live_machines += 1;
        self.booting_machines += 1;
        self.machine_slots += processes_per_machine * self.slots_per_process;
        self.peak_machines = self.peak_machines.max(self.live_machines);
        index
    }

    fn launch(&mut self, launch: &Launch) {
        let Some(data_center) = self
            .spec
            .data_centers
            .iter()
            .position(|dc| dc.name == launch.data_center)
        else {
            return;
        };
        let machine = self.add_machine(
            data_center,
            &launch.instance_type,
            launch.processes_per_machine,
            launch.target_processes,
        );
        self.launches += 1;
        self.queues
            .boots
            .push_back((self.now_ms + self.config.boot_ms, machine));
    }

    fn boot(&mut self, machine: usize) {
        let entry = &mut self.machines[machine];
        if !entry.alive || entry.booted {
            return;
        }
        entry.booted = true;
        self.booting_machines -= 1;
        self.observed.machines[entry.view].status = MachineStatus::Active;
        self.fit_processes(machine);
    }

    /// Stops an idle machine now (its processes with it).
    fn terminate(&mut self, machine: usize) {
        let entry = &mut self.machines[machine];
        if !entry.alive {
            return;
        }
        entry.alive = false;
        let slots = std::mem::take(&mut entry.processes);
        let was_booting = !entry.booted;
        let view = entry.view;
        for slot in slots {
            if let Some(process) = self.processes[slot].take() {
                if process.ready {
                    self.ready_slots -= self.slots_per_process;
                }
                self.free_process_slots.push(slot);
            }
        }
        self.refresh_entry(machine);
        // Drop its view; the last view moves into its place.
        self.observed.machines.swap_remove(view);
        self.view_owner.swap_remove(view);
        if let Some(&moved) = self.view_owner.get(view) {
            self.machines[moved].view = view;
        }
        self.live_machines -= 1;
        if was_booting {
            self.booting_machines -= 1;
        }
        self.machine_slots -= self.machines[machine].processes_per_machine * self.slots_per_process;
        self.terminations += 1;
    }

    /// Meets the machine's process target the way the agent does: starts the missing
    /// processes; stops surplus idle ones, not-yet-ready first, then the youngest.
    fn fit_processes(&mut self, machine: usize) {
        let entry = &self.machines[machine];
        if !entry.alive || !entry.booted {
            return;
        }
        let have = entry.processes.len() as u32;
        let target = entry.target;
        if have < target {
            for _ in have..target {
                self.start_process(machine);
            }
        } else if have > target {
            let mut idle: Vec<(bool, Reverse<i64>, Reverse<u64>, usize)> = entry
                .processes
                .iter()
                .filter_map(|&slot| {
                    let process = self.processes[slot].as_ref()?;
                    (process.active_sessions == 0).then_some((
                        process.ready,
                        Reverse(process.started_ms),
                        Reverse(process.pid),
                        slot,
                    ))
                })
                .collect();
            idle.sort_unstable();
            for (_, _, _, slot) in idle.into_iter().take((have - target) as usize) {
                self.remove_process(machine, slot);
            }
        }
        self.refresh_entry(machine);
    }

    fn start_process(&mut self, machine: usize) {
        let pid = self.next_pid;
        self.next_pid += 1;
        let process = Process {
            pid,
            machine,
            ready: false,
            active_sessions: 0,
            started_ms: self.now_ms,
        };
        let slot = match self.free_process_slots.pop() {
            Some(slot) => {
                self.processes[slot] = Some(process);
                slot
            }
            None => {
                self.processes.push(Some(process));
                self.processes.len() - 1
            }
        };
        self.machines[machine].processes.push(slot);
        self.queues
            .readies
            .push_back((self.now_ms + self.config.start_ms, pid, slot));
    }

    fn remove_process(&mut self, machine: usize, slot: usize) {
        if let Some(process) = self.processes[slot].take() {
            if process.ready {
                self.ready_slots -= self.slots_per_process;
            }
            self.free_process_slots.push(slot);
        }
        self.machines[machine].processes.retain(|&s| s != slot);
    }

    /// Puts the machine's index entry in line with its processes and activity.
    fn refresh_entry(&mut self, machine: usize) {
        let pack = self.spec.placement_strategy == PlacementStrategy::Pack;
        let order = |activity: u32| if pack { u32::MAX - activity } else { activity };
        let entry = &self.machines[machine];
        let wanted = if entry.alive && entry.booted {
            entry
                .processes
                .iter()
                .filter_map(|&slot| {
                    let process = self.processes[slot].as_ref()?;
                    self.takes_session(process).then_some((
                        order(process.active_sessions),
                        process.pid,
                        slot,
                    ))
                })
                .min()
                .map(|(process_order, pid, slot)| {
                    (
                        order(entry.active_sessions),
                        process_order,
                        pid,
                        machine,
                        slot,
                    )
                })
        } else {
            None
        };
        if wanted == entry.entry {
            return;
        }
        let index = &mut self.index[entry.data_center];
        if let Some(old) = entry.entry {
            index.remove(&old);
        }
        if let Some(new) = wanted {
            index.insert(new);
        }
        self.machines[machine].entry = wanted;
    }

    // --- the planner --------------------------------------------------------------------

    fn tick(&mut self) {
        if self.active_sessions > 0 {
            // The reconciler restarts the idle clock at every pass that sees a session.
            self.observed.idle_since_ms = self.now_ms;
        }
        self.observed.predicted_arrivals = self.forecast();
        for _ in 0..MAX_PASSES_PER_TICK {
            self.refresh_views();
            let plan = autoscale::plan(self.spec, self.config.fleet, &self.observed, self.now_ms);
            self.plan_passes += 1;
            self.apply(&plan);
            if !plan.partial {
                break;
            }
        }
    }

    /// The idle capacity `available_predicted` rules hold, over the time a launched machine
    /// takes to serve (boot, then the process start), exactly like the reconciler's
    /// `Demand::forecast` (or the raw arrivals with `--forecast arrivals`).
    fn forecast(&self) -> f64 {
        let now_minute = self.now_ms.div_euclid(MINUTE_MS);
        let horizon = (self.config.boot_ms + self.config.start_ms) as f64 / MINUTE_MS as f64;
        match self.config.forecast {
            ForecastInput::Arrivals => {
                forecast_arrivals(&self.arrivals_history, now_minute, horizon)
            }
            ForecastInput::Net => forecast_net_demand(
                &self.arrivals_history,
                &self.ends_history,
                now_minute,
                horizon,
                self.config.start_ms as f64 / MINUTE_MS as f64,
            ),
        }
    }

    /// Brings the planner's machine views up to date.
    fn refresh_views(&mut self) {
        for (view, &machine) in self.observed.machines.iter_mut().zip(&self.view_owner) {
            let entry = &self.machines[machine];
            view.running_processes = entry.processes.len() as u32;
            view.busy_processes = entry.busy_processes;
            view.free_slots_in_busy = entry.free_slots_in_busy;
            view.active_sessions = entry.active_sessions;
        }
    }

    fn apply(&mut self, plan: &Plan) {
        self.cooling = plan.cooling;
        for launch in &plan.launch {
            self.launch(launch);
        }
        for id in &plan.terminate {
            let Some(machine) = machine_index(id) else {
                continue;
            };
            if self.machines[machine].active_sessions > 0 {
                // `Store::begin_idle_termination` refuses a machine that hosts a session.
                self.refused_terminations += 1;
                continue;
            }
            self.terminate(machine);
        }
        for (id, &target) in &plan.process_targets {
            let Some(machine) = machine_index(id) else {
                continue;
            };
            let entry = &mut self.machines[machine];
            if !entry.alive || (entry.target == target && entry.processes.len() as u32 == target) {
                continue;
            }
            entry.target = target;
            self.fit_processes(machine);
        }
    }
}

/// Process ids sort like the numbers they are made of (and like the real ids, which are
/// time-ordered): zero-padded.
fn process_id(pid: u64) -> String {
    format!("p{pid:016}")
}

fn machine_index(id: &str) -> Option<usize> {
    id.strip_prefix('m')?.parse().ok()
}

/// Runs with every placement checked against `choose` over all candidates.
#[cfg(test)]
pub(super) fn run_checked(spec: &ZoneSpecView, trace: &Trace, config: &SimConfig) -> Report {
    Engine::new(spec, trace, config, true).run(trace)
}
