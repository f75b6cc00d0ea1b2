//! Scaling policy: how many machines each data center of a zone should run, how many
//! processes each machine should run, and which machines to launch or stop to get there.
//!
//! Architecture invariant: [`plan`] does no I/O, reads no clock and draws no random
//! numbers; the time comes in as `now_ms`. It is `compute_reconciliation_action(desired,
//! observed, limits)` in Agones' terms: the zone reconciler and the simulator observe, call
//! it, then act.
//!
//! The rules (DESIGN.md §2), in the order the plan applies them:
//! 1. Demand. `fixed`: every data center's maximum. `auto`: the processes hosting sessions
//!    plus the idle capacity the buffer rule in force asks for (chosen by the number of
//!    active sessions; counted in free session slots in parallel mode), never below
//!    `initial_server_processes`, never above the data centers' maximums.
//! 2. Cooldown. After `cooldown_minutes` with no active session, VM capacity goes to 0
//!    (bare metal stays); a placement request wakes the zone (the caller moves
//!    `idle_since_ms`).
//! 3. Bare metal first. Bare-metal machines always run and always count; VM data centers
//!    supply only what is needed beyond them.
//! 4. Whole machines, preferred data centers first. VM machines are added to the data
//!    centers of the lowest priority number first, one machine at a time to each data
//!    center of equal priority in turn, up to each maximum.
//! 5. Free slots. With `free_slots_min`/`free_slots_max`, machines keep that many process
//!    slots with no process running (room to start a process in seconds instead of booting
//!    a machine); when both bounds cannot hold, the minimum wins. Without them every VM
//!    machine runs its full `processes_per_machine`.
//! 6. Models. A launch uses the first-ranked machine model the cloud has not reported short
//!    of capacity; a data center with none left is reported `short`.
//! 7. Scale-in stops only machines with no active session, in the data centers that run
//!    more than they should, not-yet-ready and emptier machines first.

pub mod forecast;

use std::collections::{BTreeMap, BTreeSet};

use fleetform_api::{
    BufferRule, DataCenterSpec, MachineStatus, MachineType, ScalingMode, SessionMode, ZoneSpecView,
};

/// Most machines one pass launches; more makes the plan partial and the zone is requeued.
pub const MAX_LAUNCHES_PER_PASS: usize = 1_000;

/// What of the fleet the policy needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FleetShape {
    pub session_mode: SessionMode,
    pub sessions_per_process: u32,
}

impl FleetShape {
    /// Session slots one process offers.
    pub fn slots_per_process(self) -> u32 {
        match self.session_mode {
            SessionMode::Simple => 1,
            SessionMode::Parallel => self.sessions_per_process.max(1),
        }
    }
}

/// A machine as the policy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineView {
    pub id: String,
    pub data_center: String,
    pub instance_type: String,
    pub status: MachineStatus,
    /// The most processes it may run (its model's `processes_per_machine`).
    pub processes_per_machine: u32,
    /// Processes it runs now (starting or up), including busy ones.
    pub running_processes: u32,
    /// Processes hosting at least one session: they must keep running.
    pub busy_processes: u32,
    /// Sessions active on the machine: a machine with any is never stopped.
    pub active_sessions: u32,
    /// Free session slots inside its busy processes (parallel mode).
    pub free_slots_in_busy: u32,
    pub created_at_ms: i64,
}

impl MachineView {
    /// Whether the machine counts toward capacity (it is not on its way out).
    pub fn counts(&self) -> bool {
        !matches!(
            self.status,
            MachineStatus::Terminating | MachineStatus::Terminated | MachineStatus::Unhealthy
        )
    }
}

