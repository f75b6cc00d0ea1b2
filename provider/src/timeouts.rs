//! The `timeouts` block of long-running operations and its duration strings (`"30s"`,
//! `"10m"`, `"1h30m"`), as in other Terraform providers.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tf_provider::schema::{AttributeType, NestedBlock};
use tf_provider::value::Value;
use tf_provider::AttributePath;

use crate::diag::Problems;
use crate::schema::{block, optional};

/// How long an operation waits when its timeout is not set.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// The `timeouts` block: each field a duration string, null for the default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TimeoutsState {
    pub create: Value<String>,
    pub update: Value<String>,
    pub delete: Value<String>,
}

/// Which operation a timeout is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Create,
    Update,
    Delete,
}

impl TimeoutsState {
    fn field(&self, operation: Operation) -> &Value<String> {
        match operation {
            Operation::Create => &self.create,
            Operation::Update => &self.update,
            Operation::Delete => &self.delete,
        }
    }
}

/// Schema of the `timeouts` block (at most one).
pub fn timeouts_block() -> NestedBlock {
    let text = |operation: &str| {
        format!(
            "How long {operation} may take, e.g. `\"30s\"`, `\"10m\"`, `\"1h\"`. Default `\"10m\"`."
        )
    };
    NestedBlock::Optional(block(
        "Time limits of long-running operations.",
        vec![
            ("create", optional(AttributeType::String, &text("create"))),
            ("update", optional(AttributeType::String, &text("update"))),
            ("delete", optional(AttributeType::String, &text("delete"))),
        ],
        vec![],
    ))
}

/// The configured timeout of `operation`, or [`DEFAULT_TIMEOUT`].
pub fn timeout(timeouts: &Value<Vec<TimeoutsState>>, operation: Operation) -> Duration {
    timeouts
        .as_ref_option()
        .and_then(|blocks| blocks.first())
        .and_then(|block| block.field(operation).as_ref_option())
        .and_then(|text| parse_duration(text).ok())
        .unwrap_or(DEFAULT_TIMEOUT)
}

/// Checks the known duration strings of a `timeouts` block.
pub fn validate(timeouts: &Value<Vec<TimeoutsState>>, problems: &mut Problems) {
    let Some(blocks) = timeouts.as_ref_option() else {
        return;
    };
    for (index, block) in blocks.iter().enumerate() {
        for (name, operation) in [
            ("create", Operation::Create),
            ("update", Operation::Update),
            ("delete", Operation::Delete),
        ] {
            if let Some(text) = block.field(operation).as_ref_option() {
                problems.rule(
                    AttributePath::new("timeouts")
                        .index(index as i64)
                        .attribute(name),
                    parse_duration(text).map(drop),
                );
            }
        }
    }
}

/// Parses a duration such as `"45s"`, `"10m"`, `"1h30m"` or `"500ms"`: one or more whole
/// numbers each followed by a unit (`ms`, `s`, `m`, `h`). It must be positive.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let invalid = || {
        format!(
            "{text:?} is not a duration: use whole numbers with units, e.g. \"30s\", \"10m\", \"1h\" or \"1h30m\""
        )
    };
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(invalid());
        }
        let amount: u64 = rest[..digits].parse().map_err(|_| invalid())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(1),
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return Err(invalid()),
        };
        rest = &rest[unit_len..];
        let part = u32::try_from(amount)
            .ok()
            .and_then(|amount| unit.checked_mul(amount))
            .ok_or_else(invalid)?;
        total = total.checked_add(part).ok_or_else(invalid)?;
    }
    if total.is_zero() {
        return Err(format!("{text:?} must be longer than zero"));
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duration_cases() {
        let cases: &[(&str, &str, Option<u64>)] = &[
            ("seconds", "30s", Some(30_000)),
            ("minutes", "10m", Some(600_000)),
            ("hours", "1h", Some(3_600_000)),
            ("combined", "1h30m", Some(5_400_000)),
            ("milliseconds", "500ms", Some(500)),
            ("surrounding spaces", " 2m ", Some(120_000)),
            ("no unit", "10", None),
            ("unknown unit", "10d", None),
            ("no number", "m", None),
            ("negative", "-5m", None),
            ("fraction", "1.5h", None),
            ("empty", "", None),
            ("zero", "0s", None),
            ("space inside", "1h 30m", None),
        ];
        for (case, text, millis) in cases {
            let parsed = parse_duration(text).map(|d| d.as_millis() as u64);
            match millis {
                Some(millis) => assert_eq!(parsed, Ok(*millis), "{case}"),
                None => assert!(parsed.is_err(), "{case}: {text:?} gave {parsed:?}"),
            }
        }
    }

    #[test]
    fn timeout_falls_back_to_default() {
        let none = Value::Value(vec![]);
        assert_eq!(timeout(&none, Operation::Create), DEFAULT_TIMEOUT);
        let set = Value::Value(vec![TimeoutsState {
            create: Value::Value("30s".into()),
            ..Default::default()
        }]);
        assert_eq!(timeout(&set, Operation::Create), Duration::from_secs(30));
        assert_eq!(timeout(&set, Operation::Delete), DEFAULT_TIMEOUT);
    }

    #[test]
    fn invalid_timeout_is_reported_on_its_attribute() {
        let mut problems = Problems::default();
        let set = Value::Value(vec![TimeoutsState {
            delete: Value::Value("soon".into()),
            ..Default::default()
        }]);
        validate(&set, &mut problems);
        assert_eq!(problems.describe()[0].0, "timeouts[0].delete");
    }
}
