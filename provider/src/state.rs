//! Helpers over `tf_provider::value::Value`: defaults at plan, replacement checks, and the
//! conversions between Terraform numbers (`i64`) and the API's `u32`s.

use tf_provider::value::Value;

/// The planned value of an optional attribute with a server default: the configured value,
/// or the default when the configuration leaves it out. Planning the default (rather than
/// leaving it unknown) makes the plan show the real value and keeps the next plan clean.
pub fn or_default<T>(config: Value<T>, default: T) -> Value<T> {
    match config {
        Value::Null => Value::Value(default),
        other => other,
    }
}

/// Whether an immutable attribute forces replacement: its planned value differs from the
/// prior one, or is unknown and so may differ.
pub fn changes<T: PartialEq>(prior: &Value<T>, planned: &Value<T>) -> bool {
    match planned {
        Value::Unknown => true,
        planned => planned != prior,
    }
}

/// A server number as a Terraform number.
pub fn number(value: u32) -> Value<i64> {
    Value::Value(i64::from(value))
}

/// An optional server number as a Terraform number.
pub fn optional_number(value: Option<u32>) -> Value<i64> {
    value.map(i64::from).into()
}

/// A value that must be known when a plan is applied. Terraform resolves every unknown
/// before apply, so a failure here is a provider bug and says so.
pub fn known<T: Clone>(value: &Value<T>, name: &str) -> Result<T, String> {
    match value {
        Value::Value(value) => Ok(value.clone()),
        Value::Null => Err(format!("`{name}` is null, but it is required")),
        Value::Unknown => Err(format!("`{name}` is still unknown at apply")),
    }
}

/// An optional value at apply: known or null.
pub fn known_optional<T: Clone>(value: &Value<T>, name: &str) -> Result<Option<T>, String> {
    match value {
        Value::Value(value) => Ok(Some(value.clone())),
        Value::Null => Ok(None),
        Value::Unknown => Err(format!("`{name}` is still unknown at apply")),
    }
}

/// A Terraform number as the API's `u32` (the validators rejected anything else at plan).
pub fn to_u32(value: i64, name: &str) -> Result<u32, String> {
    u32::try_from(value).map_err(|_| format!("`{name}` must be between 0 and {}", u32::MAX))
}

/// A required number at apply, as `u32`.
pub fn known_u32(value: &Value<i64>, name: &str) -> Result<u32, String> {
    to_u32(known(value, name)?, name)
}

/// An optional number at apply, as `u32`.
pub fn known_optional_u32(value: &Value<i64>, name: &str) -> Result<Option<u32>, String> {
    known_optional(value, name)?
        .map(|value| to_u32(value, name))
        .transpose()
}

/// A list of nested blocks with every element planned by `plan_element`; an unknown list
/// (a `dynamic` block over an unknown collection) stays unknown.
pub fn plan_blocks<T>(config: Value<Vec<T>>, plan_element: impl Fn(T) -> T) -> Value<Vec<T>> {
    match config {
        Value::Value(blocks) => Value::Value(blocks.into_iter().map(plan_element).collect()),
        Value::Null => Value::Value(Vec::new()),
        Value::Unknown => Value::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_only_null() {
        assert_eq!(or_default(Value::Null, 5), Value::Value(5));
        assert_eq!(or_default(Value::Value(2), 5), Value::Value(2));
        assert_eq!(or_default(Value::<i64>::Unknown, 5), Value::Unknown);
    }

    #[test]
    fn replacement_only_on_real_or_possible_change() {
        let prior = Value::Value("a".to_string());
        assert!(!changes(&prior, &Value::Value("a".to_string())));
        assert!(changes(&prior, &Value::Value("b".to_string())));
        assert!(changes(&prior, &Value::Unknown));
        assert!(changes(&prior, &Value::Null));
    }
}
