//! The registry docs (`docs/`) and examples (`examples/`) must match the provider's schema:
//! every attribute and block documented once, in the right section (Required / Optional /
//! Read-Only) with the right type, nothing documented that the schema lacks; examples
//! (every `.tf` file under `examples/`) and the pages' configuration snippets that only use
//! names the schema has; and a zone page that shows each `examples/scaling/<mode>` zone.
//! `tests/tests/examples_terraform.rs` checks the same examples with the real `terraform`
//! and the real fleetformd.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use tf_provider::schema::{AttributeConstraint, AttributeType, Block, NestedBlock, Schema};

use terraform_provider_fleetform::{data_source_schemas, provider, resource_schemas};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// `(scope, name)` → `(section, type label)`; scope is `""` or a dotted block path.
type Entries = BTreeMap<(String, String), (String, String)>;

fn type_label(attr_type: &AttributeType) -> String {
    match attr_type {
        AttributeType::String => "String".into(),
        AttributeType::Number => "Number".into(),
        AttributeType::Bool => "Boolean".into(),
        AttributeType::List(inner) => format!("List of {}", type_label(inner)),
        AttributeType::Set(inner) => format!("Set of {}", type_label(inner)),
        AttributeType::Map(inner) => format!("Map of {}", type_label(inner)),
        AttributeType::Object(_) => "Object".into(),
        other => panic!("no doc label for {other:?}"),
    }
}

/// The fields of an object type, directly or as the element of a collection: tfplugindocs
/// documents them in a nested schema, in the section of the attribute that holds them.
fn object_fields(attr_type: &AttributeType) -> Option<&HashMap<String, AttributeType>> {
    match attr_type {
        AttributeType::Object(fields) => Some(fields),
        AttributeType::List(inner) | AttributeType::Set(inner) | AttributeType::Map(inner) => {
            object_fields(inner)
        }
        _ => None,
    }
}

fn nested_block(block: &NestedBlock) -> (&'static str, &Block) {
    match block {
        NestedBlock::List(block) => ("Block List", block),
        NestedBlock::Optional(block) => ("Block List, Max: 1", block),
        NestedBlock::Single(block) => ("Block", block),
        NestedBlock::Set(block) => ("Block Set", block),
        NestedBlock::Map(block) => ("Block Map", block),
        NestedBlock::Group(block) => ("Block", block),
    }
}

/// What the schema says, walked recursively through nested blocks.
fn schema_entries(block: &Block, scope: &str, entries: &mut Entries) {
    for (name, attribute) in &block.attributes {
        let section = match attribute.constraint {
            AttributeConstraint::Required => "Required",
            AttributeConstraint::Optional | AttributeConstraint::OptionalComputed => "Optional",
            AttributeConstraint::Computed => "Read-Only",
        };
        let mut label = type_label(&attribute.attr_type);
        if attribute.sensitive {
            label.push_str(", Sensitive");
        }
        entries.insert((scope.into(), name.clone()), (section.into(), label));
        if let Some(fields) = object_fields(&attribute.attr_type) {
            let inner_scope = qualified(scope, name);
            for (field, field_type) in fields {
                entries.insert(
                    (inner_scope.clone(), field.clone()),
                    (section.into(), type_label(field_type)),
                );
            }
        }
    }
    for (name, nested) in &block.blocks {
        let (label, inner) = nested_block(nested);
        // Blocks with no minimum count are optional to Terraform (tfplugindocs' rule).
        entries.insert(
            (scope.into(), name.clone()),
            ("Optional".into(), label.into()),
        );
        let inner_scope = if scope.is_empty() {
            name.clone()
        } else {
            format!("{scope}.{name}")
        };
        schema_entries(inner, &inner_scope, entries);
    }
}

