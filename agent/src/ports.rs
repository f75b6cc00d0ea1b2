//! Game-port allocation: every live process of the agent gets its own port, from the
//! configured range or, without one, from the OS.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, TcpListener};
use std::ops::RangeInclusive;
use std::str::FromStr;

use crate::{Error, Result};

/// An inclusive port range, written `START-END`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortRange(pub RangeInclusive<u16>);

impl FromStr for PortRange {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let (start, end) = text
            .split_once('-')
            .ok_or_else(|| format!("expected START-END, got {text:?}"))?;
        let parse = |part: &str| {
            part.trim()
                .parse::<u16>()
                .map_err(|_| format!("{part:?} is not a port number"))
        };
        let (start, end) = (parse(start)?, parse(end)?);
        if start == 0 || start > end {
            return Err(format!(
                "port range {text:?} must satisfy 1 <= START <= END"
            ));
        }
        Ok(PortRange(start..=end))
    }
}

/// Hands out game ports.
#[derive(Debug)]
pub struct PortAllocator {
    range: Option<PortRange>,
    /// Where the next search in the range starts: ports are handed out round-robin so a port
    /// a process just released is not reused at once.
    cursor: u16,
}

impl PortAllocator {
    /// Ports from `range`, or from the OS when `None`.
    pub fn new(range: Option<PortRange>) -> Self {
        let cursor = range.as_ref().map_or(0, |range| *range.0.start());
        PortAllocator { range, cursor }
    }

    /// A port no port in `in_use` collides with and that is free on this machine now.
    pub fn allocate(&mut self, in_use: &BTreeSet<u16>) -> Result<u16> {
        match &self.range {
            Some(range) => {
                let port =
                    pick_in_range(&range.0, self.cursor, in_use, is_free).ok_or_else(|| {
                        Error::NoPort(format!("{}-{}", range.0.start(), range.0.end()))
                    })?;
                self.cursor = if port == *range.0.end() {
                    *range.0.start()
                } else {
                    port + 1
                };
                Ok(port)
            }
            None => {
                // The OS hands out a free ephemeral port; it may repeat one a live process of
                // ours was given but has not bound yet, so check against `in_use`.
                for _ in 0..32 {
                    let listener =
                        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|source| {
                            Error::Io {
                                context: "asking the OS for a free port".into(),
                                source,
                            }
                        })?;
                    let port = listener
                        .local_addr()
                        .map_err(|source| Error::Io {
                            context: "asking the OS for a free port".into(),
                            source,
                        })?
                        .port();
                    if !in_use.contains(&port) {
                        return Ok(port);
                    }
                }
                Err(Error::NoPort("the OS".into()))
            }
        }
    }
}

/// The first port of `range`, searching round-robin from `cursor`, that is neither in
/// `in_use` nor refused by `is_free`.
pub fn pick_in_range(
    range: &RangeInclusive<u16>,
    cursor: u16,
    in_use: &BTreeSet<u16>,
    is_free: impl Fn(u16) -> bool,
) -> Option<u16> {
    let cursor = cursor.clamp(*range.start(), *range.end());
    (cursor..=*range.end())
        .chain(*range.start()..cursor)
        .find(|port| !in_use.contains(port) && is_free(*port))
}

/// Whether a game server could listen on `port` on all interfaces right now.
fn is_free(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_port_range() {
        assert_eq!(
            "7000-7010".parse::<PortRange>().unwrap(),
            PortRange(7000..=7010)
        );
        assert_eq!(
            "7000-7000".parse::<PortRange>().unwrap(),
            PortRange(7000..=7000)
        );
        for bad in ["7000", "7010-7000", "0-10", "a-b", "1-70000"] {
            assert!(bad.parse::<PortRange>().is_err(), "{bad:?} should fail");
        }
    }

    #[test]
    fn pick_in_range_table() {
        let all_free = |_: u16| true;
        let cases: &[(&str, u16, &[u16], Option<u16>)] = &[
            ("first free from the cursor", 10, &[], Some(10)),
            ("skips ports in use", 10, &[10, 11], Some(12)),
            ("starts at the cursor", 13, &[], Some(13)),
            ("wraps around", 14, &[14], Some(10)),
            ("cursor outside the range is clamped", 99, &[], Some(14)),
            ("full range", 10, &[10, 11, 12, 13, 14], None),
        ];
        for (name, cursor, in_use, expected) in cases {
            let in_use: BTreeSet<u16> = in_use.iter().copied().collect();
            assert_eq!(
                pick_in_range(&(10..=14), *cursor, &in_use, all_free),
                *expected,
                "case {name}"
            );
        }
        // Ports taken by another program are skipped too.
        assert_eq!(
            pick_in_range(&(10..=14), 10, &BTreeSet::new(), |port| port != 10),
            Some(11)
        );
    }

    #[test]
    fn allocator_hands_out_distinct_ports() {
        for range in [None, Some(PortRange(41000..=41100))] {
            let mut allocator = PortAllocator::new(range);
            let mut in_use = BTreeSet::new();
            for _ in 0..5 {
                let port = allocator.allocate(&in_use).unwrap();
                assert!(in_use.insert(port), "port {port} handed out twice");
            }
        }
    }

    #[test]
    fn allocator_skips_a_port_bound_by_someone_else() {
        let taken = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        let port = taken.local_addr().unwrap().port();
        let mut allocator = PortAllocator::new(Some(PortRange(port..=port.saturating_add(1))));
        assert_ne!(allocator.allocate(&BTreeSet::new()).unwrap(), port);
    }
}
