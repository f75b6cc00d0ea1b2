//! Plugin protocol 6 (`tfplugin6.Provider`): the calls named differently from protocol 5,
//! and protocol 6's state stores (none here); the rest is the shared
//! [`adapter!`](super::adapter).

use tonic::Streaming;

super::adapter!(ProviderV6, tfplugin6, schema_v6, {
    async fn get_provider_schema(
        &self,
        _: Request<wire::get_provider_schema::Request>,
    ) -> Result<Response<wire::get_provider_schema::Response>, Status> {
        Ok(Response::new(schemas(&self.core)))
    }

    async fn validate_provider_config(
        &self,
        request: Request<wire::validate_provider_config::Request>,
    ) -> Result<Response<wire::validate_provider_config::Response>, Status> {
        let diags = self
            .core
            .validate_provider(&value(request.into_inner().config));
        Ok(Response::new(wire::validate_provider_config::Response {
            diagnostics: diagnostics(diags),
        }))
    }

    async fn validate_resource_config(
        &self,
        request: Request<wire::validate_resource_config::Request>,
    ) -> Result<Response<wire::validate_resource_config::Response>, Status> {
        let request = request.into_inner();
        let diags = self
            .core
            .validate_resource(&request.type_name, &value(request.config));
        Ok(Response::new(wire::validate_resource_config::Response {
            diagnostics: diagnostics(diags),
        }))
    }

    async fn validate_data_resource_config(
        &self,
        request: Request<wire::validate_data_resource_config::Request>,
    ) -> Result<Response<wire::validate_data_resource_config::Response>, Status> {
        let request = request.into_inner();
        let diags = self
            .core
            .validate_data_source(&request.type_name, &value(request.config));
        Ok(Response::new(
            wire::validate_data_resource_config::Response {
                diagnostics: diagnostics(diags),
            },
        ))
    }

    async fn configure_provider(
        &self,
        request: Request<wire::configure_provider::Request>,
    ) -> Result<Response<wire::configure_provider::Response>, Status> {
        let diags = self.core.configure(&value(request.into_inner().config));
        Ok(Response::new(wire::configure_provider::Response {
            diagnostics: diagnostics(diags),
        }))
    }

    async fn stop_provider(
        &self,
        _: Request<wire::stop_provider::Request>,
    ) -> Result<Response<wire::stop_provider::Response>, Status> {
        // Calls in flight finish on their own (each is bounded by its timeout); the
        // controller's `Shutdown` ends the process.
        Ok(Response::new(wire::stop_provider::Response::default()))
    }

    async fn validate_state_store_config(
        &self,
        _: Request<wire::validate_state_store::Request>,
    ) -> Result<Response<wire::validate_state_store::Response>, Status> {
        unimplemented("state stores")
    }

    async fn configure_state_store(
        &self,
        _: Request<wire::configure_state_store::Request>,
    ) -> Result<Response<wire::configure_state_store::Response>, Status> {
        unimplemented("state stores")
    }

    type ReadStateBytesStream = Never<wire::read_state_bytes::Response>;

    async fn read_state_bytes(
        &self,
        _: Request<wire::read_state_bytes::Request>,
    ) -> Result<Response<Self::ReadStateBytesStream>, Status> {
        unimplemented("state stores")
    }

    async fn write_state_bytes(
        &self,
        _: Request<Streaming<wire::write_state_bytes::RequestChunk>>,
    ) -> Result<Response<wire::write_state_bytes::Response>, Status> {
        unimplemented("state stores")
    }

    async fn lock_state(
        &self,
        _: Request<wire::lock_state::Request>,
    ) -> Result<Response<wire::lock_state::Response>, Status> {
        unimplemented("state stores")
    }

    async fn unlock_state(
        &self,
        _: Request<wire::unlock_state::Request>,
    ) -> Result<Response<wire::unlock_state::Response>, Status> {
        unimplemented("state stores")
    }

    async fn get_states(
        &self,
        _: Request<wire::get_states::Request>,
    ) -> Result<Response<wire::get_states::Response>, Status> {
        unimplemented("state stores")
    }

    async fn delete_state(
        &self,
        _: Request<wire::delete_state::Request>,
    ) -> Result<Response<wire::delete_state::Response>, Status> {
        unimplemented("state stores")
    }
});
