//! The `aws` driver: one EC2 instance per machine, through [`fleetform_aws::Ec2Pool`].
//!
//! The instance's user data installs and starts `fleetform-agent` with the machine's own
//! token, so from there on the machine is like any other: it syncs with fleetformd. This
//! module only maps the pool's answers onto the driver contract: capacity errors become
//! [`Error::InsufficientCapacity`] (the next machine model is tried), refusals become
//! [`Error::LaunchRejected`], and anything else leaves the outcome unknown, to be settled
//! by [`MachineDriver::find`] (adopt what runs) on a later pass.

use std::time::Duration;

use async_trait::async_trait;
use fleetform_aws::{AgentBootstrap, AwsError, Ec2Pool, ErrorClass, LaunchSpec};

use super::{CloudMachine, LaunchRequest, Liveness, MachineDriver};
use crate::{Error, Result};

/// An `aws` location.
#[derive(Debug)]
pub struct AwsDriver {
    pool: Ec2Pool,
    /// Where agents reach fleetformd, when not the server's own URL (a load balancer).
    server_url: Option<String>,
    boot_estimate: Duration,
    register_timeout: Duration,
    sweep_interval: Duration,
}

impl AwsDriver {
    pub fn new(
        pool: Ec2Pool,
        server_url: Option<String>,
        boot_estimate: Duration,
        register_timeout: Duration,
        sweep_interval: Duration,
    ) -> Self {
        AwsDriver {
            pool,
            server_url,
            boot_estimate,
            register_timeout,
            sweep_interval,
        }
    }
}

fn driver_error(error: AwsError) -> Error {
    Error::Driver(error.to_string())
}

#[async_trait]
impl MachineDriver for AwsDriver {
    fn kind(&self) -> &'static str {
        "aws"
    }

    async fn launch(&self, request: &LaunchRequest) -> Result<String> {
        let spec = LaunchSpec {
            machine_id: request.machine_id.clone(),
            instance_type: request.instance_type.clone(),
            fleet_id: request.fleet_id.clone(),
            zone_id: request.zone_id.clone(),
            data_center: request.data_center.clone(),
            bootstrap: AgentBootstrap {
                server_url: self
                    .server_url
                    .clone()
                    .unwrap_or_else(|| request.server_url.clone()),
                agent_token: request.agent_token.clone(),
                agent_download_url: self.pool.settings().agent_download_url.clone(),
            },
        };
        match self.pool.launch(&spec).await {
            Ok(instance) => Ok(instance.id),
            Err(error) => {
                let reason = format!(
                    "{}: {}",
                    error.code.as_deref().unwrap_or("error"),
                    error.message
                );
                Err(match error.class {
                    ErrorClass::Capacity => Error::InsufficientCapacity {
                        instance_type: request.instance_type.clone(),
                        reason,
                    },
                    ErrorClass::Rejected => Error::LaunchRejected {
                        instance_type: request.instance_type.clone(),
                        reason,
                    },
                    ErrorClass::Throttled | ErrorClass::Transient => driver_error(error),
                })
            }
        }
    }

    async fn terminate(&self, machine_id: &str, driver_ref: Option<&str>) -> Result<()> {
        match driver_ref {
            Some(instance_id) => self.pool.terminate(instance_id).await.map_err(driver_error),
            None => {
                // Launched, perhaps, but never recorded: whatever runs under its tag goes.
                for instance in self
                    .pool
                    .find_machine(machine_id)
                    .await
                    .map_err(driver_error)?
                {
                    self.pool
                        .terminate(&instance.id)
                        .await
                        .map_err(driver_error)?;
                }
                Ok(())
            }
        }
    }

    async fn liveness(&self, machine_id: &str, driver_ref: Option<&str>) -> Result<Liveness> {
        let up = match driver_ref {
            Some(instance_id) => self.pool.is_up(instance_id).await,
            None => self
                .pool
                .find_machine(machine_id)
                .await
                .map(|found| found.iter().any(|i| i.state.is_up())),
        }
        .map_err(driver_error)?;
        Ok(if up { Liveness::Alive } else { Liveness::Gone })
    }

    fn boot_estimate(&self) -> Duration {
        self.boot_estimate
    }

    fn register_timeout(&self) -> Duration {
        self.register_timeout
    }

    fn sweep_interval(&self) -> Duration {
        self.sweep_interval
    }

    async fn find(&self, machine_id: &str) -> Result<Option<String>> {
        let found = self
            .pool
            .find_machine(machine_id)
            .await
            .map_err(driver_error)?;
        Ok(found
            .into_iter()
            .filter(|instance| instance.state.is_up())
            .min_by_key(|instance| (instance.launched_at_ms, instance.id.clone()))
            .map(|instance| instance.id))
    }

    async fn inventory(&self) -> Result<Option<Vec<CloudMachine>>> {
        let instances = self
            .pool
            .inventory(self.pool.settings().inventory_max_age)
            .await
            .map_err(driver_error)?;
        Ok(Some(
            instances
                .iter()
                .map(|instance| CloudMachine {
                    driver_ref: instance.id.clone(),
                    machine_id: instance.machine_id.clone(),
                    up: !instance.state.is_ending(),
                    description: format!(
                        "{} ({}, {:?}{})",
                        instance.id,
                        instance.instance_type,
                        instance.state,
                        instance
                            .private_ip
                            .as_deref()
                            .map(|ip| format!(", {ip}"))
                            .unwrap_or_default()
                    ),
                })
                .collect(),
        ))
    }
}
