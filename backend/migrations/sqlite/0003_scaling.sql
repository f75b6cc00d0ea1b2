-- Processes each machine should run (the planner may keep free slots on a machine), and a
-- zone's idle clock for cooldown: the last moment it had an active session, was created,
-- or was woken by a placement request.
ALTER TABLE machines ADD COLUMN target_processes INTEGER;
ALTER TABLE zones ADD COLUMN idle_since BIGINT;