/// What the reconciler (or the simulator) observed of a zone.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    pub machines: Vec<MachineView>,
    /// Start of the current idle period: the last moment a session was active, the zone's
    /// creation, or the last wake-up by a placement request, whichever is latest.
    pub idle_since_ms: i64,
    /// `(data center, instance type)` pairs the cloud reported short of capacity.
    pub unavailable_models: BTreeSet<(String, String)>,
    /// Idle capacity forecast for `available_predicted` rules: requests expected while a new
    /// machine boots, less the slots ending sessions free in time
    /// ([`forecast::forecast_net_demand`]).
    pub predicted_arrivals: f64,
}

/// A machine to launch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub data_center: String,
    pub instance_type: String,
    pub processes_per_machine: u32,
    /// Processes it should run once up.
    pub target_processes: u32,
}

/// What to do for a zone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Processes the zone should run, over all machines and launches.
    pub desired_processes: u32,
    pub launch: Vec<Launch>,
    /// Ids of idle machines to stop.
    pub terminate: Vec<String>,
    /// Processes each machine that stays should run.
    pub process_targets: BTreeMap<String, u32>,
    /// The zone is in cooldown: no VM capacity until a placement request wakes it.
    pub cooling: bool,
    /// Data centers that need machines but have no machine model with capacity left.
    pub short: Vec<String>,
    /// A batch cap left work for the next pass (requeue at once).
    pub partial: bool,
}

/// The processes one machine of `dc` runs at most: its first-ranked model's count.
pub fn processes_per_machine(dc: &DataCenterSpec) -> u32 {
    dc.machine_models
        .first()
        .map(|model| model.processes_per_machine.max(1))
        .unwrap_or(1)
}

/// Most machines a VM data center may run: its maximum rounded up to whole machines (1000
/// at 6 per machine is 167 machines, 1002 processes).
pub fn max_machines(dc: &DataCenterSpec) -> u32 {
    match dc.machine_type {
        MachineType::Vm => dc
            .max_server_processes
            .unwrap_or(0)
            .div_ceil(processes_per_machine(dc)),
        MachineType::BareMetal => dc.bare_metal_machines.unwrap_or(0),
    }
}

/// The buffer rule in force: the last whose threshold the active sessions reached.
pub fn rule_for(rules: &[BufferRule], active_sessions: u32) -> Option<&BufferRule> {
    rules
        .iter()
        .filter(|rule| rule.min_active_sessions <= active_sessions)
        .max_by_key(|rule| rule.min_active_sessions)
}

/// Free session slots a rule asks for on top of the busy ones.
pub fn buffer_slots(rule: Option<&BufferRule>, active_sessions: u32, predicted: f64) -> u32 {
    let Some(rule) = rule else {
        return 0;
    };
    if let Some(servers) = rule.available_servers {
        return servers;
    }
    if let Some(percent) = rule.available_percent {
        return (u64::from(active_sessions) * u64::from(percent)).div_ceil(100) as u32;
    }
    if let Some(margin) = rule.available_predicted {
        let forecast = if predicted.is_finite() {
            predicted.max(0.0)
        } else {
            0.0
        };
        return (forecast.ceil() as u32).saturating_add(margin);
    }
    0
}

/// Whether the zone is in cooldown at `now_ms`.
pub fn cooling(spec: &ZoneSpecView, active_sessions: u32, idle_since_ms: i64, now_ms: i64) -> bool {
    spec.scaling_mode == ScalingMode::Auto
        && spec.cooldown_minutes > 0
        && active_sessions == 0
        && now_ms.saturating_sub(idle_since_ms) >= i64::from(spec.cooldown_minutes) * 60_000
}

fn is_bare_metal(spec: &ZoneSpecView, data_center: &str) -> bool {
    spec.data_centers
        .iter()
        .any(|dc| dc.name == data_center && dc.machine_type == MachineType::BareMetal)
}

