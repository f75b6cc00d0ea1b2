//! Table-driven cases for every rule of the policy, and its properties.

use std::collections::BTreeSet;

use proptest::prelude::*;

use super::fixtures::*;
use super::*;

const SIMPLE: FleetShape = FleetShape {
    session_mode: SessionMode::Simple,
    sessions_per_process: 1,
};

/// A machine in `dc` with `per` slots running `running` processes, `sessions` of them busy.
fn machine(id: &str, dc: &str, per: u32, running: u32, sessions: u32) -> MachineView {
    MachineView {
        id: id.into(),
        data_center: dc.into(),
        instance_type: "m1".into(),
        status: MachineStatus::Active,
        processes_per_machine: per,
        running_processes: running,
        busy_processes: sessions,
        active_sessions: sessions,
        free_slots_in_busy: 0,
        created_at_ms: 0,
    }
}

fn observed(machines: Vec<MachineView>) -> Observed {
    Observed {
        machines,
        idle_since_ms: 0,
        unavailable_models: BTreeSet::new(),
        predicted_arrivals: 0.0,
    }
}

/// `n` machines of `per` slots in `dc`, with `sessions` spread one per process from the first.
fn busy_machines(dc: &str, n: u32, per: u32, running: u32, mut sessions: u32) -> Vec<MachineView> {
    (0..n)
        .map(|i| {
            let here = sessions.min(running);
            sessions -= here;
            machine(&format!("{dc}-{i}"), dc, per, running, here)
        })
        .collect()
}

struct Case {
    name: &'static str,
    spec: ZoneSpecView,
    observed: Observed,
    now_ms: i64,
    want_desired: u32,
    /// Data centers of the launches, sorted.
    want_launch: Vec<&'static str>,
    want_terminate: Vec<&'static str>,
}

fn case(
    name: &'static str,
    spec: ZoneSpecView,
    observed: Observed,
    want_desired: u32,
    want_launch: Vec<&'static str>,
    want_terminate: Vec<&'static str>,
) -> Case {
    Case {
        name,
        spec,
        observed,
        now_ms: 0,
        want_desired,
        want_launch,
        want_terminate,
    }
}

