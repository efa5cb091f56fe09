//! Pure SMTP protocol pieces: the command-line parser, reply values and the DATA reader.
//!
//! Everything here works on byte slices and returns values; nothing does I/O, keeps a
//! clock or knows about policy. The session state machine (`crate::session`) decides what
//! the parsed commands mean.

pub mod command;
pub mod data;
pub mod reply;

pub use command::{AuthMechanism, Command, CommandError, Path, parse_command};
pub use data::{DataError, DataProgress, DataReader};
pub use reply::Reply;

/// Longest command line accepted, including the trailing CRLF (RFC 5321 §4.5.3.1.4).
pub const MAX_COMMAND_LINE: usize = 512;
/// Longest text line in DATA, including the trailing CRLF (RFC 5321 §4.5.3.1.6).
pub const MAX_TEXT_LINE: usize = 1000;
