//! The history on PostgreSQL when the database itself fails: restarted under a running build,
//! down when a push arrives. (Every other test file runs on PostgreSQL too with
//! `TEST_DATABASE=postgres`, see `make test-postgres`.)

mod common;

use std::time::Duration;

use autobuilder::config::Secret;
use common::*;

const SCRIPT: &str =
    "#!/bin/sh\nset -e\necho started\nsleep 2\necho done\ntar -czf /tmp/archives/out.tar.gz build.sh\n";

#[tokio::test(flavor = "multi_thread")]
async fn a_postgres_restart_under_a_running_build_loses_nothing() {
    let postgres = Postgres::own();
    let database = postgres.fresh_database();
    let (git, sha) = one_script_app(SCRIPT);
    let github = FakeGithub::start().await;
    let server = Server::start(|dir| {
        test_config(dir, &git, Some(&github.url)).with(|c| c.database.url = Secret::new(database.as_str()))
    });
    let id = server.push_builds("org/app", "master", &sha).await[0];
    server.wait_log(id, "started").await;

    // The database goes away while the build runs, and stays away past the build's end.
    postgres.stop();
    let (code, ready) = server.get_json("/readyz").await;
    assert_eq!(code, 503, "{ready}");
    assert!(ready["database"].as_str().is_some_and(|e| !e.is_empty()), "the database is named as down: {ready}");
    // A push meanwhile cannot be stored: refused with a server error, so that GitHub delivers it again.
    let second = git.commit("org/app", "master", &[("build.sh", &SCRIPT.replace("started", "second"))]);
    let (code, answer) = server.push("org/app", "master", &second).await;
    assert!(code >= 500, "a delivery that could not be stored is not acknowledged: {code} {answer}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    postgres.start();

    // The build ends as it would have, its end recorded and its status posted.
    let build = server.wait_build(id).await;
    assert_eq!(build["status"], "success", "{build}");
    github.wait_for(&sha, "autobuilder/build.sh", "success").await;
    let (code, ready) = server.get_json("/readyz").await;
    assert_eq!(code, 200, "{ready}");
    // GitHub's redelivery of the refused push is built.
    let ids = server.push_builds_after("org/app", "master", &sha, &second).await;
    assert_eq!(server.wait_build(ids[0]).await["status"], "success");
    let (_, history) = server.get_json("/build/history?repository=org/app").await;
    assert_eq!(history.as_array().unwrap().len(), 2, "{history}");
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_refuses_to_start_on_a_postgres_that_does_not_answer() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (git, _) = one_script_app(SCRIPT);
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path(), &git, None)
        .with(|c| c.database.url = Secret::new(format!("postgres://autobuilder:hunter2@127.0.0.1:{port}/history")));
    let config_path = dir.path().join("config.toml");
    write_config(&config_path, &config);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_autobuilder"))
        .args(["serve", "--config"])
        .arg(&config_path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("is PostgreSQL running there?"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "the password stays out of messages: {stderr}");
}
