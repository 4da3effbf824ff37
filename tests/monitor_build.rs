//! The build page `/monitor/build/<id>` in real headless Chromium against real builds: line
//! permalinks and search beyond the loaded window, sections (also those that began before it),
//! line times, the end of a long log on screen with only the rows in view in the page, the raw
//! and plain logs, the states said plainly, the favicon. `measure_the_build_page` (ignored) prints
//! the figures of `docs/benchmarks.md`.

mod common;

use common::*;
use serde_json::{Value, json};

async fn raw_log(server: &Server, id: i64) -> String {
    let (code, log) = server.get_text(&format!("/build/{id}/log")).await;
    assert_eq!(code, 200);
    log
}

/// A build of `script` that succeeded: its git host (kept alive), server, id and raw log.
async fn successful_build(script: &str) -> (GitHost, Server, i64, String) {
    let (git, sha) = one_script_app(script);
    let server = Server::start(|dir| test_config(dir, &git, None));
    let id = server.push_builds("org/app", "master", &sha).await[0];
    assert_eq!(server.wait_build(id).await["status"], "success");
    let log = raw_log(&server, id).await;
    (git, server, id, log)
}

/// The number of the first line of `log` equal to `text`.
fn line_of(log: &str, text: &str) -> u64 {
    log.lines().position(|l| l == text).unwrap_or_else(|| panic!("no line {text:?}")) as u64 + 1
}

async fn open(browser: &Browser, server: &Server, id: i64, hash: &str) {
    // From another page: a URL differing from the open one only in its hash would not load the
    // page again, and the `opened` mark of the previous load would answer at once.
    browser.goto("about:blank").await;
    browser.goto(&format!("{}/monitor/build/{id}{hash}", server.url)).await;
    browser.wait_for("the page to open", "return document.body.dataset.opened === 'true'").await;
}

/// A JavaScript expression: whether the row of line `seq` is shown inside the log's visible area.
fn in_view(seq: u64) -> String {
    format!(
        "(() => {{
           const row = document.querySelector('#log .line[data-seq=\"{seq}\"]');
           if (!row || row.hidden) return false;
           const r = row.getBoundingClientRect(), box = document.getElementById('log').getBoundingClientRect();
           return r.top >= box.top - 1 && r.bottom <= box.bottom + 1 && r.bottom <= window.innerHeight;
         }})()"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn permalinks_and_search_reach_lines_outside_the_loaded_window() {
    let script = "#!/bin/sh\necho 'FindMe at the start'\nseq 1 20000\nprintf '\\033[1mfindme\\033[0m at the end\\n'\n\
                  tar -czf /tmp/archives/out.tar.gz /etc/hostname\n";
    let (_git, server, id, log) = successful_build(script).await;
    let total = log.lines().count() as u64;
    let target = line_of(&log, "1000");
    assert!(total - target > 5000, "line {target} would be in the tail window");

    let browser = Browser::start().await;
    open(&browser, &server, id, &format!("#L{target}-L{}", target + 2)).await;
    let selected = browser
        .wait_for(
            "the permalinked lines, highlighted",
            &format!(
                "const rows = [...document.querySelectorAll('#log .line.selected')];
                 return rows.length === 3 && ({}) ? rows.map(r => r.querySelector('.text').textContent) : null;",
                in_view(target)
            ),
        )
        .await;
    assert_eq!(selected, json!(["1000", "1001", "1002"]));
    let window = browser
        .eval(
            "return [window.autobuilderPage.lines.length, document.querySelectorAll('#log .line').length,
                     document.getElementById('window').hidden]",
        )
        .await;
    assert!(window[0].as_u64().unwrap() <= 5000 && window[2] == false, "{window}");
    assert!(window[1].as_u64().unwrap() < 200, "only the rows in view are in the page: {window}");

    // A click on a number sets the hash; a shift-click extends it to a range.
    browser
        .eval(&format!(
            "document.querySelector('#log .line[data-seq=\"{}\"] a.number').click();
             document.querySelector('#log .line[data-seq=\"{}\"] a.number')
               .dispatchEvent(new MouseEvent('click', {{bubbles: true, cancelable: true, shiftKey: true}}));",
            target + 10,
            target + 14
        ))
        .await;
    let hash = browser
        .wait_for(
            "the range in the hash",
            "return document.querySelectorAll('#log .line.selected').length === 5 && location.hash",
        )
        .await;
    assert_eq!(hash, json!(format!("#L{}-L{}", target + 10, target + 14)));

    // Search: case ignored, escapes ignored, every hit reachable, the count shown.
    browser
        .eval(
            "const box = document.getElementById('search'); box.value = 'FINDME';
               document.getElementById('search-form').requestSubmit();",
        )
        .await;
    let first = line_of(&log, "FindMe at the start");
    let hit = browser
        .wait_for(
            "the first search hit, loaded from outside the window",
            &format!(
                "const hit = document.querySelector('#log .line.hit');
                 return hit && ({}) && [Number(hit.dataset.seq), document.getElementById('search-count').textContent];",
                in_view(first)
            ),
        )
        .await;
    assert_eq!(hit, json!([first, "1 of 2"]));
    browser.eval("document.getElementById('search-next').click()").await;
    let last_hit = line_of(&log, "\x1b[1mfindme\x1b[0m at the end");
    let hit = browser
        .wait_for(
            "the second hit",
            "const hit = document.querySelector('#log .line.hit');
             return hit && document.getElementById('search-count').textContent === '2 of 2' && Number(hit.dataset.seq);",
        )
        .await;
    assert_eq!(hit, json!(last_hit));

    // Back to the end: the tail, followed.
    browser.eval("document.getElementById('to-end').click()").await;
    browser.wait_for("the last line in view", &format!("return {}", in_view(total))).await;
    assert_eq!(browser.eval("return document.getElementById('follow').checked").await, json!(true));
}

