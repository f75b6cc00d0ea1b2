//! Two fleetformd replicas on one Postgres (a throwaway server on 127.0.0.1, see
//! `fleetform-pgtest`), each zone reconciled by the replica holding its lease.
//!
//! - Under 200 concurrent clients placing and ending sessions through both replicas for
//!   30 s, one replica is killed with SIGKILL at a random moment: every placement answered
//!   201 is in the store, no process holds more sessions than its slots, the generations
//!   of each zone's lease (in the events its holders wrote) never go back, the survivor
//!   holds every zone within 5 s, and no client saw a 5xx but a 503 with Retry-After.
//! - SIGTERM under load: the replica answers /readyz 503, finishes what it accepted, gives
//!   its leases back (taken over at once, well before they would expire) and exits 0
//!   within 10 s.
//! - A replica paused (SIGSTOP) past its lease loses its zone to the other and, resumed,
//!   writes nothing under the old generation.
//! - The quickstart through the real `terraform` against two replicas: apply through one,
//!   a clean plan and destroy through the other.
//!
//! The kill moment comes from a seed (`FLEETFORM_REPLICAS_SEED`, printed).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use fleetform_api::*;
use fleetform_e2e::*;
use rand::{Rng, SeedableRng};

const LOCATION: &str = r#"
[[location]]
name = "sim-ha"
driver = "sim"
boot_seconds = 0.05
start_seconds = 0.05
shutdown_seconds = 0.05
"#;

/// One value (the first column of the first row) from the database, through psql.
fn sql(url: &str, query: &str) -> Result<String> {
    fleetform_pgtest::psql(url, query).map_err(|e| anyhow::anyhow!("{e}"))
}

fn sql_i64(url: &str, query: &str) -> Result<i64> {
    let text = sql(url, query)?;
    text.parse()
        .with_context(|| format!("{query}: not a number: {text:?}"))
}

/// A fresh database on the test run's Postgres.
async fn database() -> String {
    tokio::task::spawn_blocking(fleetform_pgtest::database)
        .await
        .expect("a test database")
}

/// A replica's id, as it recorded itself (its first lease round, as it starts serving).
async fn replica_id(db: &str, server: &Fleetformd) -> Result<String> {
    eventually(Duration::from_secs(10), "the replica's row", || {
        let query = format!("SELECT id FROM replicas WHERE url = '{}'", server.url);
        let db = db.to_string();
        async move {
            let id = sql(&db, &query)?;
            Ok((!id.is_empty()).then_some(id))
        }
    })
    .await
}

/// A parallel-mode fleet (4 sessions a process) and `zones` fixed zones of `processes`
/// processes each on the sim location; waits until they are AVAILABLE.
async fn title(client: &Client, zones: &[&str], processes: u32) -> Result<(Fleet, Vec<Zone>)> {
    let build = client
        .create_build(&fixtures::build(std::path::Path::new("/opt/ha"), None))
        .await?;
    let fleet = client
        .create_fleet(&FleetSpec {
            session_mode: SessionMode::Parallel,
            sessions_per_process: 4,
            ..fixtures::fleet("ha", &build.id)
        })
        .await?;
    let mut created = Vec::new();
    for name in zones {
        let mut spec = fixtures::zone(&fleet.id, 10, processes).spec();
        spec.name = (*name).into();
        spec.data_centers[0].location = "sim-ha".into();
        created.push(client.create_zone(&spec).await?);
    }
    for zone in &created {
        eventually(Duration::from_secs(60), "the zone AVAILABLE", || {
            let client = client.clone();
            let id = zone.id.clone();
            async move {
                Ok((client.get_zone(&id).await?.status == ResourceStatus::Available).then_some(()))
            }
        })
        .await?;
    }
    Ok((fleet, created))
}

/// What the clients saw.
#[derive(Debug, Default)]
struct Seen {
    /// Sessions answered 201, by id.
    placed: BTreeSet<String>,
    /// Status codes of every answer.
    codes: BTreeMap<u16, u64>,
    /// 5xx answers that were not a 503 with Retry-After, with their bodies.
    bad: Vec<String>,
    /// Requests whose connection failed (then retried on the other replica).
    refused: u64,
}

