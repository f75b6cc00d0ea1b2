//! Targeted wake-ups: what changed, told to exactly those who wait for it.
//!
//! The store emits a [`Notice`] for every committed change that someone may be waiting on,
//! after the transaction that made it committed (so a woken waiter reads the change). Who
//! hears what:
//! - an agent's long-poll waits on its own machine ([`Changes::watch_machine`]): it wakes
//!   when that machine's desired state may have changed, and for nothing else;
//! - a placement waiting for capacity ([`Changes::watch_capacity`]) wakes when its zone
//!   gained some (a process became ready, a slot was freed, the build or spec changed);
//! - listeners ([`Changes::listen`]: the reconciler, the simulated machines) collect a
//!   coalesced set of what changed and take it when they are ready.
//!
//! A missed notice only delays: every waiter also wakes on its own timeout or period and
//! re-reads the store (level-triggered), so the hub is an accelerator, never the only path.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::{watch, Notify};

/// Something the store changed. Replicas on one Postgres tell each other theirs
/// (`store/sql/notify.rs`), as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
pub enum Notice {
    /// The desired state of a machine may have changed: its sessions, its processes, its
    /// status or its target.
    Machine { machine_id: String, zone_id: String },
    /// A zone gained placement capacity.
    Capacity { zone_id: String },
    /// Something the reconciler of a zone cares about changed (its spec, its machines,
    /// its sessions).
    Zone { zone_id: String },
    /// A fleet's settings changed: the desired state of every machine of it may differ.
    Fleet { fleet_id: String },
    /// A pool machine was taken by a zone or given back: its idle agent should look again.
    Pool { bare_metal_id: String },
    /// A replica gave zone leases back (it is stopping, or shedding): the others' lease
    /// managers take them now rather than at their next round.
    Leases,
}

impl Notice {
    /// The zone the notice is about, if one.
    pub fn zone_id(&self) -> Option<&str> {
        match self {
            Notice::Machine { zone_id, .. }
            | Notice::Capacity { zone_id }
            | Notice::Zone { zone_id } => Some(zone_id),
            Notice::Fleet { .. } | Notice::Pool { .. } | Notice::Leases => None,
        }
    }
}

/// A watched machine: its fleet (a fleet-wide change wakes it too) and its channel.
#[derive(Debug)]
struct MachineWatch {
    fleet_id: Option<String>,
    sender: watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct Inner {
    machines: Mutex<HashMap<String, MachineWatch>>,
    capacity: Mutex<HashMap<String, watch::Sender<u64>>>,
    listeners: Mutex<Vec<Weak<Listener>>>,
    leases: Notify,
}

/// The hub. Cheap to clone; every clone is the same hub.
#[derive(Debug, Clone, Default)]
pub struct Changes {
    inner: Arc<Inner>,
}

/// A coalesced set of notices, taken by one consumer when it is ready for them.
#[derive(Debug, Default)]
pub struct Listener {
    pending: Mutex<HashSet<Notice>>,
    notify: Notify,
}

impl Listener {
    /// Waits until a notice is pending (returns at once when one already is).
    pub async fn notified(&self) {
        loop {
            // Registered before the check, so a notice in between is not missed.
            let notified = self.notify.notified();
            if !self.pending.lock().expect("listener lock").is_empty() {
                return;
            }
            notified.await;
        }
    }

    /// Takes every pending notice (each once, however often it was emitted).
    pub fn take(&self) -> HashSet<Notice> {
        std::mem::take(&mut *self.pending.lock().expect("listener lock"))
    }

    /// Whether a notice is pending.
    pub fn is_pending(&self) -> bool {
        !self.pending.lock().expect("listener lock").is_empty()
    }
}

/// Moves a watch on; false when nobody watches it any more (the entry can go).
fn bump(sender: &watch::Sender<u64>) -> bool {
    sender.send_modify(|generation| *generation += 1);
    sender.receiver_count() > 0
}

impl Changes {
    /// Tells everyone who waits for them.
    pub fn emit<'a>(&self, notices: impl IntoIterator<Item = &'a Notice>) {
        let notices: Vec<&Notice> = notices.into_iter().collect();
        if notices.is_empty() {
            return;
        }
        {
            let mut machines = self.inner.machines.lock().expect("changes lock");
            for notice in &notices {
                match notice {
                    Notice::Machine { machine_id, .. } => {
                        if let Some(watch) = machines.get(machine_id) {
                            if !bump(&watch.sender) {
                                machines.remove(machine_id);
                            }
                        }
                    }
                    Notice::Pool { bare_metal_id } => {
                        if let Some(watch) = machines.get(bare_metal_id) {
                            if !bump(&watch.sender) {
                                machines.remove(bare_metal_id);
                            }
                        }
                    }
                    Notice::Fleet { fleet_id } => {
                        machines.retain(|_, watch| {
                            if watch.fleet_id.as_ref() == Some(fleet_id) {
                                bump(&watch.sender)
                            } else {
                                watch.sender.receiver_count() > 0
                            }
                        });
                    }
                    Notice::Leases => self.inner.leases.notify_one(),
                    Notice::Capacity { .. } | Notice::Zone { .. } => {}
                }
            }
        }
        {
            let mut capacity = self.inner.capacity.lock().expect("changes lock");
            for notice in &notices {
                if let Notice::Capacity { zone_id } = notice {
                    if let Some(sender) = capacity.get(zone_id) {
                        if !bump(sender) {
                            capacity.remove(zone_id);
                        }
                    }
                }
            }
        }
        let listeners: Vec<Arc<Listener>> = {
            let mut listeners = self.inner.listeners.lock().expect("changes lock");
            listeners.retain(|listener| listener.strong_count() > 0);
            listeners.iter().filter_map(Weak::upgrade).collect()
        };
        for listener in listeners {
            let mut pending = listener.pending.lock().expect("listener lock");
            let before = pending.len();
            pending.extend(notices.iter().map(|notice| (*notice).clone()));
            let grew = pending.len() > before;
            drop(pending);
            if grew {
                listener.notify.notify_one();
            }
        }
    }

