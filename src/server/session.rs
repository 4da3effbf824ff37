//! Sign-in with GitHub on the monitor: the OAuth flow (`/login`, `/login/callback`, `/logout`), the
//! signed session cookie and its CSRF token, who may read or act on a repository, and the gate of
//! `[monitor] public = false`. docs/security.md lists the attacks this stops and their tests.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::extract::{FromRequestParts, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::ApiError;
use crate::app::App;
use crate::config::Config;
use crate::github::oauth::OAuthApp;
use crate::model::{BuildId, RepoName};

/// The cookie of a signed-in user.
const SESSION_COOKIE: &str = "autobuilder_session";
/// The cookie holding the OAuth `state` between `/login` and `/login/callback`.
const STATE_COOKIE: &str = "autobuilder_oauth";
/// How long a sign-in at GitHub may take.
const STATE_SECONDS: i64 = 600;
/// How long GitHub's answer about a user's permission on a repository is believed.
const PERMISSION_TTL: Duration = Duration::from_secs(60);
/// The header a page's script sends its CSRF token in (a form sends the field `csrf`).
pub const CSRF_HEADER: &str = "x-csrf-token";

/// What a user may do with a repository, from GitHub's collaborator permission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    None,
    /// `read` or `triage`: may see its builds when `[monitor] public = false`.
    Read,
    /// `write`, `maintain` or `admin`: may cancel and rebuild, as `@autobuilder rebuild`.
    Write,
}

impl Access {
    fn of(permission: &str) -> Self {
        match permission {
            "admin" | "maintain" | "write" => Access::Write,
            "triage" | "read" => Access::Read,
            _ => Access::None,
        }
    }
}

/// A signed-in user, as the session cookie says.
#[derive(Debug, Clone)]
pub struct Session {
    pub login: String,
    /// Sent back with every state-changing request (header `X-CSRF-Token` or form field `csrf`).
    pub csrf: String,
}

/// Sign-in: the OAuth app, the key that signs cookies, and GitHub's recent permission answers.
pub struct Auth {
    oauth: Option<OAuthApp>,
    key: Vec<u8>,
    /// Cookies get `Secure` when the public URL is https.
    secure: bool,
    session_seconds: i64,
    callback_url: String,
    permissions: Mutex<HashMap<(String, String), (Instant, Access)>>,
}

impl Auth {
    pub fn new(config: &Config) -> anyhow::Result<Self> {
        // Without sign-in no cookie is ever read or written, so no key is needed.
        let key = match config.monitor.session_secret.expose() {
            _ if !config.github.sign_in() => Vec::new(),
            "" => stored_key(&config.data_dir.join("session.key"))?,
            secret => secret.as_bytes().to_vec(),
        };
        Ok(Self {
            oauth: OAuthApp::new(&config.github)?,
            key,
            secure: config.public_url.starts_with("https://"),
            session_seconds: i64::try_from(config.monitor.session_hours).unwrap_or(i64::MAX / 7200) * 3600,
            callback_url: format!("{}/login/callback", config.public_url),
            permissions: Mutex::default(),
        })
    }

    /// Whether sign-in is configured (`[github] client_id`).
    pub fn enabled(&self) -> bool {
        self.oauth.is_some()
    }

    /// The session of a request's cookie, when it is signed by this server and not expired.
    pub fn session(&self, headers: &HeaderMap) -> Option<Session> {
        if !self.enabled() {
            return None;
        }
        let value = cookie(headers, SESSION_COOKIE)?;
        let [login, expires, csrf, mac] = split4(&value)?;
        self.verify(&format!("session|{login}|{expires}|{csrf}"), mac)?;
        let expires: i64 = expires.parse().ok()?;
        (expires > now()).then(|| Session { login: login.to_string(), csrf: csrf.to_string() })
    }

    fn session_cookie(&self, login: &str) -> String {
        let (expires, csrf) = (now() + self.session_seconds, random_hex());
        let mac = self.sign(&format!("session|{login}|{expires}|{csrf}"));
        self.cookie(SESSION_COOKIE, &format!("{login}.{expires}.{csrf}.{mac}"), "/", self.session_seconds)
    }

