//! Time as the store and the wire see it: Unix milliseconds inside, RFC 3339 outside.
//!
//! Policy code never reads the clock: callers pass `now_ms` in (STYLE.md).

/// Milliseconds since the Unix epoch, from the system clock. Only I/O edges call this.
pub fn now_ms() -> i64 {
    let now = time::OffsetDateTime::now_utc();
    (now.unix_timestamp_nanos() / 1_000_000) as i64
}

/// RFC 3339 text of a Unix-milliseconds instant.
pub fn rfc3339(ms: i64) -> String {
    let instant = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    instant
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Unix milliseconds of an RFC 3339 text, if it is one.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    let instant =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    Some((instant.unix_timestamp_nanos() / 1_000_000) as i64)
}

/// A new id with a readable prefix: `bld-`, `flt-`, `zone-`, `mch-`, `sess-`.
/// UUID v7, so ids sort by creation time.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::now_v7().simple())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips() {
        let ms = 1_763_700_000_123;
        assert_eq!(parse_rfc3339(&rfc3339(ms)), Some(ms));
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn ids_have_prefix_and_are_unique() {
        let a = new_id("flt");
        let b = new_id("flt");
        assert!(a.starts_with("flt-"));
        assert_ne!(a, b);
    }
}
