-- Room on each page for a row's next version: a placement, an end or a heartbeat updates
-- the same process or machine row many times a second, and with free space on its page the
-- update is HOT (no new entry in any of the table's indexes, and old versions pruned in
-- place). The columns these updates change are in no index.
ALTER TABLE processes SET (fillfactor = 50);
ALTER TABLE machines SET (fillfactor = 50);
ALTER TABLE zones SET (fillfactor = 50);
ALTER TABLE fleets SET (fillfactor = 50);
ALTER TABLE zone_leases SET (fillfactor = 50);
