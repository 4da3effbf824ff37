//! Sign-in with GitHub (the OAuth web flow): where to send the browser, and the GitHub login a
//! returned code belongs to (the code exchanged for a token, then `GET /user` with it).

use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

use crate::config::GithubConfig;

/// How long one call to GitHub may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// The OAuth app of `[github] client_id`, at `[github] web_url` and `api_url`.
pub struct OAuthApp {
    web_url: String,
    api_url: String,
    client_id: String,
    client_secret: String,
    http: reqwest::Client,
}

impl OAuthApp {
    /// The app, or None when sign-in is not configured.
    pub fn new(config: &GithubConfig) -> anyhow::Result<Option<Self>> {
        if !config.sign_in() {
            return Ok(None);
        }
        let http = reqwest::Client::builder().timeout(REQUEST_TIMEOUT).user_agent("autobuilder").build()?;
        Ok(Some(Self {
            web_url: config.web_url.trim_end_matches('/').to_string(),
            api_url: config.api_url.trim_end_matches('/').to_string(),
            client_id: config.client_id.clone(),
            client_secret: config.client_secret.expose().to_string(),
            http,
        }))
    }

    /// GitHub's page asking the user to let this app know who they are; it sends the browser back
    /// to `redirect_uri` with a code and `state`. No scope: only the public profile.
    pub fn authorize_url(&self, redirect_uri: &str, state: &str) -> String {
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("client_id", &self.client_id)
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("state", state)
            .append_pair("allow_signup", "false")
            .finish();
        format!("{}/login/oauth/authorize?{query}", self.web_url)
    }

    /// The login of the user who was given `code`.
    pub async fn login(&self, code: &str, redirect_uri: &str) -> anyhow::Result<String> {
        let body = form_urlencoded::Serializer::new(String::new())
            .append_pair("client_id", &self.client_id)
            .append_pair("client_secret", &self.client_secret)
            .append_pair("code", code)
            .append_pair("redirect_uri", redirect_uri)
            .finish();
        let answer: Value = self
            .http
            .post(format!("{}/login/oauth/access_token", self.web_url))
            .header("accept", "application/json")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .context("GitHub did not answer the code exchange")?
            .json()
            .await
            .context("GitHub's answer to the code exchange is not JSON")?;
        let Some(token) = answer["access_token"].as_str() else {
            let why = answer["error_description"].as_str().or(answer["error"].as_str()).unwrap_or("no access_token");
            bail!("GitHub refused the sign-in code: {why}");
        };
        let response = self
            .http
            .get(format!("{}/user", self.api_url))
            .bearer_auth(token)
            .header("accept", "application/vnd.github+json")
            .send()
            .await
            .context("GitHub did not answer GET /user")?;
        if !response.status().is_success() {
            bail!("GitHub answered {} to GET /user", response.status());
        }
        let user: Value = response.json().await.context("GitHub's GET /user is not JSON")?;
        let login = user["login"].as_str().context("GitHub's GET /user has no login")?;
        if login.is_empty() || !login.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            bail!("GitHub's GET /user gave an unexpected login {login:?}");
        }
        Ok(login.to_string())
    }
}
