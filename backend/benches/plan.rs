//! The planner's time for one pass over a zone of 10,000 machines / 60,000 processes
//! (`cargo bench -p fleetformd --bench plan`).
//!
//! The zone has four VM data centers (two priorities) of 2,500 machines × 6 processes. Each
//! scenario builds the [`Observed`] directly and times [`autoscale::plan`] alone: no store,
//! no clock. `observe/zone_summary_*` time the reconciler's observation: the store writer's
//! picture of the zone summed up per machine (afresh, and when nothing changed), the other
//! CPU part of a pass.

use std::collections::{BTreeSet, HashMap};
use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use fleetform_api::agent::AgentProcessState;
use fleetform_api::{
    BufferRule, DataCenterSpec, Fleet, MachineModel, MachineStatus, MachineType, PlacementStrategy,
    ResourceStatus, ScalingMode, SessionMode, UpdateMode, Zone, ZoneSpecView,
};
use fleetformd::autoscale::{self, FleetShape, MachineView, Observed};
use fleetformd::store::hot::{HotMachine, HotZone};
use fleetformd::store::{MachineRecord, ProcessRecord, ProcessState, ZoneObservation, ZoneRecord};

const DATA_CENTERS: u32 = 4;
const PER_MACHINE: u32 = 6;
const MACHINES: u32 = 10_000;
const NOW_MS: i64 = 1_800_000_000_000;

const SIMPLE: FleetShape = FleetShape {
    session_mode: SessionMode::Simple,
    sessions_per_process: 1,
};

fn dc_name(index: u32) -> String {
    format!("dc-{index}")
}

/// Four data centers (priorities 0, 0, 1, 1), each allowed a quarter of 60,000 processes.
fn zone(mode: ScalingMode, rule: BufferRule, free_slots: Option<(u32, u32)>) -> ZoneSpecView {
    ZoneSpecView {
        fleet_id: "flt-bench".into(),
        name: "bench".into(),
        scaling_mode: mode,
        initial_server_processes: 600,
        buffer_rules: vec![rule],
        free_slots_min: free_slots.map(|(min, _)| min),
        free_slots_max: free_slots.map(|(_, max)| max),
        cooldown_minutes: 0,
        placement_strategy: PlacementStrategy::Pack,
        data_centers: (0..DATA_CENTERS)
            .map(|i| DataCenterSpec {
                name: dc_name(i),
                location: "sim".into(),
                priority: i / 2,
                machine_type: MachineType::Vm,
                machine_models: vec![MachineModel {
                    instance_type: "c6.xlarge".into(),
                    processes_per_machine: PER_MACHINE,
                }],
                max_server_processes: Some(MACHINES * PER_MACHINE / DATA_CENTERS),
                bare_metal_machines: None,
            })
            .collect(),
    }
}

fn servers(count: u32) -> BufferRule {
    BufferRule {
        min_active_sessions: 0,
        available_servers: Some(count),
        available_percent: None,
        available_predicted: None,
    }
}

/// `machines` machines spread round robin over the data centers, running `running`
/// processes each, with `sessions` packed one per process from the first machine.
fn observed(machines: u32, running: u32, mut sessions: u32) -> Observed {
    let machines = (0..machines)
        .map(|i| {
            let busy = sessions.min(running);
            sessions -= busy;
            MachineView {
                id: format!("mch-{i:05}"),
                data_center: dc_name(i % DATA_CENTERS),
                instance_type: "c6.xlarge".into(),
                status: MachineStatus::Active,
                processes_per_machine: PER_MACHINE,
                running_processes: running,
                busy_processes: busy,
                active_sessions: busy,
                free_slots_in_busy: 0,
                created_at_ms: NOW_MS - 3_600_000 + i64::from(i),
            }
        })
        .collect();
    Observed {
        machines,
        idle_since_ms: NOW_MS,
        unavailable_models: BTreeSet::new(),
        predicted_arrivals: 0.0,
    }
}

/// The store's picture of the same zone: 10,000 machines, 60,000 live processes.
fn observation(sessions: u32) -> ZoneObservation {
    let mut remaining = sessions;
    let mut observation = ZoneObservation::default();
    for i in 0..MACHINES {
        let id = format!("mch-01a1f{i:027}");
        observation.machines.push(MachineRecord {
            id: id.clone(),
            zone_id: "zone-bench".into(),
            fleet_id: "flt-bench".into(),
            data_center: dc_name(i % DATA_CENTERS),
            location: "sim".into(),
            instance_type: "c6.xlarge".into(),
            processes_per_machine: PER_MACHINE,
            status: MachineStatus::Active,
            build_id: "bld-bench".into(),
            driver_ref: Some(format!("sim/sim/{i}")),
            address: Some("sim".into()),
            agent_error: None,
            created_at_ms: NOW_MS,
            last_heartbeat_ms: Some(NOW_MS),
            target_processes: PER_MACHINE,
            terminating_since_ms: None,
            terminated_at_ms: None,
            termination_reason: None,
            bare_metal_id: None,
        });
        for p in 0..PER_MACHINE {
            let busy = u32::from(remaining > 0);
            remaining -= busy;
            observation.processes.push(ProcessRecord {
                id: format!("proc-01a1f{i:022}{p:05}"),
                machine_id: id.clone(),
                zone_id: "zone-bench".into(),
                fleet_id: "flt-bench".into(),
                build_id: "bld-bench".into(),
                port: 7000 + p as u16,
                pid: None,
                state: ProcessState::Live(AgentProcessState::Ready),
                active_sessions: busy,
                sessions_started: busy,
                started_at_ms: NOW_MS,
                restart_requested: false,
            });
        }
    }
    // The store returns processes ordered by id.
    observation.processes.sort_by(|a, b| a.id.cmp(&b.id));
    observation
}

