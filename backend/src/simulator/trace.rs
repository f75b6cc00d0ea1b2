//! Demand traces: the CSV `fleetform-sim` replays, and the generator of the synthetic
//! traces under `examples/traces/`.
//!
//! A trace is CSV with a header line, `minute,zone,session_requests`, and optionally a
//! fourth column `session_minutes`: `session_requests` placement requests arrive during
//! `minute` (minutes from any origin; minute 0 is midnight for the daily pattern of the
//! forecast); with `session_minutes`, each of them lasts that long (several rows for the
//! same minute give a mix of lengths), otherwise lengths are drawn. Blank lines and lines
//! starting with `#` are skipped.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::{Error, Result};

/// One row of a trace.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceRow {
    pub minute: i64,
    pub session_requests: u32,
    /// Length of each of these sessions, when the trace gives it.
    pub session_minutes: Option<f64>,
}

/// The rows of one zone, sorted by minute (rows of the same minute keep their order).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Trace {
    /// The zone the rows are for.
    pub zone: String,
    pub rows: Vec<TraceRow>,
}

impl Trace {
    /// The first and last minute with a row, if any.
    pub fn span(&self) -> Option<(i64, i64)> {
        Some((self.rows.first()?.minute, self.rows.last()?.minute))
    }

    /// All session requests of the trace.
    pub fn requests(&self) -> u64 {
        self.rows
            .iter()
            .map(|r| u64::from(r.session_requests))
            .sum()
    }
}

/// Reads a trace. With `zone_name`, rows of other zones are skipped; without, every row must
/// be for the same zone (the simulator replays one zone per run).
pub fn parse(text: &str, zone_name: Option<&str>) -> Result<Trace> {
    let mut trace = Trace {
        zone: zone_name.unwrap_or_default().to_string(),
        rows: Vec::new(),
    };
    let mut seen_header = false;
    for (index, line) in text.lines().enumerate() {
        let line_number = index + 1;
        let field = |name: &str| format!("trace line {line_number}: {name}");
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let columns: Vec<&str> = line.split(',').map(str::trim).collect();
        if !seen_header {
            seen_header = true;
            let want = ["minute", "zone", "session_requests", "session_minutes"];
            if columns.len() < 3 || columns.len() > 4 || columns[..] != want[..columns.len()] {
                return Err(Error::invalid(
                    field("header"),
                    format!(
                        "the first line must be `minute,zone,session_requests` or \
                         `minute,zone,session_requests,session_minutes`, got {line:?}"
                    ),
                ));
            }
            continue;
        }
        if columns.len() < 3 || columns.len() > 4 {
            return Err(Error::invalid(
                field("columns"),
                format!(
                    "expected 3 or 4 comma-separated columns, got {}",
                    columns.len()
                ),
            ));
        }
        let minute: i64 = columns[0].parse().map_err(|_| {
            Error::invalid(field("minute"), format!("not an integer: {:?}", columns[0]))
        })?;
        if minute < 0 {
            return Err(Error::invalid(field("minute"), "must not be negative"));
        }
        let zone = columns[1];
        let session_requests: u32 = columns[2].parse().map_err(|_| {
            Error::invalid(
                field("session_requests"),
                format!("not a non-negative integer: {:?}", columns[2]),
            )
        })?;
        let session_minutes = match columns.get(3) {
            None | Some(&"") => None,
            Some(text) => match text.parse::<f64>() {
                Ok(minutes) if minutes.is_finite() && minutes > 0.0 => Some(minutes),
                _ => {
                    return Err(Error::invalid(
                        field("session_minutes"),
                        format!("not a positive number: {text:?}"),
                    ))
                }
            },
        };
        match zone_name {
            Some(wanted) if zone != wanted => continue,
            Some(_) => {}
            None if trace.rows.is_empty() && trace.zone.is_empty() => {
                trace.zone = zone.to_string();
            }
            None if zone != trace.zone => {
                return Err(Error::invalid(
                    field("zone"),
                    format!(
                        "the trace has rows for zones {:?} and {zone:?}; the simulator replays \
                         one zone per run: choose it with --zone-name",
                        trace.zone
                    ),
                ));
            }
            None => {}
        }
        trace.rows.push(TraceRow {
            minute,
            session_requests,
            session_minutes,
        });
    }
    if !seen_header {
        return Err(Error::invalid("trace", "empty: no header line"));
    }
    if trace.rows.is_empty() {
        return Err(Error::invalid(
            "trace",
            match zone_name {
                Some(zone) => format!("no row for zone {zone:?}"),
                None => "no rows".to_string(),
            },
        ));
    }
    trace.rows.sort_by_key(|row| row.minute);
    Ok(trace)
}

