//! The store's SQL engine, one for SQLite and Postgres: the same statements (through
//! [`Conn`](crate::store::db::Conn), which smooths the dialects' few differences) and the
//! same writer. What differs is only connecting and migrating (`store/sqlite.rs`,
//! `store/postgres.rs`), and durability: SQLite commits without syncing and the writer's
//! flusher fsyncs the log before any answer; Postgres commits durably itself.
//!
//! Writes go through one [`Writer`] thread that owns the only write connection and the
//! [`Hot`](crate::store::hot::Hot) picture, and commits whatever is queued as one
//! transaction (group commit): throughput grows with concurrency instead of paying one
//! fsync per call, and an answer still means "on disk". Reads that need the database go
//! to a few [`Reader`] threads with read-only connections (they see the last commit).
//! Each store call is one hop to one of these threads, however many statements it runs.
//!
//! - [`place`]: placements and session ends (the hot path);
//! - [`report`]: agent reports;
//! - [`load`]: filling the picture from the database;
//! - [`stmts`]: statements shared by several operations, each with its guard;
//! - [`rows`]: rows to domain types;
//! - this file: opening, and every other operation.

mod leases;
mod load;
mod notify;
mod place;
mod reader;
mod report;
mod rows;
mod stmts;
mod writer;

use std::collections::BTreeSet;
use std::path::Path;

use crate::store::db::{args, Conn, Row, ToArg, Value};
use async_trait::async_trait;
use fleetform_api::agent::{DesiredMachine, SyncRequest};
use fleetform_api::{
    BareMetalMachine, Build, EventLevel, EventProducer, Fleet, MachineStatus, ResourceStatus,
    Session, SessionStatus, Zone,
};

use self::reader::Reader;
use self::rows::{LIVE_STATES, MACHINE_COLUMNS, PROCESS_COLUMNS, SESSION_COLUMNS};
use self::stmts::fix_error;
use self::writer::{Ctx, Writer};
use super::hot::{DesiredInputs, HotMachine};
use super::*;
use crate::changes::{Changes, Notice};
use crate::{Error, Result};

/// Reader threads: reads are short and the machine has few cores.
const READERS: usize = 4;

/// fleetformd's store, on SQLite or Postgres.
#[derive(Debug, Clone)]
pub struct SqlStore {
    writer: Writer,
    reader: Reader,
    changes: Changes,
    database: Database,
    /// The checkpoint thread (SQLite) runs while the store lives.
    _alive: std::sync::Arc<()>,
}

/// Runs blocking `f` on a thread of its own (the Postgres client must not run inside the
/// async runtime) and waits for it.
async fn on_thread<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let (sender, receiver) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let _ = sender.send(f());
        })
        .map_err(|e| Error::Internal(format!("start {name}: {e}")))?;
    receiver
        .await
        .map_err(|_| Error::Internal(format!("{name} panicked")))?
}

impl SqlStore {
    /// Opens (creating if needed) the SQLite database at `path`; see [`SqlStore::open_with`].
    pub async fn open(path: &Path) -> Result<Self> {
        Self::open_with(&Database::Sqlite(path.to_path_buf()), Changes::default()).await
    }

    /// Opens `database`, runs its migrations, and starts the writer and readers, telling
    /// `changes` what each commit changed.
    pub async fn open_with(database: &Database, changes: Changes) -> Result<Self> {
        let alive = std::sync::Arc::new(());
        let (writer, reader) = match database {
            Database::Sqlite(path) => {
                let opened = path.clone();
                let (conn, wal) =
                    on_thread("store-open", move || super::sqlite::open_writer(&opened)).await?;
                let writer = Writer::spawn(conn, Some(wal), changes.clone(), None, None)?;
                let read = path.clone();
                let reader = Reader::spawn(READERS, move || super::sqlite::open_reader(&read))?;
                super::sqlite::checkpoints(path, std::sync::Arc::downgrade(&alive))?;
                (writer, reader)
            }
            Database::Postgres(url) => {
                let opened = url.clone();
                let conn = on_thread("store-open", move || {
                    super::postgres::migrate(&opened)?;
                    super::postgres::connect(&opened)
                })
                .await?;
                // Postgres commits durably itself: no log for the flusher to sync. Notices
                // go to the other replicas too.
                let origin = crate::time::new_id("store");
                let again = url.clone();
                let writer = Writer::spawn(
                    conn,
                    None,
                    changes.clone(),
                    Some(origin.clone()),
                    Some(Box::new(move || super::postgres::connect(&again))),
                )?;
                let listen = url.clone();
                notify::listen(
                    move || super::postgres::connect(&listen),
                    origin,
                    writer.clone(),
                    changes.clone(),
                    std::sync::Arc::downgrade(&alive),
                )?;
                super::postgres::maintain(url.clone(), std::sync::Arc::downgrade(&alive))?;
                let read = url.clone();
                let reader = on_thread("store-open", move || {
                    Reader::spawn(READERS, move || super::postgres::connect(&read))
                })
                .await?;
                (writer, reader)
            }
        };
        Ok(SqlStore {
            writer,
            reader,
            changes,
            database: database.clone(),
            _alive: alive,
        })
    }

    /// Where it keeps its data.
    pub fn database(&self) -> &Database {
        &self.database
    }

    /// Whether the writer's picture of every loaded zone equals what the database holds
    /// (for tests: the picture must never drift from the truth). The differences, as text.
    pub async fn picture_drift(&self) -> Result<Vec<String>> {
        self.writer
            .read(|ctx| {
                let loaded: Vec<String> = ctx.hot.zones.keys().cloned().collect();
                let mut drift = Vec::new();
                for zone_id in loaded {
                    let before = ctx.hot.zones.remove(&zone_id).expect("listed");
                    for id in before.machines.keys() {
                        ctx.hot.machine_zone.remove(id);
                    }
                    load::zone(ctx, &zone_id)?;
                    let Some(after) = ctx.hot.zones.get(&zone_id) else {
                        drift.push(format!("zone {zone_id}: gone from the database"));
                        continue;
                    };
                    let summary = |zone: &crate::store::hot::HotZone| {
                        let mut machines: Vec<String> = zone
                            .machines
                            .values()
                            .map(|m| {
                                let processes: Vec<String> = m
                                    .processes()
                                    .values()
                                    .map(|p| {
                                        format!(
                                            "{:?} sessions={:?}",
                                            p.record,
                                            p.sessions.keys().collect::<Vec<_>>()
                                        )
                                    })
                                    .collect();
                                format!("{:?} {processes:?}", m.record())
                            })
                            .collect();
                        machines.sort();
                        machines
                    };
                    let (was, is) = (summary(&before), summary(after));
                    for line in was.iter().filter(|line| !is.contains(line)) {
                        drift.push(format!("zone {zone_id}: picture had {line}"));
                    }
                    for line in is.iter().filter(|line| !was.contains(line)) {
                        drift.push(format!("zone {zone_id}: database has {line}"));
                    }
                    if before.free_processes() != after.free_processes() {
                        drift.push(format!(
                            "zone {zone_id}: {} free processes in the picture, {} in the database",
                            before.free_processes(),
                            after.free_processes()
                        ));
                    }
                }
                Ok(drift)
            })
            .await
    }
}

/// A `SELECT` narrowed by the filters a list request set, its values bound in order.
struct Filtered {
    sql: String,
    binds: Vec<Value>,
}

impl Filtered {
    fn select(columns: &str, table: &str) -> Self {
        Filtered {
            sql: format!("SELECT {columns} FROM {table} WHERE 1 = 1"),
            binds: Vec::new(),
        }
    }

    /// `AND column = value`, when a value is given.
    fn equal(self, column: &str, value: Option<&str>) -> Self {
        match value {
            Some(value) => self.clause(
                &format!(" AND {column} = ?"),
                [Value::Text(value.to_string())],
            ),
            None => self,
        }
    }

    /// Any other condition, with its values.
    fn clause(mut self, sql: &str, values: impl IntoIterator<Item = Value>) -> Self {
        self.sql.push_str(sql);
        self.binds.extend(values);
        self
    }

