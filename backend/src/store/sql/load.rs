//! Filling the writer's picture ([`Hot`](crate::store::hot::Hot)) from the database: a
//! zone when first needed, a machine after any write to it (or any doubt about it), a
//! fleet or build when first named.

use std::collections::HashMap;
use std::sync::Arc;

use crate::store::db::args;
use fleetform_api::{Build, Fleet, Session};

use super::rows::{self, LIVE_STATES, MACHINE_COLUMNS, PROCESS_COLUMNS, SESSION_COLUMNS};
use super::writer::Ctx;
use crate::store::hot::{HotMachine, HotZone};
use crate::store::ProcessRecord;
use crate::Result;

/// The fleet of `id_or_name`, from the picture or the database.
pub fn fleet(ctx: &mut Ctx<'_>, id_or_name: &str) -> Result<Option<Arc<Fleet>>> {
    if let Some(fleet) = ctx.hot.fleet(id_or_name) {
        return Ok(Some(fleet));
    }
    let fleet = rows::first(
        ctx.conn,
        "SELECT * FROM fleets WHERE id = ?1 OR name = ?1 ORDER BY id = ?1 DESC LIMIT 1",
        args![id_or_name],
        rows::fleet,
    )?;
    Ok(fleet.map(|fleet| {
        let id = fleet.id.clone();
        ctx.hot.put_fleet(fleet);
        ctx.hot.fleets[&id].clone()
    }))
}

/// Re-reads a fleet the picture holds (another replica changed it).
pub fn fleet_again(ctx: &mut Ctx<'_>, fleet_id: &str) -> Result<()> {
    if !ctx.hot.fleets.contains_key(fleet_id) {
        return Ok(());
    }
    let fleet = rows::first(
        ctx.conn,
        "SELECT * FROM fleets WHERE id = ?1",
        args![fleet_id],
        rows::fleet,
    )?;
    match fleet {
        Some(fleet) => ctx.hot.put_fleet(fleet),
        None => ctx.hot.drop_fleet(fleet_id),
    }
    Ok(())
}

/// A build, from the picture or the database (a build's launch fields never change).
pub fn build(ctx: &mut Ctx<'_>, id: &str) -> Result<Option<Arc<Build>>> {
    if let Some(build) = ctx.hot.builds.get(id) {
        return Ok(Some(build.clone()));
    }
    let build = rows::first(
        ctx.conn,
        "SELECT * FROM builds WHERE id = ?1",
        args![id],
        rows::build,
    )?
    .map(Arc::new);
    if let Some(build) = &build {
        ctx.hot.builds.insert(id.to_string(), build.clone());
    }
    Ok(build)
}

/// Loads a zone into the picture unless it is there. False when the zone does not exist.
pub fn zone(ctx: &mut Ctx<'_>, zone_id: &str) -> Result<bool> {
    if ctx.hot.zones.contains_key(zone_id) {
        return Ok(true);
    }
    let Some(record) = rows::first(
        ctx.conn,
        "SELECT * FROM zones WHERE id = ?1",
        args![zone_id],
        rows::zone,
    )?
    else {
        return Ok(false);
    };
    let Some(fleet) = fleet(ctx, &record.zone.spec.fleet_id)? else {
        return Ok(false);
    };
    let machines = rows::all(
        ctx.conn,
        &format!(
            "SELECT {MACHINE_COLUMNS} FROM machines WHERE zone_id = ?1 AND status NOT IN ('TERMINATED', 'UNHEALTHY')"
        ),
        args![zone_id],
        rows::machine,
    )?;
    let mut processes: HashMap<String, Vec<ProcessRecord>> = HashMap::new();
    for process in rows::all(
        ctx.conn,
        &format!(
            "SELECT {PROCESS_COLUMNS} FROM processes WHERE zone_id = ?1 AND agent_state IN {LIVE_STATES}"
        ),
        args![zone_id],
        rows::process,
    )? {
        processes
            .entry(process.machine_id.clone())
            .or_default()
            .push(process);
    }
    let mut sessions: HashMap<String, Vec<Session>> = HashMap::new();
    for session in rows::all(
        ctx.conn,
        &format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE zone_id = ?1 AND status = 'ACTIVE'"),
        args![zone_id],
        rows::session,
    )? {
        sessions
            .entry(session.machine_id.clone())
            .or_default()
            .push(session);
    }
    let machines = machines
        .into_iter()
        .map(|machine| {
            let processes = processes.remove(&machine.id).unwrap_or_default();
            let sessions = sessions.remove(&machine.id).unwrap_or_default();
            HotMachine::new(machine, processes, &sessions)
        })
        .collect();
    ctx.hot.insert_zone(HotZone::new(record, fleet, machines));
    Ok(true)
}

/// Re-reads a machine into the picture (when its zone is loaded): after a write to it, or
/// when a guard in SQL disagreed with the picture.
pub fn machine(ctx: &mut Ctx<'_>, machine_id: &str) -> Result<()> {
    let record = rows::machine_by_id(ctx.conn, machine_id)?;
    let Some(record) = record else {
        ctx.hot.remove_machine(machine_id);
        return Ok(());
    };
    if !ctx.hot.zones.contains_key(&record.zone_id) {
        return Ok(());
    }
    let processes = rows::all(
        ctx.conn,
        &format!(
            "SELECT {PROCESS_COLUMNS} FROM processes WHERE machine_id = ?1 AND agent_state IN {LIVE_STATES}"
        ),
        args![machine_id],
        rows::process,
    )?;
    let sessions = rows::all(
        ctx.conn,
        &format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE machine_id = ?1 AND status = 'ACTIVE'"
        ),
        args![machine_id],
        rows::session,
    )?;
    ctx.hot
        .put_machine(HotMachine::new(record, processes, &sessions));
    Ok(())
}

/// Re-reads a zone's row (spec, status, deletion, idle clock) into the picture; the zone
/// reindexes when its spec changed.
pub fn zone_row(ctx: &mut Ctx<'_>, zone_id: &str) -> Result<()> {
    if !ctx.hot.zones.contains_key(zone_id) {
        return Ok(());
    }
    let record = rows::first(
        ctx.conn,
        "SELECT * FROM zones WHERE id = ?1",
        args![zone_id],
        rows::zone,
    )?;
    match record {
        None => ctx.hot.drop_zone(zone_id),
        Some(record) => {
            let zone = ctx.hot.zones.get_mut(zone_id).expect("checked above");
            let reindex = zone.record.zone.spec != record.zone.spec
                || zone.record.deleting != record.deleting;
            zone.record = record;
            if reindex {
                zone.reindex_all();
            }
        }
    }
    Ok(())
}
