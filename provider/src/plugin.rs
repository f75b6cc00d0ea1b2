//! The plugin server a go-plugin host (Terraform, OpenTofu) talks to: go-plugin's own
//! services beside a provider service, on a Unix socket, with automatic mTLS, until the
//! host says to stop.
//!
//! What it does, where go-plugin's server (`server.go`) is the reference:
//! - listens on a Unix socket in `PLUGIN_UNIX_SOCKET_DIR` (else the temp directory), as
//!   go-plugin does on Unix. No TCP: on loopback TCP without `TCP_NODELAY` (what a
//!   stream handed to tonic's `serve_with_incoming` gets) each call waited for a delayed
//!   ACK, which is where most of a plan's time went;
//! - with the host's certificate (`PLUGIN_CLIENT_CERT`), serves TLS with a certificate
//!   made at start (`localhost`, as the host checks it) and **requires** exactly the
//!   host's certificate of every client: another local user cannot call the provider;
//! - serves `plugin.GRPCController` (`Shutdown`: the server stops and `serve` returns),
//!   `plugin.GRPCStdio` (an open, empty stream: the provider logs to stderr, never
//!   stdout) and `plugin.GRPCBroker` (idle: providers use no sub-services);
//! - ignores SIGINT: a Ctrl-C in the terminal reaches the provider too, and Terraform
//!   stops it through the protocol instead;
//! - announces itself on stdout once, then writes nothing more there.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::Notify;
use tokio_stream::Stream;
use tonic::service::Routes;
use tonic::transport::Server;
use tonic::{Request, Response, Status, Streaming};

use crate::handshake::{self, Address, Settings};
use crate::proto::plugin::{
    grpc_broker_server::{GrpcBroker, GrpcBrokerServer},
    grpc_controller_server::{GrpcController, GrpcControllerServer},
    grpc_stdio_server::{GrpcStdio, GrpcStdioServer},
    ConnInfo, Empty, StdioData,
};

/// The Unix socket the server listens on; removed when dropped.
pub struct Socket {
    path: PathBuf,
    listener: Option<tokio::net::UnixListener>,
}

impl Socket {
    /// Binds a fresh socket in `dir` (else the temp directory).
    pub fn bind(dir: Option<&str>) -> std::io::Result<Socket> {
        let dir = dir.map_or_else(std::env::temp_dir, PathBuf::from);
        // A name no other plugin has: the process id and a counter of tries.
        for attempt in 0..100u32 {
            let path = dir.join(format!("plugin-fleetform-{}-{attempt}", std::process::id()));
            match tokio::net::UnixListener::bind(&path) {
                Ok(listener) => {
                    return Ok(Socket {
                        path,
                        listener: Some(listener),
                    })
                }
                Err(error) if error.kind() == std::io::ErrorKind::AddrInUse => continue,
                Err(error) => {
                    return Err(std::io::Error::new(
                        error.kind(),
                        format!("bind {}: {error}", path.display()),
                    ))
                }
            }
        }
        Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            format!("no free socket name in {}", dir.display()),
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The server's side of automatic mTLS.
pub struct Tls {
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// Its certificate (DER), announced to the host.
    pub cert_der: Vec<u8>,
}

/// A certificate made now for `localhost` (what the host checks), and the host's
/// certificate (`client_cert_pem`) required of every client: that certificate exactly
/// (see [`HostOnly`]).
pub fn tls(client_cert_pem: &str) -> anyhow::Result<Tls> {
    use tokio_rustls::rustls;
    let host = rustls_pemfile::certs(&mut client_cert_pem.as_bytes())
        .next()
        .ok_or_else(|| anyhow::anyhow!("PLUGIN_CLIENT_CERT holds no PEM certificate"))??;
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()])?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "localhost");
    // Not a CA (go-plugin's is): the host trusts exactly this certificate (Go accepts a
    // leaf that is itself in its root pool), and rustls refuses a CA as an end entity.
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::KeyEncipherment,
        rcgen::KeyUsagePurpose::KeyAgreement,
    ];
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    // A host whose clock is a little behind still accepts it.
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::seconds(30);
    // Long-lived like go-plugin's own: a run that outlives it (a long apply) and reconnects
    // must not meet an expired certificate.
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(3650);
    let cert = params.self_signed(&key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(HostOnly {
        p521: p521_key(&host),
        host,
        provider: Arc::clone(&provider),
    });
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        // TLS 1.3 only (go-plugin's hosts negotiate it): in TLS 1.2 a P-521 key may sign
        // with any ECDSA scheme offered, some of which neither ring nor `verify_p521` check.
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Tls {
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        cert_der: cert.der().to_vec(),
    })
}

