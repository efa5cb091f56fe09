//! The milter wire protocol (Sendmail 8.14+ libmilter, protocol version 6) as pure
//! functions over bytes: the MTA's commands encoded as frames, the filter's replies
//! decoded and bounded, option negotiation, and [`MessageReplies`], the per-message state
//! machine that turns the filter's replies into a [`Verdict`] and a list of
//! [`Modifications`].
//!
//! A frame is a 4-byte big-endian length, then that many bytes: a one-byte code and its
//! data. Strings are NUL-terminated. Reference: Sendmail's `libmilter/mfdef.h` and
//! Postfix's `src/milter/milter8.c`, whose MTA-side behaviour this follows (noted where it
//! differs).
//!
//! Everything the filter sends is bounded here: the frame length ([`MAX_FRAME`]), the
//! number of replies per message, header edits (count and bytes), recipient edits and
//! the replacement body ([`Limits`]). A reply that is malformed, oversized, out of place
//! (a modification before end of body) or not allowed by what the filter negotiated is a
//! [`ProtocolError`]: the caller treats the filter as unavailable, never as accepting.
//!
//! No I/O and no clock: `client` drives this over a socket; the unit tests and the
//! `milter_reply` fuzz target drive it over arbitrary bytes.

use std::fmt;
use std::net::SocketAddr;

use crate::smtp::{self, Command as SmtpCommand, Path, Reply};

/// The protocol version we speak (Sendmail 8.14, Postfix ≥ 2.6).
pub const VERSION: u32 = 6;
/// Largest body chunk in one `SMFIC_BODY` frame (Postfix's `MILTER_CHUNK_SIZE`; also
/// libmilter's default `MILTER_MAX_DATA_SIZE`).
pub const MAX_BODY_CHUNK: usize = 65_535;
/// Largest reply frame we read (the length field: code byte plus data). libmilter sends a
/// replacement body in chunks of at most 65,535 bytes, so 64 KiB plus a little covers
/// every legitimate reply; anything longer is refused before it is read.
pub const MAX_FRAME: usize = 65_536 + 1_024;
/// Longest reply text kept from `SMFIR_REPLYCODE` (after sanitizing).
pub const MAX_REPLY_TEXT: usize = 200;
/// Longest quarantine reason kept.
pub const MAX_REASON: usize = 200;
/// Longest header name a filter may add or change.
const MAX_HEADER_NAME: usize = 200;
/// Longest ESMTP argument string a filter may give with a sender or recipient.
const MAX_ESMTP_ARGS: usize = 1_000;
/// Longest address a filter may give (RFC 5321 path limit, with some slack for quoting).
const MAX_ADDRESS: usize = 512;
/// Most macro names per stage we keep from a filter's symbol list.
const MAX_MACROS_PER_STAGE: usize = 64;

/// Commands from the MTA to the filter (`SMFIC_*`).
pub mod command {
    pub const ABORT: u8 = b'A';
    pub const BODY: u8 = b'B';
    pub const CONNECT: u8 = b'C';
    pub const MACRO: u8 = b'D';
    pub const END_OF_BODY: u8 = b'E';
    pub const HELO: u8 = b'H';
    pub const HEADER: u8 = b'L';
    pub const MAIL: u8 = b'M';
    pub const END_OF_HEADERS: u8 = b'N';
    pub const OPTNEG: u8 = b'O';
    pub const QUIT: u8 = b'Q';
    pub const RCPT: u8 = b'R';
    pub const DATA: u8 = b'T';
}

/// Replies from the filter to the MTA (`SMFIR_*`).
pub mod reply {
    pub const ADD_RCPT: u8 = b'+';
    pub const DEL_RCPT: u8 = b'-';
    pub const ADD_RCPT_PAR: u8 = b'2';
    pub const SHUTDOWN: u8 = b'4';
    pub const ACCEPT: u8 = b'a';
    pub const REPLACE_BODY: u8 = b'b';
    pub const CONTINUE: u8 = b'c';
    pub const DISCARD: u8 = b'd';
    pub const CHANGE_FROM: u8 = b'e';
    pub const CONN_FAIL: u8 = b'f';
    pub const ADD_HEADER: u8 = b'h';
    pub const INSERT_HEADER: u8 = b'i';
    pub const SET_SYMLIST: u8 = b'l';
    pub const CHANGE_HEADER: u8 = b'm';
    pub const PROGRESS: u8 = b'p';
    pub const QUARANTINE: u8 = b'q';
    pub const REJECT: u8 = b'r';
    pub const SKIP: u8 = b's';
    pub const TEMPFAIL: u8 = b't';
    pub const REPLY_CODE: u8 = b'y';
    /// Option negotiation, the filter's answer to ours.
    pub const OPTNEG: u8 = b'O';
}

/// Modification actions (`SMFIF_*`): in our offer, what the filter may do at end of
/// body; in its answer, what it says it will do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Actions(pub u32);

impl Actions {
    pub const ADD_HEADERS: Actions = Actions(1 << 0);
    pub const CHANGE_BODY: Actions = Actions(1 << 1);
    pub const ADD_RCPT: Actions = Actions(1 << 2);
    pub const DEL_RCPT: Actions = Actions(1 << 3);
    pub const CHANGE_HEADERS: Actions = Actions(1 << 4);
    pub const QUARANTINE: Actions = Actions(1 << 5);
    pub const CHANGE_FROM: Actions = Actions(1 << 6);
    pub const ADD_RCPT_PAR: Actions = Actions(1 << 7);
    pub const SET_SYMLIST: Actions = Actions(1 << 8);
    /// What we offer: every action of protocol 6, as Postfix does. Some filters
    /// (spamass-milter) refuse to negotiate unless `CHANGE_BODY` is offered; we support a
    /// bounded body replacement ([`Limits::max_replacement_body`]).
    pub const OFFERED: Actions = Actions(0x1ff);

    const NAMES: [(Actions, &'static str); 9] = [
        (Actions::ADD_HEADERS, "ADDHDRS"),
        (Actions::CHANGE_BODY, "CHGBODY"),
        (Actions::ADD_RCPT, "ADDRCPT"),
        (Actions::DEL_RCPT, "DELRCPT"),
        (Actions::CHANGE_HEADERS, "CHGHDRS"),
        (Actions::QUARANTINE, "QUARANTINE"),
        (Actions::CHANGE_FROM, "CHGFROM"),
        (Actions::ADD_RCPT_PAR, "ADDRCPT_PAR"),
        (Actions::SET_SYMLIST, "SETSYMLIST"),
    ];

    pub fn contains(self, other: Actions) -> bool {
        self.0 & other.0 == other.0
    }
}

impl fmt::Display for Actions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_flag_names(f, self.0, &Actions::NAMES.map(|(a, n)| (a.0, n)))
    }
}

/// Protocol steps (`SMFIP_*`): in our offer, what we can leave out or send without
/// waiting for a reply; in the filter's answer, what it asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ProtocolFlags(pub u32);

impl ProtocolFlags {
    pub const NO_CONNECT: ProtocolFlags = ProtocolFlags(1 << 0);
    pub const NO_HELO: ProtocolFlags = ProtocolFlags(1 << 1);
    pub const NO_MAIL: ProtocolFlags = ProtocolFlags(1 << 2);
    pub const NO_RCPT: ProtocolFlags = ProtocolFlags(1 << 3);
    pub const NO_BODY: ProtocolFlags = ProtocolFlags(1 << 4);
    pub const NO_HEADERS: ProtocolFlags = ProtocolFlags(1 << 5);
    pub const NO_EOH: ProtocolFlags = ProtocolFlags(1 << 6);
    pub const NR_HEADER: ProtocolFlags = ProtocolFlags(1 << 7);
    pub const NO_UNKNOWN: ProtocolFlags = ProtocolFlags(1 << 8);
    pub const NO_DATA: ProtocolFlags = ProtocolFlags(1 << 9);
    pub const SKIP: ProtocolFlags = ProtocolFlags(1 << 10);
    pub const RCPT_REJ: ProtocolFlags = ProtocolFlags(1 << 11);
    pub const NR_CONNECT: ProtocolFlags = ProtocolFlags(1 << 12);
    pub const NR_HELO: ProtocolFlags = ProtocolFlags(1 << 13);
    pub const NR_MAIL: ProtocolFlags = ProtocolFlags(1 << 14);
    pub const NR_RCPT: ProtocolFlags = ProtocolFlags(1 << 15);
    pub const NR_DATA: ProtocolFlags = ProtocolFlags(1 << 16);
    pub const NR_UNKNOWN: ProtocolFlags = ProtocolFlags(1 << 17);
    pub const NR_EOH: ProtocolFlags = ProtocolFlags(1 << 18);
    pub const NR_BODY: ProtocolFlags = ProtocolFlags(1 << 19);
    pub const HEADER_LEADING_SPACE: ProtocolFlags = ProtocolFlags(1 << 20);

    /// What we offer: every step of protocol 6 except `RCPT_REJ` (we only ever show the
    /// filter recipients the relay accepted; it never sees rejected ones).
    pub const OFFERED: ProtocolFlags = ProtocolFlags(0x1f_f7ff);
    /// Steps a filter speaking protocol 2 may ask us to leave out (Postfix's
    /// `MILTER8_V2_PROTO_MASK`); 3 adds `NO_UNKNOWN`, 4 adds `NO_DATA`, 6 the rest.
    const V2: u32 = 0x7f;

