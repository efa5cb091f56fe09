//! The container tier's harness, over the `docker` command line.
//!
//! A [`Scenario`] owns one private dual-stack network with a random subnet and every
//! container started on it; dropping it (also when a test panics) removes the containers
//! and then the network. Containers get fixed addresses ([`Scenario::ip4`]), so manifests
//! can be written before anything starts. Its functions start the project's images in their
//! roles: Postfix clients and servers, dnsmasq, and the relay with a config rendered from
//! manifests, and read what a user would look at: the sink's maildir, the client's queue
//! (`postqueue -j`) and the sender's mailbox.
//!
//! The CLI is used rather than a Docker API client because it negotiates the API version
//! with older engines. Images are never pulled: [`images`] builds them locally with
//! `conformance/images/build.sh` when they are missing. Every wait is bounded by a
//! deadline. Not here: what a scenario asserts.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use operator::render::RenderEnv;
use relay::RelayConfig;
use relay::config::{DeliveryConfig, ListenerConfig};

use crate::manifests::{CREDENTIALS, Manifests};
use crate::pki::Pem;

/// Runs `docker args…` and returns its standard output.
pub fn docker(args: &[&str]) -> io::Result<String> {
    docker_with_input(args, None)
}

fn docker_with_input(args: &[&str], input: Option<&str>) -> io::Result<String> {
    let mut child = Command::new("docker")
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(io::Error::other(format!(
            "docker {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// True when the Docker engine answers.
pub fn docker_available() -> bool {
    Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Prints the skip notice and returns true when Docker is not reachable.
pub fn skip_without_docker() -> bool {
    if docker_available() {
        return false;
    }
    println!("skipped: docker not available");
    true
}

/// Makes a directory tree readable by every user (containers run as their own users).
pub fn make_readable(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let meta = std::fs::metadata(&p)?;
        if meta.is_dir() {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))?;
            for entry in std::fs::read_dir(&p)? {
                stack.push(entry?.path());
            }
        } else {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644))?;
        }
    }
    Ok(())
}

/// Tags of the project's images.
#[derive(Clone, Debug)]
pub struct Images {
    pub postfix: String,
    pub dns: String,
    pub relay: String,
}

/// The project's images, built (or found in the build cache) once per test process.
pub fn images() -> io::Result<&'static Images> {
    static IMAGES: OnceLock<Result<Images, String>> = OnceLock::new();
    IMAGES
        .get_or_init(|| {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("images/build.sh");
            let mut cmd = Command::new("bash");
            // The release build inside must not see the variables cargo sets for this test
            // binary: they would make it rebuild the relay on every run.
            for (key, _) in std::env::vars_os() {
                let key = key.to_string_lossy().into_owned();
                if key.starts_with("CARGO_") && key != "CARGO_HOME" && key != "CARGO_TARGET_DIR" {
                    cmd.env_remove(&key);
                }
            }
            let out = cmd
                .arg(&script)
                .args(["postfix", "dns", "relay"])
                .stderr(Stdio::inherit())
                .output()
                .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
            if !out.status.success() {
                return Err(format!("{} failed", script.display()));
            }
            let text = String::from_utf8_lossy(&out.stdout);
            let get = |name: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(&format!("{name}=")))
                    .map(str::to_string)
                    .ok_or_else(|| format!("build.sh printed no {name}= line"))
            };
            Ok(Images {
                postfix: get("postfix")?,
                dns: get("dns")?,
                relay: get("relay")?,
            })
        })
        .as_ref()
        .map_err(|e| io::Error::other(e.clone()))
}

/// Polls `check` every 250 ms until it returns `Some` or `timeout` passes.
pub fn poll<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A running container; removed (with its anonymous volumes) when dropped.
#[derive(Debug)]
pub struct Container {
    pub name: String,
    pub ip4: Ipv4Addr,
    pub ip6: Ipv6Addr,
}

