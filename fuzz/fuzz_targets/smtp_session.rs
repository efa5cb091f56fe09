//! The SMTP session state machine on arbitrary input: the fuzz input is split into lines
//! (commands) and, inside DATA, raw text; every action is answered the way the server
//! would (limit checks and AUTH answered by the input's own bytes). The session must only
//! produce replies with valid codes, and never panic.
#![no_main]

use std::collections::VecDeque;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use relay::config::*;
use relay::ingress::session::{Action, Session, SessionConfig};
use relay::limits::{LimitHit, LimitStoreError};
use relay::policy::Policy;
use relay::smtp::Reply;

fn config() -> RelayConfig {
    let mut cfg = RelayConfig::loopback("unused", 25);
    cfg.organization.users = vec!["bob@acme.example".into()];
    cfg.settings[0].allowed_senders = AllowedSenders::AnyAddress;
    cfg.settings[0].ip_ranges = Some(vec![RangeConfig {
        name: "acme/lo".into(),
        network: "127.0.0.0/8".parse().unwrap(),
    }]);
    cfg.routes.clear();
    cfg.limits = LimitsConfig::for_customer(10, true);
    cfg
}

fn run(session: &mut Session, actions: Vec<Action>, answer: u8) {
    let mut queue: VecDeque<Action> = actions.into();
    for _ in 0..64 {
        let Some(action) = queue.pop_front() else {
            return;
        };
        match action {
            Action::Reply(r) => assert!((200..600).contains(&r.code)),
            Action::Close => assert!(session.is_closed()),
            Action::StartTls => session.tls_started("TLSv1_3".into()),
            Action::VerifyAuth { identity, .. } => {
                queue.extend(session.auth_result(identity, answer & 1 == 0))
            }
            Action::CheckRcpt { rcpt, .. } => {
                let result = match answer & 3 {
                    0 => Ok(None),
                    1 => Ok(Some(LimitHit::CustomerRecipientsPerDay)),
                    2 => Ok(Some(LimitHit::UserMessagesPerDay)),
                    _ => Err(LimitStoreError("down".into())),
                };
                queue.extend(session.rcpt_result(rcpt, result));
            }
            Action::Release { rcpts, .. } => assert!(!rcpts.is_empty()),
            Action::DiscardData => {}
            Action::Spool(m) => {
                assert!(!m.rcpts.is_empty());
                let result = if answer & 4 == 0 {
                    Ok("0001".to_string())
                } else {
                    Err(Reply::new(452, "4.3.1 Insufficient system storage"))
                };
                queue.extend(session.spooled(result));
            }
        }
    }
    panic!("actions did not drain");
}

fuzz_target!(|input: &[u8]| {
    let cfg = config();
    let mut limits = cfg.limits.clone();
    limits.max_message_bytes = 512;
    let mut session = Session::new(
        SessionConfig {
            hostname: cfg.hostname.clone(),
            limits,
            policy: Arc::new(Policy::new(&cfg)),
            tls_available: input.first().is_some_and(|b| b & 1 == 1),
            credentials: Default::default(),
        },
        "127.0.0.1".parse().unwrap(),
        None,
    );
    let mut rest = input;
    while !rest.is_empty() && !session.is_closed() {
        let answer = rest[0];
        if session.in_data() {
            let mut text = Vec::new();
            let (used, actions) = session.on_data(rest, &mut text);
            assert!(used <= rest.len());
            assert!(text.len() <= 512 + 2, "streamed past the size limit");
            rest = &rest[used..];
            run(&mut session, actions, answer);
        } else {
            let end = rest
                .iter()
                .position(|&b| b == b'\n')
                .map_or(rest.len(), |i| i + 1);
            let line = &rest[..end];
            rest = &rest[end..];
            let line = line.strip_suffix(b"\n").unwrap_or(line);
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let actions = session.on_line(line);
            run(&mut session, actions, answer);
        }
    }
});