    const NAMES: [(ProtocolFlags, &'static str); 21] = [
        (ProtocolFlags::NO_CONNECT, "NOCONNECT"),
        (ProtocolFlags::NO_HELO, "NOHELO"),
        (ProtocolFlags::NO_MAIL, "NOMAIL"),
        (ProtocolFlags::NO_RCPT, "NORCPT"),
        (ProtocolFlags::NO_BODY, "NOBODY"),
        (ProtocolFlags::NO_HEADERS, "NOHDRS"),
        (ProtocolFlags::NO_EOH, "NOEOH"),
        (ProtocolFlags::NR_HEADER, "NR_HDR"),
        (ProtocolFlags::NO_UNKNOWN, "NOUNKNOWN"),
        (ProtocolFlags::NO_DATA, "NODATA"),
        (ProtocolFlags::SKIP, "SKIP"),
        (ProtocolFlags::RCPT_REJ, "RCPT_REJ"),
        (ProtocolFlags::NR_CONNECT, "NR_CONN"),
        (ProtocolFlags::NR_HELO, "NR_HELO"),
        (ProtocolFlags::NR_MAIL, "NR_MAIL"),
        (ProtocolFlags::NR_RCPT, "NR_RCPT"),
        (ProtocolFlags::NR_DATA, "NR_DATA"),
        (ProtocolFlags::NR_UNKNOWN, "NR_UNKN"),
        (ProtocolFlags::NR_EOH, "NR_EOH"),
        (ProtocolFlags::NR_BODY, "NR_BODY"),
        (ProtocolFlags::HEADER_LEADING_SPACE, "HDR_LEADSPC"),
    ];

    pub fn contains(self, other: ProtocolFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl fmt::Display for ProtocolFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_flag_names(f, self.0, &ProtocolFlags::NAMES.map(|(p, n)| (p.0, n)))
    }
}

fn write_flag_names(f: &mut fmt::Formatter<'_>, bits: u32, names: &[(u32, &str)]) -> fmt::Result {
    write!(f, "{bits:#x}")?;
    let mut sep = " ";
    for (bit, name) in names {
        if bits & bit != 0 {
            write!(f, "{sep}{name}")?;
            sep = "|";
        }
    }
    Ok(())
}

/// A step of the SMTP transaction the filter is told about, and where a failure
/// happened. Only the events from `Connect` to `EndOfBody` get replies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Opening the TCP connection.
    Connecting,
    /// Option negotiation (`SMFIC_OPTNEG`).
    Negotiating,
    /// `SMFIC_ABORT` between messages (no reply).
    Reset,
    Connect,
    Helo,
    Mail,
    Rcpt,
    Data,
    Header,
    EndOfHeaders,
    Body,
    EndOfBody,
}

impl Stage {
    /// The flag that tells us the filter does not reply to this event.
    pub fn no_reply_flag(self) -> Option<ProtocolFlags> {
        Some(match self {
            Stage::Connect => ProtocolFlags::NR_CONNECT,
            Stage::Helo => ProtocolFlags::NR_HELO,
            Stage::Mail => ProtocolFlags::NR_MAIL,
            Stage::Rcpt => ProtocolFlags::NR_RCPT,
            Stage::Data => ProtocolFlags::NR_DATA,
            Stage::Header => ProtocolFlags::NR_HEADER,
            Stage::EndOfHeaders => ProtocolFlags::NR_EOH,
            Stage::Body => ProtocolFlags::NR_BODY,
            _ => return None,
        })
    }

    /// The flag that tells us the filter does not want this event at all.
    pub fn not_sent_flag(self) -> Option<ProtocolFlags> {
        Some(match self {
            Stage::Connect => ProtocolFlags::NO_CONNECT,
            Stage::Helo => ProtocolFlags::NO_HELO,
            Stage::Mail => ProtocolFlags::NO_MAIL,
            Stage::Rcpt => ProtocolFlags::NO_RCPT,
            Stage::Data => ProtocolFlags::NO_DATA,
            Stage::Header => ProtocolFlags::NO_HEADERS,
            Stage::EndOfHeaders => ProtocolFlags::NO_EOH,
            Stage::Body => ProtocolFlags::NO_BODY,
            _ => return None,
        })
    }

    /// Events that come once per connection (a decision there ends the connection).
    pub fn is_connection_level(self) -> bool {
        matches!(self, Stage::Connect | Stage::Helo)
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Connecting => "connecting",
            Stage::Negotiating => "option negotiation",
            Stage::Reset => "reset between messages",
            Stage::Connect => "CONNECT",
            Stage::Helo => "HELO",
            Stage::Mail => "MAIL",
            Stage::Rcpt => "RCPT",
            Stage::Data => "DATA",
            Stage::Header => "HEADER",
            Stage::EndOfHeaders => "EOH",
            Stage::Body => "BODY",
            Stage::EndOfBody => "EOB",
        })
    }
}

/// The stages macros are sent for (`SMFIM_*`; the numbers are the wire values of a
/// filter's symbol lists).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MacroStage {
    Connect = 0,
    Helo = 1,
    Mail = 2,
    Rcpt = 3,
    Data = 4,
    EndOfMessage = 5,
    EndOfHeaders = 6,
}

impl MacroStage {
    pub const ALL: [MacroStage; 7] = [
        MacroStage::Connect,
        MacroStage::Helo,
        MacroStage::Mail,
        MacroStage::Rcpt,
        MacroStage::Data,
        MacroStage::EndOfMessage,
        MacroStage::EndOfHeaders,
    ];

    /// The command these macros belong to (the first byte of `SMFIC_MACRO`'s data).
    pub fn command(self) -> u8 {
        match self {
            MacroStage::Connect => command::CONNECT,
            MacroStage::Helo => command::HELO,
            MacroStage::Mail => command::MAIL,
            MacroStage::Rcpt => command::RCPT,
            MacroStage::Data => command::DATA,
            MacroStage::EndOfMessage => command::END_OF_BODY,
            MacroStage::EndOfHeaders => command::END_OF_HEADERS,
        }
    }

    /// The macros we send at this stage unless the filter gave its own list: Postfix's
    /// defaults (`milter_*_macros`), narrowed to what the relay knows.
    pub fn default_macros(self) -> &'static [&'static str] {
        match self {
            MacroStage::Connect => &[
                "j",
                "{daemon_name}",
                "{client_addr}",
                "{client_port}",
                "{client_name}",
            ],
            MacroStage::Helo => &["{tls_version}", "{cipher}"],
            MacroStage::Mail => &["i", "{auth_type}", "{auth_authen}", "{mail_addr}"],
            MacroStage::Rcpt => &["i", "{rcpt_addr}"],
            MacroStage::Data | MacroStage::EndOfHeaders | MacroStage::EndOfMessage => &["i"],
        }
    }

    fn from_wire(n: u32) -> Option<MacroStage> {
        MacroStage::ALL.into_iter().find(|s| *s as u32 == n)
    }
}

/// What the filter answered to our option negotiation, narrowed to what we offered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Negotiated {
    /// The filter's protocol version (2..=6).
    pub version: u32,
    /// The actions the filter said it will use; any other is a protocol error.
    pub actions: Actions,
    /// The steps the filter asked us to leave out or not wait for.
    pub protocol: ProtocolFlags,
    /// Macro names per [`MacroStage`] (index = wire number) when the filter gave a list
    /// (`SMFIF_SETSYMLIST`); `None` = our defaults.
    pub macros: [Option<Vec<String>>; 7],
}

impl Negotiated {
    /// The macro names to send at `stage`.
    pub fn macro_names(&self, stage: MacroStage) -> Vec<&str> {
        match &self.macros[stage as usize] {
            Some(list) => list.iter().map(String::as_str).collect(),
            None => stage.default_macros().to_vec(),
        }
    }

    /// The filter wants this event.
    pub fn sends(&self, stage: Stage) -> bool {
        stage
            .not_sent_flag()
            .is_none_or(|flag| !self.protocol.contains(flag))
    }

    /// The filter replies to this event.
    pub fn expects_reply(&self, stage: Stage) -> bool {
        stage
            .no_reply_flag()
            .is_none_or(|flag| !self.protocol.contains(flag))
    }

    /// Header values keep their leading space (`SMFIP_HDR_LEADSPC`).
    pub fn leading_space(&self) -> bool {
        self.protocol.contains(ProtocolFlags::HEADER_LEADING_SPACE)
    }
}