#[test]
fn plan_cases() {
    let unavailable_first = Observed {
        unavailable_models: [("a".to_string(), "big".to_string())].into(),
        ..observed(vec![])
    };
    let all_unavailable = Observed {
        unavailable_models: [
            ("a".to_string(), "big".to_string()),
            ("a".to_string(), "small".to_string()),
        ]
        .into(),
        ..observed(vec![])
    };
    let cases = vec![
        case(
            "empty zone warms up to the initial count in whole machines",
            zone().dc("a", 0, 2, 10).initial(3),
            observed(vec![]),
            4,
            vec!["a", "a"],
            vec![],
        ),
        case(
            "fixed mode runs the data centers' maximums rounded up",
            zone().dc("a", 0, 6, 10).dc("b", 1, 4, 4).fixed(),
            observed(vec![]),
            16,
            vec!["a", "a", "b"],
            vec![],
        ),
        case(
            "1000 at 6 per machine is 1002",
            zone().dc("a", 0, 6, 1000).fixed(),
            observed(vec![]),
            1002,
            vec!["a"; 167],
            vec![],
        ),
        case(
            "a zone larger than a pass's launches is launched a pass's worth at a time",
            zone().dc("a", 0, 6, 10_000).fixed(),
            observed(vec![]),
            10_002,
            vec!["a"; MAX_LAUNCHES_PER_PASS],
            vec![],
        ),
        case(
            "busy plus buffer above the minimum grows the zone",
            zone()
                .dc("a", 0, 2, 10)
                .initial(2)
                .rules(vec![servers(0, 1)]),
            observed(vec![machine("m1", "a", 2, 2, 2)]),
            4,
            vec!["a"],
            vec![],
        ),
        case(
            "percent rule: 50% of 4 active is 2 idle",
            zone().dc("a", 0, 2, 20).rules(vec![percent(0, 50)]),
            observed(busy_machines("a", 2, 2, 2, 4)),
            6,
            vec!["a"],
            vec![],
        ),
        case(
            "segment rules: the rule for 4 active sessions applies",
            zone()
                .dc("a", 0, 1, 20)
                .rules(vec![servers(0, 1), servers(4, 3)]),
            observed(busy_machines("a", 4, 1, 1, 4)),
            7,
            vec!["a", "a", "a"],
            vec![],
        ),
        case(
            "preferred data center first, overflow to the next",
            zone().dc("b", 1, 2, 10).dc("a", 0, 2, 4).initial(6),
            observed(vec![]),
            6,
            vec!["a", "a", "b"],
            vec![],
        ),
        case(
            "equal priorities share machines evenly",
            zone().dc("a", 0, 1, 10).dc("b", 0, 1, 10).initial(4),
            observed(vec![]),
            4,
            vec!["a", "a", "b", "b"],
            vec![],
        ),
        case(
            "scale-in stops the idle machine, never the busy one",
            zone().dc("a", 0, 2, 10).initial(2),
            observed(vec![
                machine("busy", "a", 2, 2, 1),
                machine("idle", "a", 2, 2, 0),
            ]),
            2,
            vec![],
            vec!["idle"],
        ),
        case(
            "scale-in picks the least preferred data center",
            zone().dc("a", 0, 1, 10).dc("b", 1, 1, 10).initial(1),
            observed(vec![
                machine("pa", "a", 1, 1, 0),
                machine("pb", "b", 1, 1, 0),
            ]),
            1,
            vec![],
            vec!["pb"],
        ),
        case(
            "maximum caps the zone",
            zone().dc("a", 0, 6, 10).initial(50),
            observed(vec![]),
            12,
            vec!["a", "a"],
            vec![],
        ),
        case(
            "machines of a removed data center stop when idle",
            zone().dc("a", 0, 2, 10).initial(2),
            observed(vec![
                machine("m1", "a", 2, 2, 0),
                machine("old", "gone", 2, 2, 0),
            ]),
            2,
            vec![],
            vec!["old"],
        ),
        case(
            "the next model is used when the first has no capacity",
            zone()
                .dc("a", 0, 4, 8)
                .models(&[("big", 4), ("small", 2)])
                .initial(4),
            unavailable_first,
            4,
            vec!["a", "a"],
            vec![],
        ),
        case(
            "no model left: the data center is short, nothing launched",
            zone()
                .dc("a", 0, 4, 8)
                .models(&[("big", 4), ("small", 2)])
                .initial(4),
            all_unavailable,
            0,
            vec![],
            vec![],
        ),
        case(
            "bare metal is counted first; VMs cover the rest",
            zone()
                .bare_metal("metal", 2, 2)
                .dc("a", 0, 2, 10)
                .initial(6),
            observed(vec![
                machine("bm1", "metal", 2, 2, 0),
                machine("bm2", "metal", 2, 2, 0),
            ]),
            6,
            vec!["a"],
            vec![],
        ),
        case(
            "bare metal is never stopped, even when it is more than enough",
            zone()
                .bare_metal("metal", 2, 2)
                .dc("a", 0, 2, 10)
                .initial(1),
            observed(vec![
                machine("bm1", "metal", 2, 2, 0),
                machine("bm2", "metal", 2, 2, 0),
                machine("vm", "a", 2, 2, 0),
            ]),
            4,
            vec![],
            vec!["vm"],
        ),
    ];
    for case in cases {
        let got = plan(&case.spec, SIMPLE, &case.observed, case.now_ms);
        let mut launch: Vec<&str> = got.launch.iter().map(|l| l.data_center.as_str()).collect();
        launch.sort_unstable();
        assert_eq!(launch, case.want_launch, "{}: launches", case.name);
        assert_eq!(
            got.terminate, case.want_terminate,
            "{}: terminations",
            case.name
        );
        if !got.partial {
            assert_eq!(
                got.desired_processes, case.want_desired,
                "{}: desired",
                case.name
            );
        }
    }
}

#[test]
fn model_fallback_uses_the_fallback_model_and_reports_shortage() {
    let spec = zone()
        .dc("a", 0, 4, 8)
        .models(&[("big", 4), ("small", 2)])
        .initial(4);
    let first_out = Observed {
        unavailable_models: [("a".to_string(), "big".to_string())].into(),
        ..observed(vec![])
    };
    let got = plan(&spec, SIMPLE, &first_out, 0);
    assert!(got
        .launch
        .iter()
        .all(|l| l.instance_type == "small" && l.processes_per_machine == 2));
    let both_out = Observed {
        unavailable_models: [
            ("a".to_string(), "big".to_string()),
            ("a".to_string(), "small".to_string()),
        ]
        .into(),
        ..observed(vec![])
    };
    assert_eq!(
        plan(&spec, SIMPLE, &both_out, 0).short,
        vec!["a".to_string()]
    );
}

