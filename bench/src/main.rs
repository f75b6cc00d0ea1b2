//! `fleetform-bench`: the placement benchmark.
//!
//! Starts a `fleetformd` (the release binary next to this one) on its embedded SQLite with
//! a `sim` location, creates a fixed zone through the admin API, waits until it is
//! `AVAILABLE`, and then drives placements over HTTP from its own client (this process, so
//! the load generator is not in the server), ending every session `--hold-ms` after it
//! was placed, over the same connections, so the zone runs in steady state. It prints, per
//! run: placements/s, p50/p99/p99.9 latency, the answer codes, ends/s, how long the
//! reconciler's passes over the zone took, and whether any machine turned UNHEALTHY.
//!
//! With `--database postgres` it first starts a throwaway Postgres of its own on
//! 127.0.0.1 (as the user `postgres`; every commit synced), and with `--replicas N` it
//! starts N fleetformd replicas on it and spreads its connections over them; `--zones N`
//! splits the scenario's machines into N zones, which the replicas share out through
//! their leases (each placement asks for the next zone, so a replica forwards the ones
//! another holds, unless `--route holder` sends each zone's placements where its answers
//! say it is served). It then prints each replica's share too. `--replica-cpus` holds each
//! fleetformd to a CPU budget of its own (a cgroup quota), as if each ran on its own host.
//!
//! Runs are closed loop (`0`: every connection places as fast as answers come) or open
//! loop at a fixed rate (latency counted from when each request was due, so a slow server
//! cannot hide its queue). Everything talks to 127.0.0.1 and stops by itself.
//!
//! ```sh
//! cargo build --release -p fleetformd --no-default-features -p fleetform-bench
//! target/release/fleetform-bench --scenario all
//! target/release/fleetform-bench --scenario parallel-600 --database postgres --zones 2 --replicas 2
//! target/release/fleetform-bench --scenario parallel-600 --database postgres --zones 2 \
//!     --replicas 2 --route holder --replica-cpus 0.5
//! ```

mod client;
mod history;
mod server;

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use fleetform_api::*;
use hdrhistogram::Histogram;

use client::Connection;
use server::Server;

