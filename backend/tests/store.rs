//! The store's guarantees, as one suite over `dyn Store` so both databases run the same
//! checks: every `suite_*` function runs on SQLite (a file) and on Postgres (a fresh
//! database on the test run's throwaway server, see `fleetform-pgtest`).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use fleetform_api::agent::{AgentProcessState, ProcessExit, ProcessReport, SyncRequest};
use fleetform_api::*;
use fleetformd::store::SqlStore;
use fleetformd::store::{
    CrashFilter, Database, EventFilter, EventRecord, MachineRecord, PlaceArgs, PlaceOutcome, Store,
};

async fn sqlite() -> (tempfile::TempDir, Arc<dyn Store>) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqlStore::open(&dir.path().join("test.db")).await.unwrap();
    (dir, Arc::new(store))
}

async fn postgres() -> (String, Arc<dyn Store>) {
    let url = tokio::task::spawn_blocking(fleetform_pgtest::database)
        .await
        .unwrap();
    let store = SqlStore::open_with(&Database::Postgres(url.clone()), Default::default())
        .await
        .unwrap();
    (url, Arc::new(store))
}

fn postgres_tamper(url: String) -> Tamper {
    let read = url.clone();
    let locker = url.clone();
    Tamper {
        hold: Arc::new(move |how_long| {
            // The placement statement's UPDATE of processes waits for this lock.
            let url = locker.clone();
            let sql = format!(
                "BEGIN; LOCK TABLE processes IN EXCLUSIVE MODE; SELECT pg_sleep({}); COMMIT;",
                how_long.as_secs_f64()
            );
            let thread = std::thread::spawn(move || {
                fleetform_pgtest::psql(&url, &sql).unwrap();
            });
            let held = "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
                WHERE c.relname = 'processes' AND l.mode = 'ExclusiveLock' AND l.granted";
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while fleetform_pgtest::psql(&locker, held).unwrap() != "1" {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the lock was never held"
                );
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            thread
        }),
        exec: Arc::new(move |sql: &str| {
            fleetform_pgtest::psql(&url, sql).unwrap();
        }),
        value: Arc::new(move |sql: &str| {
            let out = fleetform_pgtest::psql(&read, sql).unwrap();
            out.parse()
                .unwrap_or_else(|_| panic!("{sql}: not an integer: {out:?}"))
        }),
    }
}

/// Writes to the database behind the store's back, as another writer would (a replica,
/// an operator's tool): what the store's in-memory picture does not know. The guard
/// tests use it to show that every decision the picture makes is checked again by its
/// statement.
#[derive(Clone)]
struct Tamper {
    exec: Arc<dyn Fn(&str) + Send + Sync>,
    value: Arc<dyn Fn(&str) -> i64 + Send + Sync>,
    /// Holds a lock that stops the store's next write for a while: returns once the
    /// lock is held, with the thread that releases it.
    hold: Arc<dyn Fn(std::time::Duration) -> std::thread::JoinHandle<()> + Send + Sync>,
}

impl Tamper {
    /// Runs statements.
    fn run(&self, sql: &str) {
        (self.exec)(sql)
    }

    /// One integer, read straight from the database.
    fn value(&self, sql: &str) -> i64 {
        (self.value)(sql)
    }

    /// Stops the store's writes for `how_long` (a lock another writer holds).
    fn hold(&self, how_long: std::time::Duration) -> std::thread::JoinHandle<()> {
        (self.hold)(how_long)
    }
}

fn sqlite_tamper(path: std::path::PathBuf) -> Tamper {
    let open = move || {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .unwrap();
        conn
    };
    let read = open.clone();
    let locker = open.clone();
    Tamper {
        hold: Arc::new(move |how_long| {
            // The writer's BEGIN IMMEDIATE waits for this write lock.
            let conn = locker();
            let (held, is_held) = std::sync::mpsc::channel();
            let thread = std::thread::spawn(move || {
                conn.execute_batch("BEGIN IMMEDIATE").unwrap();
                held.send(()).unwrap();
                std::thread::sleep(how_long);
                conn.execute_batch("COMMIT").unwrap();
            });
            is_held.recv().unwrap();
            thread
        }),
        exec: Arc::new(move |sql: &str| open().execute_batch(sql).unwrap()),
        value: Arc::new(move |sql: &str| read().query_row(sql, [], |row| row.get(0)).unwrap()),
    }
}

struct World {
    fleet: Fleet,
    zone: Zone,
    machines: Vec<MachineRecord>,
}

/// A fleet in `mode`, a zone, and `machines` active machines with `per_machine` READY
/// processes each.
async fn world(store: &dyn Store, mode: SessionMode, machines: usize, per_machine: usize) -> World {
    let build = support::build();
    store.insert_build(&build).await.unwrap();
    let fleet = support::fleet(&build.id, mode);
    store.insert_fleet(&fleet).await.unwrap();
    let zone = Zone {
        id: "zone-1".into(),
        spec: ZoneSpec {
            fleet_id: fleet.id.clone(),
            name: "eu".into(),
            scaling_mode: ScalingMode::Fixed,
            initial_server_processes: 1,
            buffer_rules: vec![],
            free_slots_min: None,
            free_slots_max: None,
            cooldown_minutes: 0,
            placement_strategy: PlacementStrategy::Pack,
            data_centers: vec![DataCenterSpec {
                name: "dc".into(),
                location: "local".into(),
                priority: 0,
                machine_type: MachineType::Vm,
                machine_models: vec![MachineModel {
                    instance_type: "local".into(),
                    processes_per_machine: per_machine as u32,
                }],
                max_server_processes: Some((machines * per_machine) as u32),
                bare_metal_machines: None,
            }],
        }
        .into(),
        status: ResourceStatus::New,
        created_at: "2026-01-01T00:00:00Z".into(),
    };
    store.insert_zone(&zone).await.unwrap();
    let mut records = Vec::new();
    for m in 0..machines {
        let record = MachineRecord {
            id: format!("mch-{m}"),
            zone_id: zone.id.clone(),
            fleet_id: fleet.id.clone(),
            data_center: "dc".into(),
            location: "local".into(),
            instance_type: "local".into(),
            processes_per_machine: per_machine as u32,
            status: MachineStatus::Pending,
            build_id: build.id.clone(),
            driver_ref: None,
            address: None,
            agent_error: None,
            created_at_ms: 0,
            last_heartbeat_ms: None,
            target_processes: per_machine as u32,
            terminating_since_ms: None,
            terminated_at_ms: None,
            termination_reason: None,
            bare_metal_id: None,
        };
        store
            .insert_machine(&record, &format!("hash-{m}"))
            .await
            .unwrap();
        let report = SyncRequest {
            agent_pid: 100 + m as u32,
            address: "127.0.0.1".into(),
            processes: (0..per_machine)
                .map(|p| process(&format!("proc-{m}-{p}"), AgentProcessState::Ready))
                .collect(),
            ..SyncRequest::default()
        };
        store.apply_agent_report(&record, &report, 1).await.unwrap();
        records.push(store.get_machine(&record.id).await.unwrap().unwrap());
    }
    World {
        fleet,
        zone,
        machines: records,
    }
}

/// Every machine of a fleet, one page.
fn every_machine() -> fleetformd::store::MachineFilter {
    fleetformd::store::MachineFilter {
        limit: 10_000,
        ..Default::default()
    }
}

/// Every process of a fleet, history included, one page.
fn every_process() -> fleetformd::store::ProcessFilter {
    fleetformd::store::ProcessFilter {
        limit: 10_000,
        ..Default::default()
    }
}

fn process(id: &str, state: AgentProcessState) -> ProcessReport {
    ProcessReport {
        process_id: id.into(),
        port: 7000,
        pid: 1,
        state,
        build_id: "bld-1".into(),
        started_at: "2026-01-01T00:00:00Z".into(),
    }
}

fn args(world: &World, session: &str, key: Option<&str>) -> PlaceArgs {
    PlaceArgs {
        fleet: world.fleet.id.clone(),
        zone: world.zone.spec.name.clone(),
        session_id: session.into(),
        max_players: None,
        properties: BTreeMap::new(),
        idempotency_key: key.map(str::to_string),
        latencies_ms: BTreeMap::new(),
        max_latency_ms: None,
        now_ms: 2,
    }
}

/// Whether a placement found no capacity.
fn no_capacity(outcome: &PlaceOutcome) -> bool {
    matches!(outcome, PlaceOutcome::NoCapacity { .. })
}

/// Moves the world's fleet to a new build `build_id` (created here).
async fn move_to_build(store: &dyn Store, world: &World, build_id: &str) -> Fleet {
    store
        .insert_build(&Build {
            id: build_id.into(),
            ..support::build()
        })
        .await
        .unwrap();
    let mut fleet = store.get_fleet(&world.fleet.id).await.unwrap().unwrap();
    fleet.build_id = build_id.into();
    store.update_fleet(&fleet).await.unwrap();
    fleet
}

