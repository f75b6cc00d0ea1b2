//! The load generator's HTTP client: one keep-alive HTTP/1.1 connection per worker,
//! straight on hyper, so the client costs the shared CPU as little as it can.

use std::net::SocketAddr;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;

/// One connection to fleetformd.
pub struct Connection {
    sender: SendRequest<Full<Bytes>>,
    authorization: String,
    host: String,
}

/// A placement's answer.
pub struct Placement {
    pub status: StatusCode,
    pub id: Option<String>,
    pub zone_replica: Option<String>,
}

#[derive(Deserialize)]
struct Placed {
    id: String,
}

/// The body of a placement in `zone`.
pub fn placement_body(zone: &str) -> Bytes {
    Bytes::from(format!(r#"{{"zone":"{zone}"}}"#))
}

impl Connection {
    pub async fn open(address: SocketAddr, token: &str) -> anyhow::Result<Connection> {
        let stream = tokio::net::TcpStream::connect(address)
            .await
            .with_context(|| format!("connect to {address}"))?;
        stream.set_nodelay(true)?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Connection {
            sender,
            authorization: format!("Bearer {token}"),
            host: address.to_string(),
        })
    }

    async fn post(
        &mut self,
        path: &str,
        body: Bytes,
    ) -> anyhow::Result<(StatusCode, hyper::HeaderMap, Bytes)> {
        self.sender.ready().await?;
        let request = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(hyper::header::HOST, &self.host)
            .header(hyper::header::AUTHORIZATION, &self.authorization)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))?;
        let response = self.sender.send_request(request).await?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, headers, body))
    }

    /// Places a session (`body`: see [`placement_body`]) in `fleet`: the answer's status,
    /// on a 201 the session's id, and the replica the answer names as its zone's
    /// (`x-fleetform-zone-replica`).
    pub async fn place(&mut self, fleet: &str, body: Bytes) -> anyhow::Result<Placement> {
        let (status, headers, body) = self
            .post(&format!("/v1/fleets/{fleet}/sessions"), body)
            .await?;
        let id = if status == StatusCode::CREATED {
            Some(serde_json::from_slice::<Placed>(&body)?.id)
        } else {
            None
        };
        let zone_replica = headers
            .get("x-fleetform-zone-replica")
            .and_then(|value| value.to_str().ok())
            .map(str::to_string);
        Ok(Placement {
            status,
            id,
            zone_replica,
        })
    }

    /// Ends a session.
    pub async fn end(&mut self, session: &str) -> anyhow::Result<StatusCode> {
        let (status, _, _) = self
            .post(&format!("/v1/sessions/{session}/end"), Bytes::new())
            .await?;
        Ok(status)
    }
}
