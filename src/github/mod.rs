//! GitHub: webhook deliveries in, commit statuses out.

pub mod api;
pub mod hooks;
pub mod status;
pub mod webhook;