/// The worked example of the issue (zeuz's free payload capacity): 4 processes per
/// machine, `available_servers = 2`, free slots 2–4.
#[test]
fn free_slots_worked_example() {
    let spec = zone()
        .dc("a", 0, 4, 100)
        .rules(vec![servers(0, 2)])
        .free_slots(Some(2), Some(4));
    let slots = |plan: &Plan, machines: &[MachineView]| -> (usize, u32) {
        let count = machines.len() - plan.terminate.len() + plan.launch.len();
        let capacity = count as u32 * 4;
        (count, capacity - plan.desired_processes)
    };
    // 6 active → 8 processes, 3 machines with 4 free slots.
    let six = busy_machines("a", 3, 4, 3, 6);
    let got = plan(&spec, SIMPLE, &observed(six.clone()), 0);
    assert_eq!(got.desired_processes, 8);
    assert_eq!(slots(&got, &six), (3, 4), "6 active");
    // 8 active → 10 processes, still 3 machines, 2 free.
    let eight = busy_machines("a", 3, 4, 4, 8);
    let got = plan(&spec, SIMPLE, &observed(eight.clone()), 0);
    assert_eq!(got.desired_processes, 10);
    assert_eq!(slots(&got, &eight), (3, 2), "8 active");
    // 9 active → 11 processes: 3 machines would leave 1 free slot, below the minimum; 4
    // machines leave 5, above the maximum: the minimum wins.
    let nine = busy_machines("a", 3, 4, 4, 9);
    let got = plan(&spec, SIMPLE, &observed(nine.clone()), 0);
    assert_eq!(got.desired_processes, 11);
    assert_eq!(slots(&got, &nine), (4, 5), "9 active");
}

#[test]
fn free_slots_spread_processes_so_empty_machines_hold_the_headroom() {
    let spec = zone()
        .dc("a", 0, 4, 100)
        .initial(2)
        .rules(vec![servers(0, 0)])
        .free_slots(Some(4), Some(6));
    let got = plan(&spec, SIMPLE, &observed(vec![]), 0);
    // 2 processes + 4 free slots = 6 slots → 2 machines; processes packed on the first.
    let mut targets: Vec<u32> = got.launch.iter().map(|l| l.target_processes).collect();
    targets.sort_unstable();
    assert_eq!(targets, vec![0, 2]);
}

#[test]
fn parallel_mode_counts_free_session_slots() {
    let parallel = FleetShape {
        session_mode: SessionMode::Parallel,
        sessions_per_process: 4,
    };
    let spec = zone()
        .dc("a", 0, 1, 20)
        .initial(1)
        .rules(vec![servers(0, 4)]);
    // One process hosts 3 sessions: 1 free slot there; 4 wanted → 3 more slots → 1 process.
    let mut busy = machine("m", "a", 1, 1, 3);
    busy.busy_processes = 1;
    busy.free_slots_in_busy = 1;
    let got = plan(&spec, parallel, &observed(vec![busy]), 0);
    assert_eq!(got.desired_processes, 2);
    assert_eq!(got.launch.len(), 1);
}

#[test]
fn cooldown_scales_vms_to_zero_after_the_idle_period_and_keeps_bare_metal() {
    let spec = zone()
        .bare_metal("metal", 1, 2)
        .dc("a", 0, 2, 10)
        .initial(4)
        .cooldown(10);
    let machines = vec![machine("bm", "metal", 2, 2, 0), machine("vm", "a", 2, 2, 0)];
    let minute = 60_000;
    let before = plan(&spec, SIMPLE, &observed(machines.clone()), 9 * minute);
    assert!(!before.cooling);
    assert!(before.terminate.is_empty());
    let after = plan(&spec, SIMPLE, &observed(machines.clone()), 10 * minute);
    assert!(after.cooling);
    assert_eq!(after.terminate, vec!["vm".to_string()]);
    assert_eq!(after.desired_processes, 2, "bare metal stays");
    // A placement request woke it: the idle period starts again.
    let woken = Observed {
        idle_since_ms: 10 * minute,
        ..observed(machines)
    };
    let got = plan(&spec, SIMPLE, &woken, 10 * minute + 1);
    assert!(!got.cooling);
    assert_eq!(got.desired_processes, 4);
}