/// A request tried on `urls` in turn (a load balancer's retry on a dead backend) with
/// the same body, so an idempotency key makes a retried placement safe.
async fn send(
    http: &reqwest::Client,
    urls: &[String],
    first: usize,
    path: &str,
    body: &serde_json::Value,
    seen: &Mutex<Seen>,
) -> Option<(u16, serde_json::Value)> {
    for attempt in 0..6 {
        let url = &urls[(first + attempt) % urls.len()];
        let answer = http
            .post(format!("{url}{path}"))
            .bearer_auth(TOKEN)
            .json(body)
            .send()
            .await;
        let answer = match answer {
            Ok(answer) => answer,
            Err(_) => {
                seen.lock().unwrap().refused += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let status = answer.status().as_u16();
        let retry_after = answer.headers().contains_key(reqwest::header::RETRY_AFTER);
        let text = answer.text().await.unwrap_or_default();
        {
            let mut seen = seen.lock().unwrap();
            *seen.codes.entry(status).or_default() += 1;
            if status >= 500 && !(status == 503 && retry_after) {
                seen.bad.push(format!("{status} {path}: {text}"));
            }
        }
        return Some((status, serde_json::from_str(&text).unwrap_or_default()));
    }
    None
}

/// `clients` tasks placing and ending sessions through `urls` until `stop`.
fn load(
    urls: Vec<String>,
    fleet: &str,
    zones: Vec<String>,
    clients: u64,
    seed: u64,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .pool_max_idle_per_host(400)
        .build()
        .unwrap();
    (0..clients)
        .map(|index| {
            let (http, urls, zones, stop, seen) = (
                http.clone(),
                urls.clone(),
                zones.clone(),
                stop.clone(),
                seen.clone(),
            );
            let fleet = fleet.to_string();
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ (index + 1));
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let zone = &zones[rng.gen_range(0..zones.len())];
                    let key = format!("k-{index}-{}", rng.gen::<u64>());
                    let body = serde_json::json!({ "zone": zone, "idempotency_key": key });
                    let first = rng.gen_range(0..urls.len());
                    let path = format!("/v1/fleets/{fleet}/sessions");
                    let Some((status, session)) =
                        send(&http, &urls, first, &path, &body, &seen).await
                    else {
                        continue;
                    };
                    if status != 201 {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                    let id = session["id"].as_str().unwrap_or_default().to_string();
                    seen.lock().unwrap().placed.insert(id.clone());
                    tokio::time::sleep(Duration::from_millis(rng.gen_range(10..80))).await;
                    let first = rng.gen_range(0..urls.len());
                    let path = format!("/v1/sessions/{id}/end");
                    send(&http, &urls, first, &path, &serde_json::json!({}), &seen).await;
                }
            })
        })
        .collect()
}

/// Every answered placement is in the store, and no process holds more sessions than
/// its slots.
fn check_sessions(db: &str, seen: &Seen) -> Result<()> {
    let ids: Vec<String> = seen.placed.iter().map(|id| format!("'{id}'")).collect();
    for chunk in ids.chunks(2000) {
        let found = sql_i64(
            db,
            &format!(
                "SELECT COUNT(*) FROM sessions WHERE id IN ({})",
                chunk.join(",")
            ),
        )?;
        ensure!(
            found == chunk.len() as i64,
            "{} of {} answered placements are not in the store",
            chunk.len() as i64 - found,
            chunk.len()
        );
    }
    let over = sql_i64(
        db,
        "SELECT COUNT(*) FROM (SELECT process_id FROM sessions WHERE status = 'ACTIVE'
           GROUP BY process_id HAVING COUNT(*) > 4) t",
    )?;
    ensure!(
        over == 0,
        "{over} processes hold more sessions than their slots"
    );
    let counters = sql_i64(
        db,
        "SELECT COUNT(*) FROM processes WHERE active_sessions > 4 OR active_sessions < 0",
    )?;
    ensure!(
        counters == 0,
        "{counters} processes count sessions beyond their slots"
    );
    Ok(())
}

