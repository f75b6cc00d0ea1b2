//! Plugin protocol 5 (`tfplugin5.Provider`): the calls named differently from protocol 6;
//! the rest is the shared [`adapter!`](super::adapter).

super::adapter!(ProviderV5, tfplugin5, schema_v5, {
    async fn get_schema(
        &self,
        _: Request<wire::get_provider_schema::Request>,
    ) -> Result<Response<wire::get_provider_schema::Response>, Status> {
        Ok(Response::new(schemas(&self.core)))
    }

    async fn prepare_provider_config(
        &self,
        request: Request<wire::prepare_provider_config::Request>,
    ) -> Result<Response<wire::prepare_provider_config::Response>, Status> {
        let config = request.into_inner().config;
        let diags = self.core.validate_provider(&value(config.clone()));
        Ok(Response::new(wire::prepare_provider_config::Response {
            // Nothing to prepare: the configuration as written.
            prepared_config: config,
            diagnostics: diagnostics(diags),
        }))
    }

    async fn validate_resource_type_config(
        &self,
        request: Request<wire::validate_resource_type_config::Request>,
    ) -> Result<Response<wire::validate_resource_type_config::Response>, Status> {
        let request = request.into_inner();
        let diags = self
            .core
            .validate_resource(&request.type_name, &value(request.config));
        Ok(Response::new(
            wire::validate_resource_type_config::Response {
                diagnostics: diagnostics(diags),
            },
        ))
    }

    async fn validate_data_source_config(
        &self,
        request: Request<wire::validate_data_source_config::Request>,
    ) -> Result<Response<wire::validate_data_source_config::Response>, Status> {
        let request = request.into_inner();
        let diags = self
            .core
            .validate_data_source(&request.type_name, &value(request.config));
        Ok(Response::new(wire::validate_data_source_config::Response {
            diagnostics: diagnostics(diags),
        }))
    }

    async fn configure(
        &self,
        request: Request<wire::configure::Request>,
    ) -> Result<Response<wire::configure::Response>, Status> {
        let diags = self.core.configure(&value(request.into_inner().config));
        Ok(Response::new(wire::configure::Response {
            diagnostics: diagnostics(diags),
        }))
    }

    async fn stop(
        &self,
        _: Request<wire::stop::Request>,
    ) -> Result<Response<wire::stop::Response>, Status> {
        // Calls in flight finish on their own (each is bounded by its timeout); the
        // controller's `Shutdown` ends the process.
        Ok(Response::new(wire::stop::Response::default()))
    }
});
