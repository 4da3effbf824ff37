//! GitHub: webhook deliveries in, commit statuses out.

pub mod status;
pub mod webhook;
