//! Zone leases: which replica reconciles (and places for) each zone.
//!
//! Replicas share one database and nothing else; the database is the only coordinator.
//! Each zone has a row in `zone_leases` (holder, holder's URL, generation, expiry, all in
//! the database's clock). A replica's lease manager ([`run`]) renews what it holds every
//! `ttl / 4`, takes zones whose lease is free or expired while it holds less than its fair
//! share (zones ÷ live replicas, rounded up), and gives back zones beyond it, so a new
//! replica gets its share and a dead one's zones are taken within `ttl` plus one round.
//! Every taking bumps the generation and writes a `ZONE_LEASE_ACQUIRED` event with it.
//!
//! The guard is the generation, checked in the statement that locks the lease row (see
//! `store/sql/leases.rs`, `fence`): every store write a zone's reconciler makes runs
//! inside [`scope`] with its [`Lease`], and is refused (`Error::LeaseLost`) unless the row
//! still names this replica at that generation. So a paused former holder that wakes up
//! after a takeover writes nothing. On Postgres the same statement takes the row's lock
//! (`FOR UPDATE`) for every write to a zone's rows, whichever replica makes it, so writes
//! to one zone are serialized across replicas (one transaction at a time): the guards of
//! the placement path, written against one writer, hold across replicas too.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::Notify;

use crate::store::Store;

/// A replica's hold on one zone at one generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub zone_id: String,
    pub holder: String,
    pub generation: i64,
}

tokio::task_local! {
    static CURRENT: Lease;
}

/// Runs `future` as the holder of `lease`: every store write it makes is fenced by it.
pub async fn scope<F: std::future::Future>(lease: Lease, future: F) -> F::Output {
    CURRENT.scope(lease, future).await
}

/// The lease the running task writes under, if any.
pub fn current() -> Option<Lease> {
    CURRENT.try_with(Clone::clone).ok()
}

/// A row of `zone_leases`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRow {
    pub zone_id: String,
    pub fleet_id: String,
    pub fleet_name: String,
    pub zone_name: String,
    pub holder: Option<String>,
    pub holder_url: Option<String>,
    pub generation: i64,
    pub expires_at_ms: i64,
}

/// What one round of the lease manager asks of the store (one job, one transaction).
#[derive(Debug, Clone)]
pub struct LeaseRequest {
    pub replica_id: String,
    pub url: String,
    pub ttl_ms: i64,
    /// Zones to give back first (shedding, or shutting down).
    pub release: Vec<Lease>,
    /// Take free zones up to the fair share (false when shutting down).
    pub acquire: bool,
    /// This replica is leaving: it counts no more as live.
    pub stopping: bool,
}

/// What the round found, after it renewed, released and took.
#[derive(Debug, Clone, Default)]
pub struct LeaseRound {
    /// The database's clock.
    pub now_ms: i64,
    pub live_replicas: usize,
    /// Every zone's row.
    pub rows: Vec<LeaseRow>,
}

/// How many zones each of `live` replicas should hold.
pub fn fair_share(zones: usize, live: usize) -> usize {
    zones.div_ceil(live.max(1))
}

/// This replica's view of the leases, shared by the reconciler (which zones to pass), the
/// API (where a zone's requests go) and shutdown.
#[derive(Debug)]
pub struct Leases {
    pub replica_id: String,
    /// Where other replicas reach this one.
    pub url: String,
    pub ttl: Duration,
    state: RwLock<State>,
    /// Asks the manager for a round now (a zone appeared, shutdown began).
    poke: Notify,
}

#[derive(Debug, Default)]
struct State {
    held: BTreeMap<String, Lease>,
    rows: HashMap<String, LeaseRow>,
    /// When the last round ended, in the database's clock.
    now_ms: i64,
    /// Another replica held a zone at the last round.
    peers: bool,
}

impl Leases {
    pub fn new(replica_id: String, url: String, ttl: Duration) -> Arc<Leases> {
        Arc::new(Leases {
            replica_id,
            url,
            ttl,
            state: RwLock::default(),
            poke: Notify::new(),
        })
    }

