//! The zone reconciler: for every zone, observe → plan → act, level-triggered.
//!
//! Each zone's pass ([`reconcile`]) lists what exists (the store's picture plus the
//! drivers' liveness, [`health`]), asks the pure [`crate::autoscale::plan`] what should
//! exist, and does the difference. A pass is idempotent and holds no state between passes
//! but the drivers' escalation timers, so a restarted fleetformd picks up exactly where the
//! last one stopped: it recovers its picture from the store and re-adopts the machines
//! that are still alive.
//!
//! Scheduling ([`Reconciler::run`]): a zone is passed when the store says it changed (a
//! coalesced set of dirty zones from [`crate::changes`]), when its last plan was partial,
//! and at least every `interval`. Each zone's pass runs as its own task, so a slow or
//! failing driver call holds up that zone only; a zone is never passed twice at once.
//! [`sweep`] is the orphan sweep of cloud locations; [`demand`] and [`shortages`] are
//! what the planner remembers between passes.

pub mod demand;
pub mod health;
pub mod reconcile;
pub mod shortages;
pub mod sweep;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use fleetform_api::{EventLevel, EventProducer};
use futures::future::BoxFuture;
use futures::StreamExt;
use rand::RngCore;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::changes::Notice;
use crate::leases::Leases;
use crate::machines::Locations;
use crate::store::{EventRecord, MachineRecord, Store};
use crate::Result;

pub use demand::Demand;
pub use reconcile::{drained, zone_status, PassOutcome};
pub use shortages::{Shortages, SHORTAGE_MS};
pub use sweep::{sweep_verdict, SweepVerdict};

/// About how long a game-server process takes from start to ready (part of the forecast
/// horizon of predictive buffer rules).
pub const PROCESS_START_ESTIMATE: Duration = Duration::from_secs(5);

/// How long a machine being terminated may take to drain (its agent stopping its
/// processes) before its driver stops it anyway.
pub const DRAIN_TIMEOUT_MS: i64 = 60_000;

/// How many heartbeat intervals a machine may stay silent before it is UNHEALTHY.
pub const MISSED_HEARTBEATS: u32 = 3;

/// How long a machine row may wait for its driver's answer before the reconciler asks the
/// driver whether it launched it (a crash or a failed call lost the answer).
pub const LAUNCH_OUTCOME_MS: i64 = 5_000;

/// Shortest time between two passes of a zone woken by changes: under a stream of
/// placements a zone is dirty all the time, and the plan need not see every one.
pub const MIN_PASS_GAP: Duration = Duration::from_millis(200);

/// Between two change-driven passes of a zone, at least this many times as long as its
/// last pass took: a large zone spends at most a tenth of the time being reconciled.
const PASS_COST_FACTOR: u32 = 10;

/// Runs `tasks`, at most `limit` at once, and returns their outputs (in completion order).
/// The tasks are boxed: a stream of closures' futures borrowing from a pass is more than
/// the compiler can prove `Send` inside a spawned pass.
pub async fn in_parallel<'a, T: Send + 'a>(tasks: Vec<BoxFuture<'a, T>>, limit: usize) -> Vec<T> {
    futures::stream::iter(tasks)
        .buffer_unordered(limit.max(1))
        .collect()
        .await
}

/// A new agent token and the hash the store keeps.
pub fn new_agent_token() -> (String, String) {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let hash = token_hash(&token);
    (format!("fft_{token}"), hash)
}

