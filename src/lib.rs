//! autobuilder: GitHub push -> recipe -> Docker build -> artifact -> commit status -> history.

pub mod app;
pub mod artifacts;
pub mod build;
pub mod bus;
pub mod config;
pub mod docker;
pub mod git;
pub mod github;
pub mod live;
pub mod metrics;
pub mod model;
pub mod recipes;
pub mod server;
pub mod store;
