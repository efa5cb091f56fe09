//! The controller: reconciles each Organization into a running relay.
//!
//! One namespace is one organization. A reconcile reads the namespace's objects from the
//! controller's reflector stores (no LIST per reconcile), GETs only the Secrets the
//! objects name, calls [`render`](crate::render::render) (the same function `relayctl` calls), applies the
//! children built by [`children::build`] with server-side apply under one field manager,
//! and writes the status of every kind, also with server-side apply, so that a field that
//! becomes empty is removed. A child whose stored state already holds everything the
//! operator wants is not applied again, and a status equal to the one stored is not
//! written: a reconcile of an unchanged Organization writes nothing.
//!
//! Status is written before the Events that announce it: Events are the audit log, but
//! status is the state, and a lost Event must never cost a repeated probe or rollout. An
//! Event the API server refuses is logged and counted, not retried.
//!
//! The relay runs as a StatefulSet, one spool claim per pod. An Organization whose relay
//! still runs as the Deployment of earlier versions gets its StatefulSet next to it; the
//! Deployment is deleted only once every StatefulSet pod is ready, so clients are served
//! throughout. A claim no relay pod serves any more (a scale-down, the old Deployment's)
//! is drained by a Job and deleted only once empty ([`drain`]).
//!
//! "In force" is what the pods say: each ready relay pod is asked ([`pod_reports`]) which
//! config hash it runs, and `InForce` is True only when all of them run the latest.
//!
//! Render errors leave the children as they are (the previous config stays in force) and
//! mark the Organization Degraded. A child the API server refuses (an immutable field, a
//! quota) is a Degraded condition with the server's message; the other children are
//! still applied and the reconcile is retried with exponential backoff. Every child
//! carries a controller owner reference, so the garbage collector removes the relay with
//! its Organization; but first the finalizer `smtprelay.dev/drain` holds the deletion
//! while the relay is scaled to zero and its spool claims are delivered ([`drain`]).
//!
//! Pure parts live in submodules: [`children`] (what to apply), [`names`] (names the API
//! server accepts), [`status`] (what to report), [`leader`] (the election rule). [`metrics`]
//! and [`probe`] are the edges.

mod apply;
pub mod children;
mod context;
pub mod drain;
pub mod events;
mod finalize;
#[cfg(test)]
mod fixtures;
pub mod identity;
pub mod leader;
#[cfg(test)]
mod live;
pub mod metrics;
pub mod names;
#[cfg(test)]
mod path_tests;
pub mod pod_reports;
pub mod probe;
mod reconcile;
pub mod status;
#[cfg(test)]
mod tests;
mod watch;

pub use context::{Context, Error, Settings, Stores};
pub use watch::run;
#[cfg(test)]
use {
    context::FIELD_MANAGER,
    reconcile::{backoff, error_policy, reconcile},
    watch::{input_changed, organizations_in},
};