/// Why bytes from the filter are not a valid reply. Each means: stop talking to this
/// filter for this message and treat it as unavailable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("frame length {0} is zero")]
    EmptyFrame(u32),
    #[error("frame of {len} bytes is longer than the {max} accepted")]
    FrameTooLong { len: u32, max: usize },
    #[error("unknown reply code {0:#04x}")]
    UnknownCode(u8),
    #[error("reply {code:?} where {expected} was expected")]
    Unexpected { code: char, expected: &'static str },
    #[error("reply {code:?} carries {len} bytes of data it should not have")]
    TrailingData { code: char, len: usize },
    #[error("reply {code:?} is truncated or lacks a NUL terminator")]
    Truncated { code: char },
    #[error("option negotiation: protocol version {0} is not one we speak (2 to 6)")]
    UnsupportedVersion(u32),
    #[error("reply code text is not a 4xx or 5xx SMTP reply")]
    BadReplyCode,
    #[error("header name is empty, too long or not printable ASCII")]
    BadHeaderName,
    #[error("header value has a continuation line that does not start with white space")]
    BadHeaderValue,
    #[error("header index {0} is not valid")]
    BadHeaderIndex(u32),
    #[error("address {0:?} is not an RFC 5321 mailbox")]
    BadAddress(String),
    #[error("ESMTP arguments are too long or not printable ASCII")]
    BadEsmtpArgs,
    #[error("modification {code:?} before end of body")]
    ModificationTooEarly { code: char },
    #[error("modification {code:?} needs action {action} which the filter did not negotiate")]
    NotNegotiated { code: char, action: &'static str },
    #[error("body replacement is interleaved with other modifications")]
    BodyReplacementSplit,
    #[error("too many {what} (limit {limit})")]
    TooMany { what: &'static str, limit: usize },
}

// ---------------------------------------------------------------------------------------
// Frames

/// The length of the frame a 4-byte length field announces, checked: at least the code
/// byte, at most `max`. An oversized frame is refused before any of it is read.
pub fn frame_len(header: [u8; 4], max: usize) -> Result<usize, ProtocolError> {
    let len = u32::from_be_bytes(header);
    if len == 0 {
        return Err(ProtocolError::EmptyFrame(len));
    }
    let len_usize = usize::try_from(len).unwrap_or(usize::MAX);
    if len_usize > max {
        return Err(ProtocolError::FrameTooLong { len, max });
    }
    Ok(len_usize)
}

/// The first complete frame of `buf` (code byte and data) and how many bytes it took;
/// `Ok(None)` when `buf` holds only part of one.
pub fn split_frame(buf: &[u8], max: usize) -> Result<Option<(&[u8], usize)>, ProtocolError> {
    let Some(header) = buf.first_chunk::<4>() else {
        return Ok(None);
    };
    let len = frame_len(*header, max)?;
    let Some(frame) = buf.get(4..4 + len) else {
        return Ok(None);
    };
    Ok(Some((frame, 4 + len)))
}

/// One command from us to the filter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command<'a> {
    /// Our offer: version, actions, protocol steps.
    OptNeg {
        version: u32,
        actions: Actions,
        protocol: ProtocolFlags,
    },
    /// Macro values for the command of `stage` (sent just before it).
    Macro {
        stage: MacroStage,
        macros: &'a [(&'a str, String)],
    },
    /// The SMTP client: its host name (or `[address]`) and address.
    Connect {
        hostname: &'a str,
        client: Option<SocketAddr>,
    },
    Helo(&'a str),
    /// Sender (without angle brackets; `""` is the null sender) and ESMTP arguments.
    Mail {
        sender: &'a str,
        args: &'a [String],
    },
    Rcpt {
        recipient: &'a str,
        args: &'a [String],
    },
    Data,
    /// One header: name, and value as the filter expects it (see
    /// `message::HeaderField::milter_value`).
    Header {
        name: &'a [u8],
        value: &'a [u8],
    },
    EndOfHeaders,
    /// At most [`MAX_BODY_CHUNK`] bytes of body.
    Body(&'a [u8]),
    EndOfBody,
    Abort,
    Quit,
}

impl Command<'_> {
    /// Appends the command's frame to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        match self {
            Command::OptNeg {
                version,
                actions,
                protocol,
            } => {
                out.push(command::OPTNEG);
                out.extend_from_slice(&version.to_be_bytes());
                out.extend_from_slice(&actions.0.to_be_bytes());
                out.extend_from_slice(&protocol.0.to_be_bytes());
            }
            Command::Macro { stage, macros } => {
                out.push(command::MACRO);
                out.push(stage.command());
                for (name, value) in macros.iter() {
                    put_cstr(out, name.as_bytes());
                    put_cstr(out, value.as_bytes());
                }
            }
            Command::Connect { hostname, client } => {
                out.push(command::CONNECT);
                put_cstr(out, hostname.as_bytes());
                match client {
                    Some(addr) => {
                        out.push(if addr.is_ipv4() { b'4' } else { b'6' });
                        out.extend_from_slice(&addr.port().to_be_bytes());
                        put_cstr(out, addr.ip().to_string().as_bytes());
                    }
                    None => out.push(b'U'),
                }
            }
            Command::Helo(name) => {
                out.push(command::HELO);
                put_cstr(out, name.as_bytes());
            }
            Command::Mail { sender, args } => {
                out.push(command::MAIL);
                put_cstr(out, format!("<{sender}>").as_bytes());
                for arg in args.iter() {
                    put_cstr(out, arg.as_bytes());
                }
            }
            Command::Rcpt { recipient, args } => {
                out.push(command::RCPT);
                put_cstr(out, format!("<{recipient}>").as_bytes());
                for arg in args.iter() {
                    put_cstr(out, arg.as_bytes());
                }
            }
            Command::Data => out.push(command::DATA),
            Command::Header { name, value } => {
                out.push(command::HEADER);
                put_cstr(out, name);
                put_cstr(out, value);
            }
            Command::EndOfHeaders => out.push(command::END_OF_HEADERS),
            Command::Body(chunk) => {
                out.push(command::BODY);
                out.extend_from_slice(chunk);
            }
            Command::EndOfBody => out.push(command::END_OF_BODY),
            Command::Abort => out.push(command::ABORT),
            Command::Quit => out.push(command::QUIT),
        }
        // A frame we build is at most a body chunk plus a byte: far below u32::MAX.
        let len = u32::try_from(out.len() - start - 4).unwrap_or(u32::MAX);
        if let Some(field) = out.get_mut(start..start + 4) {
            field.copy_from_slice(&len.to_be_bytes());
        }
    }
}

/// A NUL-terminated string; an embedded NUL (which would end it early on the filter's
/// side and shift every later field) becomes a space.
fn put_cstr(out: &mut Vec<u8>, s: &[u8]) {
    out.extend(s.iter().map(|&b| if b == 0 { b' ' } else { b }));
    out.push(0);
}

// ---------------------------------------------------------------------------------------
// Option negotiation

/// The filter's `SMFIC_OPTNEG` answer (`frame` = code byte and data), narrowed to what we
/// offered: flags we did not offer are dropped (as Postfix does), a version we do not
/// speak is an error, and symbol lists (`SMFIF_SETSYMLIST`) are kept per stage.
pub fn parse_optneg(frame: &[u8]) -> Result<Negotiated, ProtocolError> {
    let (&code, data) = frame.split_first().ok_or(ProtocolError::EmptyFrame(0))?;
    if code != reply::OPTNEG {
        return Err(ProtocolError::Unexpected {
            code: char::from(code),
            expected: "option negotiation",
        });
    }
    let mut r = Reader::new(code, data);
    let version = r.u32()?;
    let actions = r.u32()?;
    let protocol = r.u32()?;
    if !(2..=VERSION).contains(&version) {
        return Err(ProtocolError::UnsupportedVersion(version));
    }
    let mut protocol = protocol & ProtocolFlags::OFFERED.0;
    if version < 6 {
        // Steps a filter of an older protocol cannot ask for; and what it cannot be sent
        // (Postfix's np_mask): DATA before version 4.
        let mut allowed = ProtocolFlags::V2;
        if version >= 3 {
            allowed |= ProtocolFlags::NO_UNKNOWN.0;
        }
        if version >= 4 {
            allowed |= ProtocolFlags::NO_DATA.0;
        }
        protocol &= allowed;
        if version < 4 {
            protocol |= ProtocolFlags::NO_DATA.0;
        }
    }
    let mut negotiated = Negotiated {
        version,
        actions: Actions(actions & Actions::OFFERED.0),
        protocol: ProtocolFlags(protocol),
        macros: Default::default(),
    };
    while !r.is_empty() {
        let stage = r.u32()?;
        let list = r.cstr()?;
        let Some(stage) = MacroStage::from_wire(stage) else {
            continue; // Postfix ignores an unknown macro stage too.
        };
        let names = list
            .split(|b| b.is_ascii_whitespace())
            .filter(|n| !n.is_empty() && n.len() <= 64 && n.iter().all(u8::is_ascii_graphic))
            .filter_map(|n| std::str::from_utf8(n).ok())
            .take(MAX_MACROS_PER_STAGE)
            .map(str::to_string)
            .collect();
        negotiated.macros[stage as usize] = Some(names);
    }
    Ok(negotiated)
}

// ---------------------------------------------------------------------------------------
// Replies

