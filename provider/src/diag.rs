//! Diagnostics on exact attribute paths: plan-time rule failures, and the server's 4xx
//! answers mapped from the API's JSON field paths to Terraform attribute paths.

use fleetform_api::validate::FieldError;
use fleetform_api::ClientError;
use tf_provider::{AttributePath, Diagnostics};

/// Maps a JSON field name of the API to the name Terraform users write. The API's lists of
/// objects are plural (`data_centers`); the provider declares them as repeated blocks with
/// singular names (`data_center { … }`), as Terraform configurations do.
pub fn attribute_name(api_name: &str) -> &str {
    match api_name {
        "data_centers" => "data_center",
        "buffer_rules" => "buffer_rule",
        "machine_models" => "machine_model",
        other => other,
    }
}

/// Turns an API field path (`data_centers[1].machine_models[0].instance_type`) into the
/// Terraform attribute path (`data_center[1].machine_model[0].instance_type`). An empty
/// field is the resource itself.
pub fn attribute_path(api_field: &str) -> AttributePath {
    // The API names a label `labels.<key>`; a key may hold any character, dots included,
    // so the rest of the field is the key, never more steps.
    if let Some(key) = api_field.strip_prefix("labels.") {
        return AttributePath::new("labels").key(key.to_string());
    }
    let mut path = AttributePath::root();
    for segment in api_field.split('.').filter(|segment| !segment.is_empty()) {
        let (name, mut subscripts) = match segment.find('[') {
            Some(open) => segment.split_at(open),
            None => (segment, ""),
        };
        if !name.is_empty() {
            path.add_attribute(attribute_name(name).to_string());
        }
        while let Some(rest) = subscripts.strip_prefix('[') {
            let Some(close) = rest.find(']') else { break };
            let key = rest[..close].trim_matches('"');
            match key.parse::<i64>() {
                Ok(index) => path.add_index(index),
                Err(_) => path.add_key(key.to_string()),
            };
            subscripts = &rest[close + 1..];
        }
    }
    path
}

/// One invalid value found before any request is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: AttributePath,
    pub message: String,
}

/// The problems of one configuration, collected by the plan-time validators.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Problems(pub Vec<Problem>);

impl Problems {
    /// Records the outcome of one rule of `fleetform_api::validate` for `path`.
    pub fn rule(&mut self, path: AttributePath, outcome: Result<(), String>) {
        if let Err(message) = outcome {
            self.0.push(Problem { path, message });
        }
    }

    /// Records errors of a validator that names fields by their API paths.
    pub fn field_errors(&mut self, errors: Vec<FieldError>) {
        for error in errors {
            self.0.push(Problem {
                path: attribute_path(&error.field),
                message: error.message,
            });
        }
    }

    /// The problems with each path and message passed through `locate` (a resource whose
    /// validators number blocks differently from its schema).
    pub fn located(
        self,
        locate: impl Fn(AttributePath, String) -> (AttributePath, String),
    ) -> Self {
        Problems(
            self.0
                .into_iter()
                .map(|problem| {
                    let (path, message) = locate(problem.path, problem.message);
                    Problem { path, message }
                })
                .collect(),
        )
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `(path, message)` pairs, for tests and messages.
    pub fn describe(&self) -> Vec<(String, String)> {
        self.0
            .iter()
            .map(|problem| (problem.path.to_string(), problem.message.clone()))
            .collect()
    }

    /// Adds one error diagnostic per problem, each on its attribute.
    pub fn report(self, diags: &mut Diagnostics) {
        for problem in self.0 {
            let summary = if problem.path.steps.is_empty() {
                "Invalid configuration".to_string()
            } else {
                format!("Invalid {}", problem.path)
            };
            diags.error(summary, problem.message, problem.path);
        }
    }
}

/// Reports a failed call to fleetformd. A 4xx that names a field goes on that attribute;
/// everything else goes on the resource, with a hint for the usual causes.
pub fn client_error(diags: &mut Diagnostics, summary: &str, error: &ClientError) {
    // The diagnostic already points at the field, so an API error's own text suffices.
    let mut detail = match error {
        ClientError::Api { status, body, .. } => format!("{status}: {}", body.error.message),
        other => other.to_string(),
    };
    match error.status().map(|status| status.as_u16()) {
        Some(401 | 403) => detail.push_str(
            "\n\nCheck the provider's `token` (or the FLEETFORM_TOKEN environment variable).",
        ),
        None => detail.push_str(
            "\n\nCheck that fleetformd runs and that the provider's `endpoint` (or the \
             FLEETFORM_ENDPOINT environment variable) points at it.",
        ),
        _ => {}
    }
    match error.field() {
        Some(field) if !field.is_empty() => {
            diags.error(summary.to_string(), detail, attribute_path(field))
        }
        _ => diags.root_error(summary.to_string(), detail),
    }
}

/// Reports an apply-time conversion failure (a provider bug: Terraform resolves every
/// value before apply).
pub fn or_report<T>(diags: &mut Diagnostics, spec: Result<T, String>) -> Option<T> {
    match spec {
        Ok(spec) => Some(spec),
        Err(message) => {
            diags.root_error("Provider error: incomplete plan", message);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_fields_map_to_block_paths() {
        let cases: &[(&str, &str, &str)] = &[
            ("top-level attribute", "launch_path", "launch_path"),
            (
                "data center name",
                "data_centers[1].name",
                "data_center[1].name",
            ),
            (
                "machine model leaf",
                "data_centers[0].machine_models[2].instance_type",
                "data_center[0].machine_model[2].instance_type",
            ),
            ("whole buffer rule", "buffer_rules[0]", "buffer_rule[0]"),
            ("buffer rule list", "buffer_rules", "buffer_rule"),
            ("map key", "labels[\"team\"]", "labels[\"team\"]"),
            (
                "label as the API names it",
                "labels.team",
                "labels[\"team\"]",
            ),
            ("label key with a dot", "labels.a.b", "labels[\"a.b\"]"),
            ("empty label key", "labels.", "labels[\"\"]"),
            ("no field", "", ""),
        ];
        for (case, api, expected) in cases {
            assert_eq!(attribute_path(api).to_string(), *expected, "{case}");
        }
    }

    #[test]
    fn mapped_paths_have_typed_steps() {
        use tf_provider::AttributePathStep::*;
        let path = attribute_path("data_centers[3].machine_models[0].processes_per_machine");
        assert_eq!(
            path.steps,
            vec![
                Attribute("data_center".into()),
                Index(3),
                Attribute("machine_model".into()),
                Index(0),
                Attribute("processes_per_machine".into()),
            ]
        );
    }
}
