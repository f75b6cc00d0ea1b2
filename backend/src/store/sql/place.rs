//! Placing and ending sessions: the hot path.
//!
//! A placement runs on the writer, inside the batch's transaction: the fleet and zone come
//! from the picture (so a build change committed before is always seen), the process from
//! the zone's free-slot index, and then two statements: the guarded `UPDATE` that takes
//! the slot and the `INSERT` of the session (on Postgres one: both in a `WITH`, see
//! `take_and_insert_postgres`). The guard restates every rule of
//! [`ProcessRecord::takes_sessions`](crate::store::ProcessRecord::takes_sessions) and of
//! the zone and fleet in SQL, so it holds however stale the picture is: when it refuses,
//! the picture of that machine is reloaded and the next best process is tried.
//!
//! Both run without a savepoint of their own ([`Writer::write_plain`]): each statement is
//! atomic, and every error they return comes before their first change, but for a failed
//! `INSERT` of a session after its slot was taken (a duplicate session id), which fails
//! the batch rather than commit half a placement.
//!
//! [`Writer::write_plain`]: super::writer::Writer::write_plain

use fleetform_api::{ResourceStatus, Session, SessionStatus};

use super::load;
use super::rows::{self, SESSION_COLUMNS};
use super::writer::Ctx;
use crate::changes::Notice;
use crate::store::db::{args, Dialect, ToArg};
use crate::store::{EndOutcome, PlaceArgs, PlaceOutcome};
use crate::time::rfc3339;
use crate::{Error, Result};

/// How many processes one placement tries when guards refuse (each refusal reloads that
/// machine, so a second refusal of the same one is not expected).
const MAX_TRIES: usize = 8;

/// Takes one slot of a process for a new session. Guard: the process is `READY`, not
/// marked for restart, of its fleet's current build, younger than the fleet's
/// `process_restart_hours`, below its slot count (and unused, in simple mode), on an
/// `ACTIVE` machine of a zone that is not being deleted: all read in this statement.
const TAKE_SLOT: &str = "UPDATE processes
    SET active_sessions = active_sessions + 1, sessions_started = sessions_started + 1
    WHERE id = ?1 AND agent_state = 'READY' AND NOT restart_requested
      AND EXISTS (
        SELECT 1 FROM fleets f
        WHERE f.id = ?2 AND f.id = processes.fleet_id AND f.build_id = processes.build_id
          AND (f.process_restart_hours = 0 OR processes.started_at >= ?3 - f.process_restart_hours * 3600000)
          AND processes.active_sessions <
              CASE WHEN f.session_mode = 'simple' OR f.sessions_per_process < 1 THEN 1 ELSE f.sessions_per_process END
          AND (f.session_mode <> 'simple' OR processes.sessions_started = 0))
      AND EXISTS (SELECT 1 FROM machines m WHERE m.id = processes.machine_id AND m.status = 'ACTIVE')
      AND EXISTS (SELECT 1 FROM zones z WHERE z.id = processes.zone_id AND NOT z.deleting)";

const INSERT_SESSION: &str = "INSERT INTO sessions (id, fleet_id, zone_id, zone_name, data_center,
        machine_id, process_id, build_id, address, port, status, max_players, properties,
        idempotency_key, created_at)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 'ACTIVE', ?11, ?12, ?13, ?14)";

/// Postgres takes the slot and inserts the session in one statement (one round trip
/// instead of two; a round trip costs more than either statement): `TAKE_SLOT` in a `WITH`,
/// the `INSERT` of the session from its `RETURNING`, so a refused slot inserts nothing.
/// Parameters: `?1`–`?3` as in `TAKE_SLOT`, then the session's columns as in
/// `INSERT_SESSION`, from `?4`.
fn take_and_insert_postgres() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        format!(
            "WITH taken AS ({TAKE_SLOT} RETURNING processes.id)
             INSERT INTO sessions (id, fleet_id, zone_id, zone_name, data_center,
                 machine_id, process_id, build_id, address, port, status, max_players, properties,
                 idempotency_key, created_at)
             SELECT ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, 'ACTIVE', ?14, ?15, ?16, ?17
             FROM taken"
        )
    })
}

