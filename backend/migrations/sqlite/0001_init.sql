-- fleetform's store, SQLite flavour. Keep the SQL portable (Postgres comes next): plain
-- types, no SQLite-only functions; timestamps are Unix milliseconds (BIGINT).

CREATE TABLE builds (
    id               TEXT PRIMARY KEY,
    name             TEXT NOT NULL,
    version          TEXT,
    operating_system TEXT NOT NULL,
    source           TEXT NOT NULL,
    sha256           TEXT,
    created_at       BIGINT NOT NULL
);

CREATE TABLE fleets (
    id                    TEXT PRIMARY KEY,
    name                  TEXT NOT NULL UNIQUE,
    description           TEXT,
    build_id              TEXT NOT NULL REFERENCES builds(id),
    update_mode           TEXT NOT NULL,
    launch_path           TEXT NOT NULL,
    launch_parameters     TEXT,
    process_restart_hours INTEGER NOT NULL,
    session_mode          TEXT NOT NULL,
    sessions_per_process  INTEGER NOT NULL,
    storage_gb            INTEGER NOT NULL,
    force_destroy         BOOLEAN NOT NULL,
    status                TEXT NOT NULL,
    created_at            BIGINT NOT NULL
);

-- A zone's scaling spec (rules, data centers) is one JSON document: it is read and written
-- whole, by the admin API and by the reconciler.
CREATE TABLE zones (
    id         TEXT PRIMARY KEY,
    fleet_id   TEXT NOT NULL REFERENCES fleets(id),
    name       TEXT NOT NULL,
    spec       TEXT NOT NULL,
    status     TEXT NOT NULL,
    deleting   BOOLEAN NOT NULL DEFAULT FALSE,
    created_at BIGINT NOT NULL,
    UNIQUE (fleet_id, name)
);

CREATE TABLE machines (
    id                    TEXT PRIMARY KEY,
    zone_id               TEXT NOT NULL REFERENCES zones(id),
    fleet_id              TEXT NOT NULL REFERENCES fleets(id),
    data_center           TEXT NOT NULL,
    location              TEXT NOT NULL,
    instance_type         TEXT NOT NULL,
    processes_per_machine INTEGER NOT NULL,
    status                TEXT NOT NULL,
    build_id              TEXT NOT NULL,
    -- SHA-256 of the agent token; the token itself is never stored.
    token_hash            TEXT NOT NULL UNIQUE,
    -- What the driver knows the machine by (a pid for `local`, an instance id for `aws`).
    driver_ref            TEXT,
    address               TEXT,
    agent_error           TEXT,
    created_at            BIGINT NOT NULL,
    last_heartbeat_at     BIGINT
);
CREATE INDEX machines_zone ON machines (zone_id, status);

CREATE TABLE processes (
    id               TEXT PRIMARY KEY,
    machine_id       TEXT NOT NULL REFERENCES machines(id),
    zone_id          TEXT NOT NULL,
    fleet_id         TEXT NOT NULL,
    build_id         TEXT NOT NULL,
    port             INTEGER NOT NULL,
    pid              INTEGER,
    -- STARTING | READY | STOPPING as the agent reports it; EXITED | CRASHED once gone.
    agent_state      TEXT NOT NULL,
    active_sessions  INTEGER NOT NULL DEFAULT 0,
    -- Sessions ever placed on it: in simple mode a process takes exactly one.
    sessions_started INTEGER NOT NULL DEFAULT 0,
    exit_code        INTEGER,
    exit_signal      INTEGER,
    started_at       BIGINT NOT NULL,
    ended_at         BIGINT
);
CREATE INDEX processes_zone_state ON processes (zone_id, agent_state);
CREATE INDEX processes_machine ON processes (machine_id);

CREATE TABLE sessions (
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
    ended_at        BIGINT,
    UNIQUE (fleet_id, idempotency_key)
);
CREATE INDEX sessions_zone_status ON sessions (zone_id, status);
CREATE INDEX sessions_process ON sessions (process_id, status);
CREATE INDEX sessions_machine ON sessions (machine_id, status);
