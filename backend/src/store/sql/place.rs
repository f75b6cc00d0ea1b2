//! Placing and ending sessions: the hot path.
//!
//! A placement runs on the writer, inside the batch's transaction: the fleet and zone come
//! from the picture (so a build change committed before is always seen), the process from
//! the zone's free-slot index, and then the guarded `UPDATE` that takes the slot and the
//! `INSERT` of the session. The guard restates every rule of
//! [`ProcessRecord::takes_sessions`](crate::store::ProcessRecord::takes_sessions) and of
//! the zone and fleet in SQL, so it holds however stale the picture is: when it refuses,
//! the picture of that machine is reloaded and the next best process is tried.
//!
//! On SQLite those are two statements per placement (`TAKE_SLOT`, `INSERT_SESSION`). On
//! Postgres, where a round trip costs more than either, the placements queued together
//! are one statement ([`place_many`], `PLACE_ALL_POSTGRES`): each chooses from the
//! picture in turn, and the statement takes every chosen slot under the same guard,
//! counted per process.
//!
//! Placements run without a savepoint of their own ([`Writer::place`]): each statement is
//! atomic, and every error they return comes before their first change, but for a failed
//! `INSERT` of a session after its slot was taken (a duplicate session id), which fails
//! the batch rather than commit half a placement.
//!
//! [`Writer::place`]: super::writer::Writer::place

use std::sync::Arc;

use fleetform_api::{Fleet, ResourceStatus, Session, SessionStatus};

use super::load;
use super::rows::{self, SESSION_COLUMNS};
use super::writer::Ctx;
use crate::changes::Notice;
use crate::store::db::{args, Dialect};
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

/// Postgres places a whole run of queued placements in one statement (a round trip and a
/// statement each cost more than one placement's work): the sessions chosen from the
/// picture arrive as a JSON array; its `UPDATE` takes, per process, as many slots as
/// sessions chose it — all or none, the guard of `TAKE_SLOT` with the count in place of
/// one — and the sessions of the processes it took are inserted from its `RETURNING`, so
/// a refused process inserts none of its sessions.
/// Parameter `?1`: the sessions, each an object of `INSERT_SESSION`'s columns.
const PLACE_ALL_POSTGRES: &str = "WITH input AS (
        SELECT * FROM json_to_recordset(?1::text::json) AS t(
            id TEXT, fleet_id TEXT, zone_id TEXT, zone_name TEXT, data_center TEXT,
            machine_id TEXT, process_id TEXT, build_id TEXT, address TEXT, port BIGINT,
            max_players BIGINT, properties TEXT, idempotency_key TEXT, created_at BIGINT)
    ), need AS (
        SELECT process_id, fleet_id, count(*) AS n, max(created_at) AS now
        FROM input GROUP BY process_id, fleet_id
    ), taken AS (
        UPDATE processes
        SET active_sessions = active_sessions + need.n,
            sessions_started = sessions_started + need.n
        FROM need
        WHERE processes.id = need.process_id AND agent_state = 'READY' AND NOT restart_requested
          AND EXISTS (
            SELECT 1 FROM fleets f
            WHERE f.id = need.fleet_id AND f.id = processes.fleet_id AND f.build_id = processes.build_id
              AND (f.process_restart_hours = 0 OR processes.started_at >= need.now - f.process_restart_hours * 3600000)
              AND processes.active_sessions + need.n <=
                  CASE WHEN f.session_mode = 'simple' OR f.sessions_per_process < 1 THEN 1 ELSE f.sessions_per_process END
              AND (f.session_mode <> 'simple' OR processes.sessions_started = 0))
          AND EXISTS (SELECT 1 FROM machines m WHERE m.id = processes.machine_id AND m.status = 'ACTIVE')
          AND EXISTS (SELECT 1 FROM zones z WHERE z.id = processes.zone_id AND NOT z.deleting)
        RETURNING processes.id
    )
    INSERT INTO sessions (id, fleet_id, zone_id, zone_name, data_center,
        machine_id, process_id, build_id, address, port, status, max_players, properties,
        idempotency_key, created_at)
    SELECT i.id, i.fleet_id, i.zone_id, i.zone_name, i.data_center, i.machine_id,
        i.process_id, i.build_id, i.address, i.port, 'ACTIVE', i.max_players, i.properties,
        i.idempotency_key, i.created_at
    FROM input i JOIN taken ON taken.id = i.process_id
    RETURNING sessions.id";

