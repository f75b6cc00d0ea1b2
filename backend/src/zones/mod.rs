//! The zone reconciler: for every zone, observe → plan → act, level-triggered.
//!
//! Each pass lists what exists (the store's picture plus the drivers' liveness), asks the
//! pure [`crate::autoscale::plan`] what should exist, and does the difference. A pass is
//! idempotent and holds no state between passes but the drivers' escalation timers, so a
//! restarted fleetformd picks up exactly where the last one stopped: it recovers its
//! picture from the store and re-adopts the machines that are still alive.

use std::sync::Arc;
use std::time::Duration;

use fleetform_api::{MachineStatus, ResourceStatus, ZoneSpecView};
use rand::RngCore;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::autoscale::forecast::{forecast_net_demand, ArrivalHistory};
use crate::autoscale::{self, FleetShape, MachineView, Observed};
use crate::machines::{LaunchRequest, Liveness, Locations};
use crate::store::{MachineRecord, Store, ZoneObservation, ZoneRecord};
use crate::time::{new_id, now_ms};
use crate::{Error, Result};

/// About how long a game-server process takes from start to ready (part of the forecast
/// horizon of predictive buffer rules).
pub const PROCESS_START_ESTIMATE: Duration = Duration::from_secs(5);

/// How long a launched machine may take to sync for the first time before it is replaced.
pub const REGISTER_TIMEOUT_MS: i64 = 120_000;

/// A counter bumped whenever something placement, agents or the reconciler care about
/// changes; waiters re-read the store when it moves. Cheap and lossless (watch keeps only
/// the latest value, and every waiter re-reads everything).
#[derive(Debug, Clone)]
pub struct Changes {
    sender: Arc<watch::Sender<u64>>,
}

impl Default for Changes {
    fn default() -> Self {
        Changes {
            sender: Arc::new(watch::channel(0).0),
        }
    }
}

impl Changes {
    /// Signals a change.
    pub fn bump(&self) {
        self.sender.send_modify(|generation| *generation += 1);
    }

    /// A receiver that wakes on the next change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.sender.subscribe()
    }
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
    pub changes: Changes,
    /// Where agents reach this server.
    pub server_url: String,
    pub interval: Duration,
    /// Placement requests per zone, for predictive buffer rules.
    pub demand: Arc<Demand>,
    /// Machine models the cloud recently had no capacity for.
    pub shortages: Arc<Shortages>,
}

impl Reconciler {
    /// Runs passes until `shutdown` resolves: after every change, and at least every
    /// `interval` (the periodic requeue that makes the loop eventually consistent).
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut changes = self.changes.subscribe();
        loop {
            if let Err(error) = self.pass().await {
                tracing::warn!(%error, "reconcile pass failed; retrying");
            }
            tokio::select! {
                _ = &mut shutdown => return,
                _ = changes.changed() => {
                    // Let a burst of changes (an agent's report, several placements) settle.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                _ = tokio::time::sleep(self.interval) => {}
            }
        }
    }

    /// One pass over every zone.
    pub async fn pass(&self) -> Result<()> {
        for record in self.store.list_zones().await? {
            if let Err(error) = self.reconcile_zone(&record).await {
                tracing::warn!(zone = %record.zone.id, %error, "reconcile failed");
            }
        }
        Ok(())
    }

