//! A fake GitHub REST API over real HTTP (statuses, permissions, pull requests, comments, webhooks,
//! app installation tokens), its web sign-in for OAuth apps (`/login/oauth/authorize`,
//! `/login/oauth/access_token`, then `GET /user`), and the webhook payloads GitHub sends.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Json;
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::{serve, wait_until};

/// A commit status as the fake GitHub received it.
#[derive(Debug, Clone)]
pub struct PostedStatus {
    pub repo: String,
    pub sha: String,
    pub state: String,
    pub context: String,
    pub description: String,
    pub target_url: String,
}

#[derive(Default)]
pub struct FakeGithubState {
    pub statuses: Mutex<Vec<PostedStatus>>,
    /// While true, every request fails with 500.
    pub down: std::sync::atomic::AtomicBool,
    /// This many next requests are answered 429 with `Retry-After: 1`.
    pub rate_limited: std::sync::atomic::AtomicU32,
    /// Permission per user (`admin`, `write`, `read`); others have `none`.
    pub permissions: Mutex<std::collections::HashMap<String, String>>,
    /// Pull requests by number, as GitHub returns them.
    pub pulls: Mutex<std::collections::HashMap<u64, Value>>,
    /// Comments posted: (pull request number, body).
    pub comments: Mutex<Vec<(u64, String)>>,
    /// Webhooks per repository (`org/name`), as stored (secrets in clear).
    pub hooks: Mutex<std::collections::HashMap<String, Vec<Value>>>,
    pub next_hook_id: std::sync::atomic::AtomicI64,
    /// Installation tokens minted for a GitHub App: (installation, the JWT's claims).
    pub app_tokens: Mutex<Vec<(u64, Value)>>,
    /// Who is signed in on GitHub's web pages: the user who lets the OAuth app know them.
    pub web_user: Mutex<Option<String>>,
    /// OAuth codes handed out and not yet exchanged: code -> login.
    pub oauth_codes: Mutex<std::collections::HashMap<String, String>>,
}

/// The OAuth app the fake GitHub knows (`[github] client_id` and `client_secret`).
pub const OAUTH_CLIENT_ID: &str = "test-oauth-app";
pub const OAUTH_CLIENT_SECRET: &str = "test-oauth-secret";

/// A fake GitHub REST API that records commit statuses.
pub struct FakeGithub {
    pub url: String,
    pub state: Arc<FakeGithubState>,
}

impl FakeGithub {
    pub async fn start() -> Self {
        let state = Arc::new(FakeGithubState::default());
        let router = Router::new()
            .route("/repos/{owner}/{repo}/statuses/{sha}", post(post_status))
            .route("/repos/{owner}/{repo}/collaborators/{user}/permission", get(get_permission))
            .route("/repos/{owner}/{repo}/pulls/{number}", get(get_pull))
            .route("/repos/{owner}/{repo}/issues/{number}/comments", post(post_comment))
            .route("/repos/{owner}/{repo}/hooks", get(list_hooks).post(create_hook))
            .route("/app/installations/{id}/access_tokens", post(mint_installation_token))
            .route("/repos/{owner}/{repo}/hooks/{id}", axum::routing::patch(update_hook).delete(delete_hook))
            .route("/login/oauth/authorize", get(oauth_authorize))
            .route("/login/oauth/access_token", post(oauth_access_token))
            .route("/user", get(oauth_user))
            .with_state(state.clone());
        Self { url: serve(router).await, state }
    }

    pub fn statuses_for(&self, sha: &str) -> Vec<PostedStatus> {
        self.state.statuses.lock().unwrap().iter().filter(|s| s.sha == sha).cloned().collect()
    }

    /// Waits until `sha` has a status in `context` whose state is `state`.
    pub async fn wait_for(&self, sha: &str, context: &str, state: &str) -> Vec<PostedStatus> {
        wait_until(&format!("status {state} for {context} on {sha}"), async || {
            let all = self.statuses_for(sha);
            all.iter().any(|s| s.context == context && s.state == state).then_some(all)
        })
        .await
    }
}

impl FakeGithub {
    /// Signs `login` in on GitHub's web pages (None: nobody), and gives them `permission` (`admin`,
    /// `write`, `read`, `none`) on every repository.
    pub fn web_sign_in(&self, login: Option<&str>, permission: &str) {
        *self.state.web_user.lock().unwrap() = login.map(str::to_string);
        if let Some(login) = login {
            self.state.permissions.lock().unwrap().insert(login.to_string(), permission.to_string());
        }
    }

    /// Adds a hook to `repo` as if made by hand; returns its id.
    pub fn add_hook(&self, repo: &str, mut hook: Value) -> i64 {
        let id = self.state.next_hook_id.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        hook["id"] = json!(id);
        self.state.hooks.lock().unwrap().entry(repo.to_string()).or_default().push(hook);
        id
    }