#[test]
fn predicted_rule_holds_the_forecast_plus_margin() {
    let spec = zone().dc("a", 0, 1, 100).initial(1).rules(vec![BufferRule {
        min_active_sessions: 0,
        available_servers: None,
        available_percent: None,
        available_predicted: Some(2),
    }]);
    let forecast = Observed {
        predicted_arrivals: 7.2,
        ..observed(vec![])
    };
    assert_eq!(plan(&spec, SIMPLE, &forecast, 0).desired_processes, 10);
}

fn apply(machines: &[MachineView], plan: &Plan) -> Vec<MachineView> {
    let mut next: Vec<MachineView> = machines
        .iter()
        .filter(|m| !plan.terminate.contains(&m.id))
        .map(|m| {
            let mut m = m.clone();
            if let Some(target) = plan.process_targets.get(&m.id) {
                m.running_processes = *target;
            }
            m
        })
        .collect();
    for (i, launch) in plan.launch.iter().enumerate() {
        next.push(MachineView {
            id: format!("new{i}-{}", next.len()),
            data_center: launch.data_center.clone(),
            instance_type: launch.instance_type.clone(),
            status: MachineStatus::Active,
            processes_per_machine: launch.processes_per_machine,
            running_processes: launch.target_processes,
            busy_processes: 0,
            active_sessions: 0,
            free_slots_in_busy: 0,
            created_at_ms: 1,
        });
    }
    next
}

proptest! {
    #[test]
    fn plan_invariants(
        initial in 1u32..40,
        buffer in 0u32..10,
        per_machine in 1u32..8,
        max_a in 1u32..60,
        max_b in 1u32..60,
        free in proptest::option::of((0u32..8, 0u32..8)),
        sessions in proptest::collection::vec(0u32..4, 0..12),
    ) {
        let mut spec = zone().dc("a", 0, per_machine, max_a).dc("b", 1, per_machine, max_b)
            .initial(initial).rules(vec![servers(0, buffer)]);
        if let Some((min, extra)) = free {
            spec = spec.free_slots(Some(min), Some(min + extra));
        }
        let machines: Vec<MachineView> = sessions.iter().enumerate().map(|(i, s)| {
            let dc_name = if i % 2 == 0 { "a" } else { "b" };
            let busy = (*s).min(per_machine);
            machine(&format!("m{i}"), dc_name, per_machine, per_machine, busy)
        }).collect();
        let got = plan(&spec, SIMPLE, &observed(machines.clone()), 0);

        // Never stops a machine that hosts a session.
        for id in &got.terminate {
            let m = machines.iter().find(|m| &m.id == id).unwrap();
            prop_assert_eq!(m.active_sessions, 0);
        }
        // Never asks a machine to run fewer processes than it has busy ones, or more than
        // it can.
        for (id, target) in &got.process_targets {
            let m = machines.iter().find(|m| &m.id == id).unwrap();
            prop_assert!(*target >= m.busy_processes.min(m.processes_per_machine));
            prop_assert!(*target <= m.processes_per_machine);
        }
        // Never above the maximum except by rounding to whole machines (or busy machines
        // that cannot stop).
        let bound = |dc: &str, max: u32| {
            let busy: u32 = machines.iter().filter(|m| m.data_center == dc && m.active_sessions > 0).map(|m| m.processes_per_machine).sum();
            (max.div_ceil(per_machine) * per_machine).max(busy)
        };
        let ceiling = max_a.div_ceil(per_machine) * per_machine + max_b.div_ceil(per_machine) * per_machine;
        prop_assert!(got.desired_processes <= bound("a", max_a) + bound("b", max_b));
        // Never below the initial count (unless the maximum is lower).
        prop_assert!(got.desired_processes >= initial.min(ceiling));
        // Converges: planning on the planned state changes nothing more.
        if !got.partial {
            let next = apply(&machines, &got);
            let again = plan(&spec, SIMPLE, &observed(next), 0);
            prop_assert!(again.launch.is_empty(), "second pass launches {:?}", again.launch);
            prop_assert!(again.terminate.is_empty(), "second pass stops {:?}", again.terminate);
        }
    }
}

