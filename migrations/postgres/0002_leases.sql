-- Leases (see store/leases.rs): which worker runs a build, until when its hold lasts unless renewed,
-- and the fencing token of its writes (`lease`, one more at each claim). `cancel` is a stop asked
-- of a build that runs in another process. The twin of migrations/sqlite/0002_leases.sql, plus the
-- trigger that wakes idle workers (`LISTEN autobuilder_queue`) when a build is queued or re-queued.

ALTER TABLE builds ADD COLUMN worker TEXT;
ALTER TABLE builds ADD COLUMN lease BIGINT NOT NULL DEFAULT 0;
ALTER TABLE builds ADD COLUMN lease_expires BIGINT;
ALTER TABLE builds ADD COLUMN cancel TEXT;

CREATE FUNCTION autobuilder_queued() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('autobuilder_queue', NEW.id::text);
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER builds_queued AFTER INSERT OR UPDATE OF status ON builds
    FOR EACH ROW WHEN (NEW.status = 'queued' AND NEW.kind = 'build') EXECUTE FUNCTION autobuilder_queued();