    pub fn hooks_of(&self, repo: &str) -> Vec<Value> {
        self.state.hooks.lock().unwrap().get(repo).cloned().unwrap_or_default()
    }
}

/// As GitHub shows a hook: the secret hidden.
fn shown(hook: &Value) -> Value {
    let mut hook = hook.clone();
    if hook["config"]["secret"].is_string() {
        hook["config"]["secret"] = json!("********");
    }
    hook
}

async fn list_hooks(
    State(state): State<Arc<FakeGithubState>>,
    UrlPath((owner, repo)): UrlPath<(String, String)>,
) -> Json<Value> {
    let hooks = state.hooks.lock().unwrap().get(&format!("{owner}/{repo}")).cloned().unwrap_or_default();
    Json(Value::Array(hooks.iter().map(shown).collect()))
}

async fn create_hook(
    State(state): State<Arc<FakeGithubState>>,
    UrlPath((owner, repo)): UrlPath<(String, String)>,
    Json(mut hook): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let id = state.next_hook_id.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
    hook["id"] = json!(id);
    state.hooks.lock().unwrap().entry(format!("{owner}/{repo}")).or_default().push(hook.clone());
    (StatusCode::CREATED, Json(shown(&hook)))
}

async fn update_hook(
    State(state): State<Arc<FakeGithubState>>,
    UrlPath((owner, repo, id)): UrlPath<(String, String, i64)>,
    Json(update): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let mut hooks = state.hooks.lock().unwrap();
    let Some(hook) = hooks.get_mut(&format!("{owner}/{repo}")).and_then(|h| h.iter_mut().find(|h| h["id"] == id))
    else {
        return (StatusCode::NOT_FOUND, Json(json!({"message": "Not Found"})));
    };
    for (key, value) in update.as_object().unwrap() {
        hook[key] = value.clone();
    }
    (StatusCode::OK, Json(shown(hook)))
}

async fn delete_hook(
    State(state): State<Arc<FakeGithubState>>,
    UrlPath((owner, repo, id)): UrlPath<(String, String, i64)>,
) -> StatusCode {
    let mut hooks = state.hooks.lock().unwrap();
    let list = hooks.entry(format!("{owner}/{repo}")).or_default();
    let before = list.len();
    list.retain(|h| h["id"] != id);
    if list.len() < before { StatusCode::NO_CONTENT } else { StatusCode::NOT_FOUND }
}

/// What GitHub does for an app: checks the app's JWT (here: its shape and claims, not the
/// signature) and answers an installation token.
async fn mint_installation_token(
    State(state): State<Arc<FakeGithubState>>,
    UrlPath(installation): UrlPath<u64>,
    headers: HeaderMap,
) -> (StatusCode, Json<Value>) {
    use base64::Engine;
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default();
    let claims = auth
        .strip_prefix("Bearer ")
        .and_then(|jwt| jwt.split('.').nth(1))
        .and_then(|payload| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).ok())
        .and_then(|json| serde_json::from_slice::<Value>(&json).ok());
    let Some(claims) = claims else {
        return (StatusCode::UNAUTHORIZED, Json(json!({"message": "A JSON web token could not be decoded"})));
    };
    state.app_tokens.lock().unwrap().push((installation, claims));
    let token = json!({"token": "ghs_installation-test-token", "expires_at": "2099-01-01T00:00:00Z",
        "permissions": {"statuses": "write", "pull_requests": "read", "administration": "write"}});
    (StatusCode::CREATED, Json(token))
}

async fn get_permission(
    State(state): State<Arc<FakeGithubState>>,
    UrlPath((_, _, user)): UrlPath<(String, String, String)>,
) -> Json<Value> {
    let permission = state.permissions.lock().unwrap().get(&user).cloned().unwrap_or_else(|| "none".into());
    Json(json!({ "permission": permission, "user": { "login": user } }))
}

#[derive(serde::Deserialize)]
struct AuthorizeQuery {
    client_id: String,
    redirect_uri: String,
    state: String,
}

/// GitHub's authorize page, the user already signed in and agreeing: back to the app's callback
/// with a one-time code and the app's `state`.
async fn oauth_authorize(
    State(state): State<Arc<FakeGithubState>>,
    axum::extract::Query(query): axum::extract::Query<AuthorizeQuery>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if query.client_id != OAUTH_CLIENT_ID {
        return (StatusCode::NOT_FOUND, "no such OAuth app").into_response();
    }
    let Some(login) = state.web_user.lock().unwrap().clone() else {
        return (StatusCode::UNAUTHORIZED, "nobody is signed in on the fake GitHub").into_response();
    };
    let code = format!("code-{login}-{}", state.oauth_codes.lock().unwrap().len());
    state.oauth_codes.lock().unwrap().insert(code.clone(), login);
    let back = format!(
        "{}?{}",
        query.redirect_uri,
        form_urlencoded::Serializer::new(String::new())
            .append_pair("code", &code)
            .append_pair("state", &query.state)
            .finish()
    );
    axum::response::Redirect::to(&back).into_response()
}

