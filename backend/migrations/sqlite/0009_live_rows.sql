-- Live rows apart from history, and fewer indexes to write on the hot path.
--
-- Sessions are rebuilt WITHOUT ROWID (the id is the table's own key: one B-tree less per
-- write), and a placement or an end writes, besides the row, only indexes over active
-- sessions (small, however long the history) and the idempotency index when a key is
-- given: each random page a commit writes costs the writer, so history lists go without
-- an index of their own (they page through the key, which grows with time) and so does
-- pruning (ended sessions are the oldest ids: see `prune_history`).
CREATE TABLE sessions_new (
    id              TEXT PRIMARY KEY,
    fleet_id        TEXT NOT NULL,
    zone_id         TEXT NOT NULL,
    zone_name       TEXT NOT NULL,
    data_center     TEXT NOT NULL,
    machine_id      TEXT NOT NULL,
    process_id      TEXT NOT NULL,
    build_id        TEXT NOT NULL,
    address         TEXT NOT NULL,
    port            INTEGER NOT NULL,
    status          TEXT NOT NULL,
    max_players     INTEGER,
    properties      TEXT NOT NULL,
    idempotency_key TEXT,
    reason          TEXT,
    created_at      BIGINT NOT NULL,
    ended_at        BIGINT
) WITHOUT ROWID;
INSERT INTO sessions_new (id, fleet_id, zone_id, zone_name, data_center, machine_id, process_id,
    build_id, address, port, status, max_players, properties, idempotency_key, reason,
    created_at, ended_at)
SELECT id, fleet_id, zone_id, zone_name, data_center, machine_id, process_id, build_id,
    address, port, status, max_players, properties, idempotency_key, reason, created_at,
    ended_at
FROM sessions;
DROP TABLE sessions;
ALTER TABLE sessions_new RENAME TO sessions;
CREATE UNIQUE INDEX sessions_idempotency ON sessions (fleet_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX sessions_active_zone ON sessions (zone_id) WHERE status = 'ACTIVE';
CREATE INDEX sessions_active_machine ON sessions (machine_id) WHERE status = 'ACTIVE';

-- Live processes of a machine, a zone, a fleet's build: what the hot path reads. The
-- queries spell the predicate exactly as the index does, which lets SQLite use it.
CREATE INDEX processes_live_machine ON processes (machine_id)
    WHERE agent_state IN ('STARTING', 'READY', 'STOPPING');
CREATE INDEX processes_live_zone ON processes (zone_id)
    WHERE agent_state IN ('STARTING', 'READY', 'STOPPING');
CREATE INDEX processes_live_fleet ON processes (fleet_id, build_id)
    WHERE agent_state IN ('STARTING', 'READY', 'STOPPING');
DROP INDEX processes_zone_state;
-- Covered by processes_fleet_build_state (fleet_id, build_id, agent_state).
DROP INDEX processes_fleet_build;
CREATE INDEX processes_ended_at ON processes (ended_at) WHERE agent_state IN ('EXITED', 'CRASHED');
CREATE INDEX machines_ended_at ON machines (terminated_at) WHERE status IN ('TERMINATED', 'UNHEALTHY');
