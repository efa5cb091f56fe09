//! Content filters consulted before the relay answers `250` to a message (SPEC §2.1
//! `contentFilters`, §3.4): spam and virus checks by daemons the organization already
//! runs, spoken to over the milter protocol.
//!
//! Owns: the milter protocol and a client for one filter ([`milter`]): what a filter is
//! told about a message, how its replies become a [`milter::Verdict`] and a list of
//! [`milter::Modifications`], and how those edits change the delivered header block and
//! envelope.
//!
//! Does not own: which filters apply and in what order, `onUnavailable` and
//! `maxMessageBytes` (configuration and the session), the SMTP reply sent for a verdict,
//! holding quarantined messages or writing a replaced body (the spool), metrics and logs.
//! The session calls [`milter::MilterClient::check`] with the spooled text and decides.

pub mod milter;
