//! Crash routes for operators: `GET /v1/crashes` and `GET /v1/fleets/{id}/crashes`
//! (DESIGN.md §4), newest first. Same shape and error rules as the event routes.

use std::collections::HashMap;

use axum::extract::State;
use axum::Json;
use fleetform_api::{Crash, CrashList};

use super::admin::load_fleet;
use super::extract::{Id, QueryMap};
use super::AppState;
use crate::store::{CrashFilter, CrashRecord};
use crate::time::rfc3339;
use crate::{Error, Result};

/// `GET /v1/crashes?fleet=&zone=&machine=&build=&limit=`.
pub async fn list(
    State(state): State<AppState>,
    QueryMap(query): QueryMap,
) -> Result<Json<CrashList>> {
    let mut filter = parse_filter(query, true)?;
    if let Some(fleet) = &filter.fleet_id {
        // A live fleet may be named; an unknown value is kept as an id, since crashes
        // outlive their fleet.
        if let Some(found) = state.store.get_fleet(fleet).await? {
            filter.fleet_id = Some(found.id);
        }
    }
    respond(&state, &filter).await
}

/// `GET /v1/fleets/{id}/crashes`: the same filters but `fleet`; the fleet must exist.
pub async fn fleet_crashes(
    State(state): State<AppState>,
    Id(id): Id,
    QueryMap(query): QueryMap,
) -> Result<Json<CrashList>> {
    // Filters first: bad input is reported the same whether or not the fleet exists.
    let mut filter = parse_filter(query, false)?;
    filter.fleet_id = Some(load_fleet(&state, &id).await?.id);
    respond(&state, &filter).await
}

async fn respond(state: &AppState, filter: &CrashFilter) -> Result<Json<CrashList>> {
    let crashes = state.store.list_crashes(filter).await?;
    Ok(Json(CrashList {
        crashes: crashes.items.into_iter().map(crash_view).collect(),
        next_cursor: crashes.next_cursor,
    }))
}

/// The filters of a query string; `with_fleet` is false on a fleet's own route.
fn parse_filter(query: HashMap<String, String>, with_fleet: bool) -> Result<CrashFilter> {
    let mut filter = CrashFilter::default();
    for (key, value) in query {
        match key.as_str() {
            "fleet" if with_fleet => filter.fleet_id = Some(value),
            "zone" => filter.zone_id = Some(value),
            "machine" => filter.machine_id = Some(value),
            "build" => filter.build_id = Some(value),
            "limit" => {
                filter.limit = value
                    .parse::<u32>()
                    .ok()
                    .filter(|limit| (1..=CrashFilter::MAX_LIMIT).contains(limit))
                    .ok_or_else(|| {
                        Error::invalid(
                            "limit",
                            format!("must be an integer from 1 to {}", CrashFilter::MAX_LIMIT),
                        )
                    })?
            }
            "cursor" => filter.cursor = Some(value),
            other => {
                let known = if with_fleet {
                    "fleet, zone, machine, build, limit, cursor"
                } else {
                    "zone, machine, build, limit, cursor"
                };
                return Err(Error::BadRequest {
                    message: format!("unknown filter {other:?}; filters: {known}"),
                    field: Some(other.to_string()),
                });
            }
        }
    }
    Ok(filter)
}

fn crash_view(crash: CrashRecord) -> Crash {
    Crash {
        id: crash.id,
        fleet_id: crash.fleet_id,
        zone_id: crash.zone_id,
        machine_id: crash.machine_id,
        process_id: crash.process_id,
        build_id: crash.build_id,
        exit_code: crash.exit_code,
        signal: crash.signal,
        time: rfc3339(crash.at_ms),
        output_tail: crash.output_tail,
        core_dump: crash.core_dump,
    }
}
