//! Demand forecast for `available_predicted` buffer rules: how many session requests will
//! arrive while a new machine boots ([`forecast_arrivals`]), and the idle capacity that
//! calls for once the slots freed by ending sessions are counted ([`forecast_net_demand`],
//! what fleetformd and the simulator use).
//!
//! Architecture invariant: pure; the history and the time come in as arguments.
//!
//! The model blends two signals, both cheap and robust:
//! - the recent rate: an exponentially weighted average of the last minutes' arrivals, and
//!   the last minute alone, whichever is higher (so a sudden launch spike is followed at
//!   once, and a dip is not trusted until it lasts);
//! - the daily pattern: how the rate changed, the previous day, between this time of day
//!   and the end of the horizon. Applied as a ratio to the recent rate, it anticipates the
//!   evening ramp-up before it arrives.

use std::collections::VecDeque;

/// Minutes in a day.
pub const DAY_MINUTES: i64 = 1440;
/// Minutes of history kept: two days, so "the same time yesterday" plus a horizon exists.
const KEEP_MINUTES: i64 = 2 * DAY_MINUTES + 60;
/// Smoothing of the recent rate, per minute (weight of the newest minute).
const ALPHA: f64 = 0.35;
/// Minutes the recent rate looks back.
const RECENT_MINUTES: i64 = 10;
/// The daily ratio is bounded so one odd day cannot make the forecast explode or vanish.
const RATIO_BOUNDS: (f64, f64) = (0.5, 4.0);

/// Session requests per minute, for the last two days.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArrivalHistory {
    /// The minute of `counts[0]`.
    first_minute: i64,
    counts: VecDeque<u32>,
}

impl ArrivalHistory {
    /// Records `count` requests at `minute` (minutes since the epoch, or since any origin
    /// used consistently).
    pub fn record(&mut self, minute: i64, count: u32) {
        if self.counts.is_empty() {
            self.first_minute = minute;
        }
        if minute < self.first_minute {
            return;
        }
        let index = (minute - self.first_minute) as usize;
        if index >= self.counts.len() {
            self.counts.resize(index + 1, 0);
        }
        self.counts[index] = self.counts[index].saturating_add(count);
        while self.counts.len() as i64 > KEEP_MINUTES {
            self.counts.pop_front();
            self.first_minute += 1;
        }
    }

    /// Requests recorded at `minute` (0 when unknown).
    pub fn count(&self, minute: i64) -> u32 {
        if minute < self.first_minute {
            return 0;
        }
        self.counts
            .get((minute - self.first_minute) as usize)
            .copied()
            .unwrap_or(0)
    }

    /// Whether `minute` is covered by the history.
    pub fn covers(&self, minute: i64) -> bool {
        !self.counts.is_empty()
            && minute >= self.first_minute
            && minute < self.first_minute + self.counts.len() as i64
    }

    fn mean(&self, from: i64, to: i64) -> f64 {
        let minutes = (to - from).max(1);
        (from..to).map(|m| f64::from(self.count(m))).sum::<f64>() / minutes as f64
    }
}

/// Requests expected in `(now_minute, now_minute + horizon_minutes]`.
///
/// `now_minute` is the current, incomplete minute: the recent rate is taken over the
/// complete minutes before it.
pub fn forecast_arrivals(history: &ArrivalHistory, now_minute: i64, horizon_minutes: f64) -> f64 {
    if horizon_minutes <= 0.0 {
        return 0.0;
    }
    let mut smoothed = 0.0;
    let mut weight = 0.0;
    let mut factor = 1.0;
    for back in 1..=RECENT_MINUTES {
        smoothed += factor * f64::from(history.count(now_minute - back));
        weight += factor;
        factor *= 1.0 - ALPHA;
    }
    let recent = (smoothed / weight).max(f64::from(history.count(now_minute - 1)));

    let horizon = horizon_minutes.ceil() as i64;
    let yesterday = now_minute - DAY_MINUTES;
    let ratio = if history.covers(yesterday - RECENT_MINUTES) {
        let then = history.mean(yesterday - RECENT_MINUTES, yesterday);
        let ahead = history.mean(yesterday, yesterday + horizon.max(1));
        if then >= 1.0 {
            (ahead / then).clamp(RATIO_BOUNDS.0, RATIO_BOUNDS.1)
        } else if ahead >= 1.0 {
            // Yesterday was quiet now and busy later: expect at least that later rate.
            return (recent.max(ahead)) * horizon_minutes;
        } else {
            1.0
        }
    } else {
        1.0
    };
    recent * ratio * horizon_minutes
}