    async fn reconcile_zone(&self, record: &ZoneRecord) -> Result<()> {
        let zone = &record.zone;
        let now = now_ms();
        let mut observed = self.store.zone_observation(&zone.id).await?;

        // Observe: a machine whose driver says it is gone, or that never registered, is
        // gone for the store too (its sessions LOST), and the plan will replace it.
        let mut gone = Vec::new();
        for machine in &observed.machines {
            if let Some(reason) = self.gone_reason(machine, now).await? {
                tracing::info!(machine = %machine.id, %reason, "machine gone");
                self.store.machine_gone(&machine.id, &reason, now).await?;
                gone.push(machine.id.clone());
            }
        }
        if !gone.is_empty() {
            self.changes.bump();
            observed.machines.retain(|m| !gone.contains(&m.id));
            observed.processes.retain(|p| !gone.contains(&p.machine_id));
        }

        if record.deleting {
            return self.tear_down(zone.id.as_str(), &observed.machines).await;
        }

        let fleet = self.store.get_fleet(&zone.spec.fleet_id).await?;
        let Some(fleet) = fleet else {
            return Ok(());
        };
        let shape = FleetShape {
            session_mode: fleet.session_mode,
            sessions_per_process: fleet.sessions_per_process,
        };
        let active_sessions: u32 = observed.processes.iter().map(|p| p.active_sessions).sum();
        let mut idle_since_ms = record.idle_since_ms;
        if active_sessions > 0 {
            // The idle period (for cooldown) starts when the last session ends.
            self.store.touch_zone(&zone.id, now).await?;
            idle_since_ms = now;
        }
        let inputs = Observed {
            machines: machine_views(&observed, shape),
            idle_since_ms,
            unavailable_models: self.shortages.unavailable(&zone.id, now),
            predicted_arrivals: self.demand.forecast(
                &zone.id,
                now,
                self.boot_estimate(&zone.spec) + PROCESS_START_ESTIMATE,
                PROCESS_START_ESTIMATE,
            ),
        };
        let plan = autoscale::plan(&zone.spec, shape, &inputs, now);

        // Act.
        for short in &plan.short {
            tracing::warn!(zone = %zone.id, data_center = %short, "no machine model has capacity");
        }
        for launch in &plan.launch {
            let Some(dc) = zone
                .spec
                .data_centers
                .iter()
                .find(|dc| dc.name == launch.data_center)
            else {
                continue;
            };
            self.launch(
                zone.id.as_str(),
                &zone.spec,
                &fleet.build_id,
                &dc.name,
                &dc.location,
                launch,
            )
            .await?;
        }
        for machine_id in &plan.terminate {
            let Some(machine) = observed.machines.iter().find(|m| &m.id == machine_id) else {
                continue;
            };
            // The plan saw it idle; the store checks again in the same statement that marks
            // it, so a session placed since then keeps its machine.
            if self.store.begin_idle_termination(&machine.id).await? {
                // Wake the agent's long-poll so it hears `shutdown` now.
                self.changes.bump();
                self.stop(machine).await?;
            }
        }
        // Machines already on their way out get their escalation.
        for machine in observed
            .machines
            .iter()
            .filter(|m| m.status == MachineStatus::Terminating)
        {
            self.stop(machine).await?;
        }
        let retargeted: Vec<(String, u32)> = observed
            .machines
            .iter()
            .filter_map(|machine| {
                let target = *plan.process_targets.get(&machine.id)?;
                (target != machine.target_processes).then(|| (machine.id.clone(), target))
            })
            .collect();
        if !retargeted.is_empty() {
            self.store.set_machine_targets(&retargeted).await?;
            self.changes.bump();
        }

        let up = observed
            .processes
            .iter()
            .filter(|p| {
                p.takes_sessions(fleet.session_mode, fleet.sessions_per_process)
                    || p.active_sessions > 0
            })
            .count() as u32;
        let status = zone_status(
            zone.status,
            plan.cooling,
            !observed.machines.is_empty() || !plan.launch.is_empty(),
            up,
            zone.spec
                .initial_server_processes
                .min(plan.desired_processes.max(1)),
        );
        if status != zone.status {
            self.store.set_zone_status(&zone.id, status).await?;
        }
        if plan.partial {
            self.changes.bump();
        }
        Ok(())
    }

    /// How long a machine of this zone takes to boot: the slowest of its locations'
    /// drivers' estimates (the horizon of the demand forecast).
    fn boot_estimate(&self, spec: &ZoneSpecView) -> Duration {
        spec.data_centers
            .iter()
            .filter_map(|dc| self.locations.get(&dc.location))
            .map(|location| location.driver.boot_estimate())
            .max()
            .unwrap_or(Duration::from_secs(60))
    }

    async fn gone_reason(&self, machine: &MachineRecord, now: i64) -> Result<Option<String>> {
        let Some(location) = self.locations.get(&machine.location) else {
            return Ok(Some(format!(
                "location {:?} is no longer offered",
                machine.location
            )));
        };
        match machine.status {
            MachineStatus::Pending if machine.driver_ref.is_none() => {
                // Inserted, but fleetformd stopped before the driver launched it (or before
                // it recorded what it launched; such an agent is refused when it syncs).
                if now - machine.created_at_ms > 5_000 {
                    return Ok(Some("machine was never launched".into()));
                }
                Ok(None)
            }
            MachineStatus::Terminated => Ok(None),
            _ => {
                let liveness = location
                    .driver
                    .liveness(&machine.id, machine.driver_ref.as_deref())
                    .await?;
                if liveness == Liveness::Gone {
                    return Ok(Some(if machine.status == MachineStatus::Terminating {
                        "machine terminated".into()
                    } else {
                        "machine stopped unexpectedly".into()
                    }));
                }
                if machine.last_heartbeat_ms.is_none()
                    && now - machine.created_at_ms > REGISTER_TIMEOUT_MS
                {
                    location
                        .driver
                        .terminate(&machine.id, machine.driver_ref.as_deref())
                        .await?;
                    return Ok(Some("machine's agent never registered".into()));
                }
                Ok(None)
            }
        }
    }

