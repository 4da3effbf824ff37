//! Webhook setup against a fake GitHub that keeps hooks per repository: `autobuilder hooks sync`
//! (dry run, create, fix, remove duplicates, leave foreign hooks, idempotent) and `[hooks] auto`.

mod common;

use std::process::Command;

use autobuilder::config::Secret;
use common::*;
use serde_json::json;

const HOOK_URL: &str = "http://autobuilder.test/build/demo/hook";
const RECIPE: &str = "buildscripts: [b.sh]\nb.sh: {artifact: b.tar.gz}\n";

fn sync(config: &std::path::Path, dry_run: bool) -> String {
    let mut command = Command::new(env!("CARGO_BIN_EXE_autobuilder"));
    command.args(["hooks", "sync", "--config"]).arg(config);
    if dry_run {
        command.arg("--dry-run");
    }
    let out = command.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    text
}

/// Our hooks of `repo`: (events sorted, content type, secret, active).
fn ours(github: &FakeGithub, repo: &str) -> Vec<(Vec<String>, String, String, bool)> {
    github
        .hooks_of(repo)
        .iter()
        .filter(|h| h["config"]["url"] == HOOK_URL)
        .map(|h| {
            let mut events: Vec<String> =
                h["events"].as_array().unwrap().iter().map(|e| e.as_str().unwrap().to_string()).collect();
            events.sort();
            let config = &h["config"];
            (
                events,
                config["content_type"].as_str().unwrap_or("").into(),
                config["secret"].as_str().unwrap_or("").into(),
                h["active"] == true,
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn hooks_sync_creates_fixes_and_changes_nothing_the_second_time() {
    let git = GitHost::new();
    git.commit("org/recipes", "master", &[("org/app/master.yaml", RECIPE), ("org/lib/master.yaml", RECIPE)]);
    let github = FakeGithub::start().await;
    let hook = |events: serde_json::Value| {
        json!({"name": "web", "active": true, "events": events,
        "config": {"url": HOOK_URL, "content_type": "json", "secret": "old"}})
    };
    github.add_hook("org/app", hook(json!(["push"])));
    github.add_hook("org/app", hook(json!(["push", "pull_request", "issue_comment"])));
    let foreign = github.add_hook(
        "org/app",
        json!({"name": "web", "active": true, "events": ["*"], "config": {"url": "https://chat.example/hook"}}),
    );
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    write_config(&config, &test_config(dir.path(), &git, Some(&github.url)));

    let before = github.state.hooks.lock().unwrap().clone();
    let dry = sync(&config, true);
    assert!(dry.contains("demo org/recipes: would have created the webhook"), "{dry}");
    assert!(dry.contains("demo org/lib: would have created the webhook"), "{dry}");
    assert!(dry.contains("demo org/app: would have fixed the webhook (events were [\"push\"])"), "{dry}");
    assert!(dry.contains("demo org/app: would have removed 1 duplicate webhooks"), "{dry}");
    assert_eq!(*github.state.hooks.lock().unwrap(), before, "a dry run changes nothing");

    let done = sync(&config, false);
    assert!(
        done.contains("demo org/recipes: created the webhook") && done.contains("demo org/app: fixed the webhook"),
        "{done}"
    );
    let expected = vec![(
        vec!["issue_comment".to_string(), "pull_request".into(), "push".into()],
        "json".to_string(),
        SECRET.to_string(),
        true,
    )];
    for repo in ["org/recipes", "org/app", "org/lib"] {
        assert_eq!(ours(&github, repo), expected, "{repo}");
    }
    assert!(github.hooks_of("org/app").iter().any(|h| h["id"] == foreign), "a foreign hook was touched");

    let after = github.state.hooks.lock().unwrap().clone();
    let again = sync(&config, false);
    assert_eq!(again.lines().filter(|l| l.ends_with(": ok")).count(), 3, "{again}");
    assert_eq!(*github.state.hooks.lock().unwrap(), after, "the second run changed something");
}

#[tokio::test(flavor = "multi_thread")]
async fn with_hooks_auto_a_reload_gives_new_repositories_their_hook() {
    let git = GitHost::new();
    git.commit("org/recipes", "master", &[("org/app/master.yaml", RECIPE)]);
    let github = FakeGithub::start().await;
    let server = Server::start(|dir| test_config(dir, &git, Some(&github.url)).with(|c| c.hooks.auto = true));
    wait_until("the hook of the first tracked repository", async || {
        (!ours(&github, "org/app").is_empty()).then_some(())
    })
    .await;

    let sha = git.commit("org/recipes", "master", &[("org/new/master.yaml", RECIPE)]);
    let (code, _) = server.push("org/recipes", "master", &sha).await;
    assert_eq!(code, 202);
    wait_until("the hook of the new repository", async || (!ours(&github, "org/new").is_empty()).then_some(())).await;
    assert_eq!(ours(&github, "org/new").len(), 1);
    assert_eq!(ours(&github, "org/app").len(), 1, "an existing hook was duplicated");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_github_app_posts_statuses_with_installation_tokens() {
    let git = GitHost::new();
    git.commit("org/recipes", "master", &[("org/app/master.yaml", RECIPE)]);
    let sha = git.commit("org/app", "master", &[("b.sh", "#!/bin/sh\ntar -czf /tmp/archives/b.tar.gz b.sh\n")]);
    let github = FakeGithub::start().await;
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("app.pem");
    let made = Command::new("openssl").args(["genrsa", "-out"]).arg(&key).arg("2048").output().unwrap();
    assert!(made.status.success(), "openssl genrsa: {}", String::from_utf8_lossy(&made.stderr));
    let server = Server::start(|dir| {
        test_config(dir, &git, Some(&github.url)).with(|c| {
            c.github.token = Secret::default();
            c.github.app_id = 42;
            c.github.installation_id = 7;
            c.github.private_key_path = key.clone();
        })
    });

    let id = server.push_builds("org/app", "master", &sha).await[0];
    assert_eq!(server.wait_build(id).await["status"], "success");
    let statuses = github.wait_for(&sha, "autobuilder/b.sh", "success").await;
    assert_eq!(statuses.iter().map(|s| s.state.as_str()).collect::<Vec<_>>(), ["pending", "success"]);
    let minted = github.state.app_tokens.lock().unwrap().clone();
    assert_eq!(minted[0].0, 7, "the configured installation");
    assert_eq!(minted[0].1["iss"].to_string().trim_matches('"'), "42", "{:?}", minted[0].1);
    assert_eq!(minted.len(), 1, "the token is reused until it expires");
}
