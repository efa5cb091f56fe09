//! A content filter for tests: a tokio task speaking the filter side of the milter
//! protocol on a loopback port. It answers option negotiation as told, records every
//! command it receives, answers nothing to macros and ABORT (as libmilter), and
//! asks the test's script what to answer to everything else.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::protocol::command;

/// A command the fake received: on which connection (0, 1, ...), its code and data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    pub conn: usize,
    pub code: u8,
    pub data: Vec<u8>,
}

/// What the fake does after a command.
pub enum Answer {
    /// These reply frames (code byte and data each), framed by the fake.
    Reply(Vec<Vec<u8>>),
    /// These reply frames, then close the connection.
    ReplyAndClose(Vec<Vec<u8>>),
    /// These bytes as they are.
    Raw(Vec<u8>),
    /// Nothing.
    Silent,
    /// Close the connection.
    Close,
    /// Never answer again on this connection (keep it open).
    Hang,
}

pub type Script = Box<dyn FnMut(&Received) -> Answer + Send>;

pub struct FakeMilter {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
}

/// Our option negotiation answer: version, actions, protocol steps, symbol lists.
pub fn optneg(version: u32, actions: u32, protocol: u32, symlists: &[(u32, &str)]) -> Vec<u8> {
    let mut f = vec![b'O'];
    f.extend_from_slice(&version.to_be_bytes());
    f.extend_from_slice(&actions.to_be_bytes());
    f.extend_from_slice(&protocol.to_be_bytes());
    for (stage, list) in symlists {
        f.extend_from_slice(&stage.to_be_bytes());
        f.extend_from_slice(list.as_bytes());
        f.push(0);
    }
    f
}

/// A reply frame: `code` then `data`.
pub fn reply(code: u8, data: &[u8]) -> Vec<u8> {
    let mut f = vec![code];
    f.extend_from_slice(data);
    f
}

/// Frames `payload` with its length.
pub fn framed(payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

/// A script that continues every event and answers end of body with `eob`.
pub fn at_eob(eob: Vec<Vec<u8>>) -> Script {
    Box::new(move |r: &Received| {
        if r.code == command::END_OF_BODY {
            Answer::Reply(eob.clone())
        } else {
            Answer::Reply(vec![b"c".to_vec()])
        }
    })
}

impl FakeMilter {
    /// Listens on a free loopback port; every connection answers negotiation with
    /// `negotiation` (a frame from [`optneg`]) and then follows `script` (shared by all).
    pub async fn start(negotiation: Vec<u8>, script: Script) -> FakeMilter {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(script));
        let log = received.clone();
        tokio::spawn(async move {
            let mut n = 0;
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(
                    stream,
                    n,
                    negotiation.clone(),
                    script.clone(),
                    log.clone(),
                ));
                n += 1;
            }
        });
        FakeMilter { addr, received }
    }

    pub fn endpoint(&self) -> super::MilterEndpoint {
        super::MilterEndpoint {
            host: self.addr.ip().to_string(),
            port: self.addr.port(),
        }
    }

    /// Every command received so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// The codes received so far, as a string (`"ODCDH..."`), for order checks.
    pub fn codes(&self) -> String {
        self.received().iter().map(|r| char::from(r.code)).collect()
    }

    /// The codes once they end with `suffix` (the fake reads on its own task), or as
    /// they are after a second.
    pub async fn codes_ending(&self, suffix: &str) -> String {
        for _ in 0..100 {
            let codes = self.codes();
            if codes.ends_with(suffix) {
                return codes;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        self.codes()
    }

    /// The codes received on connection `conn`.
    pub fn codes_of(&self, conn: usize) -> String {
        self.received()
            .iter()
            .filter(|r| r.conn == conn)
            .map(|r| char::from(r.code))
            .collect()
    }

    /// How many connections the client opened.
    pub fn connections(&self) -> usize {
        let conns: std::collections::BTreeSet<usize> =
            self.received().iter().map(|r| r.conn).collect();
        conns.len()
    }
}

async fn serve(
    mut stream: TcpStream,
    conn: usize,
    negotiation: Vec<u8>,
    script: Arc<Mutex<Script>>,
    log: Arc<Mutex<Vec<Received>>>,
) {
    let mut hung = false;
    loop {
        let mut header = [0u8; 4];
        if stream.read_exact(&mut header).await.is_err() {
            return;
        }
        let len = u32::from_be_bytes(header) as usize;
        let mut frame = vec![0; len];
        if stream.read_exact(&mut frame).await.is_err() || frame.is_empty() {
            return;
        }
        let received = Received {
            conn,
            code: frame[0],
            data: frame[1..].to_vec(),
        };
        log.lock().unwrap().push(received.clone());
        if hung {
            continue;
        }
        let answer = match received.code {
            command::OPTNEG => Answer::Reply(vec![negotiation.clone()]),
            command::MACRO | command::ABORT => Answer::Silent,
            command::QUIT => Answer::Close,
            _ => (script.lock().unwrap())(&received),
        };
        match answer {
            Answer::Reply(frames) => {
                let bytes: Vec<u8> = frames.iter().flat_map(|f| framed(f)).collect();
                if stream.write_all(&bytes).await.is_err() {
                    return;
                }
            }
            Answer::ReplyAndClose(frames) => {
                let bytes: Vec<u8> = frames.iter().flat_map(|f| framed(f)).collect();
                let _ = stream.write_all(&bytes).await;
                return;
            }
            Answer::Raw(bytes) => {
                if stream.write_all(&bytes).await.is_err() {
                    return;
                }
            }
            Answer::Silent => {}
            Answer::Close => return,
            Answer::Hang => hung = true,
        }
    }
}