/// The placement benchmark (see the crate documentation).
#[derive(Debug, Parser)]
#[command(version)]
struct Options {
    /// Which zone to measure.
    #[arg(long, value_enum, default_value = "all")]
    scenario: ScenarioName,
    /// Concurrent HTTP connections of the load generator.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Seconds each run measures (after a warm-up of two seconds and one hold).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Runs, as offered placements per second; 0 is a closed loop (as fast as it goes).
    #[arg(long, value_delimiter = ',', default_value = "0,5000")]
    rates: Vec<u32>,
    /// How long each session lasts before it is ended.
    #[arg(long, default_value_t = 2000)]
    hold_ms: u64,
    /// Who ends sessions: `api`, the benchmark, through `POST /v1/sessions/{id}/end` on
    /// its connections; `game`, the simulated game servers, which end each session after
    /// `--hold-ms` and report it through their agents, as game servers do.
    #[arg(long, value_enum, default_value = "api")]
    ends: Ends,
    /// Ended sessions (each with its exited process) written into the store before the
    /// `simple-60k-history` runs.
    #[arg(long, default_value_t = 1_000_000)]
    history: u64,
    /// The fleetformd binary (default: next to this one).
    #[arg(long)]
    fleetformd: Option<PathBuf>,
    /// The database: fleetformd's embedded `sqlite`, or `postgres` (a throwaway Postgres
    /// this benchmark starts on 127.0.0.1, every commit synced, as in production).
    #[arg(long, value_enum, default_value = "sqlite")]
    database: DatabaseKind,
    /// fleetformd replicas on the one database (more than one needs `postgres`); the
    /// connections are spread over them, as a load balancer would.
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    /// Zones the scenario's machines are split into (`eu-0`, `eu-1`…; one zone is `eu`);
    /// each placement asks for the next zone in turn. With replicas, each holds some.
    #[arg(long, default_value_t = 1)]
    zones: u32,
    /// A CPU budget for each fleetformd (in cores, e.g. `0.5`; a cgroup's CPU quota, so
    /// this needs root and a cgroup `cpu` controller): each replica as if on a host of
    /// its own, where without it every replica, Postgres and this load generator share
    /// this machine's cores, and more replicas cannot add what the machine lacks.
    #[arg(long)]
    replica_cpus: Option<f64>,
    /// Where a placement is sent: `any` replica (a connection's own, as behind a plain
    /// load balancer: a replica passes on what is for a zone another holds), or the
    /// replica `holder` of the zone's lease (as a zone-aware load balancer or matchmaker
    /// would; no replica forwards).
    #[arg(long, value_enum, default_value = "any")]
    route: Route,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Route {
    Any,
    Holder,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DatabaseKind {
    Sqlite,
    Postgres,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Ends {
    Api,
    Game,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ScenarioName {
    /// 100 machines × 6 processes, parallel mode, 1,000 sessions per process.
    #[value(name = "parallel-600")]
    Parallel600,
    /// 10,000 machines × 6 processes, simple mode.
    #[value(name = "simple-60k")]
    Simple60k,
    /// `simple-60k` with `--history` ended sessions in the store.
    #[value(name = "simple-60k-history")]
    Simple60kHistory,
    /// All three, one after the other.
    All,
}

/// A zone to measure.
#[derive(Debug, Clone, Copy)]
struct Scenario {
    name: &'static str,
    machines: u32,
    processes_per_machine: u32,
    mode: SessionMode,
    sessions_per_process: u32,
    history: bool,
}

const PARALLEL_600: Scenario = Scenario {
    name: "parallel-600",
    machines: 100,
    processes_per_machine: 6,
    mode: SessionMode::Parallel,
    sessions_per_process: 1000,
    history: false,
};
const SIMPLE_60K: Scenario = Scenario {
    name: "simple-60k",
    machines: 10_000,
    processes_per_machine: 6,
    mode: SessionMode::Simple,
    sessions_per_process: 1,
    history: false,
};

/// What one run measured.
#[derive(Debug)]
struct RunReport {
    placed: u64,
    elapsed: Duration,
    latency_us: Histogram<u64>,
    codes: BTreeMap<String, u64>,
    ended: u64,
    end_codes: BTreeMap<String, u64>,
}

/// One connection's share of a run.
struct Worker {
    /// Its connection to its replica, or (with `--route holder`) one to each replica, by
    /// replica.
    connections: Vec<Connection>,
    /// Which of `connections` goes to its own replica.
    home: usize,
    /// Which replica it talks to first.
    replica: usize,
    /// With `--route holder`: the replica each zone's placements go to (its own, until an
    /// answer names the zone's), and each replica's port.
    routes: Option<(Vec<usize>, Arc<Vec<u16>>)>,
    /// A placement body per zone, asked for in turn.
    zones: Vec<bytes::Bytes>,
    next_zone: usize,
    latency_us: Histogram<u64>,
    codes: BTreeMap<String, u64>,
    end_codes: BTreeMap<String, u64>,
    placed: u64,
    ended: u64,
    /// Its sessions, oldest first, with when each is to end.
    live: VecDeque<(String, Instant)>,
    /// How long a session lasts; None: the game servers end them.
    hold: Option<Duration>,
}

impl Worker {
    async fn place(&mut self, fleet: &str, due: Instant, counting: bool) {
        let zone = self.next_zone % self.zones.len();
        let body = self.zones[zone].clone();
        self.next_zone += 1;
        let target = self
            .routes
            .as_ref()
            .map_or(self.home, |(routes, _)| routes[zone]);
        let answer = self.connections[target].place(fleet, body).await;
        let latency = due.elapsed();
        let code = match answer {
            Ok(placement) => {
                if let (Some(id), Some(hold)) = (placement.id, self.hold) {
                    self.live.push_back((id, Instant::now() + hold));
                }
                if let (Some((routes, ports)), Some(url)) =
                    (&mut self.routes, &placement.zone_replica)
                {
                    // Where the zone is served: its next placements go there.
                    if let Some(replica) = ports
                        .iter()
                        .position(|port| url.trim_end_matches('/').ends_with(&format!(":{port}")))
                    {
                        routes[zone] = replica;
                    }
                }
                placement.status.as_u16().to_string()
            }
            Err(error) => format!("error: {error}"),
        };
        if counting {
            if code == "201" {
                self.placed += 1;
            }
            let _ = self
                .latency_us
                .record(latency.as_micros().clamp(1, u128::from(u64::MAX)) as u64);
            *self.codes.entry(code).or_default() += 1;
        }
    }

    /// Ends the oldest session if it is due (or, with `all`, whatever its age).
    async fn end_due(&mut self, all: bool, counting: bool) -> bool {
        let due = self
            .live
            .front()
            .is_some_and(|(_, at)| all || *at <= Instant::now());
        if !due {
            return false;
        }
        let (id, _) = self.live.pop_front().expect("checked");
        let code = match self.connections[self.home].end(&id).await {
            Ok(status) => status.as_u16().to_string(),
            Err(error) => format!("error: {error}"),
        };
        if counting {
            if code == "200" {
                self.ended += 1;
            }
            *self.end_codes.entry(code).or_default() += 1;
        }
        true
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

/// Runs placements from every connection until `until`; `rate` 0 is a closed loop.
async fn run(
    workers: Vec<Worker>,
    fleet: &str,
    rate: u32,
    measure_from: Instant,
    until: Instant,
) -> Vec<Worker> {
    let count = workers.len().max(1) as u32;
    let tasks: Vec<_> = workers
        .into_iter()
        .enumerate()
        .map(|(index, mut worker)| {
            let fleet = fleet.to_string();
            tokio::spawn(async move {
                // Open loop: this connection's share of the rate, staggered.
                let interval =
                    (rate > 0).then(|| Duration::from_secs_f64(f64::from(count) / f64::from(rate)));
                let mut next = Instant::now()
                    + interval.map_or(Duration::ZERO, |i| {
                        i.mul_f64(index as f64 / f64::from(count))
                    });
                loop {
                    let now = Instant::now();
                    if now >= until {
                        break;
                    }
                    match interval {
                        None => {
                            if !worker.end_due(false, now >= measure_from).await {
                                worker
                                    .place(&fleet, Instant::now(), Instant::now() >= measure_from)
                                    .await;
                            }
                        }
                        Some(interval) => {
                            if now < next {
                                // Ahead of schedule: end what is due, else wait.
                                if !worker.end_due(false, now >= measure_from).await {
                                    tokio::time::sleep_until(next.into()).await;
                                }
                                continue;
                            }
                            let due = next;
                            next += interval;
                            worker.place(&fleet, due, due >= measure_from).await;
                        }
                    }
                }
                worker
            })
        })
        .collect();
    let mut done = Vec::new();
    for task in tasks {
        done.push(task.await.expect("worker task"));
    }
    done
}

fn report<'a>(workers: impl IntoIterator<Item = &'a Worker>, elapsed: Duration) -> RunReport {
    let mut report = RunReport {
        placed: 0,
        elapsed,
        latency_us: histogram(),
        codes: BTreeMap::new(),
        ended: 0,
        end_codes: BTreeMap::new(),
    };
    for worker in workers {
        report.placed += worker.placed;
        report.ended += worker.ended;
        report
            .latency_us
            .add(&worker.latency_us)
            .expect("same bounds");
        for (code, count) in &worker.codes {
            *report.codes.entry(code.clone()).or_default() += count;
        }
        for (code, count) in &worker.end_codes {
            *report.end_codes.entry(code.clone()).or_default() += count;
        }
    }
    report
}

/// A fixed zone of `processes` processes on the benchmark's sim location.
async fn create_zone(
    api: &Client,
    fleet_id: &str,
    name: &str,
    processes: u32,
    processes_per_machine: u32,
) -> anyhow::Result<Zone> {
    Ok(api
        .create_zone(&ZoneSpec {
            fleet_id: fleet_id.to_string(),
            name: name.to_string(),
            scaling_mode: ScalingMode::Fixed,
            initial_server_processes: processes,
            buffer_rules: vec![],
            free_slots_min: None,
            free_slots_max: None,
            cooldown_minutes: 0,
            placement_strategy: PlacementStrategy::Pack,
            data_centers: vec![DataCenterSpec {
                name: "dc-1".into(),
                location: server::SIM_LOCATION.into(),
                priority: 0,
                machine_type: MachineType::Vm,
                machine_models: vec![MachineModel {
                    instance_type: "sim.large".into(),
                    processes_per_machine,
                }],
                max_server_processes: Some(processes),
                bare_metal_machines: None,
            }],
        })
        .await?)
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// Runs one scenario against a fresh fleetformd.
async fn scenario(
    options: &Options,
    scenario: Scenario,
    binary: &std::path::Path,
) -> anyhow::Result<()> {
    println!(
        "\n== {} ({} machines × {} processes, {} mode{})",
        scenario.name,
        scenario.machines,
        scenario.processes_per_machine,
        scenario.mode.as_str(),
        if scenario.history {
            format!(", {} ended sessions of history", options.history)
        } else {
            String::new()
        }
    );
    let hold = Duration::from_millis(options.hold_ms);
    let session_length = (options.ends == Ends::Game).then_some(hold);
    // Postgres: a throwaway server of this run's own, and a database on it.
    let postgres = match options.database {
        DatabaseKind::Sqlite => None,
        DatabaseKind::Postgres => {
            let server = tokio::task::spawn_blocking(|| {
                fleetform_pgtest::Server::start(fleetform_pgtest::Durability::Full)
            })
            .await?
            .map_err(|e| anyhow::anyhow!("start Postgres: {e}"))?;
            let admin = server.admin_url();
            fleetform_pgtest::psql(&admin, "CREATE DATABASE bench")
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let url = match admin.rsplit_once('/') {
                Some((server, _)) => format!("{server}/bench"),
                None => bail!("not a Postgres URL: {admin}"),
            };
            Some((server, url))
        }
    };
    let database = postgres.as_ref().map(|(_, url)| url.as_str());
    let mut servers = Vec::new();
    for _ in 0..options.replicas.max(1) {
        servers.push(Server::start(binary, session_length, database, options.replica_cpus).await?);
    }
    let server = &servers[0];
    let api = server.client()?;
    let build = api
        .create_build(&BuildSpec {
            name: "bench".into(),
            version: None,
            operating_system: OperatingSystem::Linux,
            source: "file:///opt/bench-build".into(),
            sha256: None,
        })
        .await?;
    let fleet = api
        .create_fleet(&FleetSpec {
            name: "bench".into(),
            description: None,
            build_id: build.id,
            update_mode: UpdateMode::Soft,
            launch_path: "server".into(),
            launch_parameters: None,
            process_restart_hours: 0,
            session_mode: scenario.mode,
            sessions_per_process: scenario.sessions_per_process,
            storage_gb: 50,
            force_destroy: true,
        })
        .await?;
    let processes = scenario.machines * scenario.processes_per_machine;
    let created = Instant::now();
    let zone_count = options.zones.max(1);
    let zone_names: Vec<String> = if zone_count == 1 {
        vec!["eu".into()]
    } else {
        (0..zone_count).map(|i| format!("eu-{i}")).collect()
    };
    let mut zones = Vec::new();
    let per_zone = processes / zone_count;
    for name in &zone_names {
        zones.push(
            create_zone(
                &api,
                &fleet.id,
                name,
                per_zone,
                scenario.processes_per_machine,
            )
            .await?,
        );
    }
    for zone in &zones {
        loop {
            let status = api.get_zone(&zone.id).await?.status;
            if status == ResourceStatus::Available {
                break;
            }
            if created.elapsed() > Duration::from_secs(300) {
                bail!("the zone is not AVAILABLE after 300 s ({status})");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let zone = zones[0].clone();
    let to_available = created.elapsed();
    if let Some((_, url)) = &postgres {
        // Each replica holds its share of the zones before anything is measured.
        let want = options.replicas.min(zone_count as usize);
        let started = Instant::now();
        loop {
            let holders = fleetform_pgtest::psql(
                url,
                "SELECT COUNT(DISTINCT holder) FROM zone_leases WHERE holder IS NOT NULL",
            )
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            if holders.parse::<usize>().unwrap_or(0) >= want {
                break;
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!("the zones are not spread over {want} replicas after 30 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    println!(
        "zone create → AVAILABLE: {:.2} s ({} machines, {} processes, {} zone{}, {} replica{} on {}{})",
        to_available.as_secs_f64(),
        scenario.machines,
        processes,
        zone_count,
        if zone_count == 1 { "" } else { "s" },
        servers.len(),
        if servers.len() == 1 { "" } else { "s" },
        match options.database {
            DatabaseKind::Sqlite => "SQLite",
            DatabaseKind::Postgres => "Postgres",
        },
        match options.replica_cpus {
            Some(cores) => format!(", each held to {cores} CPU"),
            None => String::new(),
        },
    );
    if scenario.history && postgres.is_some() {
        bail!("the history scenario writes its history into SQLite: run it without --database postgres");
    }
    if scenario.history {
        let started = Instant::now();
        let machines = api.fleet_machines(&fleet.id).await?.machines;
        history::seed(
            &server.database(),
            &fleet.id,
            &zone.id,
            &machines,
            options.history,
        )?;
        println!(
            "history: {} ended sessions and exited processes written in {:.1} s",
            options.history,
            started.elapsed().as_secs_f64()
        );
    }

    let mut workers = Vec::with_capacity(options.connections);
    let bodies: Vec<bytes::Bytes> = zone_names
        .iter()
        .map(|name| client::placement_body(name))
        .collect();
    let ports: Arc<Vec<u16>> = Arc::new(servers.iter().map(|s| s.address().port()).collect());
    for index in 0..options.connections {
        let replica = index % servers.len();
        let (connections, home, routes) = if options.route == Route::Holder && servers.len() > 1 {
            let mut connections = Vec::with_capacity(servers.len());
            for server in &servers {
                connections.push(Connection::open(server.address(), server::TOKEN).await?);
            }
            let routes = (vec![replica; bodies.len()], Arc::clone(&ports));
            (connections, replica, Some(routes))
        } else {
            let own = Connection::open(servers[replica].address(), server::TOKEN).await?;
            (vec![own], 0, None)
        };
        workers.push(Worker {
            connections,
            home,
            replica,
            routes,
            // Connections start on different zones, so each zone gets its share at once.
            zones: bodies.clone(),
            next_zone: index,
            latency_us: histogram(),
            codes: BTreeMap::new(),
            end_codes: BTreeMap::new(),
            placed: 0,
            ended: 0,
            live: VecDeque::new(),
            hold: (options.ends == Ends::Api).then_some(hold),
        });
    }
    for &rate in &options.rates {
        let unhealthy_before = server.unhealthy_events(&api).await?;
        let passes_from: Vec<u64> = servers.iter().map(Server::log_position).collect();
        let started = Instant::now();
        // Warm up until the first sessions have ended: from then on ends follow placements
        // at their rate (steady state).
        let measure_from = started + Duration::from_secs(2) + hold;
        let until = measure_from + Duration::from_secs(options.seconds);
        workers = run(workers, &fleet.id, rate, measure_from, until).await;
        let elapsed = Duration::from_secs(options.seconds);
        let result = report(workers.iter(), elapsed);
        let per_replica: Vec<RunReport> = if servers.len() > 1 {
            (0..servers.len())
                .map(|replica| report(workers.iter().filter(|w| w.replica == replica), elapsed))
                .collect()
        } else {
            Vec::new()
        };
        // Back to an empty zone for the next run: every session still open is ended.
        workers = {
            let tasks: Vec<_> = workers
                .into_iter()
                .map(|mut worker| {
                    tokio::spawn(async move {
                        while worker.end_due(true, false).await {}
                        worker.latency_us = histogram();
                        worker.codes.clear();
                        worker.end_codes.clear();
                        worker.placed = 0;
                        worker.ended = 0;
                        worker
                    })
                })
                .collect();
            let mut back = Vec::new();
            for task in tasks {
                back.push(task.await?);
            }
            back
        };
        let unhealthy = server.unhealthy_events(&api).await? - unhealthy_before;
        let mut passes = Vec::new();
        for (replica, from) in servers.iter().zip(&passes_from) {
            passes.extend(replica.zone_passes(*from, &zone.id)?);
        }
        let latency = &result.latency_us;
        println!(
            "{}: {:.0} placements/s ({} in {} s), latency p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
            if rate == 0 {
                format!("closed loop, {} connections", options.connections)
            } else {
                format!("open loop at {rate}/s, {} connections", options.connections)
            },
            result.placed as f64 / result.elapsed.as_secs_f64(),
            result.placed,
            options.seconds,
            ms(latency.value_at_quantile(0.50)),
            ms(latency.value_at_quantile(0.99)),
            ms(latency.value_at_quantile(0.999)),
            ms(latency.max()),
        );
        match options.ends {
            Ends::Api => println!(
                "  answers {:?}; ends {:.0}/s {:?}; machines turned UNHEALTHY: {unhealthy}",
                result.codes,
                result.ended as f64 / result.elapsed.as_secs_f64(),
                result.end_codes,
            ),
            Ends::Game => println!(
                "  answers {:?}; sessions ended by their game servers; machines turned UNHEALTHY: {unhealthy}",
                result.codes,
            ),
        }
        for (replica, result) in per_replica.iter().enumerate() {
            let latency = &result.latency_us;
            println!(
                "  through replica {replica}: {:.0} placements/s, p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms; answers {:?}",
                result.placed as f64 / result.elapsed.as_secs_f64(),
                ms(latency.value_at_quantile(0.50)),
                ms(latency.value_at_quantile(0.99)),
                ms(latency.value_at_quantile(0.999)),
                result.codes,
            );
        }
        if !passes.is_empty() {
            let mut sorted = passes.clone();
            sorted.sort_by(f64::total_cmp);
            println!(
                "  reconciler passes over the zone: {} (median {:.1} ms, max {:.1} ms)",
                sorted.len(),
                sorted[sorted.len() / 2],
                sorted[sorted.len() - 1]
            );
        }
    }
    for server in servers {
        server.stop().await?;
    }
    drop(postgres);
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = Options::parse();
    let binary = match &options.fleetformd {
        Some(path) => path.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("no directory")?
            .join("fleetformd"),
    };
    anyhow::ensure!(
        options.replicas <= 1 || options.database == DatabaseKind::Postgres,
        "--replicas {} needs --database postgres",
        options.replicas
    );
    anyhow::ensure!(
        options
            .replica_cpus
            .is_none_or(|cores| cores > 0.0 && cores.is_finite()),
        "--replica-cpus: a number of cores above 0, such as 0.5"
    );
    anyhow::ensure!(
        binary.exists(),
        "{} not found: build it first (cargo build --release -p fleetformd --no-default-features -p fleetform-bench)",
        binary.display()
    );
    let history = Scenario {
        name: "simple-60k-history",
        history: true,
        ..SIMPLE_60K
    };
    let scenarios: Vec<Scenario> = match options.scenario {
        ScenarioName::Parallel600 => vec![PARALLEL_600],
        ScenarioName::Simple60k => vec![SIMPLE_60K],
        ScenarioName::Simple60kHistory => vec![history],
        ScenarioName::All => vec![PARALLEL_600, SIMPLE_60K, history],
    };
    println!(
        "fleetform-bench: {} connections, {} s a run after a warm-up of 2 s + one hold, sessions held {} ms and ended by {}, rates {:?} (0: closed loop); {}",
        options.connections,
        options.seconds,
        options.hold_ms,
        match options.ends {
            Ends::Api => "the benchmark",
            Ends::Game => "their game servers",
        },
        options.rates,
        binary.display()
    );
    for scenario_spec in scenarios {
        scenario(&options, scenario_spec, &binary).await?;
    }
    Ok(())
}
