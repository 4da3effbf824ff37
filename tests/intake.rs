//! Webhook intake against the real binary: GitHub's own example deliveries, both content types
//! GitHub sends, strangers (unknown projects, unsigned and huge bodies), the same commit delivered
//! again, and deliveries that arrive out of order.

mod common;

use autobuilder::github::events::sign;
use common::*;
use serde_json::{Value, json};

const RECIPE: &str = "buildscripts: [build.sh]\nbuild.sh: {artifact: out.tar.gz}\n";

fn script(body: &str) -> String {
    format!("#!/bin/sh\nset -e\n{body}\ntar -czf /tmp/archives/out.tar.gz build.sh\n")
}

/// Sends `body` to the hook of `project` with a content type, signed with `secret` (if any).
async fn send(
    server: &Server,
    project: &str,
    event: &str,
    content_type: &str,
    body: Vec<u8>,
    secret: Option<&str>,
) -> (u16, Value) {
    server.send_hook(project, event, None, Some(content_type), body, secret).await
}

/// `payload=<json>`, as GitHub sends a webhook whose content type is form-encoded.
fn form(json: &[u8]) -> Vec<u8> {
    let mut body = String::from("payload=");
    for &byte in json {
        match byte {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' => body.push(byte as char),
            b' ' => body.push('+'),
            _ => body.push_str(&format!("%{byte:02X}")),
        }
    }
    body.into_bytes()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_example_delivery_of_github_is_answered_without_an_error() {
    let git = GitHost::new();
    git.commit("org/recipes", "master", &[("org/app/master.yaml", RECIPE)]);
    let server = Server::start(|dir| test_config(dir, &git, None));
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/github-payloads");
    let mut sent = 0;
    for event in std::fs::read_dir(&root).expect("shared/github-payloads beside the repository") {
        let event = event.unwrap();
        if !event.file_type().unwrap().is_dir() {
            continue;
        }
        let name = event.file_name().to_string_lossy().into_owned();
        for file in std::fs::read_dir(event.path()).unwrap().map(Result::unwrap) {
            let json = std::fs::read(file.path()).unwrap();
            let what = format!("{name}/{}", file.file_name().to_string_lossy());
            let (code, answer) = send(&server, "demo", &name, "application/json", json.clone(), Some(SECRET)).await;
            assert!(code < 400, "{what}: {code} {answer}");
            let (form_code, form_answer) =
                send(&server, "demo", &name, "application/x-www-form-urlencoded", form(&json), Some(SECRET)).await;
            assert_eq!(form_code, code, "{what} form-encoded: {form_answer}");
            assert_eq!(form_answer["message"], answer["message"], "{what} form-encoded");
            let message = answer["message"].as_str().unwrap_or_default();
            let raw: Value = serde_json::from_slice(&json).unwrap();
            match name.as_str() {
                "push" if raw["ref"] == "refs/heads/master" => {
                    assert_eq!(message, "no recipe for Codertocat/Hello-World branch master: nothing to build")
                }
                "push" => {
                    assert_eq!(message, "refs/tags/simple-tag is not a branch: tags and other refs start no build")
                }
                "pull_request" => match raw["action"].as_str().unwrap() {
                    "opened" | "synchronize" | "reopened" => assert_eq!(
                        message,
                        "no recipe for Codertocat/Hello-World branch master, which pull request #2 targets"
                    ),
                    "closed" => assert_eq!(message, "pull request #2 closed: 0 builds cancelled"),
                    action => assert_eq!(
                        message,
                        format!("pull_request {action} ignored: only opened, synchronize, reopened and closed are")
                    ),
                },
                "ping" => assert_eq!(message, "pong"),
                _ => assert!(message.contains("ignored"), "{what}: {answer}"),
            }
            sent += 2;
        }
    }
    assert!(sent > 500, "only {sent} deliveries sent");
    let (_, history) = server.get_json("/build/history?limit=1000").await;
    let kinds: Vec<&str> = history.as_array().unwrap().iter().map(|b| b["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["reload"], "nothing was built");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_form_encoded_push_builds_and_other_content_types_are_refused() {
    let git = GitHost::new();
    git.commit("org/recipes", "master", &[("org/app/master.yaml", RECIPE)]);
    let sha = git.commit("org/app", "master", &[("build.sh", &script("echo from a form"))]);
    let server = Server::start(|dir| test_config(dir, &git, None));
    let push = push_payload("org/app", "refs/heads/master", &sha).to_string().into_bytes();

    let (code, answer) = send(&server, "demo", "push", "text/plain", push.clone(), Some(SECRET)).await;
    assert_eq!(code, 415, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("application/json"), "{answer}");
    let (code, answer) =
        send(&server, "demo", "push", "application/x-www-form-urlencoded", b"zen=1".to_vec(), Some(SECRET)).await;
    assert_eq!(code, 400, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("payload"), "{answer}");
    // The signature covers the form body, not the JSON inside it.
    let form_body = form(&push);
    let mut request = server
        .http
        .post(format!("{}/build/demo/hook", server.url))
        .header("x-github-event", "push")
        .header("content-type", "application/x-www-form-urlencoded");
    request = request.header("x-hub-signature-256", sign(SECRET.as_bytes(), &push));
    let response = request.body(form_body.clone()).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 401, "a signature of the JSON alone is refused");

    let (code, answer) =
        send(&server, "demo", "push", "application/x-www-form-urlencoded", form_body, Some(SECRET)).await;
    assert_eq!(code, 202, "{answer}");
    let build = server.wait_build(answer["builds"][0].as_i64().unwrap()).await;
    assert_eq!(build["status"], "success", "{build}");
    assert_eq!(build["commit"], sha.as_str());
    let (_, log) = server.get_text(&format!("/build/{}/log", build["id"])).await;
    assert!(log.contains("from a form"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_project_is_answered_like_a_wrong_signature() {
    let git = GitHost::new();
    git.commit("org/recipes", "master", &[("org/app/master.yaml", RECIPE)]);
    let server = Server::start(|dir| test_config(dir, &git, None));
    let push = push_payload("org/app", "refs/heads/master", &"1".repeat(40)).to_string().into_bytes();

    let wrong_secret = send(&server, "demo", "push", "application/json", push.clone(), Some("wrong")).await;
    let unknown = send(&server, "nope", "push", "application/json", push.clone(), Some(SECRET)).await;
    let unsigned = send(&server, "nope", "push", "application/json", push.clone(), None).await;
    assert_eq!(wrong_secret.0, 401);
    assert_eq!(unknown, wrong_secret, "the answer must not tell whether a project exists");
    assert_eq!(unsigned, wrong_secret);
}

/// Strangers sending 25 MB bodies: unsigned ones are refused before their body is read, and
/// wrongly signed ones are read within a shared budget, so the memory stays bounded.
#[tokio::test(flavor = "multi_thread")]
async fn large_bodies_from_strangers_do_not_exhaust_the_memory() {
    let git = GitHost::new();
    git.commit("org/recipes", "master", &[("org/app/master.yaml", RECIPE)]);
    let server = Server::start(|dir| test_config(dir, &git, None));
    let body = axum::body::Bytes::from(vec![b' '; 25 * 1024 * 1024]);
    let before = server.rss_kib();
    for signature in [None, Some(format!("sha256={}", "0".repeat(64)))] {
        let sends = (0..120).map(|_| {
            let mut request = server
                .http
                .post(format!("{}/build/demo/hook", server.url))
                .header("x-github-event", "push")
                .header("content-type", "application/json")
                .body(body.clone());
            if let Some(signature) = &signature {
                request = request.header("x-hub-signature-256", signature);
            }
            async move { request.send().await.map(|r| r.status().as_u16()) }
        });
        // The server may close the connection while the client is still sending the refused
        // body; a complete answer must be the refusal (401), or 408 for those still waiting for
        // their turn at the deadline.
        for code in futures_util::future::join_all(sends).await.into_iter().flatten() {
            assert!(code == 401 || code == 408, "{code}");
        }
        println!(
            "after {}: peak {} KiB",
            if signature.is_some() { "wrongly signed" } else { "unsigned" },
            server.peak_rss_kib()
        );
    }
    let peak = server.peak_rss_kib();
    println!("webhook intake under 2 x 120 concurrent 25 MB bodies: RSS {before} KiB before, peak {peak} KiB");
    assert!(peak < 100 * 1024, "peak RSS {peak} KiB");
    assert_eq!(server.get_text("/healthz").await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn one_commit_delivered_again_is_built_once() {
    let git = GitHost::new();
    git.commit("org/recipes", "master", &[("org/app/master.yaml", RECIPE)]);
    let head = git.commit("org/app", "feature", &[("build.sh", &script("sleep 3; echo built"))]);
    git.pull_ref("org/app", 7, &head);
    let server = Server::start(|dir| test_config(dir, &git, None));

    let mut answers = Vec::new();
    for action in ["opened", "synchronize", "synchronize", "edited", "reopened", "synchronize"] {
        let body = pull_request_payload(action, "org/app", 7, "master", &head, "org/app").to_string();
        answers.push(server.deliver("demo", "pull_request", body.as_bytes(), Some(SECRET)).await);
    }
    assert_eq!(answers[0].0, 202, "{}", answers[0].1);
    let id = answers[0].1["builds"][0].as_i64().unwrap();
    for (code, answer) in answers.iter().skip(1).filter(|(_, a)| !a["message"].as_str().unwrap().contains("ignored")) {
        assert_eq!(*code, 200, "{answer}");
        assert_eq!(answer["message"], format!("already building {} for org/app pull/7", &head[..10]).as_str());
        assert_eq!(answer["builds"], json!([id]));
    }
    // A push redelivered under a new delivery id, while its build runs.
    let sha = git.commit("org/app", "master", &[("build.sh", &script("sleep 3"))]);
    let first = server.push_builds("org/app", "master", &sha).await;
    let (code, again) = server.push("org/app", "master", &sha).await;
    assert_eq!(code, 200, "{again}");
    assert_eq!(again["builds"], json!(first));

    assert_eq!(server.wait_build(id).await["status"], "success");
    assert_eq!(server.wait_build(first[0]).await["status"], "success");
    let (_, history) = server.get_json("/build/history?repository=org/app").await;
    assert_eq!(history.as_array().unwrap().len(), 2, "one build per commit: {history}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_push_delivered_after_a_newer_one_starts_and_cancels_nothing() {
    let git = GitHost::new();
    git.commit("org/recipes", "master", &[("org/app/master.yaml", RECIPE)]);
    let older = git.commit("org/app", "master", &[("build.sh", &script("echo older"))]);
    let newer = git.commit("org/app", "master", &[("build.sh", &script("sleep 2; echo newer"))]);
    let server = Server::start(|dir| test_config(dir, &git, None).with(admin));

    let (_, answer) = server.push_as("newer", "org/app", "master", &newer).await;
    let id = answer["builds"][0].as_i64().unwrap();
    let (code, late) = server.push_as("older", "org/app", "master", &older).await;
    assert_eq!(code, 200, "{late}");
    let expected = format!(
        "{} is older than {}, already seen on org/app master: nothing started or cancelled",
        &older[..10],
        &newer[..10]
    );
    assert_eq!(late["message"], expected.as_str());
    assert_eq!(late["builds"], json!([]));
    let build = server.wait_build(id).await;
    assert_eq!(build["status"], "success", "{build}");
    let moving = std::fs::read_link(server.artifacts_dir().join("org-app-master.tar.gz")).unwrap();
    assert_eq!(moving.to_string_lossy(), format!("org-app-master-{}.tar.gz", &newer[..10]));
    // An admin replay of the old delivery is held to the same rule, and so is a delivery after a
    // restart (the newest commit then comes from the history).
    let (code, replayed) = server.admin_post("/deliveries/older/replay", Some(ADMIN_TOKEN)).await;
    assert_eq!((code, &replayed["message"]), (200, &json!(expected)));
    let mut server = server;
    server.restart();
    let (code, late) = server.push_as("older-again", "org/app", "master", &older).await;
    assert_eq!((code, &late["message"]), (200, &json!(expected)));
    let (_, history) = server.get_json("/build/history?repository=org/app").await;
    assert_eq!(history.as_array().unwrap().len(), 1, "only the newer commit was built: {history}");

    // A force push back to the older commit is meant: it builds.
    let mut forced = push_payload("org/app", "refs/heads/master", &older);
    forced["forced"] = json!(true);
    let (code, answer) = server.deliver("demo", "push", forced.to_string().as_bytes(), Some(SECRET)).await;
    assert_eq!(code, 202, "{answer}");
    assert_eq!(server.wait_build(answer["builds"][0].as_i64().unwrap()).await["status"], "success");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_late_recipes_push_never_loads_older_recipes() {
    let git = GitHost::new();
    let one = git.commit("org/recipes", "master", &[("org/app/master.yaml", RECIPE)]);
    let two = git.commit("org/recipes", "master", &[("org/lib/master.yaml", RECIPE)]);
    let lib = git.commit("org/lib", "master", &[("build.sh", &script("echo lib"))]);
    let server = Server::start(|dir| test_config(dir, &git, None));
    let reload = server.wait_reload(&two).await;
    assert_eq!(reload["status"], "success", "{reload}");

    // The push of the first recipes commit arrives late: the head stays loaded.
    let (code, _) = server.push("org/recipes", "master", &one).await;
    assert_eq!(code, 202);
    wait_until("the late reload to be skipped", async || {
        server
            .output
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains(&format!("recipes at {} not loaded", &two[..10])))
            .then_some(())
    })
    .await;
    let ids = server.push_builds("org/lib", "master", &lib).await;
    assert_eq!(server.wait_build(ids[0]).await["status"], "success");
    let (_, history) = server.get_json("/build/history?repository=org/recipes").await;
    assert_eq!(history.as_array().unwrap().len(), 1, "no reload of older recipes: {history}");

    // A push naming an older commit while the branch moved on loads the head.
    let three = git.commit("org/recipes", "master", &[("org/extra/master.yaml", RECIPE)]);
    let four = git.commit("org/recipes", "master", &[("org/more/master.yaml", RECIPE)]);
    let (code, _) = server.push("org/recipes", "master", &three).await;
    assert_eq!(code, 202);
    let reload = server.wait_reload(&four).await;
    let (_, log) = server.get_text(&format!("/build/{}/log", reload["id"])).await;
    assert!(log.contains(&format!("the push named {}", &three[..10])), "{log}");
}

/// A stranger holding a large body open neither starves real deliveries nor holds its share of
/// the budget past the deadline; a body without a length is refused.
#[tokio::test(flavor = "multi_thread")]
async fn bodies_held_open_by_strangers_do_not_stall_deliveries() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let git = GitHost::new();
    git.commit("org/recipes", "master", &[("org/app/master.yaml", RECIPE)]);
    let server = Server::start(|dir| test_config(dir, &git, None));
    let address = server.url.trim_start_matches("http://").to_string();
    let mut idle = Vec::new();
    for _ in 0..3 {
        let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
        let head = format!(
            "POST /build/demo/hook HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: push\r\nContent-Type: application/json\r\n\
             X-Hub-Signature-256: sha256={}\r\nContent-Length: {}\r\n\r\n",
            "0".repeat(64),
            20 * 1024 * 1024
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        idle.push(stream);
    }
    // Real deliveries are answered while the large budget is held.
    let (code, body) = server.deliver("demo", "ping", b"{}", Some(SECRET)).await;
    assert_eq!((code, body["message"].as_str()), (200, Some("pong")));
    let chunked = reqwest::Body::wrap_stream(futures_util::stream::iter([Ok::<_, std::io::Error>(b"{}".to_vec())]));
    let response = server
        .http
        .post(format!("{}/build/demo/hook", server.url))
        .header("x-github-event", "ping")
        .header("x-hub-signature-256", sign(SECRET.as_bytes(), b"{}"))
        .body(chunked)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 411);
    // The idle ones are answered 408 at the deadline, which gives their budget back.
    let mut answer = String::new();
    let _ = idle[0].read_to_string(&mut answer).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
}
