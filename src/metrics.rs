//! Prometheus metrics (`GET /metrics`): builds by status, queue depth, webhook-to-start and build
//! durations, log lines, hub upload failures, deliveries.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::model::{Build, BuildStatus};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabel {
    pub event: String,
}

pub struct Metrics {
    registry: Registry,
    /// Builds in the history, per status (set at each scrape from the database).
    pub builds: Family<StatusLabel, Gauge>,
    pub queued: Gauge,
    pub running: Gauge,
    /// Seconds from the webhook (build queued) to its container starting.
    pub webhook_to_start: Histogram,
    /// Seconds from start to end of a build.
    pub build_duration: Histogram,
    pub log_lines: Counter,
    pub upload_failures: Counter,
    /// Verified webhook deliveries, per event.
    pub deliveries: Family<EventLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("autobuilder");
        let builds = Family::<StatusLabel, Gauge>::default();
        let queued = Gauge::default();
        let running = Gauge::default();
        let webhook_to_start = Histogram::new(exponential_buckets(0.01, 2.0, 14));
        let build_duration = Histogram::new(exponential_buckets(0.1, 2.0, 18));
        let log_lines = Counter::default();
        let upload_failures = Counter::default();
        let deliveries = Family::<EventLabel, Counter>::default();
        registry.register("builds", "Builds in the history by status", builds.clone());
        registry.register("queue_depth", "Builds waiting for a slot", queued.clone());
        registry.register("running_builds", "Builds running now", running.clone());
        registry.register(
            "webhook_to_start_seconds",
            "Seconds from webhook to build container start",
            webhook_to_start.clone(),
        );
        registry.register("build_duration_seconds", "Seconds from start to end of a build", build_duration.clone());
        registry.register("log_lines", "Build log lines written", log_lines.clone());
        registry.register("upload_failures", "Failed artifact uploads (each try)", upload_failures.clone());
        registry.register("deliveries", "Verified webhook deliveries", deliveries.clone());
        Self {
            registry,
            builds,
            queued,
            running,
            webhook_to_start,
            build_duration,
            log_lines,
            upload_failures,
            deliveries,
        }
    }
}

impl Metrics {
    pub fn observe_start(&self, build: &Build) {
        if let Some(started) = build.started {
            self.webhook_to_start.observe((started - build.created).as_seconds_f64().max(0.0));
        }
    }

    pub fn observe_end(&self, build: &Build) {
        if let (Some(started), Some(ended)) = (build.started, build.ended) {
            self.build_duration.observe((ended - started).as_seconds_f64().max(0.0));
        }
    }

    /// The text exposition, after setting the gauges read at scrape time.
    pub fn render(&self, by_status: &[(BuildStatus, i64)], queued: usize, running: usize) -> String {
        for status in BuildStatus::ALL {
            let count = by_status.iter().find(|(s, _)| *s == status).map_or(0, |(_, n)| *n);
            self.builds.get_or_create(&StatusLabel { status: status.to_string() }).set(count);
        }
        self.queued.set(queued as i64);
        self.running.set(running as i64);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("writing to a String");
        text
    }
}