    /// The lease this replica holds on `zone_id`, if any.
    pub fn held(&self, zone_id: &str) -> Option<Lease> {
        self.state
            .read()
            .expect("leases lock")
            .held
            .get(zone_id)
            .cloned()
    }

    /// Every lease this replica holds.
    pub fn all_held(&self) -> Vec<Lease> {
        let state = self.state.read().expect("leases lock");
        state.held.values().cloned().collect()
    }

    /// Where another replica that holds `zone_id` (unexpired at the last round) is reached.
    pub fn owner_url(&self, zone_id: &str) -> Option<String> {
        let state = self.state.read().expect("leases lock");
        let row = state.rows.get(zone_id)?;
        if row.holder.as_deref() == Some(self.replica_id.as_str())
            || row.expires_at_ms <= state.now_ms
        {
            return None;
        }
        row.holder_url.clone()
    }

    /// Where the replica holding the zone `zone` (id or name) of fleet `fleet` (id or
    /// name) is reached, when another replica holds it.
    pub fn owner_url_of(&self, fleet: &str, zone: &str) -> Option<String> {
        let zone_id = {
            let state = self.state.read().expect("leases lock");
            state
                .rows
                .values()
                .find(|row| {
                    (row.fleet_id == fleet || row.fleet_name == fleet)
                        && (row.zone_id == zone || row.zone_name == zone)
                })?
                .zone_id
                .clone()
        };
        self.owner_url(&zone_id)
    }

    /// Whether another replica held any zone at the last round (with one replica, no
    /// request needs a look at where its zone is).
    pub fn has_peers(&self) -> bool {
        self.state.read().expect("leases lock").peers
    }

    /// Whether the last round saw `zone_id` at all.
    pub fn knows(&self, zone_id: &str) -> bool {
        self.state
            .read()
            .expect("leases lock")
            .rows
            .contains_key(zone_id)
    }

    /// Asks for a round now.
    pub fn poke(&self) {
        self.poke.notify_one();
    }

    /// Takes in what a round found.
    fn update(&self, round: &LeaseRound) -> (Vec<Lease>, Vec<Lease>) {
        let mut state = self.state.write().expect("leases lock");
        let held: BTreeMap<String, Lease> = round
            .rows
            .iter()
            .filter(|row| row.holder.as_deref() == Some(self.replica_id.as_str()))
            .map(|row| {
                (
                    row.zone_id.clone(),
                    Lease {
                        zone_id: row.zone_id.clone(),
                        holder: self.replica_id.clone(),
                        generation: row.generation,
                    },
                )
            })
            .collect();
        let gained: Vec<Lease> = held
            .values()
            .filter(|lease| state.held.get(&lease.zone_id) != Some(lease))
            .cloned()
            .collect();
        let lost: Vec<Lease> = state
            .held
            .values()
            .filter(|lease| held.get(&lease.zone_id) != Some(lease))
            .cloned()
            .collect();
        state.held = held;
        state.rows = round
            .rows
            .iter()
            .map(|row| (row.zone_id.clone(), row.clone()))
            .collect();
        state.now_ms = round.now_ms;
        state.peers = round.rows.iter().any(|row| {
            row.expires_at_ms > round.now_ms
                && row
                    .holder
                    .as_deref()
                    .is_some_and(|holder| holder != self.replica_id)
        });
        (gained, lost)
    }

    /// Forgets every lease (after they were released at shutdown).
    fn clear(&self) {
        let mut state = self.state.write().expect("leases lock");
        state.held.clear();
    }
}

/// One round: renew, give back `release`, take up to the fair share; then what to give
/// back next round.
async fn round(
    store: &dyn Store,
    leases: &Leases,
    release: Vec<Lease>,
) -> crate::Result<Vec<Lease>> {
    let round = store
        .lease_round(LeaseRequest {
            replica_id: leases.replica_id.clone(),
            url: leases.url.clone(),
            ttl_ms: i64::try_from(leases.ttl.as_millis()).unwrap_or(i64::MAX),
            release,
            acquire: true,
            stopping: false,
        })
        .await?;
    let (gained, lost) = leases.update(&round);
    for lease in &gained {
        tracing::info!(zone = %lease.zone_id, generation = lease.generation, "zone lease acquired");
    }
    // The reconciler passes a zone it just took at once.
    let notices: Vec<crate::changes::Notice> = gained
        .iter()
        .map(|lease| crate::changes::Notice::Zone {
            zone_id: lease.zone_id.clone(),
        })
        .collect();
    store.changes().emit(&notices);
    for lease in &lost {
        tracing::warn!(zone = %lease.zone_id, generation = lease.generation, "zone lease lost");
    }
    let held = leases.all_held();
    let fair = fair_share(round.rows.len(), round.live_replicas);
    Ok(shed(&held, fair))
}

