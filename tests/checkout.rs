//! Checkouts that cost what changed: every build of a repository takes its objects from the
//! repository's mirror under `data_dir/mirrors`, fetched over git's smart HTTP protocol here so the
//! transfer is real; a damaged mirror is rebuilt; `[git] depth` fetches the first build shallow.

mod common;

use common::*;

/// Prints what the checkout looks like from inside the build container, then the artifact.
const BUILD_SH: &str = r#"#!/bin/sh
set -e
if [ -f /app/.git/shallow ]; then echo "history: shallow"; else echo "history: full"; fi
echo "version: $(cat /app/version.txt)"
sleep "${PAUSE:-0}"
tar -czf /tmp/archives/out.tar.gz /app/version.txt
"#;

fn commit_app(git: &GitHost, version: &str) -> String {
    git.commit("org/app", "master", &[("build.sh", BUILD_SH), ("version.txt", version)])
}

/// The line of build `id`'s log that says how the source was checked out.
async fn checkout_line(server: &Server, id: i64) -> String {
    let (_, log) = server.get_text(&format!("/build/{id}/log")).await;
    log.lines()
        .find(|line| line.contains("checked out"))
        .unwrap_or_else(|| panic!("no checkout line in {log}"))
        .to_string()
}

/// The number of objects a checkout line says were fetched (none when the mirror had the commit:
/// the ancestry check of the push fetched it).
fn objects_fetched(line: &str) -> usize {
    if line.contains("which had the commit already") {
        return 0;
    }
    let at = line.find(" objects").unwrap_or_else(|| panic!("{line}"));
    line[..at].rsplit(' ').next().unwrap().parse().unwrap_or_else(|_| panic!("{line}"))
}

