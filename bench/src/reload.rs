//! Time from a manifest change to the new policy in force, through `relayctl run` (which
//! polls its manifests every 200 ms): a client at 127.0.0.9 is refused (`550`) while its
//! IpAllowRange is disabled and accepted (`250` to MAIL) once the edited manifest enables
//! it. Each edit is an atomic rename; a probe session every 10 ms (each bounded by a
//! timeout, at most 10 s per edit) tells when the reply changed. `relayctl` is stopped on
//! drop. Not here: the throughput bench.

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

use crate::sink::free_port;

const PROBE_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 9);

fn manifest(probe_enabled: bool, sink_port: u16) -> String {
    format!(
        r#"apiVersion: smtprelay.dev/v1alpha1
kind: Organization
metadata: {{name: acme, namespace: acme}}
spec:
  domains: [acme.example]
  users: [alice@acme.example]
  licenses: 10
  billing: Paid
  relay: {{hostname: relay.acme.example}}
---
apiVersion: smtprelay.dev/v1alpha1
kind: SmtpRelaySetting
metadata: {{name: loopback, namespace: acme}}
spec:
  description: loopback clients
  allowedSenders: OrganizationDomains
  authentication:
    ipAllowRanges: {{enabled: true, selector: {{matchLabels: {{smtprelay.dev/allow: loopback}}}}}}
    requireSmtpAuth: false
  encryption: {{requireTls: false}}
---
apiVersion: smtprelay.dev/v1alpha1
kind: IpAllowRange
metadata: {{name: lo, namespace: acme, labels: {{smtprelay.dev/allow: loopback}}}}
spec: {{description: the first loopback address, cidr: 127.0.0.1}}
---
apiVersion: smtprelay.dev/v1alpha1
kind: IpAllowRange
metadata: {{name: probe, namespace: acme, labels: {{smtprelay.dev/allow: loopback}}}}
spec: {{description: the probe client, cidr: {PROBE_IP}, enabled: {probe_enabled}}}
---
apiVersion: smtprelay.dev/v1alpha1
kind: MailRoute
metadata: {{name: default, namespace: acme}}
spec:
  description: the sink
  match: {{default: true}}
  singleHost: {{host: 127.0.0.1, port: {sink_port}}}
  tls: {{requireTls: false, requireCaSigned: false, validateHostname: false}}
"#
    )
}

fn write_atomic(path: &Path, text: &str) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, path).map_err(|e| e.to_string())
}

struct RelayCtl(Child);

impl Drop for RelayCtl {
    fn drop(&mut self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.0.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The reply code to `MAIL FROM` for a session from the probe address.
async fn probe(addr: SocketAddr) -> Result<u16, String> {
    let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    socket
        .bind(SocketAddr::new(IpAddr::V4(PROBE_IP), 0))
        .map_err(|e| e.to_string())?;
    let s = socket.connect(addr).await.map_err(|e| e.to_string())?;
    let (r, mut w) = s.into_split();
    let mut r = tokio::io::BufReader::new(r);
    w.write_all(b"EHLO probe.acme.example\r\nMAIL FROM:<app@acme.example>\r\nQUIT\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut finals = 0;
    let mut line = String::new();
    for _ in 0..64 {
        line.clear();
        if r.read_line(&mut line).await.map_err(|e| e.to_string())? == 0 {
            break;
        }
        if line.len() >= 4 && line.as_bytes()[3] == b' ' {
            finals += 1;
            // Greeting, EHLO, then MAIL.
            if finals == 3 {
                return line[..3].parse().map_err(|_| format!("bad reply {line:?}"));
            }
        }
    }
    Err("no reply to MAIL".into())
}

/// Milliseconds from each edit to the changed reply, `edits` edits alternating enable and
/// disable.
pub async fn measure(relayctl: &Path, work: &Path, edits: usize) -> Result<Vec<f64>, String> {
    let dir = work.join("manifests");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let file = dir.join("relay.yaml");
    let sink_port = free_port().map_err(|e| e.to_string())?;
    write_atomic(&file, &manifest(false, sink_port))?;
    let ports: Vec<u16> = (0..4)
        .map(|_| free_port())
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let state: PathBuf = work.join("relayctl-state");
    let _ = std::fs::remove_dir_all(&state);
    let mut child = Command::new(relayctl)
        .arg("run")
        .arg(&dir)
        .args(["--host", "127.0.0.1"])
        .args(["--smtp-port", &ports[0].to_string()])
        .args(["--submission-port", &ports[1].to_string()])
        .args(["--smtps-port", &ports[2].to_string()])
        .args(["--admin-port", &ports[3].to_string()])
        .arg("--state-dir")
        .arg(&state)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", relayctl.display()))?;
    let out = child.stdout.take();
    let _guard = RelayCtl(child);
    let Some(out) = out else {
        return Err("relayctl has no stdout".into());
    };
    let mut lines = BufReader::new(out).lines();
    let started = lines
        .by_ref()
        .take(30)
        .map_while(Result::ok)
        .any(|l| l.starts_with("configuration generation"));
    if !started {
        return Err("relayctl run did not start".into());
    }
    // Keep draining its stdout so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines.map_while(Result::ok) {});
    let addr = SocketAddr::from(([127, 0, 0, 1], ports[0]));
    match probe(addr).await {
        Ok(550) => {}
        other => {
            return Err(format!(
                "probe before any edit: expected 550, got {other:?}"
            ));
        }
    }
    let mut times = Vec::new();
    for i in 0..edits {
        let enable = i % 2 == 0;
        let want = if enable { 250 } else { 550 };
        // Start in the middle of relayctl's poll cycle at random-ish offsets.
        tokio::time::sleep(Duration::from_millis(150 + 37 * (i as u64 % 5))).await;
        write_atomic(&file, &manifest(enable, sink_port))?;
        let t0 = Instant::now();
        let deadline = t0 + Duration::from_secs(10);
        loop {
            let got = tokio::time::timeout(Duration::from_secs(2), probe(addr)).await;
            if let Ok(Ok(code)) = got
                && code == want
            {
                times.push(t0.elapsed().as_secs_f64() * 1000.0);
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("edit {i}: reply did not become {want} within 10 s"));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    Ok(times)
}