    fn cookie(&self, name: &str, value: &str, path: &str, max_age: i64) -> String {
        let secure = if self.secure { "; Secure" } else { "" };
        format!("{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}")
    }

    fn sign(&self, text: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key");
        mac.update(text.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    fn verify(&self, text: &str, mac: &str) -> Option<()> {
        let mut expected = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key");
        expected.update(text.as_bytes());
        expected.verify_slice(&hex::decode(mac).ok()?).ok()
    }

    /// What `login` may do with `repo` (GitHub asked with the server's token, as for
    /// `@autobuilder rebuild`; answers kept a minute). GitHub unreachable: nothing.
    pub async fn access(&self, app: &App, repo: &RepoName, login: &str) -> Access {
        let key = (repo.to_string(), login.to_string());
        if let Some((at, access)) = self.permissions.lock().expect("not poisoned").get(&key)
            && at.elapsed() < PERMISSION_TTL
        {
            return *access;
        }
        let Some(github) = &app.github else { return Access::None };
        match github.permission(repo, login).await {
            Ok(permission) => {
                let access = Access::of(&permission);
                self.permissions.lock().expect("not poisoned").insert(key, (Instant::now(), access));
                access
            }
            Err(error) => {
                tracing::warn!("cannot check {login}'s permission on {repo}: {error:#}");
                Access::None
            }
        }
    }

    /// Whether `login` may read every project's recipes repository: the lists (overview, history,
    /// status, live events, artifacts) show the builds of every project.
    async fn reads_every_project(&self, app: &App, login: &str) -> bool {
        for project in app.config.projects.values() {
            let Ok(repo) = RepoName::parse(&project.recipes) else { return false };
            if self.access(app, &repo, login).await < Access::Read {
                return false;
            }
        }
        true
    }
}

/// The HMAC key kept in `path`, made (32 random bytes, readable by the owner only) when missing.
fn stored_key(path: &Path) -> anyhow::Result<Vec<u8>> {
    match std::fs::read_to_string(path) {
        Ok(text) if !text.trim().is_empty() => return Ok(text.trim().as_bytes().to_vec()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read the session key {}", path.display())),
    }
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let key = random_hex();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write the session key {}", path.display()))?;
    file.write_all(key.as_bytes())?;
    Ok(key.into_bytes())
}

/// 32 random bytes from the kernel, in hex.
fn random_hex() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).expect("/dev/urandom is readable");
    hex::encode(bytes)
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn split4(value: &str) -> Option<[&str; 4]> {
    let mut parts = value.split('.');
    let four = [parts.next()?, parts.next()?, parts.next()?, parts.next()?];
    parts.next().is_none().then_some(four)
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_string())
}

/// Compares without stopping at the first difference.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn auth_of(parts: &Parts) -> Arc<Auth> {
    parts.extensions.get::<Arc<Auth>>().cloned().expect("the router adds Auth to every request")
}

/// Who is looking at a page: a signed-in user, or nobody.
pub struct Viewer {
    pub auth: Arc<Auth>,
    pub session: Option<Session>,
    /// The page asked for, to come back to after signing in.
    path: String,
}

impl<S: Send + Sync> FromRequestParts<S> for Viewer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let auth = auth_of(parts);
        let session = auth.session(&parts.headers);
        let path = parts.uri.path_and_query().map_or("/monitor", |p| p.as_str()).to_string();
        Ok(Viewer { auth, session, path })
    }
}

/// What the header of every page shows: the sign-in link, or who is signed in and a sign-out form.
#[derive(Serialize)]
pub struct PageAuth {
    pub sign_in: bool,
    /// `/login?next=<this page>`.
    pub login_url: String,
    pub login: Option<String>,
    pub csrf: String,
    /// Whether the viewer may cancel and rebuild the build the page shows.
    pub can_act: bool,
}

