//! Pull requests: built at their head with the recipe of the branch they target, forks only when
//! allowed, builds cancelled when the pull request closes.

mod common;

use common::*;

const MASTER_RECIPE: &str = "buildscripts: [build.sh]\nbuild.sh: {artifact: out.tar.gz}\n";
/// A recipe for the pull request's own branch, which must not be used.
const FEATURE_RECIPE: &str = "buildscripts: [other.sh]\nother.sh: {artifact: other.tar.gz}\n";

fn setup(head_script: &str) -> (GitHost, String) {
    let git = GitHost::new();
    git.commit(
        "org/recipes",
        "master",
        &[("org/app/master.yaml", MASTER_RECIPE), ("org/app/feature.yaml", FEATURE_RECIPE)],
    );
    git.commit(
        "org/app",
        "master",
        &[("build.sh", "#!/bin/sh\necho master\ntar -czf /tmp/archives/out.tar.gz build.sh\n")],
    );
    let head = git.commit("org/app", "feature", &[("build.sh", head_script)]);
    git.pull_ref("org/app", 7, &head);
    (git, head)
}

async fn deliver_pr(server: &Server, action: &str, head: &str, head_repo: &str) -> (u16, serde_json::Value) {
    let body = pull_request_payload(action, "org/app", 7, "master", head, head_repo).to_string();
    server.deliver("demo", "pull_request", body.as_bytes(), Some(SECRET)).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pull_request_is_built_at_its_head_with_the_target_branch_recipe() {
    let (git, head) = setup("#!/bin/sh\necho from the pull request\ntar -czf /tmp/archives/out.tar.gz build.sh\n");
    let github = FakeGithub::start().await;
    let server = Server::start(|dir| test_config(dir, &git, Some(&github.url)));

    let (code, answer) = deliver_pr(&server, "opened", &head, "org/app").await;
    assert_eq!(code, 202, "{answer}");
    let id = answer["builds"][0].as_i64().unwrap();
    let build = server.wait_build(id).await;
    assert_eq!(build["status"], "success", "{build}");
    assert_eq!((build["script"].as_str(), build["branch"].as_str()), (Some("build.sh"), Some("pull/7")));
    assert_eq!(build["commit"], head.as_str());
    assert_eq!(build["artifact"], format!("org-app-pull-7-{}.tar.gz", &head[..10]).as_str());
    let (_, log) = server.get_text(&format!("/build/{id}/log")).await;
    assert!(log.contains("from the pull request"), "{log}");
    let statuses = github.wait_for(&head, "autobuilder/build.sh", "success").await;
    assert_eq!(statuses.iter().map(|s| s.state.as_str()).collect::<Vec<_>>(), ["pending", "success"]);

    let (code, answer) = deliver_pr(&server, "labeled", &head, "org/app").await;
    assert_eq!(code, 200);
    assert!(answer["message"].as_str().unwrap().contains("ignored"), "{answer}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fork_is_built_only_when_the_project_allows_it() {
    let (git, head) = setup("#!/bin/sh\ntar -czf /tmp/archives/out.tar.gz build.sh\n");
    let server = Server::start(|dir| test_config(dir, &git, None));
    let (code, answer) = deliver_pr(&server, "opened", &head, "stranger/app").await;
    assert_eq!(code, 200, "{answer}");
    assert!(answer["message"].as_str().unwrap().contains("allow_forks is off"), "{answer}");
    let (_, history) = server.get_json("/build/history?repository=org/app").await;
    assert_eq!(history, serde_json::json!([]));
    drop(server);

    let server = Server::start(|dir| test_config(dir, &git, None).with(|c| c.demo().allow_forks = true));
    let (code, answer) = deliver_pr(&server, "opened", &head, "stranger/app").await;
    assert_eq!(code, 202, "{answer}");
    assert_eq!(server.wait_build(answer["builds"][0].as_i64().unwrap()).await["status"], "success");
}

#[tokio::test(flavor = "multi_thread")]
async fn closing_a_pull_request_cancels_its_builds() {
    let (git, head) = setup("#!/bin/sh\nsleep 60\n");
    let server = Server::start(|dir| test_config(dir, &git, None).with(|c| c.builds.cancel_grace_seconds = 1));
    let (_, answer) = deliver_pr(&server, "opened", &head, "org/app").await;
    let id = answer["builds"][0].as_i64().unwrap();
    server.wait_running(id).await;
    let (code, answer) = deliver_pr(&server, "closed", &head, "org/app").await;
    assert_eq!(code, 200, "{answer}");
    assert!(answer["message"].as_str().unwrap().contains("1 builds cancelled"), "{answer}");
    let build = server.wait_build(id).await;
    assert_eq!(
        (build["status"].as_str(), build["error"].as_str()),
        (Some("cancelled"), Some("pull request #7 closed"))
    );
}

fn comment_payload(body: &str, user: &str) -> String {
    serde_json::json!({
        "action": "created",
        "issue": {"number": 7, "pull_request": {"url": "x"}},
        "comment": {"body": body, "user": {"login": user}},
        "repository": {"full_name": "org/app"}
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_collaborator_builds_a_fork_by_command_and_asks_for_its_status() {
    let (git, head) = setup("#!/bin/sh\ntar -czf /tmp/archives/out.tar.gz build.sh\n");
    let github = FakeGithub::start().await;
    github.state.permissions.lock().unwrap().insert("maintainer".into(), "write".into());
    github.state.permissions.lock().unwrap().insert("reader".into(), "read".into());
    let pull = pull_request_payload("opened", "org/app", 7, "master", &head, "stranger/app")["pull_request"].clone();
    github.state.pulls.lock().unwrap().insert(7, pull);
    let server = Server::start(|dir| test_config(dir, &git, Some(&github.url)));

    let (code, answer) = deliver_pr(&server, "opened", &head, "stranger/app").await;
    assert_eq!(code, 200);
    assert!(answer["message"].as_str().unwrap().contains("allow_forks is off"), "{answer}");

    let comment = |body: &str, user: &str| comment_payload(body, user);
    let (code, answer) = server
        .deliver("demo", "issue_comment", comment("@autobuilder rebuild", "reader").as_bytes(), Some(SECRET))
        .await;
    assert_eq!(code, 200, "{answer}");
    assert!(answer["message"].as_str().unwrap().contains("no write access"), "{answer}");
    let (code, answer) =
        server.deliver("demo", "issue_comment", comment("nice work", "maintainer").as_bytes(), Some(SECRET)).await;
    assert_eq!(code, 202);
    assert!(answer["message"].as_str().unwrap().contains("ignored"), "{answer}");
    let (_, history) = server.get_json("/build/history?repository=org/app").await;
    assert_eq!(history, serde_json::json!([]), "nothing built yet");

    let (code, answer) = server
        .deliver("demo", "issue_comment", comment("LGTM\n@autobuilder rebuild", "maintainer").as_bytes(), Some(SECRET))
        .await;
    assert_eq!(code, 202, "{answer}");
    let build = server.wait_build(answer["builds"][0].as_i64().unwrap()).await;
    assert_eq!((build["status"].as_str(), build["commit"].as_str()), (Some("success"), Some(head.as_str())));

    let (code, answer) = server
        .deliver("demo", "issue_comment", comment("@autobuilder status", "maintainer").as_bytes(), Some(SECRET))
        .await;
    assert_eq!(code, 200, "{answer}");
    let comments = github.state.comments.lock().unwrap().clone();
    assert_eq!(comments.len(), 1, "{comments:?}");
    assert_eq!(comments[0].0, 7);
    assert!(
        comments[0].1.contains("`build.sh`: success") && comments[0].1.contains("mergeable: every recipe is green"),
        "{comments:?}"
    );
}
