//! `POST /build/<project>/hook`, the edge of webhook intake. A delivery is checked before its body
//! is read (a known project and a signature header), read within a shared byte budget, verified
//! (HMAC-SHA256) and unwrapped from either content type GitHub sends (`application/json`, or
//! `application/x-www-form-urlencoded` with the JSON in its `payload` field): [`SignedDelivery`].
//! It is then stored, decided on and carried out by [`crate::build::trigger`], and answered at
//! once (builds and reloads run after the answer). A delivery seen before is not acted on again.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use super::ApiError;
use crate::app::App;
use crate::build::trigger::{Answer, Decision, Project, Verdict, carry_out, decide};
use crate::github::events::{SignatureCheck, parse_event};
use crate::metrics::EventLabel;

/// Largest webhook body accepted: GitHub caps payloads at 25 MB.
pub const MAX_HOOK_BODY: usize = 26 * 1024 * 1024;
/// Bytes of webhook bodies being read at once, over all requests; more wait for their turn, so
/// that strangers sending large bodies cannot exhaust the memory. Bodies up to [`SMALL_BODY`]
/// (nearly every real delivery) have a budget of their own, so that large ones held open cannot
/// starve them.
const LARGE_BUDGET: usize = 32 * 1024 * 1024;
const SMALL_BUDGET: usize = 8 * 1024 * 1024;
const SMALL_BODY: usize = 256 * 1024;
/// How long a delivery may take to wait for its turn and arrive: a stranger holding its share of
/// the budget gives it back by then (GitHub itself gives up after 10 s).
const BODY_DEADLINE: Duration = Duration::from_secs(20);
/// Size of the blocks a body is read into.
const BLOCK: usize = 256 * 1024;
/// Headers kept with a stored delivery.
const KEPT_HEADERS: &[&str] =
    &["x-github-event", "x-github-delivery", "x-github-hook-id", "user-agent", "content-type"];
/// The one answer to an unknown project, a missing signature and a wrong one alike, so that the
/// configured projects cannot be found out by trying names.
const NOT_SIGNED: &str = "missing or wrong X-Hub-Signature-256: the hook URL must name a configured project, and the \
                          webhook secret must equal that project's webhook_secret";

/// `POST /build/<project>/hook`. A delivery that starts nothing is stored with its answer in one
/// write; one that starts a build or a reload is stored first, then acted on, then its outcome
/// recorded.
pub async fn receive(
    State(app): State<Arc<App>>,
    delivery: SignedDelivery,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let SignedDelivery { project, event, id, headers, payload } = delivery;
    app.metrics.deliveries.get_or_create(&EventLabel { event: event.clone() }).inc();
    let decision = decision_on(&app, &project, &event, &payload);
    if let Decision::Answer(answer) = &decision {
        let outcome = outcome_of(answer, &id);
        let new = app.store.record_delivery(&id, &project, &event, &headers, &payload, Some(&outcome)).await?;
        if new {
            return Ok((status_of(answer.verdict), Json(outcome["answer"].clone())));
        }
        return Ok(seen_before(&app, &project, &id).await?);
    }
    if !app.store.record_delivery(&id, &project, &event, &headers, &payload, None).await? {
        return Ok(seen_before(&app, &project, &id).await?);
    }
    Ok(carry_out_and_record(&app, &id, &project, decision).await)
}

/// What `event` with `payload` asks of `project`, as the project is now.
fn decision_on(app: &App, project: &str, event: &str, payload: &[u8]) -> Decision {
    let recipes = app.recipes.get(project);
    let project = Project { name: project, settings: app.config.projects.get(project), recipes: recipes.as_deref() };
    decide(&project, event, parse_event(event, payload))
}