/// The stored form of an agent token.
pub fn token_hash(token: &str) -> String {
    let token = token.strip_prefix("fft_").unwrap_or(token);
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Reconciles every zone, forever.
#[derive(Debug, Clone)]
pub struct Reconciler {
    pub store: Arc<dyn Store>,
    pub locations: Arc<Locations>,
    /// Where agents reach this server.
    pub server_url: String,
    /// Every zone is passed at least this often.
    pub interval: Duration,
    /// Placement requests per zone, for predictive buffer rules.
    pub demand: Arc<Demand>,
    /// Machine models the cloud recently had no capacity for.
    pub shortages: Arc<Shortages>,
    /// How often agents sync; a machine silent for [`MISSED_HEARTBEATS`] of them is
    /// UNHEALTHY.
    pub heartbeat_interval: Duration,
    /// When each location's orphan sweep last ran.
    pub sweeps: Arc<std::sync::Mutex<HashMap<String, std::time::Instant>>>,
    /// The zones this replica holds: [`Reconciler::run`] passes only those, each pass
    /// under its lease (so its writes are fenced by it).
    pub leases: Arc<Leases>,
}

/// When a zone was last passed, and how that went.
#[derive(Debug, Clone, Copy)]
struct ZoneClock {
    started: Instant,
    took: Duration,
    partial: bool,
}

impl Reconciler {
    /// Runs passes until `shutdown` resolves (see the module documentation).
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let listener = self.store.changes().listen();
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(String, ZoneClock)>();
        let mut running: HashSet<String> = HashSet::new();
        let mut clocks: HashMap<String, ZoneClock> = HashMap::new();
        // Zones that changed and wait for their gap, or for their running pass to end.
        let mut dirty: HashSet<String> = HashSet::new();
        let mut dirty_fleets: HashSet<String> = HashSet::new();
        let mut next_full = Instant::now();
        let mut sweeping: HashSet<String> = HashSet::new();
        let (swept_tx, mut swept_rx) = mpsc::unbounded_channel::<String>();
        loop {
            for notice in listener.take() {
                match notice {
                    Notice::Fleet { fleet_id } => {
                        dirty_fleets.insert(fleet_id);
                    }
                    other => {
                        if let Some(zone_id) = other.zone_id() {
                            dirty.insert(zone_id.to_string());
                        }
                    }
                }
            }
            let now = Instant::now();
            let full = now >= next_full;
            let mut wake_at = next_full;
            match self.store.list_zones().await {
                Err(error) => tracing::warn!(%error, "reconciler: listing zones failed; retrying"),
                Ok(zones) => {
                    for record in zones {
                        let id = record.zone.id.clone();
                        if dirty_fleets.contains(&record.zone.spec.fleet_id) {
                            dirty.insert(id.clone());
                        }
                        if running.contains(&id) {
                            continue;
                        }
                        // Another replica reconciles it, or nobody yet: a zone no round
                        // has seen asks the lease manager for one now.
                        let Some(lease) = self.leases.held(&id) else {
                            if !self.leases.knows(&id) {
                                self.leases.poke();
                            }
                            continue;
                        };
                        let clock = clocks.get(&id).copied();
                        let due_by_change = match clock {
                            None => true,
                            Some(clock) if clock.partial => true,
                            Some(clock) => {
                                let gap = MIN_PASS_GAP.max(clock.took * PASS_COST_FACTOR);
                                if dirty.contains(&id) && now < clock.started + gap {
                                    wake_at = wake_at.min(clock.started + gap);
                                    false
                                } else {
                                    dirty.contains(&id)
                                }
                            }
                        };
                        if !(full || due_by_change) {
                            continue;
                        }
                        dirty.remove(&id);
                        running.insert(id.clone());
                        let reconciler = self.clone();
                        let done = done_tx.clone();
                        tokio::spawn(crate::leases::scope(lease, async move {
                            let started = Instant::now();
                            let outcome = match reconciler.reconcile_zone(&record).await {
                                Ok(outcome) => outcome,
                                Err(error) => {
                                    tracing::warn!(zone = %record.zone.id, %error, "reconcile failed; retrying");
                                    PassOutcome::default()
                                }
                            };
                            let took = started.elapsed();
                            tracing::debug!(
                                zone = %record.zone.id,
                                machines = outcome.machines,
                                took_ms = took.as_secs_f64() * 1000.0,
                                observe_ms = outcome.observe_ms,
                                check_ms = outcome.check_ms,
                                plan_ms = outcome.plan_ms,
                                partial = outcome.partial,
                                "zone reconciled"
                            );
                            let _ = done.send((
                                record.zone.id.clone(),
                                ZoneClock {
                                    started,
                                    took,
                                    partial: outcome.partial,
                                },
                            ));
                        }));
                    }
                    dirty_fleets.clear();
                }
            }
            for location in self.locations.values() {
                if sweeping.contains(&location.name) || !self.sweep_due(&location.name) {
                    continue;
                }
                sweeping.insert(location.name.clone());
                let reconciler = self.clone();
                let name = location.name.clone();
                let swept = swept_tx.clone();
                tokio::spawn(async move {
                    if let Err(error) = reconciler.sweep(&name).await {
                        tracing::warn!(location = %name, %error, "orphan sweep failed");
                    }
                    let _ = swept.send(name);
                });
            }
            if full {
                next_full = now + self.interval;
                wake_at = wake_at.min(next_full);
            }
            tokio::select! {
                _ = &mut shutdown => return,
                Some((zone_id, clock)) = done_rx.recv() => {
                    running.remove(&zone_id);
                    clocks.insert(zone_id, clock);
                    while let Ok((zone_id, clock)) = done_rx.try_recv() {
                        running.remove(&zone_id);
                        clocks.insert(zone_id, clock);
                    }
                }
                Some(name) = swept_rx.recv() => {
                    sweeping.remove(&name);
                }
                _ = listener.notified() => {}
                _ = tokio::time::sleep_until(wake_at) => {}
            }
        }
    }

    /// Whether a location's orphan sweep is due (and, if so, marks it started).
    fn sweep_due(&self, location: &str) -> bool {
        let Some(driver) = self.locations.get(location).map(|l| l.driver.clone()) else {
            return false;
        };
        let mut sweeps = self.sweeps.lock().expect("sweep lock");
        let due = sweeps
            .get(location)
            .is_none_or(|at| at.elapsed() >= driver.sweep_interval());
        if due {
            sweeps.insert(location.to_string(), std::time::Instant::now());
        }
        due
    }

    /// One pass over every zone, one after the other, and the sweeps that are due (for
    /// tests and tools; [`Reconciler::run`] schedules zones on its own).
    pub async fn pass(&self) -> Result<()> {
        for record in self.store.list_zones().await? {
            if let Err(error) = self.reconcile_zone(&record).await {
                tracing::warn!(zone = %record.zone.id, %error, "reconcile failed");
            }
        }
        let names: Vec<String> = self.locations.keys().cloned().collect();
        for name in names {
            if self.sweep_due(&name) {
                if let Err(error) = self.sweep(&name).await {
                    tracing::warn!(location = %name, %error, "orphan sweep failed");
                }
            }
        }
        Ok(())
    }

    /// Records an event (and logs it).
    async fn event(&self, event: EventRecord) -> Result<()> {
        match event.level {
            EventLevel::Info => tracing::info!(code = %event.code, "{}", event.message),
            _ => tracing::warn!(code = %event.code, "{}", event.message),
        }
        self.store.insert_event(&event).await
    }
}

