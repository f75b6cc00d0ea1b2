//! The data sources: `fleetform_zone_status`.

pub mod zone_status;
