//! Pure SMTP protocol pieces: the command-line parser, reply values and the DATA reader.
//!
//! Everything here works on byte slices and returns values; nothing does I/O, keeps a
//! clock or knows about policy. The session state machine (`crate::ingress::session`) decides what
//! the parsed commands mean.

pub mod command;
pub mod data;
pub mod reply;

pub use command::{
    AuthMechanism, Command, CommandError, MAX_COMMAND_LINE, Path, domain_is_ip, parse_command,
};
pub use data::{DataError, DataProgress, DataReader, MAX_TEXT_LINE};
pub use reply::Reply;
