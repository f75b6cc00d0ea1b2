//! What the provider's tests share: reaching the plugin server on its Unix socket, as a
//! go-plugin host does.

use std::path::PathBuf;

use tonic::transport::{Channel, Endpoint};

/// A gRPC channel to the server on the Unix socket `path` (`endpoint` carries the TLS
/// settings, if any; its address only names the server).
pub async fn connect_unix(
    endpoint: Endpoint,
    path: PathBuf,
) -> Result<Channel, tonic::transport::Error> {
    endpoint
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }))
        .await
}
