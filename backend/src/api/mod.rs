//! fleetformd's HTTP API (`/v1`, JSON, bearer tokens). API boundary: the bodies are the
//! `fleetform_api` wire types; every error is an [`Error`] turned into
//! `{ "error": { "code", "message", "field" } }` with its status.

mod admin;
mod agent;
mod bare_metal;
mod crashes;
mod events;
pub mod extract;
pub mod forward;
mod placement;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use std::sync::atomic::{AtomicBool, Ordering};

use crate::leases::Leases;
use crate::machines::Locations;
use crate::store::Store;
use crate::zones::Demand;
use crate::Error;

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub locations: Arc<Locations>,
    pub admin_token: Arc<str>,
    pub heartbeat_interval: Duration,
    /// Placement requests per zone (shared with the reconciler's forecast).
    pub demand: Arc<Demand>,
    /// Which zones this replica holds, and who holds the others.
    pub leases: Arc<Leases>,
    /// Shutting down: `/readyz` answers 503.
    pub draining: Arc<AtomicBool>,
    /// True once held requests (agent syncs, waiting placements) should answer now.
    pub closing: Arc<tokio::sync::watch::Sender<bool>>,
    /// Passes a zone's requests to the replica holding it.
    pub forward: forward::Forwarder,
}

impl AppState {
    /// The state of a server on `store` alone: a replica of its own, holding no lease
    /// (every request is served here), never shutting down until told.
    pub fn new(
        store: Arc<dyn Store>,
        locations: Arc<Locations>,
        admin_token: &str,
        heartbeat_interval: Duration,
        demand: Arc<Demand>,
    ) -> AppState {
        AppState {
            store,
            locations,
            admin_token: admin_token.into(),
            heartbeat_interval,
            demand,
            leases: Leases::new(
                crate::time::new_id("rep"),
                String::new(),
                crate::config::DEFAULT_LEASE_TTL,
            ),
            draining: Arc::default(),
            closing: Arc::new(tokio::sync::watch::channel(false).0),
            forward: forward::Forwarder::new(),
        }
    }

    /// Resolves when held requests should answer (shutdown).
    pub async fn closed(&self) {
        let mut closing = self.closing.subscribe();
        let _ = closing.wait_for(|closing| *closing).await;
    }
}

/// The whole API as a router, testable with `oneshot` and no socket.
pub fn router(state: AppState) -> Router {
    let admin = Router::new()
        .route("/v1/builds", post(admin::create_build))
        .route(
            "/v1/builds/{id}",
            get(admin::get_build)
                .put(admin::update_build)
                .delete(admin::delete_build),
        )
        .route("/v1/fleets", post(admin::create_fleet))
        .route(
            "/v1/fleets/{id}",
            get(admin::get_fleet)
                .put(admin::update_fleet)
                .delete(admin::delete_fleet),
        )
        .route("/v1/fleets/{id}/machines", get(admin::fleet_machines))
        .route("/v1/machines/{id}/revoke", post(admin::revoke_machine))
        .route("/v1/machines/{id}/reboot", post(admin::reboot_machine))
        .route(
            "/v1/bare-metal-machines",
            get(bare_metal::list).post(bare_metal::create),
        )
        .route(
            "/v1/bare-metal-machines/{id}",
            get(bare_metal::get)
                .put(bare_metal::update)
                .delete(bare_metal::delete),
        )
        .route("/v1/fleets/{id}/processes", get(admin::fleet_processes))
        .route("/v1/fleets/{id}/events", get(events::fleet_events))
        .route("/v1/fleets/{id}/crashes", get(crashes::fleet_crashes))
        .route("/v1/zones", post(admin::create_zone))
        .route(
            "/v1/zones/{id}",
            get(admin::get_zone)
                .put(admin::update_zone)
                .delete(admin::delete_zone),
        )
        .route("/v1/zones/{id}/status", get(admin::zone_status))
        .route("/v1/locations", get(admin::locations))
        .route("/v1/fleets/{id}/sessions", post(placement::place))
        .route("/v1/sessions", get(placement::list))
        .route("/v1/sessions/{id}", get(placement::get))
        .route("/v1/sessions/{id}/end", post(placement::end))
        .route("/v1/events", get(events::list))
        .route("/v1/crashes", get(crashes::list))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_admin));
    Router::new()
        .merge(admin)
        // Agents authenticate with their machine's own token, checked by the handler.
        .route("/v1/agent/sync", post(agent::sync))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(extract::MAX_BODY_BYTES))
        .with_state(state)
}

async fn require_admin(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    match presented {
        Some(token) if constant_time_eq(token.as_bytes(), state.admin_token.as_bytes()) => {
            next.run(request).await
        }
        _ => Error::Unauthorized.into_response(),
    }
}

/// Compares secrets without an early exit that would leak how much matched.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The bearer token of a request, if any.
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
}

async fn healthz() -> impl IntoResponse {
    Json(serde_json::json!({ "status": "ok" }))
}

/// Ready while serving: 503 from the moment a shutdown begins (so a load balancer stops
/// sending new requests before the listener closes), and while the store cannot answer.
async fn readyz(State(state): State<AppState>) -> Response {
    if state.draining.load(Ordering::SeqCst) {
        let body = Json(serde_json::json!({ "status": "draining" }));
        return (axum::http::StatusCode::SERVICE_UNAVAILABLE, body).into_response();
    }
    match state.store.get_build("readyz-probe").await {
        Ok(_) => Json(serde_json::json!({ "status": "ready" })).into_response(),
        Err(error) => error.into_response(),
    }
}

async fn not_found(request: Request) -> Error {
    Error::not_found("route", request.uri().path().to_string())
}

async fn method_not_allowed() -> Response {
    let body = fleetform_api::ErrorBody {
        error: fleetform_api::ErrorDetail {
            code: "method_not_allowed".into(),
            message: "this route does not take that method".into(),
            field: None,
        },
    };
    (axum::http::StatusCode::METHOD_NOT_ALLOWED, Json(body)).into_response()
}
