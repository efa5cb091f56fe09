//! Conformance suite of the relay: proves, against SPEC §3, that relays rendered from
//! manifests behave as the manifests say.
//!
//! - [`manifests`]: a typed description of one organization's objects, written out as the
//!   YAML a user keeps in Git and rendered through the same `render` the operator uses.
//! - [`model`]: an independent model of SPEC §3.2–3.4 and §3.6 that predicts every reply and
//!   where each accepted message lands. It does not import the relay's policy or limits.
//! - [`smtp`]: a plain SMTP client over tokio that records a transcript.
//! - [`pki`]: test certificates (CA-signed, self-signed, wrong name) as PEM files.
//! - [`docker`]: the container tier's harness over testcontainers (networks, Postfix clients
//!   and servers, the relay image, DNS), with guards that remove everything even when a test
//!   fails.
//!
//! This crate owns no relay behaviour; it only drives and observes it.

pub mod docker;
pub mod manifests;
pub mod model;
pub mod pki;
pub mod smtp;
