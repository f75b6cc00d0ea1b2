//! The plugin server as a go-plugin host meets it: the announcement, mTLS on the Unix
//! socket (the host's certificate required), and `Shutdown`.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use terraform_provider_fleetform::handshake::Settings;
use terraform_provider_fleetform::plugin;
use terraform_provider_fleetform::proto::plugin::grpc_controller_client::GrpcControllerClient;
use terraform_provider_fleetform::proto::plugin::Empty;
use tonic::service::Routes;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// A host's certificate and key (PEM), made as go-plugin's client makes one for each
/// run (`mtls.go`: self-signed, `localhost`, a CA, client and server use).
fn host_identity() -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "localhost");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::KeyEncipherment,
        rcgen::KeyUsagePurpose::KeyAgreement,
        rcgen::KeyUsagePurpose::KeyCertSign,
    ];
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
    ];
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// The PEM of the certificate an announcement carries (DER, base64 without padding).
fn pem_of(announced: &str) -> String {
    let der = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(announced)
        .expect("the certificate is base64 without padding");
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|line| std::str::from_utf8(line).unwrap())
        .collect();
    format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        lines.join("\n")
    )
}

async fn connect(
    path: PathBuf,
    server_pem: &str,
    identity: Option<&(String, String)>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(server_pem))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    common::connect_unix(
        Endpoint::from_static("https://localhost").tls_config(tls)?,
        path,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_with_its_certificate_is_served_and_shuts_the_server_down() {
    let dir = tempfile::tempdir().unwrap();
    let host = host_identity();
    let settings = Settings {
        protocol: 5,
        ports: (0, 0),
        unix_socket_dir: Some(dir.path().display().to_string()),
        client_cert: Some(host.0.clone()),
    };
    let (announced, line) = tokio::sync::oneshot::channel();
    let server = tokio::spawn(async move {
        plugin::serve(&settings, Routes::default(), |line| {
            let _ = announced.send(line.to_string());
        })
        .await
    });
    let line = line.await.unwrap();
    let parts: Vec<&str> = line.split('|').collect();
    assert_eq!(parts.len(), 6, "{line}");
    assert_eq!(&parts[..3], ["1", "5", "unix"], "{line}");
    assert_eq!(parts[4], "grpc");
    let path = PathBuf::from(parts[3]);
    assert!(path.starts_with(dir.path()), "{line}");
    let server_pem = pem_of(parts[5]);

    // Without a certificate, or with one of its own: refused.
    let other = host_identity();
    for identity in [None, Some(&other)] {
        let stranger = async {
            let channel = connect(path.clone(), &server_pem, identity).await?;
            GrpcControllerClient::new(channel)
                .shutdown(Empty {})
                .await
                .map_err(|status| anyhow::anyhow!("{status}"))?;
            anyhow::Ok(())
        };
        assert!(
            stranger.await.is_err(),
            "a client without the host's certificate was served (its own: {})",
            identity.is_some()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!server.is_finished(), "a stranger stopped the server");
    }

    // With it: served, and Shutdown stops the server, which removes its socket.
    let channel = connect(path.clone(), &server_pem, Some(&host))
        .await
        .unwrap();
    GrpcControllerClient::new(channel)
        .shutdown(Empty {})
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the server stops after Shutdown")
        .unwrap()
        .unwrap();
    assert!(!path.exists(), "the socket is left behind");
}
