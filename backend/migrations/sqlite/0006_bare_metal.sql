-- The bare-metal pool: machines an operator runs, registered per location. Their agents
-- sync with the pool machine's own token (its hash finds the machine; the token itself is
-- kept so the admin API can hand it back, e.g. to `terraform import`).
CREATE TABLE bare_metal_machines (
    id                TEXT PRIMARY KEY,
    name              TEXT NOT NULL UNIQUE,
    location          TEXT NOT NULL,
    address           TEXT NOT NULL,
    cores             INTEGER,
    memory_gb         INTEGER,
    -- JSON object of labels.
    labels            TEXT NOT NULL,
    agent_token       TEXT NOT NULL,
    token_hash        TEXT NOT NULL UNIQUE,
    created_at        BIGINT NOT NULL,
    -- The last sync of its agent while no zone had it (an assigned machine's agent
    -- heartbeats on its machine row).
    last_heartbeat_at BIGINT
);
CREATE INDEX bare_metal_location ON bare_metal_machines (location);

-- A zone's machine that a pool machine serves. A pool machine serves at most one live
-- machine at a time: the index makes a double assignment impossible, whatever races.
ALTER TABLE machines ADD COLUMN bare_metal_id TEXT;
CREATE UNIQUE INDEX machines_live_bare_metal ON machines (bare_metal_id)
    WHERE bare_metal_id IS NOT NULL AND status NOT IN ('TERMINATED', 'UNHEALTHY');
