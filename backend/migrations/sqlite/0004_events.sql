-- Events: what happened to fleets, zones and machines, for operators (`GET /v1/events`).
-- They are history: no foreign keys, and removing a zone, fleet or machine keeps them.
-- `seq` orders them (newest first is `seq DESC`); `id` is the stable public id.
CREATE TABLE events (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    id         TEXT NOT NULL UNIQUE,
    at         BIGINT NOT NULL,
    -- INFO | WARNING | ERROR
    level      TEXT NOT NULL,
    -- FLEET | ZONE | MACHINE
    producer   TEXT NOT NULL,
    -- A stable UPPER_SNAKE code, e.g. MACHINE_MODEL_UNAVAILABLE.
    code       TEXT NOT NULL,
    fleet_id   TEXT,
    zone_id    TEXT,
    machine_id TEXT,
    message    TEXT NOT NULL
);
CREATE INDEX events_fleet ON events (fleet_id, seq);
CREATE INDEX events_zone ON events (zone_id, seq);

-- A machine's end: when it first became TERMINATING, when it was gone, and why.
ALTER TABLE machines ADD COLUMN terminating_since BIGINT;
ALTER TABLE machines ADD COLUMN terminated_at BIGINT;
ALTER TABLE machines ADD COLUMN termination_reason TEXT;
