//! Content filtering at the end of DATA (SPEC §3.4): the organization's filters, in order,
//! judge the message before the relay answers, so a refused message is refused at SMTP
//! time (no backscatter, no bounce to a forged sender).
//!
//! Each filter is shown the text as received (with the relay's `Received:` header), read
//! from where the spool holds it while it arrives (memory bounded for a 35 MB message),
//! and the envelope. What it decides becomes one [`Decision`]:
//!
//! - reject: `550 5.7.1` with the filter's text (one line, printable, bounded: the milter
//!   client sanitized it), or `Message rejected by content filter`; the first reject ends
//!   the chain;
//! - tempfail: `451 4.7.1` with the filter's text;
//! - discard: `250`, never delivered (logged and counted by the caller);
//! - quarantine: `250`, held in the queue with the filter's reason; later filters still
//!   run (a later reject wins);
//! - header and recipient changes: applied to the text and envelope before the next
//!   filter sees them and before the spool commit, so delivery (and DKIM, which signs at
//!   delivery) sees them; a replaced body likewise;
//! - unavailable (cannot connect, no verdict within the filter's `timeoutSeconds`, a
//!   protocol error): the filter's `onUnavailable`, `451 4.7.1` or on to the next filter;
//! - a message larger than the filter's `maxMessageBytes` skips it.
//!
//! One connection per filter per SMTP connection, reused for its next message, as Postfix
//! does. Every verdict, the time taken and whether the filter answered are counted
//! ([`crate::filter::metrics`]).
//!
//! Not here: the milter protocol (`crate::filter::milter`), spooling the text
//! (`crate::spool`), holding quarantined mail (delivery's hold, see `server`).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{ContentFilterConfig, OnUnavailable};
use crate::envelope::Envelope;
use crate::filter::metrics::FilterMetrics;
use crate::filter::milter::{
    AuthFacts, ClientOptions, ConnectFacts, ErrorKind, FilterError, MessageFacts, MilterClient,
    MilterEndpoint, Modifications, Recipient, TlsFacts, Verdict, apply, parse_header_block,
    write_header_block,
};
use crate::smtp::Reply;
use crate::spool::{Incoming, Spool};

/// Largest header block a filter's edits are applied to; a longer one (never seen in real
/// mail) makes the message unfilterable.
const MAX_HEADER_BLOCK: usize = 1024 * 1024;

/// What the chain decided for one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Spool and deliver (the text and envelope carry every filter's edits).
    Deliver,
    /// Refuse with this reply (a reject, a tempfail, an unavailable filter under
    /// `TempFail`, or a message that could not be shown to a filter).
    Refuse { filter: String, reply: Reply },
    /// Answer `250` and deliver nothing.
    Discard { filter: String },
    /// Answer `250` and hold the message with this reason.
    Quarantine { filter: String, reason: String },
}

/// What the session knows about the client, for the filters' CONNECT, HELO and macros.
#[derive(Debug, Clone)]
pub struct Client<'a> {
    pub ip: IpAddr,
    /// Which listener took the message: `smtp`, `submission` or `smtps`.
    pub listener: &'static str,
    pub helo: &'a str,
    /// The session's TLS description (`TLSv1_3 TLS13_AES_256_GCM_SHA384`), if any.
    pub tls: Option<&'a str>,
    pub auth_identity: Option<&'a str>,
    /// Our host name.
    pub hostname: &'a str,
}

/// The filters of one SMTP connection, each with its kept connection.
#[derive(Default)]
pub struct Filters {
    slots: Vec<(ContentFilterConfig, MilterClient)>,
}

impl Filters {
    /// True when no filter is configured (the chain costs nothing then).
    pub fn configured(configs: &[ContentFilterConfig]) -> bool {
        !configs.is_empty()
    }

    /// Brings the chain in line with the filters in force: a filter whose endpoint is
    /// unchanged keeps its connection.
    fn sync(&mut self, configs: &[ContentFilterConfig]) {
        let same = self.slots.len() == configs.len()
            && self.slots.iter().zip(configs).all(|((c, _), n)| c == n);
        if same {
            return;
        }
        let mut old = std::mem::take(&mut self.slots);
        for config in configs {
            let kept = old
                .iter()
                .position(|(c, _)| c.host == config.host && c.port == config.port)
                .map(|i| old.swap_remove(i).1);
            let client = kept.unwrap_or_else(|| {
                MilterClient::new(
                    MilterEndpoint {
                        host: config.host.clone(),
                        port: config.port,
                    },
                    ClientOptions::default(),
                )
            });
            self.slots.push((config.clone(), client));
        }
    }

