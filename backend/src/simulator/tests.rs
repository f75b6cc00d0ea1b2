//! Known answers on tiny traces, determinism, the lower bound by hand, the placement index
//! against `choose`, and the trace format.

use fleetform_api::{PlacementStrategy, ScalingMode};

use super::engine::{run_checked, Meter};
use super::trace::{generate, parse, Pattern, TraceRow};
use super::tune::{cheapest, with_rule, BufferKind};
use super::*;
use crate::autoscale::fixtures::{zone, ZoneExt};

fn trace(minutes: i64, requests: &[(i64, u32)]) -> Trace {
    Trace {
        zone: "z".into(),
        rows: (0..minutes)
            .map(|minute| TraceRow {
                minute,
                session_requests: requests
                    .iter()
                    .filter(|(m, _)| *m == minute)
                    .map(|(_, n)| n)
                    .sum(),
                session_minutes: None,
            })
            .collect(),
    }
}

fn config() -> SimConfig {
    SimConfig {
        boot_ms: 0,
        start_ms: 0,
        tick_ms: 10_000,
        session_minutes: 3.0,
        session_distribution: SessionDistribution::Fixed,
        ..SimConfig::default()
    }
}

fn parallel(sessions_per_process: u32) -> FleetShape {
    FleetShape {
        session_mode: SessionMode::Parallel,
        sessions_per_process,
    }
}

#[test]
#[rustfmt::skip]
fn known_answers() {
    struct Case {
        name: &'static str,
        zone: ZoneSpecView,
        trace: Trace,
        config: SimConfig,
        misses: u64,
        /// Exact machine-hours, when the case pins them.
        machine_hours: Option<f64>,
    }
    let quiet_then_busy = trace(12, &[(1, 6), (2, 6), (3, 6), (4, 6)]);
    let cases = vec![
        Case {
            name: "instant boot and a buffer bigger than a minute's requests: no miss",
            zone: zone().dc("a", 0, 2, 10_000).initial(8).rule(BufferKind::Servers.rule(8)),
            trace: quiet_then_busy.clone(),
            config: config(),
            misses: 0,
            machine_hours: None,
        },
        Case {
            name: "no buffer and a boot longer than the trace: every request misses",
            zone: zone().dc("a", 0, 2, 10_000).initial(1).rule(BufferKind::Servers.rule(0)),
            trace: trace(5, &[(0, 5), (1, 5), (2, 5), (3, 5), (4, 5)]),
            config: SimConfig { boot_ms: 600_000, ..config() },
            misses: 25,
            // The one machine of `initial` boots the whole five minutes.
            machine_hours: Some(5.0 / 60.0),
        },
        Case {
            name: "fixed mode runs every data center's maximum from the start",
            zone: ZoneSpecView { scaling_mode: ScalingMode::Fixed, ..zone().dc("a", 0, 4, 10_000) }
                .with_max(0, 6),
            trace: trace(10, &[(1, 8)]),
            config: config(),
            // 6 processes round up to 2 machines of 4: 8 slots for 8 requests.
            misses: 0,
            machine_hours: Some(2.0 * 10.0 / 60.0),
        },
        Case {
            name: "bare metal serves first: no VM is launched for what it holds",
            zone: zone().bare_metal("metal", 2, 4).dc("cloud", 1, 4, 10_000).initial(1),
            trace: trace(10, &[(1, 3), (5, 3)]),
            config: config(),
            misses: 0,
            // Two bare-metal machines, always on; the VM data center stays empty.
            machine_hours: Some(2.0 * 10.0 / 60.0),
        },
        Case {
            name: "parallel slots: one process of 4 slots holds 4 sessions",
            zone: zone().dc("a", 0, 1, 10_000).initial(1).rule(BufferKind::Servers.rule(0)),
            trace: trace(2, &[(1, 4)]),
            config: SimConfig { fleet: parallel(4), ..config() },
            misses: 0,
            machine_hours: Some(2.0 / 60.0),
        },
    ];
    for case in cases {
        let report = run_checked(&case.zone, &case.trace, &case.config);
        assert_eq!(report.misses, case.misses, "{}: misses", case.name);
        assert_eq!(report.refused_terminations, 0, "{}", case.name);
        if let Some(hours) = case.machine_hours {
            assert!(
                (report.machine_hours - hours).abs() < 1e-9,
                "{}: machine_hours {} want {hours}",
                case.name,
                report.machine_hours
            );
        }
    }
}

