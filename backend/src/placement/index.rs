//! The free-slot index of one zone: every process that may take a session now, kept in
//! [`choose`]'s order within each data center, so a placement costs O(data centers ·
//! log processes) whatever the zone's size and history.
//!
//! Within one data center priority, bare metal and latency are the same for every
//! process, so only the strategy orders them: the index keeps each data center's
//! processes sorted by it and hands [`choose`] the first of each, which then picks exactly
//! what it would have picked over every process. Pure: no I/O, no clock.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use fleetform_api::{MachineType, PlacementStrategy, ZoneSpecView};

use super::{choose, Candidate};

/// A process that may take a session, with what its order depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub process_id: String,
    pub machine_id: String,
    pub data_center: String,
    /// Sessions active on its whole machine.
    pub machine_sessions: u32,
    /// Sessions active on the process.
    pub process_sessions: u32,
}

/// Sort key inside a data center: ascending is best first.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    busy: (u32, u32),
    process_id: String,
}

#[derive(Debug, Clone)]
struct DataCenterSlots {
    priority: u32,
    bare_metal: bool,
    slots: BTreeSet<Key>,
}

#[derive(Debug, Clone)]
struct Entry {
    data_center: String,
    machine_id: String,
    key: Key,
    slot: Slot,
}

/// The ordered free slots of one zone.
#[derive(Debug, Clone)]
pub struct SlotIndex {
    strategy: PlacementStrategy,
    data_centers: BTreeMap<String, DataCenterSlots>,
    entries: HashMap<String, Entry>,
}

impl SlotIndex {
    /// An empty index for a zone's data centers and strategy.
    pub fn new(spec: &ZoneSpecView) -> Self {
        SlotIndex {
            strategy: spec.placement_strategy,
            data_centers: spec
                .data_centers
                .iter()
                .map(|dc| {
                    (
                        dc.name.clone(),
                        DataCenterSlots {
                            priority: dc.priority,
                            bare_metal: dc.machine_type == MachineType::BareMetal,
                            slots: BTreeSet::new(),
                        },
                    )
                })
                .collect(),
            entries: HashMap::new(),
        }
    }

    fn busy(&self, machine_sessions: u32, process_sessions: u32) -> (u32, u32) {
        match self.strategy {
            // The busiest machine first, and in it the busiest process.
            PlacementStrategy::Pack => (u32::MAX - machine_sessions, u32::MAX - process_sessions),
            PlacementStrategy::Spread => (machine_sessions, process_sessions),
        }
    }

    fn key(&self, slot: &Slot) -> Key {
        Key {
            busy: self.busy(slot.machine_sessions, slot.process_sessions),
            process_id: slot.process_id.clone(),
        }
    }

    /// Moves a process that is in to its place for new session counts, the same as an
    /// [`SlotIndex::upsert`] of its slot with those counts (without building one); false
    /// when it is not in.
    pub fn recount(
        &mut self,
        process_id: &str,
        machine_sessions: u32,
        process_sessions: u32,
    ) -> bool {
        let busy = self.busy(machine_sessions, process_sessions);
        let Some(entry) = self.entries.get_mut(process_id) else {
            return false;
        };
        entry.slot.machine_sessions = machine_sessions;
        entry.slot.process_sessions = process_sessions;
        if entry.key.busy != busy {
            if let Some(dc) = self.data_centers.get_mut(&entry.data_center) {
                dc.slots.remove(&entry.key);
                entry.key.busy = busy;
                dc.slots.insert(entry.key.clone());
            }
        }
        true
    }

    /// Adds a process, or moves it to its new place. A process of a data center the zone
    /// no longer has is left out (placement never uses one).
    pub fn upsert(&mut self, slot: Slot) {
        self.remove(&slot.process_id);
        let key = self.key(&slot);
        let Some(dc) = self.data_centers.get_mut(&slot.data_center) else {
            return;
        };
        dc.slots.insert(key.clone());
        self.entries.insert(
            slot.process_id.clone(),
            Entry {
                data_center: slot.data_center.clone(),
                machine_id: slot.machine_id.clone(),
                key,
                slot,
            },
        );
    }