/// Accepts the host's own certificate and nothing else. go-plugin's host makes a fresh
/// self-signed certificate for each run and marks it a CA, which a chain verifier
/// refuses as a client's certificate (`CaUsedAsEndEntity`); pinning the exact
/// certificate (and checking the handshake's signature with its key) is what the host
/// means by handing it over, and admits no other.
///
/// go-plugin's key is ECDSA on P-521, which ring (rustls's provider here) does not verify:
/// offered only ring's schemes, Go's client finds none its key can sign and sends no
/// certificate at all. So P-521 signatures are checked with aws-lc (`aws-lc-rs`: 0.5 ms a
/// check where the pure-Rust `p521` crate took 2.5 ms, once in each of a plan's three
/// provider starts) and its scheme offered alongside ring's. (tf-provider's server made
/// the client certificate optional instead, so it served any local process that reached
/// its port.)
struct HostOnly {
    host: tokio_rustls::rustls::pki_types::CertificateDer<'static>,
    /// The host's key, when it is a P-521 one.
    p521: Option<aws_lc_rs::signature::ParsedPublicKey>,
    provider: Arc<tokio_rustls::rustls::crypto::CryptoProvider>,
}

impl std::fmt::Debug for HostOnly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostOnly")
            .field("host_cert_bytes", &self.host.len())
            .field("p521", &self.p521.is_some())
            .finish()
    }
}

/// The P-521 public key of a certificate (DER), if that is its key.
fn p521_key(cert: &[u8]) -> Option<aws_lc_rs::signature::ParsedPublicKey> {
    use x509_cert::der::Decode;
    let cert = x509_cert::Certificate::from_der(cert).ok()?;
    let key = cert
        .tbs_certificate
        .subject_public_key_info
        .subject_public_key;
    aws_lc_rs::signature::ParsedPublicKey::new(
        &aws_lc_rs::signature::ECDSA_P521_SHA512_ASN1,
        key.raw_bytes(),
    )
    .ok()
}

impl HostOnly {
    /// Checks a P-521 handshake signature by the host's certificate; `None` when the
    /// scheme is another (left to ring).
    fn verify_p521(
        &self,
        message: &[u8],
        cert: &tokio_rustls::rustls::pki_types::CertificateDer<'_>,
        dss: &tokio_rustls::rustls::DigitallySignedStruct,
    ) -> Option<
        Result<
            tokio_rustls::rustls::client::danger::HandshakeSignatureValid,
            tokio_rustls::rustls::Error,
        >,
    > {
        use tokio_rustls::rustls::{self, client::danger::HandshakeSignatureValid};
        if dss.scheme != rustls::SignatureScheme::ECDSA_NISTP521_SHA512 {
            return None;
        }
        let bad = || rustls::Error::InvalidCertificate(rustls::CertificateError::BadSignature);
        let Some(key) = self
            .p521
            .as_ref()
            .filter(|_| cert.as_ref() == self.host.as_ref())
        else {
            return Some(Err(bad()));
        };
        Some(
            key.verify_sig(message, dss.signature())
                .map(|()| HandshakeSignatureValid::assertion())
                .map_err(|_| bad()),
        )
    }
}