impl Viewer {
    /// The page's view of sign-in; `repo` is the repository of the build shown, if any.
    pub async fn page(&self, app: &App, repo: Option<&RepoName>) -> PageAuth {
        let can_act = match (&self.session, repo) {
            (Some(session), Some(repo)) => self.auth.access(app, repo, &session.login).await == Access::Write,
            _ => false,
        };
        let next = form_urlencoded::Serializer::new(String::new()).append_pair("next", &self.path).finish();
        PageAuth {
            sign_in: self.auth.enabled(),
            login_url: format!("/login?{next}"),
            login: self.session.as_ref().map(|s| s.login.clone()),
            csrf: self.session.as_ref().map(|s| s.csrf.clone()).unwrap_or_default(),
            can_act,
        }
    }
}

/// A signed-in user whose request carries the session's CSRF token (header `X-CSRF-Token`).
/// None when the request has no session cookie; refused (403) when the token is missing or wrong.
pub struct SignedIn(pub Option<Session>);

impl<S: Send + Sync> FromRequestParts<S> for SignedIn {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let Some(session) = auth_of(parts).session(&parts.headers) else { return Ok(SignedIn(None)) };
        let token = parts.headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok()).unwrap_or_default();
        if !same(token, &session.csrf) {
            return Err(csrf_refused());
        }
        Ok(SignedIn(Some(session)))
    }
}

fn csrf_refused() -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "missing or wrong CSRF token (X-CSRF-Token): reload the page and try again")
}

fn not_configured() -> ApiError {
    ApiError::not_found("sign-in is not configured: set [github] client_id and client_secret (an OAuth app)")
}

#[derive(Deserialize)]
pub struct LoginQuery {
    next: Option<String>,
}

/// `GET /login[?next=/monitor/...]`: to GitHub's authorize page, with a fresh `state` that the
/// browser keeps in a short-lived signed cookie.
pub async fn login(viewer: Viewer, Query(query): Query<LoginQuery>) -> Result<Response, ApiError> {
    let auth = viewer.auth;
    let oauth = auth.oauth.as_ref().ok_or_else(not_configured)?;
    let next = local_path(query.next.as_deref());
    let (state, expires) = (random_hex(), now() + STATE_SECONDS);
    let next_hex = hex::encode(next);
    let mac = auth.sign(&format!("oauth|{state}|{expires}|{next_hex}"));
    let cookie = auth.cookie(STATE_COOKIE, &format!("{state}.{expires}.{next_hex}.{mac}"), "/login", STATE_SECONDS);
    let mut response = Redirect::to(&oauth.authorize_url(&auth.callback_url, &state)).into_response();
    response.headers_mut().insert(header::SET_COOKIE, header_value(&cookie));
    Ok(response)
}

/// A path on this server to go back to after signing in (anything else: the monitor).
fn local_path(next: Option<&str>) -> &str {
    match next {
        Some(path) if path.starts_with('/') && !path.starts_with("//") && !path.contains('\\') => path,
        _ => "/monitor",
    }
}

#[derive(Deserialize)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error_description: Option<String>,
}

/// `GET /login/callback?code=&state=`: checks `state` against the cookie `/login` set, asks GitHub
/// whose code it is, and signs that user in.
pub async fn callback(
    viewer: Viewer,
    headers: HeaderMap,
    Query(query): Query<CallbackQuery>,
) -> Result<Response, ApiError> {
    let auth = viewer.auth;
    let oauth = auth.oauth.as_ref().ok_or_else(not_configured)?;
    if let Some(why) = query.error_description {
        return Err(ApiError::new(StatusCode::FORBIDDEN, format!("GitHub did not sign you in: {why}")));
    }
    let forged = || {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "the sign-in state does not match this browser's (expired, or not started here): sign in again at /login",
        )
    };
    let cookie = cookie(&headers, STATE_COOKIE).ok_or_else(forged)?;
    let [state, expires, next_hex, mac] = split4(&cookie).ok_or_else(forged)?;
    auth.verify(&format!("oauth|{state}|{expires}|{next_hex}"), mac).ok_or_else(forged)?;
    let given = query.state.unwrap_or_default();
    if !same(&given, state) || expires.parse::<i64>().map_or(true, |e| e <= now()) {
        return Err(forged());
    }
    let code = query
        .code
        .filter(|c| !c.is_empty())
        .ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "GitHub sent no code: sign in again at /login"))?;
    let login = oauth.login(&code, &auth.callback_url).await.map_err(|e| {
        tracing::warn!("sign-in failed: {e:#}");
        ApiError::new(StatusCode::BAD_GATEWAY, format!("sign-in failed: {e:#}"))
    })?;
    tracing::info!("{login} signed in");
    let next = String::from_utf8(hex::decode(next_hex).unwrap_or_default()).unwrap_or_default();
    let mut response = Redirect::to(local_path(Some(&next))).into_response();
    let headers = response.headers_mut();
    headers.append(header::SET_COOKIE, header_value(&auth.session_cookie(&login)));
    headers.append(header::SET_COOKIE, header_value(&auth.cookie(STATE_COOKIE, "", "/login", 0)));
    Ok(response)
}

