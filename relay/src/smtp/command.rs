//! Parses one SMTP command line (without its CRLF) into a [`Command`].
//!
//! Pure and total: any byte string yields either a command or a [`CommandError`] that maps
//! to one reply. It does not check sequencing (that is `session`) or whether an address
//! may be used (that is `policy`).
//!
//! Addresses follow the RFC 5321 `Mailbox` grammar (§4.1.2), extended by RFC 6531:
//! - the local part is a dot-atom or a quoted string, kept exactly as sent (case
//!   included); an unquoted `@`, spaces and control characters are refused;
//! - the domain is LDH labels (at most 63 octets each, 255 in all), U-labels allowed, and
//!   is lower-cased; or an address literal `[192.0.2.1]` / `[IPv6:2001:db8::1]`, written
//!   back in canonical form. General address literals (`[tag:...]`) are refused;
//! - a source route (`<@a,@b:user@domain>`) is checked and ignored (RFC 5321 §4.1.1.3
//!   and appendix C);
//! - non-ASCII anywhere in an address needs SMTPUTF8: MAIL checks its own parameter, the
//!   session checks RCPT against the transaction ([`Path::is_ascii`]);
//! - a recipient domain that is an IP address — a literal, or a name whose last label is
//!   numeric or hexadecimal as a resolver would read `10.0.0.5` or `0x0a000005` — is
//!   refused: mail to an IP address bypasses routes and the delivery guards.
//!
//! HELO/EHLO take any printable ASCII word and keep it lower-cased: Postfix accepts most
//! names and so do we. Whether it may appear verbatim in `Received:` is [`is_helo_name`].

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// Longest command line accepted, including the trailing CRLF (RFC 5321 §4.5.3.1.4).
pub const MAX_COMMAND_LINE: usize = 512;

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
    /// A mailbox: the local part as sent (quotes included), `@`, the domain lower-cased.
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

    /// False when the address needs SMTPUTF8 (RFC 6531).
    pub fn is_ascii(&self) -> bool {
        self.as_str().is_ascii()
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
        /// The SMTPUTF8 parameter (RFC 6531): recipients may be UTF-8 addresses.
        smtputf8: bool,
        /// `BODY=8BITMIME` (RFC 6152): the text may hold 8-bit octets.
        eight_bit_mime: bool,
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
    /// The MAIL FROM address is not an RFC 5321 mailbox.
    BadSenderAddress,
    /// The RCPT TO address is not an RFC 5321 mailbox.
    BadRecipientAddress,
    /// The RCPT TO domain is an IP address.
    RecipientDomainIsIp,
    /// A UTF-8 address in MAIL without the SMTPUTF8 parameter.
    Utf8WithoutSmtputf8,
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
    const SYNTAX: &str = "Syntax: EHLO hostname (a domain name or address literal)";
    let name = rest.split_whitespace().next().unwrap_or("");
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(CommandError::Syntax(SYNTAX));
    }
    Ok(name.to_ascii_lowercase())
}

fn parse_mail(rest: &str) -> Result<Command, CommandError> {
    const SYNTAX: &str = "Syntax: MAIL FROM:<address>";
    let after = strip_prefix_ci(rest, "FROM:").ok_or(CommandError::Syntax(SYNTAX))?;
    let (from, params) = split_path(after.trim_start()).ok_or(CommandError::Syntax(SYNTAX))?;
    let from = parse_path(from).ok_or(CommandError::BadSenderAddress)?;
    let mut size = None;
    let mut smtputf8 = false;
    let mut eight_bit_mime = false;
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
            ("BODY", Some(v)) if v.eq_ignore_ascii_case("8BITMIME") => eight_bit_mime = true,
            ("BODY", Some(v)) if v.eq_ignore_ascii_case("7BIT") => eight_bit_mime = false,
            ("SMTPUTF8", None) => smtputf8 = true,
            ("AUTH", Some(_)) | ("RET", Some(_)) | ("ENVID", Some(_)) => {}
            _ => return Err(CommandError::UnsupportedParameter(param.to_string())),
        }
    }
    if !smtputf8 && !from.is_ascii() {
        return Err(CommandError::Utf8WithoutSmtputf8);
    }
    Ok(Command::Mail {
        from,
        size,
        smtputf8,
        eight_bit_mime,
    })
}

