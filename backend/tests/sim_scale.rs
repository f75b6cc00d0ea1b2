//! The `sim` driver under the real server: the reconciler, the store and the placement API
//! with thousands of simulated machines in one process, machine-model fallback, and the
//! store's cost of registering machines one transaction each.
//!
//! Sizes: the suite runs 1,000 machines × 6 processes and 300 sessions. The same tests at
//! 10,000 machines / 60,000 processes (minutes long, so not part of the suite):
//! `FLEETFORM_SIM_MACHINES=10000 FLEETFORM_SIM_SESSIONS=1000 cargo test --release -p fleetformd --test sim_scale -- --nocapture`. Timings go to
//! stderr (`--nocapture`); `RUST_LOG=fleetformd::machines::sim=debug` shows the simulator's
//! own reads and report rounds.

mod support;

use std::collections::BTreeSet;
use std::future::Future;
use std::time::{Duration, Instant};

use fleetform_api::agent::{AgentProcessState, ProcessReport, SyncRequest};
use fleetform_api::*;
use fleetformd::store::SqlStore;
use fleetformd::store::{MachineRecord, Store};
use futures::StreamExt;

use support::Server;

impl Server {
    /// A build, a simple-mode fleet and a fixed zone of one data center on `location`.
    async fn zone(&self, location: &str, models: &[(&str, u32)], max_processes: u32) -> Zone {
        let build = self
            .client
            .create_build(&BuildSpec {
                name: "sim".into(),
                version: None,
                operating_system: OperatingSystem::Linux,
                source: "file:///opt/sim-build".into(),
                sha256: None,
            })
            .await
            .unwrap();
        let fleet = self
            .client
            .create_fleet(&FleetSpec {
                name: "sim-fleet".into(),
                description: None,
                build_id: build.id,
                update_mode: UpdateMode::Soft,
                launch_path: "server".into(),
                launch_parameters: None,
                process_restart_hours: 0,
                session_mode: SessionMode::Simple,
                sessions_per_process: 1,
                storage_gb: 50,
                force_destroy: true,
            })
            .await
            .unwrap();
        self.client
            .create_zone(&ZoneSpec {
                fleet_id: fleet.id,
                name: "eu".into(),
                scaling_mode: ScalingMode::Fixed,
                initial_server_processes: max_processes,
                buffer_rules: vec![],
                free_slots_min: None,
                free_slots_max: None,
                cooldown_minutes: 0,
                placement_strategy: PlacementStrategy::Pack,
                data_centers: vec![DataCenterSpec {
                    name: "dc-1".into(),
                    location: location.into(),
                    priority: 0,
                    machine_type: MachineType::Vm,
                    machine_models: models
                        .iter()
                        .map(|(instance_type, per_machine)| MachineModel {
                            instance_type: instance_type.to_string(),
                            processes_per_machine: *per_machine,
                        })
                        .collect(),
                    max_server_processes: Some(max_processes),
                    bare_metal_machines: None,
                }],
            })
            .await
            .unwrap()
    }