#[derive(Deserialize)]
pub struct LogoutForm {
    csrf: Option<String>,
}

/// `POST /logout` (form field `csrf`, or header `X-CSRF-Token`): forgets the session cookie.
pub async fn logout(
    viewer: Viewer,
    headers: HeaderMap,
    axum::Form(form): axum::Form<LogoutForm>,
) -> Result<Response, ApiError> {
    let auth = viewer.auth;
    let Some(session) = viewer.session else {
        return Ok(Redirect::to("/monitor").into_response());
    };
    let given = form.csrf.or_else(|| headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok()).map(str::to_string));
    if !same(&given.unwrap_or_default(), &session.csrf) {
        return Err(csrf_refused());
    }
    tracing::info!("{} signed out", session.login);
    let mut response = Redirect::to("/monitor").into_response();
    response.headers_mut().insert(header::SET_COOKIE, header_value(&auth.cookie(SESSION_COOKIE, "", "/", 0)));
    Ok(response)
}

fn header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).expect("cookies are printable ASCII")
}

/// What a read request shows, for `[monitor] public = false`.
enum Scope {
    /// One build (its page, record, log): read access to its repository.
    Build(BuildId),
    /// One repository's branch (badge, newest log): read access to it.
    Repository(String),
    /// Builds of every project (lists, live events, artifacts): read access to every project's
    /// recipes repository.
    Everything,
}

/// The scope of a GET to `path` that `[monitor] public = false` closes; None for what stays open
/// (webhooks, health, static files, sign-in).
fn scope(path: &str) -> Option<Scope> {
    let build_id = |text: &str| text.parse().ok().map(BuildId);
    let repository = |rest: &str| {
        let mut parts = rest.splitn(3, '/');
        Some(Scope::Repository(format!("{}/{}", parts.next()?, parts.next()?)))
    };
    if path == "/monitor" || path == "/build/status" || path == "/build/history" || path.starts_with("/live") {
        return Some(Scope::Everything);
    }
    if path.starts_with("/artifacts/") || path == "/monitor/" {
        return Some(Scope::Everything);
    }
    if let Some(rest) = path.strip_prefix("/monitor/build/") {
        return Some(build_id(rest).map_or(Scope::Everything, Scope::Build));
    }
    if let Some(rest) = path.strip_prefix("/build/logs/").or_else(|| path.strip_prefix("/badge/")) {
        return Some(repository(rest).unwrap_or(Scope::Everything));
    }
    if let Some(rest) = path.strip_prefix("/build/") {
        let id = rest.strip_suffix("/log").unwrap_or(rest);
        return Some(build_id(id).map_or(Scope::Everything, Scope::Build));
    }
    None
}