    /// One page: `limit` rows in `order_by`, and whether more follow.
    fn page<T>(
        mut self,
        conn: &Conn,
        order_by: &str,
        limit: u32,
        map: impl Fn(&Row<'_>) -> Result<T>,
    ) -> Result<(Vec<T>, bool)> {
        let limit = limit.max(1) as usize;
        self.sql
            .push_str(&format!(" ORDER BY {order_by} LIMIT {}", limit + 1));
        let binds: Vec<&dyn ToArg> = self.binds.iter().map(|v| v as &dyn ToArg).collect();
        let mut items = rows::all(conn, &self.sql, &binds, map)?;
        let more = items.len() > limit;
        items.truncate(limit);
        Ok((items, more))
    }
}

fn text(value: &str) -> Value {
    Value::Text(value.to_string())
}

/// A cursor that must be a number (a position in an ordered history).
fn seq_cursor(cursor: &str) -> Result<i64> {
    cursor
        .parse()
        .map_err(|_| Error::invalid("cursor", "not a cursor this list returned"))
}

fn ended(status: MachineStatus) -> bool {
    matches!(status, MachineStatus::Terminated | MachineStatus::Unhealthy)
}

/// What a machine's desired state is made from, from the picture (loading its zone if
/// needed).
fn desired_one(ctx: &mut Ctx<'_>, machine_id: &str) -> Result<Option<DesiredInputs>> {
    if !ctx.hot.machine_zone.contains_key(machine_id) {
        let record = rows::machine_by_id(ctx.conn, machine_id)?;
        let Some(record) = record else {
            return Ok(None);
        };
        if !ended(record.status) {
            load::zone(ctx, &record.zone_id)?;
        }
        if !ctx.hot.machine_zone.contains_key(machine_id) {
            // Ended, or its zone or fleet is gone: it shuts down (bare metal idles).
            return Ok(Some(DesiredInputs::unserved(record)));
        }
    }
    let zone_id = ctx.hot.machine_zone[machine_id].clone();
    let build_id = ctx.hot.zones[&zone_id].fleet.build_id.clone();
    let build = load::build(ctx, &build_id)?;
    Ok(ctx.hot.zones[&zone_id].desired_inputs(machine_id, build))
}

/// Tells the zones of a fleet, and its machines, that the fleet changed.
fn fleet_changed(ctx: &mut Ctx<'_>, fleet_id: &str) -> Result<()> {
    let zones: Vec<String> = rows::all(
        ctx.conn,
        "SELECT id FROM zones WHERE fleet_id = ?1",
        args![fleet_id],
        |row| Ok(row.get(0)?),
    )?;
    for zone_id in zones {
        ctx.notice(Notice::Zone { zone_id });
    }
    ctx.notice(Notice::Fleet {
        fleet_id: fleet_id.to_string(),
    });
    Ok(())
}

/// Reloads a machine into the picture and tells its watchers.
fn machine_written(ctx: &mut Ctx<'_>, machine_id: &str) -> Result<()> {
    load::machine(ctx, machine_id)?;
    let zone: Option<String> = rows::first(
        ctx.conn,
        "SELECT zone_id FROM machines WHERE id = ?1",
        args![machine_id],
        |row| Ok(row.get(0)?),
    )?;
    if let Some(zone_id) = zone {
        ctx.machine_changed(machine_id, &zone_id);
    }
    Ok(())
}

#[async_trait]
impl Store for SqlStore {
    fn changes(&self) -> &Changes {
        &self.changes
    }

    async fn insert_build(&self, build: &Build) -> Result<()> {
        let build = build.clone();
        self.writer
            .write(move |ctx| {
                rows::run(
                    ctx.conn,
                    "INSERT INTO builds (id, name, version, operating_system, source, sha256, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    args![
                        build.id,
                        build.name,
                        build.version,
                        build.operating_system.as_str(),
                        build.source,
                        build.sha256,
                        crate::time::parse_rfc3339(&build.created_at).unwrap_or_default()
                    ],
                )
                .map_err(|e| fix_error(e, "build", "id"))?;
                Ok(())
            })
            .await
    }

    async fn get_build(&self, id: &str) -> Result<Option<Build>> {
        let id = id.to_string();
        self.reader
            .read(move |conn| {
                rows::first(
                    conn,
                    "SELECT * FROM builds WHERE id = ?1",
                    args![id],
                    rows::build,
                )
            })
            .await
    }

    async fn update_build(&self, build: &Build) -> Result<()> {
        let build = build.clone();
        self.writer
            .write(move |ctx| {
                rows::run(
                    ctx.conn,
                    "UPDATE builds SET name = ?1, version = ?2 WHERE id = ?3",
                    args![build.name, build.version, build.id],
                )?;
                // Name and version only: what machines run of it is unchanged.
                if let Some(cached) = ctx.hot.builds.get_mut(&build.id) {
                    *cached = std::sync::Arc::new(build);
                }
                Ok(())
            })
            .await
    }

    async fn delete_build(&self, id: &str) -> Result<bool> {
        let id = id.to_string();
        self.writer
            .write(move |ctx| {
                // Guard: the statement itself checks no fleet uses it.
                let deleted = rows::run(
                    ctx.conn,
                    "DELETE FROM builds WHERE id = ?1 AND NOT EXISTS (SELECT 1 FROM fleets WHERE build_id = ?1)",
                    args![id],
                )?;
                if deleted > 0 {
                    ctx.hot.builds.remove(&id);
                    return Ok(true);
                }
                let users: Vec<String> = rows::all(
                    ctx.conn,
                    "SELECT name FROM fleets WHERE build_id = ?1 ORDER BY name",
                    args![id],
                    |row| Ok(row.get(0)?),
                )?;
                if users.is_empty() {
                    return Ok(false);
                }
                Err(Error::conflict(
                    "build_in_use",
                    format!("build {id} is used by fleet(s) {}", users.join(", ")),
                ))
            })
            .await
    }

    async fn insert_fleet(&self, fleet: &Fleet) -> Result<()> {
        let fleet = fleet.clone();
        self.writer
            .write(move |ctx| {
                rows::run(
                    ctx.conn,
                    "INSERT INTO fleets (id, name, description, build_id, update_mode, launch_path, launch_parameters,
                        process_restart_hours, session_mode, sessions_per_process, storage_gb, force_destroy, status, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
                    args![
                        fleet.id,
                        fleet.name,
                        fleet.description,
                        fleet.build_id,
                        fleet.update_mode.as_str(),
                        fleet.launch_path,
                        fleet.launch_parameters,
                        i64::from(fleet.process_restart_hours),
                        fleet.session_mode.as_str(),
                        i64::from(fleet.sessions_per_process),
                        i64::from(fleet.storage_gb),
                        fleet.force_destroy,
                        fleet.status.as_str(),
                        crate::time::parse_rfc3339(&fleet.created_at).unwrap_or_default()
                    ],
                )
                .map_err(|e| fix_error(e, "fleet", "name"))?;
                Ok(())
            })
            .await
    }

    async fn get_fleet(&self, id_or_name: &str) -> Result<Option<Fleet>> {
        let id = id_or_name.to_string();
        self.reader
            .read(move |conn| {
                rows::first(
                    conn,
                    "SELECT * FROM fleets WHERE id = ?1 OR name = ?1 ORDER BY id = ?1 DESC LIMIT 1",
                    args![id],
                    rows::fleet,
                )
            })
            .await
    }