/// Exchanges a code (once) for a token, as GitHub does for the app's id and secret.
async fn oauth_access_token(
    State(state): State<Arc<FakeGithubState>>,
    axum::Form(form): axum::Form<std::collections::HashMap<String, String>>,
) -> Json<Value> {
    let field = |name: &str| form.get(name).cloned().unwrap_or_default();
    if field("client_id") != OAUTH_CLIENT_ID || field("client_secret") != OAUTH_CLIENT_SECRET {
        return Json(json!({"error": "incorrect_client_credentials"}));
    }
    match state.oauth_codes.lock().unwrap().remove(&field("code")) {
        Some(login) => Json(json!({"access_token": format!("gho-{login}"), "token_type": "bearer", "scope": ""})),
        None => Json(
            json!({"error": "bad_verification_code", "error_description": "The code passed is incorrect or expired."}),
        ),
    }
}

/// The user a token from [`oauth_access_token`] belongs to.
async fn oauth_user(headers: HeaderMap) -> (StatusCode, Json<Value>) {
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default();
    match auth.strip_prefix("Bearer gho-").or_else(|| auth.strip_prefix("token gho-")) {
        Some(login) => (StatusCode::OK, Json(json!({"login": login, "id": 1}))),
        None => (StatusCode::UNAUTHORIZED, Json(json!({"message": "Requires authentication"}))),
    }
}

async fn get_pull(
    State(state): State<Arc<FakeGithubState>>,
    UrlPath((_, _, number)): UrlPath<(String, String, u64)>,
) -> (StatusCode, Json<Value>) {
    match state.pulls.lock().unwrap().get(&number) {
        Some(pull) => (StatusCode::OK, Json(pull.clone())),
        None => (StatusCode::NOT_FOUND, Json(json!({ "message": "Not Found" }))),
    }
}

async fn post_comment(
    State(state): State<Arc<FakeGithubState>>,
    UrlPath((_, _, number)): UrlPath<(String, String, u64)>,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let text = body["body"].as_str().unwrap_or_default().to_string();
    state.comments.lock().unwrap().push((number, text.clone()));
    (StatusCode::CREATED, Json(json!({ "id": 1, "body": text })))
}

async fn post_status(
    State(state): State<Arc<FakeGithubState>>,
    UrlPath((owner, repo, sha)): UrlPath<(String, String, String)>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    use std::sync::atomic::Ordering::SeqCst;
    if state.down.load(SeqCst) {
        return (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({"message": "Server Error"}))).into_response();
    }
    if state.rate_limited.fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1)).is_ok() {
        let limited = Json(json!({"message": "You have exceeded a secondary rate limit"}));
        return (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1")], limited).into_response();
    }
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default();
    if !auth.ends_with("test-token") {
        return (StatusCode::UNAUTHORIZED, Json(json!({"message": "Bad credentials"}))).into_response();
    }
    let field = |name: &str| body.get(name).and_then(Value::as_str).unwrap_or_default().to_string();
    state.statuses.lock().unwrap().push(PostedStatus {
        repo: format!("{owner}/{repo}"),
        sha,
        state: field("state"),
        context: field("context"),
        description: field("description"),
        target_url: field("target_url"),
    });
    (StatusCode::CREATED, Json(body)).into_response()
}

/// A `pull_request` event: pull request `number` of `repo` into `base`, its head `sha` in `head_repo`.
pub fn pull_request_payload(action: &str, repo: &str, number: u64, base: &str, sha: &str, head_repo: &str) -> Value {
    json!({
        "action": action,
        "number": number,
        "pull_request": {
            "title": "a pull request",
            "user": {"login": "grace"},
            "head": {"ref": "feature", "sha": sha, "repo": {"full_name": head_repo}},
            "base": {"ref": base, "sha": "1".repeat(40), "repo": {"full_name": repo}}
        },
        "repository": {"full_name": repo}
    })
}

pub fn push_payload(repo: &str, git_ref: &str, sha: &str) -> Value {
    json!({
        "ref": git_ref,
        "before": "0000000000000000000000000000000000000000",
        "after": sha,
        "deleted": sha.chars().all(|c| c == '0'),
        "repository": {"full_name": repo, "name": repo.split('/').nth(1).unwrap()},
        "head_commit": {"id": sha, "message": "a change", "author": {"name": "Ada"}},
        "pusher": {"name": "ada"}
    })
}
