-- Leases (see store/leases.rs): which worker runs a build, until when its hold lasts unless renewed,
-- and the fencing token of its writes (`lease`, one more at each claim). `cancel` is a stop asked
-- of a build that runs in another process. The twin of migrations/postgres/0002_leases.sql.

ALTER TABLE builds ADD COLUMN worker TEXT;
ALTER TABLE builds ADD COLUMN lease BIGINT NOT NULL DEFAULT 0;
ALTER TABLE builds ADD COLUMN lease_expires BIGINT;
ALTER TABLE builds ADD COLUMN cancel TEXT;
