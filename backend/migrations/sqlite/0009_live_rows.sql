-- Live rows apart from history. Every read of the hot path (a zone's live processes and
-- active sessions, a machine's) goes through an index over live rows only, so its cost
-- follows the live fleet, not the history that simple mode leaves behind (one spent
-- process per session). The queries spell the predicate exactly as the index does.
CREATE INDEX processes_live_machine ON processes (machine_id)
    WHERE agent_state IN ('STARTING', 'READY', 'STOPPING');
CREATE INDEX processes_live_zone ON processes (zone_id)
    WHERE agent_state IN ('STARTING', 'READY', 'STOPPING');
CREATE INDEX processes_live_fleet ON processes (fleet_id, build_id)
    WHERE agent_state IN ('STARTING', 'READY', 'STOPPING');
CREATE INDEX sessions_active_machine ON sessions (machine_id) WHERE status = 'ACTIVE';
CREATE INDEX sessions_active_zone ON sessions (zone_id) WHERE status = 'ACTIVE';
CREATE INDEX sessions_active_process ON sessions (process_id) WHERE status = 'ACTIVE';
DROP INDEX sessions_process;
DROP INDEX processes_zone_state;

-- History leaves by age (`--retention-days`).
CREATE INDEX sessions_ended_at ON sessions (ended_at) WHERE status <> 'ACTIVE';
CREATE INDEX processes_ended_at ON processes (ended_at) WHERE agent_state IN ('EXITED', 'CRASHED');
CREATE INDEX machines_ended_at ON machines (terminated_at) WHERE status IN ('TERMINATED', 'UNHEALTHY');