/// Idle capacity an `available_predicted` rule should hold now: the requests forecast over
/// the time a new machine takes to serve (`horizon_minutes`: boot, then process start),
/// less the sessions forecast to end in time for their slot to serve again (an ending
/// session frees its slot; it serves again after the process start), and never less than
/// the requests forecast over one process start (what no reuse can cover).
///
/// Holding the raw arrivals instead over-buys on smooth demand, where most arrivals are
/// served by slots that ending sessions free meanwhile (see docs/guides/scaling.md).
pub fn forecast_net_demand(
    arrivals: &ArrivalHistory,
    ends: &ArrivalHistory,
    now_minute: i64,
    horizon_minutes: f64,
    start_minutes: f64,
) -> f64 {
    let start_minutes = start_minutes.clamp(0.0, horizon_minutes.max(0.0));
    let incoming = forecast_arrivals(arrivals, now_minute, horizon_minutes);
    let freed = forecast_arrivals(ends, now_minute, horizon_minutes - start_minutes);
    let uncovered = forecast_arrivals(arrivals, now_minute, start_minutes);
    (incoming - freed).max(uncovered)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steady(rate: u32, minutes: std::ops::Range<i64>) -> ArrivalHistory {
        let mut history = ArrivalHistory::default();
        for minute in minutes {
            history.record(minute, rate);
        }
        history
    }

    #[test]
    #[rustfmt::skip]
    fn forecast_cases() {
        struct Case {
            name: &'static str,
            history: ArrivalHistory,
            now: i64,
            horizon: f64,
            want: std::ops::RangeInclusive<f64>,
        }
        let mut spike = steady(2, 0..100);
        spike.record(99, 40);
        let mut daily = ArrivalHistory::default();
        // Yesterday: 10/min until minute 1000 of the day, then 30/min; today so far 10/min.
        for minute in 0..(DAY_MINUTES + 1000) {
            let of_day = minute % DAY_MINUTES;
            daily.record(minute, if (1000..1100).contains(&of_day) { 30 } else { 10 });
        }
        let cases = vec![
            Case { name: "no history, no arrivals", history: ArrivalHistory::default(), now: 50, horizon: 2.0, want: 0.0..=0.0 },
            Case { name: "steady rate times horizon", history: steady(6, 0..100), now: 100, horizon: 1.5, want: 8.9..=9.1 },
            Case { name: "a spike is followed at once", history: spike, now: 100, horizon: 1.0, want: 42.0..=42.0 },
            Case { name: "yesterday's ramp-up is anticipated", history: daily, now: DAY_MINUTES + 1000, horizon: 2.0, want: 59.0..=61.0 },
            Case { name: "zero horizon", history: steady(6, 0..100), now: 100, horizon: 0.0, want: 0.0..=0.0 },
        ];
        for case in cases {
            let got = forecast_arrivals(&case.history, case.now, case.horizon);
            assert!(case.want.contains(&got), "{}: got {got}, want {:?}", case.name, case.want);
        }
    }

    #[test]
    fn net_demand_subtracts_reused_slots_but_never_below_the_start_window() {
        // 10 requests and 10 ends a minute, steady: over a 2-minute horizon with a
        // 0.5-minute start, 20 arrive and 15 slots free in time: hold 5.
        let arrivals = steady(10, 0..100);
        let ends = steady(10, 0..100);
        let net = forecast_net_demand(&arrivals, &ends, 100, 2.0, 0.5);
        assert!((4.9..=5.1).contains(&net), "{net}");
        // Many more ends than arrivals: still hold what arrives during one start.
        let busy_ends = steady(50, 0..100);
        let floor = forecast_net_demand(&arrivals, &busy_ends, 100, 2.0, 0.5);
        assert!((4.9..=5.1).contains(&floor), "{floor}");
        // No ends (a ramp-up from nothing): the arrivals themselves.
        let none = forecast_net_demand(&arrivals, &ArrivalHistory::default(), 100, 2.0, 0.5);
        assert!((19.9..=20.1).contains(&none), "{none}");
    }

    #[test]
    fn history_keeps_two_days_and_counts() {
        let mut history = ArrivalHistory::default();
        history.record(10, 3);
        history.record(10, 2);
        assert_eq!(history.count(10), 5);
        assert_eq!(history.count(11), 0);
        history.record(10 + KEEP_MINUTES + 5, 1);
        assert_eq!(history.count(10), 0, "old minutes are dropped");
        assert!(!history.covers(10));
    }
}
