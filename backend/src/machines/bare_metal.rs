//! The `bare_metal` driver: machines an operator runs and registers in the pool
//! (`fleetform_bare_metal_machine`), taken by zones instead of launched.
//!
//! Nothing is bought or booted here: the reconciler takes free pool machines for a zone's
//! bare-metal data center in one store transaction ([`crate::store::Store::assign_bare_metal`])
//! and the machine's agent, already running with the pool machine's token, starts serving
//! it at its next sync. "Terminating" a bare-metal machine returns it to the pool once its
//! agent has stopped the zone's processes; the agent stays up for the next zone. A machine
//! whose agent goes silent is `UNHEALTHY` like any other (heartbeats), and its pool machine
//! is free to serve again when the agent comes back.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;

use super::{LaunchRequest, Liveness, MachineDriver};
use crate::{Error, Result};

/// A pool machine that waits for its operator to start the agent is not replaced: it is
/// the same machine either way. Past this, the reconciler gives up waiting (a year).
const REGISTER_PATIENCE: Duration = Duration::from_secs(365 * 24 * 3600);

/// The driver of one bare-metal location.
#[derive(Debug, Default)]
pub struct BareMetalDriver {
    /// Machines given back to the pool since this process started; they read as gone, so
    /// the reconciler records their end. (After a restart the reconciler asks again, as it
    /// does on every pass for a drained machine.)
    released: Mutex<HashSet<String>>,
}

#[async_trait]
impl MachineDriver for BareMetalDriver {
    fn kind(&self) -> &'static str {
        "bare_metal"
    }

    async fn launch(&self, request: &LaunchRequest) -> Result<String> {
        Err(Error::LaunchRejected {
            instance_type: request.instance_type.clone(),
            reason: "bare-metal machines are taken from the pool, not launched".into(),
        })
    }

    async fn terminate(&self, machine_id: &str, _driver_ref: Option<&str>) -> Result<()> {
        self.released
            .lock()
            .expect("released lock")
            .insert(machine_id.to_string());
        Ok(())
    }

    async fn liveness(&self, machine_id: &str, _driver_ref: Option<&str>) -> Result<Liveness> {
        let released = self
            .released
            .lock()
            .expect("released lock")
            .contains(machine_id);
        Ok(if released {
            Liveness::Gone
        } else {
            Liveness::Alive
        })
    }

    /// Bare metal is always on: its processes start as soon as a zone takes it.
    fn boot_estimate(&self) -> Duration {
        Duration::from_secs(5)
    }

    fn register_timeout(&self) -> Duration {
        REGISTER_PATIENCE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_released_machine_reads_gone_and_others_alive() {
        let driver = BareMetalDriver::default();
        assert_eq!(driver.liveness("m1", None).await.unwrap(), Liveness::Alive);
        driver.terminate("m1", Some("bm-1")).await.unwrap();
        assert_eq!(driver.liveness("m1", None).await.unwrap(), Liveness::Gone);
        assert_eq!(driver.liveness("m2", None).await.unwrap(), Liveness::Alive);
    }
}
