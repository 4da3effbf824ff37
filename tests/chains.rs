//! Image chains on the real Docker engine: a producer commits an image, a dependent builds on it,
//! a new producer build rebuilds the dependent, outputs get versioned names, a cycle is refused,
//! and cleanup never touches an image autobuilder did not make.

mod common;

use std::process::Command;

use common::*;

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().unwrap();
    assert!(out.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn image_exists(image: &str) -> bool {
    Command::new("docker").args(["image", "inspect", image]).output().unwrap().status.success()
}

const PRODUCER: &str = "buildscripts: [kernel.sh]
kernel.sh:
  artifact: kernel.tar.gz
  commit: true
  rebuild_dependents: true
  outputs:
    - file: vmlinuz.efi
      name: '{org}-{repo}-{branch}-generic'
";

const KERNEL_SH: &str = "#!/bin/sh
set -e
echo \"kernel $(cat version)\" > /producer-file
echo \"efi $(cat version)\" > /tmp/archives/vmlinuz.efi
tar -czf /tmp/archives/kernel.tar.gz version
";

const DEPENDENT: &str = "buildscripts: [core.sh]\ncore.sh: {artifact: core.tar.gz, from: chains/kernel@master}\n";
const CORE_SH: &str =
    "#!/bin/sh\nset -e\necho \"core on $(cat /producer-file)\"\ntar -czf /tmp/archives/core.tar.gz core.sh\n";

/// Waits for the newest build of `repo` after build `after` to end; returns it.
async fn next_build_of(server: &Server, repo: &str, after: i64) -> serde_json::Value {
    let id = server.wait_new_build(repo, after).await;
    server.wait_build(id).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_producer_image_feeds_its_dependents_and_cleanup_keeps_foreign_images() {
    let git = GitHost::new();
    git.commit(
        "org/recipes",
        "master",
        &[("chains/kernel/master.yaml", PRODUCER), ("chains/core/master.yaml", DEPENDENT)],
    );
    let v1 = git.commit("chains/kernel", "master", &[("kernel.sh", KERNEL_SH), ("version", "v1")]);
    let core = git.commit("chains/core", "master", &[("core.sh", CORE_SH)]);
    // A foreign untagged image and a foreign tagged one, which cleanup must leave alone.
    ensure_test_image();
    let scratch = docker(&["create", TEST_IMAGE, "true"]);
    let foreign_untagged = docker(&["commit", &scratch]);
    docker(&["commit", &scratch, "chains-foreign:kept"]);
    docker(&["rm", &scratch]);
    let server = Server::start(|dir| test_config(dir, &git, None).with(|c| c.docker.keep_images = 1));

    // Before any producer build, the dependent says who makes its image.
    let early = server.push_builds("chains/core", "master", &core).await[0];
    let early = server.wait_build(early).await;
    assert_eq!(early["status"], "error");
    assert!(early["error"].as_str().unwrap().contains("no build of chains/kernel@master has made it yet"), "{early}");

    // The producer: image committed, outputs published, dependents rebuilt.
    let k1 = server.push_builds("chains/kernel", "master", &v1).await[0];
    let built = server.wait_build(k1).await;
    assert_eq!(built["status"], "success", "{built}");
    assert!(image_exists("autobuilder/demo/chains-kernel:master"));
    assert!(image_exists(&format!("autobuilder/demo/chains-kernel:master-{}", &v1[..10])));
    let labels =
        docker(&["image", "inspect", "-f", "{{json .Config.Labels}}", "autobuilder/demo/chains-kernel:master"]);
    let labels: serde_json::Value = serde_json::from_str(&labels).unwrap();
    assert_eq!(labels["autobuilder.repository"], "chains/kernel");
    assert_eq!(labels["autobuilder.commit"], v1.as_str());
    assert!(labels["autobuilder.recipes"].as_str().is_some_and(|c| c.len() == 40), "{labels}");
    let efi = format!("chains-kernel-master-generic-{}.efi", &v1[..10]);
    assert_eq!(built["outputs"][0]["name"], efi.as_str(), "{built}");
    assert_eq!(std::fs::read_to_string(server.artifacts_dir().join(&efi)).unwrap(), "efi v1\n");
    assert_eq!(
        std::fs::read_link(server.artifacts_dir().join("chains-kernel-master-generic.efi")).unwrap().to_str(),
        Some(efi.as_str())
    );

    let dependent = next_build_of(&server, "chains/core", early["id"].as_i64().unwrap()).await;
    assert_eq!(dependent["status"], "success", "{dependent}");
    assert_eq!(dependent["baseimage"], "autobuilder/demo/chains-kernel:master");
    let (_, log) = server.get_text(&format!("/build/{}/log", dependent["id"])).await;
    assert!(log.contains("core on kernel v1"), "{log}");

    // A second producer push rebuilds the dependent on the new image; the old image goes.
    let v2 = git.commit("chains/kernel", "master", &[("version", "v2")]);
    let k2 = server.push_builds("chains/kernel", "master", &v2).await[0];
    assert_eq!(server.wait_build(k2).await["status"], "success");
    let again = next_build_of(&server, "chains/core", dependent["id"].as_i64().unwrap()).await;
    assert_eq!(again["status"], "success", "{again}");
    let (_, log) = server.get_text(&format!("/build/{}/log", again["id"])).await;
    assert!(log.contains("core on kernel v2"), "{log}");
    assert!(
        !image_exists(&format!("autobuilder/demo/chains-kernel:master-{}", &v1[..10])),
        "keep_images = 1 keeps only the newest"
    );
    assert!(image_exists(&format!("autobuilder/demo/chains-kernel:master-{}", &v2[..10])));
    assert!(image_exists(&foreign_untagged), "a foreign untagged image was removed");
    assert!(image_exists("chains-foreign:kept"), "a foreign tagged image was removed");
    docker(&["rmi", "-f", &foreign_untagged, "chains-foreign:kept"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dependent_waits_for_its_producer_and_cycles_are_refused() {
    let git = GitHost::new();
    let producer = "buildscripts: [p.sh]\np.sh: {artifact: p.tar.gz, commit: true}\n";
    let user = "buildscripts: [u.sh]\nu.sh: {artifact: u.tar.gz, from: waits/producer@master}\n";
    let a = "buildscripts: [a.sh]\na.sh: {artifact: a.tar.gz, commit: true, from: waits/b@master}\n";
    let b = "buildscripts: [b.sh]\nb.sh: {artifact: b.tar.gz, commit: true, from: waits/a@master}\n";
    let recipes = git.commit(
        "org/recipes",
        "master",
        &[
            ("waits/producer/master.yaml", producer),
            ("waits/user/master.yaml", user),
            ("waits/a/master.yaml", a),
            ("waits/b/master.yaml", b),
        ],
    );
    let p = git.commit(
        "waits/producer",
        "master",
        &[("p.sh", "#!/bin/sh\nsleep 2\necho made > /made\ntar -czf /tmp/archives/p.tar.gz p.sh\n")],
    );
    let u =
        git.commit("waits/user", "master", &[("u.sh", "#!/bin/sh\ncat /made\ntar -czf /tmp/archives/u.tar.gz u.sh\n")]);
    let server = Server::start(|dir| test_config(dir, &git, None));

    let reload = server.wait_reload(&recipes).await;
    assert_eq!(reload["status"], "failure");
    let (_, log) = server.get_text(&format!("/build/{}/log", reload["id"])).await;
    assert!(log.contains("skipped waits/a/master.yaml") && log.contains("cycle"), "{log}");
    assert!(log.contains("waits/a@master -> waits/b@master -> waits/a@master"), "{log}");
    assert!(log.contains("tracking waits/user master"), "{log}");

    let producing = server.push_builds("waits/producer", "master", &p).await[0];
    let using = server.push_builds("waits/user", "master", &u).await[0];
    assert_eq!(server.wait_build(producing).await["status"], "success");
    let used = server.wait_build(using).await;
    assert_eq!(used["status"], "success", "{used}");
    let (_, log) = server.get_text(&format!("/build/{using}/log")).await;
    assert!(log.contains("made"), "{log}");
    if server.config().database.url.expose().is_empty() {
        assert!(log.contains("waiting for the build of waits/producer@master"), "{log}");
    } else {
        // On PostgreSQL it waits in the queue, for the engine that makes the image (`hosts.rs`).
        assert!(!log.contains("waiting for the build of"), "{log}");
    }
}