/// Processes the zone wants (before headroom), given the bare-metal capacity it has.
pub fn desired_processes(
    spec: &ZoneSpecView,
    fleet: FleetShape,
    observed: &Observed,
    bare_metal_processes: u32,
    now_ms: i64,
) -> u32 {
    let vm_ceiling: u32 = spec
        .data_centers
        .iter()
        .filter(|dc| dc.machine_type == MachineType::Vm)
        .map(|dc| max_machines(dc) * processes_per_machine(dc))
        .sum();
    let ceiling = bare_metal_processes.saturating_add(vm_ceiling);
    let counted = observed.machines.iter().filter(|m| m.counts());
    let active: u32 = counted.clone().map(|m| m.active_sessions).sum();
    let busy: u32 = counted.clone().map(|m| m.busy_processes).sum();
    let free_in_busy: u32 = counted.map(|m| m.free_slots_in_busy).sum();
    match spec.scaling_mode {
        ScalingMode::Fixed => ceiling,
        ScalingMode::Auto if cooling(spec, active, observed.idle_since_ms, now_ms) => {
            bare_metal_processes.min(ceiling)
        }
        ScalingMode::Auto => {
            let rule = rule_for(&spec.buffer_rules, active);
            let wanted_slots = buffer_slots(rule, active, observed.predicted_arrivals);
            let idle_processes = wanted_slots
                .saturating_sub(free_in_busy)
                .div_ceil(fleet.slots_per_process());
            spec.initial_server_processes
                .max(busy.saturating_add(idle_processes))
                .min(ceiling)
        }
    }
}

/// VM machines per data center (in `spec` order) that supply `wanted` process slots:
/// preferred data centers first, one machine at a time to each data center of equal
/// priority in turn, up to each maximum. `per_machine` gives the processes a new machine of
/// a data center runs, or None when it cannot get one (no model has capacity).
pub fn machines_per_data_center(
    spec: &ZoneSpecView,
    wanted: u32,
    per_machine: &dyn Fn(&DataCenterSpec) -> Option<u32>,
) -> Vec<u32> {
    let mut machines = vec![0u32; spec.data_centers.len()];
    let mut supplied = 0u32;
    let mut priorities: Vec<u32> = spec
        .data_centers
        .iter()
        .filter(|dc| dc.machine_type == MachineType::Vm)
        .map(|dc| dc.priority)
        .collect();
    priorities.sort_unstable();
    priorities.dedup();
    for priority in priorities {
        let group: Vec<(usize, u32, u32)> = (0..spec.data_centers.len())
            .filter_map(|i| {
                let dc = &spec.data_centers[i];
                if dc.priority != priority || dc.machine_type != MachineType::Vm {
                    return None;
                }
                let per = per_machine(dc)?.max(1);
                let most = dc.max_server_processes.unwrap_or(0).div_ceil(per);
                Some((i, per, most))
            })
            .collect();
        loop {
            let mut grew = false;
            for &(i, per, most) in &group {
                if supplied >= wanted {
                    return machines;
                }
                if machines[i] < most {
                    machines[i] += 1;
                    supplied += per;
                    grew = true;
                }
            }
            if !grew || supplied >= wanted {
                break;
            }
        }
    }
    machines
}