/// One reply from the filter, its fields borrowed from the frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response<'a> {
    Accept,
    Continue,
    Discard,
    Reject,
    Tempfail,
    Skip,
    Progress,
    /// `SMFIR_SHUTDOWN`: the filter is going away.
    Shutdown,
    /// `SMFIR_REPLYCODE`: an SMTP reply of the filter's own (to sanitize).
    ReplyCode(&'a [u8]),
    Quarantine(&'a [u8]),
    AddHeader {
        name: &'a [u8],
        value: &'a [u8],
    },
    InsertHeader {
        index: u32,
        name: &'a [u8],
        value: &'a [u8],
    },
    ChangeHeader {
        index: u32,
        name: &'a [u8],
        value: &'a [u8],
    },
    AddRcpt(&'a [u8]),
    AddRcptPar {
        rcpt: &'a [u8],
        args: Option<&'a [u8]>,
    },
    DelRcpt(&'a [u8]),
    ChangeFrom {
        sender: &'a [u8],
        args: Option<&'a [u8]>,
    },
    ReplaceBody(&'a [u8]),
}

/// Decodes one reply frame (code byte and data). Replies without data must have none;
/// strings must be NUL-terminated and nothing may follow the last field.
pub fn parse_response(frame: &[u8]) -> Result<Response<'_>, ProtocolError> {
    let (&code, data) = frame.split_first().ok_or(ProtocolError::EmptyFrame(0))?;
    let mut r = Reader::new(code, data);
    let response = match code {
        reply::ACCEPT => Response::Accept,
        reply::CONTINUE => Response::Continue,
        reply::DISCARD => Response::Discard,
        reply::REJECT => Response::Reject,
        reply::TEMPFAIL => Response::Tempfail,
        reply::SKIP => Response::Skip,
        reply::PROGRESS => Response::Progress,
        reply::SHUTDOWN => Response::Shutdown,
        // Postfix reads the whole buffer and uses it up to the first NUL; so do we.
        reply::REPLY_CODE => {
            let text = data.split(|&b| b == 0).next().unwrap_or(&[]);
            return Ok(Response::ReplyCode(text));
        }
        reply::QUARANTINE => {
            let reason = data.split(|&b| b == 0).next().unwrap_or(&[]);
            return Ok(Response::Quarantine(reason));
        }
        reply::ADD_HEADER => Response::AddHeader {
            name: r.cstr()?,
            value: r.cstr()?,
        },
        reply::INSERT_HEADER => Response::InsertHeader {
            index: r.u32()?,
            name: r.cstr()?,
            value: r.cstr()?,
        },
        reply::CHANGE_HEADER => Response::ChangeHeader {
            index: r.u32()?,
            name: r.cstr()?,
            value: r.cstr()?,
        },
        reply::ADD_RCPT => Response::AddRcpt(r.cstr()?),
        reply::ADD_RCPT_PAR => Response::AddRcptPar {
            rcpt: r.cstr()?,
            args: r.optional_cstr()?,
        },
        reply::DEL_RCPT => Response::DelRcpt(r.cstr()?),
        reply::CHANGE_FROM => Response::ChangeFrom {
            sender: r.cstr()?,
            args: r.optional_cstr()?,
        },
        reply::REPLACE_BODY => return Ok(Response::ReplaceBody(data)),
        reply::OPTNEG | reply::SET_SYMLIST | reply::CONN_FAIL => {
            return Err(ProtocolError::Unexpected {
                code: char::from(code),
                expected: "a reply to an SMTP event",
            });
        }
        other => return Err(ProtocolError::UnknownCode(other)),
    };
    r.finish()?;
    Ok(response)
}

/// Reads the fields of one frame's data.
struct Reader<'a> {
    code: u8,
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(code: u8, data: &'a [u8]) -> Self {
        Self { code, data }
    }

    fn truncated(&self) -> ProtocolError {
        ProtocolError::Truncated {
            code: char::from(self.code),
        }
    }

    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    fn u32(&mut self) -> Result<u32, ProtocolError> {
        let (head, rest) = self
            .data
            .split_first_chunk::<4>()
            .ok_or_else(|| self.truncated())?;
        self.data = rest;
        Ok(u32::from_be_bytes(*head))
    }

    fn cstr(&mut self) -> Result<&'a [u8], ProtocolError> {
        let end = self
            .data
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| self.truncated())?;
        let (s, rest) = self.data.split_at(end);
        self.data = rest.get(1..).unwrap_or(&[]);
        Ok(s)
    }

    fn optional_cstr(&mut self) -> Result<Option<&'a [u8]>, ProtocolError> {
        if self.data.is_empty() {
            Ok(None)
        } else {
            self.cstr().map(Some)
        }
    }

    fn finish(self) -> Result<(), ProtocolError> {
        if self.data.is_empty() {
            Ok(())
        } else {
            Err(ProtocolError::TrailingData {
                code: char::from(self.code),
                len: self.data.len(),
            })
        }
    }
}

/// `SMFIR_REPLYCODE` text as a reply we can send: the filter's class (4xx tempfail, 5xx
/// reject) is kept; the code is kept when it is a mail-system code (`45x`/`55x`),
/// otherwise it becomes `451`/`550`; the enhanced status is kept when well-formed and of
/// the same class, otherwise `4.7.1`/`5.7.1`; the text becomes one line of printable
/// ASCII of at most [`MAX_REPLY_TEXT`] bytes (multi-line replies are joined, Sendmail's
/// `%%` becomes `%`). A text that starts with anything but `4dd`/`5dd` and a space, dash
/// or end is an error: Postfix treats it so too.
pub fn sanitize_reply_code(raw: &[u8]) -> Result<Reply, ProtocolError> {
    let raw = raw.split(|&b| b == 0).next().unwrap_or(&[]);
    let [class, d2, d3, rest @ ..] = raw else {
        return Err(ProtocolError::BadReplyCode);
    };
    if !matches!(class, b'4' | b'5') || !d2.is_ascii_digit() || !d3.is_ascii_digit() {
        return Err(ProtocolError::BadReplyCode);
    }
    if !matches!(rest.first(), None | Some(b' ' | b'-' | b'\r' | b'\n')) {
        return Err(ProtocolError::BadReplyCode);
    }
    let permanent = *class == b'5';
    let code = if *d2 == b'5' {
        u16::from(class - b'0') * 100 + u16::from(d2 - b'0') * 10 + u16::from(d3 - b'0')
    } else if permanent {
        550
    } else {
        451
    };
    // Each line: strip its own "ddd " / "ddd-" prefix, then collect the text.
    let mut texts: Vec<&[u8]> = Vec::new();
    for line in raw.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let text = match line {
            [a, b, c, sep, tail @ ..]
                if a.is_ascii_digit()
                    && b.is_ascii_digit()
                    && c.is_ascii_digit()
                    && matches!(sep, b' ' | b'-') =>
            {
                tail
            }
            [a, b, c] if a.is_ascii_digit() && b.is_ascii_digit() && c.is_ascii_digit() => &[],
            other => other,
        };
        texts.push(text);
    }
    let default_status = if permanent { "5.7.1" } else { "4.7.1" };
    let mut status = None;
    let mut joined = Vec::new();
    for text in texts {
        let text = trim_ascii(text);
        let text = match enhanced_status(text, *class) {
            Some((s, tail)) => {
                status.get_or_insert(s);
                trim_ascii(tail)
            }
            None => text,
        };
        if text.is_empty() {
            continue;
        }
        if !joined.is_empty() {
            joined.push(b' ');
        }
        joined.extend_from_slice(text);
    }
    let mut text = printable_line(&unescape_percent(&joined), MAX_REPLY_TEXT);
    if text.is_empty() {
        text = if permanent {
            DEFAULT_REJECT_TEXT
        } else {
            DEFAULT_TEMPFAIL_TEXT
        }
        .to_string();
    }
    let status = status.unwrap_or_else(|| default_status.to_string());
    Ok(Reply::new(code, format!("{status} {text}")))
}

const DEFAULT_REJECT_TEXT: &str = "Message rejected by content filter";
const DEFAULT_TEMPFAIL_TEXT: &str = "Message deferred by content filter, try again later";

/// The reply for a reject without `SMFIR_REPLYCODE`.
pub fn default_reject() -> Reply {
    Reply::new(550, format!("5.7.1 {DEFAULT_REJECT_TEXT}"))
}

/// The reply for a tempfail without `SMFIR_REPLYCODE` (and for `SMFIR_SHUTDOWN`).
pub fn default_tempfail() -> Reply {
    Reply::new(451, format!("4.7.1 {DEFAULT_TEMPFAIL_TEXT}"))
}

/// `d.ddd.ddd` at the start of `text` (class digit matching the reply's), and the rest.
fn enhanced_status(text: &[u8], class: u8) -> Option<(String, &[u8])> {
    let end = text.iter().position(|&b| b == b' ').unwrap_or(text.len());
    let (token, tail) = text.split_at(end);
    let token = std::str::from_utf8(token).ok()?;
    let mut parts = token.split('.');
    let (c, subject, detail) = (parts.next()?, parts.next()?, parts.next()?);
    let digits = |s: &str, max: usize| {
        !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_digit())
    };
    let ok = parts.next().is_none()
        && c.as_bytes() == [class]
        && digits(subject, 3)
        && digits(detail, 3);
    ok.then(|| (token.to_string(), tail))
}

fn trim_ascii(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if first.is_ascii_whitespace() {
            s = rest;
        } else {
            break;
        }
    }
    while let [rest @ .., last] = s {
        if last.is_ascii_whitespace() {
            s = rest;
        } else {
            break;
        }
    }
    s
}

/// Sendmail uses the reply as a format string: `%%` is a `%`, a single `%` is dropped
/// (as Postfix does).
fn unescape_percent(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut it = s.iter().copied();
    while let Some(b) = it.next() {
        if b == b'%' {
            if let Some(next) = it.next() {
                if next == b'%' {
                    out.push(b'%');
                } else {
                    out.push(next);
                }
            }
        } else {
            out.push(b);
        }
    }
    out
}

/// One line of printable ASCII: control characters and non-ASCII bytes become spaces,
/// runs of spaces one space, trimmed, cut to `max` bytes.
fn printable_line(s: &[u8], max: usize) -> String {
    let mut out = String::new();
    for &b in s {
        let c = if (0x21..=0x7e).contains(&b) { b } else { b' ' };
        if c == b' ' && (out.is_empty() || out.ends_with(' ')) {
            continue;
        }
        if out.len() >= max {
            break;
        }
        out.push(char::from(c));
    }
    out.truncate(out.trim_end().len());
    out
}

// ---------------------------------------------------------------------------------------
// Verdicts and modifications

/// What the filter decided about one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Deliver (after applying the modifications). Every step continued, or the filter
    /// accepted (which ends this filter for the message).
    Accept,
    /// Refuse with this 5xx reply.
    Reject(Reply),
    /// Refuse for now with this 4xx reply.
    Tempfail(Reply),
    /// Answer `250` and never deliver.
    Discard,
    /// Answer `250` and hold the message (with the modifications) with this reason.
    Quarantine { reason: String },
}

impl Verdict {
    /// A short name for logs and metrics labels.
    pub fn name(&self) -> &'static str {
        match self {
            Verdict::Accept => "accept",
            Verdict::Reject(_) => "reject",
            Verdict::Tempfail(_) => "tempfail",
            Verdict::Discard => "discard",
            Verdict::Quarantine { .. } => "quarantine",
        }
    }
}

