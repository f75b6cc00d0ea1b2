//! The orphan sweep: every machine a cloud runs for this cluster must be a live machine of
//! the store, launched as that machine's one instance. What is not is terminated; a
//! machine whose launch outcome was lost is adopted. [`sweep_verdict`] is the pure rule.

use fleetform_api::{EventLevel, EventProducer, MachineStatus};

use super::{machine_event, Reconciler};
use crate::machines::CloudMachine;
use crate::store::{EventRecord, MachineRecord};
use crate::Result;

impl Reconciler {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zones::tests::machine;

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
}