/// Plans one reconcile pass of a zone.
pub fn plan(spec: &ZoneSpecView, fleet: FleetShape, observed: &Observed, now_ms: i64) -> Plan {
    let counted: Vec<&MachineView> = observed.machines.iter().filter(|m| m.counts()).collect();
    let active: u32 = counted.iter().map(|m| m.active_sessions).sum();
    let is_cooling = cooling(spec, active, observed.idle_since_ms, now_ms);

    // Bare metal: always on, always full, never launched or stopped here.
    let (bare_metal, vm): (Vec<&MachineView>, Vec<&MachineView>) = counted
        .iter()
        .copied()
        .partition(|m| is_bare_metal(spec, &m.data_center));
    let bare_metal_processes: u32 = bare_metal
        .iter()
        .filter(|m| bare_metal_serves(m, now_ms))
        .map(|m| m.processes_per_machine)
        .sum();
    let wanted = desired_processes(spec, fleet, observed, bare_metal_processes, now_ms);
    let vm_processes = wanted.saturating_sub(bare_metal_processes);
    let headroom = spec.free_slots_min.is_some() || spec.free_slots_max.is_some();
    let free_min = spec.free_slots_min.unwrap_or(0);

    // Machines per VM data center: enough slots for the processes plus the minimum
    // headroom, sized by the model a launch would use. A data center with no model left
    // keeps what it has and cannot grow.
    let per_machine = |dc: &DataCenterSpec| {
        model_for(dc, &observed.unavailable_models)
            .map(|model| model.processes_per_machine)
            .or_else(|| {
                vm.iter()
                    .find(|m| m.data_center == dc.name)
                    .map(|m| m.processes_per_machine)
            })
    };
    let mut targets = machines_per_data_center(spec, vm_processes + free_min, &per_machine);
    // Data centers that would have grown if the cloud had capacity are short.
    let unconstrained = machines_per_data_center(spec, vm_processes + free_min, &|dc| {
        Some(processes_per_machine(dc))
    });
    let current: Vec<u32> = spec
        .data_centers
        .iter()
        .map(|dc| vm.iter().filter(|m| m.data_center == dc.name).count() as u32)
        .collect();
    if let Some(free_max) = spec.free_slots_max {
        // Hysteresis: while the machines we have keep the free slots within bounds, keep
        // them, rather than trading machines back and forth at every session.
        let capacity: u32 = vm.iter().map(|m| m.processes_per_machine).sum();
        let within = capacity >= vm_processes + free_min
            && capacity - vm_processes <= free_max
            && spec
                .data_centers
                .iter()
                .zip(&current)
                .all(|(dc, count)| *count <= max_machines(dc));
        if within && !is_cooling {
            targets = current.clone();
        }
    }

    let mut plan = Plan {
        cooling: is_cooling,
        ..Plan::default()
    };
    for ((dc, &target), &wanted_machines) in
        spec.data_centers.iter().zip(&targets).zip(&unconstrained)
    {
        if dc.machine_type == MachineType::Vm
            && wanted_machines > target
            && model_for(dc, &observed.unavailable_models).is_none()
        {
            plan.short.push(dc.name.clone());
        }
    }
    // Busy machines cannot stop, so a data center keeps at least those.
    let mut kept: Vec<&MachineView> = Vec::new();
    for ((dc, &target), &have) in spec.data_centers.iter().zip(&targets).zip(&current) {
        if dc.machine_type == MachineType::BareMetal {
            continue;
        }
        let mut machines: Vec<&MachineView> = vm
            .iter()
            .copied()
            .filter(|m| m.data_center == dc.name)
            .collect();
        if have > target {
            let mut idle: Vec<&MachineView> = machines
                .iter()
                .copied()
                .filter(|m| m.active_sessions == 0)
                .collect();
            idle.sort_by_key(|m| {
                (
                    m.status == MachineStatus::Active,
                    m.running_processes,
                    std::cmp::Reverse(m.created_at_ms),
                )
            });
            let stop: BTreeSet<&str> = idle
                .iter()
                .take((have - target) as usize)
                .map(|m| m.id.as_str())
                .collect();
            plan.terminate.extend(stop.iter().map(|id| id.to_string()));
            machines.retain(|m| !stop.contains(m.id.as_str()));
        } else if have < target {
            match model_for(dc, &observed.unavailable_models) {
                Some(model) => {
                    for _ in have..target {
                        if plan.launch.len() >= MAX_LAUNCHES_PER_PASS {
                            plan.partial = true;
                            break;
                        }
                        plan.launch.push(Launch {
                            data_center: dc.name.clone(),
                            instance_type: model.instance_type.clone(),
                            processes_per_machine: model.processes_per_machine.max(1),
                            target_processes: 0,
                        });
                    }
                }
                None => {
                    if !plan.short.contains(&dc.name) {
                        plan.short.push(dc.name.clone());
                    }
                }
            }
        }
        kept.extend(machines);
    }
    // Machines of data centers the spec no longer has stop once idle.
    for machine in &vm {
        if !spec
            .data_centers
            .iter()
            .any(|dc| dc.name == machine.data_center)
        {
            if machine.active_sessions == 0 {
                plan.terminate.push(machine.id.clone());
            } else {
                kept.push(machine);
            }
        }
    }

    // Processes per machine. Bare metal runs full. Without headroom rules every VM machine
    // runs full too (whole machines); with them, the processes the zone wants are spread:
    // busy processes stay where they are, idle ones go to preferred data centers first,
    // evenly among equals, packed onto the fullest machines within a data center.
    for machine in &bare_metal {
        plan.process_targets
            .insert(machine.id.clone(), machine.processes_per_machine);
    }
    if !headroom {
        for machine in &kept {
            plan.process_targets
                .insert(machine.id.clone(), machine.processes_per_machine);
        }
        for launch in &mut plan.launch {
            launch.target_processes = launch.processes_per_machine;
        }
    } else {
        distribute(spec, vm_processes, &kept, &mut plan);
    }
    plan.desired_processes = plan.process_targets.values().sum::<u32>()
        + plan.launch.iter().map(|l| l.target_processes).sum::<u32>();
    plan
}

