//! The data sources: `fleetform_locations`, `fleetform_zone_status`.

pub mod locations;
pub mod zone_status;
