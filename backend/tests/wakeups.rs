//! Targeted wake-ups through the real API: an agent's held sync wakes when its own
//! machine's desired state changes (a session placed on it), and not for another
//! machine's change; a placement waiting for capacity wakes when its zone gains some.
//!
//! The API is served without a reconciler (the machines here are the test's own), on
//! 127.0.0.1.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetform_api::agent::{AgentProcessState, ProcessReport, SyncRequest, SyncResponse};
use fleetform_api::*;
use fleetformd::api::{router, AppState};
use fleetformd::store::SqlStore;
use fleetformd::store::{MachineRecord, Store};
use fleetformd::zones::{token_hash, Demand};

const TOKEN: &str = "wakeups-admin";

struct Api {
    url: String,
    store: Arc<SqlStore>,
    _dir: tempfile::TempDir,
}

async fn serve() -> Api {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqlStore::open(&dir.path().join("w.db")).await.unwrap());
    let state = AppState::new(
        store.clone(),
        Arc::default(),
        TOKEN,
        Duration::from_secs(2),
        Arc::new(Demand::default()),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router(state)).await });
    Api {
        url,
        store,
        _dir: dir,
    }
}

/// A fleet in `mode`, a zone "eu", and two machines with their agent tokens.
async fn fleet_with_machines(
    api: &Api,
    mode: SessionMode,
) -> (Fleet, Vec<(MachineRecord, String)>) {
    let store = api.store.as_ref();
    store.insert_build(&support::build()).await.unwrap();
    let fleet = support::fleet("bld-1", mode);
    store.insert_fleet(&fleet).await.unwrap();
    let zone = Zone {
        id: "zone-1".into(),
        spec: ZoneSpec {
            fleet_id: fleet.id.clone(),
            name: "eu".into(),
            scaling_mode: ScalingMode::Fixed,
            initial_server_processes: 2,
            buffer_rules: vec![],
            free_slots_min: None,
            free_slots_max: None,
            cooldown_minutes: 0,
            placement_strategy: PlacementStrategy::Pack,
            data_centers: vec![DataCenterSpec {
                name: "dc".into(),
                location: "nowhere".into(),
                priority: 0,
                machine_type: MachineType::Vm,
                machine_models: vec![MachineModel {
                    instance_type: "m".into(),
                    processes_per_machine: 1,
                }],
                max_server_processes: Some(2),
                bare_metal_machines: None,
            }],
        }
        .into(),
        status: ResourceStatus::Available,
        created_at: "2026-01-01T00:00:00Z".into(),
    };
    store.insert_zone(&zone).await.unwrap();
    let mut machines = Vec::new();
    for m in 0..2 {
        let token = format!("fft_machine-{m}");
        let record = MachineRecord {
            id: format!("mch-{m}"),
            zone_id: zone.id.clone(),
            fleet_id: fleet.id.clone(),
            data_center: "dc".into(),
            location: "nowhere".into(),
            instance_type: "m".into(),
            processes_per_machine: 1,
            status: MachineStatus::Pending,
            build_id: "bld-1".into(),
            driver_ref: Some(format!("test-{m}")),
            address: None,
            agent_error: None,
            created_at_ms: 0,
            last_heartbeat_ms: None,
            target_processes: 1,
            terminating_since_ms: None,
            terminated_at_ms: None,
            termination_reason: None,
            bare_metal_id: None,
        };
        store
            .insert_machine(&record, &token_hash(&token))
            .await
            .unwrap();
        machines.push((record, token));
    }
    (fleet, machines)
}

fn report(m: usize, state: AgentProcessState, seq: u64) -> SyncRequest {
    SyncRequest {
        agent_pid: 10 + m as u32,
        address: "127.0.0.1".into(),
        report_seq: seq,
        processes: vec![ProcessReport {
            process_id: format!("proc-{m}"),
            port: 7000,
            pid: 1,
            state,
            build_id: "bld-1".into(),
            started_at: "2026-01-01T00:00:00Z".into(),
        }],
        ..SyncRequest::default()
    }
}