    async fn update_fleet(&self, fleet: &Fleet) -> Result<()> {
        let fleet = fleet.clone();
        let now_ms = crate::time::now_ms();
        self.writer
            .write(move |ctx| {
                leases::fence_fleet(ctx, &fleet.id)?;
                let conn = ctx.conn;
                let before: Option<(String, String, Option<String>, Option<String>)> = rows::first(
                    conn,
                    "SELECT build_id, launch_path, launch_parameters, crash_loop_build_id FROM fleets WHERE id = ?1",
                    args![fleet.id],
                    |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
                )?;
                let Some((old_build, old_path, old_parameters, loop_build)) = before else {
                    return Err(Error::not_found("fleet", &fleet.id));
                };
                // A new build or launch settings void the crash-loop verdict: it was about
                // what ran before. Earlier crashes no longer count toward a new one.
                let relaunched = old_build != fleet.build_id
                    || old_path != fleet.launch_path
                    || old_parameters != fleet.launch_parameters;
                if let Some(loop_build) = &loop_build {
                    if relaunched && loop_build == &old_build {
                        let message = if old_build == fleet.build_id {
                            format!(
                                "fleet {}: launch settings changed; the crash loop of build {old_build} no longer applies",
                                fleet.name
                            )
                        } else {
                            format!(
                                "fleet {}: build changed from {old_build} to {}; the crash loop of build {old_build} no longer applies",
                                fleet.name, fleet.build_id
                            )
                        };
                        let event = EventRecord::new(
                            EventLevel::Info,
                            EventProducer::Fleet,
                            "FLEET_RECOVERED",
                            message,
                        )
                        .fleet(&fleet.id)
                        .at(now_ms);
                        stmts::event_inserted(conn, &event)?;
                    }
                }
                if old_build != fleet.build_id {
                    // A build update starts (or, mid-update, is redirected to the newer build).
                    rows::run(
                        conn,
                        "INSERT INTO build_updates (fleet_id, from_build, to_build, mode, started_at) VALUES (?1, ?2, ?3, ?4, ?5)
                         ON CONFLICT (fleet_id) DO UPDATE SET to_build = excluded.to_build, mode = excluded.mode",
                        args![fleet.id, old_build, fleet.build_id, fleet.update_mode.as_str(), now_ms],
                    )?;
                    let how = match fleet.update_mode {
                        fleetform_api::UpdateMode::Soft => {
                            "soft: processes of the old build finish their sessions, take no new one, and are replaced once idle"
                        }
                        fleetform_api::UpdateMode::Force => {
                            "force: every process moves now; sessions on the old build end LOST"
                        }
                    };
                    let event = EventRecord::new(
                        EventLevel::Info,
                        EventProducer::Fleet,
                        "BUILD_UPDATE_STARTED",
                        format!(
                            "fleet {}: build update from {old_build} to {} ({how})",
                            fleet.name, fleet.build_id
                        ),
                    )
                    .fleet(&fleet.id)
                    .at(now_ms);
                    stmts::event_inserted(conn, &event)?;
                }
                if relaunched {
                    rows::run(
                        conn,
                        "UPDATE fleets SET crash_loop_build_id = NULL, crash_loop_since = NULL, crash_count_from = ?1 WHERE id = ?2",
                        args![now_ms, fleet.id],
                    )?;
                }
                // Guard: the row is still the one read above (compare-and-set on what the
                // decisions depend on), so a concurrent update is refused, not overwritten.
                let updated = rows::run(
                    conn,
                    "UPDATE fleets SET description = ?1, build_id = ?2, update_mode = ?3, launch_path = ?4, launch_parameters = ?5,
                        process_restart_hours = ?6, sessions_per_process = ?7, storage_gb = ?8, force_destroy = ?9
                     WHERE id = ?10 AND build_id = ?11 AND launch_path = ?12 AND launch_parameters IS NOT DISTINCT FROM ?13",
                    args![
                        fleet.description,
                        fleet.build_id,
                        fleet.update_mode.as_str(),
                        fleet.launch_path,
                        fleet.launch_parameters,
                        i64::from(fleet.process_restart_hours),
                        i64::from(fleet.sessions_per_process),
                        i64::from(fleet.storage_gb),
                        fleet.force_destroy,
                        fleet.id,
                        old_build,
                        old_path,
                        old_parameters
                    ],
                )
                .map_err(|e| fix_error(e, "fleet", "build_id"))?;
                if updated == 0 {
                    return Err(Error::conflict(
                        "fleet_changed",
                        format!("fleet {} changed while it was being updated; retry", fleet.id),
                    ));
                }
                let stored = rows::first(
                    conn,
                    "SELECT * FROM fleets WHERE id = ?1",
                    args![fleet.id],
                    rows::fleet,
                )?
                .ok_or_else(|| Error::not_found("fleet", &fleet.id))?;
                ctx.hot.put_fleet(stored);
                fleet_changed(ctx, &fleet.id)
            })
            .await
    }

    async fn delete_fleet(&self, id: &str) -> Result<bool> {
        let id = id.to_string();
        self.writer
            .write(move |ctx| {
                leases::fence_fleet(ctx, &id)?;
                let conn = ctx.conn;
                let zones: Vec<String> = rows::all(
                    conn,
                    "SELECT name FROM zones WHERE fleet_id = ?1",
                    args![id],
                    |row| Ok(row.get(0)?),
                )?;
                let has_zones = || {
                    Error::conflict(
                        "fleet_has_zones",
                        format!(
                            "fleet {id} still has zone(s) {}; delete them first",
                            zones.join(", ")
                        ),
                    )
                };
                if !zones.is_empty() {
                    return Err(has_zones());
                }
                rows::run(conn, "DELETE FROM build_updates WHERE fleet_id = ?1", args![id])?;
                rows::run(conn, "DELETE FROM sessions WHERE fleet_id = ?1", args![id])?;
                // Guard: no zone was added since the check (else the job rolls back whole).
                let deleted = rows::run(
                    conn,
                    "DELETE FROM fleets WHERE id = ?1 AND NOT EXISTS (SELECT 1 FROM zones WHERE fleet_id = ?1)",
                    args![id],
                )?;
                let exists = rows::first(conn, "SELECT 1 FROM fleets WHERE id = ?1", args![id], |_| Ok(()))?;
                if exists.is_some() {
                    return Err(Error::conflict(
                        "fleet_has_zones",
                        format!("fleet {id} gained a zone while it was being deleted"),
                    ));
                }
                ctx.hot.drop_fleet(&id);
                Ok(deleted > 0)
            })
            .await
    }

    async fn insert_zone(&self, zone: &Zone) -> Result<()> {
        let zone = zone.clone();
        self.writer
            .write(move |ctx| {
                let spec =
                    serde_json::to_string(&zone.spec).map_err(|e| Error::Internal(e.to_string()))?;
                rows::run(
                    ctx.conn,
                    "INSERT INTO zones (id, fleet_id, name, spec, status, deleting, created_at) VALUES (?1, ?2, ?3, ?4, ?5, FALSE, ?6)",
                    args![
                        zone.id,
                        zone.spec.fleet_id,
                        zone.spec.name,
                        spec,
                        zone.status.as_str(),
                        crate::time::parse_rfc3339(&zone.created_at).unwrap_or_default()
                    ],
                )
                .map_err(|e| fix_error(e, "zone", "name"))?;
                // Its lease row, free: a lease manager takes it at its next round.
                rows::run(
                    ctx.conn,
                    "INSERT INTO zone_leases (zone_id) VALUES (?1)",
                    args![zone.id],
                )?;
                ctx.notice(Notice::Zone { zone_id: zone.id });
                Ok(())
            })
            .await
    }

    async fn get_zone(&self, id: &str) -> Result<Option<ZoneRecord>> {
        let id = id.to_string();
        self.reader
            .read(move |conn| {
                rows::first(
                    conn,
                    "SELECT * FROM zones WHERE id = ?1",
                    args![id],
                    rows::zone,
                )
            })
            .await
    }

    async fn find_zone(&self, fleet_id: &str, id_or_name: &str) -> Result<Option<ZoneRecord>> {
        let (fleet_id, id) = (fleet_id.to_string(), id_or_name.to_string());
        self.reader
            .read(move |conn| {
                rows::first(
                    conn,
                    "SELECT * FROM zones WHERE fleet_id = ?1 AND (id = ?2 OR name = ?2) LIMIT 1",
                    args![fleet_id, id],
                    rows::zone,
                )
            })
            .await
    }

    async fn update_zone(&self, zone: &Zone) -> Result<()> {
        let zone = zone.clone();
        self.writer
            .write(move |ctx| {
                leases::fence(ctx, &zone.id)?;
                let spec = serde_json::to_string(&zone.spec)
                    .map_err(|e| Error::Internal(e.to_string()))?;
                // The status is the reconciler's; only the spec changes here. Guard: not
                // while the zone is being deleted.
                let changed = rows::run(
                    ctx.conn,
                    "UPDATE zones SET spec = ?1 WHERE id = ?2 AND NOT deleting",
                    args![spec, zone.id],
                )?;
                if changed == 0 {
                    return Err(Error::conflict(
                        "zone_deleting",
                        format!("zone {} is being deleted (or is gone)", zone.id),
                    ));
                }
                load::zone_row(ctx, &zone.id)?;
                ctx.notice(Notice::Zone { zone_id: zone.id });
                Ok(())
            })
            .await
    }