/// One change the filter asked for at end of body, in the order it asked. Header names
/// are printable ASCII; header values are the bytes that follow `Name:` in the delivered
/// message (leading space included, continuation lines joined with CRLF and each starting
/// with white space, no final CRLF).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Edit {
    /// Append a header at the end of the header block.
    AddHeader { name: String, value: Vec<u8> },
    /// Insert a header before the header at 0-based `index` (past the end: append).
    InsertHeader {
        index: u32,
        name: String,
        value: Vec<u8>,
    },
    /// Replace the value of the `index`-th (1-based) header called `name`; when there are
    /// fewer, append it (libmilter's `smfi_chgheader`).
    ChangeHeader {
        index: u32,
        name: String,
        value: Vec<u8>,
    },
    /// Delete the `index`-th (1-based) header called `name` (a change with an empty
    /// value); nothing when there are fewer.
    DeleteHeader { index: u32, name: String },
    /// Add a recipient (`args`: ESMTP arguments from `SMFIR_ADDRCPT_PAR`).
    AddRecipient {
        address: String,
        args: Option<String>,
    },
    /// Remove a recipient.
    DeleteRecipient { address: String },
    /// Replace the envelope sender (`""` = null sender).
    ChangeSender {
        address: String,
        args: Option<String>,
    },
}

/// What the filter asked to change, collected during end of body.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Modifications {
    pub edits: Vec<Edit>,
    /// The new body (CRLF line ends, ending in CRLF when not empty), when the filter
    /// replaced it.
    pub replacement_body: Option<Vec<u8>>,
}

impl Modifications {
    pub fn is_empty(&self) -> bool {
        self.edits.is_empty() && self.replacement_body.is_none()
    }
}

/// What one message's exchange with the filter came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub verdict: Verdict,
    /// Empty unless the verdict is `Accept` or `Quarantine` (a refused or discarded
    /// message is not delivered, so its modifications are dropped).
    pub modifications: Modifications,
    /// The event the filter decided at.
    pub decided_at: Stage,
}

/// Bounds on what a filter may send for one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest reply frame.
    pub max_frame: usize,
    /// Most reply frames (progress and modifications included) per message.
    pub max_replies: usize,
    /// Most header additions, insertions, changes and deletions per message.
    pub max_header_edits: usize,
    /// Most bytes of header names and values added or changed per message.
    pub max_header_bytes: usize,
    /// Most recipient additions and deletions per message.
    pub max_recipient_edits: usize,
    /// Largest replacement body; a larger one is a protocol error (the filter counts as
    /// unavailable for the message). The body is held in memory until delivery's spool
    /// rewrite, so this bounds memory per filtered message.
    pub max_replacement_body: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame: MAX_FRAME,
            max_replies: 10_000,
            max_header_edits: 256,
            max_header_bytes: 128 * 1024,
            max_recipient_edits: 100,
            max_replacement_body: 4 * 1024 * 1024,
        }
    }
}

/// What to do after one reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Read another reply for the same event (progress, a modification, a quarantine).
    Wait,
    /// Go on with the next event.
    Continue,
    /// Go on, but send no more events of this kind (`SMFIR_SKIP`: remaining body
    /// chunks, headers or recipients).
    Skip,
    /// The filter decided; send nothing more for this message.
    Decided(Outcome),
}

/// The filter's replies for one message, as a state machine: feed every reply frame to
/// [`MessageReplies::on_reply`] with the event it answers, until it returns
/// [`Step::Decided`] (or, after `Continue` at the last event, call
/// [`MessageReplies::finish`]).
#[derive(Clone, Debug)]
pub struct MessageReplies {
    allowed: Actions,
    leading_space: bool,
    limits: Limits,
    modifications: Modifications,
    quarantine: Option<String>,
    replies: usize,
    header_edits: usize,
    header_bytes: usize,
    recipient_edits: usize,
    body: BodyState,
    shutdown: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum BodyState {
    None,
    /// Collecting; `cr` = the last byte was a CR not yet known to start a CRLF.
    Collecting {
        cr: bool,
    },
    Done,
}

impl MessageReplies {
    pub fn new(negotiated: &Negotiated, limits: Limits) -> Self {
        Self {
            allowed: negotiated.actions,
            leading_space: negotiated.leading_space(),
            limits,
            modifications: Modifications::default(),
            quarantine: None,
            replies: 0,
            header_edits: 0,
            header_bytes: 0,
            recipient_edits: 0,
            body: BodyState::None,
            shutdown: false,
        }
    }

    /// The filter said it is shutting down (`SMFIR_SHUTDOWN`): do not reuse the
    /// connection.
    pub fn filter_closing(&self) -> bool {
        self.shutdown
    }

    /// Handles one reply frame (code byte and data) to event `stage`.
    pub fn on_reply(&mut self, stage: Stage, frame: &[u8]) -> Result<Step, ProtocolError> {
        self.replies += 1;
        if self.replies > self.limits.max_replies {
            return Err(ProtocolError::TooMany {
                what: "replies",
                limit: self.limits.max_replies,
            });
        }
        let code = char::from(frame.first().copied().unwrap_or(0));
        let response = parse_response(frame)?;
        if stage == Stage::EndOfBody
            && matches!(self.body, BodyState::Collecting { .. })
            && !matches!(response, Response::ReplaceBody(_))
        {
            self.finish_body();
        }
        let decided = |verdict| {
            Step::Decided(Outcome {
                verdict,
                modifications: Modifications::default(),
                decided_at: stage,
            })
        };
        Ok(match response {
            Response::Progress => Step::Wait,
            Response::Continue if stage == Stage::EndOfBody => Step::Decided(self.accept(stage)),
            Response::Continue => Step::Continue,
            Response::Skip if stage == Stage::EndOfBody => Step::Decided(self.accept(stage)),
            Response::Skip => Step::Skip,
            Response::Accept => Step::Decided(self.accept(stage)),
            Response::Discard => decided(Verdict::Discard),
            Response::Reject => decided(Verdict::Reject(default_reject())),
            Response::Tempfail => decided(Verdict::Tempfail(default_tempfail())),
            Response::Shutdown => {
                self.shutdown = true;
                decided(Verdict::Tempfail(default_tempfail()))
            }
            Response::ReplyCode(text) => {
                let reply = sanitize_reply_code(text)?;
                if reply.code >= 500 {
                    decided(Verdict::Reject(reply))
                } else {
                    decided(Verdict::Tempfail(reply))
                }
            }
            Response::Quarantine(reason) => {
                // Postfix takes it at any event and keeps reading; it is not a decision.
                self.require(code, Actions::QUARANTINE, "QUARANTINE")?;
                let mut reason = printable_line(reason, MAX_REASON);
                if reason.is_empty() {
                    reason = "held by content filter".to_string();
                }
                self.quarantine = Some(reason);
                Step::Wait
            }
            modification => {
                if stage != Stage::EndOfBody {
                    return Err(ProtocolError::ModificationTooEarly { code });
                }
                self.modify(code, modification)?;
                Step::Wait
            }
        })
    }

    /// The outcome when the last event was answered `Continue` without a decision (only
    /// possible when the filter does not reply to end of body, which libmilter never
    /// allows; kept so the caller never has to invent one).
    pub fn finish(mut self, stage: Stage) -> Outcome {
        self.finish_body();
        self.accept(stage)
    }

    fn accept(&mut self, stage: Stage) -> Outcome {
        self.finish_body();
        let modifications = std::mem::take(&mut self.modifications);
        let verdict = match self.quarantine.take() {
            Some(reason) => Verdict::Quarantine { reason },
            None => Verdict::Accept,
        };
        Outcome {
            verdict,
            modifications,
            decided_at: stage,
        }
    }

    fn require(
        &self,
        code: char,
        action: Actions,
        name: &'static str,
    ) -> Result<(), ProtocolError> {
        if self.allowed.contains(action) {
            Ok(())
        } else {
            Err(ProtocolError::NotNegotiated { code, action: name })
        }
    }

    fn modify(&mut self, code: char, response: Response<'_>) -> Result<(), ProtocolError> {
        if let Response::ReplaceBody(chunk) = response {
            self.require(code, Actions::CHANGE_BODY, "CHGBODY")?;
            return self.collect_body(chunk);
        }
        let edit = match response {
            Response::AddHeader { name, value } => {
                self.require(code, Actions::ADD_HEADERS, "ADDHDRS")?;
                let (name, value) = self.header(name, value)?;
                Edit::AddHeader { name, value }
            }
            Response::InsertHeader { index, name, value } => {
                self.require(code, Actions::ADD_HEADERS, "ADDHDRS")?;
                let (name, value) = self.header(name, value)?;
                Edit::InsertHeader { index, name, value }
            }
            Response::ChangeHeader { index, name, value } => {
                self.require(code, Actions::CHANGE_HEADERS, "CHGHDRS")?;
                // Sendmail compatibility (as Postfix): index 0 means the first.
                let index = index.max(1);
                if index > i32::MAX as u32 {
                    return Err(ProtocolError::BadHeaderIndex(index));
                }
                if value.is_empty() {
                    let (name, _) = self.header(name, b"")?;
                    Edit::DeleteHeader { index, name }
                } else {
                    let (name, value) = self.header(name, value)?;
                    Edit::ChangeHeader { index, name, value }
                }
            }
            Response::AddRcpt(rcpt) => {
                self.require(code, Actions::ADD_RCPT, "ADDRCPT")?;
                self.count_recipient_edit()?;
                Edit::AddRecipient {
                    address: recipient_address(rcpt)?,
                    args: None,
                }
            }
            Response::AddRcptPar { rcpt, args } => {
                self.require(code, Actions::ADD_RCPT_PAR, "ADDRCPT_PAR")?;
                self.count_recipient_edit()?;
                Edit::AddRecipient {
                    address: recipient_address(rcpt)?,
                    args: esmtp_args(args)?,
                }
            }
            Response::DelRcpt(rcpt) => {
                self.require(code, Actions::DEL_RCPT, "DELRCPT")?;
                self.count_recipient_edit()?;
                Edit::DeleteRecipient {
                    address: recipient_address(rcpt)?,
                }
            }
            Response::ChangeFrom { sender, args } => {
                self.require(code, Actions::CHANGE_FROM, "CHGFROM")?;
                Edit::ChangeSender {
                    address: sender_address(sender)?,
                    args: esmtp_args(args)?,
                }
            }
            _ => {
                return Err(ProtocolError::Unexpected {
                    code,
                    expected: "a modification",
                });
            }
        };
        self.modifications.edits.push(edit);
        Ok(())
    }

