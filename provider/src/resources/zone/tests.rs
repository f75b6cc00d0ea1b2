use std::sync::atomic::{AtomicU32, Ordering};

use fleetform_api::validate::validate_zone_spec;
use fleetform_api::ZoneSpecView;

use super::*;
use crate::diag::attribute_path;

fn rule(min: i64, servers: Option<i64>, percent: Option<i64>) -> BufferRuleState {
    BufferRuleState {
        min_active_sessions: Value::Value(min),
        available_servers: servers.into(),
        available_percent: percent.into(),
        available_predicted: Value::Null,
    }
}

/// A predictive rule: the forecast plus `margin` servers.
fn predicted(min: i64, margin: i64) -> BufferRuleState {
    BufferRuleState {
        available_predicted: Value::Value(margin),
        ..rule(min, None, None)
    }
}

fn data_center(name: &str) -> DataCenterState {
    DataCenterState {
        name: Value::Value(name.into()),
        location: Value::Value("local".into()),
        max_server_processes: Value::Value(4),
        machine_model: Value::Value(vec![MachineModelState {
            instance_type: Value::Value("local".into()),
            processes_per_machine: Value::Value(2),
        }]),
        ..Default::default()
    }
}

/// A valid zone configuration as Terraform sends it: the fleet id is not known yet.
fn config() -> ZoneState {
    ZoneState {
        fleet_id: Value::Unknown,
        name: Value::Value("eu".into()),
        initial_server_processes: Value::Value(2),
        buffer_rule: Value::Value(vec![rule(0, Some(1), None)]),
        data_center: Value::Value(vec![data_center("dc1")]),
        timeouts: Value::Value(vec![]),
        ..Default::default()
    }
}

impl ZoneState {
    fn rules(mut self, rules: Vec<BufferRuleState>) -> Self {
        self.buffer_rule = Value::Value(rules);
        self
    }
    fn data_centers(mut self, dcs: Vec<DataCenterState>) -> Self {
        self.data_center = Value::Value(dcs);
        self
    }
}

fn paths(problems: Problems) -> Vec<String> {
    problems
        .describe()
        .into_iter()
        .map(|(path, _)| path)
        .collect()
}