    async fn begin_zone_deletion(&self, id: &str, force: bool) -> Result<()> {
        let id = id.to_string();
        self.writer
            .write(move |ctx| {
                leases::fence(ctx, &id)?;
                // Guard: the session check is in the statement that marks the zone.
                let changed = rows::run(
                    ctx.conn,
                    "UPDATE zones SET deleting = TRUE, status = 'DELETING'
                     WHERE id = ?1 AND (?2 OR NOT EXISTS (SELECT 1 FROM sessions WHERE zone_id = ?1 AND status = 'ACTIVE'))",
                    args![id, force],
                )?;
                if changed == 0 {
                    let active: Option<i64> = rows::first(
                        ctx.conn,
                        "SELECT (SELECT COUNT(*) FROM sessions WHERE zone_id = ?1 AND status = 'ACTIVE') FROM zones WHERE id = ?1",
                        args![id],
                        |row| Ok(row.get(0)?),
                    )?;
                    return Err(match active {
                        None => Error::not_found("zone", &id),
                        Some(active) => Error::conflict(
                            "sessions_active",
                            format!(
                                "zone {id} hosts {active} active session(s); end them, or set force_destroy = true on the fleet"
                            ),
                        ),
                    });
                }
                load::zone_row(ctx, &id)?;
                ctx.notice(Notice::Zone { zone_id: id });
                Ok(())
            })
            .await
    }

    async fn list_zones(&self) -> Result<Vec<ZoneRecord>> {
        self.reader
            .read(|conn| rows::all(conn, "SELECT * FROM zones ORDER BY id", args![], rows::zone))
            .await
    }

    async fn set_zone_status(&self, id: &str, status: ResourceStatus) -> Result<()> {
        let id = id.to_string();
        self.writer
            .write(move |ctx| {
                leases::fence(ctx, &id)?;
                // Guard: a zone being deleted stays DELETING.
                let changed = rows::run(
                    ctx.conn,
                    "UPDATE zones SET status = ?1 WHERE id = ?2 AND status <> ?1 AND NOT deleting",
                    args![status.as_str(), id],
                )?;
                if changed > 0 {
                    if let Some(zone) = ctx.hot.zones.get_mut(&id) {
                        zone.record.zone.status = status;
                    }
                }
                Ok(())
            })
            .await
    }

    async fn remove_zone(&self, id: &str) -> Result<bool> {
        let id = id.to_string();
        self.writer
            .write(move |ctx| {
                leases::fence(ctx, &id)?;
                let conn = ctx.conn;
                // Guard: only a zone being deleted whose machines have all ended.
                let removable = rows::first(
                    conn,
                    "SELECT 1 FROM zones WHERE id = ?1 AND deleting
                       AND NOT EXISTS (SELECT 1 FROM machines WHERE zone_id = ?1 AND status NOT IN ('TERMINATED', 'UNHEALTHY'))",
                    args![id],
                    |_| Ok(()),
                )?;
                if removable.is_none() {
                    return Ok(false);
                }
                for statement in [
                    "DELETE FROM sessions WHERE zone_id = ?1",
                    "DELETE FROM processes WHERE zone_id = ?1",
                    "DELETE FROM machines WHERE zone_id = ?1",
                    "DELETE FROM zones WHERE id = ?1",
                    "DELETE FROM zone_leases WHERE zone_id = ?1",
                ] {
                    rows::run(conn, statement, args![id])?;
                }
                ctx.hot.drop_zone(&id);
                ctx.notice(Notice::Zone { zone_id: id });
                Ok(true)
            })
            .await
    }

    async fn zone_observation(&self, zone_id: &str) -> Result<ZoneObservation> {
        let zone_id = zone_id.to_string();
        self.reader
            .read(move |conn| {
                let machines = rows::all(
                    conn,
                    &format!(
                        "SELECT {MACHINE_COLUMNS} FROM machines WHERE zone_id = ?1 AND status NOT IN ('TERMINATED', 'UNHEALTHY') ORDER BY id"
                    ),
                    args![zone_id],
                    rows::machine,
                )?;
                let processes = rows::all(
                    conn,
                    &format!(
                        "SELECT {PROCESS_COLUMNS} FROM processes WHERE zone_id = ?1 AND agent_state IN {LIVE_STATES} ORDER BY id"
                    ),
                    args![zone_id],
                    rows::process,
                )?;
                Ok(ZoneObservation {
                    machines,
                    processes,
                })
            })
            .await
    }

    async fn zone_summary(&self, zone_id: &str) -> Result<Option<ZoneSummary>> {
        let zone_id = zone_id.to_string();
        self.writer
            .read(move |ctx| {
                if !load::zone(ctx, &zone_id)? {
                    return Ok(None);
                }
                Ok(ctx.hot.zones.get_mut(&zone_id).map(|zone| zone.summary()))
            })
            .await
    }

    async fn zone_active_sessions(&self, zone_id: &str) -> Result<Vec<Session>> {
        let zone_id = zone_id.to_string();
        self.reader
            .read(move |conn| {
                rows::all(
                    conn,
                    &format!(
                        "SELECT {SESSION_COLUMNS} FROM sessions WHERE zone_id = ?1 AND status = 'ACTIVE' ORDER BY id"
                    ),
                    args![zone_id],
                    rows::session,
                )
            })
            .await
    }

    async fn insert_machine(&self, machine: &MachineRecord, token_hash: &str) -> Result<()> {
        let (machine, token_hash) = (machine.clone(), token_hash.to_string());
        self.writer
            .write(move |ctx| {
                leases::fence(ctx, &machine.zone_id)?;
                stmts::machine_inserted(ctx.conn, &machine, &token_hash)
                    .map_err(|e| fix_error(e, "machine", "id"))?;
                ctx.hot
                    .put_machine(HotMachine::new(machine.clone(), Vec::new(), &[]));
                ctx.machine_changed(&machine.id, &machine.zone_id);
                Ok(())
            })
            .await
    }

    async fn get_machine(&self, id: &str) -> Result<Option<MachineRecord>> {
        let id = id.to_string();
        self.reader
            .read(move |conn| rows::machine_by_id(conn, &id))
            .await
    }

    async fn machine_by_token(&self, token_hash: &str) -> Result<Option<MachineRecord>> {
        let hash = token_hash.to_string();
        self.reader
            .read(move |conn| {
                rows::first(
                    conn,
                    &format!("SELECT {MACHINE_COLUMNS} FROM machines WHERE token_hash = ?1"),
                    args![hash],
                    rows::machine,
                )
            })
            .await
    }

    async fn set_machine_status(&self, id: &str, status: MachineStatus) -> Result<()> {
        let id = id.to_string();
        let now_ms = crate::time::now_ms();
        self.writer
            .write(move |ctx| {
                leases::fence_machine(ctx, &id)?;
                // Guard: a machine that is gone stays gone: a reconciler pass that read it
                // before `machine_gone` must not bring it back to `TERMINATING`.
                let changed = rows::run(
                    ctx.conn,
                    "UPDATE machines SET status = ?1,
                        terminating_since = CASE WHEN ?1 = 'TERMINATING' THEN COALESCE(terminating_since, ?2) ELSE terminating_since END
                     WHERE id = ?3 AND status NOT IN ('TERMINATED', 'UNHEALTHY')",
                    args![status.as_str(), now_ms, id],
                )?;
                if changed > 0 {
                    machine_written(ctx, &id)?;
                }
                Ok(())
            })
            .await
    }

