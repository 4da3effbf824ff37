//! The live monitor: websocket clients and a real headless Chromium against real builds, in-process
//! and through a real Redis that is stopped and started mid-build.

mod common;

use common::*;
use serde_json::json;

/// A build script that prints `count` lines in bursts of 50 with `pause` between bursts, plus the
/// lines the page must render safely: markup, ANSI colours, other escapes, a progress bar.
fn chatty_script(count: u32, pause: &str) -> String {
    format!(
        r#"#!/bin/sh
i=1
while [ $i -le {count} ]; do
  echo "line $i"
  if [ $i = 5 ]; then
    echo '<img src=x onerror="window.pwned=1">'
    printf '\033[31mred\033[0m and \033[1;32mbold green\033[0m\n'
    printf '\033]0;a title\007after-osc\n'
    printf '\033[2Kcleared\n'
    printf '10%%\r50%%\r100%%\n'
    printf 'h\303\251llo w\303\266rld\n'
  fi
  if [ $((i % 50)) = 0 ]; then sleep {pause}; fi
  i=$((i+1))
done
tar -czf /tmp/archives/out.tar.gz /etc/hostname
"#
    )
}

fn ws_url(server: &Server) -> String {
    format!("{}/live", server.url.replace("http://", "ws://"))
}

async fn raw_log(server: &Server, id: i64) -> String {
    let (code, log) = server.get_text(&format!("/build/{id}/log")).await;
    assert_eq!(code, 200);
    log
}

