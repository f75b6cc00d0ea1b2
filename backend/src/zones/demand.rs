//! Placement requests and session ends per zone and minute: what the predictive buffer
//! rule forecasts from.

use std::time::Duration;

use crate::autoscale::forecast::{forecast_net_demand, ArrivalHistory};

/// Placement requests and session ends per zone and minute, in memory (a restart forgets
/// them; the forecast then starts from the recent rate again).
#[derive(Debug, Default)]
pub struct Demand {
    zones: std::sync::Mutex<std::collections::HashMap<String, ZoneDemand>>,
}

#[derive(Debug, Default)]
struct ZoneDemand {
    arrivals: ArrivalHistory,
    ends: ArrivalHistory,
}

impl Demand {
    /// Counts one placement request for `zone_id` at `now_ms`.
    pub fn record(&self, zone_id: &str, now_ms: i64) {
        self.zones
            .lock()
            .expect("demand lock")
            .entry(zone_id.to_string())
            .or_default()
            .arrivals
            .record(now_ms.div_euclid(60_000), 1);
    }

    /// Counts `count` sessions of `zone_id` ended at `now_ms`.
    pub fn record_ends(&self, zone_id: &str, now_ms: i64, count: u32) {
        if count == 0 {
            return;
        }
        self.zones
            .lock()
            .expect("demand lock")
            .entry(zone_id.to_string())
            .or_default()
            .ends
            .record(now_ms.div_euclid(60_000), count);
    }

    /// Idle capacity `available_predicted` should hold for `zone_id` now: see
    /// [`forecast_net_demand`]; `horizon` is boot plus process start, `start` the process
    /// start alone.
    pub fn forecast(&self, zone_id: &str, now_ms: i64, horizon: Duration, start: Duration) -> f64 {
        let zones = self.zones.lock().expect("demand lock");
        zones.get(zone_id).map_or(0.0, |demand| {
            forecast_net_demand(
                &demand.arrivals,
                &demand.ends,
                now_ms.div_euclid(60_000),
                horizon.as_secs_f64() / 60.0,
                start.as_secs_f64() / 60.0,
            )
        })
    }
}
