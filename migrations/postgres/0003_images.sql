-- Image chains across hosts (see store/images.rs): which worker's Docker engine holds the newest
-- image a producer (a `commit: true` script of a repository and branch) committed, so that the
-- builds starting `from` it run there. One row per project, repository and branch, replaced by
-- each newer commit. The twin of migrations/sqlite/0003_images.sql.

CREATE TABLE images (
    project TEXT NOT NULL,
    repository TEXT NOT NULL,
    branch TEXT NOT NULL,
    worker TEXT NOT NULL,
    build BIGINT NOT NULL,
    commit_sha TEXT NOT NULL,
    PRIMARY KEY (project, repository, branch)
);