/// What a doc page's `## Schema` section says, in the tfplugindocs layout.
fn doc_entries(page: &str) -> Result<Entries, Vec<String>> {
    let mut entries = Entries::new();
    let mut problems = Vec::new();
    let mut lines = page.lines().skip_while(|line| line.trim() != "## Schema");
    if lines.next().is_none() {
        return Err(vec!["no `## Schema` section".into()]);
    }
    let mut scope = String::new();
    let mut section: Option<String> = None;
    for line in lines {
        if line.starts_with("## ") {
            break;
        }
        if let Some(title) = line.strip_prefix("### Nested Schema for `") {
            scope = title.trim_end_matches('`').to_string();
            section = None;
        } else if let Some(title) = line.strip_prefix("### ") {
            scope.clear();
            section = Some(title.trim().to_string());
        } else if let Some(title) = ["Required:", "Optional:", "Read-Only:"]
            .iter()
            .find(|title| line.trim() == **title)
        {
            section = Some(title.trim_end_matches(':').to_string());
        } else if let Some(rest) = line.strip_prefix("- `") {
            let Some((name, rest)) = rest.split_once('`') else {
                problems.push(format!("unreadable entry: {line}"));
                continue;
            };
            let label = rest
                .trim_start()
                .strip_prefix('(')
                .and_then(|rest| rest.split_once(')'))
                .map(|(label, _)| label.to_string());
            let (Some(label), Some(section)) = (label, section.clone()) else {
                problems.push(format!("entry without a type or outside a section: {line}"));
                continue;
            };
            if !["Required", "Optional", "Read-Only"].contains(&section.as_str()) {
                problems.push(format!("`{name}` is under an unknown section {section:?}"));
            }
            let key = (scope.clone(), name.to_string());
            if entries.insert(key, (section, label)).is_some() {
                problems.push(format!("`{name}` is documented twice in scope {scope:?}"));
            }
        }
    }
    if problems.is_empty() {
        Ok(entries)
    } else {
        Err(problems)
    }
}

fn qualified(scope: &str, name: &str) -> String {
    if scope.is_empty() {
        name.into()
    } else {
        format!("{scope}.{name}")
    }
}

/// Every disagreement between a schema and its doc page.
fn compare_page(schema: &Schema, page: &str) -> Vec<String> {
    let mut expected = Entries::new();
    schema_entries(&schema.block, "", &mut expected);
    let documented = match doc_entries(page) {
        Ok(entries) => entries,
        Err(problems) => return problems,
    };
    let mut problems = Vec::new();
    for ((scope, name), (section, label)) in &expected {
        let path = qualified(scope, name);
        match documented.get(&(scope.clone(), name.clone())) {
            None => problems.push(format!("`{path}` is in the schema but not documented")),
            Some((doc_section, doc_label)) => {
                if doc_section != section {
                    problems.push(format!(
                        "`{path}` is documented under {doc_section}, the schema makes it {section}"
                    ));
                }
                if doc_label != label {
                    problems.push(format!(
                        "`{path}` is documented as ({doc_label}), the schema says ({label})"
                    ));
                }
            }
        }
    }
    for (scope, name) in documented.keys() {
        if !expected.contains_key(&(scope.clone(), name.clone())) {
            problems.push(format!(
                "`{}` is documented but not in the schema",
                qualified(scope, name)
            ));
        }
    }
    problems
}

/// The pages the registry layout requires, each with the schema it documents, its example
/// and, for resources, its import script.
fn pages() -> Vec<(String, Schema, String, Option<String>)> {
    let mut pages = vec![(
        "docs/index.md".to_string(),
        provider::provider_schema(),
        "examples/provider/provider.tf".to_string(),
        None,
    )];
    for (type_name, schema) in resource_schemas() {
        let thing = type_name.strip_prefix("fleetform_").unwrap();
        pages.push((
            format!("docs/resources/{thing}.md"),
            schema,
            format!("examples/resources/{type_name}/resource.tf"),
            Some(format!("examples/resources/{type_name}/import.sh")),
        ));
    }
    for (type_name, schema) in data_source_schemas() {
        let thing = type_name.strip_prefix("fleetform_").unwrap();
        pages.push((
            format!("docs/data-sources/{thing}.md"),
            schema,
            format!("examples/data-sources/{type_name}/data-source.tf"),
            None,
        ));
    }
    pages
}

#[test]
fn doc_pages_match_the_schema() {
    let mut problems = Vec::new();
    for (page_path, schema, example, import) in pages() {
        let page = read(&page_path);
        let mut page_problems = compare_page(&schema, &page);
        if !page.starts_with("---\n") || !page.contains("\ndescription: |-\n") {
            page_problems.push("no front matter with a description".into());
        }
        if !page.contains("\n## Example Usage\n") || !page.contains(read(&example).trim_end()) {
            page_problems.push(format!("`## Example Usage` does not include {example}"));
        }
        if let Some(import) = import {
            if !page.contains("\n## Import\n") || !page.contains(read(&import).trim_end()) {
                page_problems.push(format!("`## Import` does not include {import}"));
            }
            if !page.contains("import {") {
                page_problems.push("`## Import` has no `import {}` block example".into());
            }
        }
        problems.extend(
            page_problems
                .into_iter()
                .map(|p| format!("{page_path}: {p}")),
        );
    }
    assert!(
        problems.is_empty(),
        "docs disagree with the schema:\n{}",
        problems.join("\n")
    );
}

