//! `fleetform-sim`: replays a demand trace through fleetform's real scaling policy and
//! placement code on simulated time and prints a JSON report. Thin: options, files, then
//! [`fleetformd::simulator`].

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use fleetform_api::SessionMode;
use fleetformd::autoscale::FleetShape;
use fleetformd::simulator::trace::{self, Pattern};
use fleetformd::simulator::tune::{self, BufferKind};
use fleetformd::simulator::{
    self, chart, ForecastInput, Report, SessionDistribution, SimConfig, Trace,
};

/// Replays a demand trace through fleetform's real autoscaling planner and placement code
/// on simulated time (no waiting: a week replays in seconds) and prints a JSON report.
///
/// The report: requests; misses (requests that found no ready server at once); miss_rate;
/// machine_hours (machines that exist, booting included, over time);
/// lower_bound_machine_hours (what a clairvoyant scaler with instant machines would pay:
/// the integral of ceil(requested sessions running / slots per machine)); cost_ratio
/// (machine_hours / lower bound); peaks and counters; with --timeline, one sample a minute.
///
/// Example:
///   fleetform-sim --trace examples/traces/launch-spike.csv \
///     --zone examples/traces/zone-predictive.json \
///     --boot-seconds 90 --session-minutes 20 --seed 1
#[derive(Debug, Parser)]
#[command(
    name = "fleetform-sim",
    version,
    verbatim_doc_comment,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(flatten)]
    run: RunArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Finds, for each kind of single buffer rule, the smallest (so cheapest) amount that
    /// keeps the miss rate at or under a target, and prints each one's report as JSON. The
    /// zone's buffer rules are replaced; everything else of the zone is kept.
    Tune(TuneArgs),
    /// Writes a synthetic demand trace (CSV) from a pattern; the same arguments always
    /// give the same trace.
    GenTrace(GenTraceArgs),
}

/// The simulation inputs shared by a replay and the tuner.
#[derive(Debug, Args)]
struct SimArgs {
    /// The demand trace: CSV with the header `minute,zone,session_requests` and an optional
    /// fourth column `session_minutes` (the length of each of that row's sessions; without
    /// it lengths are drawn). Minute 0 is midnight, for the daily pattern of the forecast.
    #[arg(long, required = true, value_name = "TRACE.csv")]
    trace: Option<PathBuf>,
    /// The zone: the JSON body of the admin API's `POST /v1/zones` (`fleet_id` is ignored
    /// and may be left out), so a real zone's rules can be replayed.
    #[arg(long, required = true, value_name = "ZONE.json")]
    zone: Option<PathBuf>,
    /// Replay only the trace rows of this zone; without it, every row must be for the same
    /// zone.
    #[arg(long, value_name = "NAME")]
    zone_name: Option<String>,
    /// Replace the zone's buffer rules by this one rule: `servers=N` (available_servers),
    /// `percent=N` (available_percent) or `predicted=N` (available_predicted), to try
    /// amounts without editing ZONE.json.
    #[arg(long, value_name = "KIND=N", value_parser = parse_buffer)]
    buffer: Option<(BufferKind, u32)>,
    /// Time from a machine's launch until it starts its server processes.
    #[arg(long, default_value_t = 90.0, value_name = "S")]
    boot_seconds: f64,
    /// Time from a server process's start until it is ready for a session (also the restart
    /// after a session in simple mode).
    #[arg(long, default_value_t = 5.0, value_name = "S")]
    start_seconds: f64,
    /// How often the planner runs (fleetformd reacts to every change within a second;
    /// larger ticks are pessimistic).
    #[arg(long, default_value_t = 10.0, value_name = "S")]
    tick_seconds: f64,
    /// Mean session length, for traces without a `session_minutes` column.
    #[arg(long, default_value_t = 20.0, value_name = "M")]
    session_minutes: f64,
    /// How session lengths are drawn around the mean: log-normal (σ = 0.5 of the
    /// logarithm: most matches near the mean, a few long ones), exponential, or all equal.
    #[arg(long, value_enum, default_value_t = Distribution::Lognormal)]
    session_distribution: Distribution,
    /// The fleet's session mode: simple (one session per process, then a fresh process) or
    /// parallel (`--sessions-per-process` at once).
    #[arg(long, value_enum, default_value_t = Mode::Simple)]
    session_mode: Mode,
    /// Session slots per process in parallel mode (must be 1 in simple mode).
    #[arg(long, default_value_t = 1, value_name = "N")]
    sessions_per_process: u32,
    /// Seed of the generator that spreads each minute's requests over the minute and draws
    /// session lengths: the same inputs and seed give the same report.
    #[arg(long, default_value_t = 1, value_name = "N")]
    seed: u64,
    /// What `available_predicted` rules are fed: `net` (what fleetformd does: requests
    /// forecast over boot + start, less the slots sessions ending meanwhile free in time)
    /// or `arrivals` (the raw requests forecast, for comparison).
    #[arg(long, value_enum, default_value_t = Forecast::Net)]
    forecast: Forecast,
    /// Replay the first M minutes but leave them out of the score (requests, misses,
    /// machine-hours, lower bound): the replay starts with a new, empty zone, which a trace
    /// that starts at a busy hour would otherwise charge to the policy.
    #[arg(long, default_value_t = 0, value_name = "M")]
    warmup_minutes: i64,
}