trait MaxExt {
    fn with_max(self, dc: usize, max: u32) -> Self;
}

impl MaxExt for ZoneSpecView {
    fn with_max(mut self, dc: usize, max: u32) -> Self {
        self.data_centers[dc].max_server_processes = Some(max);
        self
    }
}

#[test]
fn a_long_boot_misses_where_an_instant_one_does_not() {
    let zone = zone()
        .dc("a", 0, 4, 10_000)
        .initial(4)
        .rule(BufferKind::Servers.rule(4));
    let ramp = trace(30, &[(5, 10), (6, 20), (7, 30), (8, 40), (9, 40)]);
    let instant = run_checked(&zone, &ramp, &config());
    let slow = run_checked(
        &zone,
        &ramp,
        &SimConfig {
            boot_ms: 90_000,
            start_ms: 5_000,
            ..config()
        },
    );
    assert!(
        slow.misses > 0,
        "a 4-server buffer cannot cover a 90 s boot"
    );
    assert!(instant.misses < slow.misses);
}

#[test]
fn the_same_seed_gives_the_same_report() {
    let zone = zone()
        .dc("a", 0, 4, 10_000)
        .dc("b", 1, 4, 10_000)
        .initial(4)
        .rule(BufferKind::Percent.rule(20));
    let daily = generate(Pattern::SteadyDaily, 1, 30.0, 7, "z");
    let config = SimConfig {
        session_distribution: SessionDistribution::Lognormal,
        seed: 42,
        ..SimConfig::default()
    };
    let first = run(&zone, &daily, &config).unwrap();
    let second = run(&zone, &daily, &config).unwrap();
    assert_eq!(first, second);
    assert_eq!(first.timeline.len(), 1440);
    let other = run(&zone, &daily, &SimConfig { seed: 43, ..config }).unwrap();
    assert_ne!(
        first.session_hours, other.session_hours,
        "another seed, other lengths"
    );
}

#[test]
fn lower_bound_by_hand() {
    // 4 slots per machine. Demand 0 for a minute, 5 for two minutes (2 machines), 8 for one
    // (2), 9 for half a minute (3), of which one missed: 2·2 + 2·1 + 3·0.5 = 7.5
    // machine-minutes. Three machines throughout: 3 · 4.5 = 13.5.
    let mut meter = Meter::new(0);
    let minute = 60_000;
    meter.advance(minute, 3, 0, 0, 4);
    meter.advance(3 * minute, 3, 5, 0, 4);
    meter.advance(4 * minute, 3, 8, 0, 4);
    meter.advance(4 * minute + minute / 2, 3, 8, 1, 4);
    assert_eq!(
        meter.lower_bound_ms,
        7 * minute as u128 + minute as u128 / 2
    );
    assert_eq!(meter.machine_ms, 27 * minute as u128 / 2);
    assert_eq!(meter.session_ms, (5 * 2 + 8 + 4) as u128 * minute as u128);
}

#[test]
fn with_one_slot_per_machine_and_no_miss_the_lower_bound_is_the_session_time() {
    let zone = zone()
        .dc("a", 0, 1, 10_000)
        .initial(10)
        .rule(BufferKind::Servers.rule(10));
    let report = run_checked(&zone, &trace(20, &[(1, 3), (2, 4), (9, 2)]), &config());
    assert_eq!(report.misses, 0);
    assert!((report.lower_bound_machine_hours - report.session_hours).abs() < 1e-9);
    // Nine sessions of three minutes.
    assert!((report.session_hours - 9.0 * 3.0 / 60.0).abs() < 1e-9);
}

#[test]
fn placement_index_agrees_with_choose_over_every_candidate() {
    // `run_checked` asserts on every placement; these runs cover both strategies, both
    // session modes, two priorities, scale-in and process restarts.
    let daily = generate(Pattern::LaunchSpike, 2, 6.0, 3, "z");
    for strategy in [PlacementStrategy::Pack, PlacementStrategy::Spread] {
        for fleet in [SimConfig::default().fleet, parallel(3)] {
            let zone = zone()
                .dc("a", 0, 3, 10_000)
                .dc("b", 0, 2, 10_000)
                .dc("c", 1, 4, 10_000)
                .initial(2)
                .rule(BufferKind::Servers.rule(3))
                .strategy(strategy);
            let config = SimConfig {
                fleet,
                session_minutes: 15.0,
                ..SimConfig::default()
            };
            let report = run_checked(&zone, &daily, &config);
            assert!(report.requests > 1000);
            assert!(report.terminations > 0, "the run scales in");
            assert_eq!(report.refused_terminations, 0);
        }
    }
}

