//! The two plugin protocols over one [`Core`](crate::core::Core): `v5.rs` serves
//! `tfplugin5.Provider`, `v6.rs` `tfplugin6.Provider`. What their messages share (values,
//! diagnostics, attribute paths, every resource and data source call) is translated once,
//! by [`adapter!`], which each version invokes with the few calls that differ (the schema
//! call, provider validation, configure and stop are named differently).
//!
//! Calls this provider has nothing for (functions, ephemeral and list resources, actions,
//! state stores, resource identities) answer empty where Terraform asks unconditionally,
//! and `Unimplemented` where it asks only for what a provider declares.

pub mod v5;
pub mod v6;

use std::pin::Pin;

use tokio_stream::Stream;

/// A stream this provider never produces.
pub type Never<T> = Pin<Box<dyn Stream<Item = Result<T, tonic::Status>> + Send + 'static>>;

/// Expands to the conversions and the `Provider` service of one protocol version: `$server`
/// is the service struct it defines, `$proto` the generated module, `$schema` the schema
/// conversion of `wire.rs`, and the braces hold the version's own calls.
macro_rules! adapter {
    ($server:ident, $proto:ident, $schema:ident, { $($own:tt)* }) => {
        use std::sync::Arc;

        use tf_provider::{AttributePath, AttributePathStep, Diagnostics};
        use tonic::{Request, Response, Status};

        use crate::core::{Core, Dynamic};
        use crate::proto::$proto as wire;
        use crate::protocol::Never;

        /// The provider service of this protocol version.
        #[derive(Clone)]
        pub struct $server {
            core: Arc<Core>,
        }

        impl $server {
            pub fn new(core: Arc<Core>) -> Self {
                $server { core }
            }

            /// The gRPC service, ready for a server's routes.
            pub fn service(core: Arc<Core>) -> wire::provider_server::ProviderServer<$server> {
                wire::provider_server::ProviderServer::new($server::new(core))
                    // Plans of large configurations carry large values.
                    .max_decoding_message_size(256 << 20)
                    .max_encoding_message_size(256 << 20)
            }
        }

        /// A value from the wire (absent: null).
        fn value(value: Option<wire::DynamicValue>) -> Dynamic {
            match value {
                Some(value) => Dynamic {
                    msgpack: value.msgpack,
                    json: value.json,
                },
                None => Dynamic::null(),
            }
        }

        /// A value for the wire.
        fn to_wire(value: Dynamic) -> Option<wire::DynamicValue> {
            Some(wire::DynamicValue {
                msgpack: value.msgpack,
                json: value.json,
            })
        }

        fn path(path: &AttributePath) -> wire::AttributePath {
            use wire::attribute_path::step::Selector;
            wire::AttributePath {
                steps: path
                    .steps
                    .iter()
                    .map(|step| wire::attribute_path::Step {
                        selector: Some(match step {
                            AttributePathStep::Attribute(name) => {
                                Selector::AttributeName(name.to_string())
                            }
                            AttributePathStep::Key(key) => Selector::ElementKeyString(key.to_string()),
                            AttributePathStep::Index(index) => Selector::ElementKeyInt(*index),
                        }),
                    })
                    .collect(),
            }
        }

        fn diagnostics(diags: Diagnostics) -> Vec<wire::Diagnostic> {
            use wire::diagnostic::Severity;
            let one = |severity: Severity, diag: tf_provider::Diagnostic| wire::Diagnostic {
                severity: severity as i32,
                summary: diag.summary.into_owned(),
                detail: diag.detail.into_owned(),
                attribute: (!diag.attribute.steps.is_empty()).then(|| path(&diag.attribute)),
            };
            let mut all: Vec<wire::Diagnostic> = diags
                .errors
                .into_iter()
                .map(|diag| one(Severity::Error, diag))
                .collect();
            all.extend(diags.warnings.into_iter().map(|diag| one(Severity::Warning, diag)));
            all
        }

        /// What the provider tells Terraform it can do: its schema may be reused across
        /// the provider's instances (it never changes within a run), and nothing else.
        fn capabilities() -> wire::ServerCapabilities {
            wire::ServerCapabilities {
                plan_destroy: false,
                get_provider_schema_optional: true,
                move_resource_state: false,
                generate_resource_config: false,
            }
        }

        /// Every schema of the provider in this protocol's messages.
        fn schemas(core: &Core) -> wire::get_provider_schema::Response {
            let mut diags = Diagnostics::default();
            let mut convert = |name: &str, schema: &tf_provider::schema::Schema| {
                match crate::wire::$schema(schema) {
                    Ok(schema) => Some(schema),
                    Err(error) => {
                        diags.root_error(
                            format!("Provider error: the schema of {name} cannot be sent"),
                            error.to_string(),
                        );
                        None
                    }
                }
            };
            let provider = convert("the provider", &core.provider_schema());
            let resource_schemas = core
                .registry
                .resources
                .iter()
                .filter_map(|(name, resource)| Some((name.clone(), convert(name, &resource.schema())?)))
                .collect();
            let data_source_schemas = core
                .registry
                .data_sources
                .iter()
                .filter_map(|(name, data)| Some((name.clone(), convert(name, &data.schema())?)))
                .collect();
            wire::get_provider_schema::Response {
                provider,
                resource_schemas,
                data_source_schemas,
                diagnostics: diagnostics(diags),
                server_capabilities: Some(capabilities()),
                ..Default::default()
            }
        }

        // The generated service's own error type.
        #[allow(clippy::result_large_err)]
        fn unimplemented<T>(call: &str) -> Result<Response<T>, Status> {
            Err(Status::unimplemented(format!("the fleetform provider has no {call}")))
        }

        #[tonic::async_trait]
        impl wire::provider_server::Provider for $server {
            $($own)*

            async fn get_metadata(
                &self,
                _: Request<wire::get_metadata::Request>,
            ) -> Result<Response<wire::get_metadata::Response>, Status> {
                use wire::get_metadata::{DataSourceMetadata, ResourceMetadata};
                let registry = &self.core.registry;
                Ok(Response::new(wire::get_metadata::Response {
                    server_capabilities: Some(capabilities()),
                    resources: registry
                        .resources
                        .keys()
                        .map(|name| ResourceMetadata { type_name: name.clone() })
                        .collect(),
                    data_sources: registry
                        .data_sources
                        .keys()
                        .map(|name| DataSourceMetadata { type_name: name.clone() })
                        .collect(),
                    ..Default::default()
                }))
            }

            async fn upgrade_resource_state(
                &self,
                request: Request<wire::upgrade_resource_state::Request>,
            ) -> Result<Response<wire::upgrade_resource_state::Response>, Status> {
                let request = request.into_inner();
                let raw = request.raw_state.unwrap_or_default();
                let outcome = if raw.json.is_empty() && !raw.flatmap.is_empty() {
                    let mut diags = Diagnostics::default();
                    diags.root_error(
                        "Unsupported state",
                        "The state is in the flatmap form of Terraform 0.11 and earlier, which \
                         this provider never wrote. Remove the resource from the state and \
                         import it again.",
                    );
                    crate::core::Outcome { value: Dynamic::null(), diags }
                } else {
                    self.core.upgrade(&request.type_name, request.version, &raw.json)
                };
                Ok(Response::new(wire::upgrade_resource_state::Response {
                    upgraded_state: to_wire(outcome.value),
                    diagnostics: diagnostics(outcome.diags),
                }))
            }

            async fn get_resource_identity_schemas(
                &self,
                _: Request<wire::get_resource_identity_schemas::Request>,
            ) -> Result<Response<wire::get_resource_identity_schemas::Response>, Status> {
                Ok(Response::new(Default::default()))
            }

            async fn upgrade_resource_identity(
                &self,
                _: Request<wire::upgrade_resource_identity::Request>,
            ) -> Result<Response<wire::upgrade_resource_identity::Response>, Status> {
                unimplemented("resource identities")
            }

            async fn read_resource(
                &self,
                request: Request<wire::read_resource::Request>,
            ) -> Result<Response<wire::read_resource::Response>, Status> {
                let request = request.into_inner();
                let outcome = self
                    .core
                    .read(&request.type_name, &value(request.current_state))
                    .await;
                Ok(Response::new(wire::read_resource::Response {
                    new_state: to_wire(outcome.value),
                    diagnostics: diagnostics(outcome.diags),
                    private: request.private,
                    ..Default::default()
                }))
            }

            async fn plan_resource_change(
                &self,
                request: Request<wire::plan_resource_change::Request>,
            ) -> Result<Response<wire::plan_resource_change::Response>, Status> {
                let request = request.into_inner();
                let outcome = self.core.plan(
                    &request.type_name,
                    &value(request.prior_state),
                    &value(request.proposed_new_state),
                    &value(request.config),
                );
                Ok(Response::new(wire::plan_resource_change::Response {
                    planned_state: to_wire(outcome.value.state),
                    requires_replace: outcome.value.requires_replace.iter().map(path).collect(),
                    planned_private: request.prior_private,
                    diagnostics: diagnostics(outcome.diags),
                    ..Default::default()
                }))
            }

            async fn apply_resource_change(
                &self,
                request: Request<wire::apply_resource_change::Request>,
            ) -> Result<Response<wire::apply_resource_change::Response>, Status> {
                let request = request.into_inner();
                let outcome = self
                    .core
                    .apply(
                        &request.type_name,
                        &value(request.prior_state),
                        &value(request.planned_state),
                    )
                    .await;
                Ok(Response::new(wire::apply_resource_change::Response {
                    new_state: to_wire(outcome.value),
                    private: request.planned_private,
                    diagnostics: diagnostics(outcome.diags),
                    ..Default::default()
                }))
            }

            async fn import_resource_state(
                &self,
                request: Request<wire::import_resource_state::Request>,
            ) -> Result<Response<wire::import_resource_state::Response>, Status> {
                let request = request.into_inner();
                let outcome = self.core.import(&request.type_name, &request.id).await;
                let imported_resources = if outcome.value.is_null() {
                    Vec::new()
                } else {
                    vec![wire::import_resource_state::ImportedResource {
                        type_name: request.type_name,
                        state: to_wire(outcome.value),
                        ..Default::default()
                    }]
                };
                Ok(Response::new(wire::import_resource_state::Response {
                    imported_resources,
                    diagnostics: diagnostics(outcome.diags),
                    ..Default::default()
                }))
            }

            async fn move_resource_state(
                &self,
                _: Request<wire::move_resource_state::Request>,
            ) -> Result<Response<wire::move_resource_state::Response>, Status> {
                unimplemented("moves between resource types")
            }

            async fn read_data_source(
                &self,
                request: Request<wire::read_data_source::Request>,
            ) -> Result<Response<wire::read_data_source::Response>, Status> {
                let request = request.into_inner();
                let outcome = self
                    .core
                    .read_data_source(&request.type_name, &value(request.config))
                    .await;
                Ok(Response::new(wire::read_data_source::Response {
                    state: to_wire(outcome.value),
                    diagnostics: diagnostics(outcome.diags),
                    ..Default::default()
                }))
            }

            async fn generate_resource_config(
                &self,
                _: Request<wire::generate_resource_config::Request>,
            ) -> Result<Response<wire::generate_resource_config::Response>, Status> {
                unimplemented("generated configuration (Terraform writes it from the schema)")
            }

            async fn validate_ephemeral_resource_config(
                &self,
                _: Request<wire::validate_ephemeral_resource_config::Request>,
            ) -> Result<Response<wire::validate_ephemeral_resource_config::Response>, Status> {
                unimplemented("ephemeral resources")
            }

            async fn open_ephemeral_resource(
                &self,
                _: Request<wire::open_ephemeral_resource::Request>,
            ) -> Result<Response<wire::open_ephemeral_resource::Response>, Status> {
                unimplemented("ephemeral resources")
            }

            async fn renew_ephemeral_resource(
                &self,
                _: Request<wire::renew_ephemeral_resource::Request>,
            ) -> Result<Response<wire::renew_ephemeral_resource::Response>, Status> {
                unimplemented("ephemeral resources")
            }

            async fn close_ephemeral_resource(
                &self,
                _: Request<wire::close_ephemeral_resource::Request>,
            ) -> Result<Response<wire::close_ephemeral_resource::Response>, Status> {
                unimplemented("ephemeral resources")
            }

            type ListResourceStream = Never<wire::list_resource::Event>;

            async fn list_resource(
                &self,
                _: Request<wire::list_resource::Request>,
            ) -> Result<Response<Self::ListResourceStream>, Status> {
                unimplemented("list resources")
            }

            async fn validate_list_resource_config(
                &self,
                _: Request<wire::validate_list_resource_config::Request>,
            ) -> Result<Response<wire::validate_list_resource_config::Response>, Status> {
                unimplemented("list resources")
            }

            async fn get_functions(
                &self,
                _: Request<wire::get_functions::Request>,
            ) -> Result<Response<wire::get_functions::Response>, Status> {
                Ok(Response::new(Default::default()))
            }

            async fn call_function(
                &self,
                _: Request<wire::call_function::Request>,
            ) -> Result<Response<wire::call_function::Response>, Status> {
                unimplemented("functions")
            }

            async fn plan_action(
                &self,
                _: Request<wire::plan_action::Request>,
            ) -> Result<Response<wire::plan_action::Response>, Status> {
                unimplemented("actions")
            }

            type InvokeActionStream = Never<wire::invoke_action::Event>;

            async fn invoke_action(
                &self,
                _: Request<wire::invoke_action::Request>,
            ) -> Result<Response<Self::InvokeActionStream>, Status> {
                unimplemented("actions")
            }

            async fn validate_action_config(
                &self,
                _: Request<wire::validate_action_config::Request>,
            ) -> Result<Response<wire::validate_action_config::Response>, Status> {
                unimplemented("actions")
            }
        }

    };
}

pub(crate) use adapter;
