//! Zone leases in the database: the lease manager's round, and the fence every write to a
//! zone's rows passes first. See `crate::leases` for the design.

use crate::leases::{LeaseRequest, LeaseRound, LeaseRow};
use crate::store::db::{args, Dialect};
use crate::store::EventRecord;
use crate::{Error, Result};

use super::rows;
use super::stmts;
use super::writer::Ctx;

/// The lease rows this batch's transaction has read (and, on Postgres, locked), in the
/// order it took them, so a job that fails gives back what it took.
#[derive(Debug, Default)]
pub struct Fenced {
    order: Vec<String>,
    rows: std::collections::HashMap<String, Option<(Option<String>, i64)>>,
}

impl Fenced {
    pub fn mark(&self) -> usize {
        self.order.len()
    }

    pub fn truncate(&mut self, mark: usize) {
        for zone in self.order.drain(mark..) {
            self.rows.remove(&zone);
        }
    }

    pub fn clear(&mut self) {
        self.order.clear();
        self.rows.clear();
    }
}

/// The fence of a write to zone `zone_id`'s rows: the first statement such a job runs.
///
/// - On Postgres it locks the zone's lease row (`FOR UPDATE`, once per batch and zone) until
///   the batch commits. Every write to the zone's rows, from any replica, takes this lock
///   first, so two transactions never write one zone at once, and each statement after it
///   sees what the transaction before committed: the guards in the statements that follow
///   (written for one writer) hold across replicas. A lock that cannot be had (a deadlock
///   between replicas' batches) refuses the job alone (`Unavailable`, a 503 to retry).
/// - A reconciler's write (made under its [`Lease`](crate::leases::Lease)) is refused
///   (`LeaseLost`) unless the row still names this replica at that generation: a holder
///   that lost the zone, paused or partitioned, writes nothing after the takeover.
///
/// On SQLite, one writer serializes every write anyway; the row is only read.
pub fn fence(ctx: &mut Ctx<'_>, zone_id: &str) -> Result<()> {
    if !needed(ctx, zone_id) {
        return Ok(());
    }
    if !ctx.fenced.rows.contains_key(zone_id) {
        let row = match ctx.conn.dialect() {
            Dialect::Sqlite => read_row(ctx, zone_id)?,
            Dialect::Postgres => {
                let errors_before = ctx.conn.total_errors();
                ctx.conn.batch("SAVEPOINT fence")?;
                match read_row(ctx, zone_id) {
                    Ok(row) => {
                        ctx.conn.batch("RELEASE fence")?;
                        row
                    }
                    Err(error) => {
                        ctx.conn.batch("ROLLBACK TO fence")?;
                        ctx.conn.batch("RELEASE fence")?;
                        ctx.conn.recovered(errors_before);
                        tracing::warn!(zone = zone_id, %error, "could not lock a zone's lease row; the write is refused");
                        return Err(Error::Unavailable {
                            message: format!("zone {zone_id} is busy on another replica"),
                            retry_after_secs: 1,
                        });
                    }
                }
            }
        };
        ctx.fenced.order.push(zone_id.to_string());
        ctx.fenced.rows.insert(zone_id.to_string(), row);
    }
    let Some(lease) = ctx.lease.as_ref().filter(|lease| lease.zone_id == zone_id) else {
        return Ok(());
    };
    match &ctx.fenced.rows[zone_id] {
        Some((Some(holder), generation))
            if *holder == lease.holder && *generation == lease.generation =>
        {
            Ok(())
        }
        _ => Err(Error::LeaseLost {
            zone: zone_id.to_string(),
        }),
    }
}

/// Whether a write to `zone_id` needs its fence: always on Postgres; on SQLite (one
/// writer, nothing to serialize) only a reconciler's write under that zone's lease.
pub fn needed(ctx: &Ctx<'_>, zone_id: &str) -> bool {
    ctx.conn.dialect() == Dialect::Postgres
        || ctx
            .lease
            .as_ref()
            .is_some_and(|lease| lease.zone_id == zone_id)
}

/// Whether any write may need a fence (see [`needed`]): skips looking up which zone a
/// write is about when none would.
pub fn maybe_needed(ctx: &Ctx<'_>) -> bool {
    ctx.conn.dialect() == Dialect::Postgres || ctx.lease.is_some()
}

fn read_row(ctx: &Ctx<'_>, zone_id: &str) -> Result<Option<(Option<String>, i64)>> {
    let sql = match ctx.conn.dialect() {
        Dialect::Sqlite => "SELECT holder, generation FROM zone_leases WHERE zone_id = ?1",
        Dialect::Postgres => {
            "SELECT holder, generation FROM zone_leases WHERE zone_id = ?1 FOR UPDATE"
        }
    };
    rows::first(ctx.conn, sql, args![zone_id], |row| {
        Ok((row.get(0)?, row.get(1)?))
    })
}

/// The fence of a write to a machine's rows: its zone's.
pub fn fence_machine(ctx: &mut Ctx<'_>, machine_id: &str) -> Result<()> {
    if !maybe_needed(ctx) {
        return Ok(());
    }
    let zone = match ctx.hot.machine_zone.get(machine_id) {
        Some(zone) => Some(zone.clone()),
        None => rows::first(
            ctx.conn,
            "SELECT zone_id FROM machines WHERE id = ?1",
            args![machine_id],
            |row| Ok(row.get(0)?),
        )?,
    };
    match zone {
        Some(zone) => fence(ctx, &zone),
        None => Ok(()),
    }
}