impl Container {
    /// Runs a command in the container.
    pub fn exec(&self, args: &[&str]) -> io::Result<String> {
        let mut all = vec!["exec", self.name.as_str()];
        all.extend_from_slice(args);
        docker(&all)
    }

    /// Runs a command with `input` on its standard input.
    pub fn exec_stdin(&self, args: &[&str], input: &str) -> io::Result<String> {
        let mut all = vec!["exec", "-i", self.name.as_str()];
        all.extend_from_slice(args);
        docker_with_input(&all, Some(input))
    }

    /// `docker kill`: the process dies without any chance to clean up.
    pub fn kill(&self) -> io::Result<()> {
        docker(&["kill", &self.name]).map(|_| ())
    }

    /// `docker stop`: the host goes away.
    pub fn stop(&self) -> io::Result<()> {
        docker(&["stop", "-t", "2", &self.name]).map(|_| ())
    }

    /// `docker start` after a stop or kill (same address, same filesystem).
    pub fn start(&self) -> io::Result<()> {
        docker(&["start", &self.name]).map(|_| ())
    }

    /// The container's log so far (stdout and stderr).
    pub fn logs(&self) -> String {
        Command::new("docker")
            .args(["logs", &self.name])
            .output()
            .map(|o| {
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                )
            })
            .unwrap_or_default()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", "-v", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A private dual-stack network; removed when dropped (after its containers).
#[derive(Debug)]
struct Network {
    name: String,
    /// Second and third octet of `10.a.b.0/24`, also the groups of `fd00:a:b::/64` (hex).
    a: u8,
    b: u8,
}

impl Drop for Network {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["network", "rm", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn random_u32() -> u32 {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    (nanos ^ std::process::id().rotate_left(16) ^ n.wrapping_mul(0x9E37_79B9))
        .wrapping_mul(2_654_435_761)
}

/// Role addresses inside a scenario network (last octet / last group).
pub mod host {
    pub const GATEWAY: u8 = 1;
    pub const RELAY: u8 = 10;
    pub const DNS: u8 = 11;
    /// Clients are `CLIENT + n`, servers `SERVER + n`.
    pub const CLIENT: u8 = 20;
    pub const SERVER: u8 = 40;
}

/// A Postfix client's configuration (`ROLE=client`).
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Relay address; an IPv6 address makes Postfix connect over IPv6.
    pub relay: IpAddr,
    pub port: u16,
    /// `none`, `may` or `encrypt`.
    pub tls_level: &'static str,
    pub sasl: Option<(String, String)>,
    /// HELO name.
    pub hostname: String,
}

/// One scenario: a network and the containers on it. Fields drop in order: containers
/// first, then the network, then the host directories mounted into them.
pub struct Scenario {
    containers: Vec<Container>,
    network: Network,
    dirs: Vec<tempfile::TempDir>,
    /// Short name used in container names.
    pub id: String,
}

impl Scenario {
    /// Creates the network `smtprelay-<label>-<random>` with `10.a.b.0/24` and
    /// `fd00:a:b::/64`, retrying with another subnet if one is taken.
    pub fn new(label: &str) -> io::Result<Self> {
        let mut last = None;
        for _ in 0..8 {
            let r = random_u32();
            let (a, b) = (100 + (r % 100) as u8, ((r >> 8) % 250) as u8 + 1);
            let id = format!("{label}-{:06x}", r & 0xff_ffff);
            let name = format!("smtprelay-{id}");
            match docker(&[
                "network",
                "create",
                "--ipv6",
                "--subnet",
                &format!("10.{a}.{b}.0/24"),
                "--subnet",
                &format!("fd00:{a:x}:{b:x}::/64"),
                &name,
            ]) {
                Ok(_) => {
                    return Ok(Self {
                        containers: Vec::new(),
                        network: Network { name, a, b },
                        dirs: Vec::new(),
                        id,
                    });
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("cannot create a network")))
    }

    /// The IPv4 address of host number `n` on this network.
    pub fn ip4(&self, n: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, self.network.a, self.network.b, n)
    }