/// The checker itself must catch each kind of disagreement.
#[test]
fn the_checker_catches_disagreements() {
    let (_, schema) = resource_schemas()
        .into_iter()
        .find(|(name, _)| name == "fleetform_zone")
        .unwrap();
    let page = read("docs/resources/zone.md");
    assert_eq!(compare_page(&schema, &page), Vec::<String>::new());

    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "missing attribute",
            "- `cooldown_minutes` (Number)",
            "- `cooldown_minute` (Number)",
            "`cooldown_minutes` is in the schema but not documented",
        ),
        (
            "extra attribute",
            "- `cooldown_minutes` (Number)",
            "- `warmup` (Number) x\n- `cooldown_minutes` (Number)",
            "`warmup` is documented but not in the schema",
        ),
        (
            "wrong section",
            "### Read-Only\n\n- `id` (String)",
            "- `id` (String) x\n\n### Read-Only\n\n- `idx` (String)",
            "`id` is documented under Optional, the schema makes it Read-Only",
        ),
        (
            "nested block entry missing",
            "- `processes_per_machine` (Number)",
            "- `processes_per_mashine` (Number)",
            "`data_center.machine_model.processes_per_machine` is in the schema but not documented",
        ),
        (
            "wrong type",
            "- `wait_for_capacity` (Boolean)",
            "- `wait_for_capacity` (String)",
            "`wait_for_capacity` is documented as (String), the schema says (Boolean)",
        ),
    ];
    for (case, from, to, expected) in cases {
        assert!(page.contains(from), "{case}: fixture text not found");
        let broken = page.replacen(from, to, 1);
        let problems = compare_page(&schema, &broken);
        assert!(
            problems.iter().any(|p| p == expected),
            "{case}: expected {expected:?} in {problems:?}"
        );
    }
}