async fn suite_concurrent_placements_never_share_a_simple_process(store: Arc<dyn Store>) {
    let world = Arc::new(world(store.as_ref(), SessionMode::Simple, 3, 2).await);
    let tasks: Vec<_> = (0..30)
        .map(|i| {
            let store = store.clone();
            let world = world.clone();
            tokio::spawn(async move {
                store
                    .place_session(args(&world, &format!("sess-{i}"), None))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut processes = BTreeSet::new();
    let mut placed = 0;
    for task in tasks {
        if let PlaceOutcome::Placed(session) = task.await.unwrap() {
            placed += 1;
            assert!(processes.insert(session.process_id.clone()), "{session:?}");
        }
    }
    assert_eq!(placed, 6);
}

async fn suite_parallel_mode_fills_a_process_before_the_next(store: Arc<dyn Store>) {
    let world = world(store.as_ref(), SessionMode::Parallel, 1, 2).await;
    let mut per_process: BTreeMap<String, u32> = BTreeMap::new();
    for i in 0..8 {
        match store
            .place_session(args(&world, &format!("s{i}"), None))
            .await
            .unwrap()
        {
            PlaceOutcome::Placed(session) => {
                *per_process.entry(session.process_id).or_default() += 1
            }
            other => panic!("placement {i}: {other:?}"),
        }
    }
    assert_eq!(
        per_process.values().copied().collect::<Vec<_>>(),
        vec![4, 4]
    );
    assert!(no_capacity(
        &store.place_session(args(&world, "s9", None)).await.unwrap()
    ));
    // Ending one frees its slot.
    store.end_session("s0", 3).await.unwrap();
    assert!(matches!(
        store
            .place_session(args(&world, "s10", None))
            .await
            .unwrap(),
        PlaceOutcome::Placed(_)
    ));
}

async fn suite_only_the_current_build_takes_new_sessions(store: Arc<dyn Store>) {
    let world = world(store.as_ref(), SessionMode::Parallel, 1, 1).await;
    let PlaceOutcome::Placed(first) = store.place_session(args(&world, "s1", None)).await.unwrap()
    else {
        panic!("placement on the first build")
    };
    // The fleet moves to bld-2: the bld-1 process keeps its session and takes no other.
    move_to_build(store.as_ref(), &world, "bld-2").await;
    let on = |session: &str| args(&world, session, None);
    assert!(no_capacity(&store.place_session(on("s2")).await.unwrap()));
    let report = SyncRequest {
        agent_pid: 100,
        address: "127.0.0.1".into(),
        processes: vec![
            process("proc-0-0", AgentProcessState::Ready),
            ProcessReport {
                build_id: "bld-2".into(),
                port: 7001,
                ..process("proc-0-new", AgentProcessState::Ready)
            },
        ],
        ..SyncRequest::default()
    };
    store
        .apply_agent_report(&world.machines[0], &report, 3)
        .await
        .unwrap();
    let PlaceOutcome::Placed(second) = store.place_session(on("s3")).await.unwrap() else {
        panic!("placement on the new build")
    };
    assert_eq!(second.process_id, "proc-0-new");
    assert_eq!(second.build_id, "bld-2");
    let first = store.get_session(&first.id).await.unwrap().unwrap();
    assert_eq!(first.status, SessionStatus::Active, "never interrupted");
}

async fn suite_a_process_past_its_restart_age_takes_no_new_session(store: Arc<dyn Store>) {
    let world = world(store.as_ref(), SessionMode::Parallel, 1, 1).await;
    let started = time::OffsetDateTime::parse(
        "2026-01-01T00:00:00Z",
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap()
    .unix_timestamp()
        * 1000;
    let mut fleet = world.fleet.clone();
    fleet.process_restart_hours = 1;
    store.update_fleet(&fleet).await.unwrap();
    let at = |session: &str, now_ms: i64| PlaceArgs {
        now_ms,
        ..args(&world, session, None)
    };
    assert!(matches!(
        store
            .place_session(at("young", started + 3_600_000))
            .await
            .unwrap(),
        PlaceOutcome::Placed(_)
    ));
    assert!(no_capacity(
        &store
            .place_session(at("old", started + 3_600_001))
            .await
            .unwrap()
    ));
}

async fn suite_idempotency_key_returns_the_first_answer(store: Arc<dyn Store>) {
    let world = world(store.as_ref(), SessionMode::Simple, 1, 2).await;
    let PlaceOutcome::Placed(first) = store
        .place_session(args(&world, "a", Some("k")))
        .await
        .unwrap()
    else {
        panic!("first placement")
    };
    let again = store
        .place_session(args(&world, "b", Some("k")))
        .await
        .unwrap();
    assert_eq!(again, PlaceOutcome::Repeated(first));
    assert!(store.get_session("b").await.unwrap().is_none());
}

async fn suite_repeated_agent_reports_are_idempotent(store: Arc<dyn Store>) {
    let world = world(store.as_ref(), SessionMode::Simple, 1, 2).await;
    let machine = &world.machines[0];
    let PlaceOutcome::Placed(session) = store.place_session(args(&world, "s", None)).await.unwrap()
    else {
        panic!("placement")
    };
    // The game ends its session and its process exits; the agent resends the same report
    // (its first answer was lost) with the process gone from the live list.
    let survivor = ["proc-0-0", "proc-0-1"]
        .into_iter()
        .find(|p| *p != session.process_id)
        .unwrap();
    let report = SyncRequest {
        agent_pid: 100,
        address: "127.0.0.1".into(),
        processes: vec![process(survivor, AgentProcessState::Ready)],
        exited: vec![ProcessExit {
            process_id: session.process_id.clone(),
            exit_code: Some(0),
            signal: None,
            requested: true,
            exited_at: "2026-01-01T00:00:01Z".into(),
            ..ProcessExit::default()
        }],
        ended_sessions: vec![session.id.clone()],
        ..SyncRequest::default()
    };
    let first = store.apply_agent_report(machine, &report, 5).await.unwrap();
    let again = store.apply_agent_report(machine, &report, 6).await.unwrap();
    assert_eq!(first.sessions_ended, 1);
    assert_eq!(
        again.sessions_ended, 0,
        "a resent report ends nothing twice"
    );
    let ended = store.get_session(&session.id).await.unwrap().unwrap();
    assert_eq!(ended.status, SessionStatus::Ended, "ended, not lost");
    // A late report that still lists the exited process does not revive it.
    let late = SyncRequest {
        processes: vec![process(&session.process_id, AgentProcessState::Ready)],
        ..report.clone()
    };
    store.apply_agent_report(machine, &late, 7).await.unwrap();
    let live: Vec<String> = store
        .machine_processes(&machine.id)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.id)
        .collect();
    assert!(!live.contains(&session.process_id), "{live:?}");
}

/// A report ending more sessions than one job takes (a packed parallel-mode machine) ends
/// every one of them, counts each once, and leaves the picture agreeing with the store.
async fn suite_a_report_with_many_ended_sessions_ends_them_all(store: Arc<dyn Store>) {
    let mut world = world(store.as_ref(), SessionMode::Parallel, 1, 1).await;
    world.fleet.sessions_per_process = 2000;
    store.update_fleet(&world.fleet).await.unwrap();
    let count = 700; // more than two jobs' worth of ends
    let mut ids = Vec::new();
    for i in 0..count {
        let PlaceOutcome::Placed(session) = store
            .place_session(args(&world, &format!("s{i:04}"), None))
            .await
            .unwrap()
        else {
            panic!("placement {i}")
        };
        ids.push(session.id);
    }
    let report = SyncRequest {
        agent_pid: 100,
        address: "127.0.0.1".into(),
        processes: vec![process("proc-0-0", AgentProcessState::Ready)],
        ended_sessions: ids.clone(),
        report_seq: 1,
        ..SyncRequest::default()
    };
    let machine = &world.machines[0];
    let outcome = store.apply_agent_report(machine, &report, 5).await.unwrap();
    assert_eq!(outcome.sessions_ended, count);
    assert!(outcome.placement_changed);
    for id in &ids {
        let session = store.get_session(id).await.unwrap().unwrap();
        assert_eq!(session.status, SessionStatus::Ended, "{id}");
    }
    let processes = store.machine_processes(&machine.id).await.unwrap();
    assert_eq!(processes[0].active_sessions, 0);
    let again = SyncRequest {
        report_seq: 2,
        ..report.clone()
    };
    let outcome = store.apply_agent_report(machine, &again, 6).await.unwrap();
    assert_eq!(
        outcome.sessions_ended, 0,
        "a resent report ends nothing twice"
    );
    // The picture freed every slot: the next session is the process's only one.
    let PlaceOutcome::Placed(next) = store
        .place_session(args(&world, "next", None))
        .await
        .unwrap()
    else {
        panic!("placement after the ends")
    };
    assert_eq!(next.process_id, "proc-0-0");
    let processes = store.machine_processes(&machine.id).await.unwrap();
    assert_eq!(processes[0].active_sessions, 1);
}

async fn suite_a_process_that_dies_loses_its_session(store: Arc<dyn Store>) {
    let world = world(store.as_ref(), SessionMode::Simple, 1, 1).await;
    let PlaceOutcome::Placed(session) = store.place_session(args(&world, "s", None)).await.unwrap()
    else {
        panic!("placement")
    };
    let report = SyncRequest {
        agent_pid: 100,
        address: "127.0.0.1".into(),
        processes: vec![],
        exited: vec![ProcessExit {
            process_id: session.process_id.clone(),
            exit_code: None,
            signal: Some(11),
            requested: false,
            exited_at: "2026-01-01T00:00:01Z".into(),
            ..ProcessExit::default()
        }],
        ..SyncRequest::default()
    };
    store
        .apply_agent_report(&world.machines[0], &report, 5)
        .await
        .unwrap();
    let lost = store.get_session(&session.id).await.unwrap().unwrap();
    assert_eq!(lost.status, SessionStatus::Lost);
    assert!(lost.reason.unwrap().contains("signal 11"));
}

async fn suite_idle_termination_spares_a_busy_machine(store: Arc<dyn Store>) {
    let world = world(store.as_ref(), SessionMode::Simple, 2, 1).await;
    let PlaceOutcome::Placed(session) = store.place_session(args(&world, "s", None)).await.unwrap()
    else {
        panic!("placement")
    };
    let busy = session.machine_id.clone();
    let idle = world
        .machines
        .iter()
        .find(|m| m.id != busy)
        .unwrap()
        .id
        .clone();
    assert!(!store.begin_idle_termination(&busy).await.unwrap());
    assert!(store.begin_idle_termination(&idle).await.unwrap());
    assert_eq!(
        store.get_machine(&busy).await.unwrap().unwrap().status,
        MachineStatus::Active
    );
    assert_eq!(
        store.get_machine(&idle).await.unwrap().unwrap().status,
        MachineStatus::Terminating
    );
}

async fn suite_removing_a_zone_leaves_no_rows(store: Arc<dyn Store>) {
    let world = world(store.as_ref(), SessionMode::Simple, 2, 2).await;
    store.place_session(args(&world, "s", None)).await.unwrap();
    assert!(
        store.delete_fleet(&world.fleet.id).await.is_err(),
        "zones first"
    );
    assert!(
        !store.remove_zone(&world.zone.id).await.unwrap(),
        "only a zone being deleted"
    );
    store
        .begin_zone_deletion(&world.zone.id, true)
        .await
        .unwrap();
    assert!(
        !store.remove_zone(&world.zone.id).await.unwrap(),
        "only once its machines ended"
    );
    for machine in &world.machines {
        store.machine_gone(&machine.id, "deleted", 3).await.unwrap();
    }
    assert!(store.remove_zone(&world.zone.id).await.unwrap());
    store.delete_fleet(&world.fleet.id).await.unwrap();
    assert!(store.get_zone(&world.zone.id).await.unwrap().is_none());
    assert!(store
        .fleet_machines(&world.fleet.id, &every_machine())
        .await
        .unwrap()
        .items
        .is_empty());
    assert!(store
        .fleet_processes(&world.fleet.id, &every_process())
        .await
        .unwrap()
        .items
        .is_empty());
    assert!(store.get_session("s").await.unwrap().is_none());
}

async fn suite_zone_deletion_is_atomic_with_the_session_check(store: Arc<dyn Store>) {
    let world = world(store.as_ref(), SessionMode::Simple, 1, 2).await;
    store.place_session(args(&world, "s", None)).await.unwrap();
    // Active session and no force_destroy: refused, and the zone still takes sessions.
    assert!(store
        .begin_zone_deletion(&world.zone.id, false)
        .await
        .is_err());
    assert!(
        !store
            .get_zone(&world.zone.id)
            .await
            .unwrap()
            .unwrap()
            .deleting
    );
    // With force: deleting, and from then on no placement and no spec update.
    store
        .begin_zone_deletion(&world.zone.id, true)
        .await
        .unwrap();
    assert!(matches!(
        store.place_session(args(&world, "t", None)).await,
        Err(fleetformd::Error::Conflict {
            code: "zone_deleting",
            ..
        })
    ));
    assert!(store.update_zone(&world.zone).await.is_err());
}

async fn suite_stale_and_late_reports_change_nothing(store: Arc<dyn Store>) {
    let world = world(store.as_ref(), SessionMode::Simple, 1, 1).await;
    let machine = &world.machines[0];
    let newer = SyncRequest {
        report_seq: 20,
        agent_pid: 100,
        address: "127.0.0.1".into(),
        processes: vec![process("proc-new", AgentProcessState::Ready)],
        ..SyncRequest::default()
    };
    store.apply_agent_report(machine, &newer, 5).await.unwrap();
    // An older report (a cancelled long-poll applied late) still lists the old process and
    // not the new one: ignored.
    let older = SyncRequest {
        report_seq: 10,
        processes: vec![process("proc-0-0", AgentProcessState::Ready)],
        ..newer.clone()
    };
    let stale = store.apply_agent_report(machine, &older, 6).await.unwrap();
    assert!(!stale.placement_changed);
    let live: Vec<String> = store
        .machine_processes(&machine.id)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.id)
        .collect();
    assert_eq!(live, vec!["proc-new".to_string()]);
    // A machine that is gone refuses its agent.
    store.machine_gone(&machine.id, "test", 7).await.unwrap();
    let after = SyncRequest {
        report_seq: 30,
        ..newer.clone()
    };
    assert!(store.apply_agent_report(machine, &after, 8).await.is_err());
    assert_eq!(
        store
            .get_machine(&machine.id)
            .await
            .unwrap()
            .unwrap()
            .status,
        MachineStatus::Terminated
    );
}

async fn suite_termination_is_recorded_once(store: Arc<dyn Store>) {
    let world = world(store.as_ref(), SessionMode::Simple, 2, 1).await;
    let idle = &world.machines[0].id;
    let fresh = store.get_machine(idle).await.unwrap().unwrap();
    assert_eq!(
        (
            fresh.terminating_since_ms,
            fresh.terminated_at_ms,
            fresh.termination_reason.clone()
        ),
        (None, None, None)
    );

    assert!(store.begin_idle_termination(idle).await.unwrap());
    let since = store
        .get_machine(idle)
        .await
        .unwrap()
        .unwrap()
        .terminating_since_ms
        .expect("terminating_since set by begin_idle_termination");
    // Marking it again (a later pass, a zone deletion) keeps the first moment.
    assert!(store.begin_idle_termination(idle).await.unwrap());
    store
        .set_machine_status(idle, MachineStatus::Terminating)
        .await
        .unwrap();
    let again = store.get_machine(idle).await.unwrap().unwrap();
    assert_eq!(again.terminating_since_ms, Some(since));
    assert_eq!(again.terminated_at_ms, None);

    store.machine_gone(idle, "scaled in", 50).await.unwrap();
    store
        .machine_gone(idle, "driver lost it", 60)
        .await
        .unwrap();
    let gone = store.get_machine(idle).await.unwrap().unwrap();
    assert_eq!(gone.status, MachineStatus::Terminated);
    assert_eq!(gone.terminating_since_ms, Some(since));
    assert_eq!(gone.terminated_at_ms, Some(50), "the first end is kept");
    assert_eq!(gone.termination_reason.as_deref(), Some("scaled in"));
    // A gone machine stays gone.
    assert!(!store.begin_idle_termination(idle).await.unwrap());
    store
        .set_machine_status(idle, MachineStatus::Terminating)
        .await
        .unwrap();
    assert_eq!(
        store.get_machine(idle).await.unwrap().unwrap().status,
        MachineStatus::Terminated
    );

    // set_machine_status records terminating_since too; a machine that ends without
    // terminating (a failed launch) has none.
    let other = &world.machines[1].id;
    store
        .set_machine_status(other, MachineStatus::Terminating)
        .await
        .unwrap();
    assert!(store
        .get_machine(other)
        .await
        .unwrap()
        .unwrap()
        .terminating_since_ms
        .is_some());
    let listed = store
        .fleet_machines(&world.fleet.id, &every_machine())
        .await
        .unwrap()
        .items;
    assert_eq!(listed.len(), 2, "TERMINATED machines are still listed");
}

async fn suite_machine_gone_without_terminating(store: Arc<dyn Store>) {
    let world = world(store.as_ref(), SessionMode::Simple, 1, 1).await;
    let machine = &world.machines[0].id;
    store
        .machine_gone(machine, "launch failed: boom", 9)
        .await
        .unwrap();
    let gone = store.get_machine(machine).await.unwrap().unwrap();
    assert_eq!(gone.terminating_since_ms, None);
    assert_eq!(gone.terminated_at_ms, Some(9));
    assert_eq!(
        gone.termination_reason.as_deref(),
        Some("launch failed: boom")
    );
}

async fn suite_an_unhealthy_machine_loses_its_sessions_and_stays_ended(store: Arc<dyn Store>) {
    let world = world(store.as_ref(), SessionMode::Simple, 1, 1).await;
    let PlaceOutcome::Placed(session) = store.place_session(args(&world, "s", None)).await.unwrap()
    else {
        panic!("placement")
    };
    let id = world.machines[0].id.clone();
    store
        .machine_unhealthy(&id, "no heartbeat", at(10))
        .await
        .unwrap();
    let machine = store.get_machine(&id).await.unwrap().unwrap();
    assert_eq!(machine.status, MachineStatus::Unhealthy);
    assert_eq!(machine.terminated_at_ms, Some(at(10)));
    assert_eq!(machine.termination_reason.as_deref(), Some("no heartbeat"));
    let lost = store.get_session(&session.id).await.unwrap().unwrap();
    assert_eq!(lost.status, SessionStatus::Lost);
    assert_eq!(lost.reason.as_deref(), Some("no heartbeat"));
    assert!(store
        .zone_observation("zone-1")
        .await
        .unwrap()
        .machines
        .is_empty());
    // An end is final: neither a later end, a status change nor a revoke moves it.
    store.machine_gone(&id, "gone", at(20)).await.unwrap();
    store
        .set_machine_status(&id, MachineStatus::Terminating)
        .await
        .unwrap();
    assert_eq!(
        store.revoke_machine(&id, "revoked", at(30)).await.unwrap(),
        None
    );
    let machine = store.get_machine(&id).await.unwrap().unwrap();
    assert_eq!(machine.status, MachineStatus::Unhealthy);
    assert_eq!(machine.termination_reason.as_deref(), Some("no heartbeat"));
    // Its agent is refused.
    let report = SyncRequest {
        agent_pid: 100,
        address: "127.0.0.1".into(),
        ..SyncRequest::default()
    };
    assert!(store
        .apply_agent_report(&machine, &report, at(40))
        .await
        .is_err());
}

async fn suite_a_revoke_loses_the_sessions_at_once(store: Arc<dyn Store>) {
    let world = world(store.as_ref(), SessionMode::Parallel, 1, 1).await;
    let mut sessions = Vec::new();
    for name in ["a", "b"] {
        let PlaceOutcome::Placed(session) =
            store.place_session(args(&world, name, None)).await.unwrap()
        else {
            panic!("placement {name}")
        };
        sessions.push(session);
    }
    let id = world.machines[0].id.clone();
    assert_eq!(
        store.revoke_machine(&id, "revoked", at(5)).await.unwrap(),
        Some(2)
    );
    for session in &sessions {
        let lost = store.get_session(&session.id).await.unwrap().unwrap();
        assert_eq!(lost.status, SessionStatus::Lost);
        assert_eq!(lost.reason.as_deref(), Some("revoked"));
    }
    let machine = store.get_machine(&id).await.unwrap().unwrap();
    assert_eq!(machine.status, MachineStatus::Terminating);
    assert_eq!(machine.terminating_since_ms, Some(at(5)));
    assert_eq!(machine.termination_reason.as_deref(), Some("revoked"));
    // A terminating machine takes no new session.
    assert!(matches!(
        store.place_session(args(&world, "c", None)).await.unwrap(),
        PlaceOutcome::NoCapacity { .. }
    ));
    assert_eq!(
        store.revoke_machine("mch-none", "x", at(6)).await.unwrap(),
        None
    );
}

fn event(level: EventLevel, producer: EventProducer, code: &str, message: &str) -> EventRecord {
    EventRecord::new(level, producer, code, message)
}

async fn suite_events_round_trip_newest_first(store: Arc<dyn Store>) {
    assert!(store
        .list_events(&EventFilter::default())
        .await
        .unwrap()
        .items
        .is_empty());
    let first = event(
        EventLevel::Info,
        EventProducer::Zone,
        "ZONE_SCALED_OUT",
        "zone eu launched 2 machines",
    )
    .fleet("flt-1")
    .zone("zone-1")
    .at(1_000);
    let second = event(
        EventLevel::Warning,
        EventProducer::Machine,
        "MACHINE_MODEL_UNAVAILABLE",
        "No capacity for c5.large",
    )
    .fleet("flt-1")
    .zone("zone-1")
    .machine("mch-1")
    // Earlier `at` than `first`: order is insertion order, not the clock.
    .at(500);
    assert!(first.id.starts_with("evt-"));
    assert_ne!(first.id, second.id);
    store.insert_event(&first).await.unwrap();
    store.insert_event(&second).await.unwrap();
    let all = store
        .list_events(&EventFilter::default())
        .await
        .unwrap()
        .items;
    assert_eq!(all, vec![second.clone(), first.clone()]);
    // The same id twice is refused.
    assert!(store.insert_event(&first).await.is_err());
}

async fn suite_events_filter(store: Arc<dyn Store>) {
    let events = [
        event(
            EventLevel::Info,
            EventProducer::Fleet,
            "FLEET_CREATED",
            "fleet f created",
        )
        .fleet("flt-1"),
        event(
            EventLevel::Info,
            EventProducer::Zone,
            "ZONE_SCALED_OUT",
            "zone eu: +2 machines",
        )
        .fleet("flt-1")
        .zone("zone-1"),
        event(
            EventLevel::Warning,
            EventProducer::Machine,
            "MACHINE_MODEL_UNAVAILABLE",
            "No Capacity for c5.large; trying m5.large",
        )
        .fleet("flt-1")
        .zone("zone-1")
        .machine("mch-1"),
        event(
            EventLevel::Error,
            EventProducer::Machine,
            "MACHINE_LAUNCH_FAILED",
            "launch of 100%_sure failed",
        )
        .fleet("flt-2")
        .zone("zone-2")
        .machine("mch-2"),
    ];
    for event in &events {
        store.insert_event(event).await.unwrap();
    }
    let codes = |filter: EventFilter| {
        let store = store.clone();
        async move {
            store
                .list_events(&filter)
                .await
                .unwrap()
                .items
                .into_iter()
                .map(|e| e.code)
                .collect::<Vec<_>>()
        }
    };
    #[rustfmt::skip]
    let cases: Vec<(&str, EventFilter, Vec<&str>)> = vec![
        ("no filter: all, newest first", EventFilter::default(),
            vec!["MACHINE_LAUNCH_FAILED", "MACHINE_MODEL_UNAVAILABLE", "ZONE_SCALED_OUT", "FLEET_CREATED"]),
        ("level", EventFilter { level: Some(EventLevel::Warning), ..Default::default() },
            vec!["MACHINE_MODEL_UNAVAILABLE"]),
        ("producer", EventFilter { producer: Some(EventProducer::Machine), ..Default::default() },
            vec!["MACHINE_LAUNCH_FAILED", "MACHINE_MODEL_UNAVAILABLE"]),
        ("fleet", EventFilter { fleet_id: Some("flt-1".into()), ..Default::default() },
            vec!["MACHINE_MODEL_UNAVAILABLE", "ZONE_SCALED_OUT", "FLEET_CREATED"]),
        ("zone", EventFilter { zone_id: Some("zone-1".into()), ..Default::default() },
            vec!["MACHINE_MODEL_UNAVAILABLE", "ZONE_SCALED_OUT"]),
        ("machine", EventFilter { machine_id: Some("mch-2".into()), ..Default::default() },
            vec!["MACHINE_LAUNCH_FAILED"]),
        ("text, case-insensitive, in the message", EventFilter { text: Some("no capacity".into()), ..Default::default() },
            vec!["MACHINE_MODEL_UNAVAILABLE"]),
        ("text in the code", EventFilter { text: Some("scaled_out".into()), ..Default::default() },
            vec!["ZONE_SCALED_OUT"]),
        ("text with LIKE wildcards is literal", EventFilter { text: Some("100%_".into()), ..Default::default() },
            vec!["MACHINE_LAUNCH_FAILED"]),
        ("a lone % matches only a literal %", EventFilter { text: Some("%".into()), ..Default::default() },
            vec!["MACHINE_LAUNCH_FAILED"]),
        ("text matching nothing", EventFilter { text: Some("nothing like it".into()), ..Default::default() },
            vec![]),
        ("filters combine", EventFilter { zone_id: Some("zone-1".into()), producer: Some(EventProducer::Zone), ..Default::default() },
            vec!["ZONE_SCALED_OUT"]),
        ("limit keeps the newest", EventFilter { limit: 2, ..Default::default() },
            vec!["MACHINE_LAUNCH_FAILED", "MACHINE_MODEL_UNAVAILABLE"]),
    ];
    for (name, filter, want) in cases {
        assert_eq!(codes(filter).await, want, "{name}");
    }
}

async fn suite_events_outlive_their_zone(store: Arc<dyn Store>) {
    let world = world(store.as_ref(), SessionMode::Simple, 1, 1).await;
    let machine = &world.machines[0].id;
    store
        .insert_event(
            &event(
                EventLevel::Info,
                EventProducer::Machine,
                "MACHINE_TERMINATED",
                "gone",
            )
            .fleet(&world.fleet.id)
            .zone(&world.zone.id)
            .machine(machine),
        )
        .await
        .unwrap();
    store
        .begin_zone_deletion(&world.zone.id, true)
        .await
        .unwrap();
    store.machine_gone(machine, "gone", 3).await.unwrap();
    assert!(store.remove_zone(&world.zone.id).await.unwrap());
    store.delete_fleet(&world.fleet.id).await.unwrap();
    let left = store
        .list_events(&EventFilter {
            machine_id: Some(machine.clone()),
            ..EventFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(left.items.len(), 1);
}

/// Unix ms of `2026-01-01T00:00:00Z` plus `secs` seconds.
fn at(secs: i64) -> i64 {
    1_767_225_600_000 + secs * 1000
}

fn rfc3339(ms: i64) -> String {
    fleetformd::time::rfc3339(ms)
}

/// An exit of `process_id` at `exit_s` (seconds after 2026-01-01T00:00:00Z) of a process
/// started at `started_s`, with an exit code or a signal.
fn exit(
    process_id: &str,
    code: Option<i32>,
    signal: Option<i32>,
    started_s: i64,
    exit_s: i64,
) -> ProcessExit {
    ProcessExit {
        process_id: process_id.into(),
        exit_code: code,
        signal,
        requested: false,
        exited_at: rfc3339(at(exit_s)),
        build_id: Some("bld-1".into()),
        started_at: Some(rfc3339(at(started_s))),
        output_tail: vec![format!("{process_id} says goodbye")],
        core_dump: None,
    }
}

/// A report from machine `m` of `world` that lists no live process and carries `exited`.
fn exits_report(exited: Vec<ProcessExit>) -> SyncRequest {
    SyncRequest {
        agent_pid: 100,
        address: "127.0.0.1".into(),
        exited,
        ..SyncRequest::default()
    }
}

async fn suite_crashes_are_recorded_with_their_report(store: Arc<dyn Store>) {
    let world = world(store.as_ref(), SessionMode::Simple, 2, 2).await;
    let machine = &world.machines[0];
    let mut segfault = exit("proc-0-0", None, Some(11), 0, 5);
    segfault.core_dump = Some("/work/logs/proc-0-0.core".into());
    segfault.output_tail = vec!["loading map".into(), "segfault".into()];
    let requested_kill = ProcessExit {
        requested: true,
        ..exit("proc-0-1", None, Some(15), 0, 5)
    };
    let report = SyncRequest {
        processes: vec![],
        ..exits_report(vec![
            segfault.clone(),
            requested_kill,
            // Exited 0 on its own: not a crash.
            exit("proc-0-x", Some(0), None, 1, 5),
            // Never reported alive (it died at start): still a crash of this machine.
            exit("proc-0-early", Some(3), None, 4, 5),
            // Another machine's process: not this agent's to report.
            exit("proc-1-0", Some(3), None, 0, 5),
        ])
    };
    store
        .apply_agent_report(machine, &report, at(6))
        .await
        .unwrap();
    // The first answer was lost: the same report again records nothing twice.
    store
        .apply_agent_report(machine, &report, at(7))
        .await
        .unwrap();
    let crashes = store
        .list_crashes(&CrashFilter::default())
        .await
        .unwrap()
        .items;
    let ids: Vec<&str> = crashes.iter().map(|c| c.process_id.as_str()).collect();
    assert_eq!(ids, ["proc-0-early", "proc-0-0"], "newest first");
    let recorded = &crashes[1];
    assert!(recorded.id.starts_with("crash-"), "{}", recorded.id);
    assert_eq!(
        (
            recorded.fleet_id.as_str(),
            recorded.zone_id.as_str(),
            recorded.machine_id.as_str(),
            recorded.build_id.as_str()
        ),
        (
            world.fleet.id.as_str(),
            world.zone.id.as_str(),
            machine.id.as_str(),
            "bld-1"
        )
    );
    assert_eq!((recorded.exit_code, recorded.signal), (None, Some(11)));
    assert_eq!(recorded.at_ms, at(5));
    assert_eq!(recorded.started_at_ms, Some(at(0)));
    assert_eq!(recorded.output_tail, segfault.output_tail);
    assert_eq!(
        recorded.core_dump.as_deref(),
        Some("/work/logs/proc-0-0.core")
    );
    assert_eq!(crashes[0].exit_code, Some(3));
    // The crashed process is CRASHED, the other machine's still live.
    let processes = store
        .fleet_processes(&world.fleet.id, &every_process())
        .await
        .unwrap()
        .items;
    let state = |id: &str| processes.iter().find(|p| p.id == id).map(|p| p.state);
    assert_eq!(
        state("proc-0-0"),
        Some(fleetformd::store::ProcessState::Crashed)
    );
    assert!(state("proc-1-0").unwrap().is_live());

    // An agent clock ahead of fleetformd's does not put a crash in the future, and an
    // exit from an older agent (no build, no start, no output) is still recorded.
    let old_agent = ProcessExit {
        process_id: "proc-1-1".into(),
        exit_code: Some(139),
        exited_at: rfc3339(at(3600)),
        ..ProcessExit::default()
    };
    store
        .apply_agent_report(&world.machines[1], &exits_report(vec![old_agent]), at(8))
        .await
        .unwrap();
    let newest = &store
        .list_crashes(&CrashFilter::default())
        .await
        .unwrap()
        .items[0];
    assert_eq!(newest.process_id, "proc-1-1");
    assert_eq!(newest.at_ms, at(8));
    assert_eq!(
        newest.build_id, "bld-1",
        "the process's build, from the store"
    );
    assert_eq!(newest.started_at_ms, Some(at(0)));
    assert!(newest.output_tail.is_empty());
}

async fn suite_crash_filters(store: Arc<dyn Store>) {
    let world = world(store.as_ref(), SessionMode::Simple, 2, 0).await;
    let other_build = ProcessExit {
        build_id: Some("bld-2".into()),
        ..exit("p-b2", Some(3), None, 0, 1)
    };
    store
        .apply_agent_report(
            &world.machines[0],
            &exits_report(vec![exit("p-a", Some(3), None, 100, 101), other_build]),
            at(200),
        )
        .await
        .unwrap();
    store
        .apply_agent_report(
            &world.machines[1],
            &exits_report(vec![exit("p-c", None, Some(6), 100, 102)]),
            at(201),
        )
        .await
        .unwrap();
    let list = |filter: CrashFilter| {
        let store = store.clone();
        async move {
            store
                .list_crashes(&filter)
                .await
                .unwrap()
                .items
                .into_iter()
                .map(|c| c.process_id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        list(CrashFilter::default()).await,
        ["p-c", "p-b2", "p-a"],
        "newest first, in the order recorded"
    );
    assert_eq!(
        list(CrashFilter {
            machine_id: Some(world.machines[0].id.clone()),
            ..CrashFilter::default()
        })
        .await,
        ["p-b2", "p-a"]
    );
    assert_eq!(
        list(CrashFilter {
            build_id: Some("bld-2".into()),
            ..CrashFilter::default()
        })
        .await,
        ["p-b2"]
    );
    assert_eq!(
        list(CrashFilter {
            fleet_id: Some(world.fleet.id.clone()),
            zone_id: Some(world.zone.id.clone()),
            build_id: Some("bld-1".into()),
            ..CrashFilter::default()
        })
        .await,
        ["p-c", "p-a"]
    );
    assert_eq!(
        list(CrashFilter {
            limit: 1,
            ..CrashFilter::default()
        })
        .await,
        ["p-c"]
    );
    for nothing in [
        CrashFilter {
            fleet_id: Some("flt-other".into()),
            ..CrashFilter::default()
        },
        CrashFilter {
            zone_id: Some("zone-other".into()),
            ..CrashFilter::default()
        },
        CrashFilter {
            machine_id: Some("mch-other".into()),
            ..CrashFilter::default()
        },
    ] {
        assert!(list(nothing.clone()).await.is_empty(), "{nothing:?}");
    }
    // Crashes are history: they outlive their zone.
    store.remove_zone(&world.zone.id).await.unwrap();
    assert_eq!(list(CrashFilter::default()).await.len(), 3);
}

async fn fleet_events(store: &dyn Store, fleet_id: &str, code: &str) -> Vec<EventRecord> {
    store
        .list_events(&EventFilter {
            fleet_id: Some(fleet_id.into()),
            text: Some(code.into()),
            ..EventFilter::default()
        })
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|event| event.code == code)
        .collect()
}

async fn fleet_status(store: &dyn Store, fleet_id: &str) -> ResourceStatus {
    store.get_fleet(fleet_id).await.unwrap().unwrap().status
}

async fn suite_crash_loop_makes_the_fleet_unavailable_until_ready(store: Arc<dyn Store>) {
    let world = world(store.as_ref(), SessionMode::Simple, 1, 0).await;
    let fleet = &world.fleet.id;
    let machine = &world.machines[0];
    // Two crashes at start: not yet a loop.
    store
        .apply_agent_report(
            machine,
            &exits_report(vec![
                exit("p1", Some(3), None, 0, 1),
                exit("p2", Some(3), None, 2, 3),
            ]),
            at(4),
        )
        .await
        .unwrap();
    assert_eq!(
        fleet_status(store.as_ref(), fleet).await,
        ResourceStatus::New
    );
    // The third within a minute: the fleet is UNAVAILABLE, with an ERROR event that names
    // the build, the count and the last exit.
    store
        .apply_agent_report(
            machine,
            &exits_report(vec![exit("p3", None, Some(11), 6, 7)]),
            at(8),
        )
        .await
        .unwrap();
    assert_eq!(
        fleet_status(store.as_ref(), fleet).await,
        ResourceStatus::Unavailable
    );
    let looped = fleet_events(store.as_ref(), fleet, "CRASH_LOOP").await;
    assert_eq!(looped.len(), 1, "{looped:?}");
    assert_eq!(
        (looped[0].level, looped[0].producer),
        (EventLevel::Error, EventProducer::Fleet)
    );
    for part in ["bld-1", "3 of its processes", "signal 11", "p3"] {
        assert!(
            looped[0].message.contains(part),
            "{part}: {}",
            looped[0].message
        );
    }
    // More crashes while it loops: no second event.
    store
        .apply_agent_report(
            machine,
            &exits_report(vec![exit("p4", Some(3), None, 10, 11)]),
            at(12),
        )
        .await
        .unwrap();
    assert_eq!(
        fleet_events(store.as_ref(), fleet, "CRASH_LOOP")
            .await
            .len(),
        1
    );

    // A process of the build becomes READY: recovered.
    let ready = SyncRequest {
        processes: vec![process("p5", AgentProcessState::Starting)],
        ..exits_report(vec![])
    };
    store
        .apply_agent_report(machine, &ready, at(20))
        .await
        .unwrap();
    assert_eq!(
        fleet_status(store.as_ref(), fleet).await,
        ResourceStatus::Unavailable,
        "STARTING is not READY"
    );
    let ready = SyncRequest {
        processes: vec![process("p5", AgentProcessState::Ready)],
        ..ready
    };
    store
        .apply_agent_report(machine, &ready, at(21))
        .await
        .unwrap();
    assert_eq!(
        fleet_status(store.as_ref(), fleet).await,
        ResourceStatus::New
    );
    let recovered = fleet_events(store.as_ref(), fleet, "FLEET_RECOVERED").await;
    assert_eq!(recovered.len(), 1);
    assert_eq!(recovered[0].level, EventLevel::Info);

    // While a process of the build is READY, crashes at start are no loop.
    store
        .apply_agent_report(
            machine,
            &SyncRequest {
                processes: vec![process("p5", AgentProcessState::Ready)],
                ..exits_report(vec![
                    exit("p6", Some(3), None, 21, 22),
                    exit("p7", Some(3), None, 21, 22),
                    exit("p8", Some(3), None, 21, 22),
                ])
            },
            at(23),
        )
        .await
        .unwrap();
    assert_eq!(
        fleet_status(store.as_ref(), fleet).await,
        ResourceStatus::New
    );
}

async fn suite_a_build_change_lifts_a_crash_loop(store: Arc<dyn Store>) {
    let world = world(store.as_ref(), SessionMode::Simple, 1, 0).await;
    let fleet_id = &world.fleet.id;
    let machine = &world.machines[0];
    let three = |prefix: &str| {
        (1..=3)
            .map(|n| exit(&format!("{prefix}{n}"), Some(3), None, n, n + 1))
            .collect::<Vec<_>>()
    };
    store
        .apply_agent_report(machine, &exits_report(three("a")), at(10))
        .await
        .unwrap();
    assert_eq!(
        fleet_status(store.as_ref(), fleet_id).await,
        ResourceStatus::Unavailable
    );
    // A change that is not about the launch keeps the verdict.
    let mut fleet = store.get_fleet(fleet_id).await.unwrap().unwrap();
    fleet.description = Some("still broken".into());
    store.update_fleet(&fleet).await.unwrap();
    assert_eq!(
        fleet_status(store.as_ref(), fleet_id).await,
        ResourceStatus::Unavailable
    );
    assert!(fleet_events(store.as_ref(), fleet_id, "FLEET_RECOVERED")
        .await
        .is_empty());
    // A new build lifts it, with an event naming both builds.
    let mut build = support::build();
    build.id = "bld-2".into();
    store.insert_build(&build).await.unwrap();
    fleet.build_id = "bld-2".into();
    store.update_fleet(&fleet).await.unwrap();
    assert_eq!(
        fleet_status(store.as_ref(), fleet_id).await,
        ResourceStatus::New
    );
    let recovered = fleet_events(store.as_ref(), fleet_id, "FLEET_RECOVERED").await;
    assert_eq!(recovered.len(), 1);
    assert!(
        recovered[0].message.contains("bld-1") && recovered[0].message.contains("bld-2"),
        "{}",
        recovered[0].message
    );
    // Back to the old build within the minute: its earlier crashes no longer count, so
    // one more is not a loop (the change reset the count; without it, 4 would be).
    fleet.build_id = "bld-1".into();
    store.update_fleet(&fleet).await.unwrap();
    store
        .apply_agent_report(
            machine,
            &exits_report(vec![exit("b1", Some(3), None, 10, 11)]),
            at(12),
        )
        .await
        .unwrap();
    assert_eq!(
        fleet_status(store.as_ref(), fleet_id).await,
        ResourceStatus::New
    );
}

// -- bare-metal pool and reboot

/// The pool's location in these tests, and another one.
const POOL: &str = "fra";
const ELSEWHERE: &str = "ams";

/// A fleet in parallel mode and two zones, `zone-1` and `zone-2`, each with one bare-metal
/// data center `metal` at [`POOL`]; one [`World`] per zone, without machines.
async fn pool_worlds(store: &dyn Store) -> Vec<World> {
    let build = support::build();
    store.insert_build(&build).await.unwrap();
    let fleet = support::fleet(&build.id, SessionMode::Parallel);
    store.insert_fleet(&fleet).await.unwrap();
    let mut worlds = Vec::new();
    for n in 1..=2 {
        let zone = Zone {
            id: format!("zone-{n}"),
            spec: ZoneSpec {
                fleet_id: fleet.id.clone(),
                name: format!("z{n}"),
                scaling_mode: ScalingMode::Fixed,
                initial_server_processes: 1,
                buffer_rules: vec![],
                free_slots_min: None,
                free_slots_max: None,
                cooldown_minutes: 0,
                placement_strategy: PlacementStrategy::Pack,
                data_centers: vec![DataCenterSpec {
                    name: "metal".into(),
                    location: POOL.into(),
                    priority: 0,
                    machine_type: MachineType::BareMetal,
                    machine_models: vec![],
                    max_server_processes: None,
                    bare_metal_machines: Some(3),
                }],
            }
            .into(),
            status: ResourceStatus::New,
            created_at: "2026-01-01T00:00:00Z".into(),
        };
        store.insert_zone(&zone).await.unwrap();
        worlds.push(World {
            fleet: fleet.clone(),
            zone,
            machines: vec![],
        });
    }
    worlds
}

/// Pool machine `id` (also its name) at `location`, reachable at `<id>.example.net`.
fn pool_machine(id: &str, location: &str) -> BareMetalMachine {
    BareMetalMachine {
        id: id.into(),
        name: id.into(),
        location: location.into(),
        address: format!("{id}.example.net"),
        cores: Some(32),
        memory_gb: Some(128),
        labels: [("rack".to_string(), "r1".to_string())].into(),
        agent_token: format!("fft_{id}"),
        created_at: "2026-01-01T00:00:00Z".into(),
        machine_id: None,
        zone_id: None,
        last_heartbeat_at: None,
    }
}

/// The token hash pool machine `id` is registered with.
fn pool_hash(id: &str) -> String {
    format!("hash-{id}")
}

/// Registers pool machine `id` at `location`.
async fn register(store: &dyn Store, id: &str, location: &str) -> BareMetalMachine {
    let machine = pool_machine(id, location);
    store
        .insert_bare_metal(&machine, &pool_hash(id))
        .await
        .unwrap();
    machine
}

/// What the reconciler hands `assign_bare_metal` for `world`'s data center `metal`.
fn pool_template(world: &World) -> MachineRecord {
    MachineRecord {
        id: String::new(),
        zone_id: world.zone.id.clone(),
        fleet_id: world.fleet.id.clone(),
        data_center: "metal".into(),
        location: POOL.into(),
        instance_type: "bare_metal".into(),
        processes_per_machine: 2,
        status: MachineStatus::Launching,
        build_id: world.fleet.build_id.clone(),
        driver_ref: None,
        address: None,
        agent_error: None,
        created_at_ms: at(1),
        last_heartbeat_ms: None,
        target_processes: 2,
        terminating_since_ms: None,
        terminated_at_ms: None,
        termination_reason: None,
        bare_metal_id: None,
    }
}

/// The live assignment a pool machine shows: `(machine_id, zone_id)`.
async fn serving(store: &dyn Store, pool_id: &str) -> (Option<String>, Option<String>) {
    let pool = store.get_bare_metal(pool_id).await.unwrap().unwrap();
    (pool.machine_id, pool.zone_id)
}

/// A report from a machine's agent listing `processes` READY.
fn ready_report(processes: &[&str]) -> SyncRequest {
    SyncRequest {
        agent_pid: 100,
        address: "127.0.0.1".into(),
        processes: processes
            .iter()
            .map(|id| process(id, AgentProcessState::Ready))
            .collect(),
        ..SyncRequest::default()
    }
}

async fn suite_a_pool_machine_never_serves_two_live_machines(store: Arc<dyn Store>) {
    let worlds = pool_worlds(store.as_ref()).await;
    for id in ["bm-1", "bm-2", "bm-3"] {
        register(store.as_ref(), id, POOL).await;
    }
    register(store.as_ref(), "bm-ams", ELSEWHERE).await;
    // Four passes of the two zones at once, each asking for 2 of a pool of 3.
    let tasks: Vec<_> = (0..4)
        .map(|i| {
            let store = store.clone();
            let template = pool_template(&worlds[i % 2]);
            tokio::spawn(async move { store.assign_bare_metal(&template, 2).await.unwrap() })
        })
        .collect();
    let mut taken = Vec::new();
    for task in tasks {
        taken.extend(task.await.unwrap());
    }
    let mut pool_ids = BTreeSet::new();
    for machine in &taken {
        let pool_id = machine.bare_metal_id.clone().expect("a bare_metal_id");
        assert!(pool_ids.insert(pool_id.clone()), "taken twice: {taken:#?}");
        assert_eq!(machine.driver_ref.as_deref(), Some(pool_id.as_str()));
        assert_eq!(
            machine.address,
            Some(format!("{pool_id}.example.net")),
            "the pool machine's address"
        );
        assert_eq!(machine.status, MachineStatus::Launching);
        assert_eq!(
            (machine.location.as_str(), machine.data_center.as_str()),
            (POOL, "metal")
        );
        assert!(machine.id.starts_with("mch-"), "{}", machine.id);
        // The row as stored is the row returned.
        assert_eq!(
            store.get_machine(&machine.id).await.unwrap().as_ref(),
            Some(machine)
        );
        // The pool machine shows the live machine it serves.
        assert_eq!(
            serving(store.as_ref(), &pool_id).await,
            (Some(machine.id.clone()), Some(machine.zone_id.clone()))
        );
    }
    assert_eq!(
        pool_ids,
        BTreeSet::from(["bm-1".to_string(), "bm-2".into(), "bm-3".into()]),
        "the whole pool of {POOL}, and only it"
    );
    assert_eq!(
        serving(store.as_ref(), "bm-ams").await,
        (None, None),
        "another location's pool is not taken"
    );
    // Nothing is left at POOL, whoever asks.
    for world in &worlds {
        assert!(store
            .assign_bare_metal(&pool_template(world), 5)
            .await
            .unwrap()
            .is_empty());
    }
    // The list shows the same assignments, by name, filtered by location.
    let listed = store.list_bare_metal(Some(POOL)).await.unwrap();
    let names: Vec<&str> = listed.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["bm-1", "bm-2", "bm-3"]);
    for pool in &listed {
        let machine = taken
            .iter()
            .find(|m| m.bare_metal_id.as_deref() == Some(pool.id.as_str()))
            .unwrap();
        assert_eq!(
            (pool.machine_id.as_deref(), pool.zone_id.as_deref()),
            (Some(machine.id.as_str()), Some(machine.zone_id.as_str()))
        );
    }
    let elsewhere = store.list_bare_metal(Some(ELSEWHERE)).await.unwrap();
    assert_eq!(elsewhere.len(), 1);
    assert_eq!(
        (
            elsewhere[0].machine_id.clone(),
            elsewhere[0].zone_id.clone()
        ),
        (None, None)
    );
    assert_eq!(store.list_bare_metal(None).await.unwrap().len(), 4);
}

async fn suite_an_ended_machine_frees_its_pool_machine(store: Arc<dyn Store>) {
    let worlds = pool_worlds(store.as_ref()).await;
    for id in ["bm-1", "bm-2"] {
        register(store.as_ref(), id, POOL).await;
        assert_eq!(serving(store.as_ref(), id).await, (None, None));
    }
    let first = store
        .assign_bare_metal(&pool_template(&worlds[0]), 2)
        .await
        .unwrap();
    assert_eq!(first.len(), 2);
    let on = |pool_id: &str| {
        first
            .iter()
            .find(|m| m.bare_metal_id.as_deref() == Some(pool_id))
            .unwrap()
            .id
            .clone()
    };
    let (gone, unhealthy) = (on("bm-1"), on("bm-2"));
    assert_eq!(
        serving(store.as_ref(), "bm-1").await,
        (Some(gone.clone()), Some("zone-1".into()))
    );
    // A terminating machine still runs on its pool machine: not free yet.
    store
        .set_machine_status(&gone, MachineStatus::Terminating)
        .await
        .unwrap();
    assert!(store
        .assign_bare_metal(&pool_template(&worlds[1]), 1)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(serving(store.as_ref(), "bm-1").await.0, Some(gone.clone()));

    // Ended, either way: free again.
    store.machine_gone(&gone, "scaled in", at(5)).await.unwrap();
    assert_eq!(serving(store.as_ref(), "bm-1").await, (None, None));
    assert_eq!(
        serving(store.as_ref(), "bm-2").await,
        (Some(unhealthy.clone()), Some("zone-1".into()))
    );
    store
        .machine_unhealthy(&unhealthy, "no heartbeat", at(6))
        .await
        .unwrap();
    for pool in store.list_bare_metal(None).await.unwrap() {
        assert_eq!((pool.machine_id, pool.zone_id), (None, None), "{}", pool.id);
    }

    // Another zone takes both, as new machines.
    let second = store
        .assign_bare_metal(&pool_template(&worlds[1]), 3)
        .await
        .unwrap();
    let pool_ids: BTreeSet<&str> = second
        .iter()
        .filter_map(|m| m.bare_metal_id.as_deref())
        .collect();
    assert_eq!(pool_ids, BTreeSet::from(["bm-1", "bm-2"]));
    for machine in &second {
        assert!(machine.id != gone && machine.id != unhealthy, "a new row");
        assert_eq!(machine.zone_id, "zone-2");
        assert_eq!(
            serving(store.as_ref(), machine.bare_metal_id.as_deref().unwrap()).await,
            (Some(machine.id.clone()), Some("zone-2".into()))
        );
    }
    // The ended rows keep their history.
    let old = store.get_machine(&gone).await.unwrap().unwrap();
    assert_eq!(
        (old.status, old.bare_metal_id.as_deref()),
        (MachineStatus::Terminated, Some("bm-1"))
    );
}

async fn suite_deleting_a_pool_machine(store: Arc<dyn Store>) {
    let worlds = pool_worlds(store.as_ref()).await;
    assert!(!store.delete_bare_metal("bm-nope", at(1)).await.unwrap());
    register(store.as_ref(), "bm-busy", POOL).await;
    let busy = store
        .assign_bare_metal(&pool_template(&worlds[0]), 1)
        .await
        .unwrap()
        .remove(0);
    register(store.as_ref(), "bm-idle", POOL).await;
    let idle = store
        .assign_bare_metal(&pool_template(&worlds[0]), 1)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(idle.bare_metal_id.as_deref(), Some("bm-idle"));
    store
        .apply_agent_report(&busy, &ready_report(&["proc-busy"]), at(2))
        .await
        .unwrap();
    let PlaceOutcome::Placed(session) = store
        .place_session(args(&worlds[0], "s", None))
        .await
        .unwrap()
    else {
        panic!("placement on the pool machine")
    };
    assert_eq!(session.machine_id, busy.id);

    // Hosting an active session: refused, and nothing changed.
    let refused = store.delete_bare_metal("bm-busy", at(3)).await;
    assert!(
        matches!(refused, Err(fleetformd::Error::Conflict { .. })),
        "{refused:?}"
    );
    assert_eq!(
        serving(store.as_ref(), "bm-busy").await,
        (Some(busy.id.clone()), Some("zone-1".into()))
    );
    let still = store.get_machine(&busy.id).await.unwrap().unwrap();
    assert_eq!(still.status, MachineStatus::Active);
    assert_eq!(still.terminated_at_ms, None);
    assert_eq!(
        store.get_session("s").await.unwrap().unwrap().status,
        SessionStatus::Active
    );
    assert_eq!(store.machine_processes(&busy.id).await.unwrap().len(), 1);
    assert!(store
        .bare_metal_by_token(&pool_hash("bm-busy"))
        .await
        .unwrap()
        .is_some());

    // Idle: removed, and the machine it served ends with it.
    assert!(store.delete_bare_metal("bm-idle", at(4)).await.unwrap());
    let ended = store.get_machine(&idle.id).await.unwrap().unwrap();
    assert_eq!(ended.status, MachineStatus::Terminated);
    assert_eq!(ended.terminated_at_ms, Some(at(4)));
    assert!(
        ended
            .termination_reason
            .as_deref()
            .is_some_and(|reason| !reason.is_empty()),
        "{ended:?}"
    );
    let events = store
        .list_events(&EventFilter {
            machine_id: Some(idle.id.clone()),
            ..EventFilter::default()
        })
        .await
        .unwrap()
        .items;
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0].code, "BARE_METAL_REMOVED");
    assert_eq!(events[0].at_ms, at(4));
    assert!(store.get_bare_metal("bm-idle").await.unwrap().is_none());
    assert!(store
        .bare_metal_by_token(&pool_hash("bm-idle"))
        .await
        .unwrap()
        .is_none());
    let names: Vec<String> = store
        .list_bare_metal(None)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.name)
        .collect();
    assert_eq!(names, ["bm-busy"]);
    // Deleting it again: unknown.
    assert!(!store.delete_bare_metal("bm-idle", at(5)).await.unwrap());

    // Once its session ends, the busy one can go too.
    store.end_session("s", at(6)).await.unwrap();
    assert!(store.delete_bare_metal("bm-busy", at(7)).await.unwrap());
    assert_eq!(
        store.get_machine(&busy.id).await.unwrap().unwrap().status,
        MachineStatus::Terminated
    );
    assert!(store.machine_processes(&busy.id).await.unwrap().is_empty());
}

async fn suite_a_pool_agent_finds_its_machine_and_an_update_moves_it(store: Arc<dyn Store>) {
    let worlds = pool_worlds(store.as_ref()).await;
    register(store.as_ref(), "bm-1", POOL).await;
    assert!(store
        .bare_metal_by_token(&pool_hash("bm-nope"))
        .await
        .unwrap()
        .is_none());
    // Free: the pool machine, serving nothing.
    let (pool, live) = store
        .bare_metal_by_token(&pool_hash("bm-1"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (pool.id.as_str(), pool.machine_id, live),
        ("bm-1", None, None)
    );

    // Taken: the pool machine and the live machine row it serves.
    let machine = store
        .assign_bare_metal(&pool_template(&worlds[0]), 1)
        .await
        .unwrap()
        .remove(0);
    let (pool, live) = store
        .bare_metal_by_token(&pool_hash("bm-1"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(pool.id, "bm-1");
    assert_eq!(
        (pool.machine_id.as_deref(), pool.zone_id.as_deref()),
        (Some(machine.id.as_str()), Some("zone-1"))
    );
    assert_eq!(live.as_ref(), Some(&machine));
    // Its agent's report does not move the address players are sent to.
    store
        .apply_agent_report(&machine, &ready_report(&["proc-bm"]), at(2))
        .await
        .unwrap();
    assert_eq!(
        store
            .get_machine(&machine.id)
            .await
            .unwrap()
            .unwrap()
            .address,
        Some("bm-1.example.net".into())
    );

    // An update changes the pool row and the live machine's address, so new sessions go
    // to the new address.
    let mut updated = store.get_bare_metal("bm-1").await.unwrap().unwrap();
    updated.name = "bm-1-renamed".into();
    updated.address = "10.0.0.99".into();
    updated.cores = Some(64);
    updated.memory_gb = None;
    updated.labels = [("rack".to_string(), "r2".to_string())].into();
    store.update_bare_metal(&updated).await.unwrap();
    let read = store.get_bare_metal("bm-1").await.unwrap().unwrap();
    assert_eq!(read.spec(), updated.spec());
    assert_eq!(read.machine_id.as_deref(), Some(machine.id.as_str()));
    assert_eq!(
        store
            .get_machine(&machine.id)
            .await
            .unwrap()
            .unwrap()
            .address,
        Some("10.0.0.99".into())
    );
    let PlaceOutcome::Placed(session) = store
        .place_session(args(&worlds[0], "s", None))
        .await
        .unwrap()
    else {
        panic!("placement on the pool machine")
    };
    assert_eq!(session.address, "10.0.0.99");

    // Names are unique in the pool: on update and on insert.
    register(store.as_ref(), "bm-2", POOL).await;
    let clash = BareMetalMachine {
        name: "bm-1-renamed".into(),
        ..pool_machine("bm-2", POOL)
    };
    let refused = store.update_bare_metal(&clash).await;
    assert!(
        matches!(&refused, Err(fleetformd::Error::Conflict { field: Some(field), .. }) if field == "name"),
        "{refused:?}"
    );
    assert_eq!(
        store.get_bare_metal("bm-2").await.unwrap().unwrap().name,
        "bm-2",
        "unchanged"
    );
    let twin = BareMetalMachine {
        name: "bm-2".into(),
        ..pool_machine("bm-3", POOL)
    };
    let refused = store.insert_bare_metal(&twin, &pool_hash("bm-3")).await;
    assert!(
        matches!(&refused, Err(fleetformd::Error::Conflict { field: Some(field), .. }) if field == "name"),
        "{refused:?}"
    );
    assert!(store.get_bare_metal("bm-3").await.unwrap().is_none());
}

async fn suite_a_reboot_loses_the_sessions_and_restarts_the_processes(store: Arc<dyn Store>) {
    let world = world(store.as_ref(), SessionMode::Parallel, 2, 1).await;
    let mut sessions = Vec::new();
    for name in ["a", "b"] {
        let PlaceOutcome::Placed(session) =
            store.place_session(args(&world, name, None)).await.unwrap()
        else {
            panic!("placement {name}")
        };
        sessions.push(session);
    }
    let rebooted = sessions[0].machine_id.clone();
    assert_eq!(sessions[1].machine_id, rebooted, "pack: one machine");
    let other = world
        .machines
        .iter()
        .find(|m| m.id != rebooted)
        .unwrap()
        .id
        .clone();

    assert_eq!(
        store
            .reboot_machine(&rebooted, "rebooted", at(5))
            .await
            .unwrap(),
        Some(2)
    );
    for session in &sessions {
        let lost = store.get_session(&session.id).await.unwrap().unwrap();
        assert_eq!(lost.status, SessionStatus::Lost);
        assert_eq!(lost.reason.as_deref(), Some("rebooted"));
    }
    // The machine stays in service; its processes are marked for restart and free.
    let machine = store.get_machine(&rebooted).await.unwrap().unwrap();
    assert_eq!(machine.status, MachineStatus::Active);
    assert_eq!(
        (machine.terminating_since_ms, machine.terminated_at_ms),
        (None, None)
    );
    let processes = store.machine_processes(&rebooted).await.unwrap();
    assert_eq!(processes.len(), 1);
    assert!(processes[0].restart_requested, "{processes:?}");
    assert_eq!(processes[0].active_sessions, 0);
    let observed = store.zone_observation(&world.zone.id).await.unwrap();
    let restart: BTreeMap<&str, bool> = observed
        .processes
        .iter()
        .map(|p| (p.machine_id.as_str(), p.restart_requested))
        .collect();
    assert_eq!(
        restart,
        BTreeMap::from([(rebooted.as_str(), true), (other.as_str(), false)])
    );

    // New sessions go to the other machine until it is full; the rebooted process, idle
    // as it is, takes none.
    for name in ["c", "d", "e", "f"] {
        let PlaceOutcome::Placed(session) =
            store.place_session(args(&world, name, None)).await.unwrap()
        else {
            panic!("placement {name}")
        };
        assert_eq!(session.machine_id, other, "{name}");
    }
    assert!(no_capacity(
        &store.place_session(args(&world, "g", None)).await.unwrap()
    ));
    // Its agent replaces the process: the fresh one takes sessions.
    let machine = store.get_machine(&rebooted).await.unwrap().unwrap();
    let replaced = SyncRequest {
        exited: vec![ProcessExit {
            requested: true,
            ..exit(&processes[0].id, Some(0), None, 0, 6)
        }],
        ..ready_report(&["proc-fresh"])
    };
    store
        .apply_agent_report(&machine, &replaced, at(7))
        .await
        .unwrap();
    let PlaceOutcome::Placed(session) = store.place_session(args(&world, "g", None)).await.unwrap()
    else {
        panic!("placement on the fresh process")
    };
    assert_eq!(session.process_id, "proc-fresh");
}

async fn suite_a_reboot_needs_a_machine_in_service(store: Arc<dyn Store>) {
    let world = world(store.as_ref(), SessionMode::Simple, 3, 1).await;
    assert_eq!(
        store
            .reboot_machine("mch-nope", "rebooted", at(1))
            .await
            .unwrap(),
        None
    );
    // A terminating machine drains: a reboot does not touch its session or processes.
    let PlaceOutcome::Placed(session) = store.place_session(args(&world, "s", None)).await.unwrap()
    else {
        panic!("placement")
    };
    let draining = session.machine_id.clone();
    store
        .set_machine_status(&draining, MachineStatus::Terminating)
        .await
        .unwrap();
    assert_eq!(
        store
            .reboot_machine(&draining, "rebooted", at(2))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store.get_session("s").await.unwrap().unwrap().status,
        SessionStatus::Active
    );
    let processes = store.machine_processes(&draining).await.unwrap();
    assert!(
        processes
            .iter()
            .all(|p| !p.restart_requested && p.active_sessions == 1),
        "{processes:?}"
    );
    assert_eq!(
        store.get_machine(&draining).await.unwrap().unwrap().status,
        MachineStatus::Terminating
    );
    // An ended machine: nothing to reboot.
    let mut idle = world.machines.iter().filter(|m| m.id != draining);
    let gone = idle.next().unwrap().id.clone();
    store.machine_gone(&gone, "scaled in", at(3)).await.unwrap();
    assert_eq!(
        store
            .reboot_machine(&gone, "rebooted", at(4))
            .await
            .unwrap(),
        None
    );
    // An idle machine in service: rebooted, no session lost.
    let in_service = idle.next().unwrap().id.clone();
    assert_eq!(
        store
            .reboot_machine(&in_service, "rebooted", at(5))
            .await
            .unwrap(),
        Some(0)
    );
}

// -- guards: each statement that acts on a decision checks it again itself ---------------
//
// The store decides from its in-memory picture; these tests change the database behind
// its back first, so the picture is wrong, and show that the statement's own guard holds.
// Each fails if its guard is removed from the SQL (the case names it).

/// A world of `machines` machines with one process each, in the store's picture: a probe
/// placement looked at the zone (and took `proc-0-0`, ended at once).
async fn pictured_world(store: &dyn Store, mode: SessionMode, machines: usize) -> World {
    let world = world(store, mode, machines, 1).await;
    let PlaceOutcome::Placed(probe) = store
        .place_session(args(&world, "probe", None))
        .await
        .unwrap()
    else {
        panic!("the probe placement")
    };
    assert_eq!(probe.process_id, "proc-0-0");
    store.end_session(&probe.id, 3).await.unwrap();
    world
}

/// Placements until one finds no capacity; the processes they landed on.
async fn place_until_full(store: &dyn Store, world: &World) -> Vec<String> {
    let mut landed = Vec::new();
    for i in 0..20 {
        match store
            .place_session(args(world, &format!("s{i}"), None))
            .await
            .unwrap()
        {
            PlaceOutcome::Placed(session) => landed.push(session.process_id),
            _ => return landed,
        }
    }
    panic!("never full: {landed:?}")
}

/// Placement: `TAKE_SLOT` restates each rule of a process that may take a session, so a
/// process the picture still offers is refused once one is false in the database.
async fn suite_guard_placement_rechecks_each_process(store: Arc<dyn Store>, tamper: Tamper) {
    // Simple mode: proc-0-0 hosted the probe; each other process breaks one rule.
    let world = pictured_world(store.as_ref(), SessionMode::Simple, 6).await;
    tamper.run("UPDATE processes SET agent_state = 'EXITED' WHERE id = 'proc-1-0';     -- agent_state = 'READY'
         UPDATE processes SET sessions_started = 1 WHERE id = 'proc-2-0';       -- sessions_started = 0
         UPDATE processes SET restart_requested = TRUE WHERE id = 'proc-3-0';   -- NOT restart_requested
         UPDATE processes SET active_sessions = 1 WHERE id = 'proc-4-0';        -- active_sessions < slots
         UPDATE machines SET status = 'TERMINATING' WHERE id = 'mch-5';         -- an ACTIVE machine",
    );
    assert_eq!(
        place_until_full(store.as_ref(), &world).await,
        Vec::<String>::new(),
        "a guard let a session onto a process that may take none"
    );
}

/// Placement: the slots of a parallel-mode process are counted in the statement.
async fn suite_guard_placement_rechecks_the_slots(store: Arc<dyn Store>, tamper: Tamper) {
    let world = pictured_world(store.as_ref(), SessionMode::Parallel, 1).await;
    // Three more sessions placed by another writer: one slot of four is left.
    tamper.run("UPDATE processes SET active_sessions = 3 WHERE id = 'proc-0-0'");
    assert_eq!(place_until_full(store.as_ref(), &world).await, ["proc-0-0"]);
}

/// Placements queued together: on Postgres one statement takes every slot they chose,
/// counted per process (`active_sessions + need.n`), all of a process's or none; so a
/// stale picture that offers more slots than a process has left never places more
/// sessions on it than it has.
async fn suite_guard_placements_of_one_batch_count_their_slots(
    store: Arc<dyn Store>,
    tamper: Tamper,
) {
    // Two processes of four slots; another writer took three of each behind the
    // picture, which still sees four free on each.
    let world = Arc::new(pictured_world(store.as_ref(), SessionMode::Parallel, 2).await);
    tamper.run("UPDATE processes SET active_sessions = 3");
    // The first placement waits for the lock; the others queue behind it and run as
    // one batch after it.
    let held = tamper.hold(std::time::Duration::from_millis(500));
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let (store, world) = (store.clone(), world.clone());
            tokio::spawn(async move {
                store
                    .place_session(args(&world, &format!("b{i}"), None))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut placed = 0;
    for task in tasks {
        if let PlaceOutcome::Placed(_) = task.await.unwrap() {
            placed += 1;
        }
    }
    held.join().unwrap();
    assert_eq!(
        tamper.value("SELECT MAX(active_sessions) FROM processes"),
        4,
        "a process took more sessions than its slots"
    );
    assert_eq!(placed, 2, "one slot was left on each process");
    assert_eq!(
        tamper.value("SELECT COUNT(*) FROM sessions WHERE status = 'ACTIVE'"),
        2
    );
}

/// Placement: the fleet's current build is read in the statement.
async fn suite_guard_placement_rechecks_the_build(store: Arc<dyn Store>, tamper: Tamper) {
    let world = pictured_world(store.as_ref(), SessionMode::Parallel, 2).await;
    tamper.run(
        "INSERT INTO builds (id, name, operating_system, source, created_at)
            VALUES ('bld-x', 'x', 'linux', 'file:///x', 0);
         UPDATE fleets SET build_id = 'bld-x' WHERE id = 'flt-1'",
    );
    assert_eq!(
        place_until_full(store.as_ref(), &world).await,
        Vec::<String>::new()
    );
}

/// Placement: a zone being deleted is checked in the statement.
async fn suite_guard_placement_rechecks_the_zone(store: Arc<dyn Store>, tamper: Tamper) {
    let world = pictured_world(store.as_ref(), SessionMode::Parallel, 2).await;
    tamper.run("UPDATE zones SET deleting = TRUE WHERE id = 'zone-1'");
    assert_eq!(
        place_until_full(store.as_ref(), &world).await,
        Vec::<String>::new()
    );
}

/// Ending a session: only an ACTIVE one ends, and a slot count never goes below zero,
/// whatever the picture thinks.
async fn suite_guard_an_end_rechecks_the_session(store: Arc<dyn Store>, tamper: Tamper) {
    let world = world(store.as_ref(), SessionMode::Parallel, 1, 1).await;
    let PlaceOutcome::Placed(session) = store.place_session(args(&world, "s", None)).await.unwrap()
    else {
        panic!("placement")
    };
    // Another writer ended it (and freed its slot) already.
    tamper.run(
        "UPDATE sessions SET status = 'ENDED', ended_at = 5 WHERE id = 's';
         UPDATE processes SET active_sessions = 0 WHERE id = 'proc-0-0'",
    );
    let outcome = store.end_session(&session.id, 6).await.unwrap().unwrap();
    assert!(!outcome.ended_now, "status = 'ACTIVE' guard: {outcome:?}");
    assert_eq!(
        outcome.session.ended_at.as_deref(),
        Some("1970-01-01T00:00:00.005Z")
    );
    let processes = store
        .machine_processes(&world.machines[0].id)
        .await
        .unwrap();
    assert_eq!(processes[0].active_sessions, 0, "status = 'ACTIVE' guard");
    // A count already at zero (another writer freed the slot) stays at zero.
    let PlaceOutcome::Placed(second) = store.place_session(args(&world, "t", None)).await.unwrap()
    else {
        panic!("placement")
    };
    tamper.run("UPDATE processes SET active_sessions = 0 WHERE id = 'proc-0-0'");
    assert!(
        store
            .end_session(&second.id, 7)
            .await
            .unwrap()
            .unwrap()
            .ended_now
    );
    assert_eq!(
        tamper.value("SELECT active_sessions FROM processes WHERE id = 'proc-0-0'"),
        0,
        "active_sessions > 0 guard"
    );
}

/// An agent ends only its own machine's sessions (`machine_id = ?` in the statement).
async fn suite_guard_an_agent_ends_only_its_own_sessions(store: Arc<dyn Store>) {
    let world = world(store.as_ref(), SessionMode::Simple, 2, 1).await;
    let PlaceOutcome::Placed(session) = store.place_session(args(&world, "s", None)).await.unwrap()
    else {
        panic!("placement")
    };
    let other = world
        .machines
        .iter()
        .find(|m| m.id != session.machine_id)
        .unwrap();
    let report = SyncRequest {
        agent_pid: 7,
        address: "127.0.0.1".into(),
        report_seq: 9,
        processes: vec![process(
            &format!("proc-{}-0", &other.id["mch-".len()..]),
            AgentProcessState::Ready,
        )],
        ended_sessions: vec![session.id.clone()],
        ..SyncRequest::default()
    };
    let outcome = store.apply_agent_report(other, &report, 5).await.unwrap();
    assert_eq!(outcome.sessions_ended, 0);
    assert_eq!(
        store
            .get_session(&session.id)
            .await
            .unwrap()
            .unwrap()
            .status,
        SessionStatus::Active
    );
}

/// A report never brings back a process that ended behind the picture's back (`INSERT …
/// ON CONFLICT DO NOTHING`, state changes only `WHERE agent_state IN (live)`).
async fn suite_guard_a_report_revives_no_ended_process(store: Arc<dyn Store>, tamper: Tamper) {
    let world = world(store.as_ref(), SessionMode::Simple, 1, 1).await;
    tamper.run("UPDATE processes SET agent_state = 'EXITED', ended_at = 4 WHERE id = 'proc-0-0'");
    let report = SyncRequest {
        agent_pid: 100,
        address: "127.0.0.1".into(),
        report_seq: 5,
        processes: vec![process("proc-0-0", AgentProcessState::Ready)],
        ..SyncRequest::default()
    };
    store
        .apply_agent_report(&world.machines[0], &report, 5)
        .await
        .unwrap();
    let processes = store
        .fleet_processes(&world.fleet.id, &every_process())
        .await
        .unwrap()
        .items;
    assert_eq!(processes.len(), 1);
    assert_eq!(processes[0].state, fleetformd::store::ProcessState::Exited);
    assert!(no_capacity(
        &store.place_session(args(&world, "s", None)).await.unwrap()
    ));
}

/// A zone being deleted stays `DELETING` (`NOT deleting` in the status statement).
async fn suite_guard_a_deleting_zone_keeps_its_status(store: Arc<dyn Store>) {
    let world = world(store.as_ref(), SessionMode::Simple, 1, 1).await;
    store
        .begin_zone_deletion(&world.zone.id, true)
        .await
        .unwrap();
    store
        .set_zone_status(&world.zone.id, ResourceStatus::Available)
        .await
        .unwrap();
    assert_eq!(
        store
            .get_zone(&world.zone.id)
            .await
            .unwrap()
            .unwrap()
            .zone
            .status,
        ResourceStatus::Deleting
    );
}

/// A build in use is not deleted (`NOT EXISTS (fleets …)` in the delete): a conflict
/// naming its fleets, not a foreign-key failure.
async fn suite_guard_a_build_in_use_stays(store: Arc<dyn Store>) {
    let world = world(store.as_ref(), SessionMode::Simple, 1, 1).await;
    let refused = store.delete_build("bld-1").await.unwrap_err();
    assert!(
        matches!(&refused, fleetformd::Error::Conflict { code: "build_in_use", message, .. } if message.contains(&world.fleet.name)),
        "{refused:?}"
    );
    assert!(store.get_build("bld-1").await.unwrap().is_some());
}

/// A build update ends only once no live process of another build remains, checked in
/// the statement that ends it.
async fn suite_guard_a_build_update_ends_when_the_old_build_is_gone(store: Arc<dyn Store>) {
    let world = world(store.as_ref(), SessionMode::Simple, 1, 1).await;
    move_to_build(store.as_ref(), &world, "bld-2").await;
    assert!(
        !store.finish_build_update(&world.fleet.id, 5).await.unwrap(),
        "proc-0-0 still runs bld-1"
    );
    let report = SyncRequest {
        agent_pid: 100,
        address: "127.0.0.1".into(),
        report_seq: 6,
        processes: vec![ProcessReport {
            build_id: "bld-2".into(),
            ..process("proc-0-new", AgentProcessState::Ready)
        }],
        exited: vec![exit("proc-0-0", Some(0), None, 0, 5)],
        ..SyncRequest::default()
    };
    store
        .apply_agent_report(&world.machines[0], &report, 6)
        .await
        .unwrap();
    assert!(store.finish_build_update(&world.fleet.id, 7).await.unwrap());
    assert!(
        !store.finish_build_update(&world.fleet.id, 8).await.unwrap(),
        "once"
    );
}

// -- retention and paging ---------------------------------------------------------------

/// History older than the cutoff goes; live rows and newer history stay.
async fn suite_pruning_removes_only_old_history(store: Arc<dyn Store>) {
    let world = world(store.as_ref(), SessionMode::Simple, 2, 1).await;
    let PlaceOutcome::Placed(old) = store
        .place_session(args(&world, "old", None))
        .await
        .unwrap()
    else {
        panic!("placement")
    };
    store.end_session(&old.id, at(1)).await.unwrap();
    let PlaceOutcome::Placed(live) = store
        .place_session(args(&world, "live", None))
        .await
        .unwrap()
    else {
        panic!("placement")
    };
    // The spent process of the old session exits; its machine ends later.
    let spent = world
        .machines
        .iter()
        .find(|m| m.id == old.machine_id)
        .unwrap();
    let report = SyncRequest {
        agent_pid: 100,
        address: "127.0.0.1".into(),
        report_seq: 7,
        exited: vec![exit(&old.process_id, Some(0), None, 0, 1)],
        ..SyncRequest::default()
    };
    store
        .apply_agent_report(spent, &report, at(2))
        .await
        .unwrap();
    store
        .machine_gone(&spent.id, "scaled in", at(3))
        .await
        .unwrap();

    let pruned = store.prune_history(at(2) + 1, 100).await.unwrap();
    assert_eq!(
        (pruned.sessions, pruned.processes, pruned.machines),
        (1, 1, 0),
        "{pruned:?}"
    );
    assert!(store.get_session(&old.id).await.unwrap().is_none());
    assert_eq!(
        store.get_session(&live.id).await.unwrap().unwrap().status,
        SessionStatus::Active,
        "a live session stays"
    );
    assert!(
        store.get_machine(&spent.id).await.unwrap().is_some(),
        "ended after the cutoff"
    );
    let pruned = store.prune_history(at(4), 100).await.unwrap();
    assert_eq!(
        pruned.machines, 1,
        "an ended machine with nothing left goes: {pruned:?}"
    );
    assert!(store.get_machine(&spent.id).await.unwrap().is_none());
    assert_eq!(store.prune_history(at(4), 100).await.unwrap().total(), 0);
    assert!(store.get_machine(&live.machine_id).await.unwrap().is_some());
}

/// Lists page with a cursor: every item once, in order, and the last page says so.
async fn suite_lists_page_with_a_cursor(store: Arc<dyn Store>) {
    let world = world(store.as_ref(), SessionMode::Parallel, 1, 2).await;
    for i in 0..7 {
        store
            .place_session(args(&world, &format!("sess-{i:02}"), None))
            .await
            .unwrap();
        store
            .insert_event(&event(
                EventLevel::Info,
                EventProducer::Zone,
                "ZONE_X",
                &format!("e{i}"),
            ))
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = store
            .list_sessions(&fleetformd::store::SessionFilter {
                limit: 3,
                cursor: cursor.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(page.items.len() <= 3);
        seen.extend(page.items.into_iter().map(|s| s.id));
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    let want: Vec<String> = (0..7).map(|i| format!("sess-{i:02}")).collect();
    assert_eq!(seen, want);
    let mut messages = Vec::new();
    let mut cursor = None;
    loop {
        let page = store
            .list_events(&EventFilter {
                limit: 2,
                cursor: cursor.clone(),
                ..EventFilter::default()
            })
            .await
            .unwrap();
        messages.extend(page.items.into_iter().map(|e| e.message));
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    let want: Vec<String> = (0..7).rev().map(|i| format!("e{i}")).collect();
    assert_eq!(messages, want, "newest first");
}

/// Agents number their reports from their clock: far past 32 bits (Postgres infers a
/// parameter's width from its statement; each must take a 64-bit value).
async fn suite_a_report_seq_past_32_bits_applies(store: Arc<dyn Store>) {
    let world = world(store.as_ref(), SessionMode::Simple, 1, 1).await;
    let machine = &world.machines[0];
    for (seq, state) in [
        (1_796_144_263_254u64, AgentProcessState::Ready),
        (1_796_144_263_255, AgentProcessState::Stopping),
    ] {
        let report = SyncRequest {
            agent_pid: 100,
            address: "127.0.0.1".into(),
            report_seq: seq,
            processes: vec![process("proc-0-0", state)],
            ..SyncRequest::default()
        };
        store
            .apply_agent_report(machine, &report, 10)
            .await
            .unwrap();
    }
    let processes = store.machine_processes(&machine.id).await.unwrap();
    assert_eq!(
        processes[0].state,
        fleetformd::store::ProcessState::Live(AgentProcessState::Stopping)
    );
}

/// Takes the zone leases there are for replica `replica` (a lease manager's round).
async fn take_leases(store: &dyn Store, replica: &str) -> Vec<fleetformd::leases::Lease> {
    let round = store
        .lease_round(fleetformd::leases::LeaseRequest {
            replica_id: replica.into(),
            url: format!("http://{replica}"),
            ttl_ms: 60_000,
            release: vec![],
            acquire: true,
            stopping: false,
        })
        .await
        .unwrap();
    round
        .rows
        .into_iter()
        .filter(|row| row.holder.as_deref() == Some(replica))
        .map(|row| fleetformd::leases::Lease {
            zone_id: row.zone_id,
            holder: replica.into(),
            generation: row.generation,
        })
        .collect()
}

/// Guard: a reconciler's write is refused once its lease's generation is not the zone's
/// (another replica took it over while this one was paused). The generation check is in
/// `store/sql/leases.rs`, `fence`.
async fn suite_guard_a_lost_lease_writes_nothing(store: Arc<dyn Store>, tamper: Tamper) {
    let world = world(store.as_ref(), SessionMode::Simple, 1, 1).await;
    let leases = take_leases(store.as_ref(), "r1").await;
    assert_eq!(leases.len(), 1, "one zone, one lease");
    let lease = leases[0].clone();
    assert_eq!(lease.generation, 1);
    // While the lease holds, its writes go through.
    fleetformd::leases::scope(
        lease.clone(),
        store.set_zone_status(&world.zone.id, ResourceStatus::Launching),
    )
    .await
    .unwrap();
    // Another replica takes the zone over.
    tamper.run(
        "UPDATE zone_leases SET holder = 'r2', holder_url = 'http://r2', generation = generation + 1",
    );
    let refused = fleetformd::leases::scope(
        lease.clone(),
        store.set_zone_status(&world.zone.id, ResourceStatus::Available),
    )
    .await;
    assert!(
        matches!(refused, Err(fleetformd::Error::LeaseLost { .. })),
        "a write under a lost lease: {refused:?}"
    );
    let machine = &world.machines[0];
    let refused = fleetformd::leases::scope(lease, store.begin_idle_termination(&machine.id)).await;
    assert!(matches!(refused, Err(fleetformd::Error::LeaseLost { .. })));
    assert_eq!(
        store
            .get_zone(&world.zone.id)
            .await
            .unwrap()
            .unwrap()
            .zone
            .status,
        ResourceStatus::Launching,
        "nothing written after the takeover"
    );
    assert_eq!(
        tamper.value(&format!(
            "SELECT COUNT(*) FROM machines WHERE id = '{}' AND status = 'ACTIVE'",
            machine.id
        )),
        1
    );
    // Writes outside a lease (the API's) are not the reconciler's: they go through.
    store.touch_zone(&world.zone.id, 5).await.unwrap();
}

/// Runs each named `suite_*` function on a fresh store of `$open` (`sqlite` or
/// `postgres`).
macro_rules! suite {
    ($open:ident; $($name:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let (_keep, store) = $open().await;
                super::$name(store).await;
            }
        )+
    };
}

/// Like `suite!`, for the guard tests: each also gets a [`Tamper`] on the same database.
macro_rules! guard_suite {
    (sqlite; $($name:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let (dir, store) = sqlite().await;
                super::$name(store, sqlite_tamper(dir.path().join("test.db"))).await;
            }
        )+
    };
    (postgres; $($name:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let (url, store) = postgres().await;
                super::$name(store, postgres_tamper(url)).await;
            }
        )+
    };
}

/// The whole suite on one database: every guard test and every other test.
macro_rules! whole_suite {
    ($open:ident) => {
        guard_suite!($open;
            suite_guard_placement_rechecks_each_process,
            suite_guard_placement_rechecks_the_slots,
            suite_guard_placements_of_one_batch_count_their_slots,
            suite_guard_placement_rechecks_the_build,
            suite_guard_placement_rechecks_the_zone,
            suite_guard_an_end_rechecks_the_session,
            suite_guard_a_report_revives_no_ended_process,
            suite_guard_a_lost_lease_writes_nothing,
        );
        suite!($open;
        suite_guard_an_agent_ends_only_its_own_sessions,
        suite_guard_a_deleting_zone_keeps_its_status,
        suite_guard_a_build_in_use_stays,
        suite_guard_a_build_update_ends_when_the_old_build_is_gone,
        suite_pruning_removes_only_old_history,
        suite_lists_page_with_a_cursor,
        suite_concurrent_placements_never_share_a_simple_process,
        suite_parallel_mode_fills_a_process_before_the_next,
        suite_only_the_current_build_takes_new_sessions,
        suite_a_process_past_its_restart_age_takes_no_new_session,
        suite_idempotency_key_returns_the_first_answer,
        suite_repeated_agent_reports_are_idempotent,
        suite_a_process_that_dies_loses_its_session,
        suite_a_report_with_many_ended_sessions_ends_them_all,
        suite_idle_termination_spares_a_busy_machine,
        suite_removing_a_zone_leaves_no_rows,
        suite_zone_deletion_is_atomic_with_the_session_check,
        suite_stale_and_late_reports_change_nothing,
        suite_termination_is_recorded_once,
        suite_machine_gone_without_terminating,
        suite_an_unhealthy_machine_loses_its_sessions_and_stays_ended,
        suite_a_revoke_loses_the_sessions_at_once,
        suite_events_round_trip_newest_first,
        suite_events_filter,
        suite_events_outlive_their_zone,
        suite_crashes_are_recorded_with_their_report,
        suite_crash_filters,
        suite_crash_loop_makes_the_fleet_unavailable_until_ready,
        suite_a_build_change_lifts_a_crash_loop,
        suite_a_pool_machine_never_serves_two_live_machines,
        suite_an_ended_machine_frees_its_pool_machine,
        suite_deleting_a_pool_machine,
        suite_a_pool_agent_finds_its_machine_and_an_update_moves_it,
        suite_a_reboot_loses_the_sessions_and_restarts_the_processes,
        suite_a_reboot_needs_a_machine_in_service,
        suite_a_report_seq_past_32_bits_applies,
        );
    };
}

mod sqlite {
    whole_suite!(sqlite);
    use super::{sqlite, sqlite_tamper};
}

mod postgres {
    whole_suite!(postgres);
    use super::{postgres, postgres_tamper};
}

/// Two stores on one Postgres database: what two replicas share.
mod two_replicas {
    use super::*;

    async fn pair() -> (Arc<dyn Store>, Arc<dyn Store>, Tamper) {
        let (url, a) = postgres().await;
        let b = SqlStore::open_with(&Database::Postgres(url.clone()), Default::default())
            .await
            .unwrap();
        (a, Arc::new(b), postgres_tamper(url))
    }

    /// Tells both stores, as a replica would, that the machine changed behind them.
    fn notify_machine(tamper: &Tamper, machine: &str) {
        notify_machine_in(tamper, machine, "zone-1")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn placements_from_both_never_share_a_simple_process() {
        let (a, b, tamper) = pair().await;
        let world = world(a.as_ref(), SessionMode::Simple, 4, 5).await;
        let mut tasks = Vec::new();
        for i in 0..40 {
            let store = if i % 2 == 0 { a.clone() } else { b.clone() };
            let args = args(&world, &format!("s{i}"), None);
            tasks.push(tokio::spawn(async move { store.place_session(args).await }));
        }
        let mut placed = 0;
        for task in tasks {
            match task.await.unwrap().unwrap() {
                PlaceOutcome::Placed(_) => placed += 1,
                PlaceOutcome::NoCapacity { .. } => {}
                PlaceOutcome::Repeated(_) => panic!("no key, no repeat"),
            }
        }
        assert_eq!(placed, 20, "20 processes, one session each");
        assert_eq!(
            tamper.value(
                "SELECT COUNT(*) FROM (SELECT process_id FROM sessions GROUP BY process_id HAVING COUNT(*) > 1) t"
            ),
            0
        );
    }

    /// An idempotency key holds across replicas: the second placement with it, through
    /// the other store, answers the first session.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn an_idempotency_key_holds_across_replicas() {
        let (a, b, _tamper) = pair().await;
        let world = world(a.as_ref(), SessionMode::Simple, 2, 2).await;
        let PlaceOutcome::Placed(first) = a
            .place_session(args(&world, "s1", Some("key-1")))
            .await
            .unwrap()
        else {
            panic!("the first placement")
        };
        match b
            .place_session(args(&world, "s2", Some("key-1")))
            .await
            .unwrap()
        {
            PlaceOutcome::Repeated(again) => assert_eq!(again.id, first.id),
            other => panic!("the same key through the other replica: {other:?}"),
        }
    }

    /// A store whose database connections are cut (Postgres restarted, a failover)
    /// connects again: a write and a read go through within a few tries.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_store_reconnects_after_its_connections_are_cut() {
        let (url, store) = postgres().await;
        let tamper = postgres_tamper(url);
        let world = world(store.as_ref(), SessionMode::Parallel, 1, 1).await;
        tamper.run(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        );
        let mut placed = None;
        for i in 0..50 {
            match store
                .place_session(args(&world, &format!("s{i}"), None))
                .await
            {
                Ok(PlaceOutcome::Placed(session)) => {
                    placed = Some(session);
                    break;
                }
                Ok(other) => panic!("{other:?}"),
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            }
        }
        let placed = placed.expect("a placement after the reconnect");
        let mut read = None;
        for _ in 0..50 {
            if let Ok(found) = store.get_session(&placed.id).await {
                read = found;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert_eq!(read.map(|s| s.id), Some(placed.id));
    }

    /// One idempotency key placed at once through both replicas into two zones of one
    /// fleet (the zones' fences do not serialize them): one session for the key, and every
    /// other job of both batches answered on its own (the batch never fails).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn one_key_in_two_zones_at_once_fails_no_batch() {
        let (a, b, tamper) = pair().await;
        let world = world(a.as_ref(), SessionMode::Parallel, 2, 2).await;
        // A second zone of the fleet, with one machine of two ready processes.
        let mut second = world.zone.clone();
        second.id = "zone-2".into();
        second.spec.name = "us".into();
        a.insert_zone(&second).await.unwrap();
        let mut machine = world.machines[0].clone();
        machine.id = "mch-us".into();
        machine.zone_id = second.id.clone();
        machine.status = MachineStatus::Pending;
        a.insert_machine(&machine, "hash-us").await.unwrap();
        let report = SyncRequest {
            agent_pid: 300,
            address: "127.0.0.1".into(),
            processes: vec![
                process("proc-us-0", AgentProcessState::Ready),
                process("proc-us-1", AgentProcessState::Ready),
            ],
            ..SyncRequest::default()
        };
        a.apply_agent_report(&machine, &report, 1).await.unwrap();
        for i in 0..8 {
            let key = format!("key-{i}");
            let mut eu = args(&world, &format!("eu-{i}"), Some(&key));
            eu.zone = "eu".into();
            let mut us = args(&world, &format!("us-{i}"), Some(&key));
            us.zone = "us".into();
            let plain: Vec<_> = (0..4)
                .map(|j| {
                    let store = b.clone();
                    let args = args(&world, &format!("plain-{i}-{j}"), None);
                    tokio::spawn(async move { store.place_session(args).await })
                })
                .collect();
            let (first, second) = tokio::join!(a.place_session(eu), b.place_session(us));
            // A refusal of that job alone: the unique index (409), or, when the two
            // batches wait on each other (the key's insert, the zone's fence), Postgres's
            // deadlock victim (503, retry). Never a failed batch (500).
            let alone = |outcome: &fleetformd::Result<PlaceOutcome>| {
                matches!(
                    outcome,
                    Ok(_)
                        | Err(fleetformd::Error::Conflict { .. })
                        | Err(fleetformd::Error::Unavailable { .. })
                )
            };
            for outcome in [first, second] {
                assert!(alone(&outcome), "round {i}: {outcome:?}");
            }
            for task in plain {
                let outcome = task.await.unwrap();
                assert!(
                    alone(&outcome),
                    "round {i}: an unkeyed placement: {outcome:?}"
                );
            }
            assert_eq!(
                tamper.value(&format!(
                    "SELECT COUNT(*) FROM sessions WHERE idempotency_key = '{key}'"
                )),
                1,
                "round {i}"
            );
            // Room for the next round.
            tamper.run("UPDATE sessions SET status = 'ENDED' WHERE status = 'ACTIVE'");
            tamper.run("UPDATE processes SET active_sessions = 0");
            for id in ["mch-0", "mch-1", "mch-us"] {
                notify_machine_in(
                    &tamper,
                    id,
                    if id == "mch-us" { "zone-2" } else { "zone-1" },
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    fn notify_machine_in(tamper: &Tamper, machine: &str, zone: &str) {
        tamper.run(&format!(
            "SELECT pg_notify('fleetform', 'tamper|{{\"from\":\"tamper\",\"notices\":[{{\"k\":\"machine\",\"machine_id\":\"{machine}\",\"zone_id\":\"{zone}\"}}]}}')"
        ));
    }

    /// The write skew the lease-row lock prevents: a placement (on one replica) and an
    /// idle termination (on the other) each check the other's row and write their own.
    /// Without the lock both can win: a session on a machine being terminated.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_placement_and_an_idle_termination_never_both_win() {
        let (a, b, tamper) = pair().await;
        let world = world(a.as_ref(), SessionMode::Parallel, 1, 1).await;
        let machine = world.machines[0].id.clone();
        let mut both = 0;
        let mut placed_only = 0;
        let mut terminated_only = 0;
        for i in 0..60 {
            let place = a.place_session(args(&world, &format!("s{i}"), None));
            let terminate = b.begin_idle_termination(&machine);
            let (placed, terminated) = tokio::join!(place, terminate);
            let placed = matches!(placed.unwrap(), PlaceOutcome::Placed(_));
            let terminated = terminated.unwrap();
            match (placed, terminated) {
                (true, true) => both += 1,
                (true, false) => placed_only += 1,
                (false, true) => terminated_only += 1,
                (false, false) => panic!("iteration {i}: neither happened"),
            }
            // Back to an idle, active machine for the next round.
            if placed {
                a.end_session(&format!("s{i}"), 3).await.unwrap();
            }
            if terminated {
                tamper.run(&format!(
                    "UPDATE machines SET status = 'ACTIVE', terminating_since = NULL WHERE id = '{machine}'"
                ));
                notify_machine(&tamper, &machine);
            }
            // Until both pictures see it active again.
            let mut ready = false;
            for _ in 0..200 {
                let a_sees = a
                    .desired_state(&machine, 4)
                    .await
                    .unwrap()
                    .unwrap()
                    .0
                    .status;
                let b_sees = b
                    .desired_state(&machine, 4)
                    .await
                    .unwrap()
                    .unwrap()
                    .0
                    .status;
                if a_sees == MachineStatus::Active && b_sees == MachineStatus::Active {
                    ready = true;
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            assert!(
                ready,
                "iteration {i}: the pictures never saw the machine active again"
            );
        }
        assert_eq!(
            both, 0,
            "a session was placed on a machine that was being terminated ({placed_only} placed, {terminated_only} terminated)"
        );
    }

    /// A change one store commits reaches the other's picture: a slot freed on one is
    /// free on the other (without the notification, B's picture would say full forever).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_slot_freed_on_one_replica_is_free_on_the_other() {
        let (a, b, _tamper) = pair().await;
        // One process of four slots.
        let world = world(a.as_ref(), SessionMode::Parallel, 1, 1).await;
        for i in 0..4 {
            let outcome = b
                .place_session(args(&world, &format!("s{i}"), None))
                .await
                .unwrap();
            assert!(matches!(outcome, PlaceOutcome::Placed(_)), "slot {i}");
        }
        assert!(no_capacity(
            &a.place_session(args(&world, "a1", None)).await.unwrap()
        ));
        assert!(no_capacity(
            &b.place_session(args(&world, "b1", None)).await.unwrap()
        ));
        a.end_session("s0", 3).await.unwrap();
        let mut placed = false;
        for i in 0..200 {
            if let PlaceOutcome::Placed(_) = b
                .place_session(args(&world, &format!("b2-{i}"), None))
                .await
                .unwrap()
            {
                placed = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(placed, "the freed slot never showed on the other replica");
    }
}