fn parse_rcpt(rest: &str) -> Result<Command, CommandError> {
    const SYNTAX: &str = "Syntax: RCPT TO:<address>";
    let after = strip_prefix_ci(rest, "TO:").ok_or(CommandError::Syntax(SYNTAX))?;
    let (to, params) = split_path(after.trim_start()).ok_or(CommandError::Syntax(SYNTAX))?;
    let to = match parse_path(to) {
        Some(path @ Path::Address(_)) => path,
        Some(Path::Null) | None => return Err(CommandError::BadRecipientAddress),
    };
    if domain_is_ip(to.as_str()) {
        return Err(CommandError::RecipientDomainIsIp);
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

/// Splits `<...> params` into the text between the brackets and the parameters; `None`
/// when the argument is not bracketed (an argument error rather than an address error).
fn split_path(s: &str) -> Option<(Option<&str>, &str)> {
    let inner_start = s.strip_prefix('<')?;
    let Some(end) = find_path_end(inner_start) else {
        return Some((None, ""));
    };
    let rest = &inner_start[end + 1..];
    if !rest.is_empty() && !rest.starts_with(' ') {
        return Some((None, ""));
    }
    Some((Some(&inner_start[..end]), rest))
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

/// The text between `<` and `>` as a path: `""`, or `[A-d-l ":"] Mailbox`.
fn parse_path(inner: Option<&str>) -> Option<Path> {
    let inner = inner?;
    if inner.is_empty() {
        return Some(Path::Null);
    }
    let mailbox = match inner.strip_prefix('@') {
        Some(_) => {
            let (route, mailbox) = inner.split_once(':')?;
            for hop in route.split(',') {
                domain(hop.strip_prefix('@')?)?;
            }
            mailbox
        }
        None => inner,
    };
    let (local, rest) = local_part(mailbox)?;
    let domain = match rest.strip_prefix('@')? {
        d if d.starts_with('[') => address_literal(d)?,
        d => domain(d)?,
    };
    Some(Path::Address(format!("{local}@{domain}")))
}

/// The local part at the start of `s` and what follows it.
fn local_part(s: &str) -> Option<(&str, &str)> {
    if let Some(body) = s.strip_prefix('"') {
        let mut escaped = false;
        for (i, c) in body.char_indices() {
            if escaped {
                // quoted-pairSMTP: a backslash and one printable ASCII character.
                if !(' '..='~').contains(&c) {
                    return None;
                }
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                return Some(s.split_at(i + 2));
            } else if !is_qtext(c) {
                return None;
            }
        }
        return None;
    }
    let end = s.find('@').unwrap_or(s.len());
    let local = &s[..end];
    local
        .split('.')
        .all(|atom| !atom.is_empty() && atom.chars().all(is_atext))
        .then(|| s.split_at(end))
}

/// RFC 5322 `atext`, plus UTF-8 (RFC 6531).
fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || is_utf8_text(c)
}

/// RFC 5321 `qtextSMTP`, plus UTF-8 (RFC 6531).
fn is_qtext(c: char) -> bool {
    matches!(c, ' '..='!' | '#'..='[' | ']'..='~') || is_utf8_text(c)
}

fn is_utf8_text(c: char) -> bool {
    !c.is_ascii() && !c.is_control()
}

/// A domain name, lower-cased (U-labels allowed).
fn domain(d: &str) -> Option<String> {
    is_domain(d, is_utf8_text).then(|| d.to_lowercase())
}

/// Dot-separated labels of letters, digits and inner hyphens, plus what `also` allows; at
/// most 63 octets a label and 255 in all.
fn is_domain(d: &str, also: fn(char) -> bool) -> bool {
    d.len() <= 255
        && d.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || also(c))
        })
}