/// A held sync of machine `m`: how long it was held and what it answered.
async fn held_sync(
    url: &str,
    token: &str,
    m: usize,
    known: &SyncResponse,
    wait_ms: u32,
) -> (Duration, SyncResponse) {
    let agent = Client::new(url, token).unwrap();
    let request = SyncRequest {
        known_revision: Some(known.revision.clone()),
        wait_ms,
        ..report(m, AgentProcessState::Ready, 3)
    };
    let started = Instant::now();
    let answer = agent.agent_sync(&request).await.unwrap();
    (started.elapsed(), answer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_held_sync_wakes_for_its_own_machine_only() {
    let api = serve().await;
    let (fleet, machines) = fleet_with_machines(&api, SessionMode::Simple).await;
    // Both agents register with a READY process and learn their desired state.
    let mut known = Vec::new();
    for (m, (_, token)) in machines.iter().enumerate() {
        let agent = Client::new(&api.url, token).unwrap();
        known.push(
            agent
                .agent_sync(&report(m, AgentProcessState::Ready, 2))
                .await
                .unwrap(),
        );
    }
    let holds: Vec<_> = machines
        .iter()
        .enumerate()
        .map(|(m, (_, token))| {
            let (url, token, known) = (api.url.clone(), token.clone(), known[m].clone());
            tokio::spawn(async move { held_sync(&url, &token, m, &known, 3_000).await })
        })
        .collect();
    // Let both syncs be held, then place one session. The test watches each machine as
    // its agent's sync does, to see which the placement signals.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let changes = api.store.changes().clone();
    let watches: Vec<_> = machines
        .iter()
        .map(|(machine, _)| changes.watch_machine(&machine.id, Some(&fleet.id)))
        .collect();
    let admin = Client::new(&api.url, TOKEN).unwrap();
    let session = admin
        .place_session(
            &fleet.id,
            &PlacementRequest {
                zone: "eu".into(),
                ..PlacementRequest::default()
            },
        )
        .await
        .unwrap();
    let mut answers = Vec::new();
    for hold in holds {
        answers.push(hold.await.unwrap());
    }
    for (m, (held, answer)) in answers.iter().enumerate() {
        let mine = session.machine_id == machines[m].0.id;
        assert_eq!(
            watches[m].has_changed().unwrap(),
            mine,
            "machine {m} signalled by a placement on {}",
            session.machine_id
        );
        if mine {
            assert!(
                *held < Duration::from_millis(2_500),
                "its machine's sync was not woken by the placement ({held:?})"
            );
            assert!(
                answer.desired.sessions.contains_key(&session.process_id),
                "{answer:?}"
            );
        } else {
            assert!(
                *held >= Duration::from_millis(2_900),
                "another machine's sync woke for this placement ({held:?})"
            );
            assert_eq!(answer.revision, known[m].revision);
        }
    }
    drop(watches);
    assert_eq!(
        api.store.changes().watched_machines(),
        0,
        "no watch left behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_waiting_placement_wakes_when_its_zone_gains_capacity() {
    let api = serve().await;
    let (fleet, machines) = fleet_with_machines(&api, SessionMode::Simple).await;
    // One machine's process is still starting: no capacity yet.
    let agent = Client::new(&api.url, &machines[0].1).unwrap();
    agent
        .agent_sync(&report(0, AgentProcessState::Starting, 2))
        .await
        .unwrap();
    let admin = Client::new(&api.url, TOKEN).unwrap();
    let fleet_id = fleet.id.clone();
    let waiting = tokio::spawn(async move {
        let started = Instant::now();
        let session = admin
            .place_session(
                &fleet_id,
                &PlacementRequest {
                    zone: "eu".into(),
                    wait_seconds: Some(10),
                    ..PlacementRequest::default()
                },
            )
            .await;
        (started.elapsed(), session)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "placed with no ready process");
    agent
        .agent_sync(&report(0, AgentProcessState::Ready, 3))
        .await
        .unwrap();
    let (held, session) = waiting.await.unwrap();
    let session = session.unwrap();
    assert_eq!(session.process_id, "proc-0");
    assert!(held < Duration::from_secs(5), "woken late: {held:?}");
}
