//! Parses one SMTP command line (without its CRLF) into a [`Command`].
//!
//! Pure and total: any byte string yields either a command or a [`CommandError`] that maps
//! to one reply. It does not check sequencing (that is `session`) or whether an address
//! may be used (that is `policy`).

use std::fmt;

/// SASL mechanisms the relay offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMechanism {
    Plain,
    Login,
}

/// A reverse- or forward-path: `<>` or `<local@domain>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Path {
    /// The null path `<>`.
    Null,
    /// An address; the domain part is lower-cased, the local part kept as sent.
    Address(String),
}

impl Path {
    /// The address, or `""` for the null path.
    pub fn as_str(&self) -> &str {
        match self {
            Path::Null => "",
            Path::Address(a) => a,
        }
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{}>", self.as_str())
    }
}

/// A parsed command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Helo(String),
    Ehlo(String),
    Mail {
        from: Path,
        size: Option<u64>,
    },
    Rcpt {
        to: Path,
    },
    Data,
    Rset,
    Noop,
    Quit,
    StartTls,
    Auth {
        mechanism: AuthMechanism,
        initial: Option<String>,
    },
    Vrfy,
    Help,
}

/// Why a line is not a command we accept; each maps to one reply in `session`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommandError {
    /// Unknown verb.
    Unrecognized,
    /// Known verb, bad arguments; the text says what was expected.
    Syntax(&'static str),
    /// A MAIL/RCPT parameter we do not support.
    UnsupportedParameter(String),
    /// AUTH with a mechanism we do not offer.
    UnsupportedMechanism,
    /// The line is not UTF-8 / contains control characters.
    BadCharacters,
}

/// Parses a command line; `line` excludes the CRLF.
pub fn parse_command(line: &[u8]) -> Result<Command, CommandError> {
    if line.iter().any(|&b| b == 0 || b == b'\r' || b == b'\n') {
        return Err(CommandError::BadCharacters);
    }
    let text = std::str::from_utf8(line).map_err(|_| CommandError::BadCharacters)?;
    let text = text.trim_end_matches([' ', '\t']);
    let (verb, rest) = match text.find(' ') {
        Some(i) => (&text[..i], text[i + 1..].trim_start()),
        None => (text, ""),
    };
    let verb = verb.to_ascii_uppercase();
    match verb.as_str() {
        "HELO" => domain_arg(rest).map(Command::Helo),
        "EHLO" => domain_arg(rest).map(Command::Ehlo),
        "MAIL" => parse_mail(rest),
        "RCPT" => parse_rcpt(rest),
        "DATA" => no_arg(rest, Command::Data, "Syntax: DATA"),
        "RSET" => no_arg(rest, Command::Rset, "Syntax: RSET"),
        "NOOP" => Ok(Command::Noop),
        "QUIT" => no_arg(rest, Command::Quit, "Syntax: QUIT"),
        "STARTTLS" => no_arg(rest, Command::StartTls, "Syntax: STARTTLS"),
        "AUTH" => parse_auth(rest),
        "VRFY" => Ok(Command::Vrfy),
        "HELP" => Ok(Command::Help),
        _ => Err(CommandError::Unrecognized),
    }
}

fn no_arg(rest: &str, cmd: Command, syntax: &'static str) -> Result<Command, CommandError> {
    if rest.is_empty() {
        Ok(cmd)
    } else {
        Err(CommandError::Syntax(syntax))
    }
}

fn domain_arg(rest: &str) -> Result<String, CommandError> {
    let name = rest.split_whitespace().next().unwrap_or("");
    if name.is_empty() {
        return Err(CommandError::Syntax("Syntax: EHLO hostname"));
    }
    Ok(name.to_ascii_lowercase())
}

fn parse_mail(rest: &str) -> Result<Command, CommandError> {
    const SYNTAX: &str = "Syntax: MAIL FROM:<address>";
    let after = strip_prefix_ci(rest, "FROM:").ok_or(CommandError::Syntax(SYNTAX))?;
    let (from, params) = parse_path(after.trim_start()).ok_or(CommandError::Syntax(SYNTAX))?;
    let mut size = None;
    for param in params.split_whitespace() {
        let (key, value) = match param.split_once('=') {
            Some((k, v)) => (k.to_ascii_uppercase(), Some(v)),
            None => (param.to_ascii_uppercase(), None),
        };
        match (key.as_str(), value) {
            ("SIZE", Some(v)) => {
                size = Some(
                    v.parse::<u64>()
                        .map_err(|_| CommandError::Syntax("Syntax: SIZE=<number>"))?,
                );
            }
            ("BODY", Some(v))
                if v.eq_ignore_ascii_case("8BITMIME") || v.eq_ignore_ascii_case("7BIT") => {}
            ("SMTPUTF8", None) => {}
            ("AUTH", Some(_)) | ("RET", Some(_)) | ("ENVID", Some(_)) => {}
            _ => return Err(CommandError::UnsupportedParameter(param.to_string())),
        }
    }
    Ok(Command::Mail { from, size })
}

