//! The relay's side door, beside the three stages: the admin HTTP endpoint and what it
//! serves, and the drain that empties a spool no relay serves any more.
//!
//! - [`http`]: `/metrics`, `/healthz`, `/readyz`, and the routing of `/queue` requests;
//! - [`queue`]: queue administration (list, show, hold, release, flush, delete, import);
//! - [`drain`]: `relay --drain`, handing a spool's messages to another relay's import.
//!
//! Not here: the queue itself (`delivery::queue`), the numbers (`metrics`).

pub mod drain;
pub mod http;
pub mod queue;

pub use http::{AdminLimits, AdminState, serve};
