//! GitHub: webhook deliveries in (`events`: signatures and events), commit statuses out
//! (`status`), the REST calls of commands (`api`), the webhooks set up on repositories
//! (`hook_setup`), and sign-in with GitHub (`oauth`).

use anyhow::Context;
use octocrab::Octocrab;
use octocrab::models::{AppId, InstallationId};
use octocrab::service::middleware::retry::RetryConfig;

use crate::config::GithubConfig;

pub mod api;
pub mod events;
pub mod hook_setup;
pub mod oauth;
pub mod status;

/// A GitHub client authenticated with the token, or as the app's installation; None when
/// neither is configured. `retry` lets octocrab retry failed requests itself.
pub fn client(config: &GithubConfig, retry: bool) -> anyhow::Result<Option<Octocrab>> {
    if !config.enabled() {
        return Ok(None);
    }
    let mut builder = Octocrab::builder().base_uri(config.api_url.as_str())?;
    if !retry {
        builder = builder.add_retry_config(RetryConfig::None);
    }
    if config.app_id == 0 {
        return Ok(Some(builder.personal_token(config.token.expose().to_string()).build()?));
    }
    let key = std::fs::read(&config.private_key_path)
        .with_context(|| format!("cannot read [github] private_key_path {}", config.private_key_path.display()))?;
    let app = builder
        .app_from_rsa_pem(AppId(config.app_id), key)
        .context("[github] private_key_path is not an RSA private key in PEM")?
        .build()?;
    Ok(Some(app.installation(InstallationId(config.installation_id))?))
}
