//! The live websocket (`GET /live`): build events and log lines to browsers. Every line carries its
//! number; a client that subscribes late, reconnects, lags behind or sat through a Redis outage is
//! caught up from the build's log file, so it gets every line exactly once and in order.
//!
//! Protocol, JSON text frames. The client sends `{"type":"subscribe","id":7,"from":1}` (lines from
//! number `from`, default 1) or `{"type":"subscribe","id":7,"tail":1000}` (the last lines), and
//! `{"type":"unsubscribe","id":7}`. The server sends `{"type":"hello"}`, every `build` event
//! (`{"type":"build","build":{...}}`), `{"type":"stopping","id":7,"reason":"..."}` when a running
//! build is asked to stop (it then has its stop grace period), the `lines` of subscribed builds
//! (`{"type":"lines","id":7,"seq":1,"text":"line 1\nline 2\n","time":1700000000000}`: `time`, when
//! they arrived in milliseconds since the Unix epoch, only on live lines, not on those caught up
//! from a file), and `{"type":"resync"}` when build
//! events may have been missed (the client then refetches `/build/status` and `/build/history`).
//!
//! Strangers reach this endpoint without authentication, so it is bounded: a client message may
//! hold at most [`MAX_CLIENT_MESSAGE`] bytes (a larger one ends the connection), and `[live]
//! max_clients` / `max_clients_per_address` cap the connections (more are answered 503). Behind a
//! reverse proxy on the same machine, a client's address is the one the proxy forwarded.

use std::collections::HashMap;
use std::io::SeekFrom;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;

use crate::build::log::{lines_before, log_path, tail_offset};
use crate::build::shipped_log::RemoteLogs;
use crate::bus::{Bus, Delivery, Event};
use crate::config::LiveConfig;
use crate::model::BuildId;

/// A ping goes out this often; a client silent for three of them is dropped.
pub const HEARTBEAT: Duration = Duration::from_secs(15);
/// A client that does not take a frame within this time is dropped (it reconnects and catches up).
const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// Most bytes of log text in one `lines` message sent from a file.
const CATCH_UP_CHUNK: usize = 256 * 1024;
/// Most lines a `tail` subscription may ask for.
const MAX_TAIL: u64 = 100_000;
/// Largest message (and frame) a client may send: requests are a few dozen bytes.
pub const MAX_CLIENT_MESSAGE: usize = 4096;

/// What the websocket endpoint needs: the events, the log files to catch up from, and the
/// connection caps.
pub struct Live {
    bus: Bus,
    logs_dir: PathBuf,
    /// Copies the logs of builds other hosts run into `logs_dir` before they are read.
    remote_logs: Option<Arc<RemoteLogs>>,
    max_clients: usize,
    max_clients_per_address: usize,
    clients: Mutex<Clients>,
}

/// The websocket clients connected now: in all, and per address.
#[derive(Default)]
struct Clients {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
}

impl Live {
    pub fn new(bus: Bus, logs_dir: PathBuf, config: &LiveConfig, remote_logs: Option<Arc<RemoteLogs>>) -> Self {
        Self {
            bus,
            logs_dir,
            remote_logs,
            max_clients: config.max_clients,
            max_clients_per_address: config.max_clients_per_address,
            clients: Mutex::default(),
        }
    }

    /// Counts a new client from `address`, or says which cap it is over.
    fn admit(self: &Arc<Self>, address: IpAddr) -> Result<Admitted, &'static str> {
        let mut clients = self.clients.lock().expect("client count lock");
        if self.max_clients > 0 && clients.total >= self.max_clients {
            return Err("too many live clients: the server is at [live] max_clients; try again later");
        }
        let from_address = clients.by_address.entry(address).or_default();
        if self.max_clients_per_address > 0 && *from_address >= self.max_clients_per_address {
            return Err("too many live clients from your address ([live] max_clients_per_address); close some");
        }
        *from_address += 1;
        clients.total += 1;
        Ok(Admitted { live: self.clone(), address })
    }
}

/// A counted client; dropping it (when its session ends) uncounts it.
struct Admitted {
    live: Arc<Live>,
    address: IpAddr,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut clients = self.live.clients.lock().expect("client count lock");
        clients.total -= 1;
        if let Some(count) = clients.by_address.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                clients.by_address.remove(&self.address);
            }
        }
    }
}

