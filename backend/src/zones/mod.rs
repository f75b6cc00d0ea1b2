//! The zone reconciler: for every zone, observe → plan → act, level-triggered.
//!
//! Each pass lists what exists (the store's picture plus the drivers' liveness), asks the
//! pure [`crate::autoscale::plan`] what should exist, and does the difference. A pass is
//! idempotent and holds no state between passes but the drivers' escalation timers, so a
//! restarted fleetformd picks up exactly where the last one stopped: it recovers its
//! picture from the store and re-adopts the machines that are still alive.

use std::sync::Arc;
use std::time::Duration;

use fleetform_api::{
    EventLevel, EventProducer, MachineStatus, ResourceStatus, UpdateMode, ZoneSpecView,
};
use rand::RngCore;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::autoscale::forecast::{forecast_net_demand, ArrivalHistory};
use crate::autoscale::{self, FleetShape, MachineView, Observed};
use crate::machines::{CloudMachine, LaunchRequest, Liveness, Locations};
use crate::store::{EventRecord, MachineRecord, Store, ZoneObservation, ZoneRecord};
use crate::time::{new_id, now_ms};
use crate::{Error, Result};

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
    /// How often agents sync; a machine silent for [`MISSED_HEARTBEATS`] of them is
    /// UNHEALTHY.
    pub heartbeat_interval: Duration,
    /// When each location's orphan sweep last ran.
    pub sweeps: Arc<std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>>,
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
        for location in self.locations.values() {
            let due = {
                let mut sweeps = self.sweeps.lock().expect("sweep lock");
                let last = sweeps.get(&location.name);
                let due = last.is_none_or(|at| at.elapsed() >= location.driver.sweep_interval());
                if due {
                    sweeps.insert(location.name.clone(), std::time::Instant::now());
                }
                due
            };
            if due {
                if let Err(error) = self.sweep(&location.name).await {
                    tracing::warn!(location = %location.name, %error, "orphan sweep failed");
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

    /// The orphan sweep of one location: every machine its cloud runs for this cluster
    /// must be a live machine of the store, launched as that machine's one instance.
    /// A machine whose launch outcome was lost is adopted; anything else is terminated.
    pub async fn sweep(&self, location_name: &str) -> Result<()> {
        let Some(location) = self.locations.get(location_name) else {
            return Ok(());
        };
        let Some(inventory) = location.driver.inventory().await? else {
            return Ok(());
        };
        for cloud in inventory.iter().filter(|cloud| cloud.up) {
            let owner = match &cloud.machine_id {
                Some(id) => self.store.get_machine(id).await?,
                None => None,
            };
            match sweep_verdict(cloud, owner.as_ref(), location_name) {
                SweepVerdict::Keep => {}
                SweepVerdict::Adopt => {
                    let machine = owner.expect("adopt has an owner");
                    self.store
                        .set_machine_driver_ref(&machine.id, &cloud.driver_ref)
                        .await?;
                    self.event(machine_event(
                        EventLevel::Info,
                        "MACHINE_ADOPTED",
                        &machine,
                        format!(
                            "machine {} adopted instance {}: its launch was never recorded",
                            machine.id, cloud.description
                        ),
                    ))
                    .await?;
                    self.changes.bump();
                }
                SweepVerdict::Terminate(why) => {
                    location
                        .driver
                        .terminate(
                            cloud.machine_id.as_deref().unwrap_or_default(),
                            Some(&cloud.driver_ref),
                        )
                        .await?;
                    let mut event = EventRecord::new(
                        EventLevel::Warning,
                        EventProducer::Machine,
                        "ORPHAN_TERMINATED",
                        format!(
                            "location {location_name}: terminated instance {}: {why}",
                            cloud.description
                        ),
                    );
                    if let Some(machine) = &owner {
                        event = event.fleet(&machine.fleet_id).zone(&machine.zone_id);
                    }
                    if let Some(id) = &cloud.machine_id {
                        event = event.machine(id);
                    }
                    self.event(event).await?;
                }
            }
        }
        Ok(())
    }

    async fn reconcile_zone(&self, record: &ZoneRecord) -> Result<()> {
        let zone = &record.zone;
        let now = now_ms();
        let mut observed = self.store.zone_observation(&zone.id).await?;
        tracing::debug!(
            zone = %zone.id,
            machines = observed.machines.len(),
            processes = observed.processes.len(),
            "reconcile"
        );

        // Observe: a machine whose driver says it is gone, or that never registered, is
        // gone for the store too (its sessions LOST), and the plan will replace it.
        let mut gone = Vec::new();
        for machine in &mut observed.machines {
            if let Some((level, code, reason)) = self.gone_reason(machine, now).await? {
                if matches!(code, "MACHINE_UNHEALTHY" | "MACHINE_NOT_REGISTERED") {
                    // Not an end fleetform chose: the machine is UNHEALTHY, its sessions
                    // LOST, and the plan replaces it.
                    self.store
                        .machine_unhealthy(&machine.id, &reason, now)
                        .await?;
                } else {
                    self.store.machine_gone(&machine.id, &reason, now).await?;
                }
                self.event(machine_event(
                    level,
                    code,
                    machine,
                    format!("machine {} ({}): {reason}", machine.id, machine.data_center),
                ))
                .await?;
                gone.push(machine.id.clone());
            }
        }
        if !gone.is_empty() {
            self.changes.bump();
            observed.machines.retain(|m| !gone.contains(&m.id));
            observed.processes.retain(|p| !gone.contains(&p.machine_id));
        }

        if record.deleting {
            return self
                .tear_down(zone.id.as_str(), &observed.machines, &observed.processes)
                .await;
        }

        let fleet = self.store.get_fleet(&zone.spec.fleet_id).await?;
        let Some(fleet) = fleet else {
            return Ok(());
        };
        if fleet.update_mode == UpdateMode::Force {
            // Level-triggered: whatever still runs an old build's session after a forced
            // update loses it now; the agents then replace those processes at once.
            let reason = format!("build update (force) to {}", fleet.build_id);
            let lost = self
                .store
                .lose_old_build_sessions(&zone.id, &fleet.build_id, &reason, now)
                .await?;
            if lost > 0 {
                self.event(
                    EventRecord::new(
                        EventLevel::Warning,
                        EventProducer::Fleet,
                        "BUILD_UPDATE_FORCED",
                        format!(
                            "zone {}: {lost} sessions on older builds LOST: {reason}",
                            zone.spec.name
                        ),
                    )
                    .fleet(&fleet.id)
                    .zone(&zone.id),
                )
                .await?;
                self.changes.bump();
                observed = self.store.zone_observation(&zone.id).await?;
            }
        }
        let shape = FleetShape {
            session_mode: fleet.session_mode,
            sessions_per_process: fleet.sessions_per_process,
        };
        // Bare metal first: free pool machines are taken before the plan, which counts
        // them as capacity, so no VM is bought for what the pool covers.
        let mut took = false;
        for (data_center, count) in
            &autoscale::pool_plan(&zone.spec, &machine_views(&observed, shape)).take
        {
            took |= self
                .take_from_pool(zone, &fleet.build_id, data_center, *count, now)
                .await?
                > 0;
        }
        if took {
            observed = self.store.zone_observation(&zone.id).await?;
        }
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
            if self.shortages.report_short(&zone.id, short, now) {
                let models: Vec<String> = zone
                    .spec
                    .data_centers
                    .iter()
                    .filter(|dc| &dc.name == short)
                    .flat_map(|dc| dc.machine_models.iter().map(|m| m.instance_type.clone()))
                    .collect();
                self.event(
                    EventRecord::new(
                        EventLevel::Warning,
                        EventProducer::Zone,
                        "DATA_CENTER_SHORT",
                        format!(
                            "data center {short} is short: no machine model has capacity (tried {}); retrying in {} minutes",
                            models.join(", "),
                            SHORTAGE_MS / 60_000
                        ),
                    )
                    .fleet(&zone.spec.fleet_id)
                    .zone(&zone.id),
                )
                .await?;
            }
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
        let give_back = autoscale::pool_plan(&zone.spec, &inputs.machines).give_back;
        for machine_id in plan.terminate.iter().chain(&give_back) {
            let Some(machine) = observed.machines.iter().find(|m| &m.id == machine_id) else {
                continue;
            };
            // The plan saw it idle; the store checks again in the same statement that marks
            // it, so a session placed since then keeps its machine.
            if self.store.begin_idle_termination(&machine.id).await? {
                // Wake the agent's long-poll so it hears `shutdown` now: it stops its
                // processes, and the driver stops the machine once they are gone.
                self.changes.bump();
                self.event(machine_event(
                    EventLevel::Info,
                    "MACHINE_DRAINING",
                    machine,
                    if machine.bare_metal_id.is_some() {
                        format!(
                            "machine {} ({}): idle, draining before it goes back to the bare-metal pool",
                            machine.id, machine.data_center
                        )
                    } else {
                        format!(
                            "machine {} ({}): scale-in; idle, draining before it is terminated",
                            machine.id, machine.data_center
                        )
                    },
                ))
                .await?;
            }
        }
        // Machines on their way out are stopped once drained (and asked again on every
        // pass: drivers escalate).
        for machine in observed
            .machines
            .iter()
            .filter(|m| m.status == MachineStatus::Terminating)
        {
            if drained(machine, &observed.processes, now) {
                self.stop(machine).await?;
            }
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
        // Level-triggered like the rest: whichever zone's pass first sees the fleet's
        // last old process gone records the update's end.
        if self.store.finish_build_update(&fleet.id, now).await? {
            tracing::info!(fleet = %fleet.id, build = %fleet.build_id, "build update complete");
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

    /// Why a machine is gone for good, if it is: its event's level, code and reason. A
    /// machine whose launch outcome was lost is adopted here when its driver finds it.
    async fn gone_reason(
        &self,
        machine: &mut MachineRecord,
        now: i64,
    ) -> Result<Option<(EventLevel, &'static str, String)>> {
        let Some(location) = self.locations.get(&machine.location) else {
            return Ok(Some((
                EventLevel::Error,
                "MACHINE_LOST",
                format!("location {:?} is no longer offered", machine.location),
            )));
        };
        if matches!(
            machine.status,
            MachineStatus::Terminated | MachineStatus::Unhealthy
        ) {
            return Ok(None);
        }
        if machine.driver_ref.is_none() {
            // Inserted, but the driver's answer never got recorded: fleetformd stopped
            // during the launch, or the call failed after the cloud may have acted. (Its
            // agent may even be syncing already.) The driver finds it by its id, or it is
            // gone.
            if now - machine.created_at_ms <= LAUNCH_OUTCOME_MS {
                return Ok(None);
            }
            let Some(driver_ref) = location.driver.find(&machine.id).await? else {
                return Ok(Some((
                    EventLevel::Warning,
                    "MACHINE_NOT_LAUNCHED",
                    "its driver has no record of launching it".into(),
                )));
            };
            self.store
                .set_machine_driver_ref(&machine.id, &driver_ref)
                .await?;
            self.event(machine_event(
                EventLevel::Info,
                "MACHINE_ADOPTED",
                machine,
                format!(
                    "machine {} adopted {driver_ref}: its launch was never recorded",
                    machine.id
                ),
            ))
            .await?;
            machine.driver_ref = Some(driver_ref);
        }
        let liveness = location
            .driver
            .liveness(&machine.id, machine.driver_ref.as_deref())
            .await?;
        if liveness == Liveness::Gone {
            return Ok(Some(if machine.status == MachineStatus::Terminating {
                (
                    EventLevel::Info,
                    "MACHINE_TERMINATED",
                    "machine terminated".into(),
                )
            } else {
                (
                    EventLevel::Warning,
                    "MACHINE_UNHEALTHY",
                    "machine stopped unexpectedly; its sessions are LOST and it is replaced".into(),
                )
            }));
        }
        let heartbeat = location
            .driver
            .heartbeat_interval()
            .map_or(self.heartbeat_interval, |own| {
                own.max(self.heartbeat_interval)
            });
        let silent_for = heartbeat * MISSED_HEARTBEATS;
        if let Some(last) = machine.last_heartbeat_ms {
            if machine.status != MachineStatus::Terminating
                && now - last > silent_for.as_millis() as i64
            {
                location
                    .driver
                    .terminate(&machine.id, machine.driver_ref.as_deref())
                    .await?;
                return Ok(Some((
                    EventLevel::Warning,
                    "MACHINE_UNHEALTHY",
                    format!(
                        "no heartbeat from its agent for {:.1} s ({MISSED_HEARTBEATS} intervals); its sessions are LOST, it is terminated and replaced",
                        (now - last) as f64 / 1000.0
                    ),
                )));
            }
        }
        let register_timeout = location.driver.register_timeout().as_millis() as i64;
        if machine.last_heartbeat_ms.is_none() && now - machine.created_at_ms > register_timeout {
            location
                .driver
                .terminate(&machine.id, machine.driver_ref.as_deref())
                .await?;
            return Ok(Some((
                EventLevel::Warning,
                "MACHINE_NOT_REGISTERED",
                format!(
                    "its agent never registered within {} s; terminated and replaced",
                    register_timeout / 1000
                ),
            )));
        }
        Ok(None)
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
            terminating_since_ms: None,
            terminated_at_ms: None,
            termination_reason: None,
            bare_metal_id: None,
        };
        // The row first: a machine the store does not know could leak.
        self.store.insert_machine(&machine, &hash).await?;
        let request = LaunchRequest {
            machine_id: machine.id.clone(),
            fleet_id: machine.fleet_id.clone(),
            zone_id: zone_id.to_string(),
            data_center: data_center.to_string(),
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
            Err(error @ (Error::InsufficientCapacity { .. } | Error::LaunchRejected { .. })) => {
                let (level, code, instance_type, reason) = match &error {
                    Error::InsufficientCapacity {
                        instance_type,
                        reason,
                    } => (
                        EventLevel::Warning,
                        "MACHINE_MODEL_UNAVAILABLE",
                        instance_type,
                        reason,
                    ),
                    Error::LaunchRejected {
                        instance_type,
                        reason,
                    } => (EventLevel::Error, "LAUNCH_REJECTED", instance_type, reason),
                    _ => unreachable!("matched above"),
                };
                self.shortages
                    .record(zone_id, data_center, instance_type, now_ms());
                self.store
                    .machine_gone(&machine.id, &error.to_string(), now_ms())
                    .await?;
                let next = spec
                    .data_centers
                    .iter()
                    .find(|dc| dc.name == data_center)
                    .and_then(|dc| {
                        let models = &dc.machine_models;
                        let at = models
                            .iter()
                            .position(|m| &m.instance_type == instance_type)?;
                        models.get(at + 1).map(|m| m.instance_type.clone())
                    });
                self.event(
                    EventRecord::new(
                        level,
                        EventProducer::Zone,
                        code,
                        format!(
                            "data center {data_center}: {instance_type} could not be launched ({reason}); {}",
                            match next {
                                Some(next) => format!("trying {next}"),
                                None => "no other machine model to try".into(),
                            }
                        ),
                    )
                    .fleet(&spec.fleet_id)
                    .zone(zone_id)
                    .machine(&machine.id),
                )
                .await?;
                self.changes.bump();
                Ok(())
            }
            Err(error) => {
                // The cloud may or may not have started it: the row stays, without a
                // driver reference, until `find` adopts what runs or says nothing does.
                tracing::warn!(machine = %machine.id, %error, "launch failed; its outcome is settled on a later pass");
                Ok(())
            }
        }
    }

    /// Takes up to `count` free machines from the pool of a bare-metal data center's
    /// location for the zone; reports the data center short when the pool has too few.
    /// How many it took.
    async fn take_from_pool(
        &self,
        zone: &fleetform_api::Zone,
        build_id: &str,
        data_center: &str,
        count: u32,
        now: i64,
    ) -> Result<u32> {
        let Some(dc) = zone
            .spec
            .data_centers
            .iter()
            .find(|dc| dc.name == data_center)
        else {
            return Ok(0);
        };
        let per_machine = autoscale::processes_per_machine(dc);
        let template = MachineRecord {
            id: String::new(),
            zone_id: zone.id.clone(),
            fleet_id: zone.spec.fleet_id.clone(),
            data_center: dc.name.clone(),
            location: dc.location.clone(),
            instance_type: dc
                .machine_models
                .first()
                .map_or_else(|| "bare_metal".to_string(), |m| m.instance_type.clone()),
            processes_per_machine: per_machine,
            status: MachineStatus::Launching,
            build_id: build_id.to_string(),
            driver_ref: None,
            address: None,
            agent_error: None,
            created_at_ms: now,
            last_heartbeat_ms: None,
            target_processes: per_machine,
            terminating_since_ms: None,
            terminated_at_ms: None,
            termination_reason: None,
            bare_metal_id: None,
        };
        let taken = self.store.assign_bare_metal(&template, count).await?;
        for machine in &taken {
            self.event(machine_event(
                EventLevel::Info,
                "BARE_METAL_TAKEN",
                machine,
                format!(
                    "machine {} ({}): bare-metal machine {} taken from the pool of {}",
                    machine.id,
                    dc.name,
                    machine.bare_metal_id.as_deref().unwrap_or_default(),
                    dc.location
                ),
            ))
            .await?;
        }
        if !taken.is_empty() {
            // Its agent may be long-polling as a pool machine: it serves the zone now.
            self.changes.bump();
        }
        let missing = count - taken.len() as u32;
        if missing > 0 && self.shortages.report_short(&zone.id, &dc.name, now) {
            self.event(
                EventRecord::new(
                    EventLevel::Warning,
                    EventProducer::Zone,
                    "DATA_CENTER_SHORT",
                    format!(
                        "data center {} is short: the bare-metal pool of {} has no free machine for {missing} of its {} machines; said again in {} minutes while it lasts",
                        dc.name,
                        dc.location,
                        dc.bare_metal_machines.unwrap_or(0),
                        SHORTAGE_MS / 60_000
                    ),
                )
                .fleet(&zone.spec.fleet_id)
                .zone(&zone.id),
            )
            .await?;
        }
        Ok(taken.len() as u32)
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

    async fn tear_down(
        &self,
        zone_id: &str,
        machines: &[MachineRecord],
        processes: &[crate::store::ProcessRecord],
    ) -> Result<()> {
        if machines.is_empty() {
            tracing::info!(zone = zone_id, "zone removed");
            self.store.remove_zone(zone_id).await?;
            self.changes.bump();
            return Ok(());
        }
        // Deleting a zone stops every machine, busy or not (the API refused the delete
        // while sessions were active, unless the fleet says force_destroy).
        let now = now_ms();
        for machine in machines {
            if machine.status != MachineStatus::Terminating {
                self.store
                    .set_machine_status(&machine.id, MachineStatus::Terminating)
                    .await?;
                self.changes.bump();
            } else if drained(machine, processes, now) {
                self.stop(machine).await?;
            }
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

/// Whether a machine being terminated may be stopped now: its agent has stopped every
/// process (or never registered), or draining took longer than [`DRAIN_TIMEOUT_MS`].
pub fn drained(
    machine: &MachineRecord,
    processes: &[crate::store::ProcessRecord],
    now_ms: i64,
) -> bool {
    let since = machine
        .terminating_since_ms
        .unwrap_or(machine.created_at_ms);
    machine.last_heartbeat_ms.is_none()
        || now_ms - since > DRAIN_TIMEOUT_MS
        || !processes.iter().any(|p| p.machine_id == machine.id)
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

/// What the orphan sweep does about one instance of the cloud.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SweepVerdict {
    /// It is its machine's instance.
    Keep,
    /// Its machine's launch was never recorded: record it.
    Adopt,
    /// Nothing owns it (why).
    Terminate(String),
}

/// The orphan sweep's decision for one instance, given the machine its tag names (as the
/// store has it, TERMINATED rows included) and the location the sweep lists.
pub fn sweep_verdict(
    cloud: &CloudMachine,
    owner: Option<&MachineRecord>,
    location: &str,
) -> SweepVerdict {
    let Some(machine_id) = &cloud.machine_id else {
        return SweepVerdict::Terminate("it carries the cluster tag but no machine id".into());
    };
    let Some(machine) = owner else {
        return SweepVerdict::Terminate(format!(
            "no machine {machine_id} exists (never created, or its zone or fleet was deleted)"
        ));
    };
    if matches!(
        machine.status,
        MachineStatus::Terminated | MachineStatus::Unhealthy
    ) {
        return SweepVerdict::Terminate(format!(
            "machine {machine_id} is {}",
            machine.status.as_str()
        ));
    }
    if machine.location != location {
        return SweepVerdict::Terminate(format!(
            "machine {machine_id} belongs to location {:?}",
            machine.location
        ));
    }
    match &machine.driver_ref {
        None => SweepVerdict::Adopt,
        Some(driver_ref) if driver_ref == &cloud.driver_ref => SweepVerdict::Keep,
        Some(driver_ref) => SweepVerdict::Terminate(format!(
            "machine {machine_id} already runs as {driver_ref}: a duplicate"
        )),
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
    /// When each (zone, data center) was last reported short.
    reported: std::sync::Mutex<std::collections::HashMap<(String, String), i64>>,
}

impl Shortages {
    /// Whether a data center's shortage should be reported now: once per shortage period.
    pub fn report_short(&self, zone_id: &str, data_center: &str, now_ms: i64) -> bool {
        let mut reported = self.reported.lock().expect("shortage lock");
        let key = (zone_id.to_string(), data_center.to_string());
        match reported.get(&key) {
            Some(at) if now_ms - at < SHORTAGE_MS => false,
            _ => {
                reported.insert(key, now_ms);
                true
            }
        }
    }

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

    fn machine(status: MachineStatus, driver_ref: Option<&str>) -> MachineRecord {
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
    fn sweep_verdicts() {
        use MachineStatus::*;
        let cloud = |machine_id: Option<&str>| CloudMachine {
            driver_ref: "i-1".into(),
            machine_id: machine_id.map(str::to_string),
            up: true,
            description: "i-1".into(),
        };
        let keep = SweepVerdict::Keep;
        let adopt = SweepVerdict::Adopt;
        let terminate = |v: &SweepVerdict| matches!(v, SweepVerdict::Terminate(_));
        #[rustfmt::skip]
        // (case, the instance, its machine in the store, the swept location, the verdict;
        // None: terminate).
        type Case = (&'static str, CloudMachine, Option<MachineRecord>, &'static str, Option<SweepVerdict>);
        let cases: Vec<Case> = vec![
            (
                "its machine's instance",
                cloud(Some("mch-1")),
                Some(machine(Active, Some("i-1"))),
                "us-east-1",
                Some(keep.clone()),
            ),
            (
                "launch never recorded",
                cloud(Some("mch-1")),
                Some(machine(Pending, None)),
                "us-east-1",
                Some(adopt),
            ),
            (
                "draining machine keeps it",
                cloud(Some("mch-1")),
                Some(machine(Terminating, Some("i-1"))),
                "us-east-1",
                Some(keep),
            ),
            ("no machine id tag", cloud(None), None, "us-east-1", None),
            (
                "unknown machine",
                cloud(Some("mch-9")),
                None,
                "us-east-1",
                None,
            ),
            (
                "terminated machine",
                cloud(Some("mch-1")),
                Some(machine(Terminated, Some("i-1"))),
                "us-east-1",
                None,
            ),
            (
                "unhealthy machine",
                cloud(Some("mch-1")),
                Some(machine(Unhealthy, Some("i-1"))),
                "us-east-1",
                None,
            ),
            (
                "a second instance",
                cloud(Some("mch-1")),
                Some(machine(Active, Some("i-0"))),
                "us-east-1",
                None,
            ),
            (
                "another location's machine",
                cloud(Some("mch-1")),
                Some(machine(Active, Some("i-1"))),
                "eu-west-1",
                None,
            ),
        ];
        for (name, cloud, owner, location, want) in cases {
            let verdict = sweep_verdict(&cloud, owner.as_ref(), location);
            match want {
                Some(want) => assert_eq!(verdict, want, "{name}"),
                None => assert!(terminate(&verdict), "{name}: {verdict:?}"),
            }
        }
    }

    #[test]
    fn drained_cases() {
        let process = |machine_id: &str| crate::store::ProcessRecord {
            id: "proc-1".into(),
            machine_id: machine_id.into(),
            zone_id: "zone-1".into(),
            fleet_id: "flt-1".into(),
            build_id: "bld-1".into(),
            port: 7000,
            pid: None,
            state: crate::store::ProcessState::Live(fleetform_api::agent::AgentProcessState::Ready),
            active_sessions: 0,
            sessions_started: 0,
            started_at_ms: 0,
            restart_requested: false,
        };
        let mut draining = machine(MachineStatus::Terminating, Some("i-1"));
        draining.terminating_since_ms = Some(10_000);
        let running = [process("mch-1")];
        let other = [process("mch-2")];
        assert!(
            !drained(&draining, &running, 10_000 + DRAIN_TIMEOUT_MS),
            "still running a process"
        );
        assert!(
            drained(&draining, &running, 10_001 + DRAIN_TIMEOUT_MS),
            "drain timed out"
        );
        assert!(
            drained(&draining, &other, 10_000),
            "no process of its own left"
        );
        let mut never_registered = draining.clone();
        never_registered.last_heartbeat_ms = None;
        assert!(
            drained(&never_registered, &running, 10_000),
            "nothing to drain"
        );
    }

    #[test]
    fn a_shortage_is_reported_once_per_period() {
        let shortages = Shortages::default();
        assert!(shortages.report_short("z", "east", 0));
        assert!(!shortages.report_short("z", "east", SHORTAGE_MS - 1));
        assert!(shortages.report_short("z", "west", 1));
        assert!(shortages.report_short("z", "east", SHORTAGE_MS));
    }

    #[test]
    fn token_hash_ignores_prefix_and_tokens_differ() {
        let (token, hash) = new_agent_token();
        assert_eq!(token_hash(&token), hash);
        assert_ne!(new_agent_token().0, token);
    }
}