#[derive(Debug, Args)]
struct RunArgs {
    #[command(flatten)]
    sim: SimArgs,
    /// Add a per-minute `timeline` to the report (requests, misses, active sessions, ready
    /// slots, machine slots, machines, booting machines at the end of each minute).
    #[arg(long)]
    timeline: bool,
    /// Also write an SVG chart of one day: demand, capacity (ready slots), paid capacity and
    /// misses per minute.
    #[arg(long, value_name = "OUT.svg")]
    chart: Option<PathBuf>,
    /// The day the chart shows (day 0 is trace minutes 0–1439); default: the trace's last.
    #[arg(long, value_name = "D", requires = "chart")]
    chart_day: Option<i64>,
    /// The chart's title; default: the zone's buffer rules.
    #[arg(long, value_name = "TEXT", requires = "chart")]
    chart_title: Option<String>,
}

#[derive(Debug, Args)]
struct TuneArgs {
    #[command(flatten)]
    sim: SimArgs,
    /// The miss rate each rule must stay at or under.
    #[arg(long, default_value_t = 0.01, value_name = "RATE")]
    target_miss_rate: f64,
    /// The kinds of rule to tune.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Kind::Servers, Kind::Percent, Kind::Predicted])]
    kinds: Vec<Kind>,
}

#[derive(Debug, Args)]
struct GenTraceArgs {
    /// steady-daily: a smooth daily cycle (peak around 21:00, about 1/10 of it at 06:00);
    /// launch-spike: a normal day, then at 15:00 on the second day a launch that jumps within
    /// two minutes to about 3.7× the usual peak and decays over the evening; weekend: Monday
    /// to Sunday, weekends 1.5× busier with a high afternoon.
    #[arg(long, value_enum)]
    pattern: PatternArg,
    /// Days to generate.
    #[arg(long, default_value_t = 2)]
    days: u32,
    /// Mean requests per minute at the usual daily peak.
    #[arg(long, default_value_t = 600.0, value_name = "N")]
    peak_per_minute: f64,
    /// Seed of the Poisson noise.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The zone column.
    #[arg(long, default_value = "eu-central", value_name = "NAME")]
    zone_name: String,
    /// Write here instead of standard output.
    #[arg(long, value_name = "OUT.csv")]
    output: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Distribution {
    Lognormal,
    Exponential,
    Fixed,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Mode {
    Simple,
    Parallel,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Forecast {
    Arrivals,
    Net,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Kind {
    Servers,
    Percent,
    Predicted,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum PatternArg {
    SteadyDaily,
    LaunchSpike,
    Weekend,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        None => replay(cli.run),
        Some(Command::Tune(args)) => tune(args),
        Some(Command::GenTrace(args)) => gen_trace(args),
    }
}

/// The zone, the trace and the configuration the options describe.
fn load(args: &SimArgs) -> anyhow::Result<(fleetform_api::ZoneSpecView, Trace, SimConfig)> {
    let zone_path = args.zone.as_deref().context("--zone is required")?;
    let trace_path = args.trace.as_deref().context("--trace is required")?;
    let mut spec = simulator::parse_zone(&read(zone_path)?)
        .with_context(|| format!("zone {}", zone_path.display()))?;
    if let Some((kind, amount)) = args.buffer {
        spec = tune::with_rule(&spec, kind.rule(amount));
        let body = fleetform_api::ZoneSpec::from(spec.clone());
        if let Some(error) = fleetform_api::validate::validate_zone_spec(&body)
            .into_iter()
            .next()
        {
            anyhow::bail!("--buffer: {error}");
        }
    }
    let trace = trace::parse(&read(trace_path)?, args.zone_name.as_deref())
        .with_context(|| format!("trace {}", trace_path.display()))?;
    let millis = |seconds: f64, name: &str| -> anyhow::Result<i64> {
        anyhow::ensure!(
            seconds.is_finite() && seconds >= 0.0,
            "--{name} must be a non-negative number of seconds"
        );
        Ok((seconds * 1000.0).round() as i64)
    };
    let config = SimConfig {
        boot_ms: millis(args.boot_seconds, "boot-seconds")?,
        start_ms: millis(args.start_seconds, "start-seconds")?,
        tick_ms: millis(args.tick_seconds, "tick-seconds")?,
        session_minutes: args.session_minutes,
        session_distribution: match args.session_distribution {
            Distribution::Lognormal => SessionDistribution::Lognormal,
            Distribution::Exponential => SessionDistribution::Exponential,
            Distribution::Fixed => SessionDistribution::Fixed,
        },
        fleet: FleetShape {
            session_mode: match args.session_mode {
                Mode::Simple => SessionMode::Simple,
                Mode::Parallel => SessionMode::Parallel,
            },
            sessions_per_process: args.sessions_per_process,
        },
        seed: args.seed,
        forecast: match args.forecast {
            Forecast::Arrivals => ForecastInput::Arrivals,
            Forecast::Net => ForecastInput::Net,
        },
        warmup_minutes: args.warmup_minutes,
    };
    config.validate()?;
    Ok((spec, trace, config))
}

fn parse_buffer(text: &str) -> Result<(BufferKind, u32), String> {
    let (kind, amount) = text
        .split_once('=')
        .ok_or_else(|| format!("expected KIND=N, got {text:?}"))?;
    let kind = match kind {
        "servers" => BufferKind::Servers,
        "percent" => BufferKind::Percent,
        "predicted" => BufferKind::Predicted,
        other => {
            return Err(format!(
                "unknown kind {other:?}: servers, percent or predicted"
            ))
        }
    };
    let amount = amount
        .parse()
        .map_err(|_| format!("not a non-negative integer: {amount:?}"))?;
    Ok((kind, amount))
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))
}

fn replay(args: RunArgs) -> anyhow::Result<()> {
    let (spec, trace, config) = load(&args.sim)?;
    let started = Instant::now();
    let mut report = simulator::run(&spec, &trace, &config)?;
    eprintln!(
        "fleetform-sim: {} simulated minutes in {:.2}s",
        report.simulated_minutes,
        started.elapsed().as_secs_f64()
    );
    if let Some(path) = &args.chart {
        let last_day = trace.span().map_or(0, |(_, last)| last.div_euclid(1440));
        let day = args.chart_day.unwrap_or(last_day);
        let samples = chart::day(&report.timeline, day);
        anyhow::ensure!(!samples.is_empty(), "the trace has no minute on day {day}");
        let title = args
            .chart_title
            .clone()
            .unwrap_or_else(|| chart::rules_label(&spec.buffer_rules));
        let svg = chart::svg(samples, &title, &subtitle(&report, samples, day, &config));
        std::fs::write(path, svg).with_context(|| format!("write {}", path.display()))?;
    }
    if !args.timeline {
        report.timeline.clear();
    }
    print_json(&report)
}

/// The line under a chart's title: the day's figures and the run's.
fn subtitle(
    report: &Report,
    samples: &[simulator::MinuteSample],
    day: i64,
    config: &SimConfig,
) -> String {
    let requests: u64 = samples.iter().map(|s| u64::from(s.requests)).sum();
    let misses: u64 = samples.iter().map(|s| u64::from(s.misses)).sum();
    let day_rate = if requests == 0 {
        0.0
    } else {
        misses as f64 / requests as f64
    };
    format!(
        "day {day}: {requests} requests, {misses} misses ({:.2}%) · whole run: miss rate {:.2}%, cost ratio {:.3} · boot {}s",
        100.0 * day_rate,
        100.0 * report.miss_rate,
        report.cost_ratio,
        config.boot_ms / 1000
    )
}

fn tune(args: TuneArgs) -> anyhow::Result<()> {
    let (spec, trace, config) = load(&args.sim)?;
    let kinds: Vec<BufferKind> = args
        .kinds
        .iter()
        .map(|kind| match kind {
            Kind::Servers => BufferKind::Servers,
            Kind::Percent => BufferKind::Percent,
            Kind::Predicted => BufferKind::Predicted,
        })
        .collect();
    let started = Instant::now();
    let tuning = tune::tune(&spec, &trace, &config, &kinds, args.target_miss_rate)?;
    eprintln!(
        "fleetform-sim tune: {} replays in {:.1}s",
        tuning.results.iter().map(|r| r.runs).sum::<u32>(),
        started.elapsed().as_secs_f64()
    );
    print_json(&tuning)
}

fn gen_trace(args: GenTraceArgs) -> anyhow::Result<()> {
    let pattern = match args.pattern {
        PatternArg::SteadyDaily => Pattern::SteadyDaily,
        PatternArg::LaunchSpike => Pattern::LaunchSpike,
        PatternArg::Weekend => Pattern::Weekend,
    };
    anyhow::ensure!(
        args.peak_per_minute.is_finite() && args.peak_per_minute >= 0.0,
        "--peak-per-minute must be a non-negative number"
    );
    let generated = trace::generate(
        pattern,
        args.days,
        args.peak_per_minute,
        args.seed,
        &args.zone_name,
    );
    let csv = trace::to_csv(&generated);
    match &args.output {
        Some(path) => {
            std::fs::write(path, csv).with_context(|| format!("write {}", path.display()))?
        }
        None => print_out(&csv)?,
    }
    Ok(())
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    print_out(&(serde_json::to_string_pretty(value)? + "\n"))
}

/// Writes to standard output; a reader that went away (`| head`) is not an error.
fn print_out(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => Err(error.into()),
        _ => Ok(()),
    }
}