impl tokio_rustls::rustls::server::danger::ClientCertVerifier for HostOnly {
    fn root_hint_subjects(&self) -> &[tokio_rustls::rustls::DistinguishedName] {
        // No hint: the host sends its one certificate.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &tokio_rustls::rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[tokio_rustls::rustls::pki_types::CertificateDer<'_>],
        _now: tokio_rustls::rustls::pki_types::UnixTime,
    ) -> Result<tokio_rustls::rustls::server::danger::ClientCertVerified, tokio_rustls::rustls::Error>
    {
        use tokio_rustls::rustls;
        if end_entity.as_ref() == self.host.as_ref() {
            Ok(rustls::server::danger::ClientCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &tokio_rustls::rustls::pki_types::CertificateDer<'_>,
        dss: &tokio_rustls::rustls::DigitallySignedStruct,
    ) -> Result<
        tokio_rustls::rustls::client::danger::HandshakeSignatureValid,
        tokio_rustls::rustls::Error,
    > {
        if let Some(verdict) = self.verify_p521(message, cert, dss) {
            return verdict;
        }
        tokio_rustls::rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &tokio_rustls::rustls::pki_types::CertificateDer<'_>,
        dss: &tokio_rustls::rustls::DigitallySignedStruct,
    ) -> Result<
        tokio_rustls::rustls::client::danger::HandshakeSignatureValid,
        tokio_rustls::rustls::Error,
    > {
        if let Some(verdict) = self.verify_p521(message, cert, dss) {
            return verdict;
        }
        tokio_rustls::rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<tokio_rustls::rustls::SignatureScheme> {
        let mut schemes = self
            .provider
            .signature_verification_algorithms
            .supported_schemes();
        if self.p521.is_some() {
            schemes.push(tokio_rustls::rustls::SignatureScheme::ECDSA_NISTP521_SHA512);
        }
        schemes
    }
}

/// How long a client may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Connections of `listener`, each through the TLS handshake (in a task of its own, so a
/// client that stalls or fails it holds up no other; a failed or stalled one is dropped).
fn tls_incoming(
    listener: tokio::net::UnixListener,
    acceptor: tokio_rustls::TlsAcceptor,
) -> tokio_stream::wrappers::ReceiverStream<
    std::io::Result<tokio_rustls::server::TlsStream<tokio::net::UnixStream>>,
> {
    let (sender, receiver) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                // A failed accept (out of descriptors, an aborted connection) is this
                // connection's: ending the stream would end the server mid-run.
                Err(error) => {
                    eprintln!("[WARN] plugin connection not accepted: {error}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let (acceptor, sender) = (acceptor.clone(), sender.clone());
            tokio::spawn(async move {
                let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream));
                match handshake.await {
                    Ok(Ok(tls)) => {
                        let _ = sender.send(Ok(tls)).await;
                    }
                    Ok(Err(error)) => eprintln!("[WARN] plugin connection refused: {error}"),
                    Err(_) => eprintln!("[WARN] plugin connection refused: no TLS handshake"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(receiver)
}

/// Serves `provider` with go-plugin's services as `settings` say, announcing the server
/// through `announce` (stdout in the provider), until the host's `Shutdown`.
pub async fn serve(
    settings: &Settings,
    provider: Routes,
    announce: impl FnOnce(&str),
) -> anyhow::Result<()> {
    ignore_interrupts();
    let mut socket = Socket::bind(settings.unix_socket_dir.as_deref())?;
    let tls = settings.client_cert.as_deref().map(tls).transpose()?;
    let stop = Arc::new(Notify::new());
    let routes = provider
        .add_service(GrpcControllerServer::new(Controller {
            stop: Arc::clone(&stop),
        }))
        .add_service(GrpcStdioServer::new(Stdio))
        .add_service(GrpcBrokerServer::new(Broker));
    let listener = socket.listener.take().expect("bound above");
    let address = Address::Unix(socket.path().display().to_string());
    announce(&handshake::announcement(
        settings.protocol,
        &address,
        tls.as_ref().map(|tls| tls.cert_der.as_slice()),
    ));
    let server = Server::builder().add_routes(routes);
    let stopped = stop.notified_owned();
    match tls {
        Some(tls) => {
            server
                .serve_with_incoming_shutdown(tls_incoming(listener, tls.acceptor), stopped)
                .await?
        }
        None => {
            server
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::UnixListenerStream::new(listener),
                    stopped,
                )
                .await?
        }
    }
    drop(socket);
    Ok(())
}

/// SIGINT is for Terraform, which stops the provider through the protocol. The handler
/// is in place when this returns (a SIGINT right after is ignored too); call it within
/// the runtime.
pub fn ignore_interrupts() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::interrupt()) {
        Ok(mut interrupts) => {
            tokio::spawn(async move { while interrupts.recv().await.is_some() {} });
        }
        Err(error) => eprintln!("[WARN] SIGINT cannot be ignored: {error}"),
    }
}

/// `plugin.GRPCController`: `Shutdown` stops the server.
struct Controller {
    stop: Arc<Notify>,
}

#[tonic::async_trait]
impl GrpcController for Controller {
    async fn shutdown(&self, _: Request<Empty>) -> Result<Response<Empty>, Status> {
        // Stored if the server is not waiting yet: the stop is never lost.
        self.stop.notify_one();
        Ok(Response::new(Empty {}))
    }
}

type Never<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// `plugin.GRPCStdio`: an open stream that sends nothing (the provider writes to stderr).
struct Stdio;

#[tonic::async_trait]
impl GrpcStdio for Stdio {
    type StreamStdioStream = Never<StdioData>;

    async fn stream_stdio(
        &self,
        _: Request<()>,
    ) -> Result<Response<Self::StreamStdioStream>, Status> {
        Ok(Response::new(Box::pin(tokio_stream::pending())))
    }
}

/// `plugin.GRPCBroker`: idle (a provider offers the host no sub-services).
struct Broker;

#[tonic::async_trait]
impl GrpcBroker for Broker {
    type StartStreamStream = Never<ConnInfo>;

    async fn start_stream(
        &self,
        _: Request<Streaming<ConnInfo>>,
    ) -> Result<Response<Self::StartStreamStream>, Status> {
        Ok(Response::new(Box::pin(tokio_stream::pending())))
    }
}
