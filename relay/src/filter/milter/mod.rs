//! The milter protocol, MTA side: how the relay shows a message to a content filter
//! (rspamd's proxy worker, clamav-milter, spamass-milter, OpenDKIM) and reads its verdict.
//!
//! - [`protocol`]: the wire format and the per-message reply state machine, pure
//!   functions over bytes (parse, bound, sanitize), fuzzed by `fuzz/milter_reply`.
//! - [`message`]: the header block as the filter is shown it, and [`apply`] of the
//!   filter's edits to the delivered header block and envelope, pure.
//! - [`client`]: one filter over TCP: connect, negotiate, stream one message within a
//!   deadline, keep the connection for the next.
//!
//! Why our own codec rather than the `miltr-client`/`miltr-common` crates (0.1.3, MIT,
//! the only MTA-side milter crates): their authors describe the client as bare-bones, an
//! example to experiment with; it has no `SMFIR_PROGRESS`, `SMFIR_CHGFROM` or
//! `SMFIR_ADDRCPT_PAR` (a filter sending one breaks the connection), no way to send
//! macros or honour a filter's symbol list, `quit_nc` is `todo!()` (a panic) and `abort`
//! consumes the connection, so none can be reused; it works on `futures` I/O through a
//! compatibility layer and enforces none of the bounds or sanitizing the relay needs
//! (reply text, header injection, recipient syntax, body size). What we need of the
//! protocol is small and well specified (Sendmail's `mfdef.h`, Postfix's `milter8.c`), so
//! it is written here as a pure codec in the style of the relay's SMTP parser, and fuzzed.
//!
//! Checked against the Debian daemons (bookworm): rspamd 3.4's proxy worker negotiates
//! every action and no reply to any event but end of body (`NR_*`), answers a clean
//! message with `ADDHEADER`s (only with `milter_headers` configured) and an `INSHEADER`
//! of `Authentication-Results` at index 1, and GTUBE with `SMFIR_REPLYCODE`
//! `554 5.7.1 Gtube pattern`. clamav-milter 1.4.6 negotiates `ADDHDRS|CHGHDRS|QUARANTINE`
//! and `NOHELO|NOEOH|NOUNKNOWN|NODATA`, adds `X-Virus-Scanned`/`X-Virus-Status`, and
//! rejects EICAR with a bare `SMFIR_REJECT` unless `RejectMsg` is set (`RejectMsg Virus
//! %v found` gives `550 5.7.1 Virus Eicar-Test-Signature.UNOFFICIAL found`). Neither sends
//! a symbol list.

pub mod client;
pub mod message;
pub mod protocol;

/// A scripted content filter on a loopback port, for this crate's tests and others'
/// (the `testing` feature).
#[cfg(any(test, feature = "testing"))]
pub mod fake;

pub use client::{
    AuthFacts, ClientOptions, ConnectFacts, ErrorKind, FilterError, MessageFacts, MilterClient,
    MilterEndpoint, Recipient, TlsFacts,
};
pub use message::{HeaderField, apply, parse_header_block, write_header_block};
pub use protocol::{Edit, Limits, Modifications, Negotiated, Outcome, Stage, Verdict};