    fn header(&mut self, name: &[u8], value: &[u8]) -> Result<(String, Vec<u8>), ProtocolError> {
        self.header_edits += 1;
        if self.header_edits > self.limits.max_header_edits {
            return Err(ProtocolError::TooMany {
                what: "header edits",
                limit: self.limits.max_header_edits,
            });
        }
        self.header_bytes += name.len() + value.len();
        if self.header_bytes > self.limits.max_header_bytes {
            return Err(ProtocolError::TooMany {
                what: "bytes of header edits",
                limit: self.limits.max_header_bytes,
            });
        }
        let name = header_name(name)?;
        let value = delivered_header_value(value, self.leading_space)?;
        Ok((name, value))
    }

    fn count_recipient_edit(&mut self) -> Result<(), ProtocolError> {
        self.recipient_edits += 1;
        if self.recipient_edits > self.limits.max_recipient_edits {
            return Err(ProtocolError::TooMany {
                what: "recipient edits",
                limit: self.limits.max_recipient_edits,
            });
        }
        Ok(())
    }

    /// Appends a replacement body chunk, turning bare CR and bare LF into CRLF (the
    /// delivered text must not carry them: SMTP smuggling).
    fn collect_body(&mut self, chunk: &[u8]) -> Result<(), ProtocolError> {
        let mut cr = match self.body {
            BodyState::None => false,
            BodyState::Collecting { cr } => cr,
            BodyState::Done => return Err(ProtocolError::BodyReplacementSplit),
        };
        let body = self
            .modifications
            .replacement_body
            .get_or_insert_with(Vec::new);
        for &b in chunk {
            match (cr, b) {
                (_, b'\r') => {
                    if cr {
                        body.push(b'\n');
                    }
                    body.push(b'\r');
                    cr = true;
                    continue;
                }
                (true, b'\n') => body.push(b'\n'),
                (false, b'\n') => body.extend_from_slice(b"\r\n"),
                (true, other) => body.extend_from_slice(&[b'\n', other]),
                (false, other) => body.push(other),
            }
            cr = false;
        }
        if body.len() > self.limits.max_replacement_body {
            return Err(ProtocolError::TooMany {
                what: "bytes of replacement body",
                limit: self.limits.max_replacement_body,
            });
        }
        self.body = BodyState::Collecting { cr };
        Ok(())
    }

    fn finish_body(&mut self) {
        if let BodyState::Collecting { cr } = self.body {
            if let Some(body) = self.modifications.replacement_body.as_mut() {
                if cr {
                    body.push(b'\n');
                }
                if !body.is_empty() && !body.ends_with(b"\r\n") {
                    body.extend_from_slice(b"\r\n");
                }
            }
            self.body = BodyState::Done;
        }
    }
}

/// A header name from a filter: 1 to 200 printable ASCII characters, no colon.
fn header_name(name: &[u8]) -> Result<String, ProtocolError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_HEADER_NAME
        && name
            .iter()
            .all(|&b| (0x21..=0x7e).contains(&b) && b != b':');
    if !ok {
        return Err(ProtocolError::BadHeaderName);
    }
    Ok(String::from_utf8_lossy(name).into_owned())
}

/// A header value from a filter as the bytes after `Name:` in the delivered message.
/// Lines are separated by LF (CRLF tolerated); each continuation must start with white
/// space (otherwise it would start a new header: refused), blank continuation lines
/// (which would end the header block) are dropped, a bare CR becomes a space. Without
/// `SMFIP_HDR_LEADSPC` the filter's value lacks the space after the colon: one is added.
fn delivered_header_value(value: &[u8], leading_space: bool) -> Result<Vec<u8>, ProtocolError> {
    let mut out = Vec::with_capacity(value.len() + 4);
    if !leading_space {
        out.push(b' ');
    }
    for (i, line) in value.split(|&b| b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if i > 0 {
            if line.iter().all(|b| *b == b' ' || *b == b'\t') {
                continue;
            }
            if !matches!(line.first(), Some(b' ' | b'\t')) {
                return Err(ProtocolError::BadHeaderValue);
            }
            out.extend_from_slice(b"\r\n");
        }
        out.extend(line.iter().map(|&b| if b == b'\r' { b' ' } else { b }));
    }
    Ok(out)
}

/// A recipient from a filter, checked with the relay's own RFC 5321 parser (angle
/// brackets optional) and its domain made an A-label.
fn recipient_address(raw: &[u8]) -> Result<String, ProtocolError> {
    let inner = address_text(raw)?;
    match smtp::parse_command(format!("RCPT TO:<{inner}>").as_bytes()) {
        Ok(SmtpCommand::Rcpt {
            to: Path::Address(a),
        }) => crate::idn::address_to_ascii_domain(&a)
            .ok_or_else(|| ProtocolError::BadAddress(inner.to_string())),
        _ => Err(ProtocolError::BadAddress(inner.to_string())),
    }
}

/// A new envelope sender from a filter (`<>` or empty: the null sender).
fn sender_address(raw: &[u8]) -> Result<String, ProtocolError> {
    let inner = address_text(raw)?;
    if inner.is_empty() {
        return Ok(String::new());
    }
    match smtp::parse_command(format!("MAIL FROM:<{inner}> SMTPUTF8").as_bytes()) {
        Ok(SmtpCommand::Mail {
            from: Path::Address(a),
            ..
        }) => crate::idn::address_to_ascii_domain(&a)
            .ok_or_else(|| ProtocolError::BadAddress(inner.to_string())),
        _ => Err(ProtocolError::BadAddress(inner.to_string())),
    }
}

fn address_text(raw: &[u8]) -> Result<&str, ProtocolError> {
    let shown = || {
        let head: String = String::from_utf8_lossy(raw).chars().take(64).collect();
        ProtocolError::BadAddress(head)
    };
    let text = std::str::from_utf8(raw).map_err(|_| shown())?;
    if text.len() > MAX_ADDRESS {
        return Err(shown());
    }
    let text = text.trim();
    Ok(text
        .strip_prefix('<')
        .and_then(|t| t.strip_suffix('>'))
        .unwrap_or(text))
}

