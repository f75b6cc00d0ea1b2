//! The autoscaling simulator: replays a demand trace through the real scaling policy
//! ([`crate::autoscale::plan`]) and the real placement choice ([`crate::placement::choose`])
//! on simulated time, and scores the result against a clairvoyant lower bound.
//!
//! It is what `fleetform-sim` runs, and plain functions so tests and the tuner call it too:
//! [`trace::parse`] reads a trace, [`run`] replays it and returns a [`Report`], [`chart`]
//! draws a day of the report's timeline as SVG, [`tune`] searches the cheapest static and
//! predictive buffers that reach a miss-rate target, and [`trace::generate`] writes the
//! synthetic traces committed under `examples/traces/`.
//!
//! The model (the event loop is in `engine.rs`):
//! - every `tick` the planner runs on the zone as the reconciler would observe it
//!   ([`crate::autoscale::Observed`]: machine views, the idle clock for cooldown, the arrival
//!   forecast over the time a new machine takes to serve), and its plan is applied at once:
//!   launched machines boot for `boot`, then start their target processes, each ready after
//!   `start`; terminated machines (idle by construction) vanish; process targets are met
//!   the way the agent meets them (start new ones; stop idle ones, not-ready first);
//! - each session request is placed at its arrival time on a ready process with a free slot,
//!   or counted a miss (it is dropped; it still counts as demand for the forecast, and a
//!   miss in cooldown wakes the zone, like the placement API);
//! - in simple mode a process hosts one session and is replaced by a fresh one (ready after
//!   `start`) when it ends; in parallel mode a process has `sessions_per_process` slots.
//!
//! Architecture invariant: the simulator reads no clock and its only randomness is a seeded
//! generator, so a trace, a zone, the options and a seed give the same report every time.

mod engine;

pub mod chart;
pub mod trace;
pub mod tune;

use fleetform_api::{MachineType, SessionMode, ZoneSpec, ZoneSpecView};
use serde::Serialize;

use crate::autoscale::FleetShape;
use crate::{Error, Result};

pub use trace::Trace;

/// How session lengths are drawn when the trace does not give them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SessionDistribution {
    /// Log-normal with σ = [`LOGNORMAL_SIGMA`]: most matches last about the mean, a few run
    /// long; the shape of real match lengths.
    #[default]
    Lognormal,
    /// Exponential: memoryless, many very short and a long tail (the harshest churn).
    Exponential,
    /// Every session lasts exactly the mean.
    Fixed,
}

/// σ of the log-normal session length (of the logarithm of the length).
pub const LOGNORMAL_SIGMA: f64 = 0.5;

/// Where the `available_predicted` forecast comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ForecastInput {
    /// The raw requests forecast over the horizon
    /// ([`crate::autoscale::forecast::forecast_arrivals`]); kept for comparison.
    Arrivals,
    /// What fleetformd feeds the planner: requests forecast over the horizon less the slots
    /// ending sessions free in time, never below the requests over one process start
    /// ([`crate::autoscale::forecast::forecast_net_demand`]).
    #[default]
    Net,
}

/// Everything a run needs besides the zone and the trace.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// Time from a machine's launch to its processes starting.
    pub boot_ms: i64,
    /// Time from a process's start to its `ready`.
    pub start_ms: i64,
    /// How often the planner runs.
    pub tick_ms: i64,
    /// Mean session length (when the trace has no `session_minutes` column).
    pub session_minutes: f64,
    pub session_distribution: SessionDistribution,
    pub fleet: FleetShape,
    pub seed: u64,
    pub forecast: ForecastInput,
    /// Minutes at the start of the trace that are replayed but not scored: the replay
    /// starts with a new, empty zone, which a trace that starts at a busy hour would
    /// otherwise charge to the policy.
    pub warmup_minutes: i64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            boot_ms: 90_000,
            start_ms: 5_000,
            tick_ms: 10_000,
            session_minutes: 20.0,
            session_distribution: SessionDistribution::Lognormal,
            fleet: FleetShape {
                session_mode: SessionMode::Simple,
                sessions_per_process: 1,
            },
            seed: 1,
            forecast: ForecastInput::Arrivals,
            warmup_minutes: 0,
        }
    }
}

