//! The data sources: `fleetform_fleet`, `fleetform_locations`, `fleetform_zone_status`.

pub mod fleet;
pub mod locations;
pub mod zone_status;