#[tokio::test(flavor = "multi_thread")]
async fn every_line_arrives_once_and_in_order_across_a_dropped_connection() {
    let (git, sha) = one_script_app(&chatty_script(600, "0.1"));
    let server = Server::start(|dir| test_config(dir, &git, None));
    let id = server.push_builds("org/app", "master", &sha).await[0];

    let mut first = LiveClient::connect(&ws_url(&server)).await;
    first.subscribe(id).await;
    first.until_lines(id, 100).await;
    let received = std::mem::take(&mut first.received);
    first.close().await; // the connection drops mid-build

    let mut second = LiveClient::connect(&ws_url(&server)).await;
    second.received = received;
    second.subscribe(id).await; // from the next line it lacks
    let build = second.until_finished(id).await;
    assert_eq!(build["status"], "success", "{build}");
    let log = raw_log(&server, id).await;
    assert_eq!(second.text(id), log, "the lines received differ from the raw log");

    // A client that comes after the end gets the whole log from the file.
    let mut late = LiveClient::connect(&ws_url(&server)).await;
    late.subscribe(id).await;
    late.until_lines(id, log.lines().count() as u64).await;
    assert_eq!(late.text(id), log);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redis_outage_stops_no_build_and_loses_no_line() {
    let (git, sha) = one_script_app(&chatty_script(1500, "0.15"));
    let mut redis = RedisServer::start();
    let server = Server::start(|dir| {
        test_config(dir, &git, None).with(|c| {
            c.redis.url = redis.url();
            c.live.listen = "127.0.0.1:0".into();
        })
    });
    let live = LiveServer::start(&server);
    let other_live = LiveServer::start(&server); // several live servers may run at once
    let (code, _) = server.get_text("/live").await;
    assert_eq!(code, 404, "with Redis configured, serve leaves /live to autobuilder live");

    let mut client = LiveClient::connect(&live.url).await;
    let mut other = LiveClient::connect(&other_live.url).await;
    assert_eq!(client.next().await["type"], "hello");
    let id = server.push_builds("org/app", "master", &sha).await[0];
    client.subscribe(id).await;
    other.subscribe(id).await;
    client.until_lines(id, 60).await;

    redis.stop();
    let lines_at_stop = raw_log(&server, id).await.lines().count();
    wait_until("the build to go on logging while Redis is down", async || {
        (raw_log(&server, id).await.lines().count() > lines_at_stop + 200).then_some(())
    })
    .await;
    redis.resume();

    let build = server.wait_build(id).await;
    assert_eq!(build["status"], "success", "{build}");
    let log = raw_log(&server, id).await;
    client.until_lines(id, log.lines().count() as u64).await;
    assert_eq!(client.text(id), log, "the lines received differ from the raw log");
    assert!(client.resyncs >= 1, "the client was not told to resync after the outage");
    other.until_lines(id, log.lines().count() as u64).await;
    assert_eq!(other.text(id), log, "the second live server's client differs from the raw log");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_stops_reading_holds_back_neither_the_build_nor_others() {
    let (git, sha) = one_script_app("#!/bin/sh\nseq 1 200000\ntar -czf /tmp/archives/out.tar.gz /etc/hostname\n");
    let server = Server::start(|dir| test_config(dir, &git, None));

    let mut stuck = LiveClient::connect(&ws_url(&server)).await;
    let mut reader = LiveClient::connect(&ws_url(&server)).await;
    let id = server.push_builds("org/app", "master", &sha).await[0];
    stuck.subscribe(id).await; // and never reads again
    reader.subscribe(id).await;

    let build = reader.until_finished(id).await;
    assert_eq!(build["status"], "success");
    assert_eq!(reader.text(id), raw_log(&server, id).await);
    drop(stuck);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_million_lines_complete_and_a_late_client_opens_on_the_tail() {
    let (git, sha) = one_script_app("#!/bin/sh\nseq 1 1000000\ntar -czf /tmp/archives/out.tar.gz /etc/hostname\n");
    let server = Server::start(|dir| test_config(dir, &git, None));
    let id = server.push_builds("org/app", "master", &sha).await[0];
    assert_eq!(server.wait_build(id).await["status"], "success");
    let log = raw_log(&server, id).await;
    let total = log.lines().count() as u64;
    assert!(log.contains("\n999999\n1000000\n"), "a line is missing");

    let mut client = LiveClient::connect(&ws_url(&server)).await;
    client.received.insert(id, (total - 9, String::new()));
    client.send(json!({"type": "subscribe", "id": id, "tail": 10})).await;
    client.until_lines(id, total).await;
    let tail: Vec<&str> = log.lines().skip(total as usize - 10).collect();
    assert_eq!(client.text(id).lines().collect::<Vec<_>>(), tail);

    // The page opens on the tail, loads a window of 5,000 lines (the 995,009 before it are
    // "earlier"), and has only the rows in view in the DOM, not a million nodes.
    let browser = Browser::start().await;
    browser.goto(&format!("{}/monitor/build/{id}", server.url)).await;
    let window = browser
        .wait_for(
            "the tail of the log",
            &format!(
                "const lines = document.querySelectorAll('#log .line');
                 const last = lines[lines.length - 1];
                 return last && Number(last.dataset.seq) === {total}
                   ? [lines.length < 200, window.autobuilderPage.lines.length,
                      document.querySelector('#earlier span').textContent]
                   : null;"
            ),
        )
        .await;
    assert_eq!(window, json!([true, 5000, (total - 5000).to_string()]));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_pages_show_lines_live_render_them_safely_and_catch_up_after_a_drop() {
    let (git, sha) = one_script_app(&chatty_script(1000, "0.25"));
    let server = Server::start(|dir| test_config(dir, &git, None));
    let browser = Browser::start().await;
    let id = server.push_builds("org/app", "master", &sha).await[0];

    // The running build on /monitor, with its console.
    browser.goto(&format!("{}/monitor", server.url)).await;
    browser
        .wait_for(
            "the running build's console",
            &format!(r#"return document.querySelector('[data-console="{id}"] .line') !== null"#),
        )
        .await;
    if let Ok(dir) = std::env::var("SCREENSHOTS_DIR") {
        browser.screenshot(&std::path::Path::new(&dir).join("running.png")).await;
    }

    // Its page: lines appear while it runs.
    browser.goto(&format!("{}/monitor/build/{id}", server.url)).await;
    let running_lines = browser
        .wait_for(
            "lines while the build runs",
            r#"const n = document.querySelectorAll('#log .line').length;
               const status = document.querySelector('#status .badge').textContent;
               return status === 'running' && n > 20 ? n : 0;"#,
        )
        .await;
    assert!(running_lines.as_u64().unwrap() > 20);

    // The connection drops; the page reconnects by itself and catches up.
    browser.eval("window.autobuilderLive.drop()").await;
    browser.wait_for("the page to reconnect", "return document.body.dataset.connection === 'live'").await;
    browser
        .wait_for("the build to end", "return document.querySelector('#status .badge').textContent === 'success'")
        .await;
    let log = raw_log(&server, id).await;
    let total = log.lines().count();
    let seqs = browser
        .wait_for(
            "every line on the page",
            &format!(
                "const s = window.autobuilderPage.lines.map(l => l.seq);
                 return s.length === {total} ? s : null;"
            ),
        )
        .await;
    let expected: Vec<u64> = (1..=total as u64).collect();
    assert_eq!(seqs, json!(expected), "lines missing, repeated or out of order");

    // Untrusted output is text; colours render; other escapes go; progress bars collapse. Only the
    // rows in view are in the DOM: the page is opened on line 5, where the odd lines are.
    browser.goto("about:blank").await;
    browser.goto(&format!("{}/monitor/build/{id}#L5", server.url)).await;
    browser.wait_for("line 5 in view", "return document.querySelector('#log .line[data-seq=\"5\"]') !== null").await;
    let checks = browser
        .eval(
            r#"const texts = Array.from(document.querySelectorAll('#log .line .text')).map(t => t.textContent);
               const red = document.querySelector('#log .fg-1');
               const green = document.querySelector('#log .fg-2.bold');
               return {
                 pwned: window.pwned === 1,
                 images: document.querySelectorAll('#log img').length,
                 markup: texts.includes('<img src=x onerror="window.pwned=1">'),
                 red: red && red.textContent,
                 green: green && green.textContent,
                 osc: texts.includes('after-osc'),
                 cleared: texts.includes('cleared'),
                 progress: texts.includes('100%'),
                 utf8: texts.includes('héllo wörld'),
                 escapes: texts.some(t => t.includes('\x1b')),
               };"#,
        )
        .await;
    assert_eq!(
        checks,
        json!({"pwned": false, "images": 0, "markup": true, "red": "red", "green": "bold green",
               "osc": true, "cleared": true, "progress": true, "utf8": true, "escapes": false})
    );
    if let Ok(dir) = std::env::var("SCREENSHOTS_DIR") {
        browser.eval("document.getElementById('log').scrollTop = 0").await;
        browser.screenshot(&std::path::Path::new(&dir).join("build.png")).await;
    }

    // /monitor lists it in the history, with its artifact.
    browser.goto(&format!("{}/monitor", server.url)).await;
    let artifact = browser
        .wait_for(
            "the history row",
            &format!(
                r#"const row = document.querySelector('#history tr a[href="/monitor/build/{id}"]');
            return row && row.closest('tr').querySelector('.result a').textContent"#
            ),
        )
        .await;
    assert_eq!(artifact, json!(format!("org-app-master-{}.tar.gz", &sha[..10])));
    browser.wait_for("the recipes reload", "return document.querySelector('#reloads tr') !== null").await;
    if let Ok(dir) = std::env::var("SCREENSHOTS_DIR") {
        browser.screenshot(&std::path::Path::new(&dir).join("monitor.png")).await;
    }
}