    /// Runs every filter of `configs` on the message in `incoming` with `envelope`,
    /// applying their edits to both. `Deliver` when no filter objects.
    pub async fn run(
        &mut self,
        configs: &[ContentFilterConfig],
        client: &Client<'_>,
        envelope: &mut Envelope,
        incoming: &mut Incoming,
        spool: &Spool,
        metrics: &FilterMetrics,
    ) -> Decision {
        self.sync(configs);
        let mut quarantine: Option<(String, String)> = None;
        for (config, milter) in &mut self.slots {
            let name = config.name.as_str();
            if config
                .max_message_bytes
                .is_some_and(|max| incoming.len() > max)
            {
                metrics.verdict(name, "skipped");
                tracing::debug!(queue_id = %envelope.queue_id, filter = name, size = incoming.len(), "message larger than the filter's maxMessageBytes: not filtered");
                continue;
            }
            let facts = facts(client, envelope);
            let started = std::time::Instant::now();
            let deadline = Instant::now() + Duration::from_secs(config.timeout_seconds.max(1));
            let outcome = match incoming.reader().await {
                Ok(text) => milter.check(&facts, text, deadline).await,
                Err(e) => {
                    tracing::error!(queue_id = %envelope.queue_id, filter = name, error = %e, "cannot read the message for content filtering");
                    return refuse(name, unreadable());
                }
            };
            let seconds = started.elapsed().as_secs_f64();
            let outcome = match outcome {
                Ok(outcome) => {
                    metrics.observe(name, seconds, true);
                    outcome
                }
                Err(e) => {
                    metrics.observe(name, seconds, reachable(&e));
                    if let Some(reply) = e.local_reply() {
                        metrics.verdict(name, "refused");
                        tracing::warn!(queue_id = %envelope.queue_id, filter = name, error = %e, "message not shown to the content filter");
                        return refuse(name, reply);
                    }
                    metrics.unavailable(name);
                    match config.on_unavailable {
                        OnUnavailable::TempFail => {
                            tracing::warn!(queue_id = %envelope.queue_id, filter = name, error = %e, on_unavailable = "TempFail", "content filter unavailable: message refused for now");
                            return refuse(
                                name,
                                Reply::new(
                                    451,
                                    "4.7.1 Content filter unavailable, try again later",
                                ),
                            );
                        }
                        OnUnavailable::Accept => {
                            tracing::warn!(queue_id = %envelope.queue_id, filter = name, error = %e, on_unavailable = "Accept", "content filter unavailable: message goes on without its verdict");
                            continue;
                        }
                    }
                }
            };
            metrics.verdict(name, outcome.verdict.name());
            tracing::debug!(queue_id = %envelope.queue_id, filter = name, verdict = outcome.verdict.name(), seconds, "content filter");
            match outcome.verdict {
                Verdict::Reject(reply) => return refuse(name, rejection(&reply)),
                Verdict::Tempfail(reply) => return refuse(name, temporary(&reply)),
                Verdict::Discard => {
                    return Decision::Discard {
                        filter: name.to_string(),
                    };
                }
                Verdict::Quarantine { reason } => {
                    if let Err(reply) =
                        edit(&outcome.modifications, envelope, incoming, spool).await
                    {
                        return refuse(name, reply);
                    }
                    quarantine.get_or_insert((name.to_string(), reason));
                }
                Verdict::Accept => {
                    if let Err(reply) =
                        edit(&outcome.modifications, envelope, incoming, spool).await
                    {
                        return refuse(name, reply);
                    }
                }
            }
            if envelope.rcpts.is_empty() {
                // Every recipient deleted: the message goes nowhere.
                return Decision::Discard {
                    filter: name.to_string(),
                };
            }
        }
        match quarantine {
            Some((filter, reason)) => Decision::Quarantine { filter, reason },
            None => Decision::Deliver,
        }
    }

    /// Says goodbye to every filter (the SMTP connection ends).
    pub async fn close(&mut self) {
        for (_, milter) in &mut self.slots {
            milter.quit().await;
        }
    }
}

fn refuse(filter: &str, reply: Reply) -> Decision {
    Decision::Refuse {
        filter: filter.to_string(),
        reply,
    }
}

/// Whether the filter was there at all: it connected and said something in time.
fn reachable(e: &FilterError) -> bool {
    !matches!(
        e.kind,
        ErrorKind::Connect(_) | ErrorKind::Timeout | ErrorKind::Closed | ErrorKind::Io(_)
    )
}

fn unreadable() -> Reply {
    Reply::new(
        451,
        "4.3.0 Cannot read the message for content filtering, try again later",
    )
}

/// The text of a filter's reply without its enhanced status code.
fn text_of(reply: &Reply) -> Option<String> {
    let line = reply.lines.first()?;
    let enhanced = |s: &str| {
        s.split('.').count() == 3
            && s.split('.')
                .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
    };
    let rest = match line.split_once(' ') {
        Some((status, rest)) if enhanced(status) => rest,
        None if enhanced(line) => "",
        _ => line.as_str(),
    };
    let rest = rest.trim();
    (!rest.is_empty()).then(|| rest.to_string())
}

