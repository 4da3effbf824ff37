//! The command line as a newcomer meets it: `check` with the operator's caps, `hooks sync`
//! without a configuration, `serve` on a port in use or with no project, a webhook secret given
//! only through the environment.

mod common;

use std::process::{Command, Output};

use autobuilder::config::Secret;
use common::*;

fn autobuilder(args: &[&str], dir: &std::path::Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_autobuilder")).args(args).current_dir(dir).output().unwrap()
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn check_applies_the_configured_caps_and_warns_about_an_empty_checkout() {
    let dir = tempfile::tempdir().unwrap();
    let recipes = dir.path().join("recipes");
    std::fs::create_dir_all(recipes.join("org/app")).unwrap();
    let out = autobuilder(&["check", "recipes"], dir.path());
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("no recipe found"), "{}", text(&out));

    std::fs::write(
        recipes.join("org/app/master.yaml"),
        "buildscripts: [b.sh]\nb.sh: {artifact: b.tar.gz, timeout_minutes: 90}\n",
    )
    .unwrap();
    let out = autobuilder(&["check", "recipes"], dir.path());
    assert!(out.status.success(), "within the default cap of 240 minutes: {}", text(&out));
    std::fs::write(dir.path().join("config.toml"), "[builds]\nmax_timeout_minutes = 60\n").unwrap();
    let out = autobuilder(&["check", "recipes", "--config", "config.toml"], dir.path());
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("max_timeout_minutes = 60"), "{}", text(&out));

    // Every problem of a file, each on its line, and a YAML error at its own line.
    std::fs::write(
        recipes.join("org/app/dev.yaml"),
        "buildscripts: [a.sh, b.sh]\na.sh: {artifact: ../x}\nb.sh: {artifact: b.zip}\n",
    )
    .unwrap();
    std::fs::write(
        recipes.join("org/app/typo.yaml"),
        "buildscripts: [a.sh]\na.sh:\n  artifact: a.tar.gz\n  artefact: x\n",
    )
    .unwrap();
    let out = autobuilder(&["check", "recipes"], dir.path());
    let said = text(&out);
    assert!(said.contains("problem  org/app/dev.yaml: `a.sh`: artifact \"../x\""), "{said}");
    assert!(said.contains("problem  org/app/dev.yaml: `b.sh`: artifact \"b.zip\""), "{said}");
    assert!(said.contains("problem  org/app/typo.yaml: error: line 4"), "{said}");
}

#[test]
fn hooks_sync_without_a_configuration_says_what_it_needs() {
    let dir = tempfile::tempdir().unwrap();
    let out = autobuilder(&["hooks", "sync"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("--config"), "{}", text(&out));
    std::fs::write(dir.path().join("empty.toml"), "").unwrap();
    let out = autobuilder(&["hooks", "sync", "--config", "empty.toml"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("configures no project"), "{}", text(&out));
    // Every option says what it is for.
    for command in [&["serve", "--help"][..], &["hooks", "sync", "--help"], &["check", "--help"], &["live", "--help"]] {
        let help = text(&autobuilder(command, dir.path()));
        for line in help.lines().filter(|l| l.trim_start().starts_with('-')) {
            let described = line.trim().split("  ").filter(|part| !part.trim().is_empty()).count() > 1;
            assert!(described, "{command:?}: option without help text: {line:?}");
        }
    }
}

#[test]
fn serve_takes_its_port_before_doing_any_work() {
    let git = GitHost::new();
    git.commit(
        "org/recipes",
        "master",
        &[("org/app/master.yaml", "buildscripts: [b.sh]\nb.sh: {artifact: b.tar.gz}\n")],
    );
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let config = test_config(dir.path(), &git, None).with(|c| c.listen = taken.local_addr().unwrap().to_string());
    write_config(&dir.path().join("config.toml"), &config);
    let out = autobuilder(&["serve", "--config", "config.toml"], dir.path());
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("cannot listen on"), "{}", text(&out));
    assert!(!dir.path().join("data/autobuilder.sqlite").exists(), "nothing was recorded");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_webhook_secret_from_the_environment_alone_works_and_no_project_is_said() {
    let git = GitHost::new();
    let config =
        |dir: &std::path::Path| test_config(dir, &git, None).with(|c| c.demo().webhook_secret = Secret::default());
    let server = Server::start_with_env(config, &[("AUTOBUILDER_PROJECTS_DEMO_WEBHOOK_SECRET", SECRET)]);
    let (code, body) = server.deliver("demo", "ping", b"{}", Some(SECRET)).await;
    assert_eq!(code, 200, "{body}");
    drop(server);

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.toml"), "listen = \"127.0.0.1:0\"\n").unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_autobuilder"))
        .args(["serve", "--config", "config.toml"])
        .current_dir(dir.path())
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let said = std::thread::spawn(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stdout).lines().map_while(Result::ok).find(|l| l.contains("no project is configured"))
    });
    wait_until("the warning", async || said.is_finished().then_some(())).await;
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(said.join().unwrap().is_some());
}
