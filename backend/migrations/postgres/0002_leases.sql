-- Replicas and zone leases (see leases.rs). Every zone has a row, made with the zone.
-- A reconciler event carries the generation its writer held.
CREATE TABLE replicas (
    id           TEXT PRIMARY KEY,
    url          TEXT NOT NULL,
    started_at   BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL,
    stopping     BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE TABLE zone_leases (
    zone_id    TEXT PRIMARY KEY,
    holder     TEXT,
    holder_url TEXT,
    generation BIGINT NOT NULL DEFAULT 0,
    expires_at BIGINT NOT NULL DEFAULT 0
);
INSERT INTO zone_leases (zone_id) SELECT id FROM zones;
ALTER TABLE events ADD COLUMN lease_generation BIGINT;
