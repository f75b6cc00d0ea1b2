//! The provider's schemas in each plugin protocol's messages: one conversion, written once
//! for both (`schema_v5`, `schema_v6`), since their schema messages share field names but
//! not every field number (see `proto.rs`). Attribute types go as cty's JSON type
//! (`"string"`, `["list","number"]`, `["object",{…}]`).
//!
//! Protocol 5 has no nested attribute types: a schema that uses them (none of ours does;
//! `every_schema_fits_both_protocols` keeps it so) is refused on both, so the two
//! protocols always show the same schema.

use serde_json::{json, Value as Json};
use tf_provider::schema::{
    Attribute, AttributeConstraint, AttributeType, Block, NestedBlock, Schema, StringKind,
};

/// Why a schema cannot be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaError {
    /// The attribute or block, as a dotted path.
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for SchemaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

impl std::error::Error for SchemaError {}

/// cty's JSON form of an attribute type.
pub fn type_json(attr_type: &AttributeType, path: &str) -> Result<Json, SchemaError> {
    Ok(match attr_type {
        AttributeType::String => json!("string"),
        AttributeType::Number => json!("number"),
        AttributeType::Bool => json!("bool"),
        AttributeType::Any => json!("dynamic"),
        AttributeType::List(inner) => json!(["list", type_json(inner, path)?]),
        AttributeType::Set(inner) => json!(["set", type_json(inner, path)?]),
        AttributeType::Map(inner) => json!(["map", type_json(inner, path)?]),
        AttributeType::Object(fields) => {
            let mut object = serde_json::Map::new();
            let mut names: Vec<&String> = fields.keys().collect();
            names.sort();
            for name in names {
                let field = type_json(&fields[name], &format!("{path}.{name}"))?;
                object.insert(name.clone(), field);
            }
            json!(["object", object])
        }
        AttributeType::Tuple(elements) => json!([
            "tuple",
            elements
                .iter()
                .map(|element| type_json(element, path))
                .collect::<Result<Vec<_>, _>>()?
        ]),
        AttributeType::AttributeSingle(_)
        | AttributeType::AttributeList(_)
        | AttributeType::AttributeSet(_)
        | AttributeType::AttributeMap(_) => {
            return Err(SchemaError {
                path: path.to_string(),
                message: "a nested attribute type, which plugin protocol 5 cannot carry: use \
                          a block"
                    .into(),
            })
        }
    })
}

/// Names in a stable order (the schema's maps have none).
fn sorted<T>(map: &std::collections::HashMap<String, T>) -> Vec<(&String, &T)> {
    let mut entries: Vec<(&String, &T)> = map.iter().collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    entries
}

/// A nested block's nesting mode (as both protocols number it) and item bounds.
fn nesting(nested: &NestedBlock) -> (&Block, i32, i64, i64) {
    // NestingMode: INVALID 0, SINGLE 1, LIST 2, SET 3, MAP 4, GROUP 5 (both protocols).
    match nested {
        NestedBlock::Single(block) => (block, 1, 0, 0),
        NestedBlock::List(block) => (block, 2, 0, 0),
        NestedBlock::Set(block) => (block, 3, 0, 0),
        NestedBlock::Map(block) => (block, 4, 0, 0),
        NestedBlock::Group(block) => (block, 5, 0, 0),
        // At most one: a list of at most one item.
        NestedBlock::Optional(block) => (block, 2, 0, 1),
    }
}

fn description_kind(kind: &StringKind) -> i32 {
    match kind {
        StringKind::Plain => 0,
        StringKind::Markdown => 1,
    }
}

fn flags(attribute: &Attribute) -> (bool, bool, bool) {
    match attribute.constraint {
        AttributeConstraint::Required => (true, false, false),
        AttributeConstraint::Optional => (false, true, false),
        AttributeConstraint::OptionalComputed => (false, true, true),
        AttributeConstraint::Computed => (false, false, true),
    }
}