/// What a zone's bare-metal data centers should take from, and give back to, the pool.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolPlan {
    /// `(data center, machines)` to take from the pool of its location.
    pub take: Vec<(String, u32)>,
    /// Ids of idle bare-metal machines to give back (drained first).
    pub give_back: Vec<String>,
}

/// How long a bare-metal machine a zone just took counts as capacity before its agent
/// first reports: its agent is normally up already and serves within a sync. One whose
/// agent stays silent longer (its operator has not started it, or it died and the machine
/// was taken again) does not count, so VMs cover for it.
pub const BARE_METAL_REGISTER_GRACE_MS: i64 = 30_000;

/// Whether a bare-metal machine counts as capacity at `now_ms`: it serves, or it was
/// taken from the pool within [`BARE_METAL_REGISTER_GRACE_MS`].
fn bare_metal_serves(machine: &MachineView, now_ms: i64) -> bool {
    match machine.status {
        MachineStatus::Active | MachineStatus::WaitingUpdate | MachineStatus::Draining => true,
        MachineStatus::Pending | MachineStatus::Launching => {
            now_ms - machine.created_at_ms < BARE_METAL_REGISTER_GRACE_MS
        }
        _ => false,
    }
}

/// Plans a zone's bare-metal data centers: each holds exactly its `bare_metal_machines`,
/// in cooldown too (bare metal is always on, and the scaler never stops it). A data center
/// that holds more (its count was lowered) gives back idle machines only, those not yet
/// serving first; one that holds fewer takes the rest from the pool. Machines of a data
/// center the spec no longer has are stopped by [`plan`] like any other.
pub fn pool_plan(spec: &ZoneSpecView, machines: &[MachineView]) -> PoolPlan {
    let mut pool = PoolPlan::default();
    for dc in spec
        .data_centers
        .iter()
        .filter(|dc| dc.machine_type == MachineType::BareMetal)
    {
        let want = dc.bare_metal_machines.unwrap_or(0) as usize;
        let mut held: Vec<&MachineView> = machines
            .iter()
            .filter(|m| m.counts() && m.data_center == dc.name)
            .collect();
        if held.len() < want {
            pool.take
                .push((dc.name.clone(), (want - held.len()) as u32));
        } else if held.len() > want {
            let excess = held.len() - want;
            held.retain(|m| m.active_sessions == 0);
            held.sort_by_key(|m| {
                (
                    m.status == MachineStatus::Active,
                    m.running_processes,
                    std::cmp::Reverse(m.created_at_ms),
                )
            });
            pool.give_back
                .extend(held.iter().take(excess).map(|m| m.id.clone()));
        }
    }
    pool
}

