//! The managed resources: `fleetform_build`, `fleetform_fleet`, `fleetform_zone`.

pub mod build;
pub mod fleet;
pub mod zone;
