//! `kill -9` of fleetformd at a random moment while clients place and end sessions: after
//! a restart every placement that was answered 201 is in the store, on the process it
//! named, every end answered ENDED stayed ended, and no slot holds two sessions (simple
//! mode: a process takes one session in its life). (Simulated machines do not outlive
//! their fleetformd: the restarted one finds them gone and their open sessions LOST, as it
//! would for cloud machines that died.)
//!
//! The moment comes from a seed (`FLEETFORM_KILL9_SEED`, printed). Bounded: a few
//! seconds of load on 127.0.0.1.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use fleetform_api::*;
use fleetform_e2e::*;
use rand::{Rng, SeedableRng};

const LOCATION: &str = r#"
[[location]]
name = "sim-kill9"
driver = "sim"
boot_seconds = 0.05
start_seconds = 0.05
shutdown_seconds = 0.05
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_kill_9_under_load_loses_no_answered_placement() -> Result<()> {
    let seed: u64 = std::env::var("FLEETFORM_KILL9_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    eprintln!("FLEETFORM_KILL9_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut server = Fleetformd::start_with_config(LOCATION)?;
    let client = server.client();
    let build = client
        .create_build(&BuildSpec {
            name: "kill9".into(),
            version: None,
            operating_system: OperatingSystem::Linux,
            source: "file:///opt/kill9".into(),
            sha256: None,
        })
        .await?;
    let fleet = client
        .create_fleet(&FleetSpec {
            name: "kill9".into(),
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
        .await?;
    let zone = client
        .create_zone(&ZoneSpec {
            fleet_id: fleet.id.clone(),
            name: "eu".into(),
            scaling_mode: ScalingMode::Fixed,
            initial_server_processes: 400,
            buffer_rules: vec![],
            free_slots_min: None,
            free_slots_max: None,
            cooldown_minutes: 0,
            placement_strategy: PlacementStrategy::Pack,
            data_centers: vec![DataCenterSpec {
                name: "dc-1".into(),
                location: "sim-kill9".into(),
                priority: 0,
                machine_type: MachineType::Vm,
                machine_models: vec![MachineModel {
                    instance_type: "m".into(),
                    processes_per_machine: 4,
                }],
                max_server_processes: Some(400),
                bare_metal_machines: None,
            }],
        })
        .await?;
    eventually(Duration::from_secs(60), "the zone AVAILABLE", || {
        let client = client.clone();
        let id = zone.id.clone();
        async move {
            Ok((client.get_zone(&id).await?.status == ResourceStatus::Available).then_some(()))
        }
    })
    .await?;

    let stop = Arc::new(AtomicBool::new(false));
    let placed: Arc<Mutex<Vec<Session>>> = Arc::default();
    let ended: Arc<Mutex<Vec<String>>> = Arc::default();
    let clients: Vec<_> = (0..16u64)
        .map(|index| {
            let client = client.clone();
            let stop = stop.clone();
            let placed = placed.clone();
            let ended = ended.clone();
            let fleet = fleet.id.clone();
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ (index + 1));
            tokio::spawn(async move {
                let mut mine: Vec<String> = Vec::new();
                let request = PlacementRequest {
                    zone: "eu".into(),
                    ..PlacementRequest::default()
                };
                while !stop.load(Ordering::Relaxed) {
                    if mine.is_empty() || rng.gen_bool(0.6) {
                        // Refused connections and 503s are expected around the kill.
                        if let Ok(session) = client.place_session(&fleet, &request).await {
                            mine.push(session.id.clone());
                            placed.lock().unwrap().push(session);
                        }
                    } else {
                        let id = mine.swap_remove(rng.gen_range(0..mine.len()));
                        // An end answered with ENDED (a session already LOST answers so).
                        if let Ok(session) = client.end_session(&id).await {
                            if session.status == SessionStatus::Ended {
                                ended.lock().unwrap().push(id);
                            }
                        }
                    }
                    if mine.is_empty() {
                        tokio::task::yield_now().await;
                    }
                }
            })
        })
        .collect();
    let kill_after = Duration::from_millis(rng.gen_range(500..2500));
    tokio::time::sleep(kill_after).await;
    server.kill9();
    let killed_at = placed.lock().unwrap().len();
    // The clients hit a dead server for a moment, then a restarted one.
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.restart()?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for task in clients {
        task.await?;
    }
    let placed = placed.lock().unwrap().clone();
    let ended = ended.lock().unwrap().clone();
    eprintln!(
        "killed after {kill_after:?} with {killed_at} placements answered; {} answered in all, {} ends",
        placed.len(),
        ended.len()
    );
    assert!(
        killed_at > 20,
        "too little load before the kill to mean anything"
    );

    let client = server.client();
    for session in &placed {
        let stored = client.get_session(&session.id).await?;
        assert_eq!(
            (&stored.process_id, &stored.machine_id),
            (&session.process_id, &session.machine_id),
            "{session:?}"
        );
    }
    for id in &ended {
        let stored = client.get_session(id).await?;
        assert_eq!(
            stored.status,
            SessionStatus::Ended,
            "an acknowledged end came undone: {stored:?}"
        );
    }
    let shared = count_rows(
        &server,
        "SELECT COUNT(*) FROM (SELECT process_id FROM sessions WHERE fleet_id = ? GROUP BY process_id HAVING COUNT(*) > 1)",
        &fleet.id,
    )
    .await?;
    assert_eq!(shared, 0, "a simple-mode process took two sessions");
    Ok(())
}
