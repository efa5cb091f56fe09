//! rspamd as the content filter of `relay-bench --filter`: the conformance suite's filters
//! image (`conformance/images/build.sh filters`, Debian's rspamd 3.4, no network), run
//! with `docker run --network host` so that neither system pays for a userland port
//! proxy, its milter (the proxy worker) bound to `127.0.0.1:11332` only (the image binds
//! every address of its own network namespace; here a mounted `worker-proxy.inc` says
//! loopback). Its other workers bind `localhost` as Debian ships them. Its DNS goes to
//! the bench's own resolver (`dns`), which answers every query at once.
//!
//! The container is removed when the [`Rspamd`] value is dropped, on error and on Ctrl-C
//! too. Not here: configuring either system to use it (see `filter` and `postfix`).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Where the milter listens.
pub const MILTER_PORT: u16 = 11332;
/// The normal (scanning) worker, which `rspamc` talks to.
const NORMAL_PORT: u16 = 11333;
/// The controller.
const CONTROLLER_PORT: u16 = 11334;

/// The filters image's entrypoint prints this once the milter port accepts connections.
const READY_LINE: &str = "filter ready";

/// The proxy worker's settings: the image's own, bound to loopback.
const WORKER_PROXY: &str = "milter = yes;
timeout = 120s;
bind_socket = \"127.0.0.1:11332\";
upstream \"local\" {
  default = yes;
  self_scan = yes;
}
";

/// DNS settings: the image's, with the bench's resolver as the name server.
fn options(resolver: std::net::SocketAddr) -> String {
    format!("dns {{\n  nameserver = [\"{resolver}\"];\n  timeout = 0.2s;\n  retransmits = 1;\n}}\n")
}

/// A running rspamd container; removed on drop.
pub struct Rspamd {
    name: String,
    /// The container's first process as the host sees it (rspamd runs under it).
    pub pid: u32,
}

/// rspamd's verdict on one message, as `rspamc` prints it.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub action: String,
    pub score: String,
    pub symbols: Vec<String>,
}

fn docker(args: &[&str]) -> Result<String, String> {
    let out = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run docker: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "docker {}: {}",
            args.first().copied().unwrap_or(""),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The filters image's tag: built (or found by its content hash) by the conformance
/// suite's `build.sh`, as the suite itself does.
pub fn image() -> Result<String, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../conformance/images/build.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg("filters")
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!("{} filters failed", script.display()));
    }
    filters_tag(&String::from_utf8_lossy(&out.stdout))
        .ok_or_else(|| format!("{} printed no filters= line", script.display()))
}

/// The `filters=IMAGE:TAG` line of `build.sh`'s output.
fn filters_tag(build_output: &str) -> Option<String> {
    build_output
        .lines()
        .find_map(|l| l.strip_prefix("filters="))
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

/// Parses `rspamc`'s report: `Action: …`, `Score: …`, `Symbol: …` lines.
fn parse_rspamc(text: &str) -> Option<Verdict> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
    };
    Some(Verdict {
        action: field("Action:")?,
        score: field("Score:")?,
        symbols: text
            .lines()
            .filter_map(|l| l.strip_prefix("Symbol:"))
            .map(|s| s.trim().to_string())
            .collect(),
    })
}