#[test]
fn cooldown_scales_to_zero_and_a_miss_wakes_the_zone() {
    let zone = zone().dc("a", 0, 2, 10_000).initial(2).cooldown(5);
    let report = run(&zone, &trace(40, &[(0, 1), (30, 3)]), &config()).unwrap();
    let at = |minute: usize| report.timeline[minute];
    assert_eq!(at(20).machines, 0, "cooled down after 5 idle minutes");
    assert!(
        at(30).misses > 0,
        "the first request after the quiet spell misses"
    );
    assert!(at(31).machines > 0, "and wakes the zone");
}

#[test]
fn predictive_buffer_follows_the_forecast() {
    // A steady 20 requests a minute of 10-minute sessions: without buffer nearly every
    // request waits for a boot; the forecast holds a minute and a half of arrivals ready.
    let steady = trace(60, &(0..60).map(|m| (m, 20)).collect::<Vec<_>>());
    let config = SimConfig {
        boot_ms: 90_000,
        start_ms: 0,
        session_minutes: 10.0,
        ..config()
    };
    let none = run(&zone().dc("a", 0, 4, 10_000), &steady, &config).unwrap();
    let predicted = run(
        &zone()
            .dc("a", 0, 4, 10_000)
            .rule(BufferKind::Predicted.rule(2)),
        &steady,
        &config,
    )
    .unwrap();
    assert!(none.miss_rate > 0.5, "no buffer: {}", none.miss_rate);
    assert!(
        predicted.miss_rate < 0.1,
        "predicted: {}",
        predicted.miss_rate
    );
}

#[test]
fn tuner_finds_the_smallest_amount_that_reaches_the_target() {
    let zone = zone().dc("a", 0, 4, 10_000).initial(4);
    let daily = generate(Pattern::SteadyDaily, 1, 20.0, 5, "z");
    let config = SimConfig {
        session_minutes: 10.0,
        ..SimConfig::default()
    };
    let tuned = cheapest(&zone, &daily, &config, BufferKind::Servers, 0.01).unwrap();
    let rule = tuned.rule.expect("some buffer reaches 1%");
    let amount = rule.available_servers.unwrap();
    assert!(tuned.report.unwrap().miss_rate <= 0.01);
    assert!(amount > 0);
    let smaller = run(
        &with_rule(&zone, BufferKind::Servers.rule(amount - 1)),
        &daily,
        &config,
    )
    .unwrap();
    assert!(
        smaller.miss_rate > 0.01,
        "one server fewer misses the target"
    );
}

#[test]
fn trace_format() {
    let good = "minute,zone,session_requests,session_minutes\n\
                # a comment\n\
                2,eu,3,12.5\n\
                0,eu,1,\n\
                \n\
                1,us,7,\n";
    let eu = parse(good, Some("eu")).unwrap();
    assert_eq!(eu.zone, "eu");
    assert_eq!(
        eu.rows,
        vec![
            TraceRow {
                minute: 0,
                session_requests: 1,
                session_minutes: None
            },
            TraceRow {
                minute: 2,
                session_requests: 3,
                session_minutes: Some(12.5)
            },
        ]
    );
    let cases: &[(&str, &str, &str)] = &[
        ("two zones without --zone-name", good, "trace line 6: zone"),
        ("no header", "0,eu,1\n", "trace line 1: header"),
        (
            "bad minute",
            "minute,zone,session_requests\nx,eu,1\n",
            "trace line 2: minute",
        ),
        (
            "negative requests",
            "minute,zone,session_requests\n0,eu,-1\n",
            "trace line 2: session_requests",
        ),
        (
            "zero length",
            "minute,zone,session_requests,session_minutes\n0,eu,1,0\n",
            "trace line 2: session_minutes",
        ),
        (
            "too many columns",
            "minute,zone,session_requests\n0,eu,1,2,3\n",
            "trace line 2: columns",
        ),
        ("empty", "", "trace"),
    ];
    for (name, text, field) in cases {
        match parse(text, None) {
            Err(Error::Invalid { field: got, .. }) => assert_eq!(&got, field, "{name}"),
            other => panic!("{name}: {other:?}"),
        }
    }
    assert!(parse(good, Some("asia")).is_err(), "no row for the zone");
    let generated = generate(Pattern::Weekend, 1, 10.0, 1, "z");
    assert_eq!(parse(&trace::to_csv(&generated), None).unwrap(), generated);
}

