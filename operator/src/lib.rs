//! The control side of the relay: [`render`] turns SmtpRelay objects into a `RelayConfig`,
//! [`manifests`] loads them from files for `relayctl`, and the controller reconciles them
//! on a cluster. Nothing here speaks SMTP; the `relay` crate does.

pub mod controller;
pub mod expect;
pub mod explain;
pub mod git;
pub mod install;
pub mod local;
pub mod manifests;
pub mod output;
pub mod plan;
pub mod quantity;
pub mod queue_admin;
pub mod queue_cluster;
pub mod render;
pub mod secrets;