/// The first-ranked model of `dc` the cloud has not reported short of capacity.
fn model_for<'a>(
    dc: &'a DataCenterSpec,
    unavailable: &BTreeSet<(String, String)>,
) -> Option<&'a fleetform_api::MachineModel> {
    dc.machine_models
        .iter()
        .find(|model| !unavailable.contains(&(dc.name.clone(), model.instance_type.clone())))
}

/// Spreads `processes` over the kept VM machines and the launches (see [`plan`]).
fn distribute(spec: &ZoneSpecView, processes: u32, kept: &[&MachineView], plan: &mut Plan) {
    // A slot holder: an existing machine or a launch, with its data center's priority.
    struct Holder {
        key: HolderKey,
        data_center: String,
        priority: u32,
        capacity: u32,
        target: u32,
        fullness: u32,
    }
    enum HolderKey {
        Machine(String),
        Launch(usize),
    }
    let priority = |name: &str| {
        spec.data_centers
            .iter()
            .find(|dc| dc.name == name)
            .map(|dc| dc.priority)
            .unwrap_or(u32::MAX)
    };
    let mut holders: Vec<Holder> = kept
        .iter()
        .map(|m| Holder {
            key: HolderKey::Machine(m.id.clone()),
            data_center: m.data_center.clone(),
            priority: priority(&m.data_center),
            capacity: m.processes_per_machine,
            target: m.busy_processes.min(m.processes_per_machine),
            fullness: m.running_processes,
        })
        .chain(plan.launch.iter().enumerate().map(|(i, l)| Holder {
            key: HolderKey::Launch(i),
            data_center: l.data_center.clone(),
            priority: priority(&l.data_center),
            capacity: l.processes_per_machine,
            target: 0,
            fullness: 0,
        }))
        .collect();
    let mut remaining = processes.saturating_sub(holders.iter().map(|h| h.target).sum());
    let mut priorities: Vec<u32> = holders.iter().map(|h| h.priority).collect();
    priorities.sort_unstable();
    priorities.dedup();
    for priority in priorities {
        // Data centers of this priority, each with its holders, fullest (then existing)
        // first so idle processes pack and emptier machines can scale in.
        let mut by_dc: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (index, holder) in holders.iter().enumerate() {
            if holder.priority == priority {
                by_dc
                    .entry(holder.data_center.clone())
                    .or_default()
                    .push(index);
            }
        }
        for indices in by_dc.values_mut() {
            indices.sort_by_key(|&i| {
                (
                    std::cmp::Reverse(holders[i].fullness),
                    matches!(holders[i].key, HolderKey::Launch(_)),
                    i,
                )
            });
        }
        // One process at a time to each data center in turn; within a data center a
        // cursor walks its holders, so a pass is linear in processes plus machines.
        let mut cursors: Vec<(Vec<usize>, usize)> =
            by_dc.into_values().map(|indices| (indices, 0)).collect();
        while remaining > 0 {
            let mut placed = false;
            for (indices, cursor) in &mut cursors {
                if remaining == 0 {
                    break;
                }
                while *cursor < indices.len()
                    && holders[indices[*cursor]].target >= holders[indices[*cursor]].capacity
                {
                    *cursor += 1;
                }
                if let Some(&i) = indices.get(*cursor) {
                    holders[i].target += 1;
                    remaining -= 1;
                    placed = true;
                }
            }
            if !placed {
                break;
            }
        }
    }
    for holder in holders {
        match holder.key {
            HolderKey::Machine(id) => {
                plan.process_targets.insert(id, holder.target);
            }
            HolderKey::Launch(i) => plan.launch[i].target_processes = holder.target,
        }
    }
}

#[cfg(test)]
pub(crate) mod fixtures;
#[cfg(test)]
mod tests;
