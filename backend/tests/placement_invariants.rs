//! Placements and ends from many clients at once, while the fleet moves to a new build
//! (soft), a machine is rebooted, another revoked, and the zone scales in; every committed
//! state of the store is checked while it runs, and the whole history afterwards:
//!
//! - no process ever holds more sessions than its slots, and its count is its sessions;
//! - no active session is on a machine that is not ACTIVE, or on a process that ended;
//! - no session asked for after the build change was answered is on the old build;
//! - no session asked for after the reboot or the revoke was answered is on what they
//!   took out of service;
//! - every 201 is in the store, where it said;
//! - the store writer's in-memory picture equals the database.
//!
//! The clients' choices come from a seeded generator (`FLEETFORM_INVARIANTS_SEED`, printed);
//! the interleaving is the machine's. Bounded: about five seconds of load on 127.0.0.1.

mod support;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleetform_api::*;
use fleetformd::store::Store;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use support::Server;

const SLOTS: u32 = 3;
const MACHINES: u32 = 8;
const PER_MACHINE: u32 = 4;

const LOCATION: &str = r#"
[[location]]
name = "sim-invariants"
driver = "sim"
boot_seconds = 0.05
start_seconds = 0.05
shutdown_seconds = 0.05
"#;

/// A 201 as a client saw it.
#[derive(Debug, Clone)]
struct Answered {
    session: Session,
    /// When the request was sent.
    sent: Instant,
}

fn zone_spec(fleet_id: &str, machines: u32) -> ZoneSpec {
    ZoneSpec {
        fleet_id: fleet_id.into(),
        name: "eu".into(),
        scaling_mode: ScalingMode::Fixed,
        initial_server_processes: machines * PER_MACHINE,
        buffer_rules: vec![],
        free_slots_min: None,
        free_slots_max: None,
        cooldown_minutes: 0,
        placement_strategy: PlacementStrategy::Pack,
        data_centers: vec![DataCenterSpec {
            name: "dc-1".into(),
            location: "sim-invariants".into(),
            priority: 0,
            machine_type: MachineType::Vm,
            machine_models: vec![MachineModel {
                instance_type: "m".into(),
                processes_per_machine: PER_MACHINE,
            }],
            max_server_processes: Some(machines * PER_MACHINE),
            bare_metal_machines: None,
        }],
    }
}

fn build_spec(name: &str) -> BuildSpec {
    BuildSpec {
        name: name.into(),
        version: None,
        operating_system: OperatingSystem::Linux,
        source: format!("file:///opt/{name}"),
        sha256: None,
    }
}

