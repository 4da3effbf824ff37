//! Sign-in with GitHub on the monitor, against the fake GitHub over HTTP: the OAuth flow and its
//! `state`, the signed session cookie, the CSRF token, who may cancel and rebuild (write access,
//! as for `@autobuilder rebuild`), signing out, and `[monitor] public = false`.

mod common;

use autobuilder::config::{Config, Secret};
use common::*;
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};

/// A build that runs until it is cancelled.
const LONG: &str = "#!/bin/sh\necho started\nsleep 300\n";
/// A build that passes at once.
const QUICK: &str = "#!/bin/sh\necho done\ntar -czf /tmp/archives/out.tar.gz build.sh\n";

/// The test configuration with sign-in through `github`'s OAuth app, on a port chosen now so that
/// the public URL (the OAuth callback) is where the server listens.
fn signing_in(dir: &std::path::Path, git: &GitHost, github: &FakeGithub) -> Config {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    test_config(dir, git, Some(&github.url)).with(|c| {
        c.listen = format!("127.0.0.1:{port}");
        c.public_url = format!("http://127.0.0.1:{port}");
        c.github.web_url = github.url.clone();
        c.github.client_id = OAUTH_CLIENT_ID.into();
        c.github.client_secret = Secret::new(OAUTH_CLIENT_SECRET);
        c.builds.cancel_grace_seconds = 1;
    })
}

/// An HTTP client that follows no redirect, so each step of the flow is seen.
fn client() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