/// The fence of a write to every zone of a fleet, in zone order.
pub fn fence_fleet(ctx: &mut Ctx<'_>, fleet_id: &str) -> Result<()> {
    if !maybe_needed(ctx) {
        return Ok(());
    }
    let zones: Vec<String> = rows::all(
        ctx.conn,
        "SELECT id FROM zones WHERE fleet_id = ?1 ORDER BY id",
        args![fleet_id],
        |row| Ok(row.get(0)?),
    )?;
    for zone in zones {
        fence(ctx, &zone)?;
    }
    Ok(())
}

/// One round of a replica's lease manager, in one transaction: its heartbeat, the leases
/// it gives back, the renewal of the rest, and (`acquire`) free or expired zones up to its
/// fair share. Guards: a release or renewal names this replica (and a release its
/// generation); a taking requires the lease free or expired, in the same statement.
pub fn round(ctx: &mut Ctx<'_>, request: &LeaseRequest) -> Result<LeaseRound> {
    let clock = ctx.conn.dialect().now_ms();
    let now: i64 = ctx
        .conn
        .value(&format!("SELECT {clock}"), args![])?
        .ok_or_else(|| Error::Internal("the database has no clock".into()))?;
    let expires = now.saturating_add(request.ttl_ms);
    rows::run(
        ctx.conn,
        "INSERT INTO replicas (id, url, started_at, heartbeat_at, stopping) VALUES (?1, ?2, ?3, ?3, ?4)
         ON CONFLICT (id) DO UPDATE SET url = excluded.url, heartbeat_at = excluded.heartbeat_at,
             stopping = excluded.stopping",
        args![request.replica_id, request.url, now, request.stopping],
    )?;
    // Replicas gone for a day are forgotten (a restart is a new replica).
    rows::run(
        ctx.conn,
        "DELETE FROM replicas WHERE heartbeat_at < ?1",
        args![now - 86_400_000],
    )?;
    let mut released = 0;
    for lease in &request.release {
        released += rows::run(
            ctx.conn,
            "UPDATE zone_leases SET holder = NULL, holder_url = NULL, expires_at = 0
             WHERE zone_id = ?1 AND holder = ?2 AND generation = ?3",
            args![lease.zone_id, request.replica_id, lease.generation],
        )?;
    }
    if released > 0 {
        // The other replicas take them at once (the notice reaches them at commit).
        ctx.notice(crate::changes::Notice::Leases);
    }
    rows::run(
        ctx.conn,
        "UPDATE zone_leases SET expires_at = ?1, holder_url = ?3 WHERE holder = ?2",
        args![expires, request.replica_id, request.url],
    )?;
    if request.acquire {
        let live = live_replicas(ctx, now, request.ttl_ms)?;
        let zones: i64 = ctx
            .conn
            .value("SELECT COUNT(*) FROM zone_leases", args![])?
            .unwrap_or(0);
        let held: i64 = ctx
            .conn
            .value(
                "SELECT COUNT(*) FROM zone_leases WHERE holder = ?1",
                args![request.replica_id],
            )?
            .unwrap_or(0);
        let fair = crate::leases::fair_share(zones as usize, live) as i64;
        if held < fair {
            let free: Vec<String> = rows::all(
                ctx.conn,
                "SELECT zone_id FROM zone_leases WHERE holder IS NULL OR expires_at <= ?1
                 ORDER BY zone_id LIMIT ?2",
                args![now, fair - held],
                |row| Ok(row.get(0)?),
            )?;
            for zone_id in free {
                let taken = rows::run(
                    ctx.conn,
                    "UPDATE zone_leases SET holder = ?1, holder_url = ?2, generation = generation + 1,
                         expires_at = ?3
                     WHERE zone_id = ?4 AND (holder IS NULL OR expires_at <= ?5)",
                    args![request.replica_id, request.url, expires, zone_id, now],
                )?;
                if taken == 0 {
                    continue;
                }
                let generation: i64 = ctx
                    .conn
                    .value(
                        "SELECT generation FROM zone_leases WHERE zone_id = ?1",
                        args![zone_id],
                    )?
                    .unwrap_or(0);
                let mut event = EventRecord::new(
                    fleetform_api::EventLevel::Info,
                    fleetform_api::EventProducer::Zone,
                    "ZONE_LEASE_ACQUIRED",
                    format!(
                        "replica {} ({}) reconciles this zone from lease generation {generation}",
                        request.replica_id, request.url
                    ),
                )
                .zone(&zone_id);
                event.lease_generation = Some(generation);
                stmts::event_inserted(ctx.conn, &event)?;
            }
        }
    }
    let live_replicas = live_replicas(ctx, now, request.ttl_ms)?;
    let rows = rows::all(
        ctx.conn,
        "SELECT l.zone_id, l.holder, l.holder_url, l.generation, l.expires_at, z.fleet_id, f.name, z.name
         FROM zone_leases l JOIN zones z ON z.id = l.zone_id JOIN fleets f ON f.id = z.fleet_id
         ORDER BY l.zone_id",
        args![],
        |row| {
            Ok(LeaseRow {
                zone_id: row.get(0)?,
                holder: row.get(1)?,
                holder_url: row.get(2)?,
                generation: row.get(3)?,
                expires_at_ms: row.get(4)?,
                fleet_id: row.get(5)?,
                fleet_name: row.get(6)?,
                zone_name: row.get(7)?,
            })
        },
    )?;
    Ok(LeaseRound {
        now_ms: now,
        live_replicas,
        rows,
    })
}

fn live_replicas(ctx: &Ctx<'_>, now: i64, ttl_ms: i64) -> Result<usize> {
    let live: i64 = ctx
        .conn
        .value(
            "SELECT COUNT(*) FROM replicas WHERE heartbeat_at > ?1 AND NOT stopping",
            args![now - ttl_ms],
        )?
        .unwrap_or(0);
    Ok(usize::try_from(live).unwrap_or(0).max(1))
}
