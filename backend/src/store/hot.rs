//! The writer's picture of what is live: fleets and builds, and for every zone it has
//! loaded, the zone's live machines, their live processes and active sessions, and the
//! zone's free-slot index ([`SlotIndex`]).
//!
//! Owned by the store's single writer, which applies every write to the database and,
//! once the SQL has succeeded, to this picture, so placement chooses from memory, a
//! machine's desired state and the reconciler's observation cost no query, and nothing
//! here grows with history (only live rows are kept).
//!
//! The database stays the source of truth: a zone is loaded from it when first needed, a
//! machine is reloaded whenever a guard in SQL disagrees with this picture ("after any
//! doubt"), and everything is dropped when a transaction fails to commit. Correctness
//! never rests on the picture being right: every statement a decision leads to carries
//! its own guard (see `store::sqlite`), so a stale picture costs a retry, not a wrong row.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use fleetform_api::agent::{AgentProcessState, DesiredMachine};
use fleetform_api::{Build, Fleet, MachineStatus, Session};

use super::{restart_cutoff_ms, MachineRecord, ProcessRecord, ProcessState, ZoneRecord};
use crate::autoscale::{FleetShape, MachineView};
use crate::machines::desired::desired_machine;
use crate::placement::index::{Slot, SlotIndex};
use crate::placement::Candidate;

/// A live process and its active sessions.
#[derive(Debug, Clone)]
pub struct HotProcess {
    pub record: ProcessRecord,
    pub sessions: BTreeMap<String, Arc<Session>>,
}

/// A live machine (not `TERMINATED`, not `UNHEALTHY`) and its live processes. What the
/// reconciler observes of it is kept beside it and made again only after it changed, so
/// observing a zone of 10,000 machines copies 10,000 pointers.
#[derive(Debug, Clone)]
pub struct HotMachine {
    record: MachineRecord,
    processes: BTreeMap<String, HotProcess>,
    /// The observation of it, until it changes.
    observed: Option<Arc<ObservedMachine>>,
}

impl HotMachine {
    /// Its row.
    pub fn record(&self) -> &MachineRecord {
        &self.record
    }

    /// Its row, to change.
    pub fn record_mut(&mut self) -> &mut MachineRecord {
        self.observed = None;
        &mut self.record
    }

    /// Its live processes.
    pub fn processes(&self) -> &BTreeMap<String, HotProcess> {
        &self.processes
    }

    fn processes_mut(&mut self) -> &mut BTreeMap<String, HotProcess> {
        self.observed = None;
        &mut self.processes
    }

    /// Sessions active on the whole machine.
    pub fn active_sessions(&self) -> u32 {
        self.processes
            .values()
            .map(|p| p.record.active_sessions)
            .sum()
    }

    /// What the reconciler observes of it.
    fn observe(&mut self, shape: FleetShape) -> Arc<ObservedMachine> {
        if let Some(observed) = &self.observed {
            return observed.clone();
        }
        let processes = || self.processes.values().map(|p| &p.record);
        let observed = Arc::new(ObservedMachine {
            view: machine_view(&self.record, processes(), shape),
            up: processes()
                .filter(|p| {
                    p.takes_sessions(shape.session_mode, shape.sessions_per_process)
                        || p.active_sessions > 0
                })
                .count() as u32,
            record: self.record.clone(),
        });
        self.observed = Some(observed.clone());
        observed
    }

    /// A machine from its row, its live processes and their active sessions.
    pub fn new(record: MachineRecord, processes: Vec<ProcessRecord>, sessions: &[Session]) -> Self {
        let mut processes: BTreeMap<String, HotProcess> = processes
            .into_iter()
            .filter(|p| matches!(p.state, ProcessState::Live(_)))
            .map(|record| {
                (
                    record.id.clone(),
                    HotProcess {
                        record,
                        sessions: BTreeMap::new(),
                    },
                )
            })
            .collect();
        for session in sessions {
            if let Some(process) = processes.get_mut(&session.process_id) {
                process
                    .sessions
                    .insert(session.id.clone(), Arc::new(session.clone()));
            }
        }
        HotMachine {
            record,
            processes,
            observed: None,
        }
    }
}