#[test]
fn validation_paths() {
    let cases: Vec<(&str, ZoneState, &[&str])> = vec![
        ("valid", config(), &[]),
        (
            "duplicate data-center names",
            config().data_centers(vec![data_center("dc1"), data_center("dc1")]),
            &["data_center[1].name"],
        ),
        (
            "buffer_rule with both amounts",
            config().rules(vec![rule(0, Some(1), Some(10))]),
            &["buffer_rule[0]"],
        ),
        (
            "buffer_rule with neither amount",
            config().rules(vec![rule(0, None, None)]),
            &["buffer_rule[0]"],
        ),
        (
            "first threshold not 0",
            config().rules(vec![rule(5, Some(1), None)]),
            &["buffer_rule[0].min_active_sessions"],
        ),
        (
            "thresholds not increasing",
            config().rules(vec![rule(0, Some(1), None), rule(0, Some(2), None)]),
            &["buffer_rule[1].min_active_sessions"],
        ),
        (
            "no buffer rule in auto mode",
            config().rules(vec![]),
            &["buffer_rule"],
        ),
        (
            "no buffer rule in fixed mode",
            ZoneState {
                scaling_mode: Value::Value("fixed".into()),
                ..config().rules(vec![])
            },
            &[],
        ),
        (
            "no buffer rule, mode unknown",
            ZoneState {
                scaling_mode: Value::Unknown,
                ..config().rules(vec![])
            },
            &[],
        ),
        (
            "unknown threshold skips the order but not the amounts",
            config().rules(vec![
                rule(0, Some(1), None),
                BufferRuleState {
                    min_active_sessions: Value::Unknown,
                    ..rule(0, Some(1), Some(5))
                },
            ]),
            &["buffer_rule[1]"],
        ),
        (
            "no data center",
            config().data_centers(vec![]),
            &["data_center"],
        ),
        (
            "vm data center without models",
            config().data_centers(vec![DataCenterState {
                machine_model: Value::Value(vec![]),
                ..data_center("dc1")
            }]),
            &["data_center[0].machine_model"],
        ),
        (
            "vm data center with unknown maximum",
            config().data_centers(vec![DataCenterState {
                max_server_processes: Value::Unknown,
                ..data_center("dc1")
            }]),
            &[],
        ),
        (
            "bare metal with a maximum",
            config().data_centers(vec![DataCenterState {
                machine_type: Value::Value("bare_metal".into()),
                bare_metal_machines: Value::Value(2),
                ..data_center("dc1")
            }]),
            &["data_center[0].max_server_processes"],
        ),
        (
            "negative processes per machine",
            config().data_centers(vec![DataCenterState {
                machine_model: Value::Value(vec![MachineModelState {
                    instance_type: Value::Unknown,
                    processes_per_machine: Value::Value(-1),
                }]),
                ..data_center("dc1")
            }]),
            &["data_center[0].machine_model[0].processes_per_machine"],
        ),
        (
            "free slots min above max",
            ZoneState {
                free_slots_min: Value::Value(5),
                free_slots_max: Value::Value(2),
                ..config()
            },
            &["free_slots_max"],
        ),
        (
            "no initial processes",
            ZoneState {
                initial_server_processes: Value::Value(0),
                ..config()
            },
            &["initial_server_processes"],
        ),
        (
            "unknown placement strategy",
            ZoneState {
                placement_strategy: Value::Value("random".into()),
                ..config()
            },
            &["placement_strategy"],
        ),
        (
            "bad timeout",
            ZoneState {
                timeouts: Value::Value(vec![TimeoutsState {
                    create: Value::Value("ten minutes".into()),
                    ..Default::default()
                }]),
                ..config()
            },
            &["timeouts[0].create"],
        ),
        (
            "segment rules with servers and percent",
            config().rules(vec![
                rule(0, Some(4), None),
                rule(100, None, Some(20)),
                rule(1000, None, Some(10)),
            ]),
            &[],
        ),
        (
            "predictive alone",
            config().rules(vec![predicted(0, 2)]),
            &[],
        ),
        (
            "predictive segment after a static rule",
            config().rules(vec![rule(0, Some(2), None), predicted(50, 0)]),
            &[],
        ),
        (
            "predictive with servers",
            config().rules(vec![BufferRuleState {
                available_servers: Value::Value(3),
                ..predicted(0, 2)
            }]),
            &["buffer_rule[0]"],
        ),
        (
            "predictive with percent on the second rule",
            config().rules(vec![
                rule(0, Some(1), None),
                BufferRuleState {
                    available_percent: Value::Value(10),
                    ..predicted(10, 2)
                },
            ]),
            &["buffer_rule[1]"],
        ),
        (
            "predictive with an unknown servers may be fine",
            config().rules(vec![BufferRuleState {
                available_servers: Value::Unknown,
                ..predicted(0, 2)
            }]),
            &[],
        ),
        (
            "two amounts set, the third unknown",
            config().rules(vec![BufferRuleState {
                available_predicted: Value::Unknown,
                ..rule(0, Some(1), Some(5))
            }]),
            &["buffer_rule[0]"],
        ),
        (
            "no amount set but one unknown",
            config().rules(vec![BufferRuleState {
                available_percent: Value::Unknown,
                ..rule(0, None, None)
            }]),
            &[],
        ),
        (
            "negative predictive margin",
            config().rules(vec![predicted(0, -1)]),
            &["buffer_rule[0].available_predicted"],
        ),
        (
            "percent out of range",
            config().rules(vec![rule(0, None, Some(1001))]),
            &["buffer_rule[0].available_percent"],
        ),
        (
            "a set: rules in any order are checked by threshold",
            config().rules(vec![
                rule(0, Some(1), None),
                BufferRuleState {
                    available_percent: Value::Unknown,
                    ..rule(10, None, None)
                },
                rule(5, Some(2), None),
            ]),
            &[],
        ),
        (
            "a duplicate threshold while an amount is unknown",
            config().rules(vec![
                rule(0, Some(1), None),
                BufferRuleState {
                    available_percent: Value::Unknown,
                    ..rule(5, None, None)
                },
                rule(5, Some(2), None),
            ]),
            &["buffer_rule[2].min_active_sessions"],
        ),
        (
            "the first threshold is uncertain while another is unknown",
            config().rules(vec![
                rule(5, Some(1), None),
                BufferRuleState {
                    min_active_sessions: Value::Unknown,
                    ..rule(0, Some(1), None)
                },
            ]),
            &[],
        ),
        (
            "first threshold not 0 while the fleet and an amount are unknown",
            config().rules(vec![BufferRuleState {
                available_servers: Value::Unknown,
                ..rule(3, None, None)
            }]),
            &["buffer_rule[0].min_active_sessions"],
        ),
        (
            "two known equal thresholds are a duplicate whatever the unknown one",
            config().rules(vec![
                rule(0, Some(1), None),
                BufferRuleState {
                    min_active_sessions: Value::Unknown,
                    ..rule(0, Some(1), None)
                },
                rule(0, Some(1), None),
            ]),
            &["buffer_rule[1].min_active_sessions"],
        ),
        (
            "known thresholds around an unknown one are still compared",
            config().rules(vec![
                rule(0, Some(1), None),
                rule(0, Some(1), None),
                BufferRuleState {
                    min_active_sessions: Value::Unknown,
                    ..rule(0, Some(1), None)
                },
            ]),
            &["buffer_rule[1].min_active_sessions"],
        ),
        (
            "thresholds out of order with predictive rules",
            config().rules(vec![predicted(0, 1), predicted(20, 2), predicted(20, 3)]),
            &["buffer_rule[2].min_active_sessions"],
        ),
        (
            "free slots equal bounds",
            ZoneState {
                free_slots_min: Value::Value(4),
                free_slots_max: Value::Value(4),
                ..config()
            },
            &[],
        ),
        (
            "free slots max unknown",
            ZoneState {
                free_slots_min: Value::Value(4),
                free_slots_max: Value::Unknown,
                ..config()
            },
            &[],
        ),
        (
            "free slots min only",
            ZoneState {
                free_slots_min: Value::Value(4),
                ..config()
            },
            &[],
        ),
        (
            "bare metal first with a vm overflow",
            config().data_centers(vec![
                DataCenterState {
                    location: Value::Value("fra-metal".into()),
                    machine_type: Value::Value("bare_metal".into()),
                    max_server_processes: Value::Null,
                    bare_metal_machines: Value::Value(4),
                    machine_model: Value::Null,
                    ..data_center("metal")
                },
                DataCenterState {
                    priority: Value::Value(1),
                    ..data_center("cloud")
                },
            ]),
            &[],
        ),
        (
            "unknown machine type is not judged",
            config().data_centers(vec![DataCenterState {
                machine_type: Value::Unknown,
                max_server_processes: Value::Null,
                ..data_center("dc1")
            }]),
            &[],
        ),
        (
            "unknown machine type",
            config().data_centers(vec![DataCenterState {
                machine_type: Value::Value("container".into()),
                ..data_center("dc1")
            }]),
            &["data_center[0].machine_type"],
        ),
        (
            "negative priority",
            config().data_centers(vec![DataCenterState {
                priority: Value::Value(-1),
                ..data_center("dc1")
            }]),
            &["data_center[0].priority"],
        ),
        (
            "eleven ranked models",
            config().data_centers(vec![DataCenterState {
                machine_model: Value::Value(vec![
                    MachineModelState {
                        instance_type: Value::Value("c6i.2xlarge".into()),
                        processes_per_machine: Value::Value(6),
                    };
                    11
                ]),
                ..data_center("dc1")
            }]),
            &["data_center[0].machine_model"],
        ),
        (
            "bare metal without machines",
            config().data_centers(vec![DataCenterState {
                machine_type: Value::Value("bare_metal".into()),
                max_server_processes: Value::Null,
                ..data_center("dc1")
            }]),
            &["data_center[0].bare_metal_machines"],
        ),
        (
            "unknown scaling mode",
            ZoneState {
                scaling_mode: Value::Value("manual".into()),
                ..config()
            },
            &["scaling_mode"],
        ),
        (
            "negative cooldown",
            ZoneState {
                cooldown_minutes: Value::Value(-5),
                ..config()
            },
            &["cooldown_minutes"],
        ),
        (
            "unknown lists are skipped",
            ZoneState {
                buffer_rule: Value::Unknown,
                data_center: Value::Unknown,
                ..config()
            },
            &[],
        ),
    ];
    for (case, config, expected) in cases {
        assert_eq!(paths(validate_zone(&config)), *expected, "{case}");
    }
}

