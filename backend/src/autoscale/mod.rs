//! Scaling policy: how many machines each data center of a zone should run, and which
//! machines to launch or stop to get there.
//!
//! Architecture invariant: [`plan`] does no I/O, reads no clock and draws no random
//! numbers. It is `compute_reconciliation_action(desired, observed, limits)` in Agones'
//! terms: the zone reconciler observes, calls it, then acts.
//!
//! This is the foundation's policy: `fixed` mode, and `auto` mode with
//! `initial_server_processes` as the minimum plus the buffer rule chosen by the number of
//! active sessions, over `vm` data centers, in whole machines, preferred data centers first.

use fleetform_api::{
    BufferRule, DataCenterSpec, MachineStatus, MachineType, ScalingMode, ZoneSpecView,
};

/// Most machines one pass launches; more makes the plan partial and the zone is requeued.
pub const MAX_LAUNCHES_PER_PASS: usize = 20;

/// A machine as the policy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineView {
    pub id: String,
    pub data_center: String,
    pub status: MachineStatus,
    pub processes_per_machine: u32,
    /// Sessions active on the machine: a machine with any is never stopped.
    pub active_sessions: u32,
    /// Processes up and taking sessions.
    pub ready_processes: u32,
    pub created_at_ms: i64,
}

impl MachineView {
    /// Whether the machine counts toward capacity (it is not on its way out).
    pub fn counts(&self) -> bool {
        !matches!(
            self.status,
            MachineStatus::Terminating | MachineStatus::Terminated | MachineStatus::Unhealthy
        )
    }
}

/// A machine to launch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub data_center: String,
    pub instance_type: String,
    pub processes_per_machine: u32,
}

/// What the reconciler should do for a zone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Processes the zone should run, after rounding up to whole machines.
    pub desired_processes: u32,
    pub launch: Vec<Launch>,
    /// Ids of idle machines to stop.
    pub terminate: Vec<String>,
    /// True when a batch cap left work for the next pass (requeue at once).
    pub partial: bool,
}

/// The processes one machine of `dc` runs: the first-ranked model's count.
pub fn processes_per_machine(dc: &DataCenterSpec) -> u32 {
    dc.machine_models
        .first()
        .map(|model| model.processes_per_machine.max(1))
        .unwrap_or(1)
}

/// Most machines `dc` may run: its maximum rounded up to whole machines (1000 at 6 per
/// machine is 167 machines, 1002 processes).
pub fn max_machines(dc: &DataCenterSpec) -> u32 {
    match dc.machine_type {
        MachineType::Vm => dc
            .max_server_processes
            .unwrap_or(0)
            .div_ceil(processes_per_machine(dc)),
        // Bare-metal pools are not scaled by this policy yet.
        MachineType::BareMetal => 0,
    }
}

/// The buffer rule in force: the last whose threshold the active sessions reached.
pub fn rule_for(rules: &[BufferRule], active_sessions: u32) -> Option<&BufferRule> {
    rules
        .iter()
        .filter(|rule| rule.min_active_sessions <= active_sessions)
        .max_by_key(|rule| rule.min_active_sessions)
}

/// Idle processes a rule asks for on top of the busy ones.
pub fn buffer_for(rule: Option<&BufferRule>, active_sessions: u32) -> u32 {
    match rule {
        Some(BufferRule {
            available_servers: Some(servers),
            ..
        }) => *servers,
        Some(BufferRule {
            available_percent: Some(percent),
            ..
        }) => (u64::from(active_sessions) * u64::from(*percent)).div_ceil(100) as u32,
        _ => 0,
    }
}

/// Processes the zone wants before rounding to machines.
pub fn desired_processes(spec: &ZoneSpecView, busy_processes: u32, active_sessions: u32) -> u32 {
    let ceiling: u32 = spec
        .data_centers
        .iter()
        .map(|dc| max_machines(dc) * processes_per_machine(dc))
        .sum();
    match spec.scaling_mode {
        ScalingMode::Fixed => ceiling,
        ScalingMode::Auto => {
            let buffer = buffer_for(
                rule_for(&spec.buffer_rules, active_sessions),
                active_sessions,
            );
            spec.initial_server_processes
                .max(busy_processes.saturating_add(buffer))
                .min(ceiling)
        }
    }
}