    /// Polls the zone's status until `done` holds (panics after `limit`).
    async fn wait_for(
        &self,
        zone_id: &str,
        limit: Duration,
        what: &str,
        done: impl Fn(&ZoneStatus) -> bool,
    ) -> ZoneStatus {
        let deadline = Instant::now() + limit;
        loop {
            let status = self.client.zone_status(zone_id).await.unwrap();
            if done(&status) {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not reached within {limit:?}; last status {status:?}"
            );
            // A status read loads the whole zone: at 60,000 processes, not too often.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

fn env_u32(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// Runs `make(i)` for `0..count` with `concurrency` in flight; the outputs in order of
/// completion.
async fn concurrently<T, F: Future<Output = T>>(
    count: u32,
    concurrency: usize,
    make: impl Fn(u32) -> F,
) -> Vec<T> {
    futures::stream::iter(0..count)
        .map(make)
        .buffer_unordered(concurrency)
        .collect()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sim_machines_follow_sessions_and_fall_back_to_the_next_model() {
    let server = Server::start(
        r#"
        [[location]]
        name = "sim-small"
        driver = "sim"
        boot_seconds = 0.05
        start_seconds = 0.05
        unavailable_instance_types = ["big"]
        "#,
    )
    .await;
    let locations = server.client.locations().await.unwrap();
    assert_eq!(locations.len(), 1);
    assert_eq!(locations[0].driver, "sim");

    // "big" has no capacity: the zone runs on "small" (2 processes each), 3 machines for 6.
    let zone = server
        .zone("sim-small", &[("big", 8), ("small", 2)], 6)
        .await;
    let status = server
        .wait_for(&zone.id, Duration::from_secs(60), "6 idle processes", |s| {
            s.processes_idle == 6 && s.status == ResourceStatus::Available
        })
        .await;
    assert_eq!(status.machines.get("ACTIVE"), Some(&3), "{status:?}");
    let machines = server
        .client
        .fleet_machines(&zone.spec.fleet_id)
        .await
        .unwrap()
        .machines;
    let live: Vec<&Machine> = machines
        .iter()
        .filter(|m| m.status == MachineStatus::Active)
        .collect();
    assert_eq!(live.len(), 3);
    for machine in &live {
        assert_eq!(machine.instance_type, "small");
        assert_eq!(machine.address.as_deref(), Some("sim"));
    }
    assert!(
        machines
            .iter()
            .filter(|m| m.instance_type == "big")
            .all(|m| m.status == MachineStatus::Terminated),
        "the machine of the unavailable model was retired: {machines:?}"
    );

    // A session, ended through the API: its simple-mode process is replaced by a new one.
    let session = server
        .client
        .place_session(
            &zone.spec.fleet_id,
            &PlacementRequest {
                zone: "eu".into(),
                player_latencies_ms: None,
                max_latency_ms: None,
                max_players: Some(4),
                properties: None,
                idempotency_key: None,
                wait_seconds: Some(10),
            },
        )
        .await
        .unwrap();
    assert_eq!(session.address, "sim");
    let ports: BTreeSet<u16> = server
        .client
        .fleet_processes(&zone.spec.fleet_id)
        .await
        .unwrap()
        .processes
        .iter()
        .filter(|p| p.machine_id == session.machine_id)
        .map(|p| p.port)
        .collect();
    assert_eq!(ports.len(), 2, "distinct ports on one machine");
    server.client.end_session(&session.id).await.unwrap();
    server
        .wait_for(&zone.id, Duration::from_secs(30), "process replaced", |s| {
            s.processes_idle == 6 && s.active_sessions == 0
        })
        .await;
    let processes = server
        .client
        .fleet_processes(&zone.spec.fleet_id)
        .await
        .unwrap()
        .processes;
    let old = processes
        .iter()
        .find(|p| p.id == session.process_id)
        .expect("the old process is still listed");
    assert_eq!(old.status, ProcessStatus::Exited, "{old:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sim_sessions_end_by_themselves_with_session_seconds() {
    let server = Server::start(
        r#"
        [[location]]
        name = "sim-load"
        driver = "sim"
        boot_seconds = 0.05
        start_seconds = 0.05
        session_seconds = 0.5
        "#,
    )
    .await;
    let zone = server.zone("sim-load", &[("m", 2)], 2).await;
    server
        .wait_for(&zone.id, Duration::from_secs(60), "2 idle processes", |s| {
            s.processes_idle == 2
        })
        .await;
    let session = server
        .client
        .place_session(
            &zone.spec.fleet_id,
            &PlacementRequest {
                zone: "eu".into(),
                player_latencies_ms: None,
                max_latency_ms: None,
                max_players: None,
                properties: None,
                idempotency_key: None,
                wait_seconds: Some(10),
            },
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let ended = loop {
        let current = server.client.get_session(&session.id).await.unwrap();
        if current.status != SessionStatus::Active {
            break current;
        }
        assert!(
            Instant::now() < deadline,
            "session never ended: {current:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Ended by its game server, not lost with its process.
    assert_eq!(ended.status, SessionStatus::Ended, "{ended:?}");
    server
        .wait_for(&zone.id, Duration::from_secs(30), "process replaced", |s| {
            s.processes_idle == 2 && s.active_sessions == 0
        })
        .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_sim_machines_take_sessions() {
    init_tracing();
    sim_zone_at_scale(
        env_u32("FLEETFORM_SIM_MACHINES", 1_000),
        env_u32("FLEETFORM_SIM_SESSIONS", 300),
    )
    .await;
}

/// Logs to stderr when `RUST_LOG` asks for it.
fn init_tracing() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .try_init();
    }
}

/// A fixed zone of `machines` × 6 processes on a `sim` location: every machine registers,
/// the zone turns AVAILABLE, `sessions` placements from 32 connections at once land on
/// distinct processes, and once ended their processes are replaced.
async fn sim_zone_at_scale(machines: u32, sessions: u32) {
    let per_machine = 6;
    let processes = machines * per_machine;
    let server = Server::start(
        r#"
        [[location]]
        name = "sim"
        driver = "sim"
        boot_seconds = 0.05
        start_seconds = 0
        "#,
    )
    .await;
    let started = Instant::now();
    let zone = server
        .zone("sim", &[("sim-6", per_machine)], processes)
        .await;

    let status = server
        .wait_for(
            &zone.id,
            Duration::from_secs(600),
            "every machine registered",
            |s| s.machines.get("ACTIVE").copied().unwrap_or(0) >= machines,
        )
        .await;
    let registered = started.elapsed();
    eprintln!(
        "sim scale: {machines} machines registered in {:.1} s ({:.0} machines/s); {status:?}",
        registered.as_secs_f64(),
        f64::from(machines) / registered.as_secs_f64()
    );
    server
        .wait_for(
            &zone.id,
            Duration::from_secs(300),
            "every process idle and the zone AVAILABLE",
            |s| s.processes_idle == processes && s.status == ResourceStatus::Available,
        )
        .await;
    let available = started.elapsed();
    eprintln!(
        "sim scale: {processes} idle processes, zone AVAILABLE after {:.1} s",
        available.as_secs_f64()
    );

    // Placements from many matchmaker connections at once.
    let client = &server.client;
    let fleet = zone.spec.fleet_id.as_str();
    let placing = Instant::now();
    let placed = concurrently(sessions, 32, |i| async move {
        client
            .place_session(
                fleet,
                &PlacementRequest {
                    zone: "eu".into(),
                    player_latencies_ms: None,
                    max_latency_ms: None,
                    max_players: Some(8),
                    properties: None,
                    idempotency_key: Some(format!("load-{i}")),
                    wait_seconds: Some(10),
                },
            )
            .await
            .unwrap()
    })
    .await;
    let placing = placing.elapsed();
    eprintln!(
        "sim scale: {sessions} placements in {:.1} s ({:.0}/s, 32 in flight)",
        placing.as_secs_f64(),
        f64::from(sessions) / placing.as_secs_f64()
    );
    let distinct: BTreeSet<&str> = placed.iter().map(|s| s.process_id.as_str()).collect();
    assert_eq!(
        distinct.len(),
        placed.len(),
        "simple mode: no process hosts two sessions"
    );
    let status = client.zone_status(&zone.id).await.unwrap();
    assert_eq!(status.active_sessions, sessions, "{status:?}");
    assert_eq!(status.processes_active, sessions, "{status:?}");

    let ending = Instant::now();
    concurrently(sessions, 32, |i| {
        let id = placed[i as usize].id.clone();
        async move { client.end_session(&id).await.unwrap() }
    })
    .await;
    let ended = ending.elapsed();
    // Each ended session's process exits and a fresh one takes its place.
    server
        .wait_for(
            &zone.id,
            Duration::from_secs(120),
            "spent processes replaced",
            |s| s.active_sessions == 0 && s.processes_idle == processes,
        )
        .await;
    eprintln!(
        "sim scale: {sessions} sessions ended in {:.1} s ({:.0}/s); processes replaced after {:.1} s; total {:.1} s",
        ended.as_secs_f64(),
        f64::from(sessions) / ended.as_secs_f64(),
        ending.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    server.stop().await;
}

/// What the store pays for registrations sent one transaction each (the only way it takes
/// agent reports today): `FLEETFORM_SIM_MACHINES` machine rows (default 10,000), then one
/// registration report of 6 `READY` processes per machine, sequentially and 4 at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_registers_machines_one_transaction_each() {
    let count = env_u32("FLEETFORM_SIM_MACHINES", 1_000);
    let dir = tempfile::tempdir().unwrap();
    let store = SqlStore::open(&dir.path().join("registrations.db"))
        .await
        .unwrap();
    let store: &dyn Store = &store;
    let build = support::build();
    store.insert_build(&build).await.unwrap();
    let fleet = support::fleet(&build.id, SessionMode::Simple);
    store.insert_fleet(&fleet).await.unwrap();
    let zone = Zone {
        id: "zone-1".into(),
        spec: ZoneSpecView {
            fleet_id: fleet.id.clone(),
            name: "eu".into(),
            scaling_mode: ScalingMode::Fixed,
            initial_server_processes: 1,
            buffer_rules: vec![],
            free_slots_min: None,
            free_slots_max: None,
            cooldown_minutes: 0,
            placement_strategy: PlacementStrategy::Pack,
            data_centers: vec![],
        },
        status: ResourceStatus::New,
        created_at: "2026-01-01T00:00:00Z".into(),
    };
    store.insert_zone(&zone).await.unwrap();
    let machines: Vec<MachineRecord> = (0..count)
        .map(|i| MachineRecord {
            id: format!("mch-{i:05}"),
            zone_id: zone.id.clone(),
            fleet_id: fleet.id.clone(),
            data_center: "dc-1".into(),
            location: "sim".into(),
            instance_type: "sim-6".into(),
            processes_per_machine: 6,
            status: MachineStatus::Pending,
            build_id: build.id.clone(),
            driver_ref: Some(format!("sim/sim/{i}")),
            address: None,
            agent_error: None,
            created_at_ms: 0,
            last_heartbeat_ms: None,
            target_processes: 6,
            terminating_since_ms: None,
            terminated_at_ms: None,
            termination_reason: None,
            bare_metal_id: None,
        })
        .collect();
    let inserting = Instant::now();
    for machine in &machines {
        store
            .insert_machine(machine, &format!("hash-{}", machine.id))
            .await
            .unwrap();
    }
    let inserted = inserting.elapsed();
    let registration = |machine: &MachineRecord| SyncRequest {
        agent_pid: 0,
        address: "sim".into(),
        report_seq: 1,
        known_revision: None,
        wait_ms: 0,
        processes: (0..6)
            .map(|p| ProcessReport {
                process_id: format!("proc-{}-{p}", machine.id),
                port: 7000 + p,
                pid: 0,
                state: AgentProcessState::Ready,
                build_id: "bld-1".into(),
                started_at: "2026-01-01T00:00:00Z".into(),
            })
            .collect(),
        exited: vec![],
        ended_sessions: vec![],
        error: None,
    };
    let half = machines.len() / 2;
    let sequential = Instant::now();
    for machine in &machines[..half] {
        store
            .apply_agent_report(machine, &registration(machine), 1)
            .await
            .unwrap();
    }
    let sequential = sequential.elapsed();
    let concurrent = Instant::now();
    futures::stream::iter(&machines[half..])
        .map(|machine| async move {
            store
                .apply_agent_report(machine, &registration(machine), 1)
                .await
                .unwrap()
        })
        .buffer_unordered(4)
        .collect::<Vec<_>>()
        .await;
    let concurrent = concurrent.elapsed();
    let per_ms = |took: Duration, n: usize| took.as_secs_f64() * 1000.0 / n as f64;
    eprintln!(
        "store: {count} machine rows in {:.1} s ({:.2} ms each); registrations of 6 processes: \
         {half} sequential in {:.1} s ({:.2} ms each), {} 4-at-a-time in {:.1} s ({:.2} ms each)",
        inserted.as_secs_f64(),
        per_ms(inserted, machines.len()),
        sequential.as_secs_f64(),
        per_ms(sequential, half),
        machines.len() - half,
        concurrent.as_secs_f64(),
        per_ms(concurrent, machines.len() - half),
    );
    // The bulk read the reconciler and the simulator make of a zone.
    let reading = Instant::now();
    let observed = store.zone_observation(&zone.id).await.unwrap();
    eprintln!(
        "store: zone_observation of {} machines / {} processes in {} ms",
        observed.machines.len(),
        observed.processes.len(),
        reading.elapsed().as_millis()
    );
    assert_eq!(observed.processes.len(), machines.len() * 6);
    assert!(observed
        .machines
        .iter()
        .all(|m| m.status == MachineStatus::Active));
}
