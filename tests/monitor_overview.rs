//! The /monitor overview and the badges, against real builds: history paged with a cursor, pushes
//! grouped with their commit linked to GitHub, filters kept in the URL, statuses told apart without
//! colour, dark mode, no sideways scrolling at 400 px, and SVG badges for READMEs.

mod common;

use common::*;
use serde_json::{Value, json};

/// GitHub's web address in these tests: only links to it are checked, nothing is fetched.
const GITHUB_WEB: &str = "https://github.example";

/// `org/app` master builds `build.sh` (always passes) and `docs.sh` (fails while the commit holds
/// a file `FAIL`).
fn two_script_app() -> GitHost {
    let git = GitHost::new();
    let recipe = recipe(&[
        ("build.sh", "  artifact: build.tar.gz\n  tag: build"),
        ("docs.sh", "  artifact: docs.tar.gz\n  tag: docs"),
    ]);
    git.commit("org/recipes", "master", &[("org/app/master.yaml", &recipe)]);
    git
}

/// Commits `org/app` master (`failing`: docs.sh fails), pushes it, waits for its builds; their ids.
async fn push_and_wait(server: &Server, git: &GitHost, n: u32, failing: bool) -> (String, Vec<i64>) {
    let files = [
        ("build.sh", "#!/bin/sh\necho building\ntar -czf /tmp/archives/build.tar.gz build.sh\n".to_string()),
        ("docs.sh", "#!/bin/sh\nif [ -e FAIL ]; then echo 'docs broke'; exit 2; fi\ntar -czf /tmp/archives/docs.tar.gz docs.sh\n".into()),
        ("FAIL", if failing { "yes".into() } else { String::new() }),
        ("n", n.to_string()),
    ];
    let files: Vec<(&str, &str)> =
        files.iter().filter(|(p, c)| *p != "FAIL" || !c.is_empty()).map(|(p, c)| (*p, c.as_str())).collect();
    if !failing {
        let _ = std::fs::remove_file(git.root.path().join("org/app/FAIL"));
    }
    let sha = git.commit("org/app", "master", &files);
    let ids = server.push_builds("org/app", "master", &sha).await;
    assert_eq!(ids.len(), 2, "two scripts");
    for id in &ids {
        server.wait_build(*id).await;
    }
    (sha, ids)
}