/// A zone's machine as the reconciler observes it: its row and what its processes add up
/// to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedMachine {
    pub record: MachineRecord,
    /// The planner's view of it.
    pub view: MachineView,
    /// Processes that take a session now or host one.
    pub up: u32,
}

/// What the reconciler observes of a zone: every live machine, in id order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ZoneSummary {
    pub machines: Vec<Arc<ObservedMachine>>,
}

impl ZoneSummary {
    /// Sessions active in the whole zone.
    pub fn active_sessions(&self) -> u32 {
        self.machines.iter().map(|m| m.view.active_sessions).sum()
    }

    /// Processes that take a session now or host one.
    pub fn up_processes(&self) -> u32 {
        self.machines.iter().map(|m| m.up).sum()
    }
}

/// The planner's view of a machine and its live processes.
pub fn machine_view<'a>(
    machine: &MachineRecord,
    processes: impl Iterator<Item = &'a ProcessRecord>,
    shape: FleetShape,
) -> MachineView {
    let slots = shape.slots_per_process();
    let mut view = MachineView {
        id: machine.id.clone(),
        data_center: machine.data_center.clone(),
        instance_type: machine.instance_type.clone(),
        status: machine.status,
        processes_per_machine: machine.processes_per_machine,
        running_processes: 0,
        busy_processes: 0,
        active_sessions: 0,
        free_slots_in_busy: 0,
        created_at_ms: machine.created_at_ms,
    };
    for process in processes {
        view.running_processes += 1;
        if process.active_sessions > 0 {
            view.busy_processes += 1;
            view.active_sessions += process.active_sessions;
            view.free_slots_in_busy += slots.saturating_sub(process.active_sessions);
        }
    }
    view
}

/// A loaded zone.
#[derive(Debug, Clone)]
pub struct HotZone {
    pub record: ZoneRecord,
    /// Its fleet as last written.
    pub fleet: Arc<Fleet>,
    /// By id (in order: the observation lists them so).
    pub machines: BTreeMap<String, HotMachine>,
    index: SlotIndex,
    /// Set when a process entered the index (the zone gained capacity) since the last
    /// [`HotZone::take_capacity_gained`].
    capacity_gained: bool,
}

/// Whether a process may take a new session: the in-memory mirror of the placement
/// statement's guard (`store::sqlite`), but for the process's age, which moves with the
/// clock and is checked when a placement looks.
fn eligible(
    deleting: bool,
    machine: &MachineRecord,
    process: &ProcessRecord,
    fleet: &Fleet,
) -> bool {
    !deleting
        && machine.status == MachineStatus::Active
        && process.build_id == fleet.build_id
        && process.takes_sessions(fleet.session_mode, fleet.sessions_per_process)
}

impl HotZone {
    /// A zone with its fleet and live machines.
    pub fn new(record: ZoneRecord, fleet: Arc<Fleet>, machines: Vec<HotMachine>) -> Self {
        let mut zone = HotZone {
            index: SlotIndex::new(&record.zone.spec),
            record,
            fleet,
            machines: machines
                .into_iter()
                .map(|m| (m.record.id.clone(), m))
                .collect(),
            capacity_gained: false,
        };
        zone.reindex_all();
        zone
    }

    pub fn id(&self) -> &str {
        &self.record.zone.id
    }

    /// Rebuilds the index from the machines (the spec or the fleet changed).
    pub fn reindex_all(&mut self) {
        self.index = SlotIndex::new(&self.record.zone.spec);
        let ids: Vec<String> = self.machines.keys().cloned().collect();
        for id in ids {
            if let Some(machine) = self.machines.get_mut(&id) {
                // The fleet's shape is part of what is observed.
                machine.observed = None;
            }
            self.reindex_machine(&id);
        }
    }