async fn build_ok(server: &Server, sha: &str) -> i64 {
    let ids = server.push_builds("org/app", "master", sha).await;
    let build = server.wait_build(ids[0]).await;
    assert_eq!(build["status"], "success", "{build}");
    ids[0]
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_build_of_a_repository_fetches_only_the_new_commit_into_its_mirror() {
    ensure_test_image();
    let git = GitHost::new();
    git.commit("org/recipes", "master", &[("org/app/master.yaml", ONE_SCRIPT)]);
    for n in 0..40 {
        git.commit("org/app", "master", &[(&format!("history/{n}.txt"), &format!("change {n}\n").repeat(50))]);
    }
    let first_sha = commit_app(&git, "1");
    let url = git.serve_http().await;
    let server = Server::start(|dir| test_config(dir, &git, None).with(|c| c.git.clone_url = url.clone()));

    let first = build_ok(&server, &first_sha).await;
    let line = checkout_line(&server, first).await;
    assert!(line.contains("from the mirror"), "{line}");
    let first_objects = objects_fetched(&line);
    assert!(first_objects > 120, "the whole history came: {line}");
    server.wait_log(first, "history: full").await;
    let mirror = server.dir.path().join("data/mirrors/org/app.git");
    std::fs::write(mirror.join("kept-between-builds"), "").unwrap();

    // Pushed as GitHub says it (`before` is the last build's commit): no ancestry check fetches
    // it first, the checkout does.
    let second_sha = commit_app(&git, "2");
    let second = server.push_builds_after("org/app", "master", &first_sha, &second_sha).await[0];
    assert_eq!(server.wait_build(second).await["status"], "success");
    let line = checkout_line(&server, second).await;
    assert!(line.contains("from the mirror after fetching") && !line.contains("rebuilt"), "{line}");
    assert!(objects_fetched(&line) < 10, "only the new commit came: {line}");
    server.wait_log(second, "version: 2").await;
    assert!(mirror.join("kept-between-builds").exists(), "the same mirror was used");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mirror_damaged_by_a_build_through_its_shared_objects_is_rebuilt_and_the_next_build_succeeds() {
    ensure_test_image();
    // The checkout's packs are hard links to the mirror's: this script writes garbage into them.
    let vandal = "#!/bin/sh\nfor pack in /app/.git/objects/pack/*.pack; do echo garbage > \"$pack\"; done\n\
                  tar -czf /tmp/archives/out.tar.gz /app/build.sh\n";
    let (git, _) = one_script_app(vandal);
    for n in 0..10 {
        git.commit("org/app", "master", &[(&format!("file{n}"), "content\n")]);
    }
    let url = git.serve_http().await;
    let server = Server::start(|dir| test_config(dir, &git, None).with(|c| c.git.clone_url = url.clone()));
    build_ok(&server, &git.commit("org/app", "master", &[])).await;

    let second = build_ok(&server, &commit_app(&git, "2")).await;
    let line = checkout_line(&server, second).await;
    assert!(line.contains("rebuilt because it was damaged"), "{line}");
    server.wait_log(second, "version: 2").await;

    // The mirror works again: the next build fetches only what is new.
    let third = build_ok(&server, &commit_app(&git, "3")).await;
    let line = checkout_line(&server, third).await;
    assert!(!line.contains("rebuilt") && objects_fetched(&line) < 10, "{line}");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_builds_of_one_repository_at_once_both_succeed() {
    ensure_test_image();
    let git = GitHost::new();
    let recipe =
        recipe(&[("build.sh", "  artifact: out.tar.gz"), ("again.sh", "  artifact: out.tar.gz\n  tag: again")]);
    git.commit("org/recipes", "master", &[("org/app/master.yaml", &recipe)]);
    git.commit("org/app", "master", &[("again.sh", BUILD_SH)]);
    let sha = commit_app(&git, "1");
    let url = git.serve_http().await;
    let server = Server::start(|dir| test_config(dir, &git, None).with(|c| c.git.clone_url = url.clone()));

    let ids = server.push_builds("org/app", "master", &sha).await;
    assert_eq!(ids.len(), 2);
    for id in ids {
        let build = server.wait_build(id).await;
        assert_eq!(build["status"], "success", "{build}");
        server.wait_log(id, "version: 1").await;
        assert!(checkout_line(&server, id).await.contains("from the mirror"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn with_a_depth_the_first_build_is_shallow_and_the_next_has_the_full_history() {
    ensure_test_image();
    let (git, _) = one_script_app(BUILD_SH);
    for n in 0..20 {
        git.commit("org/app", "master", &[("history.txt", &format!("change {n}\n"))]);
    }
    let url = git.serve_http().await;
    let server = Server::start(|dir| {
        test_config(dir, &git, None).with(|c| {
            c.git.clone_url = url.clone();
            c.git.depth = 1;
        })
    });
    let first = build_ok(&server, &commit_app(&git, "1")).await;
    assert!(checkout_line(&server, first).await.contains("shallow fetch"));
    server.wait_log(first, "history: shallow").await;

    let mirror = server.dir.path().join("data/mirrors/org/app.git");
    wait_until("the mirror to be filled behind the first build", async || {
        mirror.join("autobuilder-filled").exists().then_some(())
    })
    .await;
    let second = build_ok(&server, &commit_app(&git, "2")).await;
    assert!(checkout_line(&server, second).await.contains("from the mirror"));
    server.wait_log(second, "history: full").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_clone_token_is_in_no_file_of_the_checkout_or_the_mirror() {
    ensure_test_image();
    let token = "clone-secret-77e1";
    let (git, _) = one_script_app(
        "#!/bin/sh\nif grep -rl clone-secre[t] /app; then echo 'token: found'; else echo 'token: nowhere'; fi\n\
         tar -czf /tmp/archives/out.tar.gz /app/build.sh\n",
    );
    let sha = git.commit("org/app", "master", &[]);
    let url = git.serve_http().await.replace("http://", &format!("http://x-access-token:{token}@"));
    let server = Server::start(|dir| test_config(dir, &git, None).with(|c| c.git.clone_url = url.clone()));
    let id = build_ok(&server, &sha).await;
    let (_, log) = server.get_text(&format!("/build/{id}/log")).await;
    assert!(log.contains("token: nowhere"), "{log}");
    let mirror = server.dir.path().join("data/mirrors/org/app.git");
    let found = std::process::Command::new("grep").args(["-rl", token]).arg(&mirror).output().unwrap();
    assert!(found.stdout.is_empty(), "the token is in {}", String::from_utf8_lossy(&found.stdout));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_next_build_of_a_branch_reuses_the_working_copy_and_starts_from_exactly_its_commit() {
    ensure_test_image();
    // Fails when it finds what a build before it left; then leaves things behind itself.
    let messy = r#"#!/bin/sh
set -e
if [ -e /app/left-by-a-build ] || [ -e /app/junk ]; then echo "found what a build left"; exit 1; fi
echo "version: $(cat /app/version.txt)"
echo left > /app/left-by-a-build
mkdir -p /app/junk && echo x > /app/junk/x
echo tampered > /app/version.txt
tar -czf /tmp/archives/out.tar.gz /app/build.sh
"#;
    let git = GitHost::new();
    git.commit("org/recipes", "master", &[("org/app/master.yaml", ONE_SCRIPT)]);
    let server = Server::start(|dir| test_config(dir, &git, None));
    let mut lines = Vec::new();
    for version in ["1", "2", "3"] {
        let sha = git.commit("org/app", "master", &[("build.sh", messy), ("version.txt", version)]);
        let id = build_ok(&server, &sha).await;
        server.wait_log(id, &format!("version: {version}")).await;
        lines.push(checkout_line(&server, id).await);
    }
    assert!(!lines[0].contains("earlier build"), "{}", lines[0]);
    for line in &lines[1..] {
        assert!(line.contains("into the working copy of an earlier build"), "{line}");
    }
    // Kept between builds under tmp_directory; the rest of every build's directory is removed.
    wait_until("the build directories to be removed", async || server.build_dirs().is_empty().then_some(())).await;
    let kept = std::fs::read_dir(server.dir.path().join("tmp")).unwrap().flatten().next().unwrap().path();
    assert_eq!(std::fs::read_dir(kept).unwrap().count(), 1, "the newest working copy of the branch waits");
}
