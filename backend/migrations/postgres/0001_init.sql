-- fleetform's schema on Postgres: the tables and indexes SQLite reaches through
-- migrations/sqlite/0001..0009, written once in their final form. Integers are BIGINT
-- (the store binds and reads 64-bit values); JSON is kept as TEXT, as on SQLite.

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
    process_restart_hours BIGINT NOT NULL,
    session_mode          TEXT NOT NULL,
    sessions_per_process  BIGINT NOT NULL,
    storage_gb            BIGINT NOT NULL,
    force_destroy         BOOLEAN NOT NULL,
    status                TEXT NOT NULL,
    created_at            BIGINT NOT NULL,
    crash_loop_build_id   TEXT,
    crash_loop_since      BIGINT,
    crash_count_from      BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE zones (
    id         TEXT PRIMARY KEY,
    fleet_id   TEXT NOT NULL REFERENCES fleets(id),
    name       TEXT NOT NULL,
    spec       TEXT NOT NULL,
    status     TEXT NOT NULL,
    deleting   BOOLEAN NOT NULL DEFAULT FALSE,
    created_at BIGINT NOT NULL,
    idle_since BIGINT,
    UNIQUE (fleet_id, name)
);

CREATE TABLE machines (
    id                    TEXT PRIMARY KEY,
    zone_id               TEXT NOT NULL REFERENCES zones(id),
    fleet_id              TEXT NOT NULL REFERENCES fleets(id),
    data_center           TEXT NOT NULL,
    location              TEXT NOT NULL,
    instance_type         TEXT NOT NULL,
    processes_per_machine BIGINT NOT NULL,
    status                TEXT NOT NULL,
    build_id              TEXT NOT NULL,
    -- SHA-256 of the agent token; the token itself is never stored.
    token_hash            TEXT NOT NULL UNIQUE,
    driver_ref            TEXT,
    address               TEXT,
    agent_error           TEXT,
    created_at            BIGINT NOT NULL,
    last_heartbeat_at     BIGINT,
    last_report_seq       BIGINT NOT NULL DEFAULT 0,
    target_processes      BIGINT,
    terminating_since     BIGINT,
    terminated_at         BIGINT,
    termination_reason    TEXT,
    bare_metal_id         TEXT
);
CREATE INDEX machines_zone ON machines (zone_id, status);
CREATE UNIQUE INDEX machines_live_bare_metal ON machines (bare_metal_id)
    WHERE bare_metal_id IS NOT NULL AND status NOT IN ('TERMINATED', 'UNHEALTHY');
CREATE INDEX machines_ended_at ON machines (terminated_at) WHERE status IN ('TERMINATED', 'UNHEALTHY');

CREATE TABLE processes (
    id                TEXT PRIMARY KEY,
    machine_id        TEXT NOT NULL REFERENCES machines(id),
    zone_id           TEXT NOT NULL,
    fleet_id          TEXT NOT NULL,
    build_id          TEXT NOT NULL,
    port              BIGINT NOT NULL,
    pid               BIGINT,
    -- STARTING | READY | STOPPING as the agent reports it; EXITED | CRASHED once gone.
    agent_state       TEXT NOT NULL,
    active_sessions   BIGINT NOT NULL DEFAULT 0,
    sessions_started  BIGINT NOT NULL DEFAULT 0,
    exit_code         BIGINT,
    exit_signal       BIGINT,
    started_at        BIGINT NOT NULL,
    ended_at          BIGINT,
    ready_at          BIGINT,
    restart_requested BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX processes_machine ON processes (machine_id);
CREATE INDEX processes_fleet_build_state ON processes (fleet_id, build_id, agent_state);
CREATE INDEX processes_fleet_build_ready ON processes (fleet_id, build_id, ready_at);
CREATE INDEX processes_live_machine ON processes (machine_id)
    WHERE agent_state IN ('STARTING', 'READY', 'STOPPING');
CREATE INDEX processes_live_zone ON processes (zone_id)
    WHERE agent_state IN ('STARTING', 'READY', 'STOPPING');
CREATE INDEX processes_live_fleet ON processes (fleet_id, build_id)
    WHERE agent_state IN ('STARTING', 'READY', 'STOPPING');
CREATE INDEX processes_ended_at ON processes (ended_at) WHERE agent_state IN ('EXITED', 'CRASHED');

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
    port            BIGINT NOT NULL,
    status          TEXT NOT NULL,
    max_players     BIGINT,
    properties      TEXT NOT NULL,
    idempotency_key TEXT,
    reason          TEXT,
    created_at      BIGINT NOT NULL,
    ended_at        BIGINT
);
CREATE UNIQUE INDEX sessions_idempotency ON sessions (fleet_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX sessions_active_zone ON sessions (zone_id) WHERE status = 'ACTIVE';
CREATE INDEX sessions_active_machine ON sessions (machine_id) WHERE status = 'ACTIVE';

CREATE TABLE events (
    seq        BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    id         TEXT NOT NULL UNIQUE,
    at         BIGINT NOT NULL,
    level      TEXT NOT NULL,
    producer   TEXT NOT NULL,
    code       TEXT NOT NULL,
    fleet_id   TEXT,
    zone_id    TEXT,
    machine_id TEXT,
    message    TEXT NOT NULL
);
CREATE INDEX events_fleet ON events (fleet_id, seq);
CREATE INDEX events_zone ON events (zone_id, seq);

CREATE TABLE crashes (
    seq         BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    id          TEXT NOT NULL UNIQUE,
    fleet_id    TEXT NOT NULL,
    zone_id     TEXT NOT NULL,
    machine_id  TEXT NOT NULL,
    process_id  TEXT NOT NULL UNIQUE,
    build_id    TEXT NOT NULL,
    exit_code   BIGINT,
    signal      BIGINT,
    at          BIGINT NOT NULL,
    started_at  BIGINT,
    output_tail TEXT NOT NULL DEFAULT '[]',
    core_dump   TEXT
);
CREATE INDEX crashes_fleet ON crashes (fleet_id, seq);
CREATE INDEX crashes_fleet_build ON crashes (fleet_id, build_id, at);

CREATE TABLE bare_metal_machines (
    id                TEXT PRIMARY KEY,
    name              TEXT NOT NULL UNIQUE,
    location          TEXT NOT NULL,
    address           TEXT NOT NULL,
    cores             BIGINT,
    memory_gb         BIGINT,
    labels            TEXT NOT NULL,
    agent_token       TEXT NOT NULL,
    token_hash        TEXT NOT NULL UNIQUE,
    created_at        BIGINT NOT NULL,
    last_heartbeat_at BIGINT
);
CREATE INDEX bare_metal_location ON bare_metal_machines (location);

CREATE TABLE build_updates (
    fleet_id   TEXT PRIMARY KEY,
    from_build TEXT NOT NULL,
    to_build   TEXT NOT NULL,
    mode       TEXT NOT NULL,
    started_at BIGINT NOT NULL
);