/// `schema_v5` and `schema_v6`: the same conversion into each protocol's messages.
macro_rules! schema_conversion {
    ($name:ident, $proto:ident, $($nested_type:tt)*) => {
        /// The schema in this protocol's messages.
        pub fn $name(schema: &Schema) -> Result<crate::proto::$proto::Schema, SchemaError> {
            use crate::proto::$proto::schema as wire;

            fn convert(block: &Block, path: &str) -> Result<wire::Block, SchemaError> {
                let mut attributes = Vec::new();
                for (name, attribute) in sorted(&block.attributes) {
                    let at = if path.is_empty() { name.clone() } else { format!("{path}.{name}") };
                    let (required, optional, computed) = flags(attribute);
                    attributes.push(wire::Attribute {
                        name: name.clone(),
                        r#type: type_json(&attribute.attr_type, &at)?.to_string().into_bytes(),
                        description: attribute.description.content.clone(),
                        description_kind: description_kind(&attribute.description.kind),
                        required,
                        optional,
                        computed,
                        sensitive: attribute.sensitive,
                        deprecated: attribute.deprecated,
                        $($nested_type)*
                        ..Default::default()
                    });
                }
                let mut block_types = Vec::new();
                for (name, nested) in sorted(&block.blocks) {
                    let at = if path.is_empty() { name.clone() } else { format!("{path}.{name}") };
                    let (inner, nesting, min_items, max_items) = nesting(nested);
                    block_types.push(wire::NestedBlock {
                        type_name: name.clone(),
                        block: Some(convert(inner, &at)?),
                        nesting,
                        min_items,
                        max_items,
                    });
                }
                Ok(wire::Block {
                    version: block.version,
                    attributes,
                    block_types,
                    description: block.description.content.clone(),
                    description_kind: description_kind(&block.description.kind),
                    deprecated: block.deprecated,
                    ..Default::default()
                })
            }

            Ok(crate::proto::$proto::Schema {
                version: schema.version,
                block: Some(convert(&schema.block, "")?),
            })
        }
    };
}

schema_conversion!(schema_v5, tfplugin5,);
schema_conversion!(schema_v6, tfplugin6, nested_type: None,);

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn attribute_types_are_ctys_json() {
        use AttributeType::*;
        let cases: Vec<(AttributeType, &str)> = vec![
            (String, r#""string""#),
            (Number, r#""number""#),
            (Bool, r#""bool""#),
            (Any, r#""dynamic""#),
            (List(Box::new(String)), r#"["list","string"]"#),
            (Set(Box::new(Number)), r#"["set","number"]"#),
            (Map(Box::new(Bool)), r#"["map","bool"]"#),
            (
                Object(HashMap::from([
                    ("b".to_string(), Number),
                    ("a".to_string(), List(Box::new(String))),
                ])),
                r#"["object",{"a":["list","string"],"b":"number"}]"#,
            ),
            (Tuple(vec![String, Bool]), r#"["tuple",["string","bool"]]"#),
        ];
        for (attr_type, want) in cases {
            assert_eq!(
                type_json(&attr_type, "x").unwrap().to_string(),
                want,
                "{attr_type:?}"
            );
        }
        let nested = AttributeSingle(HashMap::new());
        let error = type_json(&nested, "zone.data_center").unwrap_err();
        assert_eq!(error.path, "zone.data_center");
    }

    /// Every schema the provider serves converts for both protocols, and the two say the
    /// same thing (the same attributes, types, flags and blocks, in the same order).
    #[test]
    fn every_schema_fits_both_protocols() {
        let mut all = crate::resource_schemas();
        all.extend(crate::data_source_schemas());
        all.push(("provider".into(), crate::provider::provider_schema()));
        for (name, schema) in all {
            let v5 = schema_v5(&schema).unwrap_or_else(|e| panic!("{name}: {e}"));
            let v6 = schema_v6(&schema).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(
                summary5(v5.block.as_ref().unwrap()),
                summary6(v6.block.as_ref().unwrap()),
                "{name}"
            );
            assert!(
                !v6.block.unwrap().attributes.is_empty(),
                "{name}: no attributes"
            );
        }
    }

    macro_rules! summary {
        ($name:ident, $proto:ident) => {
            fn $name(block: &crate::proto::$proto::schema::Block) -> Vec<std::string::String> {
                let mut lines = Vec::new();
                for a in &block.attributes {
                    lines.push(format!(
                        "{} {} r{} o{} c{} s{} {}",
                        a.name,
                        std::string::String::from_utf8_lossy(&a.r#type),
                        a.required,
                        a.optional,
                        a.computed,
                        a.sensitive,
                        a.description
                    ));
                }
                for b in &block.block_types {
                    lines.push(format!(
                        "block {} {} {}..{}",
                        b.type_name, b.nesting, b.min_items, b.max_items
                    ));
                    lines.extend(
                        $name(b.block.as_ref().unwrap())
                            .into_iter()
                            .map(|l| format!("  {l}")),
                    );
                }
                lines
            }
        };
    }
    summary!(summary5, tfplugin5);
    summary!(summary6, tfplugin6);

    #[test]
    fn an_optional_block_is_a_list_of_at_most_one() {
        let schema = crate::resources::zone::zone_schema();
        let v6 = schema_v6(&schema).unwrap();
        let block = v6.block.unwrap();
        let timeouts = block
            .block_types
            .iter()
            .find(|b| b.type_name == "timeouts")
            .expect("the zone has a timeouts block");
        assert_eq!((timeouts.nesting, timeouts.max_items), (2, 1));
    }
}