#[tokio::test(flavor = "multi_thread")]
async fn sections_collapse_and_a_failed_build_opens_on_the_section_that_failed() {
    let script = "#!/bin/sh\necho '::group::Install things'\necho installing\necho '::endgroup::'\n\
                  printf 'section_start:%s:compile[collapsed=true]\\r\\033[0KCompiling\\n' $(date +%s)\n\
                  echo compiling one\nsleep 1\necho compiling two\n\
                  printf 'section_end:%s:compile\\r\\033[0K\\n' $(date +%s)\necho 'the tests fail'\nexit 3\n";
    let (git, sha) = one_script_app(script);
    let server = Server::start(|dir| test_config(dir, &git, None));
    let id = server.push_builds("org/app", "master", &sha).await[0];
    assert_eq!(server.wait_build(id).await["status"], "failure");
    let log = raw_log(&server, id).await;
    let script_phase = line_of(&log, "[autobuilder] phase script");
    let fetch_phase = line_of(&log, "[autobuilder] phase fetch");
    let fails = line_of(&log, "the tests fail");
    let installing = line_of(&log, "installing");
    let compiling = line_of(&log, "compiling one");

    let browser = Browser::start().await;
    open(&browser, &server, id, "").await;
    let sections = browser
        .eval(
            "return [...document.querySelectorAll('#log .section-header')].map(r => [
               r.querySelector('.text').textContent, r.querySelector('.toggle').getAttribute('aria-expanded'),
               r.querySelector('.took').textContent !== '']);",
        )
        .await;
    assert_eq!(
        sections,
        json!([
            ["[autobuilder] phase fetch", "false", true],
            ["[autobuilder] phase image", "false", true],
            ["[autobuilder] phase script", "true", true],
            ["Install things", "false", true],
            ["Compiling", "false", true]
        ]),
        "the failed phase is open, the others collapsed"
    );
    browser.wait_for("the failed section in view", &format!("return {}", in_view(script_phase))).await;
    let shown = |seq: u64| format!("return window.autobuilderPage.isShown({seq})");
    assert_eq!(browser.eval(&shown(fails)).await, json!(true));
    assert_eq!(browser.eval(&shown(fetch_phase + 1)).await, json!(false), "collapsed lines are hidden");
    assert_eq!(browser.eval(&shown(compiling)).await, json!(false));

    // The Compiling section lasted about the second it slept.
    let took = browser
        .eval("return document.querySelectorAll('#log .section-header')[4].querySelector('.took').textContent")
        .await;
    assert!(matches!(took.as_str(), Some("1s" | "2s")), "{took}");

    // Expand, collapse.
    let toggle =
        |n: usize| format!("document.querySelectorAll('#log .section-header')[{n}].querySelector('.toggle').click()");
    browser.eval(&toggle(3)).await;
    assert_eq!(browser.eval(&shown(installing)).await, json!(true));
    browser.eval(&toggle(0)).await;
    assert_eq!(browser.eval(&shown(fetch_phase + 1)).await, json!(true));
    browser.eval(&toggle(3)).await;
    assert_eq!(browser.eval(&shown(installing)).await, json!(false));

    // Line times, elapsed since the build started, on demand.
    let hidden = browser.eval("return getComputedStyle(document.querySelector('#log .time')).display").await;
    assert_eq!(hidden, json!("none"));
    browser.eval("document.getElementById('times').click()").await;
    let times = browser
        .eval(&format!(
            "const time = document.querySelector('#log .line[data-seq=\"{fails}\"] .time');
             return [getComputedStyle(time).display, time.textContent];"
        ))
        .await;
    assert_ne!(times[0], "none", "times shown");
    assert!(times[1].as_str().unwrap().len() == 5 && times[1].as_str().unwrap().starts_with("00:"), "{times}");

    // The state said plainly, in the title and the favicon; no policy violation.
    let state = browser
        .eval(
            "const icon = document.getElementById('favicon');
             return [document.getElementById('duration').textContent, icon.dataset.state,
                     icon.href.startsWith('data:image/svg+xml,'), window.autobuilderCspViolations];",
        )
        .await;
    assert!(state[0].as_str().unwrap().starts_with("took "), "{state}");
    assert_eq!(state.as_array().unwrap()[1..], [json!("failure"), json!(true), json!([])]);
    if let Ok(dir) = std::env::var("SCREENSHOTS_DIR") {
        browser.screenshot(&std::path::Path::new(&dir).join("failed.png")).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_last_line_of_a_200000_line_log_stays_on_screen() {
    let script = "#!/bin/sh\nseq 1 200000\ni=0\nwhile [ $i -lt 100 ]; do echo \"tick $i\"; sleep 0.2; i=$((i+1)); done\n\
                  tar -czf /tmp/archives/out.tar.gz /etc/hostname\n";
    let (git, sha) = one_script_app(script);
    let server = Server::start(|dir| test_config(dir, &git, None));
    let id = server.push_builds("org/app", "master", &sha).await[0];
    server.wait_log(id, "\n200000\n").await;

    let browser = Browser::start().await;
    browser.resize(1280, 720).await;
    open(&browser, &server, id, "").await;
    let viewport = browser.eval("return [window.innerWidth, window.innerHeight]").await;
    assert!(viewport[1].as_u64().unwrap() <= 720, "{viewport}");
    // While it runs, the newest line is in view; the page itself never scrolls.
    let last_on_screen = "(() => {
        const rows = document.querySelectorAll('#log .line');
        const last = rows[rows.length - 1];
        const r = last.getBoundingClientRect();
        return r.bottom <= window.innerHeight && r.top >= 0
          && document.documentElement.scrollHeight <= window.innerHeight ? last.textContent : '';
      })()";
    browser.wait_for("a tick on screen while running", &format!("return {last_on_screen}.includes('tick')")).await;
    assert_eq!(server.get_json(&format!("/build/{id}")).await.1["status"], "running");
    assert_eq!(server.wait_build(id).await["status"], "success");
    let total = raw_log(&server, id).await.lines().count() as u64;
    browser.wait_for("the last line, in view", &format!("return {}", in_view(total))).await;
    let last = browser.eval(&format!("return {last_on_screen}")).await;
    assert!(last.as_str().unwrap().contains("published"), "{last}");
    let rows = browser
        .eval("return [window.autobuilderPage.lines.length, document.querySelectorAll('#log .line').length]")
        .await;
    assert_eq!(rows[0], json!(5000), "the page keeps a window of lines");
    assert!(rows[1].as_u64().unwrap() < 200, "only the rows in view are in the page: {rows}");
    if let Ok(dir) = std::env::var("SCREENSHOTS_DIR") {
        browser.screenshot(&std::path::Path::new(&dir).join("build-follow.png")).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn raw_and_plain_logs_and_the_log_endpoints_refuse_bad_requests() {
    let script = "#!/bin/sh\nprintf '\\033[31mred\\033[0m text\\n10%%\\r100%%\\n'\ntar -czf /tmp/archives/out.tar.gz /etc/hostname\n";
    let (git, sha) = one_script_app(script);
    let server = Server::start(|dir| test_config(dir, &git, None));
    let id = server.push_builds("org/app", "master", &sha).await[0];
    assert_eq!(server.wait_build(id).await["status"], "success");
    let raw = raw_log(&server, id).await;
    assert!(raw.contains("\x1b[31mred\x1b[0m text\n10%\r100%\n"), "the raw log stays raw: {raw:?}");

    let http = reqwest::Client::new();
    let download = http.get(format!("{}/build/{id}/log/download", server.url)).send().await.unwrap();
    assert_eq!(
        download.headers()["content-disposition"].to_str().unwrap(),
        format!("attachment; filename=\"build-{id}.log\"")
    );
    assert_eq!(download.text().await.unwrap(), raw);
    let (code, plain) = server.get_text(&format!("/build/{id}/log.txt")).await;
    assert_eq!(code, 200);
    assert!(plain.contains("\nred text\n100%\n"), "{plain:?}");
    assert!(!plain.contains('\x1b') && !plain.contains('\r'));
    assert_eq!(plain.lines().count(), raw.lines().count());
    let saved = http.get(format!("{}/build/{id}/log.txt?download=1", server.url)).send().await.unwrap();
    assert_eq!(
        saved.headers()["content-disposition"].to_str().unwrap(),
        format!("attachment; filename=\"build-{id}.txt\"")
    );

    // A window of lines with their times, and a search.
    let (code, window) = server.get_json(&format!("/build/{id}/log/lines?tail=2")).await;
    assert_eq!(code, 200, "{window}");
    let total = raw.lines().count() as u64;
    assert_eq!(window["first"], total - 1);
    assert_eq!(window["total"], total);
    assert!(window["times"].as_array().unwrap().iter().all(Value::is_u64), "{window}");
    let (_, found) = server.get_json(&format!("/build/{id}/log/search?q=RED%20TEXT")).await;
    assert_eq!(found, json!({"total": 1, "lines": [line_of(&raw, "\x1b[31mred\x1b[0m text")]}));

    for (path, code, says) in [
        (format!("/build/{id}/log/lines?from=0&count=5"), 400, "numbered from 1"),
        (format!("/build/{id}/log/lines"), 400, "say which lines"),
        (format!("/build/{id}/log/lines?tail=100000"), 400, "1 to 10000 lines"),
        (format!("/build/{id}/log/search"), 400, "say what to look for"),
        (format!("/build/{id}/queue"), 404, "not waiting in the queue"),
        ("/build/999999/log.txt".to_string(), 404, "no build 999999"),
        ("/build/999999/log/download".to_string(), 404, "no build 999999"),
    ] {
        let (status, body) = server.get_json(&path).await;
        assert_eq!(status, code, "{path}: {body}");
        assert!(body["error"].as_str().unwrap().contains(says), "{path}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_queued_build_says_why_it_waits_and_links_the_other_scripts_of_its_push() {
    let git = GitHost::new();
    let scripts =
        [("slow.sh", "  artifact: out.tar.gz\n  tag: slow"), ("next.sh", "  artifact: out.tar.gz\n  tag: next")];
    git.commit("org/recipes", "master", &[("org/app/master.yaml", &recipe(&scripts))]);
    let slow = "#!/bin/sh\necho slow\nsleep 30\ntar -czf /tmp/archives/out.tar.gz /etc/hostname\n";
    let next = "#!/bin/sh\necho next\ntar -czf /tmp/archives/out.tar.gz /etc/hostname\n";
    let sha = git.commit("org/app", "master", &[("slow.sh", slow), ("next.sh", next)]);
    let server = Server::start(|dir| test_config(dir, &git, None).with(admin).with(|c| c.builds.concurrency = 1));
    let ids = server.push_builds("org/app", "master", &sha).await;
    assert_eq!(ids.len(), 2);
    server.wait_running(ids[0]).await;

    let browser = Browser::start().await;
    open(&browser, &server, ids[1], "").await;
    let waiting = browser
        .wait_for("why it waits", "const w = document.getElementById('waiting'); return !w.hidden && w.textContent")
        .await;
    assert_eq!(
        waiting,
        json!("Waiting to start: next in the queue; all 1 build slots are busy ([builds] concurrency).")
    );
    let state = browser
        .eval(
            "return [document.getElementById('duration').textContent.startsWith('queued for '),
                     [...document.querySelectorAll('#siblings a')].map(a => [a.textContent, a.getAttribute('href')]),
                     document.getElementById('favicon').dataset.state];",
        )
        .await;
    assert_eq!(
        state,
        json!([true, [[format!("#{} slow.sh", ids[0]), format!("/monitor/build/{}", ids[0])]], "queued"])
    );

    // Cancelled before it ran: no "0s", it never ran.
    let (code, body) = server.admin_post(&format!("/build/{}/cancel", ids[1]), Some(ADMIN_TOKEN)).await;
    assert_eq!(code, 200, "{body}");
    let state = browser
        .wait_for(
            "the cancelled build",
            "const d = document.getElementById('duration').textContent;
             return document.getElementById('favicon').dataset.state === 'cancelled'
               && [d, document.getElementById('waiting').hidden];",
        )
        .await;
    assert_eq!(state, json!(["never ran", true]));
    server.admin_post(&format!("/build/{}/cancel", ids[0]), Some(ADMIN_TOKEN)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_build_says_cancelling_during_its_stop_grace_period() {
    // The script ignores SIGTERM: the build stops only when the grace period ends (SIGKILL).
    let (git, sha) = one_script_app("#!/bin/sh\ntrap '' TERM\necho started\nsleep 60\n");
    let server =
        Server::start(|dir| test_config(dir, &git, None).with(admin).with(|c| c.builds.cancel_grace_seconds = 10));
    let id = server.push_builds("org/app", "master", &sha).await[0];
    server.wait_log(id, "started\n").await;
    let browser = Browser::start().await;
    open(&browser, &server, id, "").await;
    browser.wait_for("the running state", "return document.getElementById('status').textContent === 'running'").await;
    assert!(server.get_json(&format!("/build/{id}")).await.1.get("stopping").is_none(), "running on, not stopping");

    let (code, body) = server.admin_post(&format!("/build/{id}/cancel"), Some(ADMIN_TOKEN)).await;
    assert_eq!(code, 200, "{body}");
    browser.wait_for("cancelling", "return document.getElementById('status').textContent === 'cancelling…'").await;
    let (_, build) = server.get_json(&format!("/build/{id}")).await;
    assert_eq!(build["status"], "running", "still in its grace period");
    assert_eq!(build["stopping"], "cancelled by an admin", "{build}");

    // Opened (or reloaded) during the grace period, the page says so from the start: the server
    // renders it, and the script keeps it.
    let (code, html) = server.get_text(&format!("/monitor/build/{id}")).await;
    assert_eq!(code, 200);
    assert!(
        html.contains(r#"<span class="badge cancelling" title="cancelled by an admin">cancelling…</span>"#),
        "{html}"
    );
    open(&browser, &server, id, "").await;
    let state = browser
        .eval(
            "return [document.getElementById('status').textContent, document.getElementById('favicon').dataset.state,
                     window.autobuilderPage.stopping]",
        )
        .await;
    assert_eq!(state, json!(["cancelling…", "cancelling", "cancelled by an admin"]));
    assert_eq!(server.get_json(&format!("/build/{id}")).await.1["status"], "running", "opened within the grace period");
    assert_eq!(server.wait_build(id).await["status"], "cancelled");
    let state = browser
        .wait_for(
            "the cancelled state",
            "const s = document.getElementById('status').textContent;
             return s === 'cancelled' && [document.getElementById('duration').textContent.startsWith('took '),
                                          document.getElementById('favicon').dataset.state];",
        )
        .await;
    assert_eq!(state, json!([true, "cancelled"]));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_window_inside_sections_that_began_before_it_shows_them() {
    let script = "#!/bin/sh\necho '::group::Closed before'\necho closed\necho '::endgroup::'\necho '::group::Big group'\n\
                  printf 'section_start:%s:inner\\r\\033[0KInner part\\n' $(date +%s)\nseq 1 20000\n\
                  tar -czf /tmp/archives/out.tar.gz /etc/hostname\n";
    let (_git, server, id, log) = successful_build(script).await;
    let total = log.lines().count() as u64;
    let headers = [
        line_of(&log, "[autobuilder] phase script"),
        line_of(&log, "::group::Big group"),
        log.lines().position(|l| l.contains("section_start:")).unwrap() as u64 + 1,
    ];
    let names = json!(["[autobuilder] phase script", "Big group", "Inner part"]);
    assert!(total - headers[2] > 15_000, "the sections begin long before the tail");

    // The window's first rows: the headers of the sections it is in, then its lines.
    let first_rows = "const log = document.getElementById('log');
        log.scrollTop = 0; log.dispatchEvent(new Event('scroll'));
        return [...document.querySelectorAll('#log .line')].slice(0, 4).map(r => [Number(r.dataset.seq),
          r.classList.contains('section-header') ? r.querySelector('.text').textContent : null,
          r.querySelector('.took') && r.querySelector('.took').textContent !== '']);";
    let browser = Browser::start().await;
    let ten_thousand = line_of(&log, "10000");
    for (hash, first) in [(String::new(), total - 4999), (format!("#L{ten_thousand}"), ten_thousand - 500)] {
        open(&browser, &server, id, &hash).await;
        assert_eq!(browser.eval("return window.autobuilderPage.first").await, json!(first), "{hash}");
        let rows = browser.eval(first_rows).await;
        assert_eq!(
            rows,
            json!([
                [headers[0], names[0], true],
                [headers[1], names[1], true],
                [headers[2], names[2], true],
                [first, null, null]
            ]),
            "{hash}"
        );
    }

    // Collapsed, the section hides the whole window (1,001 lines around line 10000) but its own
    // header; expanded, it shows it.
    let toggle = format!("document.querySelector('#log .line[data-seq=\"{}\"] .toggle').click()", headers[1]);
    let shown = format!(
        "const page = window.autobuilderPage;
         return [page.isShown({}), page.isShown({}), page.isShown({ten_thousand}), page.shown.length,
                 document.querySelector('#log .line[data-seq=\"{}\"] .toggle').getAttribute('aria-expanded')]",
        headers[1], headers[2], headers[1]
    );
    browser.eval(&toggle).await;
    assert_eq!(browser.eval(&shown).await, json!([true, false, false, 2, "false"]));
    browser.eval(&toggle).await;
    assert_eq!(browser.eval(&shown).await, json!([true, true, true, 3 + 1001, "true"]));
    // The headers' own line numbers are permalinks too: back to where the group began.
    browser.eval(&format!("document.querySelector('#log .line[data-seq=\"{}\"] a.number').click()", headers[1])).await;
    browser
        .wait_for(
            "the group's first line, loaded and highlighted",
            &format!(
                "return location.hash === '#L{0}' && window.autobuilderPage.first <= {0}
                   && document.querySelector('#log .line.selected') !== null && {1}",
                headers[1],
                in_view(headers[1])
            ),
        )
        .await;
}

/// Records the gaps between animation frames for SECONDS seconds, then answers with their figures.
const FRAMES: &str = "const done = arguments[arguments.length - 1];
    const gaps = []; const start = performance.now(); let last = start; const next = window.autobuilderPage.next;
    const step = (now) => {
      gaps.push(now - last); last = now;
      if (now - start < SECONDS * 1000) return requestAnimationFrame(step);
      const sorted = [...gaps].sort((a, b) => a - b);
      done({frames: gaps.length, max_ms: Math.round(sorted[sorted.length - 1]),
            p99_ms: Math.round(sorted[Math.floor(sorted.length * 0.99)]), over_33ms: gaps.filter(g => g > 33.4).length,
            rows: document.querySelectorAll('#log .line').length, loaded: window.autobuilderPage.lines.length,
            lines_received: window.autobuilderPage.next - next,
            following: document.getElementById('follow').checked});
    };
    requestAnimationFrame(step);";

/// The figures of `docs/benchmarks.md` ("Build page"): how long a 1,000,000-line log takes to open
/// (navigation to its last line rendered), and the frame gaps while the page follows a build
/// printing 1,000 lines a second. Prints them; asserts nothing about speed.
/// `cargo test --release --test monitor_build measure_the_build_page -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a measurement: prints the figures of docs/benchmarks.md"]
async fn measure_the_build_page() {
    let git = GitHost::new();
    let scripts =
        [("big.sh", "  artifact: out.tar.gz\n  tag: big"), ("steady.sh", "  artifact: out.tar.gz\n  tag: steady")];
    git.commit("org/recipes", "master", &[("org/app/master.yaml", &recipe(&scripts))]);
    let big = "#!/bin/sh\nseq 1 1000000\ntar -czf /tmp/archives/out.tar.gz /etc/hostname\n";
    // 100 lines every 0.1 s: 1,000 lines a second for 60 s.
    let steady = "#!/bin/sh\nsleep 5\ni=0\nwhile [ $i -lt 600 ]; do seq $((i*100+1)) $((i*100+100)); sleep 0.1; i=$((i+1)); done\n\
                  tar -czf /tmp/archives/out.tar.gz /etc/hostname\n";
    let sha = git.commit("org/app", "master", &[("big.sh", big), ("steady.sh", steady)]);
    let server = Server::start(|dir| test_config(dir, &git, None).with(|c| c.builds.concurrency = 2));
    let ids = server.push_builds("org/app", "master", &sha).await;
    assert_eq!(server.wait_build(ids[0]).await["status"], "success");
    let browser = Browser::start().await;
    browser.resize(1280, 720).await;

    let mut opens = Vec::new();
    for _ in 0..5 {
        open(&browser, &server, ids[0], "").await;
        let ms = browser.eval("return window.autobuilderPage.openedAt").await.as_f64().unwrap();
        opens.push(ms);
    }
    println!("1,000,000-line log, navigation to last line rendered (ms): {opens:?}");
    let idle = browser.eval_async(FRAMES.replace("SECONDS", "3").as_str()).await;
    println!("the same page, idle, 3 s of frames: {idle}");

    // The steady build: follow it for 10 s while it prints, counting frame gaps.
    open(&browser, &server, ids[1], "").await;
    browser.wait_for("the steady build to print", "return window.autobuilderPage.lines.length > 1000").await;
    // Long frames, split into the page's script and the browser's style, layout and paint.
    browser
        .eval(
            "window.longFrames = [];
             new PerformanceObserver((list) => {
               for (const e of list.getEntries()) window.longFrames.push([e.styleAndLayoutStart - e.renderStart,
                 e.startTime + e.duration - e.styleAndLayoutStart]);
             }).observe({type: 'long-animation-frame'});",
        )
        .await;
    let gaps = browser.eval_async(FRAMES.replace("SECONDS", "10").as_str()).await;
    println!("following 1,000 lines/s for 10 s: {gaps}");
    let split = browser
        .eval(
            "const median = (v) => v.sort((a, b) => a - b)[Math.floor(v.length / 2)];
             const f = window.longFrames;
             return {long_frames: f.length, median_script_ms: Math.round(median(f.map(x => x[0]))),
                     median_style_layout_paint_ms: Math.round(median(f.map(x => x[1])))};",
        )
        .await;
    println!("its long frames: {split}");
    server.wait_build(ids[1]).await;
}
