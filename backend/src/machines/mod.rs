//! Machine drivers: how a data center's `location` gets and loses machines.
//!
//! A driver only starts and stops machines and says whether one still exists; what runs on
//! a machine is the agent's business, told through `/v1/agent/sync`. Drivers: [`local`]
//! (each machine is a local `fleetform-agent` process) and [`sim`] (simulated machines that
//! report to the store in-process, for scale tests). `aws` and the bare-metal pool come in
//! later issues. [`desired`] is what a machine should run: the answer of a sync, which
//! simulated machines follow too.

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
    /// About how long a launched machine takes until its processes can take sessions: the
    /// horizon predictive buffer rules look ahead.
    fn boot_estimate(&self) -> std::time::Duration;
}

/// A location the server offers and the driver behind it.
#[derive(Debug, Clone)]
pub struct Location {
    pub name: String,
    pub driver: Arc<dyn MachineDriver>,
}

/// Locations by name.
pub type Locations = BTreeMap<String, Location>;