/// The websocket at `/live` (for `serve`, which has other pages).
pub fn router(live: Arc<Live>) -> Router {
    Router::new().route("/live", get(upgrade)).with_state(live)
}

/// The websocket at `/live` and at `/`, for the dedicated `autobuilder live` server (so a
/// `public_url` written without the path works too), with `/healthz`.
pub fn dedicated_router(live: Arc<Live>) -> Router {
    Router::new()
        .route("/live", get(upgrade))
        .route("/", get(upgrade))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(live)
}

/// The client's address: the peer's, or behind a reverse proxy on this machine (a loopback peer),
/// the address that proxy appended to `X-Forwarded-For` (the last one; earlier ones are whatever
/// the client claimed).
fn client_address(peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
    if !peer.ip().is_loopback() {
        return peer.ip();
    }
    let forwarded = headers.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok()).next_back();
    forwarded.and_then(|list| list.rsplit(',').next()).and_then(|last| last.trim().parse().ok()).unwrap_or(peer.ip())
}

async fn upgrade(
    ws: WebSocketUpgrade,
    State(live): State<Arc<Live>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let admitted = match live.admit(client_address(peer, &headers)) {
        Ok(admitted) => admitted,
        Err(reason) => {
            tracing::debug!(%peer, "live client refused: {reason}");
            return (StatusCode::SERVICE_UNAVAILABLE, reason).into_response();
        }
    };
    let ws = ws.max_message_size(MAX_CLIENT_MESSAGE).max_frame_size(MAX_CLIENT_MESSAGE);
    let mut response = ws.on_upgrade(move |socket| async move {
        session(socket, live).await;
        drop(admitted);
    });
    response.headers_mut().insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Request {
    Subscribe { id: BuildId, from: Option<u64>, tail: Option<u64> },
    Unsubscribe { id: BuildId },
}

/// Where a client is in one build's log: the next line it needs, and where it starts in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Position {
    next: u64,
    offset: u64,
}

/// The client went away.
struct Gone;

struct Session {
    socket: WebSocket,
    logs_dir: PathBuf,
    remote_logs: Option<Arc<RemoteLogs>>,
    subscriptions: HashMap<BuildId, Position>,
}

async fn session(socket: WebSocket, live: Arc<Live>) {
    // Subscribe to the bus before anything is read from a file: a line is written to its file
    // before it is published, so every line is either in the file or in a later event.
    let mut events = live.bus.subscribe();
    let mut session = Session {
        socket,
        logs_dir: live.logs_dir.clone(),
        remote_logs: live.remote_logs.clone(),
        subscriptions: HashMap::new(),
    };
    let _ = session.run(&mut events).await;
}

