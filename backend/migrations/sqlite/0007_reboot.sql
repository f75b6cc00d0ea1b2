-- An operator's reboot of a machine restarts every process it ran then: they take no new
-- session and the agent replaces them (their sessions ended LOST in the same transaction).
ALTER TABLE processes ADD COLUMN restart_requested BOOLEAN NOT NULL DEFAULT FALSE;