/// An event a machine produced, naming its fleet, zone and itself.
fn machine_event(
    level: EventLevel,
    code: &str,
    machine: &MachineRecord,
    message: String,
) -> EventRecord {
    EventRecord::new(level, EventProducer::Machine, code, message)
        .fleet(&machine.fleet_id)
        .zone(&machine.zone_id)
        .machine(&machine.id)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use fleetform_api::{MachineStatus, ResourceStatus};

    #[test]
    fn zone_status_cases() {
        use ResourceStatus::*;
        #[rustfmt::skip]
        let cases = [
            ("new zone with no machine stays new", New, false, false, 0, 2, New),
            ("first machine makes it launching", New, false, true, 0, 2, Launching),
            ("initial processes up make it available", Launching, false, true, 2, 2, Available),
            ("not enough yet", Launching, false, true, 1, 2, Launching),
            ("available stays available while sessions use processes", Available, false, true, 0, 2, Available),
            ("deleting is not undone", Deleting, true, true, 5, 2, Deleting),
            ("cooldown", Available, true, false, 0, 2, AvailableCooldown),
            ("woken from cooldown it launches again", AvailableCooldown, false, false, 0, 2, Launching),
        ];
        for (name, current, cooling, machines, up, initial, want) in cases {
            assert_eq!(
                zone_status(current, cooling, machines, up, initial),
                want,
                "{name}"
            );
        }
    }

    pub fn machine(status: MachineStatus, driver_ref: Option<&str>) -> MachineRecord {
        MachineRecord {
            id: "mch-1".into(),
            zone_id: "zone-1".into(),
            fleet_id: "flt-1".into(),
            data_center: "east".into(),
            location: "us-east-1".into(),
            instance_type: "c5.large".into(),
            processes_per_machine: 2,
            status,
            build_id: "bld-1".into(),
            driver_ref: driver_ref.map(str::to_string),
            address: None,
            agent_error: None,
            created_at_ms: 1_000,
            last_heartbeat_ms: Some(2_000),
            target_processes: 2,
            terminating_since_ms: None,
            terminated_at_ms: None,
            termination_reason: None,
            bare_metal_id: None,
        }
    }

    #[test]
    fn drained_cases() {
        let mut draining = machine(MachineStatus::Terminating, Some("i-1"));
        draining.terminating_since_ms = Some(10_000);
        assert!(
            !drained(&draining, 1, 10_000 + DRAIN_TIMEOUT_MS),
            "still running a process"
        );
        assert!(
            drained(&draining, 1, 10_001 + DRAIN_TIMEOUT_MS),
            "drain timed out"
        );
        assert!(drained(&draining, 0, 10_000), "no process of its own left");
        let mut never_registered = draining.clone();
        never_registered.last_heartbeat_ms = None;
        assert!(drained(&never_registered, 1, 10_000), "nothing to drain");
    }

    #[test]
    fn token_hash_ignores_prefix_and_tokens_differ() {
        let (token, hash) = new_agent_token();
        assert_eq!(token_hash(&token), hash);
        assert_ne!(new_agent_token().0, token);
    }
}
