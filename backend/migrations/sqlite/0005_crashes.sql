-- Crashes: game-server processes that exited non-zero or by a signal without being asked
-- to (`GET /v1/crashes`), written in the transaction of the agent report that carries the
-- exit. History like events: no foreign keys, they outlive their machine and zone.
-- `seq` orders them (newest first is `seq DESC`); `id` is the stable public id.
CREATE TABLE crashes (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    id          TEXT NOT NULL UNIQUE,
    fleet_id    TEXT NOT NULL,
    zone_id     TEXT NOT NULL,
    machine_id  TEXT NOT NULL,
    -- A process crashes once: a resent report records nothing twice.
    process_id  TEXT NOT NULL UNIQUE,
    build_id    TEXT NOT NULL,
    exit_code   INTEGER,
    signal      INTEGER,
    -- When it exited (the agent's clock), and when it had started, if known.
    at          BIGINT NOT NULL,
    started_at  BIGINT,
    -- JSON array of its last output lines, oldest first.
    output_tail TEXT NOT NULL DEFAULT '[]',
    core_dump   TEXT
);
CREATE INDEX crashes_fleet ON crashes (fleet_id, seq);
CREATE INDEX crashes_fleet_build ON crashes (fleet_id, build_id, at);

-- When a process first reported READY: a build with a process that became READY is
-- not crash-looping (crash_loop::assess). The indexes keep that rule's two questions
-- ("is one READY now?", "when did one last become READY?") O(log n) in large fleets.
ALTER TABLE processes ADD COLUMN ready_at BIGINT;
CREATE INDEX processes_fleet_build_state ON processes (fleet_id, build_id, agent_state);
CREATE INDEX processes_fleet_build_ready ON processes (fleet_id, build_id, ready_at);

-- The crash-loop verdict of a fleet: the build it holds for (the fleet is UNAVAILABLE
-- while that is its current build) and since when; crashes before `crash_count_from`
-- (the last launch change or recovery) do not count toward a new verdict.
ALTER TABLE fleets ADD COLUMN crash_loop_build_id TEXT;
ALTER TABLE fleets ADD COLUMN crash_loop_since BIGINT;
ALTER TABLE fleets ADD COLUMN crash_count_from BIGINT NOT NULL DEFAULT 0;
