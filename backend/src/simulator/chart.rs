//! An SVG chart of a stretch of a run's timeline (typically one day): demand (active
//! sessions), capacity that can serve (ready slots) and capacity paid for (the slots of every
//! machine, booting included) over the time of day, and the misses per minute below.
//!
//! Plain SVG text, so no plotting dependency: it renders in browsers, GitHub and
//! `rsvg-convert`.

use std::fmt::Write;

use super::MinuteSample;

const WIDTH: f64 = 1000.0;
const HEIGHT: f64 = 560.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 24.0;
const TOP: f64 = 78.0;
/// The main panel: sessions and slots.
const MAIN_HEIGHT: f64 = 300.0;
/// The misses panel, under it.
const MISS_TOP: f64 = TOP + MAIN_HEIGHT + 34.0;
const MISS_HEIGHT: f64 = 80.0;

const DEMAND: &str = "#1f5fbf";
const READY: &str = "#2a9d4b";
const PAID: &str = "#c9ccd1";
const MISS: &str = "#d62728";

/// The SVG of `samples` (consecutive minutes), with a title and a line under it.
pub fn svg(samples: &[MinuteSample], title: &str, subtitle: &str) -> String {
    let mut out = String::with_capacity(64 * 1024);
    let plot_width = WIDTH - LEFT - RIGHT;
    let first = samples.first().map_or(0, |s| s.minute);
    let minutes = samples.len().max(1) as f64;
    let x = |minute: i64| LEFT + (minute - first) as f64 / minutes * plot_width;

    let top_value = samples
        .iter()
        .map(|s| s.machine_slots.max(s.ready_slots).max(s.active_sessions))
        .max()
        .unwrap_or(0);
    let (main_max, main_step) = axis(f64::from(top_value), 5.0);
    let y = |value: u32| TOP + MAIN_HEIGHT - f64::from(value) / main_max * MAIN_HEIGHT;
    let top_misses = samples.iter().map(|s| s.misses).max().unwrap_or(0);
    let (miss_max, miss_step) = axis(f64::from(top_misses), 2.0);
    let miss_y = |value: f64| MISS_TOP + MISS_HEIGHT - value / miss_max * MISS_HEIGHT;

    let _ = write!(
        out,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="Helvetica, Arial, sans-serif" font-size="12">
<rect width="100%" height="100%" fill="#ffffff"/>
<text x="{LEFT}" y="26" font-size="17" font-weight="bold">{}</text>
<text x="{LEFT}" y="46" fill="#444">{}</text>
"##,
        escape(title),
        escape(subtitle)
    );

    // Grid and y labels of both panels.
    let mut value = 0.0;
    while value <= main_max + 1e-9 {
        let gy = TOP + MAIN_HEIGHT - value / main_max * MAIN_HEIGHT;
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{gy:.1}" x2="{:.1}" y2="{gy:.1}" stroke="#e6e6e6"/><text x="{:.1}" y="{:.1}" text-anchor="end" fill="#555">{}</text>"##,
            WIDTH - RIGHT,
            LEFT - 6.0,
            gy + 4.0,
            label(value)
        );
        value += main_step;
    }
    let mut value = 0.0;
    while value <= miss_max + 1e-9 {
        let gy = miss_y(value);
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{gy:.1}" x2="{:.1}" y2="{gy:.1}" stroke="#eeeeee"/><text x="{:.1}" y="{:.1}" text-anchor="end" fill="#555">{}</text>"##,
            WIDTH - RIGHT,
            LEFT - 6.0,
            gy + 4.0,
            label(value)
        );
        value += miss_step;
    }
    let _ = writeln!(
        out,
        r##"<text transform="translate(18,{:.1}) rotate(-90)" text-anchor="middle" fill="#333">session slots</text>"##,
        TOP + MAIN_HEIGHT / 2.0
    );
    let _ = writeln!(
        out,
        r##"<text transform="translate(18,{:.1}) rotate(-90)" text-anchor="middle" fill="#333">misses/min</text>"##,
        MISS_TOP + MISS_HEIGHT / 2.0
    );

    // Time axis: a tick every 3 hours of the day (minute 0 of the trace is midnight).
    let last = first + samples.len() as i64;
    let mut tick = first.div_euclid(180) * 180;
    while tick <= last {
        if tick >= first {
            let tx = x(tick);
            let _ = writeln!(
                out,
                r##"<line x1="{tx:.1}" y1="{TOP}" x2="{tx:.1}" y2="{:.1}" stroke="#f0f0f0"/><text x="{tx:.1}" y="{:.1}" text-anchor="middle" fill="#555">{:02}:00</text>"##,
                MISS_TOP + MISS_HEIGHT,
                MISS_TOP + MISS_HEIGHT + 18.0,
                tick.rem_euclid(1440) / 60
            );
        }
        tick += 180;
    }
    let _ = writeln!(
        out,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#333">time of day</text>"##,
        LEFT + plot_width / 2.0,
        MISS_TOP + MISS_HEIGHT + 38.0
    );

    // Paid capacity: a filled step area.
    if !samples.is_empty() {
        let mut path = format!("M{:.1},{:.1}", x(first), y(0));
        for sample in samples {
            let _ = write!(
                path,
                " L{:.1},{:.1} L{:.1},{:.1}",
                x(sample.minute),
                y(sample.machine_slots),
                x(sample.minute + 1),
                y(sample.machine_slots)
            );
        }
        let _ = write!(path, " L{:.1},{:.1} Z", x(last), y(0));
        let _ = writeln!(out, r##"<path d="{path}" fill="{PAID}" stroke="none"/>"##);
    }
    let line = |value: &dyn Fn(&MinuteSample) -> u32| {
        samples
            .iter()
            .map(|s| {
                format!(
                    "{:.1},{:.1}",
                    x(s.minute) + 0.5 * plot_width / minutes,
                    y(value(s))
                )
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let _ = writeln!(
        out,
        r##"<polyline points="{}" fill="none" stroke="{READY}" stroke-width="1.6"/>"##,
        line(&|s| s.ready_slots)
    );
    let _ = writeln!(
        out,
        r##"<polyline points="{}" fill="none" stroke="{DEMAND}" stroke-width="1.6"/>"##,
        line(&|s| s.active_sessions)
    );

    // Misses: one bar per minute that had any.
    let bar = (plot_width / minutes).max(1.0);
    for sample in samples.iter().filter(|s| s.misses > 0) {
        let top = miss_y(f64::from(sample.misses));
        let _ = writeln!(
            out,
            r##"<rect x="{:.1}" y="{top:.1}" width="{bar:.1}" height="{:.1}" fill="{MISS}"/>"##,
            x(sample.minute),
            MISS_TOP + MISS_HEIGHT - top
        );
    }

    // Frames and legend.
    let _ = writeln!(
        out,
        r##"<rect x="{LEFT}" y="{TOP}" width="{plot_width:.1}" height="{MAIN_HEIGHT}" fill="none" stroke="#999"/>
<rect x="{LEFT}" y="{MISS_TOP:.1}" width="{plot_width:.1}" height="{MISS_HEIGHT}" fill="none" stroke="#999"/>"##
    );
    let legend = [
        (DEMAND, "demand: active sessions"),
        (READY, "capacity: ready slots"),
        (PAID, "paid: slots of all machines (booting too)"),
        (MISS, "misses"),
    ];
    let mut lx = LEFT;
    for (color, text) in legend {
        let _ = writeln!(
            out,
            r##"<rect x="{lx:.1}" y="58" width="14" height="10" fill="{color}"/><text x="{:.1}" y="67" fill="#333">{text}</text>"##,
            lx + 19.0
        );
        lx += 30.0 + 6.2 * text.len() as f64;
    }
    out.push_str("</svg>\n");
    out
}

/// A round top for an axis whose data reach `max`, and the step of its about `steps` grid
/// lines.
fn axis(max: f64, steps: f64) -> (f64, f64) {
    if max <= 0.0 {
        return (1.0, 1.0);
    }
    let rough = max / steps;
    let magnitude = 10f64.powf(rough.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|step| *step >= rough)
        .unwrap_or(10.0 * magnitude)
        .max(1.0);
    ((max / step).ceil() * step, step)
}

fn label(value: f64) -> String {
    if value >= 10_000.0 && value % 1000.0 == 0.0 {
        format!("{}k", value / 1000.0)
    } else if value.fract() == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The samples of day `day` (minutes `day × 1440` to `day × 1440 + 1439`).
pub fn day(timeline: &[MinuteSample], day: i64) -> &[MinuteSample] {
    let from = day * 1440;
    let start = timeline.partition_point(|s| s.minute < from);
    let end = timeline.partition_point(|s| s.minute < from + 1440);
    &timeline[start..end]
}

/// A short description of a zone's buffer rules for a chart title, e.g.
/// `available_servers = 40` or `from 0: 4 servers; from 100: 20%`.
pub fn rules_label(rules: &[fleetform_api::BufferRule]) -> String {
    let amount = |rule: &fleetform_api::BufferRule| {
        if let Some(servers) = rule.available_servers {
            format!("available_servers = {servers}")
        } else if let Some(percent) = rule.available_percent {
            format!("available_percent = {percent}")
        } else if let Some(margin) = rule.available_predicted {
            format!("available_predicted = {margin}")
        } else {
            "no buffer".to_string()
        }
    };
    match rules {
        [] => "no buffer rule".to_string(),
        [rule] => amount(rule),
        rules => rules
            .iter()
            .map(|rule| format!("from {}: {}", rule.min_active_sessions, amount(rule)))
            .collect::<Vec<_>>()
            .join("; "),
    }
}