/// The lease generations in the events of each zone never go down, and every taking of a
/// lease has a higher generation than the one before it.
fn check_generations(db: &str) -> Result<()> {
    let backwards = sql_i64(
        db,
        "SELECT COUNT(*) FROM events a JOIN events b
           ON a.zone_id = b.zone_id AND a.seq < b.seq
         WHERE a.lease_generation IS NOT NULL AND b.lease_generation IS NOT NULL
           AND a.lease_generation > b.lease_generation",
    )?;
    ensure!(
        backwards == 0,
        "{backwards} event pairs whose lease generation went back"
    );
    let repeated = sql_i64(
        db,
        "SELECT COUNT(*) FROM (SELECT zone_id, lease_generation FROM events
           WHERE code = 'ZONE_LEASE_ACQUIRED' GROUP BY zone_id, lease_generation
           HAVING COUNT(*) > 1) t",
    )?;
    ensure!(repeated == 0, "a lease generation was taken twice");
    Ok(())
}

/// How long until `holder` holds every zone, unexpired.
async fn until_holds_all(
    db: &str,
    holder: &str,
    zones: usize,
    limit: Duration,
) -> Result<Duration> {
    let started = Instant::now();
    loop {
        let held = sql_i64(
            db,
            &format!(
                "SELECT COUNT(*) FROM zone_leases WHERE holder = '{holder}'
                   AND expires_at > CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)"
            ),
        )?;
        if held as usize == zones {
            return Ok(started.elapsed());
        }
        if started.elapsed() > limit {
            bail!("{holder} holds {held} of {zones} zones after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until each of the two replicas holds one zone.
async fn until_split(db: &str, a: &str, b: &str) -> Result<()> {
    eventually(
        Duration::from_secs(30),
        "each replica holding a zone",
        || {
            let (db, a, b) = (db.to_string(), a.to_string(), b.to_string());
            async move {
                let a = sql_i64(
                    &db,
                    &format!("SELECT COUNT(*) FROM zone_leases WHERE holder = '{a}'"),
                )?;
                let b = sql_i64(
                    &db,
                    &format!("SELECT COUNT(*) FROM zone_leases WHERE holder = '{b}'"),
                )?;
                Ok((a == 1 && b == 1).then_some(()))
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_lose_nothing_when_one_is_killed_under_load() -> Result<()> {
    let seed: u64 = std::env::var("FLEETFORM_REPLICAS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    eprintln!("FLEETFORM_REPLICAS_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let db = database().await;
    let options = ["--lease-ttl-ms", "3000", "--drain-ms", "100"];
    let mut a = Fleetformd::start_replica(&db, LOCATION, &options)?;
    let mut b = Fleetformd::start_replica(&db, LOCATION, &options)?;
    let (fleet, zones) = title(&a.client(), &["eu", "us"], 100).await?;
    let (id_a, id_b) = (replica_id(&db, &a).await?, replica_id(&db, &b).await?);
    until_split(&db, &id_a, &id_b).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let clients = load(
        vec![a.url.clone(), b.url.clone()],
        &fleet.id,
        zones.iter().map(|z| z.spec.name.clone()).collect(),
        200,
        seed,
        stop.clone(),
        seen.clone(),
    );
    let kill_at = Duration::from_millis(rng.gen_range(5_000..20_000));
    let kill_a = rng.gen_bool(0.5);
    tokio::time::sleep(kill_at).await;
    let before_kill = seen.lock().unwrap().placed.len();
    let (survivor, survivor_id) = if kill_a {
        a.kill9();
        (&b, id_b.clone())
    } else {
        b.kill9();
        (&a, id_a.clone())
    };
    let takeover = until_holds_all(&db, &survivor_id, zones.len(), Duration::from_secs(5))
        .await
        .with_context(|| survivor.log())?;
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(kill_at)).await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await?;
    }
    let seen = seen.lock().unwrap();
    eprintln!(
        "killed replica {} after {kill_at:?} ({before_kill} placements answered by then); \
         the survivor held every zone {takeover:?} later; {} placements answered in all; \
         answers {:?}; {} refused connections retried",
        if kill_a { "a" } else { "b" },
        seen.placed.len(),
        seen.codes,
        seen.refused
    );
    ensure!(
        before_kill > 200,
        "too little load before the kill to mean anything"
    );
    ensure!(
        seen.bad.is_empty(),
        "5xx answers: {:?}",
        &seen.bad[..seen.bad.len().min(5)]
    );
    check_sessions(&db, &seen)?;
    check_generations(&db)?;
    // The survivor's leases are newer than anything the dead replica held.
    let taken = sql_i64(
        &db,
        &format!(
            "SELECT COUNT(*) FROM events WHERE code = 'ZONE_LEASE_ACQUIRED' AND message LIKE '%{survivor_id}%'"
        ),
    )?;
    ensure!(
        taken >= 2,
        "the survivor took both zones: {taken} acquisitions"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_drains_hands_over_and_exits_zero() -> Result<()> {
    let db = database().await;
    // Leases last 20 s: a takeover within a few seconds shows they were given back.
    let options = ["--lease-ttl-ms", "20000", "--drain-ms", "300"];
    let mut a = Fleetformd::start_replica(&db, LOCATION, &options)?;
    let (fleet, zones) = title(&a.client(), &["eu"], 40).await?;
    let b = Fleetformd::start_replica(&db, LOCATION, &options)?;
    let (id_a, id_b) = (replica_id(&db, &a).await?, replica_id(&db, &b).await?);
    ensure!(
        sql_i64(
            &db,
            &format!("SELECT COUNT(*) FROM zone_leases WHERE holder = '{id_a}'")
        )? == 1,
        "the first replica holds the zone"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let seen: Arc<Mutex<Seen>> = Arc::default();
    // Every client talks to `a` first (the one that stops), then `b` when refused.
    let clients = load(
        vec![a.url.clone(), b.url.clone()],
        &fleet.id,
        zones.iter().map(|z| z.spec.name.clone()).collect(),
        50,
        7,
        stop.clone(),
        seen.clone(),
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = seen.lock().unwrap().placed.len();
    let signalled = Instant::now();
    a.signal(libc::SIGTERM);
    // /readyz turns 503 at once, while the listener still accepts.
    let http = reqwest::Client::builder().no_proxy().build()?;
    let ready = http.get(format!("{}/readyz", a.url)).send().await?;
    ensure!(
        ready.status().as_u16() == 503,
        "readyz after SIGTERM: {}",
        ready.status()
    );
    let takeover = until_holds_all(&db, &id_b, 1, Duration::from_secs(8)).await?;
    let status = tokio::task::spawn_blocking(move || {
        let status = a.wait_exit(Duration::from_secs(10));
        (status, a)
    })
    .await?;
    let (status, a) = status;
    let exited = signalled.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await?;
    }
    let seen = seen.lock().unwrap();
    eprintln!(
        "SIGTERM: zone held by the other replica {takeover:?} later, exit {status:?} after {exited:?}; \
         {before} placements before, {} in all; answers {:?}",
        seen.placed.len(),
        seen.codes
    );
    let status =
        status.with_context(|| format!("still running 10 s after SIGTERM:\n{}", a.log()))?;
    ensure!(status.success(), "exit status {status}:\n{}", a.log());
    ensure!(exited < Duration::from_secs(10));
    ensure!(
        takeover < Duration::from_secs(5),
        "the lease was not given back (taken over after {takeover:?})"
    );
    ensure!(
        seen.bad.is_empty(),
        "5xx answers: {:?}",
        &seen.bad[..seen.bad.len().min(5)]
    );
    ensure!(
        seen.placed.len() > before,
        "placements went on through the other replica"
    );
    check_sessions(&db, &seen)?;
    check_generations(&db)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_replica_loses_its_zone_and_writes_nothing_under_it() -> Result<()> {
    let db = database().await;
    let options = ["--lease-ttl-ms", "1500", "--drain-ms", "0"];
    let a = Fleetformd::start_replica(&db, LOCATION, &options)?;
    let (_fleet, zones) = title(&a.client(), &["eu"], 20).await?;
    let b = Fleetformd::start_replica(&db, LOCATION, &options)?;
    let (id_a, id_b) = (replica_id(&db, &a).await?, replica_id(&db, &b).await?);
    let old = sql_i64(
        &db,
        &format!("SELECT generation FROM zone_leases WHERE holder = '{id_a}'"),
    )?;
    a.signal(libc::SIGSTOP);
    let takeover = until_holds_all(&db, &id_b, 1, Duration::from_secs(5)).await;
    // The zone changes while `a` sleeps: its reconciler has work once it wakes.
    let mut spec: ZoneSpec = zones[0].spec.clone().into();
    spec.initial_server_processes = 30;
    spec.data_centers[0].max_server_processes = Some(30);
    b.client().update_zone(&zones[0].id, &spec).await?;
    let taken_seq = sql_i64(
        &db,
        &format!(
            "SELECT MAX(seq) FROM events WHERE code = 'ZONE_LEASE_ACQUIRED' AND zone_id = '{}'",
            zones[0].id
        ),
    )?;
    a.signal(libc::SIGCONT);
    let takeover = takeover?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    eprintln!("paused replica's zone taken over after {takeover:?}");
    let stale = sql_i64(
        &db,
        &format!(
            "SELECT COUNT(*) FROM events WHERE zone_id = '{}' AND seq > {taken_seq} AND lease_generation <= {old}",
            zones[0].id
        ),
    )?;
    ensure!(
        stale == 0,
        "{stale} events written under the lost generation {old}"
    );
    ensure!(
        sql_i64(
            &db,
            &format!("SELECT COUNT(*) FROM zone_leases WHERE holder = '{id_b}'")
        )? == 1,
        "the zone stays with the replica that took it"
    );
    check_generations(&db)?;
    eventually(Duration::from_secs(30), "the zone at its new size", || {
        let client = b.client();
        let id = zones[0].id.clone();
        async move {
            let status = client.zone_status(&id).await?;
            Ok((status.processes_idle + status.processes_active >= 30).then_some(()))
        }
    })
    .await?;
    ensure!(
        a.log().contains("zone lease lost"),
        "the resumed replica noticed it lost the zone:\n{}",
        a.log()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quickstart_against_two_replicas() -> Result<()> {
    let db = database().await;
    let options = ["--lease-ttl-ms", "3000", "--drain-ms", "0"];
    let local = "[[location]]\nname = \"local\"\ndriver = \"local\"\n";
    let a = Fleetformd::start_replica(&db, local, &options)?;
    let b = Fleetformd::start_replica(&db, local, &options)?;
    let build_dir = example_build_dir(a.dir.path());
    let mut tf = Terraform::new(&a, &quickstart_main_tf())?;
    std::fs::write(
        tf.dir.path().join("terraform.tfvars"),
        format!("build_dir=\"{}\"\n", build_dir.display()),
    )?;
    tf.apply()?;
    let fleet_id = tf.output("fleet_id")?;
    // A placement through either replica lands on a real game server, and its answer
    // names the replica serving the zone (the holder of its lease), through both.
    let holder = sql_i64(
        &db,
        &format!(
            "SELECT CASE WHEN holder_url = '{}' THEN 0 ELSE 1 END FROM zone_leases",
            a.url
        ),
    )?;
    let holder_url = [&a.url, &b.url][holder as usize].clone();
    let http = reqwest::Client::new();
    for server in [&a, &b] {
        let answer = http
            .post(format!("{}/v1/fleets/{fleet_id}/sessions", server.url))
            .bearer_auth(fleetform_e2e::TOKEN)
            .json(&PlacementRequest {
                zone: "local".into(),
                ..PlacementRequest::default()
            })
            .send()
            .await?;
        ensure!(answer.status() == 201, "placement: {}", answer.status());
        let named = answer
            .headers()
            .get("x-fleetform-zone-replica")
            .and_then(|value| value.to_str().ok())
            .map(str::to_string);
        ensure!(
            named.as_deref() == Some(holder_url.as_str()),
            "the answer through {} names {named:?} as the zone's replica, not {holder_url}",
            server.url
        );
        let session: fleetform_api::Session = answer.json().await?;
        until_on_game_server(&session).await?;
        server.client().end_session(&session.id).await?;
    }
    // The provider pointed at the other replica: nothing to change, then destroy.
    tf.env.push(("FLEETFORM_ENDPOINT".into(), b.url.clone()));
    let (changes, plan) = tf.plan_has_changes()?;
    ensure!(
        !changes,
        "a second plan through the other replica is not empty:\n{}",
        plan.text()
    );
    tf.ok(&["destroy", "-auto-approve", "-no-color", "-input=false"])?;
    let left =
        sql_i64(&db, "SELECT COUNT(*) FROM fleets")? + sql_i64(&db, "SELECT COUNT(*) FROM zones")?;
    ensure!(left == 0, "destroy left {left} fleets and zones");
    let machines = sql_i64(
        &db,
        "SELECT COUNT(*) FROM machines WHERE status NOT IN ('TERMINATED', 'UNHEALTHY')",
    )?;
    ensure!(machines == 0, "destroy left {machines} machines running");
    Ok(())
}