impl Session {
    async fn run(&mut self, events: &mut tokio::sync::broadcast::Receiver<Delivery>) -> Result<(), Gone> {
        self.send_text(r#"{"type":"hello"}"#.into()).await?;
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        let mut last_heard = Instant::now();
        loop {
            tokio::select! {
                incoming = self.socket.recv() => {
                    last_heard = Instant::now();
                    match incoming {
                        Some(Ok(Message::Text(text))) => self.on_request(&text).await?,
                        Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return Err(Gone),
                        Some(Ok(_)) => {}
                    }
                }
                delivery = events.recv() => match delivery {
                    Ok(Delivery::Event(event)) => self.on_event(&event).await?,
                    Ok(Delivery::Reconnected) | Err(RecvError::Lagged(_)) => self.resync().await?,
                    Err(RecvError::Closed) => return Err(Gone),
                },
                _ = heartbeat.tick() => {
                    if last_heard.elapsed() > HEARTBEAT * 3 {
                        return Err(Gone);
                    }
                    self.socket.send(Message::Ping(Default::default())).await.map_err(|_| Gone)?;
                }
            }
        }
    }

    async fn on_request(&mut self, text: &str) -> Result<(), Gone> {
        match serde_json::from_str::<Request>(text) {
            Ok(Request::Subscribe { id, from, tail }) => {
                let path = log_path(&self.fetch(id).await, id);
                let start = match tail {
                    Some(tail) => Start::Tail(tail.min(MAX_TAIL)),
                    None => Start::From(from.unwrap_or(1).max(1)),
                };
                let position = locate(&path, start).await;
                self.subscriptions.insert(id, position);
                self.catch_up(id).await
            }
            Ok(Request::Unsubscribe { id }) => {
                self.subscriptions.remove(&id);
                Ok(())
            }
            Err(e) => {
                let message = serde_json::json!({ "type": "error", "message": format!("unreadable request: {e}") });
                self.send_text(message.to_string()).await
            }
        }
    }

    async fn on_event(&mut self, event: &Event) -> Result<(), Gone> {
        match event {
            Event::Lines { id, seq, text, time } => {
                let Some(position) = self.subscriptions.get(id).copied() else { return Ok(()) };
                if *seq > position.next {
                    // Lines went missing on the way (a full queue, a Redis hiccup): the file has them.
                    return self.catch_up(*id).await;
                }
                if let Some((seq, text)) = unseen_part(position, *seq, text) {
                    let sent_bytes = text.len() as u64;
                    let message =
                        serde_json::json!({ "type": "lines", "id": id, "seq": seq, "text": text, "time": time });
                    self.send_text(message.to_string()).await?;
                    let lines = text.bytes().filter(|&b| b == b'\n').count() as u64;
                    self.subscriptions
                        .insert(*id, Position { next: seq + lines, offset: position.offset + sent_bytes });
                }
                Ok(())
            }
            Event::Stopping { .. } => self.send_text(serde_json::to_string(event).expect("events serialise")).await,
            Event::Build { build } => {
                if build.outcome.status.is_final() && self.subscriptions.contains_key(&build.id) {
                    self.catch_up(build.id).await?; // every line before the final status
                }
                self.send_text(serde_json::to_string(event).expect("events serialise")).await
            }
        }
    }

    /// The directory of build `id`'s log files (see [`RemoteLogs::fetch`]).
    async fn fetch(&mut self, id: BuildId) -> PathBuf {
        match &self.remote_logs {
            Some(remote_logs) => remote_logs.fetch(id).await,
            None => self.logs_dir.clone(),
        }
    }

    /// After missed events: tell the client, and send every subscribed build's lines it lacks.
    async fn resync(&mut self) -> Result<(), Gone> {
        self.send_text(r#"{"type":"resync"}"#.into()).await?;
        let ids: Vec<BuildId> = self.subscriptions.keys().copied().collect();
        for id in ids {
            self.catch_up(id).await?;
        }
        Ok(())
    }

    /// Sends the complete lines of the log file past the client's position.
    async fn catch_up(&mut self, id: BuildId) -> Result<(), Gone> {
        let Some(mut position) = self.subscriptions.get(&id).copied() else { return Ok(()) };
        let logs_dir = self.fetch(id).await;
        let Ok(mut file) = tokio::fs::File::open(log_path(&logs_dir, id)).await else { return Ok(()) };
        if file.seek(SeekFrom::Start(position.offset)).await.is_err() {
            return Ok(());
        }
        let mut pending = Vec::with_capacity(CATCH_UP_CHUNK);
        let mut chunk = vec![0; CATCH_UP_CHUNK];
        loop {
            let read = file.read(&mut chunk).await.unwrap_or(0);
            pending.extend_from_slice(&chunk[..read]);
            let complete = match pending.iter().rposition(|&b| b == b'\n') {
                Some(last) if read == 0 || pending.len() >= CATCH_UP_CHUNK => last + 1,
                _ if read > 0 => continue,
                _ => break,
            };
            let text = String::from_utf8_lossy(&pending[..complete]).into_owned();
            let lines = pending[..complete].iter().filter(|&&b| b == b'\n').count() as u64;
            let message = serde_json::json!({ "type": "lines", "id": id, "seq": position.next, "text": text });
            self.send_text(message.to_string()).await?;
            position = Position { next: position.next + lines, offset: position.offset + complete as u64 };
            self.subscriptions.insert(id, position);
            pending.drain(..complete);
            if read == 0 {
                break;
            }
        }
        Ok(())
    }

    /// Sends one frame; a client that has not taken it within [`SEND_TIMEOUT`] is dropped.
    async fn send_text(&mut self, text: String) -> Result<(), Gone> {
        match tokio::time::timeout(SEND_TIMEOUT, self.socket.send(Message::Text(Utf8Bytes::from(text)))).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(Gone),
        }
    }
}

/// The part of an event's lines (first line number `seq`) the client does not have yet.
fn unseen_part(position: Position, seq: u64, text: &str) -> Option<(u64, &str)> {
    let mut skip = position.next.checked_sub(seq)?;
    let mut start = 0;
    while skip > 0 {
        start += text[start..].find('\n')? + 1;
        skip -= 1;
    }
    (start < text.len()).then(|| (position.next, &text[start..]))
}

enum Start {
    /// From line number N (1-based).
    From(u64),
    /// The last N lines.
    Tail(u64),
}

/// Finds where a subscription starts in a log file (a missing file is an empty log). A tail is
/// found reading backwards from the end; its first line number is then counted.
async fn locate(path: &Path, start: Start) -> Position {
    let mut position = Position { next: 1, offset: 0 };
    let Ok(mut file) = tokio::fs::File::open(path).await else { return position };
    let want = match start {
        Start::Tail(n) => {
            let Ok(offset) = tail_offset(&mut file, n, CATCH_UP_CHUNK).await else { return position };
            let lines = lines_before(&mut file, offset).await.unwrap_or(0);
            return Position { next: lines + 1, offset };
        }
        Start::From(line) => line,
    };
    let mut chunk = vec![0; CATCH_UP_CHUNK];
    let mut offset = 0u64;
    'read: loop {
        let read = file.read(&mut chunk).await.unwrap_or(0);
        if read == 0 {
            break;
        }
        for (index, &byte) in chunk[..read].iter().enumerate() {
            if position.next == want {
                break 'read;
            }
            if byte == b'\n' {
                position = Position { next: position.next + 1, offset: offset + index as u64 + 1 };
            }
        }
        offset += read as u64;
    }
    position
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_addresses_behind_a_local_proxy() {
        let headers = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert("x-forwarded-for", HeaderValue::from_str(value).unwrap());
            headers
        };
        let local: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let remote: SocketAddr = "203.0.113.9:5000".parse().unwrap();
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        assert_eq!(client_address(local, &headers("198.51.100.1, 192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(client_address(local, &headers("garbage")), ip("127.0.0.1"));
        assert_eq!(client_address(local, &HeaderMap::new()), ip("127.0.0.1"));
        // A client reaching the server directly cannot choose its address.
        assert_eq!(client_address(remote, &headers("192.0.2.7")), ip("203.0.113.9"));
    }

    #[test]
    fn unseen_parts_of_events() {
        let at = |next| Position { next, offset: 0 };
        assert_eq!(unseen_part(at(1), 1, "a\nb\n"), Some((1, "a\nb\n")));
        assert_eq!(unseen_part(at(2), 1, "a\nb\n"), Some((2, "b\n")));
        assert_eq!(unseen_part(at(3), 1, "a\nb\n"), None);
        assert_eq!(unseen_part(at(9), 1, "a\nb\n"), None);
    }

    #[tokio::test]
    async fn locating_lines_and_tails() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("1.log");
        assert_eq!(locate(&path, Start::Tail(5)).await, Position { next: 1, offset: 0 });
        std::fs::write(&path, "one\ntwo\nthree\npartial").unwrap();
        assert_eq!(locate(&path, Start::From(1)).await, Position { next: 1, offset: 0 });
        assert_eq!(locate(&path, Start::From(3)).await, Position { next: 3, offset: 8 });
        assert_eq!(locate(&path, Start::From(99)).await, Position { next: 4, offset: 14 });
        assert_eq!(locate(&path, Start::Tail(2)).await, Position { next: 2, offset: 4 });
        assert_eq!(locate(&path, Start::Tail(10)).await, Position { next: 1, offset: 0 });
        assert_eq!(locate(&path, Start::Tail(0)).await, Position { next: 4, offset: 14 });
    }
}