    async fn begin_idle_termination(&self, id: &str) -> Result<bool> {
        let id = id.to_string();
        let now_ms = crate::time::now_ms();
        self.writer
            .write(move |ctx| {
                leases::fence_machine(ctx, &id)?;
                // Guard: idle, checked in the statement that marks it.
                let changed = rows::run(
                    ctx.conn,
                    "UPDATE machines SET status = 'TERMINATING', terminating_since = COALESCE(terminating_since, ?1)
                     WHERE id = ?2 AND status NOT IN ('TERMINATED', 'UNHEALTHY')
                       AND NOT EXISTS (SELECT 1 FROM sessions WHERE machine_id = ?2 AND status = 'ACTIVE')",
                    args![now_ms, id],
                )?;
                if changed > 0 {
                    machine_written(ctx, &id)?;
                }
                Ok(changed > 0)
            })
            .await
    }

    async fn revoke_machine(&self, id: &str, reason: &str, now_ms: i64) -> Result<Option<u32>> {
        let (id, reason) = (id.to_string(), reason.to_string());
        self.writer
            .write(move |ctx| {
                leases::fence_machine(ctx, &id)?;
                // Guard: only a machine that has not ended.
                let updated = rows::run(
                    ctx.conn,
                    "UPDATE machines SET status = 'TERMINATING', terminating_since = COALESCE(terminating_since, ?1),
                        termination_reason = COALESCE(termination_reason, ?2)
                     WHERE id = ?3 AND status NOT IN ('TERMINATED', 'UNHEALTHY')",
                    args![now_ms, reason, id],
                )?;
                if updated == 0 {
                    return Ok(None);
                }
                let lost = stmts::sessions_lost(ctx.conn, &id, &reason, now_ms)?;
                rows::run(
                    ctx.conn,
                    "UPDATE processes SET active_sessions = 0 WHERE machine_id = ?1 AND active_sessions > 0",
                    args![id],
                )?;
                machine_written(ctx, &id)?;
                Ok(Some(lost as u32))
            })
            .await
    }

    async fn lose_old_build_sessions(
        &self,
        zone_id: &str,
        build_id: &str,
        reason: &str,
        now_ms: i64,
    ) -> Result<u32> {
        let (zone_id, build_id, reason) = (
            zone_id.to_string(),
            build_id.to_string(),
            reason.to_string(),
        );
        self.writer
            .write(move |ctx| {
                leases::fence(ctx, &zone_id)?;
                let machines: Vec<String> = rows::all(
                    ctx.conn,
                    "UPDATE sessions SET status = 'LOST', reason = ?1, ended_at = GREATEST(created_at, ?2)
                     WHERE zone_id = ?3 AND status = 'ACTIVE' AND build_id <> ?4
                     RETURNING machine_id",
                    args![reason, now_ms, zone_id, build_id],
                    |row| Ok(row.get(0)?),
                )?;
                if machines.is_empty() {
                    return Ok(0);
                }
                rows::run(
                    ctx.conn,
                    &format!(
                        "UPDATE processes SET active_sessions = 0
                         WHERE zone_id = ?1 AND build_id <> ?2 AND agent_state IN {LIVE_STATES} AND active_sessions > 0"
                    ),
                    args![zone_id, build_id],
                )?;
                let distinct: BTreeSet<&String> = machines.iter().collect();
                for machine_id in distinct {
                    load::machine(ctx, machine_id)?;
                    ctx.machine_changed(machine_id, &zone_id);
                }
                Ok(machines.len() as u32)
            })
            .await
    }

    async fn set_machine_driver_ref(&self, id: &str, driver_ref: &str) -> Result<()> {
        let (id, driver_ref) = (id.to_string(), driver_ref.to_string());
        self.writer
            .write(move |ctx| {
                leases::fence_machine(ctx, &id)?;
                rows::run(
                    ctx.conn,
                    "UPDATE machines SET driver_ref = ?1, status = CASE WHEN status = 'PENDING' THEN 'LAUNCHING' ELSE status END WHERE id = ?2",
                    args![driver_ref, id],
                )?;
                if let Some(zone) = ctx.hot.zone_of_machine(&id) {
                    if let Some(machine) = zone.machines.get_mut(&id) {
                        let record = machine.record_mut();
                        record.driver_ref = Some(driver_ref);
                        if record.status == MachineStatus::Pending {
                            record.status = MachineStatus::Launching;
                        }
                    }
                }
                Ok(())
            })
            .await
    }

    async fn set_machine_targets(&self, targets: &[(String, u32)]) -> Result<()> {
        if targets.is_empty() {
            return Ok(());
        }
        let targets = targets.to_vec();
        self.writer
            .write(move |ctx| {
                for (id, _) in &targets {
                    leases::fence_machine(ctx, id)?;
                }
                for (id, target) in &targets {
                    rows::run(
                        ctx.conn,
                        "UPDATE machines SET target_processes = ?1 WHERE id = ?2",
                        args![i64::from(*target), id],
                    )?;
                }
                for (id, target) in &targets {
                    let Some(zone) = ctx.hot.zone_of_machine(id) else {
                        continue;
                    };
                    let zone_id = zone.id().to_string();
                    if let Some(machine) = zone.machines.get_mut(id) {
                        machine.record_mut().target_processes = *target;
                    }
                    ctx.machine_changed(id, &zone_id);
                }
                Ok(())
            })
            .await
    }

    async fn touch_zone(&self, zone_id: &str, now_ms: i64) -> Result<()> {
        let zone_id = zone_id.to_string();
        self.writer
            .write(move |ctx| {
                leases::fence(ctx, &zone_id)?;
                rows::run(
                    ctx.conn,
                    "UPDATE zones SET idle_since = GREATEST(COALESCE(idle_since, 0), ?1) WHERE id = ?2",
                    args![now_ms, zone_id],
                )?;
                if let Some(zone) = ctx.hot.zones.get_mut(&zone_id) {
                    zone.record.idle_since_ms = zone.record.idle_since_ms.max(now_ms);
                }
                Ok(())
            })
            .await
    }

    async fn machine_gone(&self, id: &str, reason: &str, now_ms: i64) -> Result<()> {
        self.end_machine(id, reason, now_ms, MachineStatus::Terminated)
            .await
    }

    async fn machine_unhealthy(&self, id: &str, reason: &str, now_ms: i64) -> Result<()> {
        self.end_machine(id, reason, now_ms, MachineStatus::Unhealthy)
            .await
    }

    async fn reboot_machine(&self, id: &str, reason: &str, now_ms: i64) -> Result<Option<u32>> {
        let (id, reason) = (id.to_string(), reason.to_string());
        self.writer
            .write(move |ctx| {
                leases::fence_machine(ctx, &id)?;
                // Guard: the machine row, touched in service, is what the rest depends on
                // (on Postgres this locks it for the transaction).
                let in_service = rows::run(
                    ctx.conn,
                    "UPDATE machines SET status = status WHERE id = ?1 AND status IN ('PENDING', 'LAUNCHING', 'ACTIVE')",
                    args![id],
                )?;
                if in_service == 0 {
                    return Ok(None);
                }
                let lost = stmts::sessions_lost(ctx.conn, &id, &reason, now_ms)?;
                rows::run(
                    ctx.conn,
                    &format!(
                        "UPDATE processes SET active_sessions = 0, restart_requested = TRUE
                         WHERE machine_id = ?1 AND agent_state IN {LIVE_STATES}"
                    ),
                    args![id],
                )?;
                machine_written(ctx, &id)?;
                Ok(Some(lost as u32))
            })
            .await
    }

