//! Accessibility of the monitor, a build page and the not-found page, checked with axe-core in
//! headless Chromium against real builds (a success, a failure, one still running); and the
//! README's screenshots, saved when `SCREENSHOTS_DIR` is set.
//!
//! axe-core's `axe.min.js` comes from PyPI's `axe-playwright-python` (`scripts/install-deps.sh
//! --tests` installs it); `AXE_CORE_JS` names another copy of the file.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde_json::{Value, json};

/// `org/app` master builds `build.sh` (passes, with a coloured log) and `test.sh` (fails while the
/// commit holds a file `FAIL`); branch `next` builds a `build.sh` that keeps running.
const MASTER: &str = "buildscripts: [build.sh, test.sh]\nbuild.sh: {artifact: app.tar.gz, tag: app}\ntest.sh: {artifact: report.tar.gz, tag: tests}\n";
const NEXT: &str = "buildscripts: [build.sh]\nbuild.sh: {artifact: app.tar.gz}\n";

const BUILD_SH: &str = r#"#!/bin/sh
printf '\033[1;34m==>\033[0m \033[1mcompiling app\033[0m\n'
for unit in config store hooks builder server; do
  printf '   \033[32mCompiling\033[0m %s v1.4.0\n' "$unit"
done
printf '\033[33mwarning\033[0m: unused variable `retries` in server/live.rs:88\n'
printf '   \033[32mFinished\033[0m release profile [optimized] in 41.3s\n'
printf '\033[1;34m==>\033[0m \033[1mpackaging\033[0m\n'
tar -czf /tmp/archives/app.tar.gz build.sh
printf '\033[1;32mdone\033[0m: app.tar.gz\n'
"#;

const TEST_SH: &str = r#"#!/bin/sh
echo 'running 4 tests'
printf 'test config::parses ... \033[32mok\033[0m\n'
printf 'test store::migrates ... \033[32mok\033[0m\n'
printf 'test hooks::verifies_signature ... \033[32mok\033[0m\n'
if [ -e FAIL ]; then
  printf 'test builder::keeps_order ... \033[31mFAILED\033[0m\n'
  printf '\033[31merror\033[0m: test failed, expected 3 builds, got 2\n'
  exit 101
fi
printf 'test builder::keeps_order ... \033[32mok\033[0m\n'
tar -czf /tmp/archives/report.tar.gz test.sh
"#;

/// Keeps running: 60 lines at once (more than its page's log shows without scrolling), then one a
/// second.
const SLOW_SH: &str = r#"#!/bin/sh
i=1
while :; do printf 'step %s\n' "$i"; i=$((i + 1)); [ "$i" -gt 60 ] && sleep 1; done
"#;

/// The builds the pages show: the passing and the failing build of master's second push, and the
/// build of `next` still running.
struct Builds {
    success: i64,
    failure: i64,
    running: i64,
}

async fn real_builds(server: &Server, git: &GitHost) -> Builds {
    let files = [("build.sh", BUILD_SH), ("test.sh", TEST_SH)];
    let first = git.commit("org/app", "master", &files);
    for id in server.push_builds("org/app", "master", &first).await {
        server.wait_build(id).await;
    }
    let second = git.commit("org/app", "master", &[("FAIL", "yes")]);
    let mut success = 0;
    let mut failure = 0;
    for id in server.push_builds("org/app", "master", &second).await {
        let build = server.wait_build(id).await;
        match (build["script"].as_str(), build["status"].as_str()) {
            (Some("build.sh"), Some("success")) => success = id,
            (Some("test.sh"), Some("failure")) => failure = id,
            _ => panic!("unexpected build: {build}"),
        }
    }
    let next = git.commit("org/app", "next", &[("build.sh", SLOW_SH)]);
    let running = server.push_builds("org/app", "next", &next).await;
    assert_eq!(running.len(), 1, "one script on next");
    server.wait_running(running[0]).await;
    server.wait_log(running[0], "step 61").await;
    Builds { success, failure, running: running[0] }
}

fn app() -> GitHost {
    let git = GitHost::new();
    git.commit("org/recipes", "master", &[("org/app/master.yaml", MASTER), ("org/app/next.yaml", NEXT)]);
    git
}

/// axe-core's script: `AXE_CORE_JS`, or the copy in the Python package `axe_playwright_python`.
fn axe_source() -> String {
    let path = match std::env::var_os("AXE_CORE_JS") {
        Some(path) => PathBuf::from(path),
        None => {
            let find = "import importlib.util, os; print(os.path.dirname(importlib.util.find_spec('axe_playwright_python').origin))";
            let out = Command::new("python3").args(["-c", find]).output();
            let dir =
                out.ok().filter(|o| o.status.success()).map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
            let dir = dir.unwrap_or_else(|| {
                panic!(
                    "axe-core not found: run scripts/install-deps.sh --tests (it runs \
                     `python3 -m pip install --no-deps axe-playwright-python`), or set AXE_CORE_JS to an axe.min.js"
                )
            });
            Path::new(&dir).join("axe.min.js")
        }
    };
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("axe-core's script {}: {e}", path.display()))
}