/// The `name=value` of cookie `name` among a response's `Set-Cookie` headers, and the whole header.
fn set_cookie(response: &reqwest::Response, name: &str) -> (String, String) {
    let header = response
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .find(|v| v.starts_with(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no cookie {name}: {:?}", response.headers()));
    (header.split(';').next().unwrap().to_string(), header)
}

fn location(response: &reqwest::Response) -> String {
    response.headers()[LOCATION].to_str().unwrap().to_string()
}

/// A signed-in user's cookie (`autobuilder_session=...`) and CSRF token.
struct SignedIn {
    cookie: String,
    csrf: String,
}

/// Starts the sign-in: `/login` answers a redirect to GitHub and the state cookie.
async fn start_sign_in(server: &Server) -> (String, String) {
    let response = client().get(format!("{}/login", server.url)).send().await.unwrap();
    assert_eq!(response.status(), 303);
    let (state_cookie, header) = set_cookie(&response, "autobuilder_oauth");
    assert!(header.contains("HttpOnly") && header.contains("SameSite=Lax"), "{header}");
    (location(&response), state_cookie)
}

/// Signs `login` in (with `permission` on every repository) through the whole flow over HTTP.
async fn sign_in(server: &Server, github: &FakeGithub, login: &str, permission: &str) -> SignedIn {
    github.web_sign_in(Some(login), permission);
    let (authorize, state_cookie) = start_sign_in(server).await;
    assert!(authorize.starts_with(&format!("{}/login/oauth/authorize?", github.url)), "{authorize}");
    let response = client().get(&authorize).send().await.unwrap();
    let callback = location(&response);
    assert!(callback.starts_with(&format!("{}/login/callback?", server.url)), "{callback}");
    let response = client().get(&callback).header(COOKIE, &state_cookie).send().await.unwrap();
    assert_eq!(response.status(), 303, "{}", response.text().await.unwrap());
    assert_eq!(location(&response), "/monitor");
    let (cookie, header) = set_cookie(&response, "autobuilder_session");
    for attribute in ["HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(header.contains(attribute), "{header}");
    }
    assert!(!header.contains("Secure"), "the public URL is http: {header}");
    let page = page(server, "/monitor", Some(&cookie)).await;
    assert!(page.contains(&format!(r#"<span id="signed-in">{login}</span>"#)), "{page}");
    let csrf = between(&page, r#"name="csrf" value=""#, "\"").to_string();
    assert_eq!(csrf.len(), 64, "{page}");
    SignedIn { cookie, csrf }
}

fn between<'a>(text: &'a str, start: &str, end: &str) -> &'a str {
    let from = text.find(start).unwrap_or_else(|| panic!("no {start} in {text}")) + start.len();
    &text[from..from + text[from..].find(end).unwrap()]
}

async fn page(server: &Server, path: &str, cookie: Option<&str>) -> String {
    let mut request = client().get(format!("{}{path}", server.url));
    if let Some(cookie) = cookie {
        request = request.header(COOKIE, cookie);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200, "{path}");
    response.text().await.unwrap()
}

/// POSTs `/build/<id>/<action>` with a session cookie and a CSRF token (each optional).
async fn act(server: &Server, id: i64, action: &str, cookie: Option<&str>, csrf: Option<&str>) -> (u16, String) {
    let mut request = client().post(format!("{}/build/{id}/{action}", server.url));
    if let Some(cookie) = cookie {
        request = request.header(COOKIE, cookie);
    }
    if let Some(csrf) = csrf {
        request = request.header("x-csrf-token", csrf);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_writer_signs_in_with_github_cancels_and_rebuilds_from_the_page_then_signs_out() {
    let (git, sha) = one_script_app(LONG);
    let github = FakeGithub::start().await;
    let server = Server::start(|dir| signing_in(dir, &git, &github));
    let id = server.push_builds("org/app", "master", &sha).await[0];
    server.wait_running(id).await;
    github.web_sign_in(Some("ada"), "write");

    let browser = Browser::start().await;
    browser.goto(&format!("{}/monitor/build/{id}", server.url)).await;
    assert_eq!(browser.eval("return document.getElementById('actions') === null").await, true, "not signed in");
    browser.eval("document.getElementById('sign-in').click()").await;
    // Back on the page where the sign-in started.
    let back = format!(
        "return location.pathname === '/monitor/build/{id}' && document.getElementById('signed-in')?.textContent === 'ada'"
    );
    browser.wait_for("the build page, signed in", &back).await;
    let buttons =
        "return [document.getElementById('cancel-build').hidden, document.getElementById('rebuild-build').hidden]";
    assert_eq!(browser.eval(buttons).await, serde_json::json!([false, true]), "cancel while it runs");
    browser.eval("document.getElementById('cancel-build').click()").await;
    browser
        .wait_for(
            "the build to be cancelled",
            "return document.querySelector('#status .badge').textContent === 'cancelled'",
        )
        .await;
    let build = server.wait_build(id).await;
    assert_eq!((build["status"].as_str(), build["error"].as_str()), (Some("cancelled"), Some("cancelled by ada")));
    browser.wait_for("the rebuild button", "return !document.getElementById('rebuild-build').hidden").await;

    browser.eval("document.getElementById('rebuild-build').click()").await;
    let new = browser
        .wait_for(
            "the page of the rebuild",
            &format!("const m = location.pathname.match(/^\\/monitor\\/build\\/(\\d+)$/); return m && Number(m[1]) !== {id} && Number(m[1])"),
        )
        .await;
    let (_, rebuilt) = server.get_json(&format!("/build/{new}")).await;
    assert_eq!(rebuilt["commit"], sha.as_str(), "{rebuilt}");

    browser.eval("document.getElementById('sign-out').click()").await;
    browser
        .wait_for(
            "the sign-in link again",
            "return location.pathname === '/monitor' && document.getElementById('sign-in') !== null",
        )
        .await;
    browser.goto(&format!("{}/monitor/build/{new}", server.url)).await;
    assert_eq!(
        browser.eval("return document.getElementById('actions') === null").await,
        true,
        "signed out: no buttons"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn only_a_writer_with_the_csrf_token_may_act_and_the_admin_token_still_works() {
    let (git, sha) = one_script_app(LONG);
    let github = FakeGithub::start().await;
    let server = Server::start(|dir| signing_in(dir, &git, &github).with(admin));
    let id = server.push_builds("org/app", "master", &sha).await[0];
    server.wait_running(id).await;

    // A reader sees the page, no buttons, and the endpoint refuses them.
    let reader = sign_in(&server, &github, "rita", "read").await;
    let build_page = page(&server, &format!("/monitor/build/{id}"), Some(&reader.cookie)).await;
    assert!(build_page.contains(r#"id="signed-in""#) && !build_page.contains(r#"id="actions""#), "{build_page}");
    let (code, body) = act(&server, id, "cancel", Some(&reader.cookie), Some(&reader.csrf)).await;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("rita has no write access to org/app"), "{body}");

    // Nobody signed in: told to sign in.
    let (code, body) = act(&server, id, "cancel", None, None).await;
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("/login"), "{body}");

    // A writer's page has the buttons and the token; without it, or with another, refused.
    let writer = sign_in(&server, &github, "ada", "write").await;
    let build_page = page(&server, &format!("/monitor/build/{id}"), Some(&writer.cookie)).await;
    assert!(build_page.contains(&format!(r#"data-csrf="{}""#, writer.csrf)), "{build_page}");
    for csrf in [None, Some(reader.csrf.as_str()), Some("")] {
        let (code, body) = act(&server, id, "cancel", Some(&writer.cookie), csrf).await;
        assert_eq!(code, 403, "{csrf:?}: {body}");
        assert!(body.contains("CSRF"), "{body}");
    }
    let (_, build) = server.get_json(&format!("/build/{id}")).await;
    assert_eq!(build["status"], "running", "nothing refused was done");

    let (code, body) = act(&server, id, "cancel", Some(&writer.cookie), Some(&writer.csrf)).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(server.wait_build(id).await["error"], "cancelled by ada");

    // A script with the admin token needs neither cookie nor CSRF token.
    let (code, body) = server.admin_post(&format!("/build/{id}/rebuild"), Some(ADMIN_TOKEN)).await;
    assert_eq!(code, 202, "{body}");
    let new = body["builds"][0].as_i64().unwrap();
    let (code, body) = server.admin_post(&format!("/build/{new}/cancel"), Some("wrong")).await;
    assert_eq!(code, 401, "{body}");
    let (code, body) = server.admin_post(&format!("/build/{new}/cancel"), Some(ADMIN_TOKEN)).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(server.wait_build(new).await["error"], "cancelled by an admin");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forged_state_or_a_tampered_cookie_signs_nobody_in_and_signing_out_needs_the_token() {
    let (git, sha) = one_script_app(QUICK);
    let github = FakeGithub::start().await;
    let server = Server::start(|dir| signing_in(dir, &git, &github));
    let id = server.push_builds("org/app", "master", &sha).await[0];
    server.wait_build(id).await;
    github.web_sign_in(Some("ada"), "write");

    // Forged state: a callback whose state is not the one this browser was given.
    let (authorize, state_cookie) = start_sign_in(&server).await;
    let callback = location(&client().get(&authorize).send().await.unwrap());
    let code = between(&callback, "code=", "&");
    let (_, other_cookie) = start_sign_in(&server).await;
    for (state, cookie) in [
        ("forged", Some(state_cookie.as_str())),
        (between(&format!("{callback}&"), "state=", "&"), None),
        (between(&format!("{callback}&"), "state=", "&"), Some(other_cookie.as_str())),
    ] {
        let mut request = client().get(format!("{}/login/callback?code={code}&state={state}", server.url));
        if let Some(cookie) = cookie {
            request = request.header(COOKIE, cookie);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 403, "state {state}, cookie {cookie:?}");
        assert!(response.headers().get(SET_COOKIE).is_none(), "no session for a forged state");
        assert!(response.text().await.unwrap().contains("sign in again at /login"));
    }
    let unknown = format!("{}/login/callback?code=nope&{}", server.url, callback.split_once('&').unwrap().1);
    let response = client().get(unknown).header(COOKIE, &state_cookie).send().await.unwrap();
    assert_eq!(response.status(), 502, "GitHub refuses an unknown code");
    assert!(response.text().await.unwrap().contains("GitHub refused the sign-in code"));

    // A tampered cookie is nobody's session: another login, or another signature.
    let ada = sign_in(&server, &github, "ada", "write").await;
    let (name, value) = ada.cookie.split_once('=').unwrap();
    let mac = value.rsplit('.').next().unwrap();
    let flipped = format!("{}{}", &mac[..mac.len() - 1], if mac.ends_with('0') { '1' } else { '0' });
    for tampered in
        [format!("{name}={}", value.replacen("ada", "eve", 1)), format!("{name}={}", value.replacen(mac, &flipped, 1))]
    {
        let monitor = page(&server, "/monitor", Some(&tampered)).await;
        assert!(monitor.contains(r#"id="sign-in""#) && !monitor.contains("signed-in"), "{tampered}");
        let (code, body) = act(&server, id, "rebuild", Some(&tampered), Some(&ada.csrf)).await;
        assert_eq!(code, 401, "{tampered}: {body}");
    }

    // Signing out takes the CSRF token (a forged form cannot sign anyone out) and drops the cookie.
    let logout = |csrf: &str| {
        client()
            .post(format!("{}/logout", server.url))
            .header(COOKIE, &ada.cookie)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("csrf={csrf}"))
            .send()
    };
    assert_eq!(logout("wrong").await.unwrap().status(), 403);
    let response = logout(&ada.csrf).await.unwrap();
    assert_eq!((response.status().as_u16(), location(&response)), (303, "/monitor".into()));
    let (cleared, header) = set_cookie(&response, "autobuilder_session");
    assert!(cleared == "autobuilder_session=" && header.contains("Max-Age=0"), "{header}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_private_monitor_shows_builds_only_to_signed_in_readers() {
    let (git, sha) = one_script_app(QUICK);
    let github = FakeGithub::start().await;
    let server = Server::start(|dir| signing_in(dir, &git, &github).with(|c| c.monitor.public = false));
    // Webhooks, health and static files stay open.
    let id = server.push_builds("org/app", "master", &sha).await[0];
    for open in ["/healthz", "/static/style.css"] {
        assert_eq!(client().get(format!("{}{open}", server.url)).send().await.unwrap().status(), 200, "{open}");
    }
    let reads = [
        "/monitor".to_string(),
        format!("/monitor/build/{id}"),
        "/build/status".into(),
        "/build/history".into(),
        format!("/build/{id}"),
        format!("/build/{id}/log"),
        "/build/logs/org/app/master".into(),
        "/badge/org/app/master.svg".into(),
        "/live".into(),
    ];

    // Nobody: an API client gets 401, a browser is sent to sign in and back.
    for path in &reads {
        let response = client().get(format!("{}{path}", server.url)).send().await.unwrap();
        assert_eq!(response.status(), 401, "{path}");
    }
    let head = client().head(format!("{}/build/{id}/log", server.url)).send().await.unwrap();
    assert_eq!(head.status(), 401, "HEAD is a read too");
    let response =
        client().get(format!("{}/monitor/build/{id}", server.url)).header("accept", "text/html").send().await.unwrap();
    assert_eq!(response.status(), 303);
    assert_eq!(location(&response), format!("/login?next=%2Fmonitor%2Fbuild%2F{id}"));

    // Signed in without access to the repositories: 403.
    let stranger = sign_in_private(&server, &github, "sam", "none").await;
    for path in &reads {
        let response = client().get(format!("{}{path}", server.url)).header(COOKIE, &stranger).send().await.unwrap();
        assert_eq!(response.status(), 403, "{path}");
        assert!(response.text().await.unwrap().contains("sam has no read access"), "{path}");
    }

    // A reader sees everything (the websocket asks for an upgrade, which plain GET is not).
    let reader = sign_in_private(&server, &github, "rita", "read").await;
    wait_until(&format!("build {id} to finish"), async || {
        let response = client().get(format!("{}/build/{id}", server.url)).header(COOKIE, &reader).send().await.ok()?;
        let build: serde_json::Value = response.json().await.ok()?;
        (build["status"] == "success").then_some(())
    })
    .await;
    for path in reads.iter().filter(|p| *p != "/live") {
        let response = client().get(format!("{}{path}", server.url)).header(COOKIE, &reader).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
}

/// Signs in on a private monitor, where `/monitor` itself needs access: only the cookie is kept.
async fn sign_in_private(server: &Server, github: &FakeGithub, login: &str, permission: &str) -> String {
    github.web_sign_in(Some(login), permission);
    let (authorize, state_cookie) = start_sign_in(server).await;
    let callback = location(&client().get(&authorize).send().await.unwrap());
    let response = client().get(&callback).header(COOKIE, &state_cookie).send().await.unwrap();
    assert_eq!(response.status(), 303);
    set_cookie(&response, "autobuilder_session").0
}