fn bench_plan(c: &mut Criterion) {
    let all = MACHINES * PER_MACHINE;
    let scenarios = [
        (
            // Fixed mode, every machine up: nothing to do.
            "plan/fixed_steady",
            zone(ScalingMode::Fixed, servers(0), None),
            observed(MACHINES, PER_MACHINE, 30_000),
        ),
        (
            // 54,000 sessions + 6,000 idle wanted = exactly the 60,000 there are.
            "plan/auto_steady",
            zone(ScalingMode::Auto, servers(6_000), None),
            observed(MACHINES, PER_MACHINE, 54_000),
        ),
        (
            // 9,000 machines, 50,000 sessions, 10,000 idle wanted: 1,000 machines short
            // (50 launched this pass, the plan is partial).
            "plan/auto_scale_up",
            zone(ScalingMode::Auto, servers(10_000), None),
            observed(9_000, PER_MACHINE, 50_000),
        ),
        (
            // 20,000 sessions packed on a third of the machines, 2,000 idle wanted: most
            // idle machines stop.
            "plan/auto_scale_in",
            zone(ScalingMode::Auto, servers(2_000), None),
            observed(MACHINES, PER_MACHINE, 20_000),
        ),
        (
            // Machines keep 1,200–6,000 free slots: per-machine process targets are spread
            // over every machine (the `distribute` path).
            "plan/auto_free_slots",
            zone(ScalingMode::Auto, servers(10_000), Some((1_200, 6_000))),
            observed(MACHINES, 5, 40_000),
        ),
    ];
    for (name, spec, observed) in &scenarios {
        let plan = autoscale::plan(spec, SIMPLE, observed, NOW_MS);
        eprintln!(
            "{name}: {} machines, {} processes → desired {}, launch {}, terminate {}, partial {}",
            observed.machines.len(),
            observed
                .machines
                .iter()
                .map(|m| m.running_processes)
                .sum::<u32>(),
            plan.desired_processes,
            plan.launch.len(),
            plan.terminate.len(),
            plan.partial
        );
        c.bench_function(name, |b| {
            b.iter(|| autoscale::plan(black_box(spec), SIMPLE, black_box(observed), NOW_MS))
        });
    }
    assert_eq!(all, 60_000);
}

/// The store writer's picture of the zone of [`observation`].
fn hot_zone(observation: ZoneObservation) -> HotZone {
    let spec = zone(ScalingMode::Fixed, servers(0), None);
    let record = ZoneRecord {
        zone: Zone {
            id: "zone-bench".into(),
            spec,
            status: ResourceStatus::Available,
            created_at: String::new(),
        },
        deleting: false,
        idle_since_ms: NOW_MS,
    };
    let fleet = Fleet {
        id: "flt-bench".into(),
        name: "bench".into(),
        description: None,
        build_id: "bld-bench".into(),
        update_mode: UpdateMode::Soft,
        launch_path: "server".into(),
        launch_parameters: None,
        process_restart_hours: 0,
        session_mode: SessionMode::Simple,
        sessions_per_process: 1,
        storage_gb: 50,
        force_destroy: false,
        status: ResourceStatus::Available,
        created_at: String::new(),
    };
    let mut processes: HashMap<String, Vec<ProcessRecord>> = HashMap::new();
    for process in observation.processes {
        processes
            .entry(process.machine_id.clone())
            .or_default()
            .push(process);
    }
    let machines = observation
        .machines
        .into_iter()
        .map(|machine| {
            let own = processes.remove(&machine.id).unwrap_or_default();
            HotMachine::new(machine, own, &[])
        })
        .collect();
    HotZone::new(record, Arc::new(fleet), machines)
}

fn bench_observe(c: &mut Criterion) {
    // The reconciler's observation of a zone: the writer's picture summed up per machine.
    let zone = hot_zone(observation(30_000));
    let mut group = c.benchmark_group("observe");
    group.sample_size(10);
    // Every machine observed afresh (the first observation, or all of them changed).
    group.bench_function("zone_summary_cold", |b| {
        b.iter_batched(
            || zone.clone(),
            |mut zone| black_box(zone.summary()),
            criterion::BatchSize::LargeInput,
        )
    });
    // Nothing changed since the last observation: each machine's is reused.
    let mut warm = zone.clone();
    warm.summary();
    group.bench_function("zone_summary_unchanged", |b| {
        b.iter(|| black_box(warm.summary()))
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30);
    targets = bench_plan, bench_observe
}
criterion_main!(benches);