/// The zones a replica holding `held` should give back to come down to `fair`: the ones
/// it took last (highest generation first, then by id), so zones do not move back and
/// forth between rounds.
pub fn shed(held: &[Lease], fair: usize) -> Vec<Lease> {
    let over = held.len().saturating_sub(fair);
    let mut ordered = held.to_vec();
    ordered.sort_by(|a, b| {
        b.generation
            .cmp(&a.generation)
            .then_with(|| a.zone_id.cmp(&b.zone_id))
    });
    ordered.truncate(over);
    ordered
}

/// The first round, before the reconciler starts (so it has its zones at once).
pub async fn start(store: &dyn Store, leases: &Leases) -> Vec<Lease> {
    match round(store, leases, Vec::new()).await {
        Ok(next) => next,
        Err(error) => {
            tracing::warn!(%error, "first lease round failed; retrying");
            Vec::new()
        }
    }
}

/// The lease manager: a round every `ttl / 4` (or when poked) until `shutdown`, giving
/// back `release` (from [`start`]) first. It does not give its leases back when stopped:
/// [`release_all`] does, once the reconciler has stopped.
pub async fn run(
    store: Arc<dyn Store>,
    leases: Arc<Leases>,
    mut release: Vec<Lease>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let every = leases.ttl / 4;
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = leases.poke.notified() => {}
            _ = store.changes().leases_freed() => {}
            _ = tokio::time::sleep(every) => {}
        }
        match round(store.as_ref(), &leases, std::mem::take(&mut release)).await {
            Ok(next) => release = next,
            Err(error) => tracing::warn!(%error, "lease round failed; retrying"),
        }
    }
}

/// Gives back every lease this replica holds and marks it as leaving.
pub async fn release_all(store: &dyn Store, leases: &Leases) {
    let held = leases.all_held();
    let outcome = store
        .lease_round(LeaseRequest {
            replica_id: leases.replica_id.clone(),
            url: leases.url.clone(),
            ttl_ms: i64::try_from(leases.ttl.as_millis()).unwrap_or(i64::MAX),
            release: held.clone(),
            acquire: false,
            stopping: true,
        })
        .await;
    match outcome {
        Ok(_) => tracing::info!(zones = held.len(), "zone leases released"),
        Err(error) => tracing::warn!(%error, "releasing the zone leases failed; they expire"),
    }
    leases.clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(zone: &str, generation: i64) -> Lease {
        Lease {
            zone_id: zone.into(),
            holder: "r1".into(),
            generation,
        }
    }

    #[test]
    fn fair_share_cases() {
        #[rustfmt::skip]
        let cases = [
            // zones, live replicas, share
            (0, 1, 0), (1, 1, 1), (1, 2, 1), (2, 2, 1), (3, 2, 2), (10, 3, 4), (5, 0, 5),
        ];
        for (zones, live, want) in cases {
            assert_eq!(
                fair_share(zones, live),
                want,
                "{zones} zones, {live} replicas"
            );
        }
    }

    #[test]
    fn shedding_gives_back_the_newest_first() {
        let held = vec![lease("a", 1), lease("b", 7), lease("c", 3), lease("d", 7)];
        let cases: [(usize, Vec<&str>); 4] = [
            (4, vec![]),
            (5, vec![]),
            (3, vec!["b"]),
            (1, vec!["b", "d", "c"]),
        ];
        for (fair, want) in cases {
            let got: Vec<String> = shed(&held, fair).into_iter().map(|l| l.zone_id).collect();
            assert_eq!(got, want, "fair share {fair}");
        }
    }
}
