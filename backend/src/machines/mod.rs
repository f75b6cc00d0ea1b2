//! Machine drivers: how a data center's `location` gets and loses machines.
//!
//! A driver only starts and stops machines and says whether one still exists; what runs on
//! a machine is the agent's business, told through `/v1/agent/sync`. Drivers: [`local`]
//! (each machine is a local `fleetform-agent` process), [`aws`] (an EC2 instance per
//! machine, through the `fleetform-aws` crate) and [`sim`] (simulated machines that report
//! to the store in-process, for scale tests) and [`bare_metal`] (machines of the pool that
//! an operator runs; zones take them rather than launch them).
//! [`desired`] is what a machine should run: the answer of a sync, which simulated
//! machines follow too.

#[cfg(feature = "aws")]
pub mod aws;
pub mod bare_metal;
pub mod desired;
pub mod local;
pub mod sim;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;

use crate::Result;

/// What a driver needs to start one machine.
#[derive(Debug, Clone)]
pub struct LaunchRequest {
    pub machine_id: String,
    pub fleet_id: String,
    pub zone_id: String,
    pub data_center: String,
    pub instance_type: String,
    /// The machine's own agent token (only its hash is stored).
    pub agent_token: String,
    /// The URL the agent reaches fleetformd at.
    pub server_url: String,
}

/// Whether a machine a driver launched still exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    Alive,
    Gone,
}

/// A machine as a cloud lists it: what the orphan sweep checks against the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudMachine {
    /// What the driver knows it by (an instance id).
    pub driver_ref: String,
    /// The fleetform machine it was launched for, by its tag.
    pub machine_id: Option<String>,
    /// Still running or able to run (not shutting down).
    pub up: bool,
    /// For events and logs: type, state, address.
    pub description: String,
}

/// How long a launched machine may take to sync for the first time before it is replaced,
/// unless its driver says otherwise.
pub const REGISTER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// Starts and stops machines of one kind.
#[async_trait]
pub trait MachineDriver: Send + Sync + std::fmt::Debug {
    /// `local`, `aws`, `sim`, `bare_metal`.
    fn kind(&self) -> &'static str;
    /// Starts a machine; returns what the driver knows it by (stored as `driver_ref`).
    async fn launch(&self, request: &LaunchRequest) -> Result<String>;
    /// Asks a machine to stop. Called again on every pass until it is gone, so a driver may
    /// escalate (SIGTERM, then SIGKILL).
    async fn terminate(&self, machine_id: &str, driver_ref: Option<&str>) -> Result<()>;
    /// Whether the machine still exists.
    async fn liveness(&self, machine_id: &str, driver_ref: Option<&str>) -> Result<Liveness>;
    /// [`MachineDriver::liveness`] when the driver knows it at once, without I/O (the
    /// simulated machines live in memory): a pass over 10,000 machines then needs no call
    /// per machine. None: ask [`MachineDriver::liveness`].
    fn liveness_known(&self, _machine_id: &str, _driver_ref: Option<&str>) -> Option<Liveness> {
        None
    }
    /// About how long a launched machine takes until its processes can take sessions: the
    /// horizon predictive buffer rules look ahead.
    fn boot_estimate(&self) -> std::time::Duration;
    /// How long a launched machine may take until its agent first syncs; past it the
    /// machine is terminated and replaced.
    fn register_timeout(&self) -> std::time::Duration {
        REGISTER_TIMEOUT
    }
    /// Finds a machine whose launch outcome was lost (fleetformd stopped, or the call
    /// failed, after the cloud may have started it): what to adopt it by, if it runs.
    async fn find(&self, _machine_id: &str) -> Result<Option<String>> {
        Ok(None)
    }
    /// How often this driver's machines report when nothing changes, if not at the
    /// server's heartbeat interval (simulated machines report slowly on purpose). A machine
    /// silent for three of these is UNHEALTHY.
    fn heartbeat_interval(&self) -> Option<std::time::Duration> {
        None
    }
    /// How often the orphan sweep lists [`MachineDriver::inventory`].
    fn sweep_interval(&self) -> std::time::Duration {
        std::time::Duration::from_secs(30)
    }
    /// Every machine the cloud runs for this cluster, for the orphan sweep; `None` when
    /// the driver cannot list (its machines cannot outlive the store's knowledge).
    async fn inventory(&self) -> Result<Option<Vec<CloudMachine>>> {
        Ok(None)
    }
}

/// A location the server offers and the driver behind it.
#[derive(Debug, Clone)]
pub struct Location {
    pub name: String,
    pub driver: Arc<dyn MachineDriver>,
}

/// Locations by name.
pub type Locations = BTreeMap<String, Location>;