fn ids(list: &Value) -> Vec<i64> {
    list.as_array().unwrap().iter().map(|b| b["id"].as_i64().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_history_pages_through_every_build_with_a_cursor_keeping_its_filters() {
    let git = two_script_app();
    let server = Server::start(|dir| test_config(dir, &git, None));
    let (_, first) = push_and_wait(&server, &git, 1, true).await;
    let (_, second) = push_and_wait(&server, &git, 2, false).await;
    let (_, third) = push_and_wait(&server, &git, 3, true).await;
    let mut all: Vec<i64> = [first, second, third].concat();
    all.sort_unstable_by(|a, b| b.cmp(a));

    let (code, page) = server.get_json("/build/history?kind=build&limit=4").await;
    assert_eq!(code, 200, "{page}");
    assert_eq!(ids(&page), all[..4]);
    let (_, page) = server.get_json(&format!("/build/history?kind=build&limit=4&before={}", all[3])).await;
    assert_eq!(ids(&page), all[4..], "the second page holds the rest");
    let (_, page) = server.get_json(&format!("/build/history?kind=build&limit=4&before={}", all[5])).await;
    assert_eq!(ids(&page), Vec::<i64>::new(), "nothing is older than the oldest");

    // The filters hold on every page: the failed docs.sh of the first and third pushes, one a page.
    let filtered = "/build/history?repository=org/app&branch=master&status=failure&limit=1";
    let (_, newest) = server.get_json(filtered).await;
    let (_, older) = server.get_json(&format!("{filtered}&before={}", ids(&newest)[0])).await;
    let failures: Vec<i64> = [ids(&newest), ids(&older)].concat();
    assert_eq!(failures.len(), 2, "{newest} {older}");
    for id in failures {
        let (_, build) = server.get_json(&format!("/build/{id}")).await;
        assert_eq!((build["status"].as_str(), build["script"].as_str()), (Some("failure"), Some("docs.sh")));
    }
    let (_, reloads) = server.get_json("/build/history?kind=reload").await;
    assert!(reloads.as_array().unwrap().iter().all(|b| b["kind"] == "reload") && !ids(&reloads).is_empty());

    for (query, says) in [("before=abc", "is not a build id"), ("kind=nope", "use build or reload")] {
        let (code, body) = server.get_json(&format!("/build/history?{query}")).await;
        assert_eq!(code, 400, "{query}: {body}");
        assert!(body["error"].as_str().unwrap().contains(says), "{query}: {body}");
    }
}

async fn badge(server: &Server, path: &str, etag: Option<&str>) -> (u16, reqwest::header::HeaderMap, String) {
    let mut request = server.http.get(format!("{}{path}", server.url));
    if let Some(etag) = etag {
        request = request.header("if-none-match", etag);
    }
    let response = request.send().await.unwrap();
    let (code, headers) = (response.status().as_u16(), response.headers().clone());
    (code, headers, response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_badge_shows_the_newest_finished_build_of_a_branch_and_never_breaks_a_readme() {
    let git = two_script_app();
    let server = Server::start(|dir| test_config(dir, &git, None));

    // Never built (a branch name with a slash too): a grey "no builds" badge, not an error.
    for path in ["/badge/org/app/master.svg", "/badge/org/app/feature/x.svg", "/badge/org/none/master.svg"] {
        let (code, headers, svg) = badge(&server, path, None).await;
        assert_eq!(code, 200, "{path}");
        assert_eq!(headers["content-type"], "image/svg+xml; charset=utf-8", "{path}");
        assert!(svg.starts_with("<svg") && svg.contains(">no builds<") && svg.contains("#9f9f9f"), "{path}: {svg}");
    }

    push_and_wait(&server, &git, 1, true).await;
    let (code, headers, svg) = badge(&server, "/badge/org/app/master.svg", None).await;
    assert_eq!(code, 200);
    assert!(svg.contains("<title>build: failure</title>"), "the worst script of the newest push: {svg}");
    let cache = headers["cache-control"].to_str().unwrap();
    assert!(cache.contains("no-cache") && cache.contains("max-age=0"), "{cache}");
    let etag = headers["etag"].to_str().unwrap().to_string();
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
    let (code, _, body) = badge(&server, "/badge/org/app/master.svg", Some(&etag)).await;
    assert_eq!((code, body.as_str()), (304, ""), "unchanged: GitHub's proxy keeps its copy");

    let (_, _, svg) = badge(&server, "/badge/org/app/master.svg?script=build.sh", None).await;
    assert!(svg.contains("<title>build.sh: success</title>"), "{svg}");
    let (_, _, svg) = badge(&server, "/badge/org/app/master.svg?script=nope.sh", None).await;
    assert!(svg.contains("<title>nope.sh: no builds</title>"), "{svg}");

    // A newer push that passes turns it green, with a new ETag.
    push_and_wait(&server, &git, 2, false).await;
    let (_, headers, svg) = badge(&server, "/badge/org/app/master.svg", Some(&etag)).await;
    assert!(svg.contains("<title>build: success</title>"), "{svg}");
    assert_ne!(headers["etag"].to_str().unwrap(), etag, "a new result is a new ETag");

    let (code, _, body) = badge(&server, "/badge/org/app", None).await;
    assert_eq!(code, 404);
    assert!(body.contains("/badge/<org>/<repo>/<branch>.svg"), "{body}");
}

/// The history rows the page shows: for each push, its commit and its scripts' `status script`.
const ROWS: &str = r#"return Array.from(document.querySelectorAll('#history tr.push')).map(row => [
    row.dataset.commit,
    Array.from(row.querySelectorAll('.script')).map(s => s.querySelector('.badge').textContent + ' '
      + s.querySelector('a').textContent.split(' ')[1])]);"#;

#[tokio::test(flavor = "multi_thread")]
async fn the_overview_groups_pushes_keeps_filters_in_the_url_and_pages_through_history() {
    let git = two_script_app();
    let server = Server::start(|dir| test_config(dir, &git, None).with(|c| c.github.web_url = GITHUB_WEB.into()));
    let (old, _) = push_and_wait(&server, &git, 1, true).await;
    let (new, _) = push_and_wait(&server, &git, 2, false).await;
    let browser = Browser::start().await;

    // Each push is one row, its scripts side by side, its commit linked to GitHub.
    browser.goto(&format!("{}/monitor", server.url)).await;
    let rows = browser
        .wait_for("two pushes", &format!("const rows = (() => {{ {ROWS} }})(); return rows.length === 2 && rows;"))
        .await;
    assert_eq!(
        rows,
        json!([[new, ["success build.sh", "success docs.sh"]], [old, ["success build.sh", "failure docs.sh"]]])
    );
    // Without an OAuth app: no sign-in link, and /login says what to configure.
    assert_eq!(browser.eval("return document.getElementById('sign-in')").await, serde_json::Value::Null);
    let (code, body) = server.get_json("/login").await;
    assert_eq!(code, 404);
    assert!(body["error"].as_str().unwrap().contains("set [github] client_id"), "{body}");
    let link = browser.eval("return document.querySelector('#history tr.push a.sha').href").await;
    assert_eq!(link, json!(format!("{GITHUB_WEB}/org/app/commit/{new}")));
    // When: relative, the exact time in the viewer's zone on hover.
    let when = browser
        .eval(
            "const t = document.querySelector('#history tr.push td.when time');
             return [t.textContent, t.title === new Date(t.getAttribute('datetime')).toLocaleString()];",
        )
        .await;
    assert_eq!(when, json!(["just now", true]));

    // A filter goes into the URL; back, forward and reload keep what the URL says.
    browser
        .eval("const s = document.querySelector('#filters select[name=status]'); s.value = 'failure'; s.dispatchEvent(new Event('change'));")
        .await;
    let filtered = json!([[old, ["failure docs.sh"]]]);
    let only_failures = format!(
        "const rows = (() => {{ {ROWS} }})(); return location.search.includes('status=failure') && rows.length === 1 && rows;"
    );
    assert_eq!(browser.wait_for("the failures only", &only_failures).await, filtered);
    browser.eval("history.back()").await;
    browser
        .wait_for(
            "every push again",
            &format!("return !location.search.includes('status') && (() => {{ {ROWS} }})().length === 2"),
        )
        .await;
    browser.eval("history.forward()").await;
    assert_eq!(browser.wait_for("the failures after forward", &only_failures).await, filtered);
    browser.eval("location.reload()").await;
    assert_eq!(browser.wait_for("the failures after reload", &only_failures).await, filtered);
    let select = browser.eval("return document.querySelector('#filters select[name=status]').value").await;
    assert_eq!(select, "failure", "the form shows the filter in force");

    // Paging: two builds a page, a push never split; the older page, and back to the newest.
    browser.goto(&format!("{}/monitor?limit=2", server.url)).await;
    let first_page = format!(
        "const rows = (() => {{ {ROWS} }})(); const older = document.getElementById('older');
        return rows.length === 1 && !older.hidden && [rows[0][0], document.getElementById('newer').hidden];"
    );
    assert_eq!(browser.wait_for("the first page", &first_page).await, json!([new, true]));
    browser.eval("document.getElementById('older').click()").await;
    let second_page = format!("const rows = (() => {{ {ROWS} }})();
        return location.search.includes('before=') && rows.length === 1 && [rows[0][0], document.getElementById('newer').hidden];");
    assert_eq!(browser.wait_for("the older page", &second_page).await, json!([old, false]));
    browser.eval("document.getElementById('newer').click()").await;
    assert_eq!(browser.wait_for("the newest page again", &first_page).await, json!([new, true]));
}

#[tokio::test(flavor = "multi_thread")]
async fn statuses_differ_without_colour_dark_mode_follows_the_system_and_400_px_do_not_scroll_sideways() {
    let git = two_script_app();
    let server = Server::start(|dir| test_config(dir, &git, None));
    push_and_wait(&server, &git, 1, true).await;
    let browser = Browser::start().await;
    browser.goto(&format!("{}/monitor", server.url)).await;
    browser.wait_for("the history", "return document.querySelectorAll('#history tr.push').length === 1").await;

    // Every status: its own colour, an icon and the word.
    let looks = browser
        .eval(
            "return ['queued', 'running', 'success', 'failure', 'error', 'cancelled'].map(s => {
               const b = document.body.appendChild(badge(s));
               const look = [getComputedStyle(b).backgroundColor, getComputedStyle(b, '::before').content, b.textContent];
               b.remove();
               return look;
             });",
        )
        .await;
    let looks = looks.as_array().unwrap();
    let colours: std::collections::HashSet<&str> = looks.iter().map(|l| l[0].as_str().unwrap()).collect();
    let icons: std::collections::HashSet<&str> = looks.iter().map(|l| l[1].as_str().unwrap()).collect();
    assert_eq!((colours.len(), icons.len()), (6, 6), "{looks:?}");
    assert!(looks.iter().all(|l| l[1] != "none" && l[1] != "normal"), "{looks:?}");

    let background = "return getComputedStyle(document.body).backgroundColor";
    assert_eq!(browser.eval(background).await, "rgb(247, 248, 250)", "light by default");
    let dark = json!({"media": "", "features": [{"name": "prefers-color-scheme", "value": "dark"}]});
    browser.devtools("Emulation.setEmulatedMedia", dark).await;
    assert_eq!(browser.eval(background).await, "rgb(18, 21, 28)", "dark when the system is");

    browser.resize(400, 800).await;
    browser.goto(&format!("{}/monitor", server.url)).await;
    browser.wait_for("the history", "return document.querySelectorAll('#history tr.push').length === 1").await;
    let widths = browser.eval("return [window.innerWidth, document.documentElement.scrollWidth]").await;
    let (inner, scroll) = (widths[0].as_u64().unwrap(), widths[1].as_u64().unwrap());
    assert!(inner <= 400, "the window is 400 px wide: {widths}");
    assert!(scroll <= inner, "the page scrolls sideways at {inner} px: {widths}");
    if let Ok(dir) = std::env::var("SCREENSHOTS_DIR") {
        browser.screenshot(&std::path::Path::new(&dir).join("monitor-400px-dark.png")).await;
    }
}