    async fn launch(
        &self,
        zone_id: &str,
        spec: &ZoneSpecView,
        build_id: &str,
        data_center: &str,
        location_name: &str,
        launch: &autoscale::Launch,
    ) -> Result<()> {
        let Some(location) = self.locations.get(location_name) else {
            tracing::warn!(zone = zone_id, location = location_name, "unknown location");
            return Ok(());
        };
        let (token, hash) = new_agent_token();
        let machine = MachineRecord {
            id: new_id("mch"),
            zone_id: zone_id.to_string(),
            fleet_id: spec.fleet_id.clone(),
            data_center: data_center.to_string(),
            location: location_name.to_string(),
            instance_type: launch.instance_type.clone(),
            processes_per_machine: launch.processes_per_machine,
            status: MachineStatus::Pending,
            build_id: build_id.to_string(),
            driver_ref: None,
            address: None,
            agent_error: None,
            created_at_ms: now_ms(),
            last_heartbeat_ms: None,
            target_processes: launch.target_processes,
        };
        // The row first: a machine the store does not know could leak.
        self.store.insert_machine(&machine, &hash).await?;
        let request = LaunchRequest {
            machine_id: machine.id.clone(),
            instance_type: launch.instance_type.clone(),
            agent_token: token,
            server_url: self.server_url.clone(),
        };
        match location.driver.launch(&request).await {
            Ok(driver_ref) => {
                tracing::info!(machine = %machine.id, zone = zone_id, data_center, %driver_ref, "machine launched");
                self.store
                    .set_machine_driver_ref(&machine.id, &driver_ref)
                    .await
            }
            Err(Error::InsufficientCapacity { instance_type }) => {
                tracing::warn!(machine = %machine.id, data_center, %instance_type, "no capacity for this model; trying the next");
                self.shortages
                    .record(zone_id, data_center, &instance_type, now_ms());
                self.store
                    .machine_gone(
                        &machine.id,
                        &format!("no capacity for {instance_type}"),
                        now_ms(),
                    )
                    .await?;
                self.changes.bump();
                Ok(())
            }
            Err(error) => {
                tracing::warn!(machine = %machine.id, %error, "launch failed");
                self.store
                    .machine_gone(&machine.id, &format!("launch failed: {error}"), now_ms())
                    .await
            }
        }
    }

    /// Asks a machine's driver to stop it (again: drivers escalate on repeated calls).
    async fn stop(&self, machine: &MachineRecord) -> Result<()> {
        if let Some(location) = self.locations.get(&machine.location) {
            location
                .driver
                .terminate(&machine.id, machine.driver_ref.as_deref())
                .await?;
        }
        Ok(())
    }

    async fn tear_down(&self, zone_id: &str, machines: &[MachineRecord]) -> Result<()> {
        if machines.is_empty() {
            tracing::info!(zone = zone_id, "zone removed");
            self.store.remove_zone(zone_id).await?;
            self.changes.bump();
            return Ok(());
        }
        // Deleting a zone stops every machine, busy or not (the API refused the delete
        // while sessions were active, unless the fleet says force_destroy).
        for machine in machines {
            if machine.status != MachineStatus::Terminating {
                self.store
                    .set_machine_status(&machine.id, MachineStatus::Terminating)
                    .await?;
                self.changes.bump();
            }
            self.stop(machine).await?;
        }
        Ok(())
    }
}

/// The status a zone moves to. `AVAILABLE_COOLDOWN` while the plan says it cools down;
/// `LAUNCHING` from the first machine (or from a wake-up) until `initial` processes are up;
/// then `AVAILABLE`, which it stays while it runs.
pub fn zone_status(
    current: ResourceStatus,
    cooling: bool,
    has_machines: bool,
    up_processes: u32,
    initial: u32,
) -> ResourceStatus {
    match current {
        ResourceStatus::Deleting => ResourceStatus::Deleting,
        _ if cooling => ResourceStatus::AvailableCooldown,
        ResourceStatus::AvailableCooldown => ResourceStatus::Launching,
        ResourceStatus::New | ResourceStatus::Launching if up_processes >= initial => {
            ResourceStatus::Available
        }
        ResourceStatus::New if has_machines => ResourceStatus::Launching,
        other => other,
    }
}