    /// The IPv6 address of host number `n` on this network.
    pub fn ip6(&self, n: u8) -> Ipv6Addr {
        Ipv6Addr::new(
            0xfd00,
            u16::from(self.network.a),
            u16::from(self.network.b),
            0,
            0,
            0,
            0,
            u16::from(n),
        )
    }

    /// The network in CIDR form.
    pub fn subnet4(&self) -> String {
        format!("10.{}.{}.0/24", self.network.a, self.network.b)
    }

    /// A new directory to mount into containers; removed with the scenario.
    pub fn dir(&mut self) -> io::Result<PathBuf> {
        let d = tempfile::Builder::new().prefix("smtprelay-scn").tempdir()?;
        let path = d.path().to_path_buf();
        make_readable(&path)?;
        self.dirs.push(d);
        Ok(path)
    }

    /// Runs `image` as host `n` named `<role>-<id>`.
    pub fn run(
        &mut self,
        role: &str,
        n: u8,
        image: &str,
        env: &[(&str, String)],
        mounts: &[(&Path, &str)],
    ) -> io::Result<&Container> {
        let name = format!("{role}-{}", self.id);
        let ip4 = self.ip4(n);
        let ip6 = self.ip6(n);
        let mut args: Vec<String> = vec![
            "run".into(),
            "-d".into(),
            "--name".into(),
            name.clone(),
            "--hostname".into(),
            role.into(),
            "--network".into(),
            self.network.name.clone(),
            "--ip".into(),
            ip4.to_string(),
            "--ip6".into(),
            ip6.to_string(),
        ];
        for (k, v) in env {
            args.push("-e".into());
            args.push(format!("{k}={v}"));
        }
        for (host, path) in mounts {
            args.push("-v".into());
            args.push(format!("{}:{path}", host.display()));
        }
        args.push(image.into());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        // Register before running so a half-started container is removed too.
        self.containers.push(Container { name, ip4, ip6 });
        docker(&refs)?;
        self.containers
            .last()
            .ok_or_else(|| io::Error::other("no container"))
    }

    /// The container named `<role>-<id>`.
    pub fn get(&self, role: &str) -> &Container {
        let name = format!("{role}-{}", self.id);
        self.containers
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no container {name} in this scenario"))
    }

    /// A downstream Postfix server as host `n`, presenting `cert` with STARTTLS (without
    /// one it offers the image's default self-signed certificate).
    pub fn postfix_server(&mut self, role: &str, n: u8, cert: Option<&Pem>) -> io::Result<()> {
        let image = images()?.postfix.clone();
        let mut mounts = Vec::new();
        let dir;
        if let Some(cert) = cert {
            dir = self.dir()?;
            cert.write_to(&dir)?;
            mounts.push((dir.as_path(), "/certs"));
        }
        let env = [
            ("ROLE", "server".to_string()),
            ("MYHOSTNAME", format!("{role}.partner.test")),
        ];
        self.run(role, n, &image, &env, &mounts)?;
        wait_postfix(self.get(role))
    }

    /// A Postfix client as host `n` that relays everything through the relay.
    pub fn postfix_client(&mut self, role: &str, n: u8, opts: &ClientOptions) -> io::Result<()> {
        let image = images()?.postfix.clone();
        let relay = match opts.relay {
            IpAddr::V4(a) => a.to_string(),
            IpAddr::V6(a) => format!("ipv6:{a}"),
        };
        let mut env = vec![
            ("ROLE", "client".to_string()),
            ("RELAY_HOST", relay),
            ("RELAY_PORT", opts.port.to_string()),
            ("TLS_LEVEL", opts.tls_level.to_string()),
            ("MYHOSTNAME", opts.hostname.clone()),
            ("DOMAIN", "acme.example".to_string()),
        ];
        if let Some((user, password)) = &opts.sasl {
            env.push(("SASL_USER", user.clone()));
            env.push(("SASL_PASSWORD", password.clone()));
        }
        self.run(role, n, &image, &env, &[])?;
        wait_postfix(self.get(role))
    }

