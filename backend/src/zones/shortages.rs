//! Machine models a cloud recently had no capacity for, per zone: skipped for a while, and
//! a data center that has none left is reported short once per period.

/// How long a machine model stays out of the running after the cloud said it has no
/// capacity for it.
pub const SHORTAGE_MS: i64 = 10 * 60_000;

/// Machine models the cloud recently had no capacity for, per zone.
#[derive(Debug, Default)]
pub struct Shortages {
    until: std::sync::Mutex<std::collections::HashMap<(String, String, String), i64>>,
    /// When each (zone, data center) was last reported short.
    reported: std::sync::Mutex<std::collections::HashMap<(String, String), i64>>,
}

impl Shortages {
    /// Whether a data center's shortage should be reported now: once per shortage period.
    pub fn report_short(&self, zone_id: &str, data_center: &str, now_ms: i64) -> bool {
        let mut reported = self.reported.lock().expect("shortage lock");
        let key = (zone_id.to_string(), data_center.to_string());
        match reported.get(&key) {
            Some(at) if now_ms - at < SHORTAGE_MS => false,
            _ => {
                reported.insert(key, now_ms);
                true
            }
        }
    }

    /// The cloud has no capacity for `instance_type` in `data_center` of `zone_id`.
    pub fn record(&self, zone_id: &str, data_center: &str, instance_type: &str, now_ms: i64) {
        self.until.lock().expect("shortage lock").insert(
            (zone_id.into(), data_center.into(), instance_type.into()),
            now_ms + SHORTAGE_MS,
        );
    }

    /// `(data center, instance type)` pairs of `zone_id` still short at `now_ms`.
    pub fn unavailable(
        &self,
        zone_id: &str,
        now_ms: i64,
    ) -> std::collections::BTreeSet<(String, String)> {
        let mut until = self.until.lock().expect("shortage lock");
        until.retain(|_, expires| *expires > now_ms);
        until
            .keys()
            .filter(|(zone, _, _)| zone == zone_id)
            .map(|(_, dc, model)| (dc.clone(), model.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shortage_is_reported_once_per_period() {
        let shortages = Shortages::default();
        assert!(shortages.report_short("z", "east", 0));
        assert!(!shortages.report_short("z", "east", SHORTAGE_MS - 1));
        assert!(shortages.report_short("z", "west", 1));
        assert!(shortages.report_short("z", "east", SHORTAGE_MS));
    }
}