fn spec() -> ZoneSpec {
    ZoneState {
        fleet_id: Value::Value("flt-1".into()),
        ..ZoneState::plan(config(), None)
    }
    .spec()
    .unwrap()
}

fn server_zone(spec: ZoneSpec) -> Zone {
    Zone {
        id: "zone-1".into(),
        spec: ZoneSpecView::from(spec),
        status: ResourceStatus::Available,
        created_at: "2024-01-01T00:00:00Z".into(),
    }
}

/// With every value known, plan-time validation finds exactly what the server would.
#[test]
fn known_configs_are_judged_like_the_server() {
    let mut cases: Vec<(&str, ZoneSpec)> = vec![("valid", spec())];
    let mut add = |name, change: fn(&mut ZoneSpec)| {
        let mut spec = spec();
        change(&mut spec);
        cases.push((name, spec));
    };
    add("duplicate dc", |s| {
        s.data_centers.push(s.data_centers[0].clone())
    });
    add("no dc", |s| s.data_centers.clear());
    add("no rules", |s| s.buffer_rules.clear());
    add("both amounts", |s| {
        s.buffer_rules[0].available_percent = Some(5)
    });
    add("percent out of range", |s| {
        s.buffer_rules[0].available_servers = None;
        s.buffer_rules[0].available_percent = Some(1001);
    });
    add("order", |s| s.buffer_rules.push(s.buffer_rules[0].clone()));
    add("predicted alone", |s| {
        s.buffer_rules[0].available_servers = None;
        s.buffer_rules[0].available_predicted = Some(2);
    });
    add("predicted with servers", |s| {
        s.buffer_rules[0].available_predicted = Some(2)
    });
    add("all three amounts", |s| {
        s.buffer_rules[0].available_percent = Some(5);
        s.buffer_rules[0].available_predicted = Some(0);
    });
    add("predictive segment out of order", |s| {
        s.buffer_rules.push(BufferRule {
            min_active_sessions: 0,
            available_servers: None,
            available_percent: None,
            available_predicted: Some(1),
        })
    });
    add("free slots", |s| {
        s.free_slots_min = Some(3);
        s.free_slots_max = Some(1);
    });
    add("bare metal shapes", |s| {
        s.data_centers[0].machine_type = MachineType::BareMetal;
    });
    add("vm shapes", |s| {
        s.data_centers[0].machine_models.clear();
        s.data_centers[0].max_server_processes = Some(0);
        s.data_centers[0].bare_metal_machines = Some(1);
    });
    add("eleven models", |s| {
        let model = s.data_centers[0].machine_models[0].clone();
        s.data_centers[0].machine_models = vec![model; 11];
    });
    add("bad names", |s| {
        s.name = "e u".into();
        s.data_centers[0].name = String::new();
        s.data_centers[0].location = String::new();
        s.data_centers[0].machine_models[0].instance_type = String::new();
        s.data_centers[0].machine_models[0].processes_per_machine = 0;
        s.initial_server_processes = 0;
    });
    for (case, spec) in cases {
        let mut server: Vec<(String, String)> = validate_zone_spec(&spec)
            .into_iter()
            .map(|error| (attribute_path(&error.field).to_string(), error.message))
            .collect();
        let state =
            ZoneState::from_zone(server_zone(spec), Value::Value(true), Value::Value(vec![]));
        let mut provider = validate_zone(&state).describe();
        server.sort();
        provider.sort();
        assert_eq!(provider, server, "{case}");
    }
}

