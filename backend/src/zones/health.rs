//! Machine health: whether each machine of a zone is still what the store says it is.
//!
//! [`verdict`] is the pure rule (healthy, terminated as asked, died, silent, never
//! registered), given the driver's liveness answer; [`launch_unsettled`] says when a
//! machine's launch outcome must be asked of its driver. [`Reconciler::check_machines`]
//! gathers those answers for every machine of a zone with bounded concurrency and acts on
//! the verdicts: one machine's slow or failing driver call delays or skips that machine
//! only.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use fleetform_api::{EventLevel, MachineStatus};
use futures::future::BoxFuture;

use super::{in_parallel, machine_event, Reconciler, LAUNCH_OUTCOME_MS, MISSED_HEARTBEATS};
use crate::machines::{Liveness, Location};
use crate::store::{MachineRecord, ObservedMachine};
use crate::Result;

/// Driver calls (liveness, find, terminate) one zone's pass has in flight at once.
pub const CHECK_CONCURRENCY: usize = 64;

/// How long a machine may go unheard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    /// No heartbeat for longer than this: `UNHEALTHY`.
    pub silent_after_ms: i64,
    /// Never registered this long after its launch: `UNHEALTHY`, replaced.
    pub register_timeout_ms: i64,
}

/// What a pass concludes about one live machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Healthy,
    /// Gone after it was asked to terminate: `TERMINATED`.
    Terminated,
    /// Gone without being asked: `UNHEALTHY`, its sessions LOST.
    Died,
    /// Its agent has been silent this long: `UNHEALTHY`, terminated.
    Silent {
        silent_ms: i64,
    },
    /// Its agent never registered: `UNHEALTHY`, terminated.
    NotRegistered {
        timeout_ms: i64,
    },
}

/// Whether a machine's row has waited longer than [`LAUNCH_OUTCOME_MS`] for its driver's
/// answer (a crash or a failed call lost it): the driver is asked to find it.
pub fn launch_unsettled(machine: &MachineRecord, now_ms: i64) -> bool {
    machine.driver_ref.is_none() && now_ms - machine.created_at_ms > LAUNCH_OUTCOME_MS
}

/// The rule, for a live machine its driver answered `liveness` for.
pub fn verdict(
    machine: &MachineRecord,
    liveness: Liveness,
    timings: &Timings,
    now_ms: i64,
) -> Verdict {
    let terminating = machine.status == MachineStatus::Terminating;
    if liveness == Liveness::Gone {
        return if terminating {
            Verdict::Terminated
        } else {
            Verdict::Died
        };
    }
    match machine.last_heartbeat_ms {
        // A machine draining for its end may stop syncing; its drain timeout covers it.
        Some(last) if !terminating && now_ms - last > timings.silent_after_ms => Verdict::Silent {
            silent_ms: now_ms - last,
        },
        None if now_ms - machine.created_at_ms > timings.register_timeout_ms => {
            Verdict::NotRegistered {
                timeout_ms: timings.register_timeout_ms,
            }
        }
        _ => Verdict::Healthy,
    }
}

impl Reconciler {
    /// The timings of machines at `location`.
    pub fn timings(&self, location: &Location) -> Timings {
        let heartbeat = location
            .driver
            .heartbeat_interval()
            .map_or(self.heartbeat_interval, |own| {
                own.max(self.heartbeat_interval)
            });
        Timings {
            silent_after_ms: duration_ms(heartbeat * MISSED_HEARTBEATS),
            register_timeout_ms: duration_ms(location.driver.register_timeout()),
        }
    }

