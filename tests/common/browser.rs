//! Headless Chromium over WebDriver, for the tests of the monitor page.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use super::wait_until;

/// Headless Chromium driven over WebDriver (Debian's chromium + chromium-driver).
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
}

impl Browser {
    pub async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            // A group of its own, with the browser it starts: ended together (see Drop).
            .process_group(0)
            .spawn()
            .expect("chromedriver not found: apt-get install chromium chromium-driver");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        wait_until("chromedriver to answer", async || http.get(format!("{base}/status")).send().await.ok()).await;
        let binary = ["/usr/bin/chromium", "/usr/bin/chromium-browser"].into_iter().find(|p| Path::new(p).exists());
        let capabilities = json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": {
            "binary": binary,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"]
        }}}});
        let response: Value =
            http.post(format!("{base}/session")).json(&capabilities).send().await.unwrap().json().await.unwrap();
        let session =
            response["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {response}")).to_string();
        Self { driver, base, session, http }
    }

    pub async fn goto(&self, url: &str) {
        self.command("url", json!({"url": url})).await;
    }

    /// Sets the window's outer size in CSS pixels.
    pub async fn resize(&self, width: u32, height: u32) {
        self.command("window/rect", json!({"width": width, "height": height})).await;
    }

    /// Runs a Chrome DevTools Protocol command (e.g. `Emulation.setEmulatedMedia`).
    pub async fn devtools(&self, method: &str, params: Value) -> Value {
        self.command("goog/cdp/execute", json!({"cmd": method, "params": params})).await
    }

    /// Runs `script` (a function body) in the page and returns its result.
    pub async fn eval(&self, script: &str) -> Value {
        self.command("execute/sync", json!({"script": script, "args": []})).await
    }

    /// Runs `script` (a function body whose last argument is a callback) in the page and returns
    /// what it passes to that callback, waiting at most two minutes.
    pub async fn eval_async(&self, script: &str) -> Value {
        self.command("timeouts", json!({"script": 120_000})).await;
        self.command("execute/async", json!({"script": script, "args": []})).await
    }

    /// Waits until `script` returns something truthy; returns it.
    pub async fn wait_for(&self, what: &str, script: &str) -> Value {
        wait_until(&format!("{what} in the browser"), async || {
            let value = self.eval(script).await;
            (!(value.is_null() || value == false || value == 0 || value == "")).then_some(value)
        })
        .await
    }

    /// Saves a PNG screenshot of the page.
    pub async fn screenshot(&self, path: &Path) {
        use base64::Engine;
        let url = format!("{}/session/{}/screenshot", self.base, self.session);
        let response: Value = self.http.get(url).send().await.unwrap().json().await.unwrap();
        let png = base64::engine::general_purpose::STANDARD.decode(response["value"].as_str().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }

    async fn command(&self, name: &str, body: Value) -> Value {
        let url = format!("{}/session/{}/{name}", self.base, self.session);
        let response: Value = self.http.post(url).json(&body).send().await.unwrap().json().await.unwrap();
        if let Some(error) = response["value"].get("error") {
            panic!("webdriver {name}: {error}: {}", response["value"]["message"]);
        }
        response["value"].clone()
    }
}

impl Drop for Browser {
    /// Ends the session (chromedriver then quits the browser, with its crash handlers, which are
    /// in sessions of their own), then kills chromedriver's process group: killing chromedriver
    /// alone would leave a headless Chromium running after every test.
    fn drop(&mut self) {
        let _ = self.end_session();
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", self.driver.id())]).status();
        let _ = self.driver.wait();
    }
}

impl Browser {
    /// `DELETE /session/<id>`, blocking (Drop cannot await), within a few seconds.
    fn end_session(&self) -> std::io::Result<()> {
        let address = self.base.trim_start_matches("http://");
        let mut stream = std::net::TcpStream::connect(address)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let request =
            format!("DELETE /session/{} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n", self.session);
        stream.write_all(request.as_bytes())?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).map(drop)
    }
}