impl SimConfig {
    /// Checks the options a run cannot work with.
    pub fn validate(&self) -> Result<()> {
        if self.boot_ms < 0 {
            return Err(Error::invalid("boot_seconds", "must not be negative"));
        }
        if self.start_ms < 0 {
            return Err(Error::invalid("start_seconds", "must not be negative"));
        }
        if self.tick_ms <= 0 {
            return Err(Error::invalid("tick_seconds", "must be positive"));
        }
        if !(self.session_minutes.is_finite() && self.session_minutes > 0.0) {
            return Err(Error::invalid(
                "session_minutes",
                "must be a positive number of minutes",
            ));
        }
        if self.warmup_minutes < 0 {
            return Err(Error::invalid("warmup_minutes", "must not be negative"));
        }
        if let Err(message) = fleetform_api::validate::sessions_per_process(
            i64::from(self.fleet.sessions_per_process),
            self.fleet.session_mode,
        ) {
            return Err(Error::invalid("sessions_per_process", message));
        }
        Ok(())
    }
}

/// The score of one run: what `fleetform-sim` prints.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Session requests in the trace (after the warm-up).
    pub requests: u64,
    /// Requests that found no ready slot at once (dropped; after the warm-up).
    pub misses: u64,
    /// `misses / requests` (0 with no request).
    pub miss_rate: f64,
    /// Integral of the machines that exist (booting included, bare metal included) over time.
    pub machine_hours: f64,
    /// Integral of `ceil(active_sessions / slots_per_machine)` over time: what a clairvoyant
    /// scaler with instant machines would pay.
    pub lower_bound_machine_hours: f64,
    /// `machine_hours / lower_bound_machine_hours`.
    pub cost_ratio: f64,
    /// Session slots of one machine (the first VM data center's first model), the unit of
    /// the lower bound.
    pub slots_per_machine: u32,
    /// Integral of the active sessions over time.
    pub session_hours: f64,
    pub peak_machines: u32,
    pub peak_active_sessions: u32,
    /// Machines the plans launched.
    pub launches: u64,
    /// Machines the plans stopped.
    pub terminations: u64,
    /// Stops the plan asked for on a machine hosting a session; the store refuses them, so
    /// they are not done. Always 0 unless the planner breaks its invariant.
    pub refused_terminations: u64,
    /// Times the planner ran (a partial plan runs again at once).
    pub plan_passes: u64,
    /// Simulated minutes, from the trace's first minute to the end of its last.
    pub simulated_minutes: i64,
    /// Of those, the first ones, not scored.
    pub warmup_minutes: i64,
    /// One sample per simulated minute (only printed with `--timeline`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub timeline: Vec<MinuteSample>,
}

/// The state at the end of one simulated minute, and what happened during it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MinuteSample {
    /// The trace's minute.
    pub minute: i64,
    /// Requests that arrived during the minute.
    pub requests: u32,
    /// Of those, the ones that missed.
    pub misses: u32,
    /// Sessions running at the end of the minute (demand).
    pub active_sessions: u32,
    /// Session slots of ready processes, busy or free (capacity that can serve now).
    pub ready_slots: u32,
    /// Session slots of every machine, booting included (capacity paid for).
    pub machine_slots: u32,
    /// Machines, booting included.
    pub machines: u32,
    /// Machines still booting.
    pub booting_machines: u32,
}

/// Reads a zone body: the admin API's `ZoneSpec` JSON (`fleet_id` may be left out; the
/// simulator ignores it), checked with the same rules as the API.
pub fn parse_zone(json: &str) -> Result<ZoneSpecView> {
    let mut value: serde_json::Value =
        serde_json::from_str(json).map_err(|e| Error::invalid("zone", format!("not JSON: {e}")))?;
    if let Some(object) = value.as_object_mut() {
        object
            .entry("fleet_id")
            .or_insert_with(|| serde_json::Value::String("simulated".into()));
    }
    let spec: ZoneSpec = serde_path_to_error::deserialize(value)
        .map_err(|e| Error::invalid(format!("zone.{}", e.path()), e.into_inner().to_string()))?;
    if let Some(error) = fleetform_api::validate::validate_zone_spec(&spec)
        .into_iter()
        .next()
    {
        return Err(Error::invalid(
            format!("zone.{}", error.field),
            error.message,
        ));
    }
    Ok(spec.into())
}

/// Session slots of one machine of the zone: the first VM data center's first model (the
/// first data center's when there is no VM one), times the slots of a process.
pub fn slots_per_machine(spec: &ZoneSpecView, fleet: FleetShape) -> u32 {
    let dc = spec
        .data_centers
        .iter()
        .find(|dc| dc.machine_type == MachineType::Vm)
        .or_else(|| spec.data_centers.first());
    dc.map_or(1, crate::autoscale::processes_per_machine) * fleet.slots_per_process()
}

/// Replays `trace` through the zone's policy and returns the score, with the per-minute
/// timeline.
pub fn run(spec: &ZoneSpecView, trace: &Trace, config: &SimConfig) -> Result<Report> {
    config.validate()?;
    Ok(engine::Engine::new(spec, trace, config, false).run(trace))
}

#[cfg(test)]
mod tests;
