//! Placement choice: which ready process takes a new session.
//!
//! Architecture invariant: [`choose`] is a pure function over candidates; it does no I/O
//! and reads no clock, so the same code runs in fleetformd (through the free-slot
//! [`index`] the store's writer keeps per zone), in tests and in the simulator.

pub mod index;

use std::cmp::Reverse;
use std::collections::BTreeMap;

use fleetform_api::PlacementStrategy;

/// A process that could take the session, with what the choice needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub process_id: String,
    pub machine_id: String,
    pub data_center: String,
    /// The data center's priority; lower is preferred.
    pub priority: u32,
    /// The data center is bare metal: preferred over VMs of the same priority (bare
    /// metal is paid for whether it hosts or not; the cloud is the overflow).
    pub bare_metal: bool,
    /// Sessions active on the whole machine.
    pub machine_active_sessions: u32,
    /// Sessions active on this process.
    pub process_active_sessions: u32,
}

/// Picks the candidate for a session, or None when no candidate may take it.
///
/// Order: data-center priority, then bare metal before VMs, then the player's latency to
/// the data center (ties are broken by latency; a data center with no reported latency
/// comes after those with one), then the strategy: `pack` prefers the busiest machine (and within it the
/// busiest process, so parallel processes fill up) so idle machines can scale in; `spread`
/// prefers the idlest. Data centers whose reported latency exceeds `max_latency_ms` are
/// skipped. The process id breaks remaining ties so the choice is deterministic.
pub fn choose<'a>(
    candidates: &'a [Candidate],
    latencies_ms: &BTreeMap<String, u32>,
    max_latency_ms: Option<u32>,
    strategy: PlacementStrategy,
) -> Option<&'a Candidate> {
    let latency = |candidate: &Candidate| latencies_ms.get(&candidate.data_center).copied();
    candidates
        .iter()
        .filter(|candidate| match (max_latency_ms, latency(candidate)) {
            (Some(max), Some(measured)) => measured <= max,
            _ => true,
        })
        .min_by_key(|candidate| {
            let busy = match strategy {
                PlacementStrategy::Pack => (
                    Reverse(candidate.machine_active_sessions),
                    Reverse(candidate.process_active_sessions),
                ),
                PlacementStrategy::Spread => (
                    Reverse(u32::MAX - candidate.machine_active_sessions),
                    Reverse(u32::MAX - candidate.process_active_sessions),
                ),
            };
            (
                candidate.priority,
                !candidate.bare_metal,
                latency(candidate).unwrap_or(u32::MAX),
                busy,
                candidate.process_id.as_str(),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(id: &str, dc: &str, priority: u32, machine_busy: u32) -> Candidate {
        Candidate {
            process_id: id.into(),
            machine_id: format!("m-{id}"),
            data_center: dc.into(),
            priority,
            bare_metal: false,
            machine_active_sessions: machine_busy,
            process_active_sessions: 0,
        }
    }

    #[test]
    fn choose_cases() {
        struct Case {
            name: &'static str,
            candidates: Vec<Candidate>,
            latencies: &'static [(&'static str, u32)],
            max_latency: Option<u32>,
            strategy: PlacementStrategy,
            want: Option<&'static str>,
        }
        let cases = vec![
            Case {
                name: "no candidates",
                candidates: vec![],
                latencies: &[],
                max_latency: None,
                strategy: PlacementStrategy::Pack,
                want: None,
            },
            Case {
                name: "lower priority number wins over latency",
                candidates: vec![candidate("a", "far", 0, 0), candidate("b", "near", 1, 0)],
                latencies: &[("far", 200), ("near", 5)],
                max_latency: None,
                strategy: PlacementStrategy::Pack,
                want: Some("a"),
            },
            Case {
                name: "latency breaks priority ties",
                candidates: vec![candidate("a", "far", 0, 0), candidate("b", "near", 0, 0)],
                latencies: &[("far", 200), ("near", 5)],
                max_latency: None,
                strategy: PlacementStrategy::Pack,
                want: Some("b"),
            },
            Case {
                name: "max latency excludes a data center",
                candidates: vec![candidate("a", "far", 0, 0)],
                latencies: &[("far", 200)],
                max_latency: Some(100),
                strategy: PlacementStrategy::Pack,
                want: None,
            },
            Case {
                name: "pack prefers the busy machine",
                candidates: vec![candidate("a", "dc", 0, 0), candidate("b", "dc", 0, 3)],
                latencies: &[],
                max_latency: None,
                strategy: PlacementStrategy::Pack,
                want: Some("b"),
            },
            Case {
                name: "spread prefers the idle machine",
                candidates: vec![candidate("a", "dc", 0, 0), candidate("b", "dc", 0, 3)],
                latencies: &[],
                max_latency: None,
                strategy: PlacementStrategy::Spread,
                want: Some("a"),
            },
            Case {
                name: "bare metal before VMs of the same priority, whatever the latency",
                candidates: vec![
                    candidate("vm", "cloud", 0, 5),
                    Candidate {
                        bare_metal: true,
                        ..candidate("bm", "metal", 0, 0)
                    },
                ],
                latencies: &[("cloud", 5), ("metal", 40)],
                max_latency: None,
                strategy: PlacementStrategy::Pack,
                want: Some("bm"),
            },
            Case {
                name: "a preferred VM data center still beats bare metal of a lower priority",
                candidates: vec![
                    candidate("vm", "cloud", 0, 0),
                    Candidate {
                        bare_metal: true,
                        ..candidate("bm", "metal", 1, 0)
                    },
                ],
                latencies: &[],
                max_latency: None,
                strategy: PlacementStrategy::Pack,
                want: Some("vm"),
            },
            Case {
                name: "ties go to the smallest process id",
                candidates: vec![candidate("b", "dc", 0, 0), candidate("a", "dc", 0, 0)],
                latencies: &[],
                max_latency: None,
                strategy: PlacementStrategy::Pack,
                want: Some("a"),
            },
        ];
        for case in cases {
            let latencies = case
                .latencies
                .iter()
                .map(|(dc, ms)| (dc.to_string(), *ms))
                .collect();
            let got = choose(
                &case.candidates,
                &latencies,
                case.max_latency,
                case.strategy,
            )
            .map(|c| c.process_id.as_str());
            assert_eq!(got, case.want, "{}", case.name);
        }
    }
}
