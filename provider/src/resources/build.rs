//! `fleetform_build`: a server build package (DESIGN.md §2).

use async_trait::async_trait;
use fleetform_api::validate;
use fleetform_api::{Build, BuildSpec, Client, ClientError, OperatingSystem};
use serde::{Deserialize, Serialize};
use tf_provider::schema::{AttributeType, Schema};
use tf_provider::value::Value;
use tf_provider::AttributePath;

use crate::diag::Problems;
use crate::resource::ApiResource;
use crate::schema::{block, computed, defaulted, optional, required, schema};
use crate::state::{changes, known, known_optional, or_default};

/// Terraform state of a `fleetform_build`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BuildState {
    pub id: Value<String>,
    pub name: Value<String>,
    pub version: Value<String>,
    pub operating_system: Value<String>,
    pub source: Value<String>,
    pub sha256: Value<String>,
    pub created_at: Value<String>,
}

/// Attributes whose change replaces the build.
const IMMUTABLE: &[&str] = &["operating_system", "source", "sha256"];

impl BuildState {
    /// State of a build as the server knows it.
    pub fn from_build(build: Build) -> Self {
        BuildState {
            id: Value::Value(build.id),
            name: Value::Value(build.name),
            version: build.version.into(),
            operating_system: Value::Value(build.operating_system.to_string()),
            source: Value::Value(build.source),
            sha256: build.sha256.into(),
            created_at: Value::Value(build.created_at),
        }
    }

    /// The body to send, from a fully known planned state.
    pub fn spec(&self) -> Result<BuildSpec, String> {
        Ok(BuildSpec {
            name: known(&self.name, "name")?,
            version: known_optional(&self.version, "version")?,
            operating_system: known_optional(&self.operating_system, "operating_system")?
                .map(|text| text.parse())
                .transpose()?
                .unwrap_or_default(),
            source: known(&self.source, "source")?,
            sha256: known_optional(&self.sha256, "sha256")?,
        })
    }

    /// The planned state: the configuration with defaults, `id` and `created_at` from
    /// `prior` (unknown on create).
    fn plan(config: Self, prior: Option<&Self>) -> Self {
        BuildState {
            id: prior.map_or(Value::Unknown, |prior| prior.id.clone()),
            created_at: prior.map_or(Value::Unknown, |prior| prior.created_at.clone()),
            operating_system: or_default(
                config.operating_system,
                OperatingSystem::default().to_string(),
            ),
            ..config
        }
    }

    fn immutable(&self, name: &str) -> &Value<String> {
        match name {
            "operating_system" => &self.operating_system,
            "source" => &self.source,
            _ => &self.sha256,
        }
    }
}

/// Plan-time checks of a build configuration: the server's rules on the known values.
pub fn validate_build(config: &BuildState) -> Problems {
    let mut problems = Problems::default();
    if let Some(name) = config.name.as_ref_option() {
        problems.rule(AttributePath::new("name"), validate::name(name));
    }
    if let Some(os) = config.operating_system.as_ref_option() {
        problems.rule(
            AttributePath::new("operating_system"),
            os.parse::<OperatingSystem>().map(drop),
        );
    }
    if let Some(source) = config.source.as_ref_option() {
        problems.rule(AttributePath::new("source"), validate::build_source(source));
    }
    if let Some(digest) = config.sha256.as_ref_option() {
        problems.rule(AttributePath::new("sha256"), validate::sha256(digest));
        if let Some(source) = config.source.as_ref_option() {
            problems.rule(
                AttributePath::new("sha256"),
                validate::sha256_with_source(source),
            );
        }
    }
    problems
}

/// The `fleetform_build` resource.
pub struct BuildResource;

#[async_trait]
impl ApiResource for BuildResource {
    type State = BuildState;
    type Remote = Build;
    type Spec = BuildSpec;
    const NAME: &'static str = "build";
    const NOUN: &'static str = "build";

    fn schema() -> Schema {
        build_schema()
    }

    fn validate(config: &BuildState) -> Problems {
        validate_build(config)
    }

    fn plan(config: BuildState, prior: Option<&BuildState>) -> BuildState {
        BuildState::plan(config, prior)
    }