/// Machines per data center (in `spec` order) that supply `wanted` processes: preferred
/// data centers first, and among equal priorities one machine at a time to each in turn,
/// so idle capacity is spread evenly.
pub fn machines_per_data_center(spec: &ZoneSpecView, wanted: u32) -> Vec<u32> {
    let mut machines = vec![0u32; spec.data_centers.len()];
    let mut supplied = 0u32;
    let mut priorities: Vec<u32> = spec.data_centers.iter().map(|dc| dc.priority).collect();
    priorities.sort_unstable();
    priorities.dedup();
    for priority in priorities {
        let group: Vec<usize> = (0..spec.data_centers.len())
            .filter(|&i| spec.data_centers[i].priority == priority)
            .collect();
        loop {
            if supplied >= wanted {
                return machines;
            }
            let mut grew = false;
            for &i in &group {
                if supplied >= wanted {
                    break;
                }
                let dc = &spec.data_centers[i];
                if machines[i] < max_machines(dc) {
                    machines[i] += 1;
                    supplied += processes_per_machine(dc);
                    grew = true;
                }
            }
            if !grew {
                break;
            }
        }
    }
    machines
}

/// Plans one reconcile pass of a zone.
///
/// `busy_processes` are processes hosting sessions; `active_sessions` chooses the buffer
/// rule. Scale-in stops only machines with no active session, in the data centers that run
/// more than they should, starting with machines that are not up yet, then the newest.
pub fn plan(
    spec: &ZoneSpecView,
    machines: &[MachineView],
    busy_processes: u32,
    active_sessions: u32,
) -> Plan {
    let wanted = desired_processes(spec, busy_processes, active_sessions);
    let per_dc = machines_per_data_center(spec, wanted);
    let mut plan = Plan {
        desired_processes: spec
            .data_centers
            .iter()
            .zip(&per_dc)
            .map(|(dc, count)| count * processes_per_machine(dc))
            .sum(),
        ..Plan::default()
    };
    for (dc, &target) in spec.data_centers.iter().zip(&per_dc) {
        let mut running: Vec<&MachineView> = machines
            .iter()
            .filter(|m| m.data_center == dc.name && m.counts())
            .collect();
        let current = running.len() as u32;
        if current < target {
            let Some(model) = dc.machine_models.first() else {
                continue;
            };
            for _ in current..target {
                if plan.launch.len() >= MAX_LAUNCHES_PER_PASS {
                    plan.partial = true;
                    break;
                }
                plan.launch.push(Launch {
                    data_center: dc.name.clone(),
                    instance_type: model.instance_type.clone(),
                    processes_per_machine: model.processes_per_machine,
                });
            }
        } else if current > target {
            running.retain(|m| m.active_sessions == 0);
            running.sort_by_key(|m| {
                (
                    m.status == MachineStatus::Active,
                    m.ready_processes,
                    std::cmp::Reverse(m.created_at_ms),
                )
            });
            let excess = (current - target) as usize;
            plan.terminate
                .extend(running.into_iter().take(excess).map(|m| m.id.clone()));
        }
    }
    // Machines of data centers the spec no longer has are stopped once idle.
    plan.terminate.extend(
        machines
            .iter()
            .filter(|m| m.counts() && m.active_sessions == 0)
            .filter(|m| !spec.data_centers.iter().any(|dc| dc.name == m.data_center))
            .map(|m| m.id.clone()),
    );
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetform_api::{MachineModel, PlacementStrategy};
    use proptest::prelude::*;

    fn dc(name: &str, priority: u32, per_machine: u32, max: u32) -> DataCenterSpec {
        DataCenterSpec {
            name: name.into(),
            location: "local".into(),
            priority,
            machine_type: MachineType::Vm,
            machine_models: vec![MachineModel {
                instance_type: "local".into(),
                processes_per_machine: per_machine,
            }],
            max_server_processes: Some(max),
            bare_metal_machines: None,
        }
    }

    fn zone(
        mode: ScalingMode,
        initial: u32,
        servers: u32,
        dcs: Vec<DataCenterSpec>,
    ) -> ZoneSpecView {
        ZoneSpecView {
            fleet_id: "flt".into(),
            name: "z".into(),
            scaling_mode: mode,
            initial_server_processes: initial,
            buffer_rules: vec![BufferRule {
                min_active_sessions: 0,
                available_servers: Some(servers),
                available_percent: None,
            }],
            free_slots_min: None,
            free_slots_max: None,
            cooldown_minutes: 0,
            placement_strategy: PlacementStrategy::Pack,
            data_centers: dcs,
        }
    }

    fn machine(id: &str, dc: &str, per_machine: u32, sessions: u32) -> MachineView {
        MachineView {
            id: id.into(),
            data_center: dc.into(),
            status: MachineStatus::Active,
            processes_per_machine: per_machine,
            active_sessions: sessions,
            ready_processes: per_machine.saturating_sub(sessions),
            created_at_ms: 0,
        }
    }

    #[test]
    fn plan_cases() {
        struct Case {
            name: &'static str,
            spec: ZoneSpecView,
            machines: Vec<MachineView>,
            busy: u32,
            want_desired: u32,
            want_launch_dcs: Vec<&'static str>,
            want_terminate: Vec<&'static str>,
        }
        let cases = vec![
            Case {
                name: "empty zone warms up to the initial count in whole machines",
                spec: zone(ScalingMode::Auto, 3, 1, vec![dc("a", 0, 2, 10)]),
                machines: vec![],
                busy: 0,
                want_desired: 4,
                want_launch_dcs: vec!["a", "a"],
                want_terminate: vec![],
            },
            Case {
                name: "fixed mode runs the data centers' maximums rounded up",
                spec: zone(
                    ScalingMode::Fixed,
                    1,
                    0,
                    vec![dc("a", 0, 6, 10), dc("b", 1, 4, 4)],
                ),
                machines: vec![],
                busy: 0,
                want_desired: 16,
                want_launch_dcs: vec!["a", "a", "b"],
                want_terminate: vec![],
            },
            Case {
                name: "busy plus buffer above the minimum grows the zone",
                spec: zone(ScalingMode::Auto, 2, 1, vec![dc("a", 0, 2, 10)]),
                machines: vec![machine("m1", "a", 2, 2)],
                busy: 2,
                want_desired: 4,
                want_launch_dcs: vec!["a"],
                want_terminate: vec![],
            },
            Case {
                name: "preferred data center first, overflow to the next",
                spec: zone(
                    ScalingMode::Auto,
                    6,
                    0,
                    vec![dc("b", 1, 2, 10), dc("a", 0, 2, 4)],
                ),
                machines: vec![],
                busy: 0,
                want_desired: 6,
                want_launch_dcs: vec!["a", "a", "b"],
                want_terminate: vec![],
            },
            Case {
                name: "equal priorities share machines evenly",
                spec: zone(
                    ScalingMode::Auto,
                    4,
                    0,
                    vec![dc("a", 0, 1, 10), dc("b", 0, 1, 10)],
                ),
                machines: vec![],
                busy: 0,
                want_desired: 4,
                want_launch_dcs: vec!["a", "a", "b", "b"],
                want_terminate: vec![],
            },
            Case {
                name: "scale-in stops the idle machine, never the busy one",
                spec: zone(ScalingMode::Auto, 2, 0, vec![dc("a", 0, 2, 10)]),
                machines: vec![machine("busy", "a", 2, 1), machine("idle", "a", 2, 0)],
                busy: 1,
                want_desired: 2,
                want_launch_dcs: vec![],
                want_terminate: vec!["idle"],
            },
            Case {
                name: "maximum caps the zone",
                spec: zone(ScalingMode::Auto, 50, 0, vec![dc("a", 0, 6, 10)]),
                machines: vec![],
                busy: 0,
                want_desired: 12,
                want_launch_dcs: vec!["a", "a"],
                want_terminate: vec![],
            },
            Case {
                name: "machines of a removed data center stop when idle",
                spec: zone(ScalingMode::Auto, 2, 0, vec![dc("a", 0, 2, 10)]),
                machines: vec![machine("m1", "a", 2, 0), machine("old", "gone", 2, 0)],
                busy: 0,
                want_desired: 2,
                want_launch_dcs: vec![],
                want_terminate: vec!["old"],
            },
        ];
        for case in cases {
            let got = plan(&case.spec, &case.machines, case.busy, case.busy);
            assert_eq!(got.desired_processes, case.want_desired, "{}", case.name);
            let mut launch: Vec<&str> = got.launch.iter().map(|l| l.data_center.as_str()).collect();
            launch.sort_unstable();
            assert_eq!(launch, case.want_launch_dcs, "{}", case.name);
            assert_eq!(got.terminate, case.want_terminate, "{}", case.name);
        }
    }

    #[test]
    fn thousand_at_six_per_machine_is_1002() {
        let spec = zone(ScalingMode::Fixed, 1, 0, vec![dc("a", 0, 6, 1000)]);
        assert_eq!(desired_processes(&spec, 0, 0), 1002);
    }

    #[test]
    fn segment_rules_pick_the_last_reached_threshold() {
        let rules = vec![
            BufferRule {
                min_active_sessions: 0,
                available_servers: Some(2),
                available_percent: None,
            },
            BufferRule {
                min_active_sessions: 10,
                available_servers: None,
                available_percent: Some(50),
            },
        ];
        assert_eq!(buffer_for(rule_for(&rules, 9), 9), 2);
        assert_eq!(buffer_for(rule_for(&rules, 10), 10), 5);
        assert_eq!(buffer_for(rule_for(&rules, 11), 11), 6);
    }

    fn apply(machines: &[MachineView], plan: &Plan) -> Vec<MachineView> {
        let mut next: Vec<MachineView> = machines
            .iter()
            .filter(|m| !plan.terminate.contains(&m.id))
            .cloned()
            .collect();
        for (i, launch) in plan.launch.iter().enumerate() {
            next.push(MachineView {
                id: format!("new{i}-{}", next.len()),
                data_center: launch.data_center.clone(),
                status: MachineStatus::Active,
                processes_per_machine: launch.processes_per_machine,
                active_sessions: 0,
                ready_processes: launch.processes_per_machine,
                created_at_ms: 1,
            });
        }
        next
    }

    proptest! {
        #[test]
        fn plan_invariants(
            initial in 1u32..40,
            servers in 0u32..10,
            per_machine in 1u32..8,
            max_a in 1u32..60,
            max_b in 1u32..60,
            sessions in proptest::collection::vec(0u32..4, 0..12),
        ) {
            let spec = zone(ScalingMode::Auto, initial, servers,
                vec![dc("a", 0, per_machine, max_a), dc("b", 1, per_machine, max_b)]);
            let machines: Vec<MachineView> = sessions.iter().enumerate().map(|(i, s)| {
                let dc_name = if i % 2 == 0 { "a" } else { "b" };
                machine(&format!("m{i}"), dc_name, per_machine, (*s).min(per_machine))
            }).collect();
            let busy: u32 = machines.iter().map(|m| m.active_sessions).sum();
            let got = plan(&spec, &machines, busy, busy);

            // Never stops a machine that hosts a session.
            for id in &got.terminate {
                let m = machines.iter().find(|m| &m.id == id).unwrap();
                prop_assert_eq!(m.active_sessions, 0);
            }
            // Never above the maximum except by rounding to whole machines.
            let ceiling = max_a.div_ceil(per_machine) * per_machine + max_b.div_ceil(per_machine) * per_machine;
            prop_assert!(got.desired_processes <= ceiling);
            // Never below the initial count (unless the maximum is lower).
            prop_assert!(got.desired_processes >= initial.min(ceiling));
            // Converges: planning on the planned state changes nothing more.
            let next = apply(&machines, &got);
            let again = plan(&spec, &next, busy, busy);
            if !got.partial {
                prop_assert!(again.launch.is_empty(), "second pass launches {:?}", again.launch);
                prop_assert!(again.terminate.is_empty(), "second pass stops {:?}", again.terminate);
            }
        }
    }
}