    /// Resolves once a replica gave leases back (since the last call).
    pub async fn leases_freed(&self) {
        self.inner.leases.notified().await
    }

    /// A receiver that changes when the desired state of `machine_id` may have (or, for a
    /// pool machine's id, when a zone takes or returns it), or when `fleet_id` changes.
    pub fn watch_machine(&self, machine_id: &str, fleet_id: Option<&str>) -> watch::Receiver<u64> {
        let mut machines = self.inner.machines.lock().expect("changes lock");
        let watch = machines
            .entry(machine_id.to_string())
            .or_insert_with(|| MachineWatch {
                fleet_id: fleet_id.map(str::to_string),
                sender: watch::channel(0).0,
            });
        if watch.fleet_id.is_none() {
            watch.fleet_id = fleet_id.map(str::to_string);
        }
        watch.sender.subscribe()
    }

    /// A receiver that changes when `zone_id` gains placement capacity.
    pub fn watch_capacity(&self, zone_id: &str) -> watch::Receiver<u64> {
        let mut capacity = self.inner.capacity.lock().expect("changes lock");
        capacity
            .entry(zone_id.to_string())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    /// A new listener that collects every notice from now on (until it is dropped).
    pub fn listen(&self) -> Arc<Listener> {
        let listener = Arc::new(Listener::default());
        self.inner
            .listeners
            .lock()
            .expect("changes lock")
            .push(Arc::downgrade(&listener));
        listener
    }

    /// Machines watched now (for tests: a finished long-poll leaves no entry behind).
    pub fn watched_machines(&self) -> usize {
        let mut machines = self.inner.machines.lock().expect("changes lock");
        machines.retain(|_, watch| watch.sender.receiver_count() > 0);
        machines.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(id: &str) -> Notice {
        Notice::Machine {
            machine_id: id.into(),
            zone_id: "zone-1".into(),
        }
    }

    #[tokio::test]
    async fn a_machine_watch_wakes_for_its_machine_and_fleet_only() {
        let changes = Changes::default();
        let mut mine = changes.watch_machine("m1", Some("f1"));
        let other = changes.watch_machine("m2", Some("f2"));
        changes.emit(&[machine("m1")]);
        assert!(mine.has_changed().unwrap());
        assert!(!other.has_changed().unwrap());
        mine.borrow_and_update();
        changes.emit(&[Notice::Fleet {
            fleet_id: "f2".into(),
        }]);
        assert!(!mine.has_changed().unwrap());
        assert!(other.has_changed().unwrap());
    }

    #[tokio::test]
    async fn capacity_wakes_only_its_zone() {
        let changes = Changes::default();
        let eu = changes.watch_capacity("eu");
        let us = changes.watch_capacity("us");
        changes.emit(&[Notice::Capacity {
            zone_id: "eu".into(),
        }]);
        assert!(eu.has_changed().unwrap());
        assert!(!us.has_changed().unwrap());
    }

    #[tokio::test]
    async fn listeners_coalesce_and_a_dropped_watch_leaves_nothing() {
        let changes = Changes::default();
        let listener = changes.listen();
        changes.emit(&[machine("m1"), machine("m1")]);
        changes.emit(&[
            machine("m1"),
            Notice::Zone {
                zone_id: "z".into(),
            },
        ]);
        listener.notified().await;
        assert_eq!(listener.take().len(), 2);
        assert!(!listener.is_pending());
        {
            let _watch = changes.watch_machine("m9", None);
            assert_eq!(changes.watched_machines(), 1);
        }
        changes.emit(&[machine("m9")]);
        assert_eq!(changes.watched_machines(), 0);
    }
}