/// A session chosen from the picture for a placement, on its way to the database.
struct Chosen {
    session: Session,
    /// Its properties as stored (JSON text).
    properties: String,
    idempotency_key: Option<String>,
    now_ms: i64,
}

/// A chosen session's row for `PLACE_ALL_POSTGRES`, borrowed: serialized straight into
/// the statement's JSON text.
#[derive(serde::Serialize)]
struct Row<'a> {
    id: &'a str,
    fleet_id: &'a str,
    zone_id: &'a str,
    zone_name: &'a str,
    data_center: &'a str,
    machine_id: &'a str,
    process_id: &'a str,
    build_id: &'a str,
    address: &'a str,
    port: u16,
    max_players: Option<u32>,
    properties: &'a str,
    idempotency_key: Option<&'a str>,
    created_at: i64,
}

impl Chosen {
    fn row(&self) -> Row<'_> {
        let s = &self.session;
        Row {
            id: &s.id,
            fleet_id: &s.fleet_id,
            zone_id: &s.zone_id,
            zone_name: &s.zone,
            data_center: &s.data_center,
            machine_id: &s.machine_id,
            process_id: &s.process_id,
            build_id: &s.build_id,
            address: &s.address,
            port: s.port,
            max_players: s.max_players,
            properties: &self.properties,
            idempotency_key: self.idempotency_key.as_deref(),
            created_at: self.now_ms,
        }
    }
}