    /// Checks every machine of a zone and ends those that are gone; the ids of those that
    /// ended. A machine whose driver knows its liveness at once is judged right here; the
    /// others (and every machine with something to do) take a driver call, at most
    /// [`CHECK_CONCURRENCY`] at a time. A failing check is logged and skipped (it is
    /// retried next pass).
    pub async fn check_machines(
        &self,
        machines: &[Arc<ObservedMachine>],
        now_ms: i64,
    ) -> BTreeSet<String> {
        let mut timings: HashMap<&str, Timings> = HashMap::new();
        let mut calls: Vec<(&MachineRecord, Option<Verdict>)> = Vec::new();
        for machine in machines {
            let record = &machine.record;
            let Some(location) = self.locations.get(&record.location) else {
                calls.push((record, None));
                continue;
            };
            if record.driver_ref.is_none() {
                if launch_unsettled(record, now_ms) {
                    calls.push((record, None));
                }
                continue;
            }
            match location
                .driver
                .liveness_known(&record.id, record.driver_ref.as_deref())
            {
                Some(liveness) => {
                    let timings = *timings
                        .entry(location.name.as_str())
                        .or_insert_with(|| self.timings(location));
                    let verdict = verdict(record, liveness, &timings, now_ms);
                    if verdict != Verdict::Healthy {
                        calls.push((record, Some(verdict)));
                    }
                }
                None => calls.push((record, None)),
            }
        }
        let checks: Vec<BoxFuture<'_, Option<String>>> = calls
            .into_iter()
            .map(|(machine, known)| -> BoxFuture<'_, Option<String>> {
                Box::pin(async move {
                    match self.check_machine(machine, known, now_ms).await {
                        Ok(ended) => ended.then(|| machine.id.clone()),
                        Err(error) => {
                            tracing::warn!(machine = %machine.id, %error, "machine check failed; retried next pass");
                            None
                        }
                    }
                })
            })
            .collect();
        in_parallel(checks, CHECK_CONCURRENCY)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// Checks one machine (`known`: its verdict, when already judged); true when it ended
    /// here.
    async fn check_machine(
        &self,
        machine: &MachineRecord,
        known: Option<Verdict>,
        now_ms: i64,
    ) -> Result<bool> {
        let Some(location) = self.locations.get(&machine.location) else {
            let reason = format!("location {:?} is no longer offered", machine.location);
            self.store
                .machine_gone(&machine.id, &reason, now_ms)
                .await?;
            self.ended_event(machine, EventLevel::Error, "MACHINE_LOST", &reason)
                .await?;
            return Ok(true);
        };
        let mut driver_ref = machine.driver_ref.clone();
        if driver_ref.is_none() {
            if !launch_unsettled(machine, now_ms) {
                return Ok(false);
            }
            // Inserted, but the driver's answer never got recorded: fleetformd stopped
            // during the launch, or the call failed after the cloud may have acted. The
            // driver finds it by its id, or it never ran.
            match location.driver.find(&machine.id).await? {
                None => {
                    let reason = "its driver has no record of launching it";
                    self.store.machine_gone(&machine.id, reason, now_ms).await?;
                    self.ended_event(machine, EventLevel::Warning, "MACHINE_NOT_LAUNCHED", reason)
                        .await?;
                    return Ok(true);
                }
                Some(found) => {
                    self.store
                        .set_machine_driver_ref(&machine.id, &found)
                        .await?;
                    self.event(machine_event(
                        EventLevel::Info,
                        "MACHINE_ADOPTED",
                        machine,
                        format!(
                            "machine {} adopted {found}: its launch was never recorded",
                            machine.id
                        ),
                    ))
                    .await?;
                    driver_ref = Some(found);
                }
            }
        }
        let judged = match known {
            Some(verdict) => verdict,
            None => {
                let liveness = location
                    .driver
                    .liveness(&machine.id, driver_ref.as_deref())
                    .await?;
                verdict(machine, liveness, &self.timings(location), now_ms)
            }
        };
        let (level, code, reason) = match judged {
            Verdict::Healthy => return Ok(false),
            Verdict::Terminated => {
                self.store
                    .machine_gone(&machine.id, "machine terminated", now_ms)
                    .await?;
                self.ended_event(
                    machine,
                    EventLevel::Info,
                    "MACHINE_TERMINATED",
                    "machine terminated",
                )
                .await?;
                return Ok(true);
            }
            Verdict::Died => (
                EventLevel::Warning,
                "MACHINE_UNHEALTHY",
                "machine stopped unexpectedly; its sessions are LOST and it is replaced"
                    .to_string(),
            ),
            Verdict::Silent { silent_ms } => {
                location
                    .driver
                    .terminate(&machine.id, driver_ref.as_deref())
                    .await?;
                (
                    EventLevel::Warning,
                    "MACHINE_UNHEALTHY",
                    format!(
                        "no heartbeat from its agent for {:.1} s ({MISSED_HEARTBEATS} intervals); its sessions are LOST, it is terminated and replaced",
                        silent_ms as f64 / 1000.0
                    ),
                )
            }
            Verdict::NotRegistered { timeout_ms } => {
                location
                    .driver
                    .terminate(&machine.id, driver_ref.as_deref())
                    .await?;
                (
                    EventLevel::Warning,
                    "MACHINE_NOT_REGISTERED",
                    format!(
                        "its agent never registered within {} s; terminated and replaced",
                        timeout_ms / 1000
                    ),
                )
            }
        };
        // Not an end fleetform chose: the machine is UNHEALTHY, its sessions LOST, and
        // the plan replaces it.
        self.store
            .machine_unhealthy(&machine.id, &reason, now_ms)
            .await?;
        self.ended_event(machine, level, code, &reason).await?;
        Ok(true)
    }

