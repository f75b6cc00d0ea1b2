//! Test fixtures shared by the policy's and the simulator's tests: a zone built fluently,
//! `zone().dc("a", 0, 2, 10).initial(4).rules(vec![servers(0, 1)])` (controller-rs style).

use fleetform_api::{
    BufferRule, DataCenterSpec, MachineModel, MachineType, PlacementStrategy, ScalingMode,
    ZoneSpecView,
};

/// An auto zone with no data center and one rule of 0 idle servers.
pub(crate) fn zone() -> ZoneSpecView {
    ZoneSpecView {
        fleet_id: "flt".into(),
        name: "z".into(),
        scaling_mode: ScalingMode::Auto,
        initial_server_processes: 1,
        buffer_rules: vec![servers(0, 0)],
        free_slots_min: None,
        free_slots_max: None,
        cooldown_minutes: 0,
        placement_strategy: PlacementStrategy::Pack,
        data_centers: vec![],
    }
}

/// A rule of `servers` idle servers from `min` active sessions on.
pub(crate) fn servers(min: u32, servers: u32) -> BufferRule {
    BufferRule {
        min_active_sessions: min,
        available_servers: Some(servers),
        available_percent: None,
        available_predicted: None,
    }
}

/// A rule of `percent`% of the active sessions from `min` on.
pub(crate) fn percent(min: u32, percent: u32) -> BufferRule {
    BufferRule {
        min_active_sessions: min,
        available_servers: None,
        available_percent: Some(percent),
        available_predicted: None,
    }
}

/// The builder steps.
pub(crate) trait ZoneExt {
    fn dc(self, name: &str, priority: u32, per_machine: u32, max: u32) -> Self;
    fn models(self, models: &[(&str, u32)]) -> Self;
    fn bare_metal(self, name: &str, machines: u32, per_machine: u32) -> Self;
    fn initial(self, n: u32) -> Self;
    fn rules(self, rules: Vec<BufferRule>) -> Self;
    fn fixed(self) -> Self;
    fn free_slots(self, min: Option<u32>, max: Option<u32>) -> Self;
    fn cooldown(self, minutes: u32) -> Self;
    fn rule(self, rule: BufferRule) -> Self;
    fn strategy(self, strategy: PlacementStrategy) -> Self;
}

impl ZoneExt for ZoneSpecView {
    fn dc(mut self, name: &str, priority: u32, per_machine: u32, max: u32) -> Self {
        self.data_centers.push(DataCenterSpec {
            name: name.into(),
            location: "sim".into(),
            priority,
            machine_type: MachineType::Vm,
            machine_models: vec![MachineModel {
                instance_type: "m1".into(),
                processes_per_machine: per_machine,
            }],
            max_server_processes: Some(max),
            bare_metal_machines: None,
        });
        self
    }
    fn models(mut self, models: &[(&str, u32)]) -> Self {
        let dc = self.data_centers.last_mut().expect("a data center");
        dc.machine_models = models
            .iter()
            .map(|(name, per)| MachineModel {
                instance_type: name.to_string(),
                processes_per_machine: *per,
            })
            .collect();
        self
    }
    fn bare_metal(mut self, name: &str, machines: u32, per_machine: u32) -> Self {
        self.data_centers.push(DataCenterSpec {
            name: name.into(),
            location: "site".into(),
            priority: 0,
            machine_type: MachineType::BareMetal,
            machine_models: vec![MachineModel {
                instance_type: "metal".into(),
                processes_per_machine: per_machine,
            }],
            max_server_processes: None,
            bare_metal_machines: Some(machines),
        });
        self
    }
    fn initial(mut self, n: u32) -> Self {
        self.initial_server_processes = n;
        self
    }
    fn rules(mut self, rules: Vec<BufferRule>) -> Self {
        self.buffer_rules = rules;
        self
    }
    fn fixed(mut self) -> Self {
        self.scaling_mode = ScalingMode::Fixed;
        self
    }
    fn free_slots(mut self, min: Option<u32>, max: Option<u32>) -> Self {
        self.free_slots_min = min;
        self.free_slots_max = max;
        self
    }
    fn cooldown(mut self, minutes: u32) -> Self {
        self.cooldown_minutes = minutes;
        self
    }
    fn rule(mut self, rule: BufferRule) -> Self {
        self.buffer_rules = vec![rule];
        self
    }
    fn strategy(mut self, strategy: PlacementStrategy) -> Self {
        self.placement_strategy = strategy;
        self
    }
}