/// Sessions taken in one statement on Postgres: the ids of those whose process took
/// them (see `PLACE_ALL_POSTGRES`).
fn insert_all_postgres(
    ctx: &mut Ctx<'_>,
    chosen: &[&Chosen],
) -> Result<std::collections::HashSet<String>> {
    let rows: Vec<Row<'_>> = chosen.iter().map(|c| c.row()).collect();
    let rows = serde_json::to_string(&rows).map_err(|e| Error::Internal(e.to_string()))?;
    let ids = ctx
        .conn
        .all(PLACE_ALL_POSTGRES, args![rows], |row| -> Result<String> {
            Ok(row.get(0)?)
        })
        .map_err(|e| super::stmts::fix_error(e, "session", "id"))?;
    Ok(ids.into_iter().collect())
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

/// What every placement checks before it chooses: its fleet and zone (loaded into the
/// picture), the zone's fence, and that the zone is not being deleted.
fn prepare(ctx: &mut Ctx<'_>, args: &PlaceArgs) -> Result<(Arc<Fleet>, String)> {
    let fleet =
        load::fleet(ctx, &args.fleet)?.ok_or_else(|| Error::not_found("fleet", &args.fleet))?;
    let zone_id = zone_of(ctx, &fleet.id, &fleet.name, &args.zone)?;
    super::leases::fence(ctx, &zone_id)?;
    let zone = &ctx.hot.zones[&zone_id];
    if zone.record.deleting {
        return Err(Error::conflict(
            "zone_deleting",
            format!("zone {} is being deleted", zone.record.zone.spec.name),
        ));
    }
    Ok((fleet, zone_id))
}

/// The best process of the picture for a placement, as the session it would host (the
/// picture is not changed).
fn choose(ctx: &mut Ctx<'_>, fleet: &Fleet, zone_id: &str, args: &PlaceArgs) -> Option<Chosen> {
    let zone = ctx.hot.zones.get_mut(zone_id)?;
    let candidate = zone.choose(&args.latencies_ms, args.max_latency_ms, args.now_ms)?;
    let machine = &zone.machines[&candidate.machine_id];
    let process = &machine.processes()[&candidate.process_id];
    let session = Session {
        id: args.session_id.clone(),
        fleet_id: fleet.id.clone(),
        zone: zone.record.zone.spec.name.clone(),
        zone_id: zone_id.to_string(),
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
    // A map of strings always serializes.
    let properties = serde_json::to_string(&args.properties).unwrap_or_else(|_| "{}".into());
    Some(Chosen {
        session,
        properties,
        idempotency_key: args.idempotency_key.clone(),
        now_ms: args.now_ms,
    })
}

/// Takes the slot and inserts the session: on Postgres one statement, on SQLite the two.
/// Whether the process took it.
fn take_one(ctx: &mut Ctx<'_>, chosen: &Chosen) -> Result<bool> {
    if ctx.conn.dialect() == Dialect::Postgres {
        return Ok(!insert_all_postgres(ctx, &[chosen])?.is_empty());
    }
    let s = &chosen.session;
    let take = args![s.process_id, s.fleet_id, chosen.now_ms];
    if rows::run(ctx.conn, TAKE_SLOT, take)? == 0 {
        return Ok(false);
    }
    let port = i64::from(s.port);
    let max_players = s.max_players.map(i64::from);
    rows::run(
        ctx.conn,
        INSERT_SESSION,
        args![
            s.id,
            s.fleet_id,
            s.zone_id,
            s.zone,
            s.data_center,
            s.machine_id,
            s.process_id,
            s.build_id,
            s.address,
            port,
            max_players,
            chosen.properties,
            chosen.idempotency_key,
            chosen.now_ms
        ],
    )
    .map_err(|e| super::stmts::fix_error(e, "session", "id"))?;
    Ok(true)
}

/// See [`Store::place_session`](crate::store::Store::place_session).
pub fn place(ctx: &mut Ctx<'_>, args: PlaceArgs) -> Result<PlaceOutcome> {
    let (fleet, zone_id) = prepare(ctx, &args)?;
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
    place_chosen(ctx, &fleet, &zone_id, &args)
}

/// Tries the picture's best processes in turn until one takes the session.
fn place_chosen(
    ctx: &mut Ctx<'_>,
    fleet: &Fleet,
    zone_id: &str,
    args: &PlaceArgs,
) -> Result<PlaceOutcome> {
    for _ in 0..MAX_TRIES {
        let Some(chosen) = choose(ctx, fleet, zone_id, args) else {
            break;
        };
        if !take_one(ctx, &chosen)? {
            // The picture was wrong about this process: read its machine again.
            let process = &chosen.session.process_id;
            tracing::debug!(%process, "placement guard refused a process; reloading its machine");
            load::machine(ctx, &chosen.session.machine_id)?;
            if let Some(zone) = ctx.hot.zones.get_mut(zone_id) {
                zone.refuse(process);
            }
            continue;
        }
        ctx.machine_changed(&chosen.session.machine_id, zone_id);
        if let Some(zone) = ctx.hot.zones.get_mut(zone_id) {
            zone.placed(chosen.session.clone());
        }
        return Ok(PlaceOutcome::Placed(chosen.session));
    }
    no_capacity(ctx, zone_id, args.now_ms)
}

/// No process may take it. A zone in cooldown wakes: its idle clock restarts, so the plan
/// brings back its initial processes.
fn no_capacity(ctx: &mut Ctx<'_>, zone_id: &str, now_ms: i64) -> Result<PlaceOutcome> {
    let zone = ctx.hot.zones.get_mut(zone_id).expect("loaded by prepare");
    if zone.record.zone.status == ResourceStatus::AvailableCooldown {
        rows::run(
            ctx.conn,
            "UPDATE zones SET idle_since = GREATEST(COALESCE(idle_since, 0), ?1) WHERE id = ?2",
            args![now_ms, zone_id],
        )?;
        let zone = ctx.hot.zones.get_mut(zone_id).expect("loaded by prepare");
        zone.record.idle_since_ms = zone.record.idle_since_ms.max(now_ms);
        ctx.notice(Notice::Zone {
            zone_id: zone_id.to_string(),
        });
    }
    Ok(PlaceOutcome::NoCapacity {
        zone_id: zone_id.to_string(),
    })
}

/// Placements queued one after another: each job's outcome (an `Err` inside is that job's
/// refusal), or `Err` when a statement failed or a job failed after changing a row (the
/// batch goes: nothing half-done is committed).
///
/// On Postgres every placement without an idempotency key chooses its process from the
/// picture first, reserving the slot there so the next one chooses as if it were taken;
/// one statement then takes them all (`PLACE_ALL_POSTGRES`). A process it refused (the
/// picture was stale) is read again, and its placements, with those that found nothing
/// in the picture and those with a key, are then placed one by one as [`place`] does.
pub fn place_many(ctx: &mut Ctx<'_>, jobs: Vec<PlaceArgs>) -> Result<Vec<Result<PlaceOutcome>>> {
    if ctx.conn.dialect() == Dialect::Sqlite || jobs.len() == 1 {
        return jobs.into_iter().map(|args| one(ctx, args)).collect();
    }
    let mut outcomes: Vec<Option<Result<PlaceOutcome>>> = jobs.iter().map(|_| None).collect();
    // Each job's fleet and zone, once prepared.
    let mut prepared: Vec<Option<(Arc<Fleet>, String)>> = jobs.iter().map(|_| None).collect();
    // Jobs placed one by one after the statement.
    let mut later: Vec<usize> = Vec::new();
    let mut chosen: Vec<(usize, Chosen)> = Vec::new();
    for (i, args) in jobs.iter().enumerate() {
        let changes = ctx.conn.total_changes();
        match prepare(ctx, args) {
            Ok((fleet, zone_id)) => {
                let pick = match args.idempotency_key {
                    None => choose(ctx, &fleet, &zone_id, args),
                    Some(_) => None,
                };
                match pick {
                    Some(pick) => {
                        // Reserved in the picture: the next placement sees the slot taken.
                        if let Some(zone) = ctx.hot.zones.get_mut(&zone_id) {
                            zone.placed(pick.session.clone());
                        }
                        chosen.push((i, pick));
                    }
                    None => later.push(i),
                }
                prepared[i] = Some((fleet, zone_id));
            }
            Err(error) if ctx.conn.total_changes() == changes => outcomes[i] = Some(Err(error)),
            Err(error) => return Err(error),
        }
    }
    if !chosen.is_empty() {
        let all: Vec<&Chosen> = chosen.iter().map(|(_, pick)| pick).collect();
        let taken = insert_all_postgres(ctx, &all)?;
        let mut stale = std::collections::BTreeSet::new();
        for (i, pick) in chosen {
            if taken.contains(&pick.session.id) {
                ctx.machine_changed(&pick.session.machine_id, &pick.session.zone_id);
                outcomes[i] = Some(Ok(PlaceOutcome::Placed(pick.session)));
            } else {
                stale.insert(pick.session.machine_id);
                later.push(i);
            }
        }
        // The picture reserved slots the database refused: read those machines again
        // (what the statement did take on them is in the database already).
        for machine_id in stale {
            load::machine(ctx, &machine_id)?;
        }
    }
    later.sort_unstable();
    let mut jobs: Vec<Option<PlaceArgs>> = jobs.into_iter().map(Some).collect();
    for i in later {
        let args = jobs[i].take().expect("each job placed once");
        let outcome = match (&prepared[i], &args.idempotency_key) {
            (Some((fleet, zone_id)), None) => {
                let (fleet, zone_id) = (Arc::clone(fleet), zone_id.clone());
                let changes = ctx.conn.total_changes();
                match place_chosen(ctx, &fleet, &zone_id, &args) {
                    Err(error) if ctx.conn.total_changes() != changes => return Err(error),
                    outcome => outcome,
                }
            }
            _ => one(ctx, args)?,
        };
        outcomes[i] = Some(outcome);
    }
    Ok(outcomes
        .into_iter()
        .map(|outcome| outcome.expect("every job has its outcome"))
        .collect())
}

/// One placement of a run: its refusal is its own, unless it came after it changed a row.
fn one(ctx: &mut Ctx<'_>, args: PlaceArgs) -> Result<Result<PlaceOutcome>> {
    let changes = ctx.conn.total_changes();
    match place(ctx, args) {
        Err(error) if ctx.conn.total_changes() != changes => Err(error),
        outcome => Ok(outcome),
    }
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