#[test]
fn second_plan_after_apply_is_clean() {
    let planned = ZoneState::plan(config(), None);
    assert!(planned.id.is_unknown());
    assert_eq!(planned.placement_strategy, Value::Value("pack".into()));
    assert_eq!(planned.wait_for_capacity, Value::Value(true));
    let dc = &planned.data_center.as_ref_option().unwrap()[0];
    assert_eq!(dc.machine_type, Value::Value("vm".into()));
    assert_eq!(dc.priority, Value::Value(0));

    let config = ZoneState {
        fleet_id: Value::Value("flt-1".into()),
        ..config()
    };
    let applied = ZoneState::from_zone(
        server_zone(spec()),
        planned.wait_for_capacity,
        planned.timeouts.clone(),
    );
    assert_eq!(ZoneState::plan(config, Some(&applied)), applied);
}

/// The diagnostics say what to fix, in the server's words.
#[test]
fn validation_messages() {
    let cases: Vec<(&str, ZoneState, &str, &str)> = vec![
        (
            "predictive with another amount",
            config().rules(vec![BufferRuleState {
                available_percent: Value::Value(10),
                ..predicted(0, 2)
            }]),
            "buffer_rule[0]",
            "set exactly one of available_servers, available_percent or available_predicted, \
             not several",
        ),
        (
            "no amount",
            config().rules(vec![rule(0, None, None)]),
            "buffer_rule[0]",
            "set exactly one of available_servers, available_percent or available_predicted",
        ),
        (
            "a duplicate threshold",
            config().rules(vec![
                predicted(0, 1),
                rule(30, Some(2), None),
                predicted(30, 1),
            ]),
            "buffer_rule[2].min_active_sessions",
            "must be greater than the previous rule's 30 (thresholds strictly increase)",
        ),
        (
            "first threshold",
            config().rules(vec![predicted(5, 1)]),
            "buffer_rule[0].min_active_sessions",
            "the first buffer rule must start at 0 active sessions, got 5",
        ),
        (
            "free slots",
            ZoneState {
                free_slots_min: Value::Value(4),
                free_slots_max: Value::Value(2),
                ..config()
            },
            "free_slots_max",
            "must be at least free_slots_min (4), got 2",
        ),
    ];
    for (case, config, path, message) in cases {
        assert_eq!(
            validate_zone(&config).describe(),
            vec![(path.to_string(), message.to_string())],
            "{case}"
        );
    }
}

