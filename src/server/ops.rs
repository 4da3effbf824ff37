//! Operations: `/healthz` (the process answers), `/readyz` (Docker, database, Redis), `/metrics`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json};
use serde_json::{Value, json};

use crate::app::App;

pub async fn healthz() -> &'static str {
    "ok"
}

/// 200 when every dependency answers, 503 naming the ones that do not.
pub async fn readyz(State(app): State<Arc<App>>) -> (StatusCode, Json<Value>) {
    let docker = app.docker.ping().await.map_err(|e| format!("{e:#}"));
    let database = app.store.ping().await.map_err(|e| format!("{e:#}"));
    let redis = match app.config.redis.url.as_str() {
        "" => Ok(()),
        url => ping_redis(url).await,
    };
    let checks = [("docker", docker), ("database", database), ("redis", redis)];
    let ready = checks.iter().all(|(_, r)| r.is_ok());
    let body: serde_json::Map<String, Value> = checks
        .into_iter()
        .map(|(name, r)| (name.to_string(), Value::from(r.err().unwrap_or_else(|| "ok".into()))))
        .collect();
    (if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, Json(json!(body)))
}

async fn ping_redis(url: &str) -> Result<(), String> {
    let check = async {
        let client = redis::Client::open(url)?;
        let mut connection = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut connection).await
    };
    match tokio::time::timeout(std::time::Duration::from_secs(2), check).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer in 2s".into()),
    }
}

pub async fn metrics(State(app): State<Arc<App>>) -> Result<impl IntoResponse, super::ApiError> {
    let by_status = app.store.count_by_status().await?;
    let (queued, running) = app.queue.counts();
    let text = app.metrics.render(&by_status, queued, running);
    Ok(([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text))
}
