-- Workers on several hosts. Leases (see store/leases.rs): which worker runs a build, until when
-- its hold lasts unless renewed, and the fencing token of its writes (`lease`, one more at each
-- claim). `cancel` is a stop asked of a build that runs in another process. The twin of
-- migrations/sqlite/0002_workers.sql, plus the triggers that wake idle workers (`LISTEN
-- autobuilder_queue`) when a build is queued, queued again, or ends (freeing its project's slot).

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

CREATE TRIGGER builds_queued AFTER INSERT ON builds
    FOR EACH ROW WHEN (NEW.status = 'queued' AND NEW.kind = 'build') EXECUTE FUNCTION autobuilder_queued();
-- Queued again, or a running build ended: a slot of its project is free for an idle worker.
CREATE TRIGGER builds_requeued_or_ended AFTER UPDATE OF status ON builds
    FOR EACH ROW WHEN (NEW.kind = 'build' AND (NEW.status = 'queued' OR (OLD.status = 'running' AND NEW.status <> 'running')))
    EXECUTE FUNCTION autobuilder_queued();

-- The build logs of workers, for every host to read (see store/log_chunks.rs): each file of a log
-- (`part`: log, idx, sections) in the chunks its worker shipped, at their byte offsets, per lease
-- generation (a build run again after its worker was lost starts a new log).
CREATE TABLE log_chunks (
    build BIGINT NOT NULL,
    generation BIGINT NOT NULL,
    part TEXT NOT NULL,
    byte_offset BIGINT NOT NULL,
    bytes BYTEA NOT NULL,
    PRIMARY KEY (build, generation, part, byte_offset)
);
