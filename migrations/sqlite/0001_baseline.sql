-- The schema as the hand-written runner left it at `PRAGMA user_version` 5. A database made by that
-- runner is brought to version 5 by `store::migrate`'s bridge, which then records this migration
-- as applied; newer migrations follow as files of their own.

CREATE TABLE builds (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    project TEXT NOT NULL,
    repository TEXT NOT NULL,
    branch TEXT NOT NULL,
    commit_sha TEXT NOT NULL,
    script TEXT NOT NULL,
    baseimage TEXT,
    status TEXT NOT NULL,
    message TEXT,
    author TEXT,
    created INTEGER NOT NULL,
    started INTEGER,
    ended INTEGER,
    error TEXT,
    artifact TEXT,
    artifact_url TEXT,
    artifact_sha256 TEXT,
    settings TEXT,
    outputs TEXT
);
CREATE INDEX builds_by_status ON builds(status);
CREATE INDEX builds_by_branch ON builds(repository, branch, id);

-- A delivery id is unique per project: another project's delivery with the same id is its own.
CREATE TABLE deliveries (
    id TEXT NOT NULL,
    project TEXT NOT NULL,
    event TEXT NOT NULL,
    received INTEGER NOT NULL,
    headers TEXT NOT NULL,
    payload BLOB NOT NULL,
    outcome TEXT,
    PRIMARY KEY (project, id)
);
CREATE INDEX deliveries_by_time ON deliveries(received);

CREATE TABLE statuses (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    repository TEXT NOT NULL,
    commit_sha TEXT NOT NULL,
    state TEXT NOT NULL,
    context TEXT NOT NULL,
    description TEXT NOT NULL,
    target_url TEXT NOT NULL,
    created INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt INTEGER NOT NULL,
    delivered INTEGER,
    last_error TEXT
);
CREATE INDEX statuses_undelivered ON statuses(delivered, id);
