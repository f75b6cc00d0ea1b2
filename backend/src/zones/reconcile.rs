//! One zone's pass: observe (the writer's picture of the zone and the drivers' liveness)
//! → [`autoscale::plan`] → act (launch, drain, stop, retarget machines, set the zone's
//! status). Driver calls run with bounded concurrency; one that fails is logged and the
//! rest of the pass goes on.

use std::time::Duration;

use fleetform_api::{
    EventLevel, EventProducer, MachineStatus, MachineType, ResourceStatus, UpdateMode, ZoneSpecView,
};
use futures::future::BoxFuture;

use super::health::CHECK_CONCURRENCY;
use super::shortages::SHORTAGE_MS;
use super::{
    in_parallel, machine_event, new_agent_token, Reconciler, DRAIN_TIMEOUT_MS,
    PROCESS_START_ESTIMATE,
};
use crate::autoscale::{self, FleetShape, MachineView, Observed};
use crate::machines::LaunchRequest;
use crate::store::{EventRecord, MachineRecord, ZoneRecord, ZoneSummary};
use crate::time::{new_id, now_ms};
use crate::{Error, Result};

/// Launches one zone's pass has in flight at once.
pub const LAUNCH_CONCURRENCY: usize = 32;

/// How far a busy zone's idle clock may lag: cooldowns are minutes, so a pass need not
/// write it more than once a second.
const IDLE_CLOCK_STEP_MS: i64 = 1_000;

/// What a zone's pass did, for its scheduling.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PassOutcome {
    /// Machines observed.
    pub machines: usize,
    /// The plan was cut short (a launch cap): run the zone again at once.
    pub partial: bool,
    /// Milliseconds spent reading the zone's summary, checking its machines, planning.
    pub observe_ms: f64,
    pub check_ms: f64,
    pub plan_ms: f64,
}

