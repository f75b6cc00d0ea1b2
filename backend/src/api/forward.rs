//! Forwarding a zone's requests to the replica that holds its lease.
//!
//! A zone's placements, session ends and agent syncs are served where its picture (the
//! free-slot index) and its reconciler live: on the replica holding its lease. A replica
//! that gets one for a zone another replica holds passes it on once (marked with
//! [`FORWARDED`], so it is never passed on again) and relays the answer, status and
//! `Retry-After` included. Forwarding is for speed, not for correctness: when the holder
//! is unknown (a takeover in progress), or cannot be reached, the request is served here,
//! and the fence of `store/sql/leases.rs` serializes its writes with the holder's.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;

use super::AppState;

/// The header a forwarded request carries.
pub const FORWARDED: &str = "x-fleetform-forwarded";

/// The header of a placement's answer that names the replica serving its zone (its
/// `--replica-url`), on Postgres, where zones have leases: a client or router that sends the zone's
/// next placements there saves the hop through another replica, and one that cannot
/// reach it loses nothing (any replica still serves every zone).
pub const ZONE_REPLICA: &str = "x-fleetform-zone-replica";

/// The HTTP client replicas forward with.
#[derive(Debug, Clone)]
pub struct Forwarder {
    client: reqwest::Client,
}

impl Default for Forwarder {
    fn default() -> Self {
        Self::new()
    }
}

impl Forwarder {
    pub fn new() -> Self {
        Forwarder {
            client: reqwest::Client::builder()
                .no_proxy()
                .connect_timeout(std::time::Duration::from_secs(1))
                .pool_max_idle_per_host(256)
                .build()
                .expect("an HTTP client"),
        }
    }
}

/// The replica to pass a request for zone `zone` of fleet `fleet` to, unless this one
/// should serve it (it holds the zone, nobody does, or the request was forwarded already).
pub fn owner(state: &AppState, headers: &HeaderMap, fleet: &str, zone: &str) -> Option<String> {
    if headers.contains_key(FORWARDED) || !state.leases.has_peers() {
        return None;
    }
    state.leases.owner_url_of(fleet, zone)
}

/// Passes the request on to `base`; the answer, or `None` when the replica could not be
/// reached (the caller then serves it itself).
pub async fn send(
    state: &AppState,
    base: &str,
    method: Method,
    path: &str,
    headers: &HeaderMap,
    body: Vec<u8>,
) -> Option<Response> {
    let mut request = state
        .forward
        .client
        .request(method, format!("{base}{path}"))
        .header(FORWARDED, &state.leases.replica_id)
        .header(axum::http::header::CONTENT_TYPE, "application/json")
        .body(body);
    if let Some(authorization) = headers.get(axum::http::header::AUTHORIZATION) {
        request = request.header(axum::http::header::AUTHORIZATION, authorization);
    }
    let answer = match request.send().await {
        Ok(answer) => answer,
        Err(error) if error.is_connect() => {
            // Never sent: the holder is down (its lease not yet expired). Served here.
            tracing::debug!(%error, %base, %path, "the zone's replica is unreachable; serving it here");
            return None;
        }
        Err(error) => return Some(cut_off(&error, base, path)),
    };
    let status = StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let relayed = |name: &str| {
        answer
            .headers()
            .get(name)
            .and_then(|value| HeaderValue::from_bytes(value.as_bytes()).ok())
    };
    let retry_after = relayed(reqwest::header::RETRY_AFTER.as_str());
    let zone_replica = relayed(ZONE_REPLICA);
    let bytes = match answer.bytes().await {
        Ok(bytes) => bytes,
        Err(error) => return Some(cut_off(&error, base, path)),
    };
    let mut response = Response::builder()
        .status(status)
        .header(axum::http::header::CONTENT_TYPE, "application/json");
    if let Some(retry_after) = retry_after {
        response = response.header(axum::http::header::RETRY_AFTER, retry_after);
    }
    if let Some(zone_replica) = zone_replica {
        response = response.header(ZONE_REPLICA, zone_replica);
    }
    Some(response.body(Body::from(bytes)).expect("a valid response"))
}

/// The answer to a request that reached the zone's replica whose answer did not come
/// back: it may have acted, so serving it here could do it twice. The client is told to
/// retry (an idempotency key makes a retried placement safe).
fn cut_off(error: &reqwest::Error, base: &str, path: &str) -> Response {
    tracing::warn!(%error, %base, %path, "a forwarded request's answer was cut off");
    axum::response::IntoResponse::into_response(crate::Error::Unavailable {
        message: "the replica serving this zone stopped answering".into(),
        retry_after_secs: 1,
    })
}
