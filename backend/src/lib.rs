//! fleetformd: the control plane of fleetform.
//!
//! The admin API (used by the Terraform provider) writes builds, fleets and zones to the
//! [`store`]; the [`zones`] reconciler turns each zone into machines through a
//! [`machines`] driver, following the pure [`autoscale`] plan; agents on those machines
//! sync through the [`api`] and run the game-server processes; the placement API puts
//! sessions on ready processes using the pure [`placement`] choice.

pub mod api;
pub mod autoscale;
pub mod changes;
pub mod config;
pub mod crash_loop;
pub mod error;
pub mod leases;
pub mod machines;
pub mod placement;
pub mod retention;
pub mod server;
pub mod simulator;
pub mod store;
pub mod time;
pub mod zones;

pub use error::{Error, Result};