impl Reconciler {
    /// One pass over one zone.
    pub async fn reconcile_zone(&self, record: &ZoneRecord) -> Result<PassOutcome> {
        let zone = &record.zone;
        let now = now_ms();
        let started = std::time::Instant::now();
        let Some(mut summary) = self.store.zone_summary(&zone.id).await? else {
            return Ok(PassOutcome::default());
        };
        let observe_ms = started.elapsed().as_secs_f64() * 1000.0;
        let observed_machines = summary.machines.len();

        // Observe: a machine whose driver says it is gone, or that never registered, is
        // gone for the store too (its sessions LOST), and the plan will replace it.
        let checking = std::time::Instant::now();
        let ended = self.check_machines(&summary.machines, now).await;
        let check_ms = checking.elapsed().as_secs_f64() * 1000.0;
        if !ended.is_empty() {
            summary.machines.retain(|m| !ended.contains(&m.record.id));
        }

        if record.deleting {
            self.tear_down(&zone.id, &summary, now).await?;
            return Ok(PassOutcome {
                machines: observed_machines,
                partial: false,
                observe_ms,
                check_ms,
                plan_ms: 0.0,
            });
        }

        let fleet = self.store.get_fleet(&zone.spec.fleet_id).await?;
        let Some(fleet) = fleet else {
            return Ok(PassOutcome::default());
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
                summary = self.refreshed(&zone.id, summary).await?;
            }
        }
        let shape = FleetShape {
            session_mode: fleet.session_mode,
            sessions_per_process: fleet.sessions_per_process,
        };
        let mut machines = views(&summary);
        // Bare metal first: free pool machines are taken before the plan, which counts
        // them as capacity, so no VM is bought for what the pool covers.
        let bare_metal = zone
            .spec
            .data_centers
            .iter()
            .any(|dc| dc.machine_type == MachineType::BareMetal);
        if bare_metal {
            let mut took = false;
            for (data_center, count) in &autoscale::pool_plan(&zone.spec, &machines).take {
                took |= self
                    .take_from_pool(zone, &fleet.build_id, data_center, *count, now)
                    .await?
                    > 0;
            }
            if took {
                summary = self.refreshed(&zone.id, summary).await?;
                machines = views(&summary);
            }
        }
        let mut idle_since_ms = record.idle_since_ms;
        if summary.active_sessions() > 0 {
            // The idle period (for cooldown) starts when the last session ends; the clock
            // need not move more than once a second.
            if now - record.idle_since_ms >= IDLE_CLOCK_STEP_MS {
                // Not awaited: the pass needs nothing from it, and a write's answer waits
                // for its batch's fsync (tens of milliseconds under load). A lost touch
                // only makes the next pass touch again.
                let (store, zone_id) = (self.store.clone(), zone.id.clone());
                let touch = async move {
                    if let Err(error) = store.touch_zone(&zone_id, now).await {
                        tracing::warn!(zone = %zone_id, %error, "moving the zone's idle clock failed");
                    }
                };
                // Under the pass's lease, as every write of the pass.
                match crate::leases::current() {
                    Some(lease) => tokio::spawn(crate::leases::scope(lease, touch)),
                    None => tokio::spawn(touch),
                };
            }
            idle_since_ms = now;
        }
        let inputs = Observed {
            machines,
            idle_since_ms,
            unavailable_models: self.shortages.unavailable(&zone.id, now),
            predicted_arrivals: self.demand.forecast(
                &zone.id,
                now,
                self.boot_estimate(&zone.spec) + PROCESS_START_ESTIMATE,
                PROCESS_START_ESTIMATE,
            ),
        };
        let planning = std::time::Instant::now();
        let plan = autoscale::plan(&zone.spec, shape, &inputs, now);
        let plan_ms = planning.elapsed().as_secs_f64() * 1000.0;

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
        let build_id = fleet.build_id.as_str();
        let launches: Vec<BoxFuture<'_, ()>> = plan.launch.iter().filter_map(|launch| {
            let dc = zone
                .spec
                .data_centers
                .iter()
                .find(|dc| dc.name == launch.data_center)?;
            Some(Box::pin(async move {
                if let Err(error) = self
                    .launch(
                        zone.id.as_str(),
                        &zone.spec,
                        build_id,
                        &dc.name,
                        &dc.location,
                        launch,
                    )
                    .await
                {
                    tracing::warn!(zone = %zone.id, data_center = %dc.name, %error, "launch failed; retried next pass");
                }
            }) as BoxFuture<'_, ()>)
        }).collect();
        in_parallel(launches, LAUNCH_CONCURRENCY).await;

        let give_back = if bare_metal {
            autoscale::pool_plan(&zone.spec, &inputs.machines).give_back
        } else {
            Vec::new()
        };
        let leaving: Vec<BoxFuture<'_, ()>> = plan
            .terminate
            .iter()
            .chain(&give_back)
            .filter_map(|id| summary.machines.iter().find(|m| &m.record.id == id))
            .map(|observed| -> BoxFuture<'_, ()> { Box::pin(async move {
                let machine = &observed.record;
                // The plan saw it idle; the store checks again in the same statement that
                // marks it, so a session placed since then keeps its machine. Its agent
                // hears `shutdown` (the store tells it), stops its processes, and the
                // driver stops the machine once they are gone.
                match self.store.begin_idle_termination(&machine.id).await {
                    Ok(true) => {
                        let message = if machine.bare_metal_id.is_some() {
                            format!(
                                "machine {} ({}): idle, draining before it goes back to the bare-metal pool",
                                machine.id, machine.data_center
                            )
                        } else {
                            format!(
                                "machine {} ({}): scale-in; idle, draining before it is terminated",
                                machine.id, machine.data_center
                            )
                        };
                        if let Err(error) = self
                            .event(machine_event(EventLevel::Info, "MACHINE_DRAINING", machine, message))
                            .await
                        {
                            tracing::warn!(machine = %machine.id, %error, "event not recorded");
                        }
                    }
                    Ok(false) => {}
                    Err(error) => {
                        tracing::warn!(machine = %machine.id, %error, "scale-in failed; retried next pass")
                    }
                }
            })})
            .collect();
        in_parallel(leaving, CHECK_CONCURRENCY).await;
        // Machines on their way out are stopped once drained (and asked again on every
        // pass: drivers escalate).
        self.stop_drained(&summary, now).await;
        let retargeted: Vec<(String, u32)> = summary
            .machines
            .iter()
            .filter_map(|machine| {
                let target = *plan.process_targets.get(&machine.record.id)?;
                (target != machine.record.target_processes)
                    .then(|| (machine.record.id.clone(), target))
            })
            .collect();
        if !retargeted.is_empty() {
            self.store.set_machine_targets(&retargeted).await?;
        }

        let status = zone_status(
            zone.status,
            plan.cooling,
            !summary.machines.is_empty() || !plan.launch.is_empty(),
            summary.up_processes(),
            zone.spec
                .initial_server_processes
                .min(plan.desired_processes.max(1)),
        );
        if status != zone.status {
            self.store.set_zone_status(&zone.id, status).await?;
        }
        // Level-triggered like the rest: whichever zone's pass first sees the fleet's
        // last old process gone records the update's end.
        if self.store.finish_build_update(&fleet.id, now).await? {
            tracing::info!(fleet = %fleet.id, build = %fleet.build_id, "build update complete");
        }
        Ok(PassOutcome {
            machines: observed_machines,
            partial: plan.partial,
            observe_ms,
            check_ms,
            plan_ms,
        })
    }

    /// The zone's summary read again (after this pass changed it), or the old one if the
    /// zone is gone meanwhile.
    async fn refreshed(&self, zone_id: &str, old: ZoneSummary) -> Result<ZoneSummary> {
        Ok(self.store.zone_summary(zone_id).await?.unwrap_or(old))
    }

    /// Asks the driver to stop every `TERMINATING` machine that has drained.
    async fn stop_drained(&self, summary: &ZoneSummary, now: i64) {
        let stops = summary
            .machines
            .iter()
            .filter(|m| m.record.status == MachineStatus::Terminating)
            .filter(|m| drained(&m.record, m.view.running_processes, now))
            .map(|m| -> BoxFuture<'_, ()> {
                Box::pin(async move {
                    if let Err(error) = self.stop(&m.record).await {
                        tracing::warn!(machine = %m.record.id, %error, "stop failed; retried next pass");
                    }
                })
            })
            .collect::<Vec<_>>();
        in_parallel(stops, CHECK_CONCURRENCY).await;
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

    async fn tear_down(&self, zone_id: &str, summary: &ZoneSummary, now: i64) -> Result<()> {
        if summary.machines.is_empty() {
            if self.store.remove_zone(zone_id).await? {
                tracing::info!(zone = zone_id, "zone removed");
            }
            return Ok(());
        }
        // Deleting a zone stops every machine, busy or not (the API refused the delete
        // while sessions were active, unless the fleet says force_destroy).
        for machine in &summary.machines {
            if machine.record.status != MachineStatus::Terminating {
                self.store
                    .set_machine_status(&machine.record.id, MachineStatus::Terminating)
                    .await?;
            }
        }
        self.stop_drained(summary, now).await;
        Ok(())
    }
}

/// The planner's view of every machine of a summary.
fn views(summary: &ZoneSummary) -> Vec<MachineView> {
    summary.machines.iter().map(|m| m.view.clone()).collect()
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
pub fn drained(machine: &MachineRecord, running_processes: u32, now_ms: i64) -> bool {
    let since = machine
        .terminating_since_ms
        .unwrap_or(machine.created_at_ms);
    machine.last_heartbeat_ms.is_none()
        || now_ms - since > DRAIN_TIMEOUT_MS
        || running_processes == 0
}