    /// The DNS server (dnsmasq) as host [`host::DNS`] with `records` as its configuration.
    pub fn dns(&mut self, records: &str) -> io::Result<SocketAddr> {
        let image = images()?.dns.clone();
        let dir = self.dir()?;
        std::fs::write(dir.join("scenario.conf"), records)?;
        make_readable(&dir)?;
        self.run(
            "dns",
            host::DNS,
            &image,
            &[],
            &[(dir.as_path(), "/etc/dnsmasq.d")],
        )?;
        Ok(SocketAddr::new(IpAddr::V4(self.ip4(host::DNS)), 53))
    }

    /// Starts the relay as host [`host::RELAY`] with the config rendered from `manifests`,
    /// its own certificate `tls` and the credentials file; returns a handle that can
    /// rewrite the config in place (hot reload).
    pub fn relay(
        &mut self,
        manifests: &Manifests,
        tls: Option<&Pem>,
        cas: &[(&str, &str)],
        delivery: DeliveryConfig,
    ) -> io::Result<RelayFiles> {
        let image = images()?.relay.clone();
        let root = self.dir()?;
        let files = RelayFiles {
            root: root.clone(),
            env: container_env(delivery),
        };
        std::fs::create_dir_all(root.join("config"))?;
        std::fs::create_dir_all(root.join("auth"))?;
        std::fs::write(root.join("auth/credentials"), CREDENTIALS)?;
        if let Some(tls) = tls {
            tls.write_to(&root.join("tls"))?;
        }
        for (secret, pem) in cas {
            let d = root.join("ca").join(secret);
            std::fs::create_dir_all(&d)?;
            std::fs::write(d.join("ca.crt"), pem)?;
        }
        files.write(manifests)?;
        make_readable(&root)?;
        self.run(
            "relay",
            host::RELAY,
            &image,
            &[],
            &[(root.as_path(), "/etc/smtprelay")],
        )?;
        let relay = self.get("relay");
        let started = poll(Duration::from_secs(20), || {
            relay.logs().contains("relay listening").then_some(())
        });
        if started.is_none() {
            return Err(io::Error::other(format!(
                "relay did not start:\n{}",
                relay.logs()
            )));
        }
        Ok(files)
    }
}

/// Where the relay container runs: dual-stack listeners on the pod ports and the pod's
/// mount points, with the scenario's delivery settings.
pub fn container_env(delivery: DeliveryConfig) -> RenderEnv {
    let any = |port| SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port);
    RenderEnv {
        listeners: ListenerConfig {
            smtp: any(2525),
            submission: any(5587),
            smtps: any(4465),
        },
        admin_listen: any(9090),
        delivery,
        ..RenderEnv::pod()
    }
}

/// Delivery settings for scenarios: quick retries and connect timeouts, host names of
/// downstream containers resolved through `overrides`.
pub fn quick_delivery(overrides: &[(&str, IpAddr)]) -> DeliveryConfig {
    DeliveryConfig {
        retry_schedule_seconds: vec![3],
        max_retry_delay_seconds: 5,
        connect_timeout_seconds: 5,
        connection_idle_seconds: 2,
        host_overrides: overrides
            .iter()
            .map(|(h, ip)| (h.to_string(), *ip))
            .collect::<BTreeMap<_, _>>(),
        ..DeliveryConfig::default()
    }
}

/// The relay container's mounted configuration directory.
pub struct RelayFiles {
    root: PathBuf,
    env: RenderEnv,
}

impl RelayFiles {
    /// Renders `manifests` and writes `config.json` in place; the relay notices within a
    /// second and reloads.
    pub fn write(&self, manifests: &Manifests) -> io::Result<RelayConfig> {
        let config = manifests.render(&self.env).map_err(io::Error::other)?;
        let path = self.root.join("config/config.json");
        std::fs::write(&path, config.to_json())?;
        make_readable(&self.root.join("config"))?;
        Ok(config)
    }
}

/// Waits until Postfix accepts local submissions (its pickup service exists).
pub fn wait_postfix(c: &Container) -> io::Result<()> {
    poll(Duration::from_secs(30), || {
        c.exec(&["test", "-S", "/var/spool/postfix/public/pickup"])
            .ok()
    })
    .map(|_| ())
    .ok_or_else(|| {
        io::Error::other(format!(
            "Postfix in {} did not start:\n{}",
            c.name,
            c.logs()
        ))
    })
}

/// Submits a message on a Postfix client with `sendmail -f from rcpts…`.
pub fn sendmail(client: &Container, from: &str, rcpts: &[&str], subject: &str) -> io::Result<()> {
    let text = format!(
        "From: <{from}>\nTo: {}\nSubject: {subject}\nMessage-ID: <{subject}@conformance.test>\n\nbody of {subject}\n",
        rcpts.join(", ")
    );
    let mut args = vec!["sendmail", "-f", from];
    args.extend_from_slice(rcpts);
    client.exec_stdin(&args, &text).map(|_| ())
}

/// The messages in a downstream server's maildir (`/var/mail/vhosts/sink/new`).
pub fn maildir(server: &Container) -> Vec<String> {
    const SEP: &str = "\n=====conformance-end-of-message=====\n";
    let script = format!(
        "for f in /var/mail/vhosts/sink/new/*; do [ -f \"$f\" ] && cat \"$f\" && printf '{}'; done; true",
        SEP.replace('\n', "\\n")
    );
    server
        .exec(&["sh", "-c", &script])
        .map(|out| {
            out.split(SEP)
                .filter(|m| !m.trim().is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// One queued recipient in a Postfix client's queue.
#[derive(Clone, Debug)]
pub struct Queued {
    pub sender: String,
    pub recipient: String,
    /// Why it waits (`... said: 450 4.2.1 ...`).
    pub delay_reason: String,
}

/// The Postfix client's queue, from `postqueue -j`.
pub fn queue(client: &Container) -> Vec<Queued> {
    let out = client.exec(&["postqueue", "-j"]).unwrap_or_default();
    let mut queued = Vec::new();
    for line in out.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let sender = v["sender"].as_str().unwrap_or("").to_string();
        for r in v["recipients"].as_array().into_iter().flatten() {
            queued.push(Queued {
                sender: sender.clone(),
                recipient: r["address"].as_str().unwrap_or("").to_string(),
                delay_reason: r["delay_reason"].as_str().unwrap_or("").to_string(),
            });
        }
    }
    queued
}

/// The local mailbox of user `sender` on a Postfix client (bounces land there).
pub fn mailbox(client: &Container) -> String {
    client
        .exec(&["sh", "-c", "cat /var/mail/sender 2>/dev/null; true"])
        .unwrap_or_default()
}

/// The value of `header` in a message (first occurrence).
pub fn header<'a>(message: &'a str, header: &str) -> Option<&'a str> {
    let prefix = format!("{}:", header.to_ascii_lowercase());
    message
        .lines()
        .take_while(|l| !l.is_empty())
        .find(|l| l.to_ascii_lowercase().starts_with(&prefix))
        .map(|l| l[prefix.len()..].trim())
}

/// `GET path` over plain HTTP/1.0 (the relay's admin endpoint); returns the body.
pub fn http_get(addr: SocketAddr, path: &str) -> io::Result<String> {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: relay\r\n\r\n")?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    Ok(text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default())
}

/// The value of the first sample whose metric name ends with `suffix` in Prometheus text.
pub fn metric(text: &str, suffix: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        let bare = name.split('{').next()?;
        bare.ends_with(suffix).then(|| value.parse().ok())?
    })
}