#[test]
fn pool_plan_cases() {
    let spec = zone().bare_metal("metal", 2, 4).dc("cloud", 0, 4, 16);
    let mut launching = machine("new", "metal", 4, 0, 0);
    launching.status = MachineStatus::Launching;
    let mut leaving = machine("leaving", "metal", 4, 4, 0);
    leaving.status = MachineStatus::Terminating;
    let lowered = zone().bare_metal("metal", 1, 4);
    /// Name, zone, machines, wanted takes, wanted give-backs.
    type Case<'a> = (
        &'a str,
        &'a ZoneSpecView,
        Vec<MachineView>,
        Vec<(&'a str, u32)>,
        Vec<&'a str>,
    );
    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        ("an empty data center takes its count", &spec, vec![], vec![("metal", 2)], vec![]),
        ("VM machines are not the pool's business", &spec,
            vec![machine("vm", "cloud", 4, 4, 0)], vec![("metal", 2)], vec![]),
        ("holding its count, nothing changes", &spec,
            vec![machine("a", "metal", 4, 4, 1), machine("b", "metal", 4, 4, 0)], vec![], vec![]),
        ("a machine on its way out does not count", &spec,
            vec![machine("a", "metal", 4, 4, 0), leaving.clone()], vec![("metal", 1)], vec![]),
        ("a lowered count gives back an idle machine, not-yet-serving first", &lowered,
            vec![machine("a", "metal", 4, 4, 0), launching.clone()], vec![], vec!["new"]),
        ("a busy machine is never given back", &lowered,
            vec![machine("a", "metal", 4, 4, 1), machine("b", "metal", 4, 4, 2)], vec![], vec![]),
        ("only the idle one goes", &lowered,
            vec![machine("a", "metal", 4, 4, 1), machine("b", "metal", 4, 4, 0)], vec![], vec!["b"]),
    ];
    for (name, spec, machines, take, give_back) in cases {
        let plan = pool_plan(spec, &machines);
        let take: Vec<(String, u32)> = take
            .into_iter()
            .map(|(dc, n)| (dc.to_string(), n))
            .collect();
        assert_eq!(plan.take, take, "{name}");
        assert_eq!(plan.give_back, give_back, "{name}");
    }
}

#[test]
fn cooldown_never_stops_bare_metal() {
    let spec = zone()
        .bare_metal("metal", 2, 4)
        .dc("cloud", 0, 4, 16)
        .cooldown(1)
        .rules(vec![servers(0, 2)]);
    let machines = vec![
        machine("a", "metal", 4, 4, 0),
        machine("b", "metal", 4, 4, 0),
        machine("vm", "cloud", 4, 4, 0),
    ];
    let plan = plan(&spec, SIMPLE, &observed(machines.clone()), 10 * 60_000);
    assert!(plan.cooling);
    assert_eq!(plan.terminate, vec!["vm".to_string()], "only the VM stops");
    assert_eq!(plan.process_targets.get("a"), Some(&4));
    assert_eq!(pool_plan(&spec, &machines), PoolPlan::default());
}

#[test]
fn bare_metal_whose_agent_never_reports_stops_counting_after_the_grace() {
    let spec = zone()
        .bare_metal("metal", 1, 4)
        .dc("cloud", 0, 4, 16)
        .initial(4)
        .rules(vec![servers(0, 0)]);
    let mut taken = machine("bm", "metal", 4, 0, 0);
    taken.status = MachineStatus::Launching;
    taken.created_at_ms = 0;
    let just_taken = plan(&spec, SIMPLE, &observed(vec![taken.clone()]), 1_000);
    assert!(just_taken.launch.is_empty(), "{just_taken:?}");
    let silent = plan(
        &spec,
        SIMPLE,
        &observed(vec![taken]),
        BARE_METAL_REGISTER_GRACE_MS + 1,
    );
    assert_eq!(silent.launch.len(), 1, "a VM covers: {silent:?}");
    assert_eq!(silent.process_targets.get("bm"), Some(&4), "it stays taken");
}