/// Writes a trace as CSV (with the `session_minutes` column only if some row has it).
pub fn to_csv(trace: &Trace) -> String {
    let with_minutes = trace.rows.iter().any(|r| r.session_minutes.is_some());
    let mut out = String::with_capacity(trace.rows.len() * 20);
    out.push_str("minute,zone,session_requests");
    if with_minutes {
        out.push_str(",session_minutes");
    }
    out.push('\n');
    for row in &trace.rows {
        out.push_str(&format!(
            "{},{},{}",
            row.minute, trace.zone, row.session_requests
        ));
        if with_minutes {
            out.push(',');
            if let Some(minutes) = row.session_minutes {
                out.push_str(&minutes.to_string());
            }
        }
        out.push('\n');
    }
    out
}

/// The synthetic demand patterns of `fleetform-sim gen-trace`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    /// A smooth daily cycle: quiet early mornings (about 1/10 of the peak at 06:00), the peak
    /// around 21:00.
    SteadyDaily,
    /// A normal first day, then at 15:00 on the second day a launch: requests jump within
    /// two minutes to about 3.7 times the usual evening peak, hold for an hour and decay
    /// over the evening (3-hour time constant) to a new normal above the old one.
    LaunchSpike,
    /// Monday to Sunday: weekdays like `SteadyDaily`; Saturday and Sunday 1.5 times busier
    /// with an afternoon that stays high; Friday evening runs later.
    Weekend,
}

impl Pattern {
    /// The mean requests per minute at `minute` (from midnight of day 0), as a share of the
    /// usual daily peak.
    pub fn level(self, minute: i64) -> f64 {
        let day = minute.div_euclid(DAY);
        let hour = minute.rem_euclid(DAY) as f64 / 60.0;
        match self {
            Pattern::SteadyDaily => weekday_shape(hour),
            Pattern::LaunchSpike => {
                let launch = DAY + 15 * 60;
                let since = (minute - launch) as f64;
                let boost = if since < 0.0 {
                    0.0
                } else if since < 2.0 {
                    3.2 * (since + 1.0) / 3.0
                } else if since < 60.0 {
                    3.2
                } else {
                    // Decays to a new normal (0.3 above the old) with a 3-hour time constant.
                    0.3 + 2.9 * (-(since - 60.0) / 180.0).exp()
                };
                weekday_shape(hour) + boost
            }
            Pattern::Weekend => match day.rem_euclid(7) {
                4 if hour >= 18.0 => weekday_shape(hour).max(weekday_shape(hour - 1.5)),
                5 | 6 => 1.5 * weekend_shape(hour),
                _ => weekday_shape(hour),
            },
        }
    }
}

const DAY: i64 = 1440;

/// A weekday: two harmonics, the trough around 06:00 (about 1/10 of the peak), the peak
/// around 21:00; max 1.
fn weekday_shape(hour: f64) -> f64 {
    let tau = std::f64::consts::TAU;
    let raw = 0.5
        + 0.4 * (tau * (hour - 20.0) / 24.0).cos()
        + 0.12 * (2.0 * tau * (hour - 22.0) / 24.0).cos();
    raw / 0.990
}

/// A weekend day: the afternoon stays high, the peak is earlier (about 19:45) and the night
/// shorter; max 1.
fn weekend_shape(hour: f64) -> f64 {
    let tau = std::f64::consts::TAU;
    let raw = 0.55
        + 0.35 * (tau * (hour - 18.0) / 24.0).cos()
        + 0.12 * (2.0 * tau * (hour - 21.0) / 24.0).cos();
    raw / 0.959
}

/// A trace of `days` days of `pattern`, with `peak_per_minute` requests per minute at the
/// usual daily peak and Poisson noise from `seed`: the same arguments give the same trace.
pub fn generate(pattern: Pattern, days: u32, peak_per_minute: f64, seed: u64, zone: &str) -> Trace {
    let mut rng = StdRng::seed_from_u64(seed);
    let rows = (0..i64::from(days) * DAY)
        .map(|minute| TraceRow {
            minute,
            session_requests: poisson(&mut rng, peak_per_minute * pattern.level(minute)),
            session_minutes: None,
        })
        .collect();
    Trace {
        zone: zone.to_string(),
        rows,
    }
}

/// A Poisson draw: exact (Knuth) for small means, the normal approximation for large ones.
pub fn poisson(rng: &mut StdRng, mean: f64) -> u32 {
    if mean.is_nan() || mean <= 0.0 {
        return 0;
    }
    if mean < 30.0 {
        let limit = (-mean).exp();
        let mut product: f64 = rng.gen();
        let mut count = 0;
        while product > limit {
            product *= rng.gen::<f64>();
            count += 1;
        }
        return count;
    }
    (mean + mean.sqrt() * standard_normal(rng)).round().max(0.0) as u32
}

/// A standard normal draw (Box–Muller).
pub fn standard_normal(rng: &mut StdRng) -> f64 {
    let u1: f64 = 1.0 - rng.gen::<f64>(); // (0, 1]: the logarithm stays finite
    let u2: f64 = rng.gen();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}