/// A predictive rule's margin survives plan, apply, read and import unchanged, so the
/// second plan is clean.
#[test]
fn predictive_rules_round_trip() {
    let config = ZoneState {
        fleet_id: Value::Value("flt-1".into()),
        ..config().rules(vec![
            rule(0, Some(2), None),
            predicted(100, 3),
            rule(1000, None, Some(10)),
        ])
    };
    let planned = ZoneState::plan(config.clone(), None);
    let spec = ZoneState {
        id: Value::Value("zone-1".into()),
        ..planned.clone()
    }
    .spec()
    .unwrap();
    assert_eq!(spec.buffer_rules[1].available_predicted, Some(3));
    assert_eq!(spec.buffer_rules[1].available_servers, None);
    assert_eq!(spec.buffer_rules[0].available_predicted, None);
    let applied = ZoneState::from_zone(
        server_zone(spec.clone()),
        planned.wait_for_capacity,
        planned.timeouts.clone(),
    );
    assert_eq!(
        applied.buffer_rule.as_ref_option().unwrap()[1].available_predicted,
        Value::Value(3)
    );
    assert_eq!(ZoneState::plan(config, Some(&applied)), applied);
    let imported = ZoneState::from_zone(
        server_zone(spec.clone()),
        Value::Value(true),
        Value::Value(vec![]),
    );
    assert_eq!(imported.spec().unwrap(), spec);
}

#[test]
fn import_fills_provider_only_attributes() {
    let imported = ZoneState::from_zone(
        server_zone(spec()),
        Value::Value(true),
        Value::Value(vec![]),
    );
    assert_eq!(imported.wait_for_capacity, Value::Value(true));
    assert_eq!(imported.timeouts, Value::Value(vec![]));
    assert_eq!(imported.spec().unwrap(), spec());
}

fn status(status: ResourceStatus) -> ZoneStatus {
    ZoneStatus {
        zone_id: "zone-1".into(),
        status,
        machines: Default::default(),
        processes_idle: 0,
        processes_active: 0,
        processes_starting: 2,
        processes_desired: 2,
        active_sessions: 0,
        players: 0,
        processes_by_build: Default::default(),
    }
}

#[tokio::test(start_paused = true)]
async fn waits_until_available() {
    let looks = AtomicU32::new(0);
    let result = poll_until(Duration::from_secs(10), || async {
        let n = looks.fetch_add(1, Ordering::SeqCst);
        capacity_ready(&status(if n < 3 {
            ResourceStatus::Launching
        } else {
            ResourceStatus::Available
        }))
    })
    .await;
    assert_eq!(result, Ok(()));
    assert_eq!(looks.load(Ordering::SeqCst), 4);
}

#[tokio::test(start_paused = true)]
async fn gives_up_at_the_timeout_with_what_it_saw() {
    let started = tokio::time::Instant::now();
    let result = poll_until(Duration::from_secs(30), || async {
        capacity_ready(&status(ResourceStatus::Launching))
    })
    .await;
    let why = result.unwrap_err();
    assert!(why.contains("30s") && why.contains("LAUNCHING"), "{why}");
    assert!(started.elapsed() <= Duration::from_secs(30));
    assert!(started.elapsed() >= Duration::from_millis(29_500));
}

#[tokio::test(start_paused = true)]
async fn a_hanging_answer_counts_against_the_timeout() {
    let result = poll_until(Duration::from_secs(5), std::future::pending).await;
    assert!(result.unwrap_err().contains("no answer yet"));
}