/// Object-typed attributes (`fleetform_locations.locations`) are checked field by field in
/// their nested schema.
#[test]
fn the_checker_reads_nested_object_schemas() {
    let (_, schema) = data_source_schemas()
        .into_iter()
        .find(|(name, _)| name == "fleetform_locations")
        .unwrap();
    let page = read("docs/data-sources/locations.md");
    assert_eq!(compare_page(&schema, &page), Vec::<String>::new());

    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "missing field",
            "- `driver` (String)\n",
            "",
            "`locations.driver` is in the schema but not documented",
        ),
        (
            "wrong field type",
            "- `machine_types` (List of String)\n",
            "- `machine_types` (String)\n",
            "`locations.machine_types` is documented as (String), the schema says (List of String)",
        ),
        (
            "extra field",
            "- `name` (String)\n",
            "- `name` (String)\n- `region` (String)\n",
            "`locations.region` is documented but not in the schema",
        ),
    ];
    for (case, from, to, expected) in cases {
        assert!(page.contains(from), "{case}: fixture text not found");
        let broken = page.replacen(from, to, 1);
        let problems = compare_page(&schema, &broken);
        assert!(
            problems.iter().any(|p| p == expected),
            "{case}: expected {expected:?} in {problems:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Examples

/// Names an HCL file uses inside the blocks of `fleetform_*` resources and data sources,
/// each with the dotted block path it appears in. A line scan: `name =` is an attribute,
/// `name {` a nested block; braces and brackets of other values are skipped over.
fn used_names(hcl: &str) -> Vec<(String, String, String)> {
    #[derive(Clone)]
    enum Frame {
        /// Inside a fleetform resource or data source: (type, block path).
        Schema(String, String),
        /// Any other block or a multi-line value.
        Other,
    }
    let mut stack: Vec<Frame> = Vec::new();
    let mut used = Vec::new();
    let meta = ["count", "for_each", "depends_on", "provider", "lifecycle"];
    for raw in hcl.lines() {
        let line = raw.split('#').next().unwrap().trim();
        if line.is_empty() || line.starts_with("//") {
            continue;
        }
        let opens = line.matches(['{', '[', '(']).count() as i64;
        let closes = line.matches(['}', ']', ')']).count() as i64;
        let top = stack.last().cloned();
        let word: String = line
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let rest = line[word.len()..].trim_start();
        let mut pushed = false;
        match &top {
            None => {
                let parts: Vec<&str> = line.split('"').collect();
                if (word == "resource" || word == "data")
                    && parts.len() >= 4
                    && parts[1].starts_with("fleetform_")
                    && line.ends_with('{')
                {
                    let kind = if word == "resource" {
                        "resource"
                    } else {
                        "data"
                    };
                    stack.push(Frame::Schema(format!("{kind}.{}", parts[1]), String::new()));
                    pushed = true;
                }
            }
            Some(Frame::Schema(type_name, path)) if !word.is_empty() => {
                if rest.starts_with('=') {
                    let dynamic_meta = path.ends_with("#dynamic")
                        && ["for_each", "labels", "iterator"].contains(&word.as_str());
                    let top_meta = path.is_empty() && meta.contains(&word.as_str());
                    if !(dynamic_meta || top_meta) {
                        used.push((type_name.clone(), path.clone(), word.clone()));
                    }
                } else if line.ends_with('{') && !(path.is_empty() && word == "lifecycle") {
                    // `name {`, a labeled `name "label" {`, or `dynamic "name" {` (whose
                    // `content {` is the block itself; its other arguments are meta).
                    let label = rest.split('"').nth(1).unwrap_or_default();
                    let block = match word.as_str() {
                        "dynamic" if !label.is_empty() => Some(label.to_string()),
                        "content" if path.ends_with("#dynamic") => None,
                        _ if rest.starts_with('{') || rest.starts_with('"') => Some(word.clone()),
                        _ => None,
                    };
                    let inner = match block {
                        Some(block) => {
                            used.push((type_name.clone(), path.clone(), block.clone()));
                            let inner = if path.is_empty() {
                                block
                            } else {
                                format!("{path}.{block}")
                            };
                            if word == "dynamic" {
                                format!("{inner}#dynamic")
                            } else {
                                inner
                            }
                        }
                        None => path.trim_end_matches("#dynamic").to_string(),
                    };
                    stack.push(Frame::Schema(type_name.clone(), inner));
                    pushed = true;
                }
            }
            _ => {}
        }
        // Whatever this line opened beyond a recognised block is an opaque value or block.
        let extra = opens - closes - i64::from(pushed);
        if extra > 0 {
            for _ in 0..extra {
                stack.push(Frame::Other);
            }
        } else {
            for _ in 0..(-extra) {
                stack.pop();
            }
        }
    }
    used
}

fn names_in_scope(block: &Block, path: &str) -> Option<BTreeSet<String>> {
    let mut block = block;
    for step in path.split('.').filter(|step| !step.is_empty()) {
        block = nested_block(block.blocks.get(step)?).1;
    }
    Some(
        block
            .attributes
            .keys()
            .chain(block.blocks.keys())
            .cloned()
            .collect(),
    )
}

fn example_problems(file: &str, hcl: &str) -> Vec<String> {
    let mut schemas: BTreeMap<String, Schema> = BTreeMap::new();
    for (name, schema) in resource_schemas() {
        schemas.insert(format!("resource.{name}"), schema);
    }
    for (name, schema) in data_source_schemas() {
        schemas.insert(format!("data.{name}"), schema);
    }
    let mut problems = Vec::new();
    for (type_name, path, name) in used_names(hcl) {
        let Some(schema) = schemas.get(&type_name) else {
            problems.push(format!("{file}: unknown type {type_name}"));
            continue;
        };
        let known = names_in_scope(&schema.block, &path).unwrap_or_default();
        if !known.contains(&name) {
            problems.push(format!(
                "{file}: {type_name} has no `{}`",
                qualified(&path, &name)
            ));
        }
    }
    problems
}

/// Every `.tf` file under `examples/` and `modules/`, as paths relative to the repository.
fn example_files() -> Vec<String> {
    fn walk(dir: &Path, relative: &str, files: &mut Vec<String>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.unwrap())
            .collect();
        entries.sort_by_key(|entry| entry.file_name());
        for entry in entries {
            let name = entry.file_name().to_string_lossy().into_owned();
            // Terraform's own working files, and Rust build output of the example server.
            if name.starts_with('.') || name == "target" {
                continue;
            }
            let path = format!("{relative}/{name}");
            if entry.file_type().unwrap().is_dir() {
                walk(&entry.path(), &path, files);
            } else if name.ends_with(".tf") {
                files.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(&repo().join("examples"), "examples", &mut files);
    // The reusable modules use the schema as the examples do.
    walk(&repo().join("modules"), "modules", &mut files);
    files
}

/// Whether an HCL file declares a fleetform resource or data source with a body (a block
/// written `{}`, such as an argument-less `data "fleetform_locations" "x" {}`, has no name
/// to scan).
fn declares_fleetform(hcl: &str) -> bool {
    hcl.lines().any(|line| {
        (line.starts_with("resource \"fleetform_") || line.starts_with("data \"fleetform_"))
            && line.trim_end().ends_with('{')
    })
}

#[test]
fn examples_use_only_schema_names() {
    let files = example_files();
    for type_name in resource_schemas().into_iter().map(|(name, _)| name) {
        let file = format!("examples/resources/{type_name}/resource.tf");
        assert!(files.contains(&file), "{file} is missing");
    }
    for required in [
        "examples/quickstart/main.tf",
        "examples/provider/provider.tf",
    ] {
        assert!(
            files.iter().any(|file| file == required),
            "{required} is missing"
        );
    }
    let mut problems = Vec::new();
    for file in &files {
        let hcl = read(file);
        if declares_fleetform(&hcl) {
            assert!(
                !used_names(&hcl).is_empty(),
                "{file}: the scan found no attribute at all"
            );
        }
        problems.extend(example_problems(file, &hcl));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The ```terraform blocks of a doc page.
fn code_blocks(page: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in page.lines() {
        match &mut current {
            None if line.trim() == "```terraform" || line.trim() == "```hcl" => {
                current = Some(String::new())
            }
            None => {}
            Some(_) if line.trim() == "```" => blocks.push(current.take().unwrap()),
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
        }
    }
    blocks
}

/// Configuration shown in the docs (beyond the included example files) only uses names
/// the schema has.
#[test]
fn doc_snippets_use_only_schema_names() {
    let mut problems = Vec::new();
    let mut checked = 0;
    for (page_path, ..) in pages() {
        for (index, block) in code_blocks(&read(&page_path)).iter().enumerate() {
            if declares_fleetform(block) {
                checked += 1;
                problems.extend(example_problems(
                    &format!("{page_path} (code block {index})"),
                    block,
                ));
            }
        }
    }
    assert!(checked >= 10, "only {checked} doc snippets found");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The `resource "fleetform_zone"` block of an HCL file: from its first line to the first
/// `}` at the start of a line.
fn zone_block(hcl: &str) -> Option<String> {
    let start = hcl.find("\nresource \"fleetform_zone\"")? + 1;
    let end = start + hcl[start..].find("\n}")? + 2;
    Some(hcl[start..end].to_string())
}

/// Each scaling example (`examples/scaling/<mode>/main.tf`) is shown in the zone's doc page,
/// verbatim, so the page's mode examples are the ones `terraform validate` checks.
#[test]
fn zone_page_shows_every_scaling_example() {
    let page = read("docs/resources/zone.md");
    let scaling: Vec<String> = example_files()
        .into_iter()
        .filter(|file| file.starts_with("examples/scaling/"))
        .collect();
    assert!(
        scaling.len() >= 9,
        "expected an example per scaling mode, found {scaling:?}"
    );
    let mut problems = Vec::new();
    for file in &scaling {
        match zone_block(&read(file)) {
            None => problems.push(format!("{file}: no fleetform_zone resource")),
            Some(block) if !page.contains(&block) => problems.push(format!(
                "docs/resources/zone.md does not show the zone of {file}:\n{block}"
            )),
            Some(_) => {}
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_example_scan_catches_unknown_names() {
    let hcl = r#"
resource "fleetform_zone" "z" {
  name = "z"
  labels = {
    team = "x"
  }
  lifecycle {
    prevent_destroy = true
  }
  data_center "dc" {
    machine_model {
      instance_typo = "local"
    }
  }
  buffer_rules {
    available_servers = 1
  }
  dynamic "data_center" {
    for_each = var.dcs
    labels   = [data_center.key]
    content {
      locaton = data_center.value
    }
  }
}
"#;
    assert_eq!(
        example_problems("t.tf", hcl),
        vec![
            "t.tf: resource.fleetform_zone has no `labels`",
            "t.tf: resource.fleetform_zone has no `data_center.machine_model.instance_typo`",
            "t.tf: resource.fleetform_zone has no `buffer_rules`",
            "t.tf: resource.fleetform_zone has no `buffer_rules.available_servers`",
            "t.tf: resource.fleetform_zone has no `data_center.locaton`",
        ]
    );
}