/// Runs axe-core on the page in `browser`; prints every violation it finds and returns the
/// critical and serious ones, one line each.
async fn serious_violations(browser: &Browser, axe: &str, page: &str) -> Vec<String> {
    // WebDriver's scripts are not subject to the page's Content-Security-Policy, which allows no
    // inline script.
    let loaded = browser.eval(&format!("{axe}\n;return typeof window.axe === 'object' && axe.version;")).await;
    assert!(loaded.is_string(), "axe-core did not load on {page}: {loaded}");
    let result = browser
        .eval_async(
            "const done = arguments[arguments.length - 1];
             axe.run(document, {resultTypes: ['violations']})
               .then(r => done(r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,
                 targets: v.nodes.map(n => n.target.join(' '))}))))
               .catch(e => done({error: String(e)}));",
        )
        .await;
    let violations = result.as_array().unwrap_or_else(|| panic!("axe-core failed on {page}: {result}"));
    let line = |v: &Value| format!("{page}: {} ({}): {} at {}", v["id"], v["impact"], v["help"], v["targets"]);
    for violation in violations {
        eprintln!("axe-core {loaded}: {}", line(violation));
    }
    violations.iter().filter(|v| v["impact"] == "critical" || v["impact"] == "serious").map(line).collect()
}

/// Makes the viewport 1280x800 at one device pixel a CSS pixel, so screenshots are that size.
async fn viewport_1280x800(browser: &Browser) {
    let metrics = json!({"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": false});
    browser.devtools("Emulation.setDeviceMetricsOverride", metrics).await;
}

async fn open_monitor(browser: &Browser, server: &Server) {
    browser.goto(&format!("{}/monitor", server.url)).await;
    browser
        .wait_for(
            "the history and the running build",
            "const console = document.querySelector('#active [data-console]');
             return document.querySelectorAll('#history tr.push').length === 2
                && console !== null && console.textContent.includes('step')
                && console.scrollTop + console.clientHeight >= console.scrollHeight - 1
                && document.getElementById('connection').textContent === 'live'",
        )
        .await;
}

async fn open_build(browser: &Browser, server: &Server, id: i64, last_line: &str) {
    browser.goto(&format!("{}/monitor/build/{id}", server.url)).await;
    let script = format!("return document.body.textContent.includes({})", Value::from(last_line));
    browser.wait_for(&format!("the log of build {id}"), &script).await;
}

/// Saves a screenshot of the page as `name` in `dir` and checks it is 1280x800.
async fn screenshot(browser: &Browser, dir: &Path, name: &str) {
    browser.screenshot(&dir.join(name)).await;
    let png = std::fs::read(dir.join(name)).unwrap();
    // The width and height in the PNG's header (IHDR).
    let size =
        (u32::from_be_bytes(png[16..20].try_into().unwrap()), u32::from_be_bytes(png[20..24].try_into().unwrap()));
    assert_eq!(size, (1280, 800), "{name}");
}

/// Also takes the README's screenshots, into `SCREENSHOTS_DIR` when set:
/// `SCREENSHOTS_DIR=docs/screenshots cargo test --test accessibility`.
#[tokio::test(flavor = "multi_thread")]
async fn the_monitor_the_build_pages_and_the_not_found_page_have_no_serious_accessibility_violations() {
    let axe = axe_source();
    let scratch = tempfile::tempdir().unwrap();
    let shots = std::env::var_os("SCREENSHOTS_DIR").map_or_else(|| scratch.path().to_path_buf(), PathBuf::from);
    std::fs::create_dir_all(&shots).unwrap();
    let git = app();
    let server = Server::start(|dir| test_config(dir, &git, None));
    let builds = real_builds(&server, &git).await;
    let browser = Browser::start().await;
    viewport_1280x800(&browser).await;
    let mut serious = Vec::new();

    open_monitor(&browser, &server).await;
    // The page's Content-Security-Policy is in force (an inline script does not run), yet axe-core
    // runs: WebDriver's scripts are not subject to it.
    let inline = "const s = document.createElement('script'); s.textContent = 'window.inlineRan = true';
                  document.head.appendChild(s); return window.inlineRan === true;";
    assert_eq!(browser.eval(inline).await, false, "the CSP lets an inline script run");
    screenshot(&browser, &shots, "overview.png").await;
    serious.extend(serious_violations(&browser, &axe, "/monitor").await);
    open_build(&browser, &server, builds.success, "done: app.tar.gz").await;
    screenshot(&browser, &shots, "build.png").await;
    serious.extend(serious_violations(&browser, &axe, "a successful build's page").await);
    open_build(&browser, &server, builds.failure, "expected 3 builds, got 2").await;
    screenshot(&browser, &shots, "failed-build.png").await;
    serious.extend(serious_violations(&browser, &axe, "a failed build's page").await);
    open_build(&browser, &server, builds.running, "step 61").await;
    serious.extend(serious_violations(&browser, &axe, "a running build's page").await);
    browser.goto(&format!("{}/monitor/build/999999", server.url)).await;
    browser.wait_for("the not-found page", "return document.body.dataset.page === 'not-found'").await;
    serious.extend(serious_violations(&browser, &axe, "the not-found page").await);

    // Dark mode has its own colours: their contrast is checked too.
    let dark = json!({"media": "", "features": [{"name": "prefers-color-scheme", "value": "dark"}]});
    browser.devtools("Emulation.setEmulatedMedia", dark).await;
    open_monitor(&browser, &server).await;
    serious.extend(serious_violations(&browser, &axe, "/monitor in dark mode").await);
    open_build(&browser, &server, builds.failure, "expected 3 builds, got 2").await;
    serious.extend(serious_violations(&browser, &axe, "a failed build's page in dark mode").await);
    assert!(serious.is_empty(), "critical or serious accessibility violations:\n{}", serious.join("\n"));
}