    async fn finish_build_update(&self, fleet_id: &str, now_ms: i64) -> Result<bool> {
        let fleet_id = fleet_id.to_string();
        // Every zone pass asks; most of the time no update runs, and a write would wait
        // for a batch and its fsync to say so. One that starts after this look is finished
        // by a later pass.
        let running = {
            let fleet_id = fleet_id.clone();
            self.reader
                .read(move |conn| {
                    Ok(rows::first(
                        conn,
                        "SELECT 1 FROM build_updates WHERE fleet_id = ?1",
                        args![fleet_id],
                        |_| Ok(()),
                    )?
                    .is_some())
                })
                .await?
        };
        if !running {
            return Ok(false);
        }
        self.writer
            .write(move |ctx| {
                leases::fence_fleet(ctx, &fleet_id)?;
                // Guard: the update ends only if no live process of another build remains,
                // checked in the statement that ends it.
                let finished: Option<(String, String, i64)> = rows::first(
                    ctx.conn,
                    &format!(
                        "DELETE FROM build_updates WHERE fleet_id = ?1 AND NOT EXISTS (
                            SELECT 1 FROM processes p WHERE p.fleet_id = ?1 AND p.build_id <> build_updates.to_build
                              AND p.agent_state IN {LIVE_STATES})
                         RETURNING from_build, to_build, started_at"
                    ),
                    args![fleet_id],
                    |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
                )?;
                let Some((from_build, to_build, started_at)) = finished else {
                    return Ok(false);
                };
                let event = EventRecord::new(
                    EventLevel::Info,
                    EventProducer::Fleet,
                    "BUILD_UPDATE_COMPLETED",
                    format!(
                        "build update from {from_build} to {to_build} complete: no process of another build runs ({:.1} s)",
                        (now_ms - started_at) as f64 / 1000.0
                    ),
                )
                .fleet(&fleet_id)
                .at(now_ms);
                stmts::event_inserted(ctx.conn, &event)?;
                Ok(true)
            })
            .await
    }

    async fn fleet_machines(
        &self,
        fleet_id: &str,
        filter: &MachineFilter,
    ) -> Result<Page<MachineRecord>> {
        let (fleet_id, filter) = (fleet_id.to_string(), filter.clone());
        self.reader
            .read(move |conn| {
                let mut list = Filtered::select(MACHINE_COLUMNS, "machines")
                    .equal("fleet_id", Some(&fleet_id))
                    .equal("id", filter.id.as_deref())
                    .equal("address", filter.address.as_deref())
                    .equal("build_id", filter.build_id.as_deref())
                    .equal("data_center", filter.data_center.as_deref())
                    .equal("zone_id", filter.zone_id.as_deref())
                    .equal("status", filter.status.map(MachineStatus::as_str));
                if let Some(cursor) = &filter.cursor {
                    list = list.clause(" AND id > ?", [text(cursor)]);
                }
                let (items, more) = list.page(conn, "id", filter.limit, rows::machine)?;
                let next_cursor = more.then(|| items.last().map(|m| m.id.clone())).flatten();
                Ok(Page { items, next_cursor })
            })
            .await
    }

    async fn machines_on_other_builds(
        &self,
        fleet_id: &str,
        build_id: &str,
    ) -> Result<BTreeSet<String>> {
        let (fleet_id, build_id) = (fleet_id.to_string(), build_id.to_string());
        self.reader
            .read(move |conn| {
                Ok(rows::all(
                    conn,
                    &format!(
                        "SELECT DISTINCT machine_id FROM processes
                         WHERE fleet_id = ?1 AND build_id <> ?2 AND agent_state IN {LIVE_STATES}"
                    ),
                    args![fleet_id, build_id],
                    |row| Ok(row.get::<_, String>(0)?),
                )?
                .into_iter()
                .collect())
            })
            .await
    }

    async fn fleet_processes(
        &self,
        fleet_id: &str,
        filter: &ProcessFilter,
    ) -> Result<Page<ProcessRecord>> {
        let (fleet_id, filter) = (fleet_id.to_string(), filter.clone());
        self.reader
            .read(move |conn| {
                let mut list = Filtered::select(PROCESS_COLUMNS, "processes")
                    .equal("fleet_id", Some(&fleet_id))
                    .equal("machine_id", filter.machine_id.as_deref());
                if filter.live_only {
                    list = list.clause(&format!(" AND agent_state IN {LIVE_STATES}"), []);
                }
                if let Some(cursor) = &filter.cursor {
                    list = list.clause(" AND id > ?", [text(cursor)]);
                }
                let (items, more) = list.page(conn, "id", filter.limit, rows::process)?;
                let next_cursor = more.then(|| items.last().map(|p| p.id.clone())).flatten();
                Ok(Page { items, next_cursor })
            })
            .await
    }

    async fn machine_processes(&self, machine_id: &str) -> Result<Vec<ProcessRecord>> {
        let machine_id = machine_id.to_string();
        self.reader
            .read(move |conn| {
                rows::all(
                    conn,
                    &format!(
                        "SELECT {PROCESS_COLUMNS} FROM processes WHERE machine_id = ?1 AND agent_state IN {LIVE_STATES} ORDER BY id"
                    ),
                    args![machine_id],
                    rows::process,
                )
            })
            .await
    }

    async fn desired_state(
        &self,
        machine_id: &str,
        now_ms: i64,
    ) -> Result<Option<(MachineRecord, DesiredMachine)>> {
        let machine_id = machine_id.to_string();
        let inputs = self
            .writer
            .read(move |ctx| desired_one(ctx, &machine_id))
            .await?;
        Ok(inputs.map(|inputs| inputs.desired(now_ms)))
    }

    async fn desired_states(
        &self,
        machine_ids: &[String],
        now_ms: i64,
    ) -> Result<Vec<(MachineRecord, DesiredMachine)>> {
        let machine_ids = machine_ids.to_vec();
        let inputs = self
            .writer
            .read(move |ctx| {
                let mut out = Vec::with_capacity(machine_ids.len());
                for id in &machine_ids {
                    out.extend(desired_one(ctx, id)?);
                }
                Ok(out)
            })
            .await?;
        Ok(inputs
            .into_iter()
            .map(|inputs| inputs.desired(now_ms))
            .collect())
    }

    async fn insert_bare_metal(&self, machine: &BareMetalMachine, token_hash: &str) -> Result<()> {
        let (machine, token_hash) = (machine.clone(), token_hash.to_string());
        self.writer
            .write(move |ctx| {
                let labels = serde_json::to_string(&machine.labels)
                    .map_err(|e| Error::Internal(e.to_string()))?;
                rows::run(
                    ctx.conn,
                    "INSERT INTO bare_metal_machines (id, name, location, address, cores, memory_gb, labels, agent_token, token_hash, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                    args![
                        machine.id,
                        machine.name,
                        machine.location,
                        machine.address,
                        machine.cores.map(i64::from),
                        machine.memory_gb.map(i64::from),
                        labels,
                        machine.agent_token,
                        token_hash,
                        crate::time::parse_rfc3339(&machine.created_at).unwrap_or_default()
                    ],
                )
                .map_err(|e| fix_error(e, "bare-metal machine", "name"))?;
                // Zones short of pool machines at this location may take it now.
                let zones: Vec<String> = rows::all(ctx.conn, "SELECT id FROM zones", args![], |row| Ok(row.get(0)?))?;
                for zone_id in zones {
                    ctx.notice(Notice::Zone { zone_id });
                }
                Ok(())
            })
            .await
    }

    async fn get_bare_metal(&self, id: &str) -> Result<Option<BareMetalMachine>> {
        let id = id.to_string();
        self.reader
            .read(move |conn| {
                rows::first(
                    conn,
                    &format!("{} WHERE b.id = ?1", rows::BARE_METAL_SELECT),
                    args![id],
                    rows::bare_metal,
                )
            })
            .await
    }

    async fn list_bare_metal(&self, location: Option<&str>) -> Result<Vec<BareMetalMachine>> {
        let location = location.map(str::to_string);
        self.reader
            .read(move |conn| {
                rows::all(
                    conn,
                    &format!(
                        "{} WHERE (CAST(?1 AS TEXT) IS NULL OR b.location = ?1) ORDER BY b.name",
                        rows::BARE_METAL_SELECT
                    ),
                    args![location],
                    rows::bare_metal,
                )
            })
            .await
    }

    async fn update_bare_metal(&self, machine: &BareMetalMachine) -> Result<()> {
        let machine = machine.clone();
        self.writer
            .write(move |ctx| {
                let labels = serde_json::to_string(&machine.labels)
                    .map_err(|e| Error::Internal(e.to_string()))?;
                rows::run(
                    ctx.conn,
                    "UPDATE bare_metal_machines SET name = ?1, address = ?2, cores = ?3, memory_gb = ?4, labels = ?5 WHERE id = ?6",
                    args![
                        machine.name,
                        machine.address,
                        machine.cores.map(i64::from),
                        machine.memory_gb.map(i64::from),
                        labels,
                        machine.id
                    ],
                )
                .map_err(|e| fix_error(e, "bare-metal machine", "name"))?;
                // New sessions on the machine it serves go to its new address.
                let serving: Vec<String> = rows::all(
                    ctx.conn,
                    "UPDATE machines SET address = ?1 WHERE bare_metal_id = ?2 AND status NOT IN ('TERMINATED', 'UNHEALTHY')
                     RETURNING id",
                    args![machine.address, machine.id],
                    |row| Ok(row.get(0)?),
                )?;
                for id in serving {
                    machine_written(ctx, &id)?;
                }
                ctx.notice(Notice::Pool {
                    bare_metal_id: machine.id,
                });
                Ok(())
            })
            .await
    }

    async fn delete_bare_metal(&self, id: &str, now_ms: i64) -> Result<bool> {
        let id = id.to_string();
        self.writer
            .write(move |ctx| {
                let conn = ctx.conn;
                let known = rows::first(
                    conn,
                    "SELECT 1 FROM bare_metal_machines WHERE id = ?1",
                    args![id],
                    |_| Ok(()),
                )?;
                if known.is_none() {
                    return Ok(false);
                }
                let serving: Option<(String, String, String, i64)> = rows::first(
                    conn,
                    "SELECT m.id, m.fleet_id, m.zone_id,
                        (SELECT COUNT(*) FROM sessions s WHERE s.machine_id = m.id AND s.status = 'ACTIVE')
                     FROM machines m WHERE m.bare_metal_id = ?1 AND m.status NOT IN ('TERMINATED', 'UNHEALTHY')",
                    args![id],
                    |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
                )?;
                if let Some((machine_id, fleet_id, zone_id, sessions)) = serving {
                    leases::fence(ctx, &zone_id)?;
                    // Guard: the session check is in the statement that ends the machine.
                    let idle = rows::run(
                        conn,
                        "UPDATE machines SET status = status WHERE id = ?1
                           AND NOT EXISTS (SELECT 1 FROM sessions WHERE machine_id = ?1 AND status = 'ACTIVE')",
                        args![machine_id],
                    )?;
                    if sessions > 0 || idle == 0 {
                        return Err(Error::conflict(
                            "machine_in_use",
                            format!(
                                "bare-metal machine {id} hosts {sessions} active sessions (machine {machine_id}); end them, or lower the zone's bare_metal_machines and wait for it to drain"
                            ),
                        ));
                    }
                    let reason = "its bare-metal machine was removed from the pool";
                    stmts::end_machine(conn, &machine_id, reason, now_ms, MachineStatus::Terminated)?;
                    let event = EventRecord::new(
                        EventLevel::Warning,
                        EventProducer::Machine,
                        "BARE_METAL_REMOVED",
                        format!("machine {machine_id} ended: bare-metal machine {id} was removed from the pool; its zone takes another if the pool has one"),
                    )
                    .fleet(&fleet_id)
                    .zone(&zone_id)
                    .machine(&machine_id)
                    .at(now_ms);
                    stmts::event_inserted(conn, &event)?;
                    ctx.hot.remove_machine(&machine_id);
                    ctx.machine_changed(&machine_id, &zone_id);
                }
                rows::run(ctx.conn, "DELETE FROM bare_metal_machines WHERE id = ?1", args![id])?;
                ctx.notice(Notice::Pool { bare_metal_id: id });
                Ok(true)
            })
            .await
    }

    async fn bare_metal_by_token(
        &self,
        token_hash: &str,
    ) -> Result<Option<(BareMetalMachine, Option<MachineRecord>)>> {
        let hash = token_hash.to_string();
        self.reader
            .read(move |conn| {
                let Some(pool) = rows::first(
                    conn,
                    &format!("{} WHERE b.token_hash = ?1", rows::BARE_METAL_SELECT),
                    args![hash],
                    rows::bare_metal,
                )?
                else {
                    return Ok(None);
                };
                let serving = match &pool.machine_id {
                    Some(machine_id) => rows::machine_by_id(conn, machine_id)?,
                    None => None,
                };
                Ok(Some((pool, serving)))
            })
            .await
    }

    async fn touch_bare_metal(&self, id: &str, now_ms: i64) -> Result<()> {
        let id = id.to_string();
        self.writer
            .write(move |ctx| {
                rows::run(
                    ctx.conn,
                    "UPDATE bare_metal_machines SET last_heartbeat_at = ?1 WHERE id = ?2",
                    args![now_ms, id],
                )?;
                Ok(())
            })
            .await
    }

    async fn assign_bare_metal(
        &self,
        template: &MachineRecord,
        count: u32,
    ) -> Result<Vec<MachineRecord>> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let template = template.clone();
        self.writer
            .write(move |ctx| {
                // Free machines whose agent was heard from most recently first: they serve
                // soonest. Guard: the partial unique index on live machines' bare_metal_id
                // refuses a second live machine for one pool machine, whatever raced.
                let free: Vec<(String, String)> = rows::all(
                    ctx.conn,
                    "SELECT b.id, b.address FROM bare_metal_machines b
                     WHERE b.location = ?1 AND NOT EXISTS (
                        SELECT 1 FROM machines m WHERE m.bare_metal_id = b.id AND m.status NOT IN ('TERMINATED', 'UNHEALTHY'))
                     ORDER BY COALESCE(b.last_heartbeat_at, 0) DESC, b.name LIMIT ?2",
                    args![template.location, i64::from(count)],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )?;
                leases::fence(ctx, &template.zone_id)?;
                let mut assigned = Vec::with_capacity(free.len());
                for (pool_id, address) in free {
                    let machine = MachineRecord {
                        id: crate::time::new_id("mch"),
                        status: MachineStatus::Launching,
                        driver_ref: Some(pool_id.clone()),
                        address: Some(address),
                        bare_metal_id: Some(pool_id),
                        ..template.clone()
                    };
                    // Its agent authenticates with the pool machine's token, never with this one.
                    let unusable_token = format!("bare-metal:{}", machine.id);
                    stmts::machine_inserted(ctx.conn, &machine, &unusable_token)?;
                    assigned.push(machine);
                }
                for machine in &assigned {
                    ctx.hot
                        .put_machine(HotMachine::new(machine.clone(), Vec::new(), &[]));
                    ctx.machine_changed(&machine.id, &machine.zone_id);
                    ctx.notice(Notice::Pool {
                        bare_metal_id: machine.bare_metal_id.clone().unwrap_or_default(),
                    });
                }
                Ok(assigned)
            })
            .await
    }

    async fn apply_agent_report(
        &self,
        machine: &MachineRecord,
        report: &SyncRequest,
        now_ms: i64,
    ) -> Result<ReportOutcome> {
        let (machine, mut report) = (machine.clone(), report.clone());
        // Thousands of ended sessions (a packed parallel-mode machine) in one job would
        // hold up every other write for tens of milliseconds: all but the last chunk are
        // ended in jobs of their own first, so other writes go between them.
        let mut chunks: Vec<Vec<String>> = report
            .ended_sessions
            .chunks(report::ENDS_PER_JOB)
            .map(<[String]>::to_vec)
            .collect();
        report.ended_sessions = chunks.pop().unwrap_or_default();
        let mut ended = 0;
        for chunk in chunks {
            let machine = machine.clone();
            ended += self
                .writer
                .write(move |ctx| report::end_sessions(ctx, &machine, &chunk, now_ms))
                .await?;
        }
        let mut outcome = self
            .writer
            .write(move |ctx| report::apply(ctx, &machine, &report, now_ms))
            .await?;
        outcome.sessions_ended += ended;
        outcome.placement_changed |= ended > 0;
        Ok(outcome)
    }

    async fn machine_active_sessions(&self, machine_id: &str) -> Result<Vec<Session>> {
        let machine_id = machine_id.to_string();
        self.reader
            .read(move |conn| {
                rows::all(
                    conn,
                    &format!(
                        "SELECT {SESSION_COLUMNS} FROM sessions WHERE machine_id = ?1 AND status = 'ACTIVE' ORDER BY id"
                    ),
                    args![machine_id],
                    rows::session,
                )
            })
            .await
    }

    async fn place_session(&self, args: PlaceArgs) -> Result<PlaceOutcome> {
        // On Postgres a placement with an idempotency key gets a savepoint: another
        // replica may insert the same key at once (for another zone of the fleet, which
        // the zone's fence does not serialize), and the unique index's refusal must fail
        // that job alone, not the batch.
        if args.idempotency_key.is_some() && matches!(self.database, Database::Postgres(_)) {
            return self.writer.write(move |ctx| place::place(ctx, args)).await;
        }
        self.writer.place(args).await
    }

    async fn get_session(&self, id: &str) -> Result<Option<Session>> {
        let id = id.to_string();
        self.reader
            .read(move |conn| rows::session_by_id(conn, &id))
            .await
    }

    async fn end_session(&self, id: &str, now_ms: i64) -> Result<Option<EndOutcome>> {
        let id = id.to_string();
        self.writer
            .write_plain(move |ctx| place::end(ctx, &id, now_ms))
            .await
    }

    async fn list_sessions(&self, filter: &SessionFilter) -> Result<Page<Session>> {
        let filter = filter.clone();
        self.reader
            .read(move |conn| {
                let mut list = Filtered::select(SESSION_COLUMNS, "sessions")
                    .equal("fleet_id", filter.fleet_id.as_deref())
                    .equal("zone_id", filter.zone_id.as_deref())
                    .equal("data_center", filter.data_center.as_deref())
                    .equal("machine_id", filter.machine_id.as_deref())
                    .equal("build_id", filter.build_id.as_deref())
                    .equal("status", filter.status.map(SessionStatus::as_str));
                if let Some(cursor) = &filter.cursor {
                    list = list.clause(" AND id > ?", [text(cursor)]);
                }
                let (items, more) = list.page(conn, "id", filter.limit, rows::session)?;
                let next_cursor = more.then(|| items.last().map(|s| s.id.clone())).flatten();
                Ok(Page { items, next_cursor })
            })
            .await
    }

    async fn insert_event(&self, event: &EventRecord) -> Result<()> {
        let event = event.clone();
        self.writer
            .write(move |ctx| {
                // A reconciler's event carries its lease's generation (fenced, so the
                // generations of one zone's events never go down).
                let mut event = event;
                if let Some(lease) = ctx.lease.clone() {
                    if event.zone_id.as_deref() == Some(lease.zone_id.as_str()) {
                        leases::fence(ctx, &lease.zone_id)?;
                        event.lease_generation = Some(lease.generation);
                    }
                }
                stmts::event_inserted(ctx.conn, &event)
            })
            .await
    }

    async fn list_events(&self, filter: &EventFilter) -> Result<Page<EventRecord>> {
        let filter = filter.clone();
        self.reader
            .read(move |conn| {
                let mut list = Filtered::select("seq, *", "events")
                    .equal("fleet_id", filter.fleet_id.as_deref())
                    .equal("zone_id", filter.zone_id.as_deref())
                    .equal("machine_id", filter.machine_id.as_deref())
                    .equal("level", filter.level.map(EventLevel::as_str))
                    .equal("producer", filter.producer.map(EventProducer::as_str));
                if let Some(text_filter) = &filter.text {
                    // LOWER on both sides rather than SQLite's case-blind LIKE, so the SQL
                    // means the same on Postgres (whose LIKE is case-sensitive).
                    let pattern = stmts::like_pattern(text_filter);
                    list = list.clause(
                        " AND (LOWER(message) LIKE LOWER(?) ESCAPE '\\' OR LOWER(code) LIKE LOWER(?) ESCAPE '\\')",
                        [text(&pattern), text(&pattern)],
                    );
                }
                if let Some(cursor) = &filter.cursor {
                    list = list.clause(" AND seq < ?", [Value::Int(seq_cursor(cursor)?)]);
                }
                let (items, more) = list.page(conn, "seq DESC", filter.limit, |row| {
                    Ok((row.get::<_, i64>(0)?, rows::event(row)?))
                })?;
                let next_cursor = more.then(|| items.last().map(|(seq, _)| seq.to_string())).flatten();
                Ok(Page {
                    items: items.into_iter().map(|(_, event)| event).collect(),
                    next_cursor,
                })
            })
            .await
    }

    async fn list_crashes(&self, filter: &CrashFilter) -> Result<Page<CrashRecord>> {
        let filter = filter.clone();
        self.reader
            .read(move |conn| {
                let mut list = Filtered::select("seq, *", "crashes")
                    .equal("fleet_id", filter.fleet_id.as_deref())
                    .equal("zone_id", filter.zone_id.as_deref())
                    .equal("machine_id", filter.machine_id.as_deref())
                    .equal("build_id", filter.build_id.as_deref());
                if let Some(cursor) = &filter.cursor {
                    list = list.clause(" AND seq < ?", [Value::Int(seq_cursor(cursor)?)]);
                }
                let (items, more) = list.page(conn, "seq DESC", filter.limit, |row| {
                    Ok((row.get::<_, i64>(0)?, rows::crash(row)?))
                })?;
                let next_cursor = more
                    .then(|| items.last().map(|(seq, _)| seq.to_string()))
                    .flatten();
                Ok(Page {
                    items: items.into_iter().map(|(_, crash)| crash).collect(),
                    next_cursor,
                })
            })
            .await
    }

    async fn lease_round(
        &self,
        request: crate::leases::LeaseRequest,
    ) -> Result<crate::leases::LeaseRound> {
        self.writer
            .write(move |ctx| leases::round(ctx, &request))
            .await
    }

    async fn prune_history(&self, before_ms: i64, batch: u32) -> Result<Pruned> {
        self.writer
            .write(move |ctx| {
                let batch = i64::from(batch.max(1));
                // Session ids are UUIDv7 (`sess-` and 48 bits of milliseconds first): one
                // that ended before `before_ms` was created before it, so the scan stops at
                // the first id of that instant instead of reading every live session.
                let boundary = format!("sess-{:012x}", before_ms.max(0));
                let sessions = rows::run(
                    ctx.conn,
                    "DELETE FROM sessions WHERE id IN (
                        SELECT id FROM sessions WHERE id < ?3 AND status <> 'ACTIVE' AND ended_at < ?1 LIMIT ?2)",
                    args![before_ms, batch, boundary],
                )? as u64;
                // A process goes only when no session on it is active (looked up by its
                // machine, which the partial index of active sessions is keyed on).
                let processes = rows::run(
                    ctx.conn,
                    "DELETE FROM processes WHERE id IN (
                        SELECT id FROM processes WHERE agent_state IN ('EXITED', 'CRASHED') AND ended_at < ?1
                          AND NOT EXISTS (SELECT 1 FROM sessions s WHERE s.machine_id = processes.machine_id
                                          AND s.process_id = processes.id AND s.status = 'ACTIVE')
                        LIMIT ?2)",
                    args![before_ms, batch],
                )? as u64;
                let machines = rows::run(
                    ctx.conn,
                    "DELETE FROM machines WHERE id IN (
                        SELECT id FROM machines WHERE status IN ('TERMINATED', 'UNHEALTHY') AND terminated_at < ?1
                          AND NOT EXISTS (SELECT 1 FROM processes p WHERE p.machine_id = machines.id)
                        LIMIT ?2)",
                    args![before_ms, batch],
                )? as u64;
                Ok(Pruned {
                    sessions,
                    processes,
                    machines,
                })
            })
            .await
    }
}

impl SqlStore {
    /// A machine's end, in one job: see [`Store::machine_gone`].
    async fn end_machine(
        &self,
        id: &str,
        reason: &str,
        now_ms: i64,
        status: MachineStatus,
    ) -> Result<()> {
        let (id, reason) = (id.to_string(), reason.to_string());
        self.writer
            .write(move |ctx| {
                let zone: Option<String> = rows::first(
                    ctx.conn,
                    "SELECT zone_id FROM machines WHERE id = ?1",
                    args![id],
                    |row| Ok(row.get(0)?),
                )?;
                if let Some(zone_id) = &zone {
                    leases::fence(ctx, zone_id)?;
                }
                if stmts::end_machine(ctx.conn, &id, &reason, now_ms, status)? {
                    ctx.hot.remove_machine(&id);
                    if let Some(zone_id) = zone {
                        ctx.machine_changed(&id, &zone_id);
                    }
                }
                Ok(())
            })
            .await
    }
}
