//! The resolver rspamd asks during `relay-bench --filter`: it knows no names and says so
//! at once (`NXDOMAIN` to every query), as a caching resolver on the same host answers
//! for a name that is not on a block list. Without it rspamd's DNS-list checks (the
//! client's host name and HELO against DBL, SURBL, URIBL) wait for their timeout, which
//! would measure the missing network rather than the relays.
//!
//! UDP on loopback only, on a thread of its own; stopped when dropped. Not here: rspamd
//! itself (`rspamd`).

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// A running resolver; stopped on drop.
///
/// It answers on a thread of its own, so that nothing the bench does (some of it
/// blocking) delays an answer: a late answer is a timeout to rspamd.
pub struct NxResolver {
    pub addr: SocketAddr,
    answered: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl NxResolver {
    /// Listens on a free loopback UDP port.
    pub fn start() -> Result<NxResolver, String> {
        let socket = UdpSocket::bind("127.0.0.1:0")
            .map_err(|e| format!("no loopback UDP port for the resolver: {e}"))?;
        let addr = socket
            .local_addr()
            .map_err(|e| format!("resolver address: {e}"))?;
        // Wakes up now and then to see whether it should stop.
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .map_err(|e| format!("resolver socket: {e}"))?;
        let answered = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (answered, stop) = (answered.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 1500];
                while !stop.load(Ordering::Relaxed) {
                    // A timeout, or an error about one datagram (an ICMP error for an
                    // earlier answer, say): the next one is read all the same.
                    let Ok((n, from)) = socket.recv_from(&mut buf) else {
                        continue;
                    };
                    if let Some(reply) = nxdomain(&buf[..n])
                        && socket.send_to(&reply, from).is_ok()
                    {
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        };
        Ok(NxResolver {
            addr,
            answered,
            stop,
            thread: Some(thread),
        })
    }

    /// Queries answered so far.
    pub fn answered(&self) -> usize {
        self.answered.load(Ordering::Relaxed)
    }
}

impl Drop for NxResolver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The `NXDOMAIN` answer to a standard query with one question: the query's id, opcode,
/// RD bit and question, nothing else. `None` for anything else (no answer is sent).
fn nxdomain(query: &[u8]) -> Option<Vec<u8>> {
    let header = query.get(..12)?;
    let is_query = header[2] & 0x80 == 0;
    let opcode = (header[2] >> 3) & 0x0f;
    let questions = u16::from_be_bytes([header[4], header[5]]);
    if !is_query || opcode != 0 || questions != 1 {
        return None;
    }
    // QNAME: labels up to the root label (compression pointers never start a query).
    let mut at = 12;
    loop {
        let len = *query.get(at)? as usize;
        if len & 0xc0 != 0 {
            return None;
        }
        at += 1 + len;
        if len == 0 {
            break;
        }
    }
    let question_end = at + 4; // QTYPE, QCLASS
    let question = query.get(12..question_end)?;
    let mut reply = Vec::with_capacity(question_end);
    reply.extend_from_slice(&header[..2]);
    // QR, the query's opcode and RD; RA; RCODE 3 (name error).
    reply.push(0x80 | (header[2] & 0x79));
    reply.push(0x80 | 3);
    reply.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
    reply.extend_from_slice(question);
    Some(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A query for `name` (type A), with an EDNS OPT record as rspamd sends it.
    fn query(id: u16, name: &str) -> Vec<u8> {
        let mut q = id.to_be_bytes().to_vec();
        q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1]);
        for label in name.split('.') {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.extend_from_slice(&[0, 0, 1, 0, 1]);
        q.extend_from_slice(&[0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0, 0]);
        q
    }

    #[test]
    fn every_name_is_unknown_and_the_answer_matches_the_question() {
        let resolver = NxResolver::start().expect("starts");
        let client = UdpSocket::bind("127.0.0.1:0").expect("bind");
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let q = query(0xbeef, "load.acme.example.dbl.spamhaus.org");
        client.send_to(&q, resolver.addr).expect("send");
        let mut buf = [0u8; 512];
        let (n, _) = client.recv_from(&mut buf).expect("answered in time");
        let a = &buf[..n];
        assert_eq!(&a[..2], &[0xbe, 0xef], "the query's id");
        assert_eq!(a[2] & 0x80, 0x80, "a response");
        assert_eq!(a[2] & 0x01, 0x01, "recursion desired, as asked");
        assert_eq!(a[3] & 0x0f, 3, "NXDOMAIN");
        assert_eq!(
            &a[4..12],
            &[0, 1, 0, 0, 0, 0, 0, 0],
            "one question, no records"
        );
        // The question, as asked; the OPT record is not echoed.
        assert_eq!(&a[12..], &q[12..q.len() - 11]);
        assert_eq!(resolver.answered(), 1);
    }

    #[test]
    fn answers_are_only_given_to_plain_queries() {
        let q = query(1, "example.net");
        let mut response = q.clone();
        response[2] |= 0x80;
        assert_eq!(nxdomain(&response), None, "a response is not a query");
        let mut update = q.clone();
        update[2] = 5 << 3;
        assert_eq!(nxdomain(&update), None, "an UPDATE");
        assert_eq!(nxdomain(&q[..20]), None, "cut short");
        assert_eq!(nxdomain(&q[..5]), None, "no header");
    }
}