/// The policy's view of each machine of an observation.
pub fn machine_views(observed: &ZoneObservation, shape: FleetShape) -> Vec<MachineView> {
    let slots = shape.slots_per_process();
    let mut by_machine: std::collections::HashMap<&str, Vec<&crate::store::ProcessRecord>> =
        std::collections::HashMap::with_capacity(observed.machines.len());
    for process in &observed.processes {
        by_machine
            .entry(process.machine_id.as_str())
            .or_default()
            .push(process);
    }
    observed
        .machines
        .iter()
        .map(|machine| {
            let processes = by_machine
                .get(machine.id.as_str())
                .map(Vec::as_slice)
                .unwrap_or_default();
            let busy: Vec<_> = processes.iter().filter(|p| p.active_sessions > 0).collect();
            MachineView {
                id: machine.id.clone(),
                data_center: machine.data_center.clone(),
                instance_type: machine.instance_type.clone(),
                status: machine.status,
                processes_per_machine: machine.processes_per_machine,
                running_processes: processes.len() as u32,
                busy_processes: busy.len() as u32,
                active_sessions: busy.iter().map(|p| p.active_sessions).sum(),
                free_slots_in_busy: busy
                    .iter()
                    .map(|p| slots.saturating_sub(p.active_sessions))
                    .sum(),
                created_at_ms: machine.created_at_ms,
            }
        })
        .collect()
}

/// Placement requests and session ends per zone and minute, in memory (a restart forgets
/// them; the forecast then starts from the recent rate again).
#[derive(Debug, Default)]
pub struct Demand {
    zones: std::sync::Mutex<std::collections::HashMap<String, ZoneDemand>>,
}

#[derive(Debug, Default)]
struct ZoneDemand {
    arrivals: ArrivalHistory,
    ends: ArrivalHistory,
}

impl Demand {
    /// Counts one placement request for `zone_id` at `now_ms`.
    pub fn record(&self, zone_id: &str, now_ms: i64) {
        self.zones
            .lock()
            .expect("demand lock")
            .entry(zone_id.to_string())
            .or_default()
            .arrivals
            .record(now_ms.div_euclid(60_000), 1);
    }

    /// Counts `count` sessions of `zone_id` ended at `now_ms`.
    pub fn record_ends(&self, zone_id: &str, now_ms: i64, count: u32) {
        if count == 0 {
            return;
        }
        self.zones
            .lock()
            .expect("demand lock")
            .entry(zone_id.to_string())
            .or_default()
            .ends
            .record(now_ms.div_euclid(60_000), count);
    }

    /// Idle capacity `available_predicted` should hold for `zone_id` now: see
    /// [`forecast_net_demand`]; `horizon` is boot plus process start, `start` the process
    /// start alone.
    pub fn forecast(&self, zone_id: &str, now_ms: i64, horizon: Duration, start: Duration) -> f64 {
        let zones = self.zones.lock().expect("demand lock");
        zones.get(zone_id).map_or(0.0, |demand| {
            forecast_net_demand(
                &demand.arrivals,
                &demand.ends,
                now_ms.div_euclid(60_000),
                horizon.as_secs_f64() / 60.0,
                start.as_secs_f64() / 60.0,
            )
        })
    }
}

/// How long a machine model stays out of the running after the cloud said it has no
/// capacity for it.
pub const SHORTAGE_MS: i64 = 10 * 60_000;

/// Machine models the cloud recently had no capacity for, per zone.
#[derive(Debug, Default)]
pub struct Shortages {
    until: std::sync::Mutex<std::collections::HashMap<(String, String, String), i64>>,
}

impl Shortages {
    /// The cloud has no capacity for `instance_type` in `data_center` of `zone_id`.
    pub fn record(&self, zone_id: &str, data_center: &str, instance_type: &str, now_ms: i64) {
        self.until.lock().expect("shortage lock").insert(
            (zone_id.into(), data_center.into(), instance_type.into()),
            now_ms + SHORTAGE_MS,
        );
    }

    /// `(data center, instance type)` pairs of `zone_id` still short at `now_ms`.
    pub fn unavailable(
        &self,
        zone_id: &str,
        now_ms: i64,
    ) -> std::collections::BTreeSet<(String, String)> {
        let mut until = self.until.lock().expect("shortage lock");
        until.retain(|_, expires| *expires > now_ms);
        until
            .keys()
            .filter(|(zone, _, _)| zone == zone_id)
            .map(|(_, dc, model)| (dc.clone(), model.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn token_hash_ignores_prefix_and_tokens_differ() {
        let (token, hash) = new_agent_token();
        assert_eq!(token_hash(&token), hash);
        assert_ne!(new_agent_token().0, token);
    }
}