    async fn ended_event(
        &self,
        machine: &MachineRecord,
        level: EventLevel,
        code: &str,
        reason: &str,
    ) -> Result<()> {
        self.event(machine_event(
            level,
            code,
            machine,
            format!("machine {} ({}): {reason}", machine.id, machine.data_center),
        ))
        .await
    }
}

fn duration_ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zones::tests::machine;

    const TIMINGS: Timings = Timings {
        silent_after_ms: 6_000,
        register_timeout_ms: 120_000,
    };

    #[test]
    fn verdict_cases() {
        use Liveness::{Alive, Gone};
        use MachineStatus::{Active, Launching, Terminating};
        // (case, status, created at, last heartbeat, liveness, now, verdict)
        type Case = (
            &'static str,
            MachineStatus,
            i64,
            Option<i64>,
            Liveness,
            i64,
            Verdict,
        );
        #[rustfmt::skip]
        let cases: Vec<Case> = vec![
            ("heard from lately", Active, 0, Some(10_000), Alive, 15_000, Verdict::Healthy),
            ("silent exactly three intervals is still fine", Active, 0, Some(10_000), Alive, 16_000, Verdict::Healthy),
            ("silent longer", Active, 0, Some(10_000), Alive, 16_001, Verdict::Silent { silent_ms: 6_001 }),
            ("a draining machine may go quiet", Terminating, 0, Some(10_000), Alive, 60_000, Verdict::Healthy),
            ("gone after terminating", Terminating, 0, Some(10_000), Gone, 11_000, Verdict::Terminated),
            ("gone unasked", Active, 0, Some(10_000), Gone, 11_000, Verdict::Died),
            ("gone before it ever registered", Launching, 0, None, Gone, 1_000, Verdict::Died),
            ("booting within its timeout", Launching, 0, None, Alive, 120_000, Verdict::Healthy),
            ("never registered", Launching, 0, None, Alive, 120_001, Verdict::NotRegistered { timeout_ms: 120_000 }),
        ];
        for (name, status, created, heartbeat, liveness, now, want) in cases {
            let mut record = machine(status, Some("ref"));
            record.created_at_ms = created;
            record.last_heartbeat_ms = heartbeat;
            assert_eq!(verdict(&record, liveness, &TIMINGS, now), want, "{name}");
        }
    }

    #[test]
    fn a_launch_is_unsettled_only_without_a_driver_answer_for_long() {
        let mut record = machine(MachineStatus::Pending, None);
        record.created_at_ms = 0;
        assert!(!launch_unsettled(&record, LAUNCH_OUTCOME_MS));
        assert!(launch_unsettled(&record, LAUNCH_OUTCOME_MS + 1));
        record.driver_ref = Some("i-1".into());
        assert!(!launch_unsettled(&record, LAUNCH_OUTCOME_MS + 1));
    }
}