/// The HTTP status of a verdict.
fn status_of(verdict: Verdict) -> StatusCode {
    match verdict {
        Verdict::Done => StatusCode::OK,
        Verdict::Accepted => StatusCode::ACCEPTED,
        Verdict::Malformed => StatusCode::BAD_REQUEST,
        Verdict::UnknownProject => StatusCode::NOT_FOUND,
        Verdict::NotReady => StatusCode::SERVICE_UNAVAILABLE,
        Verdict::Upstream => StatusCode::BAD_GATEWAY,
        Verdict::Failed => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

async fn seen_before(app: &App, project: &str, delivery: &str) -> anyhow::Result<(StatusCode, Json<Value>)> {
    let before = app.store.delivery(project, delivery).await?.and_then(|(d, _)| d.outcome);
    let message = format!("delivery {delivery} was received before: not acted on again");
    Ok((StatusCode::OK, Json(json!({ "message": message, "delivery": delivery, "before": before }))))
}

/// Acts on a stored delivery (again) and records what was done; the answer.
pub async fn act_and_record(
    app: &Arc<App>,
    delivery: &str,
    project: &str,
    event: &str,
    payload: &[u8],
) -> (StatusCode, Json<Value>) {
    let decision = decision_on(app, project, event, payload);
    carry_out_and_record(app, delivery, project, decision).await
}

async fn carry_out_and_record(
    app: &Arc<App>,
    delivery: &str,
    project: &str,
    decision: Decision,
) -> (StatusCode, Json<Value>) {
    let answer = carry_out(app, project, decision).await;
    let outcome = outcome_of(&answer, delivery);
    if let Err(e) = app.store.set_delivery_outcome(project, delivery, &outcome).await {
        tracing::error!(delivery, "cannot record what was done with the delivery: {e:#}");
    }
    (status_of(answer.verdict), Json(outcome["answer"].clone()))
}

/// What is stored of an answer: its status and its body, naming the delivery.
fn outcome_of(answer: &Answer, delivery: &str) -> Value {
    let mut body = serde_json::to_value(answer).expect("an answer serialises");
    body["delivery"] = Value::from(delivery);
    json!({ "status": status_of(answer.verdict).as_u16(), "answer": body })
}

/// Acts on the deliveries a previous process stored but never acted on.
pub async fn act_on_unprocessed(app: &Arc<App>) -> anyhow::Result<()> {
    for (project, id) in app.store.unprocessed_deliveries().await? {
        if let Some((delivery, payload)) = app.store.delivery(&project, &id).await? {
            tracing::info!(delivery = %id, "acting on a delivery stored before a restart");
            let _ = act_and_record(app, &id, &delivery.project, &delivery.event, &payload).await;
        }
    }
    Ok(())
}

/// A webhook delivery whose signature was verified, with its JSON payload.
pub struct SignedDelivery {
    pub project: String,
    /// `X-GitHub-Event`.
    pub event: String,
    /// `X-GitHub-Delivery`, or a local id when the sender gave none.
    pub id: String,
    /// The headers kept with the stored delivery, as a JSON object.
    pub headers: String,
    /// The JSON payload (taken out of the form of a form-encoded delivery).
    pub payload: Bytes,
}

/// The budget a body of `length` bytes is read within, in KiB permits.
fn budget(length: usize) -> &'static Semaphore {
    static LARGE: Semaphore = Semaphore::const_new(LARGE_BUDGET / 1024);
    static SMALL: Semaphore = Semaphore::const_new(SMALL_BUDGET / 1024);
    if length <= SMALL_BODY { &SMALL } else { &LARGE }
}

/// A refused delivery: the error, on a connection that is then closed (a stranger's connection is
/// not kept alive with the buffers its body grew).
pub struct Refused(ApiError);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let mut response = self.0.into_response();
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        response
    }
}

impl FromRequest<Arc<App>> for SignedDelivery {
    type Rejection = Refused;

    async fn from_request(request: Request, app: &Arc<App>) -> Result<Self, Refused> {
        read_delivery(request, app).await.map_err(Refused)
    }
}

/// Checks, reads and verifies a delivery; see the module documentation.
async fn read_delivery(request: Request, app: &Arc<App>) -> Result<SignedDelivery, ApiError> {
    let (mut parts, body) = request.into_parts();
    let Path(project) = Path::<String>::from_request_parts(&mut parts, app)
        .await
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    let headers = parts.headers;
    let text = |name| headers.get(name).and_then(|v| v.to_str().ok());
    // Nothing is read for a request that cannot be a delivery.
    let signature = text("x-hub-signature-256").filter(|s| s.len() == 71 && s.starts_with("sha256="));
    let Some(signature) = signature else {
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, NOT_SIGNED));
    };
    // GitHub always says how long its body is; the budget needs to know before reading.
    let length = match text(header::CONTENT_LENGTH.as_str()).map(str::parse::<usize>) {
        Some(Ok(length)) if length > MAX_HOOK_BODY => return Err(too_large()),
        Some(Ok(length)) => length,
        _ => return Err(ApiError::new(StatusCode::LENGTH_REQUIRED, "a webhook delivery needs a Content-Length")),
    };
    // An unknown project is answered like a wrong signature, after the same work.
    let secret = app.config.projects.get(&project).map(|p| p.webhook_secret.expose().as_bytes());
    let check = SignatureCheck::new(secret.unwrap_or_default(), Some(signature))
        .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, NOT_SIGNED))?;
    let permits = u32::try_from(length.div_ceil(1024).max(1)).expect("bounded by MAX_HOOK_BODY");
    let read = async {
        let _reading = budget(length).acquire_many(permits).await.expect("the budget is never closed");
        read_signed(body, check).await
    };
    let late = || ApiError::new(StatusCode::REQUEST_TIMEOUT, "the delivery did not arrive in time");
    let Some(body) = tokio::time::timeout(BODY_DEADLINE, read).await.map_err(|_| late())?? else {
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, NOT_SIGNED));
    };
    if secret.is_none() {
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, NOT_SIGNED));
    }
    let event = text("x-github-event")
        .ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "missing X-GitHub-Event header"))?
        .to_string();
    let id = match text("x-github-delivery") {
        Some(id) if !id.is_empty() && id.len() <= 100 => id.to_string(),
        _ => local_delivery_id(),
    };
    let payload = payload_of(&headers, body)?;
    let kept: serde_json::Map<String, Value> =
        KEPT_HEADERS.iter().filter_map(|name| Some((name.to_string(), Value::from(text(name)?)))).collect();
    Ok(SignedDelivery { project, event, id, headers: Value::Object(kept).to_string(), payload })
}

