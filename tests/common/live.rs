//! The real `autobuilder live` websocket server, and a `/live` client that checks every line
//! arrives exactly once and in order.

use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};

use super::{Server, WAIT, echo_lines, read_address};

/// The real `autobuilder live` on a test server's configuration.
pub struct LiveServer {
    /// `ws://<address>/live`.
    pub url: String,
    child: Child,
    /// Holds the file the process writes its address to.
    _dir: tempfile::TempDir,
}

impl LiveServer {
    pub fn start(server: &Server) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let address_file = dir.path().join("address");
        let mut child = Command::new(env!("CARGO_BIN_EXE_autobuilder"))
            .args(["live", "--config"])
            .arg(&server.config_path)
            .arg("--address-file")
            .arg(&address_file)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        echo_lines(child.stdout.take().unwrap(), "[live]", |_| {});
        let address = read_address(&mut child, &address_file, "autobuilder live");
        Self { url: format!("ws://{address}/live"), child, _dir: dir }
    }
}

impl Drop for LiveServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A websocket client of `/live` that checks every `lines` message continues exactly where the
/// previous one ended, and keeps the text.
pub struct LiveClient {
    socket: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    /// Next line number expected per build, and the text received so far.
    pub received: std::collections::HashMap<i64, (u64, String)>,
    pub resyncs: usize,
}

impl LiveClient {
    pub async fn connect(url: &str) -> Self {
        let (socket, _) = tokio_tungstenite::connect_async(url).await.expect("websocket connects");
        Self { socket, received: Default::default(), resyncs: 0 }
    }

    pub async fn send(&mut self, message: Value) {
        use futures_util::SinkExt;
        self.socket.send(tokio_tungstenite::tungstenite::Message::text(message.to_string())).await.unwrap();
    }

    /// Subscribes to build `id` from the next line this client lacks.
    pub async fn subscribe(&mut self, id: i64) {
        let from = self.received.entry(id).or_insert((1, String::new())).0;
        self.send(json!({"type": "subscribe", "id": id, "from": from})).await;
    }

    /// The next JSON message; `lines` are checked and recorded.
    pub async fn next(&mut self) -> Value {
        use futures_util::StreamExt;
        loop {
            let message = tokio::time::timeout(WAIT, self.socket.next())
                .await
                .expect("no websocket message in time")
                .expect("websocket closed")
                .expect("websocket failed");
            let tokio_tungstenite::tungstenite::Message::Text(text) = message else { continue };
            let value: Value = serde_json::from_str(&text).unwrap();
            match value["type"].as_str() {
                Some("lines") => {
                    let id = value["id"].as_i64().unwrap();
                    let seq = value["seq"].as_u64().unwrap();
                    let text = value["text"].as_str().unwrap();
                    let entry = self.received.entry(id).or_insert((1, String::new()));
                    assert_eq!(seq, entry.0, "lines of build {id} out of order or repeated");
                    assert!(text.ends_with('\n'));
                    entry.0 += text.matches('\n').count() as u64;
                    entry.1.push_str(text);
                }
                Some("resync") => self.resyncs += 1,
                _ => {}
            }
            return value;
        }
    }

    /// Reads messages until build `id` is announced with a final status; returns that record.
    pub async fn until_finished(&mut self, id: i64) -> Value {
        loop {
            let message = self.next().await;
            if message["type"] == "build"
                && message["build"]["id"] == id
                && !matches!(message["build"]["status"].as_str(), Some("queued" | "running"))
            {
                return message["build"].clone();
            }
        }
    }

    /// Reads messages until build `id` has at least `lines` lines.
    pub async fn until_lines(&mut self, id: i64, lines: u64) {
        while self.received.get(&id).is_none_or(|(next, _)| *next <= lines) {
            self.next().await;
        }
    }

    pub fn text(&self, id: i64) -> &str {
        self.received.get(&id).map_or("", |(_, text)| text.as_str())
    }

    pub async fn close(mut self) {
        let _ = self.socket.close(None).await;
    }
}