    /// Recomputes a machine's processes' places in the index.
    pub fn reindex_machine(&mut self, machine_id: &str) {
        let Some(machine) = self.machines.get(machine_id) else {
            return;
        };
        let machine_sessions = machine.active_sessions();
        let deleting = self.record.deleting;
        for process in machine.processes.values() {
            if eligible(deleting, &machine.record, &process.record, &self.fleet) {
                // A process already in only moves (its machine and data center are its own).
                if self.index.recount(
                    &process.record.id,
                    machine_sessions,
                    process.record.active_sessions,
                ) {
                    continue;
                }
                let added = !self.index.contains(&process.record.id);
                self.index.upsert(Slot {
                    process_id: process.record.id.clone(),
                    machine_id: machine_id.to_string(),
                    data_center: machine.record.data_center.clone(),
                    machine_sessions,
                    process_sessions: process.record.active_sessions,
                });
                if added && self.index.contains(&process.record.id) {
                    self.capacity_gained = true;
                }
            } else {
                self.index.remove(&process.record.id);
            }
        }
    }

    /// True once after a process entered the index.
    pub fn take_capacity_gained(&mut self) -> bool {
        std::mem::take(&mut self.capacity_gained)
    }

    /// Processes that may take a session (age aside).
    pub fn free_processes(&self) -> usize {
        self.index.len()
    }

    /// The process a placement with these latencies takes now, if any. A process past its
    /// `process_restart_hours` leaves the index here for good (its age only grows).
    pub fn choose(
        &mut self,
        latencies_ms: &BTreeMap<String, u32>,
        max_latency_ms: Option<u32>,
        now_ms: i64,
    ) -> Option<Candidate> {
        let cutoff = restart_cutoff_ms(self.fleet.process_restart_hours, now_ms);
        loop {
            let candidate = self.index.best(latencies_ms, max_latency_ms)?;
            let started = self
                .process(&candidate.machine_id, &candidate.process_id)
                .map(|p| p.record.started_at_ms);
            match started {
                Some(started) if started >= cutoff => return Some(candidate),
                _ => {
                    self.index.remove(&candidate.process_id);
                }
            }
        }
    }

    /// Keeps a process out of the index until the zone is next reindexed: a guard in SQL
    /// refused it although the reloaded picture would still offer it.
    pub fn refuse(&mut self, process_id: &str) {
        self.index.remove(process_id);
    }

    /// A live process.
    pub fn process(&self, machine_id: &str, process_id: &str) -> Option<&HotProcess> {
        self.machines.get(machine_id)?.processes().get(process_id)
    }

    /// Replaces a machine (its row, live processes and sessions), or removes it when it has
    /// ended or left the zone.
    pub fn put_machine(&mut self, machine: HotMachine) {
        let id = machine.record.id.clone();
        let live = !matches!(
            machine.record.status,
            MachineStatus::Terminated | MachineStatus::Unhealthy
        );
        self.remove_machine(&id);
        if live && machine.record.zone_id == self.record.zone.id {
            self.machines.insert(id.clone(), machine);
            self.reindex_machine(&id);
        }
    }

    /// Takes a machine out.
    pub fn remove_machine(&mut self, machine_id: &str) {
        if let Some(machine) = self.machines.remove(machine_id) {
            for process in machine.processes.keys() {
                self.index.remove(process);
            }
        }
    }

    /// A session was placed (its process's slot is taken).
    pub fn placed(&mut self, session: Session) {
        let Some(machine) = self.machines.get_mut(&session.machine_id) else {
            return;
        };
        if let Some(process) = machine.processes_mut().get_mut(&session.process_id) {
            process.record.active_sessions += 1;
            process.record.sessions_started += 1;
            process
                .sessions
                .insert(session.id.clone(), Arc::new(session.clone()));
        }
        self.reindex_machine(&session.machine_id);
    }

    /// An active session ended (its slot is free again).
    pub fn ended(&mut self, machine_id: &str, process_id: &str, session_id: &str) {
        let Some(machine) = self.machines.get_mut(machine_id) else {
            return;
        };
        if let Some(process) = machine.processes_mut().get_mut(process_id) {
            if process.sessions.remove(session_id).is_some() {
                process.record.active_sessions = process.record.active_sessions.saturating_sub(1);
            }
        }
        self.reindex_machine(machine_id);
    }

