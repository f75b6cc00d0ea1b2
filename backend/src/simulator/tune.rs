//! The tuner behind `fleetform-sim tune`: for each kind of buffer rule, the smallest amount
//! that keeps the miss rate at or under a target, found by replaying the trace.
//!
//! The miss rate falls and the cost rises as a buffer grows, so the smallest amount that
//! reaches the target is the cheapest one of its kind: an exponential probe finds an amount
//! that reaches it, then a bisection the smallest. Each kind is searched on its own thread.

use fleetform_api::{BufferRule, ZoneSpecView};
use serde::Serialize;

use super::{run, Report, SimConfig, Trace};
use crate::Result;

/// The amount a single buffer rule sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BufferKind {
    /// `available_servers`: idle servers (free slots in parallel mode).
    Servers,
    /// `available_percent`: a share of the active sessions.
    Percent,
    /// `available_predicted`: the forecast plus this margin.
    Predicted,
}

impl BufferKind {
    pub const ALL: [BufferKind; 3] = [
        BufferKind::Servers,
        BufferKind::Percent,
        BufferKind::Predicted,
    ];

    /// The one-rule buffer of this kind and amount.
    pub fn rule(self, amount: u32) -> BufferRule {
        BufferRule {
            min_active_sessions: 0,
            available_servers: (self == BufferKind::Servers).then_some(amount),
            available_percent: (self == BufferKind::Percent).then_some(amount),
            available_predicted: (self == BufferKind::Predicted).then_some(amount),
        }
    }

    /// Amounts the API accepts: `(smallest, largest)`.
    fn bounds(self) -> (u32, u32) {
        match self {
            BufferKind::Servers | BufferKind::Predicted => (0, 1 << 24),
            BufferKind::Percent => (1, 1000),
        }
    }
}

/// The cheapest rule of one kind that reaches the target.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Tuned {
    pub kind: BufferKind,
    /// The rule as a zone body's `buffer_rules[0]`; None when no amount reaches the target.
    pub rule: Option<BufferRule>,
    /// Its score, without the timeline.
    pub report: Option<Report>,
    /// Replays the search took.
    pub runs: u32,
}

/// What `fleetform-sim tune` prints.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Tuning {
    pub target_miss_rate: f64,
    pub results: Vec<Tuned>,
}

/// `spec` with its buffer replaced by the single rule `rule`.
pub fn with_rule(spec: &ZoneSpecView, rule: BufferRule) -> ZoneSpecView {
    ZoneSpecView {
        buffer_rules: vec![rule],
        ..spec.clone()
    }
}

/// Searches each of `kinds` (in parallel) for its cheapest amount.
pub fn tune(
    spec: &ZoneSpecView,
    trace: &Trace,
    config: &SimConfig,
    kinds: &[BufferKind],
    target_miss_rate: f64,
) -> Result<Tuning> {
    config.validate()?;
    let results = std::thread::scope(|scope| {
        let handles: Vec<_> = kinds
            .iter()
            .map(|&kind| scope.spawn(move || cheapest(spec, trace, config, kind, target_miss_rate)))
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().expect("tuner thread"))
            .collect::<Result<Vec<_>>>()
    })?;
    Ok(Tuning {
        target_miss_rate,
        results,
    })
}

/// The smallest amount of `kind` whose miss rate is at most `target_miss_rate`.
pub fn cheapest(
    spec: &ZoneSpecView,
    trace: &Trace,
    config: &SimConfig,
    kind: BufferKind,
    target_miss_rate: f64,
) -> Result<Tuned> {
    let mut runs = 0;
    let mut score = |amount: u32| -> Result<Report> {
        runs += 1;
        let mut report = run(&with_rule(spec, kind.rule(amount)), trace, config)?;
        report.timeline.clear();
        Ok(report)
    };
    let (smallest, largest) = kind.bounds();
    // Probe upwards until an amount reaches the target: (too small, good enough).
    let mut low: Option<u32> = None;
    let mut amount = smallest;
    let (mut high, mut best) = loop {
        let report = score(amount)?;
        if report.miss_rate <= target_miss_rate {
            break (amount, report);
        }
        low = Some(amount);
        if amount >= largest {
            return Ok(Tuned {
                kind,
                rule: None,
                report: None,
                runs,
            });
        }
        amount = (amount.max(1) * 2).min(largest);
    };
    // Bisect between the last amount that missed too often and the first that did not.
    if let Some(mut low) = low {
        while high - low > 1 {
            let middle = low + (high - low) / 2;
            let report = score(middle)?;
            if report.miss_rate <= target_miss_rate {
                high = middle;
                best = report;
            } else {
                low = middle;
            }
        }
    }
    Ok(Tuned {
        kind,
        rule: Some(kind.rule(high)),
        report: Some(best),
        runs,
    })
}