/// The zone a placement names, loaded into the picture.
fn zone_of(ctx: &mut Ctx<'_>, fleet_id: &str, fleet_name: &str, zone: &str) -> Result<String> {
    if let Some(id) = ctx.hot.zone_id_of(fleet_id, zone) {
        return Ok(id);
    }
    let id: Option<String> = rows::first(
        ctx.conn,
        "SELECT id FROM zones WHERE fleet_id = ?1 AND (id = ?2 OR name = ?2) ORDER BY id = ?2 DESC LIMIT 1",
        args![fleet_id, zone],
        |row| Ok(row.get(0)?),
    )?;
    let not_found = || Error::invalid("zone", format!("fleet {fleet_name} has no zone {zone:?}"));
    let id = id.ok_or_else(not_found)?;
    if !load::zone(ctx, &id)? {
        return Err(not_found());
    }
    Ok(id)
}

/// See [`Store::place_session`](crate::store::Store::place_session).
pub fn place(ctx: &mut Ctx<'_>, args: PlaceArgs) -> Result<PlaceOutcome> {
    let fleet =
        load::fleet(ctx, &args.fleet)?.ok_or_else(|| Error::not_found("fleet", &args.fleet))?;
    let zone_id = zone_of(ctx, &fleet.id, &fleet.name, &args.zone)?;
    super::leases::fence(ctx, &zone_id)?;
    {
        let zone = &ctx.hot.zones[&zone_id];
        if zone.record.deleting {
            return Err(Error::conflict(
                "zone_deleting",
                format!("zone {} is being deleted", zone.record.zone.spec.name),
            ));
        }
    }
    if let Some(key) = &args.idempotency_key {
        let earlier = rows::first(
            ctx.conn,
            &format!(
                "SELECT {SESSION_COLUMNS} FROM sessions WHERE fleet_id = ?1 AND idempotency_key = ?2"
            ),
            args![fleet.id, key],
            rows::session,
        )?;
        if let Some(session) = earlier {
            return Ok(PlaceOutcome::Repeated(session));
        }
    }
    let properties =
        serde_json::to_string(&args.properties).map_err(|e| Error::Internal(e.to_string()))?;
    for _ in 0..MAX_TRIES {
        let zone = ctx.hot.zones.get_mut(&zone_id).expect("loaded above");
        let Some(candidate) = zone.choose(&args.latencies_ms, args.max_latency_ms, args.now_ms)
        else {
            break;
        };
        let zone_name = zone.record.zone.spec.name.clone();
        let machine = &zone.machines[&candidate.machine_id];
        let process = &machine.processes()[&candidate.process_id];
        let session = Session {
            id: args.session_id.clone(),
            fleet_id: fleet.id.clone(),
            zone: zone_name,
            zone_id: zone_id.clone(),
            data_center: candidate.data_center.clone(),
            machine_id: candidate.machine_id.clone(),
            process_id: candidate.process_id.clone(),
            build_id: process.record.build_id.clone(),
            address: machine.record().address.clone().unwrap_or_default(),
            port: process.record.port,
            status: SessionStatus::Active,
            max_players: args.max_players,
            properties: args.properties.clone(),
            created_at: rfc3339(args.now_ms),
            ended_at: None,
            reason: None,
        };
        let port = i64::from(session.port);
        let max_players = args.max_players.map(i64::from);
        // The session's columns, in `INSERT_SESSION`'s order.
        let columns = args![
            session.id,
            session.fleet_id,
            session.zone_id,
            session.zone,
            session.data_center,
            session.machine_id,
            session.process_id,
            session.build_id,
            session.address,
            port,
            max_players,
            properties,
            args.idempotency_key,
            args.now_ms
        ];
        let take = args![candidate.process_id, fleet.id, args.now_ms];
        let taken = match ctx.conn.dialect() {
            Dialect::Postgres => {
                let both: Vec<&dyn ToArg> = take.iter().chain(columns).copied().collect();
                rows::run(ctx.conn, take_and_insert_postgres(), &both)
                    .map_err(|e| super::stmts::fix_error(e, "session", "id"))?
            }
            Dialect::Sqlite => rows::run(ctx.conn, TAKE_SLOT, take)?,
        };
        if taken == 0 {
            // The picture was wrong about this process: read its machine again.
            tracing::debug!(process = %candidate.process_id, "placement guard refused a process; reloading its machine");
            load::machine(ctx, &candidate.machine_id)?;
            if let Some(zone) = ctx.hot.zones.get_mut(&zone_id) {
                zone.refuse(&candidate.process_id);
            }
            continue;
        }
        if ctx.conn.dialect() == Dialect::Sqlite {
            rows::run(ctx.conn, INSERT_SESSION, columns)
                .map_err(|e| super::stmts::fix_error(e, "session", "id"))?;
        }
        ctx.machine_changed(&session.machine_id, &zone_id);
        ctx.hot
            .zones
            .get_mut(&zone_id)
            .expect("loaded above")
            .placed(session.clone());
        return Ok(PlaceOutcome::Placed(session));
    }
    // No capacity. A zone in cooldown wakes: its idle clock restarts, so the plan brings
    // back its initial processes.
    let zone = ctx.hot.zones.get_mut(&zone_id).expect("loaded above");
    if zone.record.zone.status == ResourceStatus::AvailableCooldown {
        rows::run(
            ctx.conn,
            "UPDATE zones SET idle_since = GREATEST(COALESCE(idle_since, 0), ?1) WHERE id = ?2",
            args![args.now_ms, zone_id],
        )?;
        let zone = ctx.hot.zones.get_mut(&zone_id).expect("loaded above");
        zone.record.idle_since_ms = zone.record.idle_since_ms.max(args.now_ms);
        ctx.notice(Notice::Zone {
            zone_id: zone_id.clone(),
        });
    }
    Ok(PlaceOutcome::NoCapacity { zone_id })
}

