//! Short builders for the schemas of the provider, its resources and data sources.

use tf_provider::schema::{
    Attribute, AttributeConstraint, AttributeType, Block, Description, NestedBlock, Schema,
};

/// The version these builders write into a schema and its blocks. A resource's state
/// version is its `ApiResource::VERSION` (with `ApiResource::upgrade` for older layouts),
/// which the registry puts into the schema it serves.
pub const STATE_VERSION: i64 = 0;

fn attribute(attr_type: AttributeType, constraint: AttributeConstraint, text: &str) -> Attribute {
    Attribute {
        attr_type,
        description: Description::markdown(text),
        constraint,
        sensitive: false,
        deprecated: false,
    }
}

pub fn required(attr_type: AttributeType, text: &str) -> Attribute {
    attribute(attr_type, AttributeConstraint::Required, text)
}

pub fn optional(attr_type: AttributeType, text: &str) -> Attribute {
    attribute(attr_type, AttributeConstraint::Optional, text)
}

/// Optional, with a default the provider plans when the configuration leaves it out.
pub fn defaulted(attr_type: AttributeType, text: &str) -> Attribute {
    attribute(attr_type, AttributeConstraint::OptionalComputed, text)
}

pub fn computed(attr_type: AttributeType, text: &str) -> Attribute {
    attribute(attr_type, AttributeConstraint::Computed, text)
}

pub fn sensitive(mut attribute: Attribute) -> Attribute {
    attribute.sensitive = true;
    attribute
}

/// A block from its attributes and nested blocks.
pub fn block(
    text: &str,
    attributes: Vec<(&str, Attribute)>,
    blocks: Vec<(&str, NestedBlock)>,
) -> Block {
    Block {
        version: STATE_VERSION,
        attributes: attributes
            .into_iter()
            .map(|(name, attribute)| (name.to_string(), attribute))
            .collect(),
        blocks: blocks
            .into_iter()
            .map(|(name, block)| (name.to_string(), block))
            .collect(),
        description: Description::markdown(text),
        deprecated: false,
    }
}

pub fn schema(block: Block) -> Schema {
    Schema {
        version: STATE_VERSION,
        block,
    }
}