/// A version-0 state (lists in the configuration's order) upgrades to the sets, kept in
/// the provider's order, and reads as the same zone.
#[test]
fn version_0_state_upgrades_to_sets() {
    let current = ZoneState {
        id: Value::Value("zone-1".into()),
        fleet_id: Value::Value("flt-1".into()),
        ..ZoneState::plan(
            config()
                .data_centers(vec![data_center("b"), data_center("a")])
                .rules(vec![rule(50, Some(2), None), rule(0, Some(1), None)]),
            None,
        )
    };
    let old = serde_json::to_value(&current).unwrap();
    let upgraded = ZoneResource::upgrade(0, old).unwrap();
    let read: ZoneState = serde_json::from_value(upgraded).unwrap();
    let names: Vec<_> = read
        .data_center
        .as_ref_option()
        .unwrap()
        .iter()
        .map(|dc| dc.name.as_ref_option().unwrap().clone())
        .collect();
    assert_eq!(names, ["a", "b"]);
    let thresholds: Vec<_> = read
        .buffer_rule
        .as_ref_option()
        .unwrap()
        .iter()
        .map(|rule| rule.min_active_sessions)
        .collect();
    assert_eq!(thresholds, [Value::Value(0), Value::Value(50)]);
    assert_eq!(read.spec(), current.spec(), "the same zone");
    assert!(ZoneResource::upgrade(2, serde_json::json!({})).is_err());
}

/// Problems numbered by position (as the API and the validators number them, in the
/// provider's order) land on the sets, the message naming the data center or the rule.
#[test]
fn problems_are_located_by_name_and_threshold() {
    let config = config()
        .data_centers(vec![data_center("b"), data_center("a")])
        .rules(vec![rule(50, Some(1), None), rule(0, Some(1), None)]);
    let cases = [
        (
            "data_centers[1].location",
            "data_center",
            "data center \"b\", `location`: bad",
        ),
        ("data_centers[0]", "data_center", "data center \"a\": bad"),
        (
            "data_centers[0].machine_models[0].instance_type",
            "data_center",
            "data center \"a\", `machine_model[0].instance_type`: bad",
        ),
        (
            "buffer_rules[1].available_servers",
            "buffer_rule",
            "the rule from 50 active sessions, `available_servers`: bad",
        ),
        (
            "buffer_rules[0]",
            "buffer_rule",
            "the rule from 0 active sessions: bad",
        ),
        ("free_slots_max", "free_slots_max", "bad"),
    ];
    for (api, want_path, want_message) in cases {
        let (path, message) = locate(&config, attribute_path(api), "bad".into());
        assert_eq!(
            (path.to_string(), message.as_str()),
            (want_path.to_string(), want_message),
            "{api}"
        );
    }
}

/// A rule whose threshold is not known yet is named as such, not as the rule from 0.
#[test]
fn a_rule_with_an_unknown_threshold_is_named_as_such() {
    let config = config().rules(vec![
        BufferRuleState {
            min_active_sessions: Value::Unknown,
            ..rule(0, Some(1), Some(2))
        },
        rule(0, Some(1), None),
    ]);
    let (path, message) = locate(&config, attribute_path("buffer_rules[1]"), "bad".into());
    assert_eq!(path.to_string(), "buffer_rule");
    assert_eq!(
        message,
        "the rule whose `min_active_sessions` is not known yet: bad"
    );
    let reported: Vec<String> = ZoneResource::validate(&config)
        .describe()
        .into_iter()
        .map(|(_, message)| message)
        .collect();
    assert_eq!(
        reported,
        [
            "the rule whose `min_active_sessions` is not known yet: set exactly one of \
          available_servers, available_percent or available_predicted, not several"
        ]
    );
}

/// The body sends the rules by threshold whatever order the set came in.
#[test]
fn the_body_sends_rules_by_threshold() {
    let planned = ZoneState {
        fleet_id: Value::Value("flt-1".into()),
        ..ZoneState::plan(
            config().rules(vec![
                rule(50, Some(3), None),
                rule(0, Some(1), None),
                rule(10, Some(2), None),
            ]),
            None,
        )
    };
    let thresholds: Vec<u32> = planned
        .spec()
        .unwrap()
        .buffer_rules
        .iter()
        .map(|rule| rule.min_active_sessions)
        .collect();
    assert_eq!(thresholds, [0, 10, 50]);
}