/// Reads a body, checking its signature on the way; the body when the signature holds. It is
/// copied into blocks of [`BLOCK`] bytes (the connection's own buffers are reused as it goes) and
/// joined only when the signature holds: a stranger's body never makes one large allocation, which
/// the allocator would keep resident after it is freed.
async fn read_signed(body: axum::body::Body, mut check: SignatureCheck) -> Result<Option<Bytes>, ApiError> {
    let (mut blocks, mut length): (Vec<Vec<u8>>, usize) = (Vec::new(), 0);
    let mut stream = body.into_data_stream();
    while let Some(piece) = stream.next().await {
        let piece = piece.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("cannot read the body: {e}")))?;
        length += piece.len();
        if length > MAX_HOOK_BODY {
            return Err(too_large());
        }
        check.update(&piece);
        let mut rest = &piece[..];
        while !rest.is_empty() {
            if blocks.last().is_none_or(|block| block.len() == BLOCK) {
                blocks.push(Vec::with_capacity(BLOCK));
            }
            let block = blocks.last_mut().expect("just made sure");
            let taken = rest.len().min(BLOCK - block.len());
            block.extend_from_slice(&rest[..taken]);
            rest = &rest[taken..];
        }
    }
    if !check.verify() {
        return Ok(None);
    }
    Ok(Some(match blocks.len() {
        1 => Bytes::from(blocks.pop().expect("one block")),
        _ => Bytes::from(blocks.concat()),
    }))
}

fn too_large() -> ApiError {
    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("webhook bodies are limited to {MAX_HOOK_BODY} bytes"))
}

/// The JSON payload of a verified body, by its content type (none given: JSON).
fn payload_of(headers: &HeaderMap, body: Bytes) -> Result<Bytes, ApiError> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("application/json");
    let media_type = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    match media_type.as_str() {
        "application/json" => Ok(body),
        "application/x-www-form-urlencoded" => form_urlencoded::parse(&body)
            .find(|(name, _)| name == "payload")
            .map(|(_, payload)| Bytes::from(payload.into_owned()))
            .ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "form-encoded delivery without a `payload` field")),
        _ => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "content type {content_type:?} is not accepted: set the webhook's content type to application/json \
                 (or application/x-www-form-urlencoded)"
            ),
        )),
    }
}

/// An id for a delivery that came without `X-GitHub-Delivery` (not from GitHub itself).
fn local_delivery_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("local-{nanos:x}-{}", COUNTER.fetch_add(1, Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(content_type: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(content_type) = content_type {
            headers.insert(header::CONTENT_TYPE, content_type.parse().unwrap());
        }
        headers
    }

    #[test]
    fn both_content_types_github_sends_give_the_json() {
        let json = Bytes::from_static(br#"{"zen":"a b&c=d"}"#);
        assert_eq!(payload_of(&headers(None), json.clone()).unwrap(), json);
        assert_eq!(payload_of(&headers(Some("application/json; charset=utf-8")), json.clone()).unwrap(), json);
        let form = Bytes::from_static(b"payload=%7B%22zen%22%3A%22a+b%26c%3Dd%22%7D");
        let form_type = Some("application/x-www-form-urlencoded");
        assert_eq!(payload_of(&headers(form_type), form).unwrap(), json);
        let missing = payload_of(&headers(form_type), Bytes::from_static(b"other=1")).err().unwrap();
        assert_eq!(missing.0, StatusCode::BAD_REQUEST);
        let other = payload_of(&headers(Some("text/plain")), json).err().unwrap();
        assert_eq!(other.0, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert!(other.1.contains("application/json"), "{}", other.1);
    }
}