/// `[IPv4]` or `[IPv6:...]`, in canonical form.
fn address_literal(d: &str) -> Option<String> {
    let inner = d.strip_prefix('[')?.strip_suffix(']')?;
    match strip_prefix_ci(inner, "IPv6:") {
        Some(v6) => Some(format!("[IPv6:{}]", v6.parse::<Ipv6Addr>().ok()?)),
        None => Some(format!("[{}]", inner.parse::<Ipv4Addr>().ok()?)),
    }
}

/// True when the domain of `address` is an IP address, or a name a resolver could read as
/// one (`inet_aton` takes `10.5`, `167772165` and `0xa000005`): no real top-level domain
/// is numeric.
pub fn domain_is_ip(address: &str) -> bool {
    let domain = address.rsplit_once('@').map_or("", |(_, d)| d);
    let last = domain.rsplit('.').next().unwrap_or("");
    let hex = last
        .strip_prefix("0x")
        .is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit()));
    domain.starts_with('[') || last.bytes().all(|b| b.is_ascii_digit()) || hex
}

/// True when a HELO/EHLO name may be written verbatim into a trace header: a domain name
/// in ASCII (underscores tolerated, as many hosts use them) or an IPv4/IPv6 address
/// literal. Such a name cannot contain spaces, `(`, `)`, `;` or line breaks.
pub fn is_helo_name(name: &str) -> bool {
    if name.starts_with('[') {
        return address_literal(name).is_some();
    }
    is_domain(name, |c| c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn addr(s: &str) -> Path {
        Path::Address(s.to_string())
    }

    fn mail(from: &str) -> Result<Command, CommandError> {
        parse_command(format!("MAIL FROM:<{from}> SMTPUTF8").as_bytes())
    }

    fn rcpt(to: &str) -> Result<Command, CommandError> {
        parse_command(format!("RCPT TO:<{to}>").as_bytes())
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
                size: Some(1000),
                smtputf8: false,
                eight_bit_mime: true,
            })
        );
        assert_eq!(
            parse_command(b"MAIL FROM: <>"),
            Ok(Command::Mail {
                from: Path::Null,
                size: None,
                smtputf8: false,
                eight_bit_mime: false,
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
        assert_eq!(
            parse_command(b"RCPT TO:<>"),
            Err(CommandError::BadRecipientAddress)
        );
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

    #[test]
    fn mailboxes_follow_rfc5321() {
        let accepted = [
            ("Bob.Smith+tag@Example.COM", "Bob.Smith+tag@example.com"),
            ("!#$%&'*+-/=?^_`{|}~@x", "!#$%&'*+-/=?^_`{|}~@x"),
            ("\"john doe\"@example.com", "\"john doe\"@example.com"),
            (
                "\"x@evil.example\"@acme.example",
                "\"x@evil.example\"@acme.example",
            ),
            ("\"a\\\"b>c\"@example.com", "\"a\\\"b>c\"@example.com"),
            ("\"\"@example.com", "\"\"@example.com"),
            ("u@[192.0.2.1]", "u@[192.0.2.1]"),
            ("u@[ipv6:2001:DB8:0:0::1]", "u@[IPv6:2001:db8::1]"),
            ("u@xn--bcher-kva.example", "u@xn--bcher-kva.example"),
            ("u@a-b.c0", "u@a-b.c0"),
            ("@a.example,@B.example:u@x", "u@x"),
            ("jörg@Bücher.example", "jörg@bücher.example"),
            ("\"Jörg Ü\"@example.com", "\"Jörg Ü\"@example.com"),
        ];
        for (sent, kept) in accepted {
            let want = Ok(Command::Mail {
                from: addr(kept),
                size: None,
                smtputf8: true,
                eight_bit_mime: false,
            });
            assert_eq!(mail(sent), want, "{sent}");
        }
        let refused = [
            "x@evil.example@acme.example",
            "x@@acme.example",
            "@acme.example",
            "x@",
            "x",
            "a b@example.com",
            "a\u{1}b@example.com",
            "a\u{7f}b@example.com",
            "a\u{85}b@example.com",
            "\"a\tb\"@example.com",
            "\"a\u{1}b\"@example.com",
            "\"a\\\u{1}\"@example.com",
            "\"unterminated@example.com",
            "\"a\"b@example.com",
            ".a@example.com",
            "a.@example.com",
            "a..b@example.com",
            "a\\b@example.com",
            "a(comment)@example.com",
            "a@example..com",
            "a@example.com.",
            "a@-example.com",
            "a@example-.com",
            "a@exa_mple.com",
            "a@exa mple.com",
            "a@[192.0.2.256]",
            "a@[010.0.0.1]",
            "a@[IPv6:2001:db8::g]",
            "a@[x-tag:content]",
            "a@[192.0.2.1",
            "@a.example:",
            "@a.example,b.example:u@x",
            "@:u@x",
            // A route hop is a domain name, never a literal.
            "@a.example,@[192.0.2.1]:u@x",
        ];
        for sent in refused {
            assert_eq!(mail(sent), Err(CommandError::BadSenderAddress), "{sent}");
            assert_eq!(rcpt(sent), Err(CommandError::BadRecipientAddress), "{sent}");
        }
        let label = "a".repeat(63);
        assert!(mail(&format!("u@{label}.example")).is_ok());
        assert_eq!(
            mail(&format!("u@{label}a.example")),
            Err(CommandError::BadSenderAddress)
        );
        let longest = [label.as_str(); 4].join(".");
        assert_eq!(longest.len(), 255);
        assert!(mail(&format!("u@{longest}")).is_ok());
        assert_eq!(
            mail(&format!("u@a.{longest}")),
            Err(CommandError::BadSenderAddress)
        );
        assert_eq!(
            parse_command(b"MAIL FROM:<a@b.example>x"),
            Err(CommandError::BadSenderAddress)
        );
        assert_eq!(
            parse_command(b"RCPT TO:<a@b.example"),
            Err(CommandError::BadRecipientAddress)
        );
    }

    #[test]
    fn utf8_addresses_need_smtputf8() {
        assert_eq!(
            parse_command("MAIL FROM:<jörg@acme.example>".as_bytes()),
            Err(CommandError::Utf8WithoutSmtputf8)
        );
        assert_eq!(
            parse_command("MAIL FROM:<u@bücher.example> BODY=8BITMIME".as_bytes()),
            Err(CommandError::Utf8WithoutSmtputf8)
        );
        assert_eq!(
            parse_command("MAIL FROM:<u@bücher.example> smtputf8 body=8bitmime".as_bytes()),
            Ok(Command::Mail {
                from: addr("u@bücher.example"),
                size: None,
                smtputf8: true,
                eight_bit_mime: true,
            })
        );
        // RCPT parses; the session knows whether the transaction declared SMTPUTF8.
        let Ok(Command::Rcpt { to }) = rcpt("jörg@bücher.example") else {
            panic!("a UTF-8 recipient parses");
        };
        assert!(!to.is_ascii());
    }

    #[test]
    fn recipient_domains_that_are_ip_addresses_are_refused() {
        for to in [
            "u@[10.0.0.5]",
            "u@[IPv6:::1]",
            "u@10.0.0.5",
            "u@10.5",
            "u@167772165",
            "u@0xa000005",
            "u@0X7F.1",
        ] {
            assert_eq!(rcpt(to), Err(CommandError::RecipientDomainIsIp), "{to}");
        }
        for to in ["u@10.0.0.5.example", "u@0xdead.example", "u@1a"] {
            assert!(rcpt(to).is_ok(), "{to}");
        }
        // A sender may use an address literal.
        assert!(mail("postmaster@[192.0.2.1]").is_ok());
    }

    #[test]
    fn helo_takes_a_printable_ascii_word() {
        assert_eq!(
            parse_command(b"HELO [192.0.2.1] extra"),
            Ok(Command::Helo("[192.0.2.1]".into()))
        );
        assert_eq!(
            parse_command(b"EHLO evil(x);y"),
            Ok(Command::Ehlo("evil(x);y".into()))
        );
        for bad in [
            "EHLO",
            "EHLO a\u{1}b",
            "EHLO a\u{7f}",
            "EHLO münchen.example",
        ] {
            assert!(
                matches!(parse_command(bad.as_bytes()), Err(CommandError::Syntax(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn helo_names_safe_for_a_trace_header() {
        for ok in [
            "client.acme.example",
            "localhost",
            "desktop_7",
            "[192.0.2.1]",
            "[IPv6:2001:db8::1]",
        ] {
            assert!(is_helo_name(ok), "{ok}");
        }
        for bad in [
            "",
            "a;b",
            "a(b)",
            "a b",
            "münchen.example",
            "[192.0.2.1",
            "[x:y]",
            "a..b",
            "a.",
            "-a",
        ] {
            assert!(!is_helo_name(bad), "{bad}");
        }
    }

    /// Text that looks like addresses: the grammar's special characters, UTF-8 and
    /// control characters.
    const ADDRESS_LIKE: &str = "[<>@\"\\\\ a-zA-Z0-9=:,.\\[\\]\\-_+()ü\u{1}\u{85}]{0,40}";

    /// Addresses near the grammar: dot-atoms, quoted strings, domains and literals, with
    /// some characters that are not allowed.
    fn near_addresses() -> impl Strategy<Value = String> {
        let local = prop_oneof![
            3 => "[a-zA-Z0-9!#+_ü-]{1,8}(\\.[a-zA-Z0-9ü]{1,5}){0,2}",
            1 => "[a-zA-Z0-9.@ü\u{1}]{1,8}",
            2 => "\"([ a-zA-Z@<>:()ü]|\\\\[\"\\\\a])*\"",
            1 => "\"[ a-zA-Z@\\\\\"\u{1}]{0,10}\"",
        ];
        let domain = prop_oneof![
            3 => "[a-zA-Z0-9ü]([a-zA-Z0-9ü-]{0,6}[a-zA-Z0-9])?(\\.[a-zA-Z][a-zA-Z0-9-]{0,6}){0,3}",
            1 => "[a-zA-Z0-9ü_.-]{1,12}",
            1 => "\\[[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}\\]",
            1 => "\\[[iI][pP][vV]6:(2001:[dD][bB]8|::ffff)(:[0-9a-f]{1,4}){0,4}(::1)?\\]",
        ];
        let route = prop_oneof![
            3 => Just(String::new()),
            1 => "@[a-z]{1,5}(,@[a-z]{1,5}(\\.[a-z]{1,3})?){0,2}:",
        ];
        (route, local, domain).prop_map(|(r, l, d)| format!("{r}{l}@{d}"))
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

        #[test]
        fn near_addresses_that_are_accepted_parse_again_to_themselves(inner in near_addresses()) {
            if let Ok(Command::Mail { from, .. }) = mail(&inner) {
                prop_assert_eq!(
                    parse_command(format!("MAIL FROM:{from} SMTPUTF8").as_bytes()),
                    Ok(Command::Mail { from: from.clone(), size: None, smtputf8: true, eight_bit_mime: false })
                );
                prop_assert!(!from.as_str().chars().any(char::is_control));
                if let Ok(Command::Rcpt { to }) = rcpt(&inner) {
                    prop_assert_eq!(to, from);
                }
            }
        }

        #[test]
        fn accepted_paths_parse_again_to_themselves(
            local in ADDRESS_LIKE,
            domain in ADDRESS_LIKE,
            quoted in any::<bool>(),
        ) {
            let local = if quoted { format!("\"{local}\"") } else { local };
            let inner = format!("{local}@{domain}");
            if let Ok(Command::Mail { from, .. }) = mail(&inner) {
                let again = parse_command(format!("MAIL FROM:{from} SMTPUTF8").as_bytes());
                prop_assert_eq!(
                    again,
                    Ok(Command::Mail { from: from.clone(), size: None, smtputf8: true, eight_bit_mime: false })
                );
                prop_assert!(!from.as_str().chars().any(char::is_control));
            }
            if let Ok(Command::Rcpt { to }) = rcpt(&inner) {
                prop_assert_eq!(
                    parse_command(format!("RCPT TO:{to}").as_bytes()),
                    Ok(Command::Rcpt { to: to.clone() })
                );
            }
        }
    }
}