/// Postgres's session end: the guarded `UPDATE`, the slot freed (never below zero) and
/// the ended row, in one statement.
fn end_postgres() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        format!(
            "WITH ended AS (
            UPDATE sessions SET status = 'ENDED', ended_at = ?1 WHERE id = ?2 AND status = 'ACTIVE'
            RETURNING *
         ), freed AS (
            UPDATE processes SET active_sessions = active_sessions - 1
            FROM ended WHERE processes.id = ended.process_id AND processes.active_sessions > 0
            RETURNING processes.id
         )
         SELECT {SESSION_COLUMNS} FROM ended"
        )
    })
}

/// See [`Store::end_session`](crate::store::Store::end_session). Guards: only an `ACTIVE`
/// session ends, and a slot count never goes below zero.
pub fn end(ctx: &mut Ctx<'_>, session_id: &str, now_ms: i64) -> Result<Option<EndOutcome>> {
    // The zone's fence first (where one is needed: not on SQLite's single writer).
    if super::leases::maybe_needed(ctx) {
        let zone: Option<String> = rows::first(
            ctx.conn,
            "SELECT zone_id FROM sessions WHERE id = ?1",
            args![session_id],
            |row| Ok(row.get(0)?),
        )?;
        if let Some(zone) = &zone {
            super::leases::fence(ctx, zone)?;
        }
    }
    if ctx.conn.dialect() == Dialect::Postgres {
        // One statement (one round trip): the guarded end, the freed slot, the row.
        let ended = rows::first(
            ctx.conn,
            end_postgres(),
            args![now_ms, session_id],
            rows::session,
        )?;
        return match ended {
            Some(session) => {
                ctx.machine_changed(&session.machine_id, &session.zone_id);
                if let Some(zone) = ctx.hot.zones.get_mut(&session.zone_id) {
                    zone.ended(&session.machine_id, &session.process_id, &session.id);
                }
                Ok(Some(EndOutcome {
                    session,
                    ended_now: true,
                }))
            }
            None => Ok(
                rows::session_by_id(ctx.conn, session_id)?.map(|session| EndOutcome {
                    session,
                    ended_now: false,
                }),
            ),
        };
    }
    // Guard: only an ACTIVE session ends. The row is read after the update (not with
    // RETURNING, which SQLite runs as a trigger, with a statement journal whose cost grows
    // with the batch's transaction).
    let ended = rows::run(
        ctx.conn,
        "UPDATE sessions SET status = 'ENDED', ended_at = ?1 WHERE id = ?2 AND status = 'ACTIVE'",
        args![now_ms, session_id],
    )? > 0;
    let session = rows::session_by_id(ctx.conn, session_id)?;
    let Some(session) = session else {
        return Ok(None);
    };
    if !ended {
        return Ok(Some(EndOutcome {
            session,
            ended_now: false,
        }));
    }
    rows::run(
        ctx.conn,
        "UPDATE processes SET active_sessions = active_sessions - 1 WHERE id = ?1 AND active_sessions > 0",
        args![session.process_id],
    )?;
    ctx.machine_changed(&session.machine_id, &session.zone_id);
    if let Some(zone) = ctx.hot.zones.get_mut(&session.zone_id) {
        zone.ended(&session.machine_id, &session.process_id, &session.id);
    }
    Ok(Some(EndOutcome {
        session,
        ended_now: true,
    }))
}