#[test]
fn rows_with_session_minutes_fix_the_lengths() {
    let text = "minute,zone,session_requests,session_minutes\n0,z,2,4\n9,z,0,\n";
    let trace = parse(text, None).unwrap();
    let zone = zone().dc("a", 0, 2, 10_000).initial(2);
    let report = run_checked(&zone, &trace, &config());
    assert_eq!(report.misses, 0);
    assert!((report.session_hours - 2.0 * 4.0 / 60.0).abs() < 1e-9);
}

#[test]
fn generated_patterns() {
    for pattern in [Pattern::SteadyDaily, Pattern::LaunchSpike, Pattern::Weekend] {
        let first_day_peak = (0..1440).map(|m| pattern.level(m)).fold(0.0, f64::max);
        assert!(
            (0.98..=1.01).contains(&first_day_peak),
            "{pattern:?}: the usual peak is 1, got {first_day_peak}"
        );
    }
    let spike_peak = (1440..2880)
        .map(|m| Pattern::LaunchSpike.level(m))
        .fold(0.0, f64::max);
    assert!(
        spike_peak > 3.0,
        "launch day peaks at several times the usual: {spike_peak}"
    );
    let saturday = (5 * 1440..6 * 1440)
        .map(|m| Pattern::Weekend.level(m))
        .sum::<f64>();
    let tuesday = (1440..2 * 1440)
        .map(|m| Pattern::Weekend.level(m))
        .sum::<f64>();
    assert!(saturday > 1.4 * tuesday, "weekends are busier");
    assert_eq!(
        generate(Pattern::SteadyDaily, 2, 100.0, 9, "z"),
        generate(Pattern::SteadyDaily, 2, 100.0, 9, "z")
    );
}

#[test]
fn zone_body_is_the_admin_api_one() {
    let body = r#"{"name": "eu", "initial_server_processes": 2,
        "buffer_rules": [{"available_predicted": 3}],
        "data_centers": [{"name": "a", "location": "sim", "max_server_processes": 10,
            "machine_models": [{"instance_type": "m", "processes_per_machine": 4}]}]}"#;
    let spec = parse_zone(body).unwrap();
    assert_eq!(spec.buffer_rules[0].available_predicted, Some(3));
    assert_eq!(slots_per_machine(&spec, parallel(3)), 12);
    let cases = [
        (r#"{"name": "eu"}"#, "zone."),
        (
            &body.replace(r#""available_predicted": 3"#, r#""available_percent": 0"#)[..],
            "zone.buffer_rules[0].available_percent",
        ),
        (
            &body.replace("initial_server_processes", "initial")[..],
            "zone.",
        ),
    ];
    for (text, prefix) in cases {
        match parse_zone(text) {
            Err(Error::Invalid { field, .. }) => {
                assert!(field.starts_with(prefix), "{field} for {text}")
            }
            other => panic!("{text}: {other:?}"),
        }
    }
}

#[test]
fn chart_of_a_day() {
    let zone = zone()
        .dc("a", 0, 4, 10_000)
        .initial(4)
        .rule(BufferKind::Servers.rule(4));
    let report = run(
        &zone,
        &generate(Pattern::SteadyDaily, 2, 10.0, 1, "z"),
        &config(),
    )
    .unwrap();
    let day = chart::day(&report.timeline, 1);
    assert_eq!(day.len(), 1440);
    assert_eq!(day[0].minute, 1440);
    let svg = chart::svg(day, "available_servers = 4 <&>", "day 1");
    assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
    assert_eq!(svg.matches("<polyline").count(), 2);
    assert!(svg.contains("&lt;&amp;&gt;"));
    assert!(chart::day(&report.timeline, 5).is_empty());
}