    fn replaced_by(prior: &BuildState, planned: &BuildState) -> Vec<AttributePath> {
        IMMUTABLE
            .iter()
            .filter(|name| changes(prior.immutable(name), planned.immutable(name)))
            .map(|name| AttributePath::new(*name))
            .collect()
    }

    fn id(state: &BuildState) -> &Value<String> {
        &state.id
    }

    fn spec(planned: &BuildState) -> Result<BuildSpec, String> {
        planned.spec()
    }

    fn state(build: Build, _local: Option<&BuildState>) -> BuildState {
        BuildState::from_build(build)
    }

    async fn get(client: &Client, id: &str) -> Result<Build, ClientError> {
        client.get_build(id).await
    }

    async fn create(client: &Client, spec: &BuildSpec) -> Result<Build, ClientError> {
        client.create_build(spec).await
    }

    async fn update(client: &Client, id: &str, spec: &BuildSpec) -> Result<Build, ClientError> {
        client.update_build(id, spec).await
    }

    async fn delete(client: &Client, id: &str) -> Result<(), ClientError> {
        client.delete_build(id).await
    }
}

/// Schema of `fleetform_build`.
pub fn build_schema() -> Schema {
    use AttributeType::String;
    schema(block(
        "A server build package: the files of the game server that fleets run.",
        vec![
            ("id", computed(String, "Identifier of the build (`bld-…`).")),
            ("name", required(String, "Name of the build. Updatable.")),
            (
                "version",
                optional(String, "Version label of the build. Updatable."),
            ),
            (
                "operating_system",
                defaulted(
                    String,
                    "Operating system the build runs on: `linux` (default) or `windows`. \
                     Changing it replaces the build.",
                ),
            ),
            (
                "source",
                required(
                    String,
                    "URI of the package: `file:///abs/dir`, `file:///abs/pkg.tar.gz`, \
                     `s3://bucket/key` or `https://…`. Changing it replaces the build.",
                ),
            ),
            (
                "sha256",
                optional(
                    String,
                    "Lower-case hex SHA-256 of an archive source, checked when a machine \
                     fetches the build. Changing it replaces the build.",
                ),
            ),
            (
                "created_at",
                computed(String, "When the build was registered (RFC 3339, UTC)."),
            ),
        ],
        vec![],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> BuildState {
        BuildState {
            name: Value::Value("game".into()),
            source: Value::Value("file:///opt/game".into()),
            ..Default::default()
        }
    }

    #[test]
    fn plan_fills_default_and_keeps_computed() {
        let planned = BuildState::plan(config(), None);
        assert_eq!(planned.operating_system, Value::Value("linux".into()));
        assert!(planned.id.is_unknown() && planned.created_at.is_unknown());

        let prior = BuildState {
            id: Value::Value("bld-1".into()),
            created_at: Value::Value("2024-01-01T00:00:00Z".into()),
            ..planned.clone()
        };
        let again = BuildState::plan(config(), Some(&prior));
        assert_eq!(again, prior, "a second plan of the same config is clean");
    }

    #[test]
    fn validation_paths() {
        let cases: Vec<(&str, BuildState, &[&str])> = vec![
            ("valid", config(), &[]),
            (
                "relative file source",
                BuildState {
                    source: Value::Value("file://game".into()),
                    ..config()
                },
                &["source"],
            ),
            (
                "sha256 of a directory",
                BuildState {
                    sha256: Value::Value("a".repeat(64)),
                    ..config()
                },
                &["sha256"],
            ),
            (
                "unknown operating system",
                BuildState {
                    operating_system: Value::Value("macos".into()),
                    ..config()
                },
                &["operating_system"],
            ),
            (
                "unknown values are skipped",
                BuildState {
                    name: Value::Unknown,
                    source: Value::Unknown,
                    sha256: Value::Value("a".repeat(64)),
                    ..config()
                },
                &[],
            ),
        ];
        for (case, config, paths) in cases {
            let found: Vec<String> = validate_build(&config)
                .describe()
                .into_iter()
                .map(|(path, _)| path)
                .collect();
            assert_eq!(found, *paths, "{case}");
        }
    }
}