fn parse_rcpt(rest: &str) -> Result<Command, CommandError> {
    const SYNTAX: &str = "Syntax: RCPT TO:<address>";
    let after = strip_prefix_ci(rest, "TO:").ok_or(CommandError::Syntax(SYNTAX))?;
    let (to, params) = parse_path(after.trim_start()).ok_or(CommandError::Syntax(SYNTAX))?;
    if to == Path::Null {
        return Err(CommandError::Syntax(SYNTAX));
    }
    for param in params.split_whitespace() {
        let key = param.split('=').next().unwrap_or("").to_ascii_uppercase();
        if key != "NOTIFY" && key != "ORCPT" {
            return Err(CommandError::UnsupportedParameter(param.to_string()));
        }
    }
    Ok(Command::Rcpt { to })
}

fn parse_auth(rest: &str) -> Result<Command, CommandError> {
    let mut parts = rest.split_whitespace();
    let mechanism = match parts.next().map(str::to_ascii_uppercase).as_deref() {
        Some("PLAIN") => AuthMechanism::Plain,
        Some("LOGIN") => AuthMechanism::Login,
        Some(_) => return Err(CommandError::UnsupportedMechanism),
        None => return Err(CommandError::Syntax("Syntax: AUTH mechanism")),
    };
    let initial = parts.next().map(str::to_string);
    if parts.next().is_some() {
        return Err(CommandError::Syntax(
            "Syntax: AUTH mechanism [initial-response]",
        ));
    }
    Ok(Command::Auth { mechanism, initial })
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// Parses `<...>` and returns the path and the remaining parameter text.
fn parse_path(s: &str) -> Option<(Path, &str)> {
    let inner_start = s.strip_prefix('<')?;
    let end = find_path_end(inner_start)?;
    let inner = &inner_start[..end];
    let rest = &inner_start[end + 1..];
    if !rest.is_empty() && !rest.starts_with(' ') {
        return None;
    }
    if inner.is_empty() {
        return Some((Path::Null, rest));
    }
    // Drop an obsolete source route `@a,@b:`.
    let addr = match inner.starts_with('@') {
        true => inner.split_once(':')?.1,
        false => inner,
    };
    let at = addr.rfind('@')?;
    let (local, domain) = (&addr[..at], &addr[at + 1..]);
    if local.is_empty() || domain.is_empty() || domain.contains(['<', '>', ' ']) {
        return None;
    }
    if local.contains(['<', '>']) || (!local.starts_with('"') && local.contains(' ')) {
        return None;
    }
    Some((
        Path::Address(format!("{local}@{}", domain.to_ascii_lowercase())),
        rest,
    ))
}

/// Index of the closing `>`, skipping a quoted local part.
fn find_path_end(s: &str) -> Option<usize> {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '>' if !quoted => return Some(i),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn addr(s: &str) -> Path {
        Path::Address(s.to_string())
    }

    #[test]
    fn parses_the_commands_a_client_sends() {
        assert_eq!(
            parse_command(b"EHLO Client.Example.ORG"),
            Ok(Command::Ehlo("client.example.org".into()))
        );
        assert_eq!(
            parse_command(b"mail from:<Bob@Example.COM> SIZE=1000 BODY=8BITMIME"),
            Ok(Command::Mail {
                from: addr("Bob@example.com"),
                size: Some(1000)
            })
        );
        assert_eq!(
            parse_command(b"MAIL FROM: <>"),
            Ok(Command::Mail {
                from: Path::Null,
                size: None
            })
        );
        assert_eq!(
            parse_command(b"RCPT TO:<@relay.example:alice@dest.example>"),
            Ok(Command::Rcpt {
                to: addr("alice@dest.example")
            })
        );
        assert_eq!(
            parse_command(b"AUTH PLAIN AGFAYg=="),
            Ok(Command::Auth {
                mechanism: AuthMechanism::Plain,
                initial: Some("AGFAYg==".into())
            })
        );
        assert_eq!(parse_command(b"data"), Ok(Command::Data));
        assert_eq!(parse_command(b"STARTTLS"), Ok(Command::StartTls));
    }

    #[test]
    fn rejects_malformed_lines_with_a_reason() {
        assert_eq!(parse_command(b"FOO bar"), Err(CommandError::Unrecognized));
        assert!(matches!(
            parse_command(b"MAIL FROM:bob@example.com"),
            Err(CommandError::Syntax(_))
        ));
        assert!(matches!(
            parse_command(b"RCPT TO:<>"),
            Err(CommandError::Syntax(_))
        ));
        assert_eq!(
            parse_command(b"MAIL FROM:<a@b.c> XFOO=1"),
            Err(CommandError::UnsupportedParameter("XFOO=1".into()))
        );
        assert_eq!(
            parse_command(b"AUTH CRAM-MD5"),
            Err(CommandError::UnsupportedMechanism)
        );
        assert_eq!(parse_command(b"NOOP\0"), Err(CommandError::BadCharacters));
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse_command(&bytes);
        }

        #[test]
        fn never_panics_on_command_like_text(s in "(MAIL FROM:|RCPT TO:|AUTH |EHLO )[<>@\"\\\\ a-zA-Z0-9=:,.]{0,80}") {
            let _ = parse_command(s.as_bytes());
        }
    }
}
