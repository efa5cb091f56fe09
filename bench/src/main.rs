//! `relay-bench`: drives the same SMTP load through our relay and through Postfix on this
//! machine, both forwarding to one `smtp-sink`, and prints a Markdown table of medians with
//! the ratio ours/Postfix per row; then measures our relay's memory with many idle
//! sessions and with concurrent large messages delivered to a sink, the delivery time of a
//! route while another route's destination is a tarpit, and the time a manifest edit
//! takes to be in force under `relayctl run`.
//!
//! ```text
//! relay-bench [--sessions 20] [--messages 10000] [--size 1024] [--recipients 1]
//!             [--rounds 3] [--per-connection 100] [--idle-sessions 10000]
//!             [--reload-edits 10] [--big-sessions 20] [--big-size 35000000]
//!             [--tarpit-messages 3000] [--tarpit-rate 200] [--tarpit-every 4]
//!             [--tarpit-mode drip|silent] [--tarpit-rounds 3]
//!             [--relayctl PATH] [--no-postfix] [--generator ours|smtp-source|both]
//!             [--work-dir /var/tmp/relay-bench] [--timeout-secs 600]
//! relay-bench --scaling [--scaling-messages 5000] [--no-postfix] [--work-dir DIR]
//! relay-bench --archive [--rounds 3] [--messages N] [--sessions N]   (archiving's cost)
//! relay-bench --filter [--filter-messages 10000] [--filter-image IMAGE] [--rounds 3]
//!             [--no-postfix] [--work-dir DIR]
//! relay-bench serve-relay CONFIG.json      (internal: our relay as a child process)
//! ```
//!
//! `--generator smtp-source` (or `both`) drives the side-by-side rounds with Postfix's
//! `smtp-source` too, one message per connection and reused connections. `--scaling`
//! runs only the scaling table: one axis at a time away from 20 sessions × 1 KiB × 1
//! recipient (sessions, message size, recipients per message), ours next to Postfix.
//! `--filter` runs only the content-filter comparison: one rspamd (the conformance
//! suite's filters image, in docker, on loopback) as Postfix's milter and as our relay's
//! content filter, and our relay without a filter, under the default bench shape.
//!
//! Postfix comes from `bench/scripts/setup-postfix.sh`. Everything runs on loopback; every
//! child (sink, our relay, relayctl) and Postfix itself are stopped when the run ends,
//! on error and on Ctrl-C too. The policy-decision micro benchmark is
//! `cargo bench -p relay --bench ingress`.

mod archive;
mod args;
mod big;
mod dns;
mod downstream;
mod filter;
mod full;
mod idle;
mod load;
mod ours;
mod postfix;
mod procfs;
mod reload;
mod report;
mod rounds;
mod rspamd;
mod scaling;
mod sink;
mod source;
mod stats;
mod tarpit;

use std::process::ExitCode;

use args::parse_args;
use full::bench;

/// Sockets for thousands of idle sessions: the soft open-file limit up to the hard one.
fn raise_nofile() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut l = getrlimit(Resource::Nofile);
    if l.current < l.maximum {
        l.current = l.maximum;
        let _ = setrlimit(Resource::Nofile, l);
    }
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.first().map(String::as_str) == Some("serve-relay") {
        let Some(path) = argv.get(1) else {
            eprintln!("usage: relay-bench serve-relay CONFIG.json");
            return ExitCode::from(2);
        };
        return match ours::serve(path) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("relay: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let args = match parse_args(&argv) {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("relay-bench: {e}");
            }
            eprintln!(
                "usage: relay-bench [--sessions N] [--messages N] [--size BYTES] [--recipients N] [--rounds N] [--per-connection N] [--idle-sessions N] [--big-sessions N] [--big-size BYTES] [--tarpit-messages N] [--tarpit-rate N] [--tarpit-every N] [--tarpit-mode drip|silent] [--tarpit-rounds N] [--reload-edits N] [--relayctl PATH] [--no-postfix] [--generator ours|smtp-source|both] [--scaling] [--scaling-messages N] [--filter] [--filter-messages N] [--filter-image IMAGE] [--archive] [--work-dir DIR] [--timeout-secs N]"
            );
            return ExitCode::from(2);
        }
    };
    raise_nofile();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("relay-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = rt.block_on(async {
        tokio::select! {
            r = bench(args) => r,
            _ = tokio::signal::ctrl_c() => Err("interrupted".to_string()),
        }
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("relay-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