impl Rspamd {
    /// Starts rspamd from `image`, asking `resolver` for names, and waits (at most 120 s)
    /// until its milter accepts connections; `work_dir` holds the mounted settings.
    pub fn start(
        image: &str,
        work_dir: &Path,
        resolver: std::net::SocketAddr,
    ) -> Result<Rspamd, String> {
        for port in [MILTER_PORT, NORMAL_PORT, CONTROLLER_PORT] {
            std::net::TcpListener::bind(("127.0.0.1", port)).map_err(|e| {
                format!("rspamd needs 127.0.0.1:{port}, which is taken ({e}): is another rspamd running?")
            })?;
        }
        let settings = work_dir.join("rspamd-worker-proxy.inc");
        std::fs::write(&settings, WORKER_PROXY)
            .map_err(|e| format!("cannot write {}: {e}", settings.display()))?;
        let dns = work_dir.join("rspamd-options.inc");
        std::fs::write(&dns, options(resolver))
            .map_err(|e| format!("cannot write {}: {e}", dns.display()))?;
        let name = format!("relay-bench-rspamd-{}", std::process::id());
        let _ = docker(&["rm", "-f", &name]);
        let mount = format!(
            "{}:/etc/rspamd/override.d/worker-proxy.inc:ro",
            settings.display()
        );
        let dns_mount = format!("{}:/etc/rspamd/local.d/options.inc:ro", dns.display());
        docker(&[
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            "host",
            "-v",
            &mount,
            "-v",
            &dns_mount,
            image,
            "rspamd",
        ])?;
        // From here on the guard removes the container whatever happens next.
        let mut guard = Rspamd { name, pid: 0 };
        let until = Instant::now() + Duration::from_secs(120);
        loop {
            let state = docker(&[
                "inspect",
                "-f",
                "{{.State.Running}} {{.State.Pid}}",
                &guard.name,
            ])?;
            let logs = Command::new("docker")
                .args(["logs", &guard.name])
                .stdin(Stdio::null())
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            let mut fields = state.split_whitespace();
            if fields.next() != Some("true") {
                return Err(format!("rspamd exited: {}", logs.trim()));
            }
            if logs.contains(READY_LINE) {
                guard.pid = fields.next().and_then(|p| p.parse().ok()).unwrap_or(0);
                return Ok(guard);
            }
            if Instant::now() > until {
                return Err("rspamd's milter did not open within 120 s".into());
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// How many of rspamd's DNS questions timed out so far, from its log (each one adds
    /// its 0.2 s timeout to a message).
    pub fn dns_timeouts(&self) -> usize {
        Command::new("docker")
            .args(["logs", &self.name])
            .stdin(Stdio::null())
            .output()
            .map(|o| {
                [o.stdout, o.stderr]
                    .iter()
                    .map(|b| {
                        String::from_utf8_lossy(b)
                            .matches("query timed out")
                            .count()
                    })
                    .sum()
            })
            .unwrap_or(0)
    }

    /// rspamd's version, as `rspamd --version` prints it.
    pub fn version(&self) -> String {
        docker(&["exec", &self.name, "rspamd", "--version"])
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    }

    /// Scans `message` (as a relay would show it, from `from` to `rcpt`) with `rspamc`
    /// against the scanning worker, `times` times (one report: the last).
    pub fn scan(
        &self,
        message: &[u8],
        from: &str,
        rcpt: &str,
        times: usize,
    ) -> Result<Verdict, String> {
        use std::io::Write;
        let mut last = String::new();
        for _ in 0..times.max(1) {
            let mut child = Command::new("docker")
                .args(["exec", "-i", &self.name, "rspamc", "-h"])
                .arg(format!("127.0.0.1:{NORMAL_PORT}"))
                .args([
                    "-i",
                    "127.0.0.1",
                    "--helo",
                    "load.acme.example",
                    "-F",
                    from,
                    "-r",
                    rcpt,
                ])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| format!("cannot run docker exec rspamc: {e}"))?;
            if let Some(mut stdin) = child.stdin.take() {
                stdin
                    .write_all(message)
                    .map_err(|e| format!("rspamc: {e}"))?;
            }
            let out = child
                .wait_with_output()
                .map_err(|e| format!("rspamc: {e}"))?;
            last = String::from_utf8_lossy(&out.stdout).into_owned();
            if !out.status.success() {
                return Err(format!(
                    "rspamc failed: {}{}",
                    last,
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
        parse_rspamc(&last).ok_or_else(|| format!("rspamc said: {last}"))
    }
}

impl Rspamd {
    /// Writes rspamd's log to `path` (kept for a look after the run).
    pub fn save_log(&self, path: &Path) {
        if let Ok(o) = Command::new("docker")
            .args(["logs", &self.name])
            .stdin(Stdio::null())
            .output()
        {
            let _ = std::fs::write(path, [o.stdout, o.stderr].concat());
        }
    }
}

impl Drop for Rspamd {
    fn drop(&mut self) {
        if let Err(e) = docker(&["rm", "-f", &self.name]) {
            eprintln!(
                "warning: could not remove the rspamd container {}: {e}",
                self.name
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rspamcs_report() {
        let text = "Results for file: stdin (0.108 seconds)\n[Metric: default]\nAction: no action\nSpam: false\nScore: 1.90 / 15.00\nSymbol: MISSING_DATE (1.00)\nSymbol: MIME_GOOD (-0.10)[text/plain]\nMessage-ID: relay-bench@acme.example\n";
        let v = parse_rspamc(text).expect("a verdict");
        assert_eq!(v.action, "no action");
        assert_eq!(v.score, "1.90 / 15.00");
        assert_eq!(
            v.symbols,
            vec!["MISSING_DATE (1.00)", "MIME_GOOD (-0.10)[text/plain]"]
        );
        assert_eq!(parse_rspamc("rspamc: cannot connect"), None);
    }

    #[test]
    fn finds_the_filters_image_in_build_sh_output() {
        let out = "base=smtprelay-base:198a\nfilters=smtprelay-filters:6ed3\n";
        assert_eq!(filters_tag(out).as_deref(), Some("smtprelay-filters:6ed3"));
        assert_eq!(filters_tag("base=smtprelay-base:198a\n"), None);
    }
}
