// terraform-provider-floor: the least a plugin can do, on HashiCorp's own plugin server
// (go-plugin, with its automatic mTLS) and grpc-go, as the Go SDKs serve providers. It
// serves protocol 6 with one resource, `floor_build`, whose schema is fleetform_build's,
// validates nothing and plans the proposed state as it comes. scripts/plan-bench.sh plans
// it beside fleetform_build and terraform_data: what it costs over terraform_data is what
// Terraform and its plugin machinery cost any provider, before any provider logic.
package main

import (
	"context"

	protov1 "github.com/golang/protobuf/proto"
	plugin "github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	protov2 "google.golang.org/protobuf/proto"

	"floor/tfplugin6"
)

type provider struct {
	tfplugin6.UnimplementedProviderServer
}

func attribute(name string, required, optional, computed bool) *tfplugin6.Schema_Attribute {
	return &tfplugin6.Schema_Attribute{
		Name: name, Type: []byte(`"string"`), Description: name,
		Required: required, Optional: optional, Computed: computed,
	}
}

func (provider) GetProviderSchema(context.Context, *tfplugin6.GetProviderSchema_Request) (*tfplugin6.GetProviderSchema_Response, error) {
	return &tfplugin6.GetProviderSchema_Response{
		Provider: &tfplugin6.Schema{Block: &tfplugin6.Schema_Block{Attributes: []*tfplugin6.Schema_Attribute{
			attribute("endpoint", false, true, false),
			attribute("token", false, true, false),
		}}},
		ResourceSchemas: map[string]*tfplugin6.Schema{
			"floor_build": {Block: &tfplugin6.Schema_Block{Attributes: []*tfplugin6.Schema_Attribute{
				attribute("id", false, false, true),
				attribute("name", true, false, false),
				attribute("version", false, true, false),
				attribute("operating_system", false, true, true),
				attribute("source", true, false, false),
				attribute("sha256", false, true, false),
				attribute("created_at", false, false, true),
			}}},
		},
		ServerCapabilities: &tfplugin6.ServerCapabilities{PlanDestroy: true, GetProviderSchemaOptional: true},
	}, nil
}

func (provider) ValidateProviderConfig(context.Context, *tfplugin6.ValidateProviderConfig_Request) (*tfplugin6.ValidateProviderConfig_Response, error) {
	return &tfplugin6.ValidateProviderConfig_Response{}, nil
}

func (provider) ValidateResourceConfig(context.Context, *tfplugin6.ValidateResourceConfig_Request) (*tfplugin6.ValidateResourceConfig_Response, error) {
	return &tfplugin6.ValidateResourceConfig_Response{}, nil
}

func (provider) ConfigureProvider(context.Context, *tfplugin6.ConfigureProvider_Request) (*tfplugin6.ConfigureProvider_Response, error) {
	return &tfplugin6.ConfigureProvider_Response{}, nil
}

func (provider) PlanResourceChange(_ context.Context, request *tfplugin6.PlanResourceChange_Request) (*tfplugin6.PlanResourceChange_Response, error) {
	return &tfplugin6.PlanResourceChange_Response{PlannedState: request.ProposedNewState}, nil
}

func (provider) StopProvider(context.Context, *tfplugin6.StopProvider_Request) (*tfplugin6.StopProvider_Response, error) {
	return &tfplugin6.StopProvider_Response{}, nil
}

// servePlugin hands the provider service to go-plugin's gRPC server.
type servePlugin struct{ plugin.Plugin }

func (servePlugin) GRPCServer(_ *plugin.GRPCBroker, server *grpc.Server) error {
	tfplugin6.RegisterProviderServer(server, provider{})
	return nil
}

func (servePlugin) GRPCClient(context.Context, *plugin.GRPCBroker, *grpc.ClientConn) (interface{}, error) {
	return nil, nil
}

// codec: the protocol's messages are generated for the current protobuf API, go-plugin's
// own (its controller, broker) for the old one, which is all Debian's grpc-go 1.33 knows.
type codec struct{}

func (codec) Name() string { return "proto" }

func (codec) Marshal(v interface{}) ([]byte, error) {
	if message, ok := v.(protov2.Message); ok {
		return protov2.Marshal(message)
	}
	return protov1.Marshal(v.(protov1.Message))
}

func (codec) Unmarshal(data []byte, v interface{}) error {
	if message, ok := v.(protov2.Message); ok {
		return protov2.Unmarshal(data, message)
	}
	return protov1.Unmarshal(data, v.(protov1.Message))
}

func main() {
	encoding.RegisterCodec(codec{})
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig: plugin.HandshakeConfig{
			MagicCookieKey:   "TF_PLUGIN_MAGIC_COOKIE",
			MagicCookieValue: "d602bf8f470bc67ca7faa0386276bbdd4330efaf76d1a219cb4d6991ca9872b2",
		},
		VersionedPlugins: map[int]plugin.PluginSet{6: {"provider": servePlugin{}}},
		GRPCServer:       plugin.DefaultGRPCServer,
	})
}
