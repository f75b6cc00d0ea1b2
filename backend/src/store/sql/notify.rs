//! Replicas on one Postgres tell each other what they changed.
//!
//! A replica's writer sends its batch's notices with `pg_notify` inside the batch's
//! transaction (Postgres delivers them at commit, never for a rolled-back batch); every
//! replica's listener thread hears the others' and, on its own writer (after the batch in
//! progress), re-reads what its picture holds of them (a machine, a zone's row, a fleet)
//! and then wakes its own waiters with them: a held agent sync, a waiting placement, the
//! reconciler of the zone. A replica that lost its listening connection has missed some:
//! it drops its whole picture (which reloads from the database) once it listens again.
//! A notice missed anyway only delays (every waiter re-reads on its own timeout), and the
//! guards in the statements make a stale picture safe, never wrong.

use std::collections::HashSet;
use std::time::Duration;

use postgres::fallible_iterator::FallibleIterator;
use serde::{Deserialize, Serialize};

use super::load;
use super::writer::{Ctx, Writer};
use crate::changes::{Changes, Notice};
use crate::store::db::{args, Conn};
use crate::Result;

/// The channel replicas notify on.
pub const CHANNEL: &str = "fleetform";

/// Most bytes of one notification (Postgres allows 8000).
const MAX_PAYLOAD: usize = 7_000;

#[derive(Debug, Serialize, Deserialize)]
struct Payload {
    /// The store that sent it (a replica ignores its own).
    from: String,
    notices: Vec<Notice>,
}

/// Sends a batch's notices to the other replicas, inside its transaction.
pub fn send(conn: &Conn, origin: &str, notices: &[Notice]) -> Result<()> {
    let mut seen = HashSet::new();
    let unique: Vec<&Notice> = notices.iter().filter(|n| seen.insert(*n)).collect();
    let mut chunk: Vec<Notice> = Vec::new();
    let mut size = 0;
    let flush = |chunk: &mut Vec<Notice>| -> Result<()> {
        if chunk.is_empty() {
            return Ok(());
        }
        // The sender first, so a listener skips its own without reading the rest.
        let payload = format!(
            "{origin}|{}",
            serde_json::to_string(&Payload {
                from: origin.to_string(),
                notices: std::mem::take(chunk),
            })
            .map_err(|e| crate::Error::Internal(e.to_string()))?
        );
        conn.run(
            &format!("SELECT pg_notify('{CHANNEL}', ?1)"),
            args![payload],
        )?;
        Ok(())
    };
    for notice in unique {
        let bytes = 64
            + match notice {
                Notice::Machine {
                    machine_id,
                    zone_id,
                } => machine_id.len() + zone_id.len(),
                Notice::Capacity { zone_id } | Notice::Zone { zone_id } => zone_id.len(),
                Notice::Fleet { fleet_id } => fleet_id.len(),
                Notice::Pool { bare_metal_id } => bare_metal_id.len(),
                Notice::Leases => 0,
            };
        if size + bytes > MAX_PAYLOAD {
            flush(&mut chunk)?;
            size = 0;
        }
        size += bytes;
        chunk.push(notice.clone());
    }
    flush(&mut chunk)
}

/// Brings the picture up to what another replica changed.
fn refresh(ctx: &mut Ctx<'_>, notices: &[Notice]) -> Result<()> {
    let mut seen = HashSet::new();
    for notice in notices.iter().filter(|n| seen.insert(*n)) {
        match notice {
            // The zone's picture is forgotten, not its machine read again: another
            // replica wrote it, most likely the zone's holder, whose placements and
            // reports would otherwise cost this replica a read of the machine (and all
            // its sessions) each. The zone loads again when this replica next needs it.
            Notice::Machine { zone_id, .. } => ctx.hot.drop_zone(zone_id),
            Notice::Zone { zone_id } => load::zone_row(ctx, zone_id)?,
            Notice::Fleet { fleet_id } => load::fleet_again(ctx, fleet_id)?,
            Notice::Capacity { .. } | Notice::Pool { .. } | Notice::Leases => {}
        }
    }
    Ok(())
}

/// Starts the listener thread on its own connection (`connect`); it stops when `alive`
/// is gone.
pub fn listen(
    connect: impl Fn() -> Result<Conn> + Send + 'static,
    origin: String,
    writer: Writer,
    changes: Changes,
    alive: std::sync::Weak<()>,
) -> Result<()> {
    std::thread::Builder::new()
        .name("store-listener".into())
        .spawn(move || {
            let mut missed = false;
            while alive.upgrade().is_some() {
                let mut conn = match connect() {
                    Ok(conn) => conn,
                    Err(error) => {
                        tracing::warn!(%error, "the notification listener cannot connect; retrying");
                        std::thread::sleep(Duration::from_secs(1));
                        missed = true;
                        continue;
                    }
                };
                let Conn::Postgres(pg) = &mut conn else {
                    return;
                };
                if let Err(error) = pg.client_mut().batch_execute(&format!("LISTEN {CHANNEL}")) {
                    tracing::warn!(%error, "LISTEN failed; retrying");
                    std::thread::sleep(Duration::from_secs(1));
                    missed = true;
                    continue;
                }
                if missed {
                    // Some notices went by unheard: forget the whole picture.
                    writer.refresh(|ctx| {
                        ctx.hot.clear();
                        Ok(())
                    });
                }
                loop {
                    if alive.upgrade().is_none() {
                        return;
                    }
                    let mut client = pg.client_mut();
                    let mut notifications = client.notifications();
                    let mut batch: Vec<Notice> = Vec::new();
                    let mut broken = false;
                    // Wait for one (at most half a second, to notice a dropped store),
                    // then take whatever else is already there without waiting: a
                    // waiter on this replica wakes as soon as the change is heard.
                    let take = |payload: &str, batch: &mut Vec<Notice>| {
                        let (from, json) = payload.split_once('|').unwrap_or(("", ""));
                        if from == origin {
                            return;
                        }
                        match serde_json::from_str::<Payload>(json) {
                            Ok(payload) if payload.from != origin => batch.extend(payload.notices),
                            Ok(_) => {}
                            Err(error) => tracing::warn!(%error, "an unreadable notification"),
                        }
                    };
                    let first = notifications
                        .timeout_iter(Duration::from_millis(500))
                        .next();
                    match first {
                        Ok(None) => {}
                        Ok(Some(notification)) => {
                            take(notification.payload(), &mut batch);
                            let mut pending = notifications.iter();
                            loop {
                                match pending.next() {
                                    Ok(Some(notification)) => {
                                        take(notification.payload(), &mut batch);
                                        if batch.len() >= 4096 {
                                            break;
                                        }
                                    }
                                    Ok(None) => break,
                                    Err(error) => {
                                        tracing::warn!(%error, "the notification listener's connection broke; reconnecting");
                                        broken = true;
                                        break;
                                    }
                                }
                            }
                        }
                        Err(error) => {
                            tracing::warn!(%error, "the notification listener's connection broke; reconnecting");
                            broken = true;
                        }
                    }
                    drop(notifications);
                    drop(client);
                    if !batch.is_empty() {
                        let changes = changes.clone();
                        writer.refresh(move |ctx| {
                            let result = refresh(ctx, &batch);
                            changes.emit(&batch);
                            result
                        });
                    }
                    if broken {
                        missed = true;
                        break;
                    }
                }
            }
        })
        .map_err(|e| crate::Error::Internal(format!("start the notification listener: {e}")))?;
    Ok(())
}
