//! The SMTP relay. It receives mail (`session` over `server`), decides who may relay
//! (`policy`, `limits`), makes each accepted message durable (`spool`) and delivers it
//! (`delivery`). Its only input is a [`config::RelayConfig`] document; it never talks to
//! Kubernetes.

pub mod auth;
pub mod config;
pub mod limits;
pub mod policy;
pub mod session;
pub mod smtp;
pub mod spool;