fn esmtp_args(args: Option<&[u8]>) -> Result<Option<String>, ProtocolError> {
    let Some(args) = args else {
        return Ok(None);
    };
    let args = trim_ascii(args);
    if args.len() > MAX_ESMTP_ARGS || !args.iter().all(|&b| (0x20..=0x7e).contains(&b)) {
        return Err(ProtocolError::BadEsmtpArgs);
    }
    Ok((!args.is_empty()).then(|| String::from_utf8_lossy(args).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame(code: u8, data: &[u8]) -> Vec<u8> {
        let mut f = vec![code];
        f.extend_from_slice(data);
        f
    }

    fn all_actions() -> Negotiated {
        Negotiated {
            version: 6,
            actions: Actions::OFFERED,
            ..Negotiated::default()
        }
    }

    fn eob(frames: &[Vec<u8>]) -> Result<Step, ProtocolError> {
        let mut m = MessageReplies::new(&all_actions(), Limits::default());
        let mut last = Step::Wait;
        for f in frames {
            last = m.on_reply(Stage::EndOfBody, f)?;
        }
        Ok(last)
    }

    fn outcome(step: Step) -> Outcome {
        match step {
            Step::Decided(o) => o,
            other => panic!("not decided: {other:?}"),
        }
    }

    #[test]
    fn commands_encode_as_libmilter_expects() {
        let mut out = Vec::new();
        Command::OptNeg {
            version: 6,
            actions: Actions::OFFERED,
            protocol: ProtocolFlags::OFFERED,
        }
        .encode(&mut out);
        assert_eq!(
            out,
            [
                0, 0, 0, 13, b'O', 0, 0, 0, 6, 0, 0, 1, 0xff, 0, 0x1f, 0xf7, 0xff
            ]
        );
        out.clear();
        Command::Connect {
            hostname: "mx.example",
            client: Some("192.0.2.1:2525".parse().unwrap()),
        }
        .encode(&mut out);
        assert_eq!(&out[4..], b"Cmx.example\x004\x09\xdd192.0.2.1\x00");
        out.clear();
        Command::Connect {
            hostname: "[2001:db8::1]",
            client: Some("[2001:db8::1]:25".parse().unwrap()),
        }
        .encode(&mut out);
        assert_eq!(&out[4..], b"C[2001:db8::1]\x006\x00\x192001:db8::1\x00");
        out.clear();
        Command::Connect {
            hostname: "unknown",
            client: None,
        }
        .encode(&mut out);
        assert_eq!(&out[4..], b"Cunknown\x00U");
        out.clear();
        Command::Mail {
            sender: "",
            args: &["SIZE=10".into(), "BODY=8BITMIME".into()],
        }
        .encode(&mut out);
        assert_eq!(&out[4..], b"M<>\x00SIZE=10\x00BODY=8BITMIME\x00");
        out.clear();
        Command::Macro {
            stage: MacroStage::Mail,
            macros: &[("i", "0001".into()), ("{mail_addr}", "a@b\0c".into())],
        }
        .encode(&mut out);
        assert_eq!(&out[4..], b"DMi\x000001\x00{mail_addr}\x00a@b c\x00");
        assert_eq!(
            u32::from_be_bytes(out[..4].try_into().unwrap()) as usize,
            out.len() - 4
        );
    }

    #[test]
    fn frames_are_bounded_before_they_are_read() {
        assert_eq!(split_frame(&[0, 0, 0], MAX_FRAME), Ok(None));
        assert_eq!(split_frame(&[0, 0, 0, 2, b'c'], MAX_FRAME), Ok(None));
        assert_eq!(
            split_frame(&[0, 0, 0, 1, b'c', 9], MAX_FRAME),
            Ok(Some((&b"c"[..], 5)))
        );
        assert_eq!(
            split_frame(&[0, 0, 0, 0], MAX_FRAME),
            Err(ProtocolError::EmptyFrame(0))
        );
        assert!(matches!(
            split_frame(&[0xff, 0xff, 0xff, 0xff], MAX_FRAME),
            Err(ProtocolError::FrameTooLong { .. })
        ));
        assert!(frame_len((MAX_FRAME as u32).to_be_bytes(), MAX_FRAME).is_ok());
        assert!(frame_len((MAX_FRAME as u32 + 1).to_be_bytes(), MAX_FRAME).is_err());
    }

    #[test]
    fn option_negotiation_keeps_what_we_offered_and_the_symbol_lists() {
        let mut data = Vec::new();
        data.extend_from_slice(&6u32.to_be_bytes());
        data.extend_from_slice(&0xffff_ffffu32.to_be_bytes());
        data.extend_from_slice(&0xffff_ffffu32.to_be_bytes());
        data.extend_from_slice(&2u32.to_be_bytes());
        data.extend_from_slice(b"{mail_addr} i  {auth_authen}\0");
        data.extend_from_slice(&42u32.to_be_bytes());
        data.extend_from_slice(b"ignored\0");
        let n = parse_optneg(&frame(b'O', &data)).unwrap();
        assert_eq!(n.version, 6);
        assert_eq!(n.actions, Actions::OFFERED);
        assert_eq!(n.protocol, ProtocolFlags::OFFERED);
        assert_eq!(
            n.macro_names(MacroStage::Mail),
            ["{mail_addr}", "i", "{auth_authen}"]
        );
        assert_eq!(n.macro_names(MacroStage::Rcpt), ["i", "{rcpt_addr}"]);
        assert!(!n.sends(Stage::Body) && !n.expects_reply(Stage::Header));

        // An older filter: no v6 steps, and no DATA before version 4.
        let mut v2 = Vec::new();
        v2.extend_from_slice(&2u32.to_be_bytes());
        v2.extend_from_slice(&1u32.to_be_bytes());
        v2.extend_from_slice(&(ProtocolFlags::NR_BODY.0 | 1).to_be_bytes());
        let n = parse_optneg(&frame(b'O', &v2)).unwrap();
        assert_eq!(n.protocol.0, 1 | ProtocolFlags::NO_DATA.0);
        assert!(!n.sends(Stage::Data) && n.expects_reply(Stage::Body));

        for bad_version in [0u32, 1, 7, u32::MAX] {
            let mut d = bad_version.to_be_bytes().to_vec();
            d.extend_from_slice(&[0; 8]);
            assert_eq!(
                parse_optneg(&frame(b'O', &d)),
                Err(ProtocolError::UnsupportedVersion(bad_version))
            );
        }
        assert!(parse_optneg(&frame(b'O', &[0, 0, 0, 6, 0, 0])).is_err());
        assert!(parse_optneg(&frame(b'c', &[])).is_err());
        // A symbol list without its NUL.
        let mut d = data[..12].to_vec();
        d.extend_from_slice(&[0, 0, 0, 1, b'j']);
        assert!(parse_optneg(&frame(b'O', &d)).is_err());
    }

    #[test]
    fn replies_parse_strictly() {
        assert_eq!(parse_response(b"c"), Ok(Response::Continue));
        assert_eq!(
            parse_response(b"cx"),
            Err(ProtocolError::TrailingData { code: 'c', len: 1 })
        );
        assert_eq!(
            parse_response(b"hX-A\0v\0"),
            Ok(Response::AddHeader {
                name: b"X-A",
                value: b"v"
            })
        );
        assert!(parse_response(b"hX-A\0v").is_err());
        assert!(parse_response(b"hX-A\0v\0junk").is_err());
        assert!(parse_response(b"m\0\0").is_err());
        assert_eq!(
            parse_response(b"m\0\0\0\x02Subject\0\0"),
            Ok(Response::ChangeHeader {
                index: 2,
                name: b"Subject",
                value: b""
            })
        );
        assert_eq!(
            parse_response(b"e<a@b>\0"),
            Ok(Response::ChangeFrom {
                sender: b"<a@b>",
                args: None
            })
        );
        assert_eq!(
            parse_response(b"2<a@b>\0NOTIFY=NEVER\0"),
            Ok(Response::AddRcptPar {
                rcpt: b"<a@b>",
                args: Some(b"NOTIFY=NEVER")
            })
        );
        assert_eq!(
            parse_response(b"y550 5.7.1 no\0"),
            Ok(Response::ReplyCode(b"550 5.7.1 no"))
        );
        assert_eq!(parse_response(b"y451 x"), Ok(Response::ReplyCode(b"451 x")));
        assert_eq!(parse_response(b"Z"), Err(ProtocolError::UnknownCode(b'Z')));
        assert!(parse_response(b"O\0\0\0\x06").is_err());
        assert!(parse_response(b"f").is_err());
        assert!(parse_response(b"").is_err());
    }

    #[test]
    fn reply_codes_are_sanitized_to_one_bounded_line_of_their_class() {
        let r = |s: &[u8]| sanitize_reply_code(s).map(|r| r.to_string());
        assert_eq!(
            r(b"554 5.7.1 Gtube pattern").unwrap(),
            "554 5.7.1 Gtube pattern\r\n"
        );
        assert_eq!(r(b"550 Spam\r\n").unwrap(), "550 5.7.1 Spam\r\n");
        assert_eq!(r(b"452 4.3.1 Busy").unwrap(), "452 4.3.1 Busy\r\n");
        // Not a mail-system code: the class default; enhanced status of the wrong class
        // replaced.
        assert_eq!(
            r(b"521 4.7.1 go away").unwrap(),
            "550 5.7.1 4.7.1 go away\r\n"
        );
        assert_eq!(r(b"421 4.3.2 closing").unwrap(), "451 4.3.2 closing\r\n");
        assert_eq!(
            r(b"550-5.7.1 first line\r\n550 5.7.1 second\tline").unwrap(),
            "550 5.7.1 first line second line\r\n"
        );
        assert_eq!(
            r(b"550 5.7.1 100%% sure, 5% not").unwrap(),
            "550 5.7.1 100% sure, 5 not\r\n"
        );
        assert_eq!(
            r(b"550").unwrap(),
            "550 5.7.1 Message rejected by content filter\r\n"
        );
        assert_eq!(
            r(b"451 \x01\xff ").unwrap(),
            "451 4.7.1 Message deferred by content filter, try again later\r\n"
        );
        let long = [b"550 5.7.1 ".as_slice(), &[b'x'; 1000]].concat();
        let reply = sanitize_reply_code(&long).unwrap();
        assert_eq!(
            reply.lines,
            [format!("5.7.1 {}", "x".repeat(MAX_REPLY_TEXT))]
        );
        for bad in [
            &b"250 ok"[..],
            b"2",
            b"55",
            b"5x0 no",
            b"5501 no",
            b"hello",
            b"",
        ] {
            assert_eq!(
                sanitize_reply_code(bad),
                Err(ProtocolError::BadReplyCode),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn each_final_reply_becomes_its_verdict() {
        let v = |f: &[u8]| outcome(eob(&[f.to_vec()]).unwrap()).verdict;
        assert_eq!(v(b"c"), Verdict::Accept);
        assert_eq!(v(b"a"), Verdict::Accept);
        assert_eq!(v(b"s"), Verdict::Accept);
        assert_eq!(v(b"d"), Verdict::Discard);
        assert_eq!(v(b"r"), Verdict::Reject(default_reject()));
        assert_eq!(v(b"t"), Verdict::Tempfail(default_tempfail()));
        assert_eq!(v(b"4"), Verdict::Tempfail(default_tempfail()));
        assert_eq!(
            v(b"y554 5.7.1 Gtube pattern\0"),
            Verdict::Reject(Reply::new(554, "5.7.1 Gtube pattern"))
        );
        assert_eq!(
            v(b"y451 4.7.1 Try later\0"),
            Verdict::Tempfail(Reply::new(451, "4.7.1 Try later"))
        );
        assert_eq!(
            outcome(eob(&[b"qInfected  \x07 file\0".to_vec(), b"c".to_vec()]).unwrap()).verdict,
            Verdict::Quarantine {
                reason: "Infected file".into()
            }
        );
        // Quarantine then discard: the final word wins.
        assert_eq!(
            outcome(eob(&[b"qx\0".to_vec(), b"d".to_vec()]).unwrap()).verdict,
            Verdict::Discard
        );
    }

    #[test]
    fn modifications_are_collected_in_order_and_dropped_on_refusal() {
        let frames = [
            b"p".to_vec(),
            b"hX-Spam\0No\0".to_vec(),
            b"i\0\0\0\0DKIM-Signature\0v=1;\n\tb=abc\0".to_vec(),
            b"m\0\0\0\0Subject\0[SPAM] hi\0".to_vec(),
            b"m\0\0\0\x02Received\0\0".to_vec(),
            b"+<New@Example.COM>\0".to_vec(),
            b"2x@b\xc3\xbccher.example\0NOTIFY=NEVER\0".to_vec(),
            b"-<old@example.com>\0".to_vec(),
            b"e<>\0".to_vec(),
        ];
        let mut accepted = frames.to_vec();
        accepted.push(b"a".to_vec());
        let o = outcome(eob(&accepted).unwrap());
        assert_eq!(o.verdict, Verdict::Accept);
        assert_eq!(
            o.modifications.edits,
            [
                Edit::AddHeader {
                    name: "X-Spam".into(),
                    value: b" No".to_vec()
                },
                Edit::InsertHeader {
                    index: 0,
                    name: "DKIM-Signature".into(),
                    value: b" v=1;\r\n\tb=abc".to_vec()
                },
                Edit::ChangeHeader {
                    index: 1,
                    name: "Subject".into(),
                    value: b" [SPAM] hi".to_vec()
                },
                Edit::DeleteHeader {
                    index: 2,
                    name: "Received".into()
                },
                Edit::AddRecipient {
                    address: "New@example.com".into(),
                    args: None
                },
                Edit::AddRecipient {
                    address: "x@xn--bcher-kva.example".into(),
                    args: Some("NOTIFY=NEVER".into())
                },
                Edit::DeleteRecipient {
                    address: "old@example.com".into()
                },
                Edit::ChangeSender {
                    address: String::new(),
                    args: None
                },
            ]
        );
        let mut rejected = frames.to_vec();
        rejected.push(b"r".to_vec());
        let o = outcome(eob(&rejected).unwrap());
        assert!(matches!(o.verdict, Verdict::Reject(_)));
        assert!(o.modifications.is_empty());
    }

    #[test]
    fn modifications_outside_end_of_body_or_not_negotiated_are_errors() {
        let mut m = MessageReplies::new(&all_actions(), Limits::default());
        assert_eq!(
            m.on_reply(Stage::Header, b"hX\0y\0"),
            Err(ProtocolError::ModificationTooEarly { code: 'h' })
        );
        let only_headers = Negotiated {
            version: 6,
            actions: Actions::ADD_HEADERS,
            ..Negotiated::default()
        };
        let mut m = MessageReplies::new(&only_headers, Limits::default());
        assert!(m.on_reply(Stage::EndOfBody, b"hX\0y\0").is_ok());
        for f in [
            &b"+a@b\0"[..],
            b"-a@b\0",
            b"e<>\0",
            b"bxx",
            b"m\0\0\0\x01X\0\0",
            b"qq\0",
        ] {
            assert!(
                matches!(
                    m.on_reply(Stage::EndOfBody, f),
                    Err(ProtocolError::NotNegotiated { .. })
                ),
                "{f:?}"
            );
        }
    }

    #[test]
    fn header_values_cannot_inject_headers_or_end_the_block() {
        let v = |s: &[u8], lead| delivered_header_value(s, lead);
        assert_eq!(v(b"a\n\tb", false).unwrap(), b" a\r\n\tb");
        assert_eq!(v(b" a\r\n b", true).unwrap(), b" a\r\n b");
        assert_eq!(v(b"a\n\n \n\tb", false).unwrap(), b" a\r\n\tb");
        assert_eq!(v(b"a\rb", false).unwrap(), b" a b");
        assert_eq!(v(b"a\nBcc: x@y", false), Err(ProtocolError::BadHeaderValue));
        for bad in [&b""[..], b"X Y", b"X:Y", b"\xc3\xa9"] {
            assert_eq!(header_name(bad), Err(ProtocolError::BadHeaderName));
        }
        for bad in [&b"a b@c"[..], b"<>", b"", b"a@[192.0.2.1]", b"\xff@x"] {
            assert!(recipient_address(bad).is_err(), "{bad:?}");
        }
        // Too long, in multi-byte characters: refused without slicing a character.
        let long = "é".repeat(300);
        assert!(
            matches!(recipient_address(long.as_bytes()), Err(ProtocolError::BadAddress(a)) if a.chars().count() == 64)
        );
    }

    #[test]
    fn replacement_body_is_normalized_bounded_and_whole() {
        let o = outcome(eob(&[b"ba\nb\r".to_vec(), b"b\nc\r\rd".to_vec(), b"c".to_vec()]).unwrap());
        assert_eq!(
            o.modifications.replacement_body.unwrap(),
            b"a\r\nb\r\nc\r\n\r\nd\r\n"
        );
        assert!(matches!(
            eob(&[b"bx".to_vec(), b"hA\0b\0".to_vec(), b"by".to_vec()]),
            Err(ProtocolError::BodyReplacementSplit)
        ));
        let limits = Limits {
            max_replacement_body: 10,
            ..Limits::default()
        };
        let mut m = MessageReplies::new(&all_actions(), limits);
        assert!(m.on_reply(Stage::EndOfBody, b"b0123456789").is_ok());
        assert!(m.on_reply(Stage::EndOfBody, b"bX").is_err());
    }

    #[test]
    fn limits_bound_what_a_filter_may_send() {
        let limits = Limits {
            max_replies: 5,
            max_header_edits: 2,
            max_recipient_edits: 1,
            ..Limits::default()
        };
        let mut m = MessageReplies::new(&all_actions(), limits.clone());
        for _ in 0..5 {
            assert_eq!(m.on_reply(Stage::EndOfBody, b"p"), Ok(Step::Wait));
        }
        assert!(m.on_reply(Stage::EndOfBody, b"p").is_err());
        let mut m = MessageReplies::new(&all_actions(), limits.clone());
        m.on_reply(Stage::EndOfBody, b"hA\0b\0").unwrap();
        m.on_reply(Stage::EndOfBody, b"hA\0b\0").unwrap();
        assert!(m.on_reply(Stage::EndOfBody, b"hA\0b\0").is_err());
        let mut m = MessageReplies::new(&all_actions(), limits);
        m.on_reply(Stage::EndOfBody, b"+a@b.example\0").unwrap();
        assert!(m.on_reply(Stage::EndOfBody, b"-a@b.example\0").is_err());
    }

    /// A reply frame: mostly well-formed replies of every kind, some arbitrary bytes.
    fn reply_frame() -> impl Strategy<Value = Vec<u8>> {
        let text = proptest::collection::vec(any::<u8>(), 0..40);
        prop_oneof![
            proptest::sample::select(b"acdrtsp4fOlZ".to_vec()).prop_map(|c| vec![c]),
            text.clone().prop_map(|t| [b"y".as_slice(), &t].concat()),
            text.clone().prop_map(|t| [b"y5".as_slice(), &t].concat()),
            text.clone().prop_map(|t| [b"y4".as_slice(), &t].concat()),
            text.clone()
                .prop_map(|t| [b"q".as_slice(), &t, b"\0"].concat()),
            text.clone()
                .prop_map(|t| [b"hX-T\0".as_slice(), &t, b"\0"].concat()),
            (any::<u32>(), text.clone()).prop_map(|(i, t)| [
                b"m".as_slice(),
                &i.to_be_bytes(),
                b"Subject\0",
                &t,
                b"\0"
            ]
            .concat()),
            text.clone()
                .prop_map(|t| [b"+".as_slice(), &t, b"\0"].concat()),
            text.clone().prop_map(|t| [b"b".as_slice(), &t].concat()),
            proptest::collection::vec(any::<u8>(), 0..60),
        ]
    }

    fn is_refusal(frame: &[u8]) -> bool {
        match parse_response(frame) {
            Ok(Response::Reject | Response::Tempfail | Response::Shutdown) => true,
            Ok(Response::ReplyCode(t)) => sanitize_reply_code(t).is_ok(),
            _ => false,
        }
    }

    proptest! {
        #[test]
        fn arbitrary_replies_never_panic_and_a_refusal_never_becomes_an_accept(
            frames in proptest::collection::vec(reply_frame(), 0..30),
            stage in proptest::sample::select(vec![Stage::Mail, Stage::Rcpt, Stage::Header, Stage::Body, Stage::EndOfBody]),
        ) {
            let mut m = MessageReplies::new(&all_actions(), Limits::default());
            let mut consumed = Vec::new();
            for f in &frames {
                consumed.push(f);
                match m.on_reply(stage, f) {
                    Err(_) => return Ok(()),
                    Ok(Step::Wait | Step::Continue | Step::Skip) => continue,
                    Ok(Step::Decided(o)) => {
                        let refused = consumed.iter().any(|f| is_refusal(f));
                        match &o.verdict {
                            Verdict::Accept | Verdict::Quarantine { .. } | Verdict::Discard => {
                                prop_assert!(!refused, "{:?} after {:?}", o.verdict, consumed);
                            }
                            Verdict::Reject(r) => {
                                prop_assert!((500..600).contains(&r.code));
                                prop_assert!(o.modifications.is_empty());
                            }
                            Verdict::Tempfail(r) => {
                                prop_assert!((400..500).contains(&r.code));
                                prop_assert!(o.modifications.is_empty());
                            }
                        }
                        if let Verdict::Reject(r) | Verdict::Tempfail(r) = &o.verdict {
                            prop_assert_eq!(r.lines.len(), 1);
                            prop_assert!(r.lines[0].len() <= MAX_REPLY_TEXT + 12);
                            prop_assert!(r.lines[0].bytes().all(|b| (0x20..0x7f).contains(&b)));
                        }
                        return Ok(());
                    }
                }
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic_the_frame_and_negotiation_parsers(
            bytes in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let _ = parse_optneg(&bytes);
            let _ = parse_response(&bytes);
            let _ = sanitize_reply_code(&bytes);
            if let Ok(Some((frame, used))) = split_frame(&bytes, MAX_FRAME) {
                prop_assert!(used <= bytes.len() && frame.len() + 4 == used);
            }
        }
    }
}
