//! `relay-bench`'s command line: the load shape, the rounds, what to measure besides.

use std::path::PathBuf;
use std::time::Duration;

use crate::downstream;

#[derive(Clone, Debug)]
pub(crate) struct Args {
    pub(crate) sessions: usize,
    pub(crate) messages: usize,
    pub(crate) size: usize,
    pub(crate) recipients: usize,
    pub(crate) rounds: usize,
    pub(crate) per_connection: usize,
    pub(crate) idle_sessions: usize,
    pub(crate) big_sessions: usize,
    pub(crate) big_size: usize,
    pub(crate) tarpit_messages: usize,
    pub(crate) tarpit_rate: usize,
    pub(crate) tarpit_every: usize,
    pub(crate) tarpit_mode: downstream::TarpitMode,
    pub(crate) tarpit_rounds: usize,
    pub(crate) reload_edits: usize,
    pub(crate) relayctl: Option<PathBuf>,
    pub(crate) postfix: bool,
    pub(crate) generator: GeneratorChoice,
    pub(crate) scaling: bool,
    /// Only archiving's cost: our relay without and with an archive address.
    pub(crate) archive: bool,
    pub(crate) scaling_messages: usize,
    /// `--filter`: only the content-filter comparison (rspamd as a milter).
    pub(crate) filter: bool,
    /// Messages per measured run of `--filter`; `None`: `messages`.
    pub(crate) filter_messages: Option<usize>,
    /// The filters image; `None`: the conformance suite's `build.sh filters` names it.
    pub(crate) filter_image: Option<String>,
    pub(crate) work_dir: PathBuf,
    pub(crate) timeout: Duration,
}

/// Which load generator drives the side-by-side rounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GeneratorChoice {
    Ours,
    SmtpSource,
    Both,
}

impl Default for Args {
    fn default() -> Self {
        Self {
            sessions: 20,
            messages: 10_000,
            size: 1024,
            recipients: 1,
            rounds: 3,
            per_connection: 100,
            idle_sessions: 10_000,
            big_sessions: 20,
            big_size: 35_000_000,
            tarpit_messages: 3000,
            tarpit_rate: 200,
            tarpit_every: 4,
            tarpit_mode: downstream::TarpitMode::Drip,
            tarpit_rounds: 3,
            reload_edits: 10,
            relayctl: None,
            postfix: true,
            generator: GeneratorChoice::Ours,
            scaling: false,
            archive: false,
            scaling_messages: 5000,
            filter: false,
            filter_messages: None,
            filter_image: None,
            work_dir: PathBuf::from("/var/tmp/relay-bench"),
            timeout: Duration::from_secs(600),
        }
    }
}

pub(crate) fn parse_args(argv: &[String]) -> Result<Args, String> {
    let mut a = Args::default();
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        let num = |v: String| {
            v.parse::<usize>()
                .map_err(|_| format!("{flag}: {v:?} is not a number"))
        };
        match flag.as_str() {
            "--sessions" => a.sessions = num(value()?)?.max(1),
            "--messages" => a.messages = num(value()?)?.max(1),
            "--size" => a.size = num(value()?)?.max(1),
            "--recipients" => a.recipients = num(value()?)?.clamp(1, 100),
            // 0 skips the side-by-side throughput rounds (memory and reload only).
            "--rounds" => a.rounds = num(value()?)?,
            "--per-connection" => a.per_connection = num(value()?)?.max(1),
            "--idle-sessions" => a.idle_sessions = num(value()?)?,
            "--big-sessions" => a.big_sessions = num(value()?)?,
            "--big-size" => a.big_size = num(value()?)?.max(1024),
            "--reload-edits" => a.reload_edits = num(value()?)?,
            // 0 skips the tarpit runs.
            "--tarpit-messages" => a.tarpit_messages = num(value()?)?,
            "--tarpit-rate" => a.tarpit_rate = num(value()?)?.max(1),
            "--tarpit-every" => a.tarpit_every = num(value()?)?.max(1),
            "--tarpit-rounds" => a.tarpit_rounds = num(value()?)?.max(1),
            "--tarpit-mode" => {
                a.tarpit_mode = match value()?.as_str() {
                    "drip" => downstream::TarpitMode::Drip,
                    "silent" => downstream::TarpitMode::Silent,
                    other => return Err(format!("--tarpit-mode: {other:?} is not drip or silent")),
                }
            }
            "--relayctl" => a.relayctl = Some(PathBuf::from(value()?)),
            "--no-postfix" => a.postfix = false,
            "--generator" => {
                a.generator = match value()?.as_str() {
                    "ours" => GeneratorChoice::Ours,
                    "smtp-source" => GeneratorChoice::SmtpSource,
                    "both" => GeneratorChoice::Both,
                    other => {
                        return Err(format!(
                            "--generator: {other:?} is not ours, smtp-source or both"
                        ));
                    }
                }
            }
            "--scaling" => a.scaling = true,
            "--archive" => a.archive = true,
            "--scaling-messages" => a.scaling_messages = num(value()?)?.max(1),
            "--filter" => a.filter = true,
            "--filter-messages" => a.filter_messages = Some(num(value()?)?.max(1)),
            "--filter-image" => a.filter_image = Some(value()?),
            "--work-dir" => a.work_dir = PathBuf::from(value()?),
            "--timeout-secs" => a.timeout = Duration::from_secs(num(value()?)? as u64),
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::parse_args;

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn the_filter_run_keeps_the_default_shape_unless_told() {
        let a = parse_args(&argv("--filter")).expect("parses");
        assert!(a.filter);
        assert_eq!((a.sessions, a.messages, a.size), (20, 10_000, 1024));
        assert_eq!(a.filter_messages, None);
        let a = parse_args(&argv(
            "--filter --filter-messages 3000 --filter-image img:tag",
        ))
        .expect("parses");
        assert_eq!(a.filter_messages, Some(3000));
        assert_eq!(a.filter_image.as_deref(), Some("img:tag"));
        assert!(!parse_args(&[]).expect("parses").filter);
    }

    #[test]
    fn a_filter_message_count_must_be_a_number() {
        let e = parse_args(&argv("--filter --filter-messages many")).expect_err("refused");
        assert_eq!(e, "--filter-messages: \"many\" is not a number");
        assert_eq!(
            parse_args(&argv("--filter-messages")).expect_err("refused"),
            "--filter-messages needs a value"
        );
    }
}
