//! `GET /badge/<org>/<repo>/<branch>.svg[?script=NAME]`: an SVG badge of a branch's newest finished
//! build, for READMEs (served through GitHub's image proxy, camo, so it is revalidated every time).
//!
//! Without `?script=`, the badge stands for the newest commit of the branch that has a finished
//! build: the worst of its scripts' newest results (failure, then error, cancelled, success). A
//! branch (or script) never built gets a grey "no builds" badge with 200, so a README never shows
//! a broken image.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::ApiError;
use crate::app::App;
use crate::model::{Build, BuildKind, BuildStatus, CommitSha};
use crate::store::HistoryFilter;

/// Finished builds looked at for the newest commit's scripts.
const LOOKED_AT: i64 = 100;

#[derive(Deserialize)]
pub struct BadgeQuery {
    script: Option<String>,
}

pub async fn badge(
    State(app): State<Arc<App>>,
    Path(path): Path<String>,
    Query(query): Query<BadgeQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let usage =
        || ApiError::not_found(format!("no badge /badge/{path}: use /badge/<org>/<repo>/<branch>.svg[?script=NAME]"));
    let mut parts = path.splitn(3, '/');
    let (Some(org), Some(repo), Some(branch)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(usage());
    };
    let branch = branch.strip_suffix(".svg").filter(|b| !b.is_empty()).ok_or_else(usage)?;
    let script = query.script.filter(|s| !s.is_empty());
    let filter = HistoryFilter {
        limit: Some(LOOKED_AT),
        repository: Some(format!("{org}/{repo}")),
        branch: Some(branch.to_string()),
        kind: Some(BuildKind::Build),
        script: script.clone(),
        finished: true,
        ..Default::default()
    };
    let builds = app.store.history(&filter).await?;
    let label = script.as_deref().unwrap_or("build");
    let svg = match newest_result(&builds) {
        Some(status) => render(label, status.as_str(), colour(status)),
        None => render(label, "no builds", NO_BUILDS),
    };
    let etag = format!("\"{}\"", hex::encode(&Sha256::digest(svg.as_bytes())[..16]));
    let cache = [
        (header::CONTENT_TYPE, HeaderValue::from_static("image/svg+xml; charset=utf-8")),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache, max-age=0, must-revalidate")),
        (header::ETAG, HeaderValue::from_str(&etag).expect("hex")),
    ];
    let unchanged = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|tag| tag.trim() == etag));
    if unchanged {
        return Ok((StatusCode::NOT_MODIFIED, cache).into_response());
    }
    Ok((cache, svg).into_response())
}

/// The worst of the newest result of each script of the newest commit in `builds` (newest first).
fn newest_result(builds: &[Build]) -> Option<BuildStatus> {
    let commit: &Option<CommitSha> = &builds.first()?.new.commit;
    let mut seen = std::collections::HashSet::new();
    builds
        .iter()
        .filter(|b| &b.new.commit == commit && seen.insert(b.new.script.as_str()))
        .map(|b| b.outcome.status)
        .max_by_key(|status| severity(*status))
}

fn severity(status: BuildStatus) -> u8 {
    match status {
        BuildStatus::Failure => 4,
        BuildStatus::Error => 3,
        BuildStatus::Cancelled => 2,
        BuildStatus::Success => 1,
        BuildStatus::Queued | BuildStatus::Running => 0,
    }
}

const NO_BUILDS: &str = "#9f9f9f";

/// The colours of the monitor's badges (static/style.css).
fn colour(status: BuildStatus) -> &'static str {
    match status {
        BuildStatus::Success => "#1a7139",
        BuildStatus::Failure => "#b42318",
        BuildStatus::Error => "#8f5200",
        BuildStatus::Cancelled => "#5f6778",
        BuildStatus::Running => "#1d63b8",
        BuildStatus::Queued => "#5b5f97",
    }
}

/// A flat two-part badge: `label` on grey, `message` on `colour`. Widths are estimated from the
/// text (about 7 px a character in 11 px Verdana); both texts are XML-escaped.
fn render(label: &str, message: &str, colour: &str) -> String {
    let width = |text: &str| 10 + 7 * text.chars().count();
    let (left, right) = (width(label), width(message));
    let total = left + right;
    let (label, message) = (escape(label), escape(message));
    format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{total}" height="20" role="img" aria-label="{label}: {message}"><title>{label}: {message}</title><rect width="{left}" height="20" fill="#555"/><rect x="{left}" width="{right}" height="20" fill="{colour}"/><g fill="#fff" text-anchor="middle" font-family="Verdana,DejaVu Sans,sans-serif" font-size="11"><text x="{lx}" y="14">{label}</text><text x="{rx}" y="14">{message}</text></g></svg>"##,
        lx = left / 2,
        rx = left + right / 2,
    )
}

/// Text as it may appear in XML content and attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_in_the_badge_is_escaped() {
        let svg = render("a<b>&\"c'", "failure", "#000");
        assert!(svg.contains("a&lt;b&gt;&amp;&quot;c&apos;"), "{svg}");
        assert!(!svg.contains("a<b>"), "{svg}");
    }
}
