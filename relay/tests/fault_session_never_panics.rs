//! The session state machine on hostile input (SPEC §3.4): any sequence of command lines
//! and DATA bytes, with any answers from the limit store, the spool and AUTH, yields
//! replies and never panics; after `Close` the session accepts nothing more.

mod common;

use std::sync::Arc;

use proptest::prelude::*;
use relay::ingress::session::{Action, Session, SessionConfig};
use relay::limits::{LimitHit, LimitStoreError};
use relay::policy::Policy;
use relay::smtp::Reply;

/// Commands that move the state machine, to mix with random bytes.
const COMMANDS: [&str; 16] = [
    "EHLO c.acme.example",
    "HELO c",
    "MAIL FROM:<bob@acme.example>",
    "MAIL FROM:<>",
    "MAIL FROM:<x@elsewhere.example> SIZE=99999999999",
    "RCPT TO:<a@dest.example>",
    "RCPT TO:<b@dest.example>",
    "DATA",
    "RSET",
    "NOOP",
    "QUIT",
    "STARTTLS",
    "AUTH PLAIN",
    "AUTH LOGIN",
    "AUTH PLAIN AGJvYgBwdw==",
    "*",
];

#[derive(Debug, Clone)]
enum Input {
    Line(Vec<u8>),
    Command(usize),
    Data(Vec<u8>),
}

fn input() -> impl Strategy<Value = Input> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..80).prop_map(Input::Line),
        (0..COMMANDS.len()).prop_map(Input::Command),
        proptest::collection::vec(
            prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'.'), any::<u8>()],
            0..120
        )
        .prop_map(Input::Data),
    ]
}

/// Carries out actions the way the server does, with answers chosen by `answer`.
fn run(session: &mut Session, actions: Vec<Action>, answer: u8) {
    let mut queue: std::collections::VecDeque<Action> = actions.into();
    // Bounded: every answer returns only replies, so the queue drains.
    for _ in 0..64 {
        let Some(action) = queue.pop_front() else {
            return;
        };
        match action {
            Action::Reply(r) => assert!((200..600).contains(&r.code), "{r:?}"),
            Action::Close => assert!(session.is_closed()),
            Action::StartTls => session.tls_started("TLSv1_3 TLS13_AES_128_GCM_SHA256".into()),
            Action::VerifyAuth { identity, .. } => {
                queue.extend(session.auth_result(identity, answer.is_multiple_of(2)))
            }
            Action::CheckRcpt { rcpt, .. } => {
                let result = match answer % 4 {
                    0 => Ok(None),
                    1 => Ok(Some(LimitHit::CustomerRecipientsPer10Minutes)),
                    2 => Ok(Some(LimitHit::UserRecipientsPerDay)),
                    _ => Err(LimitStoreError("down".into())),
                };
                queue.extend(session.rcpt_result(rcpt, result));
            }
            Action::Release { rcpts, .. } => assert!(!rcpts.is_empty()),
            Action::DiscardData => {}
            Action::Spool(m) => {
                assert!(!m.rcpts.is_empty());
                let result = if answer.is_multiple_of(3) {
                    Err(Reply::new(452, "4.3.1 Insufficient system storage"))
                } else {
                    Ok("0001".to_string())
                };
                queue.extend(session.spooled(result));
            }
        }
    }
    panic!("actions did not drain");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_input_gives_replies_and_never_panics(
        inputs in proptest::collection::vec((input(), any::<u8>()), 0..40),
        tls_available in any::<bool>(),
    ) {
        let dir = std::path::Path::new("unused");
        let cfg = common::config(dir, 9);
        let mut limits = cfg.limits.clone();
        limits.max_message_bytes = 300;
        let mut session = Session::new(
            SessionConfig {
                hostname: cfg.hostname.clone(),
                limits,
                policy: Arc::new(Policy::new(&cfg)),
                tls_available,
                credentials: Default::default(),
            },
            "127.0.0.1".parse().unwrap(),
            None,
        );
        for (input, answer) in inputs {
            if session.is_closed() {
                prop_assert!(session.on_line(b"NOOP").is_empty());
                break;
            }
            if session.in_data() {
                let bytes = match input {
                    Input::Line(b) | Input::Data(b) => b,
                    Input::Command(i) => COMMANDS[i].as_bytes().to_vec(),
                };
                let mut text = Vec::new();
                let (used, actions) = session.on_data(&bytes, &mut text);
                prop_assert!(text.len() <= 300 + 2);
                prop_assert!(used <= bytes.len());
                run(&mut session, actions, answer);
            } else {
                let line = match input {
                    Input::Line(b) | Input::Data(b) => b,
                    Input::Command(i) => COMMANDS[i].as_bytes().to_vec(),
                };
                let actions = session.on_line(&line);
                run(&mut session, actions, answer);
            }
        }
    }
}