    /// A machine's row changed in place (a heartbeat, its driver's reference, its target).
    pub fn update_record(&mut self, machine_id: &str, change: impl FnOnce(&mut MachineRecord)) {
        let Some(machine) = self.machines.get_mut(machine_id) else {
            return;
        };
        let was_active = machine.record.status == MachineStatus::Active;
        change(machine.record_mut());
        if was_active != (machine.record.status == MachineStatus::Active) {
            self.reindex_machine(machine_id);
        }
    }

    /// A process ended: it leaves the machine, and its sessions with it.
    pub fn remove_process(&mut self, machine_id: &str, process_id: &str) {
        if let Some(machine) = self.machines.get_mut(machine_id) {
            machine.processes_mut().remove(process_id);
        }
        self.index.remove(process_id);
        self.reindex_machine(machine_id);
    }

    /// A live process was first reported, or changed state.
    pub fn put_process(&mut self, machine_id: &str, process: ProcessRecord) {
        let Some(machine) = self.machines.get_mut(machine_id) else {
            return;
        };
        match machine.processes_mut().get_mut(&process.id) {
            Some(known) => known.record = process,
            None => {
                machine.processes_mut().insert(
                    process.id.clone(),
                    HotProcess {
                        record: process,
                        sessions: BTreeMap::new(),
                    },
                );
            }
        }
        self.reindex_machine(machine_id);
    }

    /// What the reconciler observes: every live machine with its process figures (each
    /// made again only if the machine changed since the last observation).
    pub fn summary(&mut self) -> ZoneSummary {
        let shape = FleetShape {
            session_mode: self.fleet.session_mode,
            sessions_per_process: self.fleet.sessions_per_process,
        };
        ZoneSummary {
            machines: self
                .machines
                .values_mut()
                .map(|machine| machine.observe(shape))
                .collect(),
        }
    }

    /// What a machine of this zone's desired state is made from (None: not a live
    /// machine of it): shared pieces and a copy of its process rows, cheap to take on the
    /// writer whatever the machine's session count, made into the state off it.
    pub fn desired_inputs(
        &self,
        machine_id: &str,
        build: Option<Arc<Build>>,
    ) -> Option<DesiredInputs> {
        let machine = self.machines.get(machine_id)?;
        Some(DesiredInputs {
            record: machine.record.clone(),
            fleet: Some(self.fleet.clone()),
            build,
            processes: machine
                .processes
                .values()
                .map(|p| p.record.clone())
                .collect(),
            sessions: machine
                .processes
                .values()
                .flat_map(|p| p.sessions.values().cloned())
                .collect(),
        })
    }

    /// Live processes of the zone that are `READY`.
    pub fn ready_processes(&self) -> usize {
        self.machines
            .values()
            .flat_map(|m| m.processes.values())
            .filter(|p| p.record.state == ProcessState::Live(AgentProcessState::Ready))
            .count()
    }
}

/// What [`desired_machine`] makes a machine's desired state from, taken from the picture
/// on the writer and made into the state by the caller (building it clones every active
/// session of the machine, thousands on a busy parallel-mode machine: work that would
/// hold up every write).
#[derive(Debug, Clone)]
pub struct DesiredInputs {
    pub record: MachineRecord,
    /// None: the machine serves no fleet (it shuts down, or idles as bare metal).
    pub fleet: Option<Arc<Fleet>>,
    pub build: Option<Arc<Build>>,
    pub processes: Vec<ProcessRecord>,
    pub sessions: Vec<Arc<Session>>,
}

impl DesiredInputs {
    /// A machine that serves no fleet.
    pub fn unserved(record: MachineRecord) -> Self {
        DesiredInputs {
            record,
            fleet: None,
            build: None,
            processes: Vec::new(),
            sessions: Vec::new(),
        }
    }

    /// The machine's row and what it should run at `now_ms`.
    pub fn desired(self, now_ms: i64) -> (MachineRecord, DesiredMachine) {
        let desired = desired_machine(
            &self.record,
            self.fleet.as_deref(),
            self.build.as_deref(),
            &self.processes,
            self.sessions.iter().map(Arc::as_ref),
            now_ms,
        );
        (self.record, desired)
    }
}