    /// Takes a process out; true when it was in.
    pub fn remove(&mut self, process_id: &str) -> bool {
        let Some(entry) = self.entries.remove(process_id) else {
            return false;
        };
        if let Some(dc) = self.data_centers.get_mut(&entry.data_center) {
            dc.slots.remove(&entry.key);
        }
        true
    }

    /// Whether a process is in.
    pub fn contains(&self, process_id: &str) -> bool {
        self.entries.contains_key(process_id)
    }

    /// Processes in.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no process is in.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// What [`choose`] picks among every process in, for a request with these latencies.
    pub fn best(
        &self,
        latencies_ms: &BTreeMap<String, u32>,
        max_latency_ms: Option<u32>,
    ) -> Option<Candidate> {
        let firsts: Vec<Candidate> = self
            .data_centers
            .iter()
            .filter_map(|(name, dc)| {
                let key = dc.slots.first()?;
                let entry = &self.entries[&key.process_id];
                Some(Candidate {
                    process_id: key.process_id.clone(),
                    machine_id: entry.machine_id.clone(),
                    data_center: name.clone(),
                    priority: dc.priority,
                    bare_metal: dc.bare_metal,
                    machine_active_sessions: entry.slot.machine_sessions,
                    process_active_sessions: entry.slot.process_sessions,
                })
            })
            .collect();
        choose(&firsts, latencies_ms, max_latency_ms, self.strategy).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetform_api::{DataCenterSpec, MachineModel, ScalingMode};
    use proptest::prelude::*;

    fn spec(strategy: PlacementStrategy) -> ZoneSpecView {
        let dc = |name: &str, priority: u32, machine_type: MachineType| DataCenterSpec {
            name: name.into(),
            location: "sim".into(),
            priority,
            machine_type,
            machine_models: vec![MachineModel {
                instance_type: "m".into(),
                processes_per_machine: 4,
            }],
            max_server_processes: Some(100),
            bare_metal_machines: None,
        };
        ZoneSpecView {
            fleet_id: "flt-1".into(),
            name: "eu".into(),
            scaling_mode: ScalingMode::Fixed,
            initial_server_processes: 1,
            buffer_rules: vec![],
            free_slots_min: None,
            free_slots_max: None,
            cooldown_minutes: 0,
            placement_strategy: strategy,
            data_centers: vec![
                dc("a", 0, MachineType::Vm),
                dc("b", 0, MachineType::Vm),
                dc("metal", 1, MachineType::BareMetal),
                dc("c", 1, MachineType::Vm),
            ],
        }
    }

    fn candidate(spec: &ZoneSpecView, slot: &Slot) -> Candidate {
        let dc = spec
            .data_centers
            .iter()
            .find(|dc| dc.name == slot.data_center)
            .unwrap();
        Candidate {
            process_id: slot.process_id.clone(),
            machine_id: slot.machine_id.clone(),
            data_center: slot.data_center.clone(),
            priority: dc.priority,
            bare_metal: dc.machine_type == MachineType::BareMetal,
            machine_active_sessions: slot.machine_sessions,
            process_active_sessions: slot.process_sessions,
        }
    }

    fn slot(process: u8, dc: &str, machine_sessions: u32, process_sessions: u32) -> Slot {
        Slot {
            process_id: format!("p{process:03}"),
            machine_id: format!("m{}", process / 4),
            data_center: dc.into(),
            machine_sessions,
            process_sessions,
        }
    }

    #[test]
    fn index_cases() {
        struct Case {
            name: &'static str,
            strategy: PlacementStrategy,
            slots: Vec<Slot>,
            removed: &'static [u8],
            latencies: &'static [(&'static str, u32)],
            want: Option<&'static str>,
        }
        let cases = vec![
            Case {
                name: "empty",
                strategy: PlacementStrategy::Pack,
                slots: vec![],
                removed: &[],
                latencies: &[],
                want: None,
            },
            Case {
                name: "pack takes the busiest machine",
                strategy: PlacementStrategy::Pack,
                slots: vec![slot(1, "a", 0, 0), slot(2, "a", 3, 0)],
                removed: &[],
                latencies: &[],
                want: Some("p002"),
            },
            Case {
                name: "spread takes the idlest machine",
                strategy: PlacementStrategy::Spread,
                slots: vec![slot(1, "a", 0, 0), slot(2, "a", 3, 0)],
                removed: &[],
                latencies: &[],
                want: Some("p001"),
            },
            Case {
                name: "latency chooses between equal priorities",
                strategy: PlacementStrategy::Pack,
                slots: vec![slot(1, "a", 5, 0), slot(2, "b", 0, 0)],
                removed: &[],
                latencies: &[("a", 90), ("b", 10)],
                want: Some("p002"),
            },
            Case {
                name: "a removed process is not chosen",
                strategy: PlacementStrategy::Pack,
                slots: vec![slot(1, "a", 0, 0), slot(2, "a", 3, 0)],
                removed: &[2],
                latencies: &[],
                want: Some("p001"),
            },
            Case {
                name: "a data center the zone does not have is left out",
                strategy: PlacementStrategy::Pack,
                slots: vec![slot(1, "gone", 9, 0)],
                removed: &[],
                latencies: &[],
                want: None,
            },
            Case {
                name: "bare metal first among the lower priority",
                strategy: PlacementStrategy::Pack,
                slots: vec![slot(1, "c", 4, 0), slot(2, "metal", 0, 0)],
                removed: &[],
                latencies: &[],
                want: Some("p002"),
            },
        ];
        for case in cases {
            let mut index = SlotIndex::new(&spec(case.strategy));
            for slot in case.slots {
                index.upsert(slot);
            }
            for process in case.removed {
                assert!(index.remove(&format!("p{process:03}")), "{}", case.name);
            }
            let latencies = case
                .latencies
                .iter()
                .map(|(dc, ms)| (dc.to_string(), *ms))
                .collect();
            let got = index.best(&latencies, None).map(|c| c.process_id);
            assert_eq!(got.as_deref(), case.want, "{}", case.name);
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Upsert(u8, u8, u32, u32),
        Recount(u8, u32, u32),
        Remove(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0u8..40, 0u8..5, 0u32..6, 0u32..4).prop_map(|(p, dc, m, s)| Op::Upsert(p, dc, m, s)),
            2 => (0u8..40, 0u32..6, 0u32..4).prop_map(|(p, m, s)| Op::Recount(p, m, s)),
            1 => (0u8..40).prop_map(Op::Remove),
        ]
    }

    proptest! {
        /// Whatever was added, moved and removed, the index picks what `choose` picks over
        /// every process in it.
        #[test]
        fn the_index_picks_what_choose_picks(
            ops in proptest::collection::vec(op(), 0..120),
            pack in any::<bool>(),
            latency_a in proptest::option::of(0u32..100),
            latency_c in proptest::option::of(0u32..100),
            max_latency in proptest::option::of(20u32..100),
        ) {
            let strategy = if pack { PlacementStrategy::Pack } else { PlacementStrategy::Spread };
            let spec = spec(strategy);
            let dcs = ["a", "b", "metal", "c", "gone"];
            let mut index = SlotIndex::new(&spec);
            let mut model: BTreeMap<String, Slot> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Upsert(p, dc, m, s) => {
                        let slot = slot(p, dcs[dc as usize], m, s);
                        model.remove(&slot.process_id);
                        if slot.data_center != "gone" {
                            model.insert(slot.process_id.clone(), slot.clone());
                        }
                        index.upsert(slot);
                    }
                    Op::Recount(p, m, s) => {
                        let id = format!("p{p:03}");
                        let known = model.get_mut(&id).map(|slot| {
                            slot.machine_sessions = m;
                            slot.process_sessions = s;
                        });
                        prop_assert_eq!(index.recount(&id, m, s), known.is_some());
                    }
                    Op::Remove(p) => {
                        let id = format!("p{p:03}");
                        prop_assert_eq!(index.remove(&id), model.remove(&id).is_some());
                    }
                }
            }
            prop_assert_eq!(index.len(), model.len());
            let mut latencies = BTreeMap::new();
            if let Some(ms) = latency_a { latencies.insert("a".to_string(), ms); }
            if let Some(ms) = latency_c { latencies.insert("c".to_string(), ms); }
            let all: Vec<Candidate> = model.values().map(|slot| candidate(&spec, slot)).collect();
            let want = choose(&all, &latencies, max_latency, strategy).map(|c| c.process_id.clone());
            let got = index.best(&latencies, max_latency).map(|c| c.process_id);
            prop_assert_eq!(got, want);
        }
    }
}
