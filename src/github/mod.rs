//! GitHub: webhook deliveries in, commit statuses out.

pub mod api;
pub mod status;
pub mod webhook;
