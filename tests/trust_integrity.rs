//! Integrity and credentials (issue 13): each test performs an attack against the real binary and
//! the real Docker engine, and checks that it held.

mod common;

use std::process::Command;

use autobuilder::config::Secret;
use common::*;
use serde_json::Value;

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().unwrap();
    assert!(out.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn image_id(image: &str) -> Option<String> {
    let out = Command::new("docker").args(["image", "inspect", "-f", "{{.Id}}", image]).output().unwrap();
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

async fn log_of(server: &Server, id: &Value) -> String {
    server.get_text(&format!("/build/{id}/log")).await.1
}

/// A script that leaves `out.tar.gz` in /tmp/archives after `body`.
fn script(body: &str) -> String {
    format!("#!/bin/sh\nset -e\n{body}\ntar -czf /tmp/archives/out.tar.gz build.sh\n")
}

const BUILD: &str = "buildscripts: [build.sh]\nbuild.sh: {artifact: out.tar.gz}\n";

#[tokio::test(flavor = "multi_thread")]
async fn a_recipe_cannot_overwrite_any_image() {
    let git = GitHost::new();
    let victim = "trust-victim/busybox:latest";
    docker(&["tag", TEST_IMAGE, victim]);
    // An image planted where trust/app's `planted` branch commits, without autobuilder's labels.
    let planted = "autobuilder/demo/trust-app:planted";
    docker(&["tag", TEST_IMAGE, planted]);
    let committing = "buildscripts: [build.sh]\nbuild.sh: {artifact: out.tar.gz, commit: true}\n";
    let recipes = git.commit(
        "org/recipes",
        "master",
        &[
            // The attack: a branch named `1` whose recipe commits over the default base image.
            ("trust/evil/1.yaml", "buildscripts: [build.sh]\nbuild.sh: {artifact: out.tar.gz, commit: trust-victim/busybox}\n"),
            ("trust/app/master.yaml", committing),
            ("trust/app/planted.yaml", committing),
            ("trust/user/master.yaml", "buildscripts: [build.sh]\nbuild.sh: {artifact: out.tar.gz, baseimage: 'autobuilder/other/trust-app:master'}\n"),
        ],
    );
    let master = git.commit("trust/app", "master", &[("build.sh", &script("echo made > /made-here"))]);
    let planted_sha = git.commit("trust/app", "planted", &[("build.sh", &script("echo planted"))]);
    let before = image_id(victim).unwrap();
    let planted_before = image_id(planted).unwrap();
    let server = Server::start(|dir| {
        test_config(dir, &git, None).with(|c| {
            c.projects.insert("other".into(), project("org/other-recipes", "x"));
        })
    });

    let reload = server.wait_reload(&recipes).await;
    let log = log_of(&server, &reload["id"]).await;
    assert!(log.contains("skipped trust/evil/1.yaml") && log.contains("commit takes true or false"), "{log}");
    assert!(log.contains("skipped trust/user/master.yaml") && log.contains("images_from"), "{log}");
    let (code, _) = server.push("trust/evil", "1", &master).await;
    assert_ne!(code, 202, "the refused recipe builds nothing");

    let built = server.wait_build(server.push_builds("trust/app", "master", &master).await[0]).await;
    assert_eq!(built["status"], "success", "{built}");
    let image = "autobuilder/demo/trust-app:master";
    let labels = docker(&["image", "inspect", "-f", "{{json .Config.Labels}}", image]);
    let labels: Value = serde_json::from_str(&labels).unwrap();
    assert_eq!(labels["autobuilder.project"], "demo");
    assert_eq!(labels["autobuilder.repository"], "trust/app");
    assert_eq!(labels["autobuilder.branch"], "master");
    assert_eq!(labels["autobuilder.image"], "autobuilder/demo/trust-app");
    assert!(image_id(&format!("autobuilder/demo/trust-app:master-{}", &master[..10])).is_some());

    // A tag already on an image autobuilder did not make for this branch is never moved.
    let refused = server.wait_build(server.push_builds("trust/app", "planted", &planted_sha).await[0]).await;
    assert_eq!(refused["status"], "error", "{refused}");
    assert!(refused["error"].as_str().unwrap().contains("refusing to commit over the image"), "{refused}");
    assert_eq!(image_id(planted).unwrap(), planted_before, "the planted image was retagged");
    assert_eq!(image_id(victim).unwrap(), before, "the victim image was retagged");

    let _ = Command::new("docker").args(["rmi", victim, planted, image]).output();
    let _ =
        Command::new("docker").args(["rmi", &format!("autobuilder/demo/trust-app:master-{}", &master[..10])]).output();
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_never_reach_a_build_or_its_log() {
    let git = GitHost::new();
    let hub_token = "hub-secret-4fe1c2";
    git.commit("org/recipes", "master", &[("trust/creds/master.yaml", BUILD)]);
    // The script looks everywhere a build could find a credential, and echoes the tokens it
    // knows (as a script that found them would).
    let sha = git.commit(
        "trust/creds",
        "master",
        &[(
            "build.sh",
            &script(&format!(
                "echo '--- git config'; cat .git/config; cat .git/FETCH_HEAD || true; echo '--- env'; env\n\
                 echo \"found {hub_token} and test-token and admin-token\""
            )),
        )],
    );
    let github = FakeGithub::start().await;
    let server = Server::start(|dir| {
        test_config(dir, &git, Some(&github.url)).with(admin).with(|c| c.artifacts.hub.token = Secret::new(hub_token))
    });
    let build = server.wait_build(server.push_builds("trust/creds", "master", &sha).await[0]).await;
    assert_eq!(build["status"], "success", "{build}");
    let log = log_of(&server, &build["id"]).await;
    assert!(log.contains("[remote \"origin\"]") && log.contains("--- env"), "{log}");
    assert!(log.contains("found *** and *** and ***"), "{log}");
    for token in [hub_token, "test-token", "admin-token"] {
        assert!(!log.contains(token), "{token} in the log:\n{log}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn artifact_names_cannot_be_taken_by_another_recipe_or_a_pull_request() {
    let git = GitHost::new();
    let tagged = "buildscripts: [build.sh]\nbuild.sh: {artifact: out.tar.gz, tag: c}\n";
    let squatter = "buildscripts: [build.sh]\nbuild.sh:\n  artifact: out.tar.gz\n  outputs:\n    - {file: out.tar.gz, name: trust-app-master}\n";
    let recipes = git.commit(
        "org/recipes",
        "master",
        &[
            ("trust/app/master.yaml", BUILD),
            ("trust/evil/master.yaml", squatter),
            ("trust/b-c/master.yaml", BUILD),
            ("trust/b/master.yaml", tagged),
            ("trust-b/c/master.yaml", BUILD),
        ],
    );
    let master = git.commit("trust/app", "master", &[("build.sh", &script("echo master"))]);
    let head = git.commit("trust/app", "feature", &[("build.sh", &script("echo pull request"))]);
    git.pull_ref("trust/app", 7, &head);
    let github = FakeGithub::start().await;
    let server = Server::start(|dir| test_config(dir, &git, Some(&github.url)));

    let reload = server.wait_reload(&recipes).await;
    let log = log_of(&server, &reload["id"]).await;
    assert!(log.contains("skipped trust/evil/master.yaml") && log.contains("must begin with {org}-{repo}"), "{log}");
    for file in ["trust/b-c/master.yaml", "trust/b/master.yaml", "trust-b/c/master.yaml"] {
        assert!(log.contains(&format!("skipped {file}")), "{file}: {log}");
    }
    assert!(log.contains("trust-b-c-master.tar.gz, a name that trust"), "both recipes are named: {log}");
    assert!(log.contains("tracking trust/app master"), "{log}");

    let built = server.wait_build(server.push_builds("trust/app", "master", &master).await[0]).await;
    assert_eq!(built["status"], "success", "{built}");
    let moving = server.artifacts_dir().join("trust-app-master.tar.gz");
    let production = std::fs::read_link(&moving).unwrap();

    // A pull request against master builds with master's recipe, but never moves master's name.
    let body = pull_request_payload("opened", "trust/app", 7, "master", &head, "trust/app").to_string();
    let (code, answer) = server.deliver("demo", "pull_request", body.as_bytes(), Some(SECRET)).await;
    assert_eq!(code, 202, "{answer}");
    let pull = server.wait_build(answer["builds"][0].as_i64().unwrap()).await;
    assert_eq!(pull["status"], "success", "{pull}");
    assert_eq!(pull["artifact"], format!("trust-app-pull-7-{}.tar.gz", &head[..10]).as_str());
    assert_eq!(std::fs::read_link(&moving).unwrap(), production, "the pull request moved master's name");
    assert!(!server.artifacts_dir().join("trust-app-pull-7.tar.gz").exists(), "a pull request got a moving name");
}

/// Two projects share the artifact store: recipes of both whose names could meet are both refused,
/// whichever project loaded first, so no load order (a restart, a failed fetch) hands a name over.
#[tokio::test(flavor = "multi_thread")]
async fn projects_cannot_take_each_others_artifact_names_whatever_loads_first() {
    let git = GitHost::new();
    git.commit("org/recipes", "master", &[("trust/b-c/master.yaml", BUILD), ("trust/own/master.yaml", BUILD)]);
    git.commit("org/other-recipes", "master", &[("trust-b/c/master.yaml", BUILD)]);
    let (ours, theirs) = (
        git.commit("trust/b-c", "master", &[("build.sh", &script("echo ours"))]),
        git.commit("trust-b/c", "master", &[("build.sh", &script("echo theirs"))]),
    );
    let mut server = Server::start(|dir| {
        test_config(dir, &git, None).with(|c| {
            c.projects.insert("other".into(), project("org/other-recipes", "other-secret"));
        })
    });
    for _ in 0..2 {
        let (_, answer) = server.push("trust/b-c", "master", &ours).await;
        assert!(answer["message"].as_str().unwrap().starts_with("no recipe"), "{answer}");
        let body = push_payload("trust-b/c", "refs/heads/master", &theirs).to_string();
        let (_, answer) = server.deliver("other", "push", body.as_bytes(), Some("other-secret")).await;
        assert!(answer["message"].as_str().unwrap().starts_with("no recipe"), "{answer}");
        // The recipe that meets nobody's names is in use.
        let own = git.commit("trust/own", "master", &[("build.sh", &script("echo own"))]);
        let built = server.wait_build(server.push_builds("trust/own", "master", &own).await[0]).await;
        assert_eq!(built["status"], "success", "{built}");
        // Only then: a server killed while it creates a container leaves one nobody removes.
        server.restart();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn build_containers_are_hardened_and_file_size_is_limited() {
    let git = GitHost::new();
    git.commit("org/recipes", "master", &[("trust/caps/master.yaml", BUILD), ("trust/big/master.yaml", BUILD)]);
    let caps = git.commit(
        "trust/caps",
        "master",
        &[("build.sh", &script("grep -E 'NoNewPrivs|CapEff' /proc/self/status | tr -s '\\t' ' '\nmkdir -p t && echo x > t/f && chown 1:1 t/f && tar -cf t.tar t"))],
    );
    let big = git.commit("trust/big", "master", &[("build.sh", &script("dd if=/dev/zero of=/tmp/big bs=1M count=20"))]);
    let server = Server::start(|dir| test_config(dir, &git, None).with(|c| c.builds.max_file_size = "8m".into()));

    let built = server.wait_build(server.push_builds("trust/caps", "master", &caps).await[0]).await;
    let log = log_of(&server, &built["id"]).await;
    assert_eq!(built["status"], "success", "{built}\n{log}");
    assert!(log.contains("NoNewPrivs: 1"), "{log}");
    // CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID: bits 0 1 3 4 5 6 7.
    assert!(log.contains("CapEff: 00000000000000fb"), "{log}");

    let failed = server.wait_build(server.push_builds("trust/big", "master", &big).await[0]).await;
    assert_eq!(failed["status"], "failure", "{failed}");
    assert!(failed["error"].as_str().unwrap().starts_with("script exited"), "{failed}");
}

#[tokio::test(flavor = "multi_thread")]
async fn images_are_never_pulled_from_registries_the_operator_did_not_allow() {
    let git = GitHost::new();
    let remote =
        "buildscripts: [build.sh]\nbuild.sh: {artifact: out.tar.gz, baseimage: 'registry.invalid.example:5000/x'}\n";
    let missing =
        "buildscripts: [build.sh]\nbuild.sh: {artifact: out.tar.gz, baseimage: 'trust-missing-image:never'}\n";
    let recipes = git.commit(
        "org/recipes",
        "master",
        &[("trust/remote/master.yaml", remote), ("trust/missing/master.yaml", missing)],
    );
    let sha = git.commit("trust/missing", "master", &[("build.sh", &script("echo hi"))]);
    let server = Server::start(|dir| test_config(dir, &git, None));

    let reload = server.wait_reload(&recipes).await;
    let log = log_of(&server, &reload["id"]).await;
    assert!(log.contains("skipped trust/remote/master.yaml") && log.contains("allowed_registries"), "{log}");

    let build = server.wait_build(server.push_builds("trust/missing", "master", &sha).await[0]).await;
    assert_eq!(build["status"], "error", "{build}");
    let error = build["error"].as_str().unwrap();
    assert!(error.contains("trust-missing-image:never") && error.contains("docker pull"), "{error}");
    assert!(error.contains("allowed_registries"), "{error}");
    assert!(!log_of(&server, &build["id"]).await.contains("pulling"), "a pull was attempted");
}

#[tokio::test(flavor = "multi_thread")]
async fn public_errors_do_not_show_host_paths() {
    let git = GitHost::new();
    git.commit("org/recipes", "master", &[("trust/paths/master.yaml", BUILD)]);
    let sha = git.commit("trust/paths", "master", &[("build.sh", &script("echo hi"))]);
    let server = Server::start(|dir| {
        // The artifact directory lies under a plain file: every upload fails.
        std::fs::write(dir.join("file"), "").unwrap();
        let store = dir.join("file/artifacts");
        test_config(dir, &git, None).with(|c| {
            c.artifacts.directory = store;
            c.artifacts.retries = 0;
        })
    });
    let id = server.push_builds("trust/paths", "master", &sha).await[0];
    let build = server.wait_build(id).await;
    assert_eq!(build["status"], "error", "{build}");
    let (_, json) = server.get_json(&format!("/build/{id}")).await;
    let text = json.to_string();
    let root = server.dir.path().display().to_string();
    assert!(!text.contains(&root), "a host path in {text}");
    assert!(text.contains(&format!("data_dir/unpublished/{id}")), "{text}");
    assert!(!log_of(&server, &build["id"]).await.contains(&root), "a host path in the log");
    assert!(server.dir.path().join(format!("data/unpublished/{id}")).exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn root_owned_workspaces_are_removed_and_unreadable_artifacts_are_the_scripts_fault() {
    let git = GitHost::new();
    git.commit("org/recipes", "master", &[("trust/perm/master.yaml", BUILD)]);
    let sha = git.commit(
        "trust/perm",
        "master",
        &[(
            "build.sh",
            &script("mkdir -p d/e && touch d/e/f && chmod 000 d/e d\ntrue").replace(
                "tar -czf /tmp/archives/out.tar.gz build.sh\n",
                "tar -czf /tmp/archives/out.tar.gz build.sh\nchmod 000 /tmp/archives/out.tar.gz\n",
            ),
        )],
    );
    // Not kept for a next build: its removal is what is tested.
    let server = Server::start(|dir| test_config(dir, &git, None).with(|c| c.git.keep_checkouts = 0));
    let build = server.wait_build(server.push_builds("trust/perm", "master", &sha).await[0]).await;
    assert_eq!(build["status"], "failure", "{build}");
    assert!(build["error"].as_str().unwrap().contains("chmod a+r"), "{build}");
    let tmp = server.dir.path().join("tmp");
    wait_until("the build directory to go", async || (std::fs::read_dir(&tmp).unwrap().count() == 0).then_some(()))
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reattached_build_commits_its_image_within_the_original_time_limit() {
    let git = GitHost::new();
    let committing = "buildscripts: [build.sh]\nbuild.sh: {artifact: out.tar.gz, commit: true}\n";
    let slow = "buildscripts: [build.sh]\nbuild.sh: {artifact: out.tar.gz, timeout_minutes: 1}\n";
    git.commit(
        "org/recipes",
        "master",
        &[("trust/reattach/master.yaml", committing), ("trust/slow/master.yaml", slow)],
    );
    let made = git.commit("trust/reattach", "master", &[("build.sh", &script("sleep 30"))]);
    // Killed at ~20 s: with a fresh minute after the restart it would end at 75 s; within the
    // minute counted from its real start it times out.
    let long = git.commit("trust/slow", "master", &[("build.sh", &script("sleep 75"))]);
    let mut server = Server::start(|dir| test_config(dir, &git, None).with(|c| c.builds.concurrency = 2));
    let a = server.push_builds("trust/reattach", "master", &made).await[0];
    let b = server.push_builds("trust/slow", "master", &long).await[0];
    for id in [a, b] {
        server.wait_running(id).await;
        wait_until("the container", async || (!server.containers_of(id).is_empty()).then_some(())).await;
    }
    tokio::time::sleep(std::time::Duration::from_secs(20)).await;
    server.kill();
    server.start_again();

    let built = server.wait_build(a).await;
    assert_eq!(built["status"], "success", "{built}");
    assert!(log_of(&server, &built["id"]).await.contains("re-attached after a restart"));
    let image = "autobuilder/demo/trust-reattach:master";
    assert!(image_id(image).is_some(), "the re-attached build did not commit its image");
    let timed_out = server.wait_build(b).await;
    assert_eq!(
        (timed_out["status"].as_str(), timed_out["error"].as_str()),
        (Some("failure"), Some("timed out after 1 min"))
    );
    let _ = Command::new("docker")
        .args(["rmi", image, &format!("autobuilder/demo/trust-reattach:master-{}", &made[..10])])
        .output();
}
