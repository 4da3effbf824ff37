//! autobuilder: GitHub push -> recipe -> Docker build -> artifact -> commit status -> history.

pub mod app;
pub mod artifacts;
pub mod build;
pub mod bus;
pub mod config;
mod docker;
mod git;
pub mod github;
pub mod live;
mod metrics;
pub mod model;
pub mod recipes;
pub mod server;
pub mod store;
