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
//! Runs are closed loop (`0`: every connection places as fast as answers come) or open
//! loop at a fixed rate (latency counted from when each request was due, so a slow server
//! cannot hide its queue). Everything talks to 127.0.0.1 and stops by itself.
//!
//! ```sh
//! cargo build --release -p fleetformd --no-default-features -p fleetform-bench
//! target/release/fleetform-bench --scenario all
//! ```

mod client;
mod history;
mod server;

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
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
    connection: Connection,
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
        let answer = self.connection.place(fleet).await;
        let latency = due.elapsed();
        let code = match answer {
            Ok((status, id)) => {
                if let (Some(id), Some(hold)) = (id, self.hold) {
                    self.live.push_back((id, Instant::now() + hold));
                }
                status.as_u16().to_string()
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
        let code = match self.connection.end(&id).await {
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

fn report(workers: &[Worker], elapsed: Duration) -> RunReport {
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
    let server = Server::start(binary, (options.ends == Ends::Game).then_some(hold)).await?;
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
    let zone = api
        .create_zone(&ZoneSpec {
            fleet_id: fleet.id.clone(),
            name: "eu".into(),
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
                    processes_per_machine: scenario.processes_per_machine,
                }],
                max_server_processes: Some(processes),
                bare_metal_machines: None,
            }],
        })
        .await?;
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
    let to_available = created.elapsed();
    println!(
        "zone create → AVAILABLE: {:.2} s ({} machines, {} processes)",
        to_available.as_secs_f64(),
        scenario.machines,
        processes
    );
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
    for _ in 0..options.connections {
        workers.push(Worker {
            connection: Connection::open(server.address(), server::TOKEN).await?,
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
        let passes_from = server.log_position();
        let started = Instant::now();
        // Warm up until the first sessions have ended: from then on ends follow placements
        // at their rate (steady state).
        let measure_from = started + Duration::from_secs(2) + hold;
        let until = measure_from + Duration::from_secs(options.seconds);
        workers = run(workers, &fleet.id, rate, measure_from, until).await;
        let elapsed = Duration::from_secs(options.seconds);
        let result = report(&workers, elapsed);
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
        let passes = server.zone_passes(passes_from, &zone.id)?;
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
    server.stop().await
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