/// Checks one committed state of the store (one read transaction); what is wrong in it.
fn check_snapshot(database: &std::path::Path) -> Vec<String> {
    let Ok(mut conn) =
        rusqlite::Connection::open_with_flags(database, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
    else {
        return Vec::new();
    };
    let _ = conn.busy_timeout(Duration::from_secs(5));
    let tx = conn.transaction().unwrap();
    let mut wrong = Vec::new();
    let live = "('STARTING', 'READY', 'STOPPING')";
    let mut counts = tx
        .prepare(&format!(
            "SELECT p.id, p.active_sessions,
                (SELECT COUNT(*) FROM sessions s WHERE s.process_id = p.id AND s.status = 'ACTIVE')
             FROM processes p WHERE p.agent_state IN {live}"
        ))
        .unwrap();
    let rows = counts
        .query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, i64>(2)?,
            ))
        })
        .unwrap();
    for row in rows {
        let (process, count, sessions) = row.unwrap();
        if sessions > i64::from(SLOTS) {
            wrong.push(format!(
                "process {process} holds {sessions} sessions of {SLOTS} slots"
            ));
        }
        if count != sessions {
            wrong.push(format!(
                "process {process} counts {count} sessions but has {sessions}"
            ));
        }
    }
    drop(counts);
    let on_ended_process: i64 = tx
        .query_row(
            &format!(
                "SELECT COUNT(*) FROM sessions s JOIN processes p ON p.id = s.process_id
                 WHERE s.status = 'ACTIVE' AND p.agent_state NOT IN {live}"
            ),
            [],
            |row| row.get(0),
        )
        .unwrap();
    if on_ended_process > 0 {
        wrong.push(format!(
            "{on_ended_process} active sessions on ended processes"
        ));
    }
    let on_machine_out_of_service: i64 = tx
        .query_row(
            "SELECT COUNT(*) FROM sessions s JOIN machines m ON m.id = s.machine_id
             WHERE s.status = 'ACTIVE' AND m.status <> 'ACTIVE'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    if on_machine_out_of_service > 0 {
        wrong.push(format!(
            "{on_machine_out_of_service} active sessions on machines not ACTIVE"
        ));
    }
    wrong
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn placements_and_ends_during_an_update_a_reboot_a_revoke_and_a_scale_in() {
    let seed: u64 = std::env::var("FLEETFORM_INVARIANTS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    eprintln!("FLEETFORM_INVARIANTS_SEED={seed}");
    let server = Server::start(LOCATION).await;
    let client = server.client.clone();
    let old_build = client.create_build(&build_spec("old")).await.unwrap();
    let new_build = client.create_build(&build_spec("new")).await.unwrap();
    let fleet_spec = FleetSpec {
        name: "invariants".into(),
        description: None,
        build_id: old_build.id.clone(),
        update_mode: UpdateMode::Soft,
        launch_path: "server".into(),
        launch_parameters: None,
        process_restart_hours: 0,
        session_mode: SessionMode::Parallel,
        sessions_per_process: SLOTS,
        storage_gb: 50,
        force_destroy: true,
    };
    let fleet = client.create_fleet(&fleet_spec).await.unwrap();
    let zone = client
        .create_zone(&zone_spec(&fleet.id, MACHINES))
        .await
        .unwrap();
    let ready = Instant::now() + Duration::from_secs(30);
    while client.get_zone(&zone.id).await.unwrap().status != ResourceStatus::Available {
        assert!(Instant::now() < ready, "the zone never became AVAILABLE");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let answered: Arc<Mutex<Vec<Answered>>> = Arc::default();
    let ended = Arc::new(Mutex::new(0u32));
    // Every committed state is checked while the load runs.
    let sampler = {
        let stop = stop.clone();
        let database = server.database();
        tokio::task::spawn_blocking(move || {
            let mut wrong = Vec::new();
            let mut samples = 0;
            while !stop.load(Ordering::Relaxed) {
                wrong.extend(check_snapshot(&database));
                samples += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            (samples, wrong)
        })
    };
    let clients: Vec<_> = (0..12u64)
        .map(|index| {
            let client = client.clone();
            let stop = stop.clone();
            let answered = answered.clone();
            let ended = ended.clone();
            let fleet = fleet.id.clone();
            tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(seed ^ index);
                let mut mine: Vec<String> = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    if mine.is_empty() || (mine.len() < 6 && rng.gen_bool(0.6)) {
                        let sent = Instant::now();
                        let request = PlacementRequest {
                            zone: "eu".into(),
                            ..PlacementRequest::default()
                        };
                        match client.place_session(&fleet, &request).await {
                            Ok(session) => {
                                mine.push(session.id.clone());
                                answered.lock().unwrap().push(Answered { session, sent });
                            }
                            // No capacity (503) is a fine answer under this load.
                            Err(error) => assert!(
                                error.to_string().contains("503")
                                    || error.to_string().contains("no_capacity"),
                                "{error}"
                            ),
                        }
                    } else {
                        let id = mine.swap_remove(rng.gen_range(0..mine.len()));
                        client.end_session(&id).await.unwrap();
                        *ended.lock().unwrap() += 1;
                    }
                }
                mine
            })
        })
        .collect();

    // The operations, a little apart, while the clients run.
    let started = Instant::now();
    let at = |offset_ms: u64| {
        tokio::time::sleep_until((started + Duration::from_millis(offset_ms)).into())
    };
    at(800).await;
    let mut update = fleet_spec.clone();
    update.build_id = new_build.id.clone();
    client.update_fleet(&fleet.id, &update).await.unwrap();
    let build_changed = Instant::now();

    at(1600).await;
    let machines = client.fleet_machines(&fleet.id).await.unwrap().machines;
    let active: Vec<&Machine> = machines
        .iter()
        .filter(|m| m.status == MachineStatus::Active || m.status == MachineStatus::WaitingUpdate)
        .collect();
    assert!(active.len() >= 2, "{machines:#?}");
    let rebooted = active[0].id.clone();
    let taken_out: BTreeSet<String> = server
        .store
        .machine_processes(&rebooted)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.id)
        .collect();
    client.reboot_machine(&rebooted).await.unwrap();
    let reboot_done = Instant::now();

    at(2400).await;
    let revoked = active[1].id.clone();
    client.revoke_machine(&revoked).await.unwrap();
    let revoke_done = Instant::now();

    at(3200).await;
    let zone_now = client.get_zone(&zone.id).await.unwrap();
    let mut smaller = zone_spec(&fleet.id, MACHINES - 2);
    smaller.initial_server_processes = zone_now.spec.initial_server_processes.min(24);
    client.update_zone(&zone.id, &smaller).await.unwrap();

    at(5000).await;
    stop.store(true, Ordering::Relaxed);
    let mut open: Vec<String> = Vec::new();
    for task in clients {
        open.extend(task.await.unwrap());
    }
    let (samples, wrong) = sampler.await.unwrap();
    assert!(samples > 20, "{samples} snapshots");
    assert!(
        wrong.is_empty(),
        "committed states broke an invariant: {wrong:#?}"
    );

    let answered = answered.lock().unwrap().clone();
    let ended = *ended.lock().unwrap();
    eprintln!(
        "{} placements answered 201, {ended} ended, {samples} snapshots checked",
        answered.len()
    );
    assert!(
        answered.len() > 100 && ended > 50,
        "too little load to mean anything"
    );
    let mut by_build: HashMap<&str, u32> = HashMap::new();
    for Answered { session, sent } in &answered {
        *by_build.entry(session.build_id.as_str()).or_default() += 1;
        let stored = server
            .store
            .get_session(&session.id)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("a 201 that is not in the store: {session:?}"));
        assert_eq!(
            (&stored.process_id, &stored.machine_id, &stored.build_id),
            (&session.process_id, &session.machine_id, &session.build_id)
        );
        if *sent > build_changed {
            assert_eq!(
                session.build_id, new_build.id,
                "placed on the old build after the change: {session:?}"
            );
        }
        if *sent > reboot_done {
            assert!(
                !taken_out.contains(&session.process_id),
                "placed on a rebooted process: {session:?}"
            );
        }
        if *sent > revoke_done {
            assert_ne!(
                session.machine_id, revoked,
                "placed on the revoked machine: {session:?}"
            );
        }
    }
    eprintln!("sessions by build: {by_build:?}");
    assert!(
        by_build.contains_key(new_build.id.as_str()),
        "the new build took sessions"
    );

    // The rest of the sessions end; the zone settles at its smaller size.
    for id in open {
        client.end_session(&id).await.unwrap();
    }
    let settled = Instant::now() + Duration::from_secs(20);
    loop {
        let machines = client.fleet_machines(&fleet.id).await.unwrap().machines;
        let live = machines
            .iter()
            .filter(|m| {
                !matches!(
                    m.status,
                    MachineStatus::Terminated | MachineStatus::Unhealthy
                )
            })
            .count();
        if live as u32 == MACHINES - 2 {
            break;
        }
        assert!(
            Instant::now() < settled,
            "never scaled in to {}: {machines:#?}",
            MACHINES - 2
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let drift = server.store.picture_drift().await.unwrap();
    assert!(
        drift.is_empty(),
        "the writer's picture drifted from the database: {drift:#?}"
    );
    assert!(check_snapshot(&server.database()).is_empty());
    server.stop().await;
}