/// Everything the writer keeps in memory.
#[derive(Debug, Default)]
pub struct Hot {
    /// Fleets by id, as last written.
    pub fleets: HashMap<String, Arc<Fleet>>,
    /// Builds by id (a build's launch fields never change).
    pub builds: HashMap<String, Arc<Build>>,
    /// Loaded zones by id.
    pub zones: HashMap<String, HotZone>,
    /// The zone of every machine of a loaded zone.
    pub machine_zone: HashMap<String, String>,
}

impl Hot {
    /// Forgets everything (a transaction failed: the picture may hold what never
    /// committed). Each part is reloaded from the database when next needed.
    pub fn clear(&mut self) {
        *self = Hot::default();
    }

    /// Adds a loaded zone.
    pub fn insert_zone(&mut self, zone: HotZone) {
        for id in zone.machines.keys() {
            self.machine_zone.insert(id.clone(), zone.id().to_string());
        }
        self.zones.insert(zone.id().to_string(), zone);
    }

    /// Forgets a zone (it is reloaded when next needed).
    pub fn drop_zone(&mut self, zone_id: &str) {
        if let Some(zone) = self.zones.remove(zone_id) {
            for id in zone.machines.keys() {
                self.machine_zone.remove(id);
            }
        }
    }

    /// Replaces a machine of a loaded zone (or removes it, when it ended). A machine of a
    /// zone not loaded is left for the zone's load.
    pub fn put_machine(&mut self, machine: HotMachine) {
        let id = machine.record.id.clone();
        if let Some(zone) = self.zones.get_mut(&machine.record.zone_id) {
            zone.put_machine(machine);
            if zone.machines.contains_key(&id) {
                self.machine_zone.insert(id, zone.id().to_string());
            } else {
                self.machine_zone.remove(&id);
            }
        }
    }

    /// Takes a machine out of its zone.
    pub fn remove_machine(&mut self, machine_id: &str) {
        if let Some(zone_id) = self.machine_zone.remove(machine_id) {
            if let Some(zone) = self.zones.get_mut(&zone_id) {
                zone.remove_machine(machine_id);
            }
        }
    }

    /// The loaded zone a machine is live in.
    pub fn zone_of_machine(&mut self, machine_id: &str) -> Option<&mut HotZone> {
        let zone_id = self.machine_zone.get(machine_id)?;
        self.zones.get_mut(zone_id)
    }

    /// A fleet was written: its zones re-derive which processes take sessions.
    pub fn put_fleet(&mut self, fleet: Fleet) {
        let fleet = Arc::new(fleet);
        for zone in self.zones.values_mut() {
            if zone.record.zone.spec.fleet_id == fleet.id {
                zone.fleet = fleet.clone();
                zone.reindex_all();
            }
        }
        self.fleets.insert(fleet.id.clone(), fleet);
    }

    /// Forgets a fleet (deleted).
    pub fn drop_fleet(&mut self, fleet_id: &str) {
        self.fleets.remove(fleet_id);
    }

    /// The fleet of `id_or_name` if cached (ids first, as the store's lookup does).
    pub fn fleet(&self, id_or_name: &str) -> Option<Arc<Fleet>> {
        self.fleets.get(id_or_name).cloned().or_else(|| {
            self.fleets
                .values()
                .find(|fleet| fleet.name == id_or_name)
                .cloned()
        })
    }

    /// A loaded zone of a fleet by id or name.
    pub fn zone_id_of(&self, fleet_id: &str, id_or_name: &str) -> Option<String> {
        if let Some(zone) = self.zones.get(id_or_name) {
            if zone.record.zone.spec.fleet_id == fleet_id {
                return Some(id_or_name.to_string());
            }
        }
        self.zones
            .values()
            .find(|zone| {
                zone.record.zone.spec.fleet_id == fleet_id
                    && zone.record.zone.spec.name == id_or_name
            })
            .map(|zone| zone.id().to_string())
    }
}
