-- A fleet's build update in progress: written with the fleet's build change, removed (with
-- its BUILD_UPDATE_COMPLETED event) once no live process of another build remains.
CREATE TABLE build_updates (
    fleet_id   TEXT PRIMARY KEY,
    from_build TEXT NOT NULL,
    to_build   TEXT NOT NULL,
    mode       TEXT NOT NULL,
    started_at BIGINT NOT NULL
);
CREATE INDEX processes_fleet_build ON processes (fleet_id, build_id);
