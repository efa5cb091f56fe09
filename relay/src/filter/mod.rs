//! Content filters consulted before the relay answers `250` to a message (SPEC §2.1
//! `contentFilters`, §3.4): spam and virus checks by daemons the organization already
//! runs, spoken to over the milter protocol.
//!
//! Owns: the milter protocol and a client for one filter ([`milter`]): what a filter is
//! told about a message, how its replies become a [`milter::Verdict`] and a list of
//! [`milter::Modifications`], and how those edits change the delivered header block and
//! envelope.
//!
//! Owns too: the filters' metrics ([`metrics`]) and the periodic reachability probe
//! ([`probe`]).
//!
//! Does not own: which filters apply and in what order, `onUnavailable` and
//! `maxMessageBytes`, the SMTP reply sent for a verdict (`crate::ingress::filtering`),
//! holding quarantined messages or writing a replaced body (the spool), logs.

pub mod metrics;
pub mod milter;
pub mod probe;
