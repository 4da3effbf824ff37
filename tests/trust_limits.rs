//! Issue 13 ("Trust"), the limits a stranger or a runaway build must not get past, each attack
//! performed against the real binary: oversized and too many websocket clients, endless logs,
//! secrets hidden by the line cut or by escape sequences, artifacts served as pages, unbounded
//! commit messages, delivery ids shared across projects, hub uploads held in memory.

mod common;

use autobuilder::config::Secret;
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{self, Message};

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn ws_url(server: &Server) -> String {
    format!("{}/live", server.url.replace("http://", "ws://"))
}

/// Connects to `url` from the local address `from` (any 127.x.y.z works on Linux): the socket and
/// its `hello`, or the HTTP status and body of the refusal.
async fn connect_from(url: &str, from: &str) -> Result<Socket, (u16, String)> {
    connect_forwarded(url, from, None).await
}

/// [`connect_from`], through a proxy on this machine that says the client is `forwarded_for`.
async fn connect_forwarded(url: &str, from: &str, forwarded_for: Option<&str>) -> Result<Socket, (u16, String)> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let port_and_path = url.rsplit_once(':').unwrap().1;
    let port: u16 = port_and_path.split('/').next().unwrap().parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let stream = socket.connect(format!("127.0.0.1:{port}").parse().unwrap()).await.unwrap();
    let stream = tokio_tungstenite::MaybeTlsStream::Plain(stream);
    let mut request = url.into_client_request().unwrap();
    if let Some(client) = forwarded_for {
        request.headers_mut().insert("x-forwarded-for", format!("198.51.100.66, {client}").parse().unwrap());
    }
    match tokio_tungstenite::client_async(request, stream).await {
        Ok((mut socket, _)) => {
            let hello = tokio::time::timeout(WAIT, socket.next()).await.unwrap().unwrap().unwrap();
            assert_eq!(hello.into_text().unwrap().as_str(), r#"{"type":"hello"}"#);
            Ok(socket)
        }
        Err(tungstenite::Error::Http(response)) => Err((
            response.status().as_u16(),
            String::from_utf8_lossy(response.body().as_deref().unwrap_or_default()).into_owned(),
        )),
        Err(e) => panic!("websocket to {url}: {e}"),
    }
}