/// Middleware of `[monitor] public = false`: a read request needs a signed-in user who may read
/// what it shows. A browser without a session is sent to sign in; an API client gets 401.
pub async fn gate(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    if app.config.monitor.public || !matches!(*request.method(), Method::GET | Method::HEAD) {
        return next.run(request).await;
    }
    let Some(scope) = scope(request.uri().path()) else { return next.run(request).await };
    let auth = request.extensions().get::<Arc<Auth>>().cloned().expect("the router adds Auth to every request");
    let Some(session) = auth.session(request.headers()) else {
        let browser = request
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("text/html"));
        if browser {
            let next_path = request.uri().path_and_query().map_or("/monitor", |p| p.as_str());
            let query = form_urlencoded::Serializer::new(String::new()).append_pair("next", next_path).finish();
            return Redirect::to(&format!("/login?{query}")).into_response();
        }
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "this server's monitor is private: sign in with GitHub at /login",
        )
        .into_response();
    };
    let repository = match scope {
        Scope::Everything => None,
        Scope::Repository(name) => RepoName::parse(&name).ok(),
        Scope::Build(id) => match app.store.get(id).await {
            Ok(Some(build)) => Some(build.new.repository),
            Ok(None) => return next.run(request).await, // its 404 says no more than the id
            Err(error) => return ApiError::from(error).into_response(),
        },
    };
    let allowed = match &repository {
        Some(repo) => auth.access(&app, repo, &session.login).await >= Access::Read,
        None => auth.reads_every_project(&app, &session.login).await,
    };
    if !allowed {
        let what = repository.map_or("every project's recipes repository".to_string(), |r| r.to_string());
        let message = format!("{} has no read access to {what} on GitHub", session.login);
        return ApiError::new(StatusCode::FORBIDDEN, message).into_response();
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Auth {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut config = Config::default();
        config.github.client_id = "id".into();
        config.monitor.session_secret = crate::config::Secret::new("k");
        Auth::new(&config).unwrap()
    }

    fn with_cookie(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, header_value(&format!("other=1; {value}")));
        headers
    }

    #[test]
    fn a_session_cookie_is_read_back_and_a_tampered_one_is_not() {
        let auth = auth();
        let set = auth.session_cookie("ada");
        assert!(set.contains("HttpOnly") && set.contains("SameSite=Lax") && !set.contains("Secure"), "{set}");
        let pair = set.split(';').next().unwrap();
        let session = auth.session(&with_cookie(pair)).expect("the cookie it set");
        assert_eq!(session.login, "ada");
        assert_eq!(session.csrf.len(), 64);

        let value = pair.strip_prefix("autobuilder_session=").unwrap();
        let tampered = value.replacen("ada", "eve", 1);
        assert!(auth.session(&with_cookie(&format!("{SESSION_COOKIE}={tampered}"))).is_none());
        let [login, _, csrf, mac] = split4(value).unwrap();
        let later = format!("{SESSION_COOKIE}={login}.99999999999.{csrf}.{mac}");
        assert!(auth.session(&with_cookie(&later)).is_none(), "a changed expiry breaks the signature");
        let expires = now() - 1;
        let old = format!("{login}.{expires}.{csrf}.{}", auth.sign(&format!("session|{login}|{expires}|{csrf}")));
        assert!(auth.session(&with_cookie(&format!("{SESSION_COOKIE}={old}"))).is_none(), "expired");
    }

    #[test]
    fn cookies_are_secure_when_the_public_url_is_https() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut config = Config::default();
        config.github.client_id = "id".into();
        config.monitor.session_secret = crate::config::Secret::new("k");
        config.public_url = "https://ci.example".into();
        let cookie = Auth::new(&config).unwrap().session_cookie("ada");
        assert!(cookie.ends_with("; Secure"), "{cookie}");
    }

    #[test]
    fn only_local_paths_are_returned_to() {
        assert_eq!(local_path(Some("/monitor/build/3")), "/monitor/build/3");
        for outside in ["//evil.example", "https://evil.example", "/\\evil.example", ""] {
            assert_eq!(local_path(Some(outside)), "/monitor", "{outside}");
        }
    }

    #[test]
    fn the_gate_knows_what_each_path_shows() {
        assert!(matches!(scope("/monitor/build/12"), Some(Scope::Build(BuildId(12)))));
        assert!(matches!(scope("/build/12/log"), Some(Scope::Build(BuildId(12)))));
        assert!(matches!(scope("/badge/org/app/feature/x.svg"), Some(Scope::Repository(r)) if r == "org/app"));
        assert!(matches!(scope("/build/history"), Some(Scope::Everything)));
        assert!(matches!(scope("/live"), Some(Scope::Everything)));
        for open in ["/static/style.css", "/healthz", "/login", "/login/callback", "/"] {
            assert!(scope(open).is_none(), "{open}");
        }
    }
}