/// A filter's reject as the client gets it: always `550 5.7.1`, with the filter's text.
fn rejection(reply: &Reply) -> Reply {
    let text = text_of(reply).unwrap_or_else(|| "Message rejected by content filter".into());
    Reply::new(550, format!("5.7.1 {text}"))
}

/// A filter's tempfail as the client gets it: always `451 4.7.1`, with the filter's text.
fn temporary(reply: &Reply) -> Reply {
    let text = text_of(reply).unwrap_or_else(|| "Message deferred by content filter".into());
    Reply::new(451, format!("4.7.1 {text}"))
}

/// Applies a filter's edits to the envelope and the text. A header block too long to edit
/// refuses the message (`554 5.6.0`, as the milter client refuses a field too long).
async fn edit(
    mods: &Modifications,
    envelope: &mut Envelope,
    incoming: &mut Incoming,
    spool: &Spool,
) -> Result<(), Reply> {
    if mods.edits.is_empty() && mods.replacement_body.is_none() {
        return Ok(());
    }
    let head = incoming.head(MAX_HEADER_BLOCK + 1).await.map_err(|e| {
        tracing::error!(queue_id = %envelope.queue_id, error = %e, "cannot read the message to apply a content filter's edits");
        unreadable()
    })?;
    let too_long = || Reply::new(554, "5.6.0 Message header too long for content filtering");
    let (mut headers, body_offset) =
        parse_header_block(&head, ClientOptions::default().max_header_field)
            .map_err(|_| too_long())?;
    if body_offset > MAX_HEADER_BLOCK {
        return Err(too_long());
    }
    apply(mods, &mut headers, envelope);
    let mut block = Vec::with_capacity(body_offset + 256);
    write_header_block(&headers, &mut block);
    incoming
        .rewrite(
            spool,
            &block,
            body_offset as u64,
            mods.replacement_body.as_deref(),
        )
        .await
        .map_err(|e| {
            tracing::error!(queue_id = %envelope.queue_id, error = %e, "cannot apply a content filter's edits to the message");
            unreadable()
        })?;
    envelope.size = incoming.len();
    Ok(())
}

/// What a filter is told about the message besides its text.
fn facts(client: &Client<'_>, envelope: &Envelope) -> MessageFacts {
    let mut mail_args = Vec::new();
    if envelope.eight_bit_mime {
        mail_args.push("BODY=8BITMIME".to_string());
    }
    if envelope.smtputf8 {
        mail_args.push("SMTPUTF8".to_string());
    }
    MessageFacts {
        connection: ConnectFacts {
            client: Some(SocketAddr::new(client.ip, 0)),
            client_name: None,
            hostname: client.hostname.to_string(),
            daemon_name: client.listener.to_string(),
        },
        helo: client.helo.to_string(),
        tls: client.tls.map(tls_facts),
        auth: client.auth_identity.map(|identity| AuthFacts {
            identity: identity.to_string(),
            mechanism: String::new(),
        }),
        queue_id: envelope.queue_id.to_string(),
        mail_from: envelope.mail_from.clone(),
        mail_args,
        recipients: envelope
            .rcpts
            .iter()
            .map(|r| Recipient {
                address: r.clone(),
                args: Vec::new(),
            })
            .collect(),
    }
}

/// The session's TLS description in the names Postfix gives filters: `TLSv1.3` and the
/// IANA cipher suite name (`TLS_AES_256_GCM_SHA384`).
fn tls_facts(description: &str) -> TlsFacts {
    let (version, cipher) = description.split_once(' ').unwrap_or((description, ""));
    TlsFacts {
        version: version.replace('_', "."),
        cipher: cipher.replacen("TLS13_", "TLS_", 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filters_reject_is_550_5_7_1_with_its_text() {
        let r = rejection(&Reply::new(554, "5.7.1 Gtube pattern"));
        assert_eq!(r.to_string(), "550 5.7.1 Gtube pattern\r\n");
        let r = rejection(&Reply::new(550, "5.7.1 Virus Eicar-Test-Signature found"));
        assert_eq!(
            r.to_string(),
            "550 5.7.1 Virus Eicar-Test-Signature found\r\n"
        );
        let r = rejection(&Reply::new(550, "5.7.1"));
        assert_eq!(
            r.to_string(),
            "550 5.7.1 Message rejected by content filter\r\n"
        );
        let r = temporary(&Reply::new(450, "4.2.0 Try later"));
        assert_eq!(r.to_string(), "451 4.7.1 Try later\r\n");
    }

    #[test]
    fn tls_is_named_as_postfix_names_it() {
        let t = tls_facts("TLSv1_3 TLS13_AES_256_GCM_SHA384");
        assert_eq!(t.version, "TLSv1.3");
        assert_eq!(t.cipher, "TLS_AES_256_GCM_SHA384");
    }
}
