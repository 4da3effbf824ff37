//! The Zero-OS hub store (threefoldtech/0-hub API): upload the `.tar.gz` as a flist with a bearer
//! token (streamed from the file), then point the moving link at it.

use std::path::Path;
use std::time::Duration;

use reqwest::multipart::{Form, Part};
use serde::Deserialize;

use super::{ArtifactNames, Published, sha256_file};
use crate::config::HubConfig;

/// How long one hub request may take (uploads can be large).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(600);

pub struct HubStore {
    client: reqwest::Client,
    url: String,
    token: String,
}

/// The hub's reply envelope: `{"status": "success"|"error", "message": ..., "payload": ...}`.
#[derive(Deserialize)]
struct Reply {
    status: Option<String>,
    message: Option<String>,
    payload: Option<serde_json::Value>,
}

impl HubStore {
    pub fn new(config: &HubConfig) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build()?;
        Ok(Self { client, url: config.url.trim_end_matches('/').to_string(), token: config.token.expose().to_string() })
    }

    pub async fn publish(&self, file: &Path, names: &ArtifactNames) -> Result<Published, String> {
        let sha256 = sha256_file(file).await.map_err(|e| format!("cannot read the artifact: {e}"))?;
        // Streamed from the file, never held in memory (artifacts can be gigabytes).
        let opened = tokio::fs::File::open(file).await.map_err(|e| format!("cannot read the artifact: {e}"))?;
        let length = opened.metadata().await.map_err(|e| format!("cannot read the artifact: {e}"))?.len();
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(opened));
        let upload_name = format!("{}.tar.gz", names.versioned.trim_end_matches(".tar.gz"));
        let part = Part::stream_with_length(body, length).file_name(upload_name);
        let form = Form::new().part("file", part.mime_str("application/gzip").expect("valid mime"));
        let reply = self
            .call(self.client.post(format!("{}/api/flist/me/upload", self.url)).multipart(form))
            .await
            .map_err(|e| format!("hub upload failed: {e}"))?;
        let flist = reply
            .payload
            .as_ref()
            .and_then(|p| p.get("name"))
            .and_then(|n| n.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| format!("{}.flist", names.versioned.trim_end_matches(".tar.gz")));
        if let Some(moving) = &names.moving {
            let link = format!("{}.flist", moving.trim_end_matches(".tar.gz"));
            self.call(self.client.get(format!("{}/api/flist/me/{flist}/link/{link}", self.url)))
                .await
                .map_err(|e| format!("hub link {link} -> {flist} failed: {e}"))?;
        }
        Ok(Published { name: flist, url: None, sha256 })
    }

    /// Sends a request with the bearer token; any reply but a 2xx with `status: success` is an error
    /// carrying the hub's own message.
    async fn call(&self, request: reqwest::RequestBuilder) -> Result<Reply, String> {
        let response = request.bearer_auth(&self.token).send().await.map_err(|e| format!("hub unreachable: {e}"))?;
        let code = response.status();
        let text = response.text().await.map_err(|e| format!("hub reply unreadable: {e}"))?;
        let reply: Option<Reply> = serde_json::from_str(&text).ok();
        match reply {
            Some(reply) if code.is_success() && reply.status.as_deref() == Some("success") => Ok(reply),
            Some(Reply { message: Some(message), .. }) => Err(format!("{code}: {message}")),
            _ => Err(format!("{code}: {}", text.chars().take(200).collect::<String>())),
        }
    }
}
