//! The managed resources: `fleetform_build`, `fleetform_fleet`, `fleetform_zone`,
//! `fleetform_bare_metal_machine`.

pub mod bare_metal_machine;
pub mod build;
pub mod fleet;
pub mod zone;
