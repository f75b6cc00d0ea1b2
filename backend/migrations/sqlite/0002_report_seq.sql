-- The newest agent report applied per machine: an older one that arrives late (a
-- cancelled long-poll) is ignored instead of undoing the newer one.
ALTER TABLE machines ADD COLUMN last_report_seq BIGINT NOT NULL DEFAULT 0;
