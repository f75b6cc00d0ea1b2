//! Event routes for operators: `GET /v1/events` and `GET /v1/fleets/{id}/events`
//! (DESIGN.md §4), newest first.

use std::collections::HashMap;

use axum::extract::State;
use axum::Json;
use fleetform_api::{Event, EventLevel, EventList, EventProducer};

use super::admin::load_fleet;
use super::extract::{Id, QueryMap};
use super::AppState;
use crate::store::{EventFilter, EventRecord};
use crate::time::rfc3339;
use crate::{Error, Result};

/// `GET /v1/events?fleet=&zone=&machine=&level=&producer=&text=&limit=`.
pub async fn list(
    State(state): State<AppState>,
    QueryMap(query): QueryMap,
) -> Result<Json<EventList>> {
    let mut filter = parse_filter(query, true)?;
    if let Some(fleet) = &filter.fleet_id {
        // A live fleet may be named; an unknown value is kept as an id, since events
        // outlive their fleet and a deleted fleet's history stays readable.
        if let Some(found) = state.store.get_fleet(fleet).await? {
            filter.fleet_id = Some(found.id);
        }
    }
    respond(&state, &filter).await
}

/// `GET /v1/fleets/{id}/events`: the same filters but `fleet`; the fleet must exist.
pub async fn fleet_events(
    State(state): State<AppState>,
    Id(id): Id,
    QueryMap(query): QueryMap,
) -> Result<Json<EventList>> {
    // Filters first: bad input is reported the same whether or not the fleet exists.
    let mut filter = parse_filter(query, false)?;
    filter.fleet_id = Some(load_fleet(&state, &id).await?.id);
    respond(&state, &filter).await
}

async fn respond(state: &AppState, filter: &EventFilter) -> Result<Json<EventList>> {
    let events = state.store.list_events(filter).await?;
    Ok(Json(EventList {
        events: events.items.into_iter().map(event_view).collect(),
        next_cursor: events.next_cursor,
    }))
}

/// The filters of a query string; `with_fleet` is false on a fleet's own route.
fn parse_filter(query: HashMap<String, String>, with_fleet: bool) -> Result<EventFilter> {
    let mut filter = EventFilter::default();
    for (key, value) in query {
        match key.as_str() {
            "fleet" if with_fleet => filter.fleet_id = Some(value),
            "zone" => filter.zone_id = Some(value),
            "machine" => filter.machine_id = Some(value),
            "level" => {
                filter.level = Some(
                    value
                        .parse::<EventLevel>()
                        .map_err(|message| Error::invalid("level", message))?,
                )
            }
            "producer" => {
                filter.producer = Some(
                    value
                        .parse::<EventProducer>()
                        .map_err(|message| Error::invalid("producer", message))?,
                )
            }
            "text" => filter.text = Some(value),
            "limit" => {
                filter.limit = value
                    .parse::<u32>()
                    .ok()
                    .filter(|limit| (1..=EventFilter::MAX_LIMIT).contains(limit))
                    .ok_or_else(|| {
                        Error::invalid(
                            "limit",
                            format!("must be an integer from 1 to {}", EventFilter::MAX_LIMIT),
                        )
                    })?
            }
            "cursor" => filter.cursor = Some(value),
            other => {
                let known = if with_fleet {
                    "fleet, zone, machine, level, producer, text, limit, cursor"
                } else {
                    "zone, machine, level, producer, text, limit, cursor"
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

fn event_view(event: EventRecord) -> Event {
    Event {
        id: event.id,
        time: rfc3339(event.at_ms),
        level: event.level,
        producer: event.producer,
        code: event.code,
        fleet_id: event.fleet_id,
        zone_id: event.zone_id,
        machine_id: event.machine_id,
        message: event.message,
    }
}