/// True when the server ended the connection (a close frame, a reset, or the end of the stream).
async fn closed_by_server(socket: &mut Socket) -> bool {
    loop {
        match tokio::time::timeout(WAIT, socket.next()).await.expect("the server neither answered nor closed") {
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return true,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(_)) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_websocket_messages_end_the_connection_and_cost_no_memory() {
    let git = GitHost::new();
    let server = Server::start(|dir| test_config(dir, &git, None));
    let before = server.rss_kib();

    // 30 clients each send a 16 MiB message (the server used to accept 64 MiB ones).
    let huge = "x".repeat(16 * 1024 * 1024);
    let mut clients = Vec::new();
    for _ in 0..30 {
        let socket = connect_from(&ws_url(&server), "127.0.0.1").await.expect("a client is admitted");
        clients.push(socket);
    }
    let sends = clients.into_iter().map(|mut socket| {
        let huge = huge.clone();
        tokio::spawn(async move {
            let _ = socket.send(Message::text(huge)).await; // the server may hang up mid-message
            closed_by_server(&mut socket).await
        })
    });
    for send in sends {
        assert!(send.await.unwrap(), "a client sending 16 MiB was not disconnected");
    }
    let peak = server.peak_rss_kib();
    eprintln!("figure: server RSS {before} KiB before, peak {peak} KiB under 30 clients sending 16 MiB messages");
    assert!(peak < 100 * 1024, "peak RSS {peak} KiB: the messages were read");

    // A well-behaved client still gets its answers.
    let mut client = LiveClient::connect(&ws_url(&server)).await;
    client.send(json!({"type": "subscribe", "id": 1})).await;
    assert_eq!(server.get_text("/healthz").await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn websocket_clients_are_capped_and_the_service_keeps_answering() {
    let (git, _) = one_script_app("#!/bin/sh\n");
    let server = Server::start(|dir| {
        test_config(dir, &git, None).with(|c| {
            c.live.max_clients = 8;
            c.live.max_clients_per_address = 5;
        })
    });
    let url = ws_url(&server);

    // One address opens more than its share: the sixth is refused, saying why.
    let mut first = Vec::new();
    for _ in 0..5 {
        first.push(connect_from(&url, "127.0.0.1").await.expect("within the per-address cap"));
    }
    let (code, reason) = connect_from(&url, "127.0.0.1").await.map(drop).unwrap_err();
    assert_eq!(code, 503);
    assert!(reason.contains("max_clients_per_address"), "{reason}");
    // Clients of a reverse proxy on this machine count by the address it forwards.
    let proxied = connect_forwarded(&url, "127.0.0.1", Some("192.0.2.1")).await.expect("a proxied client");

    // Others fill the server: past max_clients everyone is refused.
    let mut second = Vec::new();
    for _ in 0..2 {
        second.push(connect_from(&url, "127.0.0.2").await.expect("within the caps"));
    }
    for _ in 0..20 {
        let (code, reason) = connect_from(&url, "127.0.0.3").await.map(drop).unwrap_err();
        assert_eq!(code, 503);
        assert!(reason.contains("max_clients"), "{reason}");
    }

    // The rest of the service answers all along.
    assert_eq!(server.get_text("/healthz").await, (200, "ok".to_string()));
    let body = push_payload("org/untracked", "refs/heads/master", &"a".repeat(40)).to_string();
    let (code, answer) = server.deliver("demo", "push", body.as_bytes(), Some(SECRET)).await;
    assert!((200..300).contains(&code), "{code} {answer}");

    // A client that leaves frees its place.
    drop(first.pop());
    let again =
        wait_until("the freed place to be given back", async || connect_from(&url, "127.0.0.1").await.ok()).await;
    drop((again, first, second, proxied));
}

#[tokio::test(flavor = "multi_thread")]
async fn autobuilder_live_answers_at_the_root_too() {
    let redis = RedisServer::start();
    let git = GitHost::new();
    let server = Server::start(|dir| {
        test_config(dir, &git, None).with(|c| {
            c.redis.url = redis.url();
            c.live.listen = "127.0.0.1:0".into();
        })
    });
    let live = LiveServer::start(&server);
    // `public_url = "ws://host:3333"`, written without the path.
    let root = live.url.trim_end_matches("/live").to_string();
    assert!(!root.ends_with("/live"), "{root}");
    let socket = connect_from(&root, "127.0.0.1").await;
    assert!(socket.is_ok(), "no websocket at {root}");
    assert!(connect_from(&live.url, "127.0.0.1").await.is_ok());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flooding_build_is_cut_at_the_log_cap_and_ends_well() {
    // 5 MB of output (and a long line without newlines) against a 1 MB cap.
    let script = "#!/bin/sh\necho first line\ni=0\nwhile [ $i -lt 50 ]; do head -c 100000 /dev/zero | tr '\\0' 'y'; echo; \
                  i=$((i+1)); done\necho after the flood\ntar -czf /tmp/archives/out.tar.gz /etc/hostname\n";
    let (git, sha) = one_script_app(script);
    let server = Server::start(|dir| test_config(dir, &git, None).with(|c| c.builds.max_log_bytes = 1_000_000));
    let id = server.push_builds("org/app", "master", &sha).await[0];
    let build = server.wait_build(id).await;
    assert_eq!(build["status"], "success", "{build}");

    let size = std::fs::metadata(server.dir.path().join(format!("data/logs/{id}.log"))).unwrap().len();
    assert!(size <= 1_000_000 + 4096, "the log holds {size} bytes");
    assert!(size >= 900_000, "the log holds only {size} bytes");
    let (code, log) = server.get_text(&format!("/build/{id}/log")).await;
    assert_eq!(code, 200);
    assert!(log.starts_with("[autobuilder] "), "{}", &log[..200]);
    assert!(log.contains("first line\n"));
    assert_eq!(log.matches("log cut at 1 MB: the build goes on; later output is not kept").count(), 1);
    assert!(!log.contains("after the flood"), "output past the cap was kept");
    assert!(log.contains("[autobuilder] published "), "autobuilder's own notes go on past the cap");

    // The tail, found from the end of the file.
    let (code, tail) = server.get_text(&format!("/build/{id}/log?tail=2")).await;
    assert_eq!(code, 200);
    let last_two: Vec<&str> = log.lines().rev().take(2).collect::<Vec<_>>().into_iter().rev().collect();
    assert_eq!(tail.lines().collect::<Vec<_>>(), last_two);

    // And the live tail subscription: numbered on from the lines before it.
    let total = log.lines().count() as u64;
    let mut client = LiveClient::connect(&ws_url(&server)).await;
    client.received.insert(id, (total - 2, String::new()));
    client.send(json!({"type": "subscribe", "id": id, "tail": 3})).await;
    client.until_lines(id, total).await;
    assert_eq!(client.text(id).lines().count(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_across_the_line_cut_and_inside_escapes_stay_masked() {
    // The secret straddles the 64 KiB line cut, and is split by a colour reset.
    let script = "#!/bin/sh\nhead -c 65529 /dev/zero | tr '\\0' x; printf '%s tail\\n' \"$TOKEN\"\n\
                  printf 'pw: hunter2-\\033[0msupersecret\\n'\necho \"plain $TOKEN\"\n\
                  tar -czf /tmp/archives/out.tar.gz /etc/hostname\n";
    let (git, sha) = one_script_app(script);
    let server = Server::start(|dir| {
        test_config(dir, &git, None).with(|c| {
            c.demo().secrets.insert("TOKEN".into(), Secret::new("hunter2-supersecret"));
        })
    });
    let id = server.push_builds("org/app", "master", &sha).await[0];
    assert_eq!(server.wait_build(id).await["status"], "success");
    let (_, log) = server.get_text(&format!("/build/{id}/log")).await;
    for piece in ["hunter2", "supersecret", "2-super", "-\u{1b}[0msuper"] {
        assert!(!log.contains(piece), "{piece:?} leaked");
    }
    // Masked whole wherever the long line is cut: once in the long line, once on each short one.
    assert_eq!(log.matches("***").count(), 3, "the secret across the cut is masked whole");
    assert!(log.contains("pw: ***\n") && log.contains("plain ***\n"));
}

#[tokio::test(flavor = "multi_thread")]
async fn artifacts_are_downloads_and_pages_carry_security_headers() {
    let git = GitHost::new();
    let server = Server::start(|dir| test_config(dir, &git, None));
    std::fs::create_dir_all(server.artifacts_dir()).unwrap();
    std::fs::write(server.artifacts_dir().join("evil.html"), "<script>alert(document.cookie)</script>").unwrap();

    let response = server.http.get(format!("{}/artifacts/evil.html", server.url)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let header = |name: &str| response.headers().get(name).map(|v| v.to_str().unwrap().to_string());
    assert_eq!(header("content-disposition").as_deref(), Some("attachment"));
    assert_eq!(header("x-content-type-options").as_deref(), Some("nosniff"));
    assert_eq!(header("content-security-policy").as_deref(), Some("sandbox"));

    for page in ["/monitor", "/build/status", "/static/overview.js"] {
        let response = server.http.get(format!("{}{page}", server.url)).send().await.unwrap();
        let header = |name: &str| response.headers().get(name).map(|v| v.to_str().unwrap().to_string());
        let policy = header("content-security-policy").unwrap_or_default();
        for part in ["default-src 'self'", "script-src 'self';", "connect-src 'self';", "frame-ancestors 'none'"] {
            assert!(policy.contains(part), "{page}: {policy}");
        }
        assert!(!policy.contains("unsafe-inline"), "{page}: {policy}");
        assert_eq!(header("referrer-policy").as_deref(), Some("same-origin"), "{page}");
        assert_eq!(header("x-content-type-options").as_deref(), Some("nosniff"), "{page}");
    }
    // The templates hold no inline script for the policy to break.
    for template in ["base.html", "monitor.html", "build.html", "not_found.html"] {
        let text = std::fs::read_to_string(format!("{}/templates/{template}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        for inline in ["<script>", " onclick=", " onload=", " style=", "<style"] {
            assert!(!text.contains(inline), "{template} has {inline}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_browser_asking_for_a_missing_page_gets_an_html_page() {
    let git = GitHost::new();
    let server = Server::start(|dir| test_config(dir, &git, None));
    for (path, says) in [
        ("/monitor/build/999999", "no build 999999"),
        ("/monitor/build/abc", "is not a build id"),
        ("/monitor/nope", "/monitor/nope"),
    ] {
        let response = server
            .http
            .get(format!("{}{path}", server.url))
            .header("accept", "text/html,application/xhtml+xml,*/*;q=0.8")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "{path}");
        let kind = response.headers()["content-type"].to_str().unwrap().to_string();
        assert!(kind.starts_with("text/html"), "{path}: {kind}");
        let page = response.text().await.unwrap();
        assert!(page.contains(says), "{path}: {page}");
        assert!(page.contains(r#"href="/monitor""#), "{path}: {page}");
    }
    // The API still answers JSON.
    let (code, body) = server.get_json("/build/999999").await;
    assert_eq!((code, body["error"].as_str()), (404, Some("no build 999999")));
    let (code, body) = server.get_json("/nothing/here").await;
    assert_eq!(code, 404);
    assert!(body["error"].is_string(), "{body}");
}

/// Sends a signed push with a chosen delivery id to `project`.
async fn push_to(server: &Server, project: &str, secret: &str, delivery: &str, body: &Value) -> (u16, Value) {
    server.send_hook(project, "push", Some(delivery), None, body.to_string().into_bytes(), Some(secret)).await
}

#[tokio::test(flavor = "multi_thread")]
async fn commit_messages_are_bounded_and_delivery_ids_are_per_project() {
    let (git, sha) = one_script_app("#!/bin/sh\ntar -czf /tmp/archives/out.tar.gz /etc/hostname\n");
    git.commit("org/other-recipes", "master", &[("README", "nothing tracked")]);
    let server = Server::start(|dir| {
        test_config(dir, &git, None).with(|c| {
            c.projects.insert("other".into(), project("org/other-recipes", "other-secret"));
        })
    });

    let mut body = push_payload("org/app", "refs/heads/master", &sha);
    body["head_commit"] = json!({"message": "m".repeat(5_000_000), "author": {"name": "a".repeat(100_000)}});
    // Another project (an attacker with its secret) uses the delivery id first.
    let (code, answer) = push_to(&server, "other", "other-secret", "shared-id", &body).await;
    assert!((200..300).contains(&code), "{code} {answer}");
    let (code, answer) = push_to(&server, "demo", SECRET, "shared-id", &body).await;
    assert_eq!(code, 202, "the delivery of demo was taken for a redelivery: {answer}");
    let id = answer["builds"][0].as_i64().unwrap();
    let build = server.wait_build(id).await;
    assert_eq!(build["status"], "success");
    let message = build["message"].as_str().unwrap();
    assert!(message.len() <= 4096 * 4 + 3 && message.ends_with('…'), "message of {} bytes", message.len());
    assert!(build["author"].as_str().unwrap().chars().count() <= 201);
    // A real redelivery is still recognised.
    let (code, answer) = push_to(&server, "demo", SECRET, "shared-id", &body).await;
    assert_eq!(code, 200, "{answer}");
    assert!(answer["message"].as_str().unwrap().contains("received before"), "{answer}");
}

#[tokio::test(flavor = "multi_thread")]
async fn hub_uploads_are_streamed_from_the_file() {
    // A 200 MB artifact (zeros: the fake hub does not unpack it).
    let script = "#!/bin/sh\nhead -c 200000000 /dev/zero > /tmp/archives/out.tar.gz\n";
    let (git, sha) = one_script_app(script);
    let hub = FakeHub::start().await;
    let server = Server::start(|dir| {
        test_config(dir, &git, None).with(|c| {
            hub.configure(c);
            c.artifacts.retries = 0;
        })
    });
    let id = server.push_builds("org/app", "master", &sha).await[0];
    let build = server.wait_build(id).await;
    assert_eq!(build["status"], "success", "{build}");
    let peak = server.peak_rss_kib();
    eprintln!("figure: server peak RSS {peak} KiB while uploading a 200 MB artifact to the hub");
    {
        let uploads = hub.state.uploads.lock().unwrap();
        assert_eq!(uploads.len(), 1);
        assert_eq!(uploads[0].1.len(), 200_000_000);
        assert!(uploads[0].1.iter().all(|&b| b == 0), "the bytes differ");
    }
    assert!(peak < 100 * 1024, "peak RSS {peak} KiB: the artifact was held in memory");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_100_mb_log_opens_on_its_tail_without_reading_it_into_memory() {
    // `seq` prints 169 MB; the default cap keeps 100 MB of it.
    let (git, sha) = one_script_app("#!/bin/sh\nseq 1 20000000\ntar -czf /tmp/archives/out.tar.gz /etc/hostname\n");
    let server = Server::start(|dir| test_config(dir, &git, None));
    let id = server.push_builds("org/app", "master", &sha).await[0];
    assert_eq!(server.wait_build(id).await["status"], "success");
    let path = server.dir.path().join(format!("data/logs/{id}.log"));
    let size = std::fs::metadata(&path).unwrap().len();
    assert!((99_000_000..=100_001_000).contains(&size), "the log holds {size} bytes");
    let log = std::fs::read_to_string(&path).unwrap();
    let total = log.lines().count() as u64;
    let last: Vec<&str> = log.lines().skip(total as usize - 10).collect();
    assert!(log.contains("log cut at 100 MB"));
    let before = server.peak_rss_kib();

    let started = std::time::Instant::now();
    let (code, tail) = server.get_text(&format!("/build/{id}/log?tail=10")).await;
    let api = started.elapsed();
    assert_eq!((code, tail.lines().collect::<Vec<_>>()), (200, last.clone()));

    let started = std::time::Instant::now();
    let mut client = LiveClient::connect(&ws_url(&server)).await;
    client.received.insert(id, (total - 9, String::new()));
    client.send(json!({"type": "subscribe", "id": id, "tail": 10})).await;
    client.until_lines(id, total).await;
    let live = started.elapsed();
    assert_eq!(client.text(id).lines().collect::<Vec<_>>(), last);
    let peak = server.peak_rss_kib();
    eprintln!(
        "figure: {size}-byte log of {total} lines: ?tail=10 in {api:?}, live tail of 10 in {live:?}; \
         peak RSS {before} KiB before, {peak} KiB after"
    );
    assert!(peak < before + 20 * 1024, "opening the tail took {} KiB", peak - before);
}
