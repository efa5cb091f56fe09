//! The container tier's harness, over testcontainers and the bollard client it re-exports.
//!
//! A [`Scenario`] owns one private dual-stack network with a random subnet and every
//! container started on it; dropping it (also when a test panics) removes the containers
//! and then the network. Containers get fixed addresses ([`Scenario::ip4`]), so manifests
//! can be written before anything starts. Its functions start the project's images in their
//! roles: Postfix clients and servers, dnsmasq, HAProxy in front of the relay, and the
//! relay with a config rendered from manifests and copied in, and read what a user would
//! look at: the sink's maildir, the client's queue (`postqueue -j`) and the sender's
//! mailbox.
//!
//! Containers are started, waited for (each role's ready line in its log), exec'd into,
//! read, stopped and removed through testcontainers. What testcontainers does not offer
//! (networks with chosen subnets and IPv6, fixed endpoint addresses, `kill`, copying into a
//! running container, listing by label) goes through [`testcontainers::bollard`] with the
//! client testcontainers itself uses. All of it runs on one tokio runtime owned by this
//! module, so tests stay plain `#[test]` functions. Every resource carries the label
//! [`LABEL`] with the scenario's id.
//!
//! Images are never pulled: [`images`] builds them locally with
//! `conformance/images/build.sh` when they are missing; the relay runs the production
//! image. Every wait is bounded by a
//! deadline. Not here: what a scenario asserts.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use operator::render::RenderEnv;
use relay::RelayConfig;
use relay::config::{DeliveryConfig, ListenerConfig};
use testcontainers::bollard::models::{
    EndpointIpamConfig, EndpointSettings, Ipam, IpamConfig, NetworkConnectRequest,
    NetworkCreateRequest, NetworkDisconnectRequest,
};
use testcontainers::bollard::query_parameters::{
    KillContainerOptions, ListContainersOptions, ListNetworksOptions, RemoveContainerOptions,
    UploadToContainerOptions,
};
use testcontainers::bollard::{self, Docker};
use testcontainers::core::logs::LogFrame;
use testcontainers::core::{ExecCommand, Mount, WaitFor, client::docker_client_instance};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};
use tokio::io::AsyncBufReadExt;

use crate::manifests::{CREDENTIALS, Manifests};
use crate::pki::Pem;

/// Label on every container and network of a scenario; its value is [`Scenario::id`].
pub const LABEL: &str = "dev.smtprelay.conformance.scenario";

/// The runtime every Docker call of the harness runs on (one per test process, so the
/// connection pool of the Docker client is never shared across runtimes).
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("conformance-docker")
            .enable_all()
            .build()
            .expect("cannot start the harness's tokio runtime")
    })
}

fn block_on<F: Future>(future: F) -> F::Output {
    runtime().block_on(future)
}

fn err(context: impl std::fmt::Display, e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("{context}: {e}"))
}

/// The bollard client testcontainers uses (same endpoint, settings and connection pool
/// while any of its containers is alive).
async fn client() -> io::Result<Docker> {
    docker_client_instance()
        .await
        .map_err(|e| err("cannot reach Docker", e))
}

/// True when the Docker engine answers.
pub fn docker_available() -> bool {
    block_on(async {
        match client().await {
            Ok(docker) => docker.ping().await.is_ok(),
            Err(_) => false,
        }
    })
}

/// Prints the skip notice and returns true when Docker is not reachable.
pub fn skip_without_docker() -> bool {
    if docker_available() {
        return false;
    }
    println!("skipped: docker not available");
    true
}

/// Tags of the project's images.
#[derive(Clone, Debug)]
pub struct Images {
    pub postfix: String,
    pub dns: String,
    pub haproxy: String,
    pub relay: String,
    /// rspamd and clamav-milter (`filter rspamd`, `filter clamav`).
    pub filters: String,
}

/// The project's images, built (or found in the build cache) once per test process.
///
/// `build.sh` stays a shell script over the docker CLI: it pipes a debootstrap tree into
/// `docker import` and runs the same `docker build` a developer would, and caches by content
/// hash; its `relay` is the production image of `images/build.sh` (no shell or mail tools
/// inside, so nothing is ever exec'd in the relay container). It runs once per test
/// process, never per scenario.
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
                .args(["postfix", "dns", "haproxy", "filters", "relay"])
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
                haproxy: get("haproxy")?,
                relay: get("relay")?,
                filters: get("filters")?,
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

/// The log line that says a role's process is ready, and where it appears.
#[derive(Clone, Copy, Debug)]
struct Ready {
    line: &'static str,
    on_stderr: bool,
    within: Duration,
}

impl Ready {
    /// Postfix's master has opened every service (port 25 and the pickup socket included)
    /// before it logs this.
    const POSTFIX: Ready = Ready {
        line: "daemon started",
        on_stderr: false,
        within: Duration::from_secs(30),
    };
    /// Printed by the relay binary once all listeners are bound.
    const RELAY: Ready = Ready {
        line: "relay listening",
        on_stderr: false,
        within: Duration::from_secs(20),
    };
    /// Printed by `relay --drain` once the spool is empty, just before it exits.
    const DRAINED: Ready = Ready {
        line: "drained handed_over=",
        on_stderr: false,
        within: Duration::from_secs(180),
    };
    /// dnsmasq logs this after binding port 53.
    const DNS: Ready = Ready {
        line: "started, version",
        on_stderr: true,
        within: Duration::from_secs(20),
    };

    /// HAProxy's master (`-W`) logs this once its worker has bound every frontend.
    const HAPROXY: Ready = Ready {
        line: "Loading success.",
        on_stderr: true,
        within: Duration::from_secs(20),
    };

    /// The filters image's entrypoint prints this once the milter port accepts
    /// connections (clamd loads its database first: some seconds).
    const FILTER: Ready = Ready {
        line: "filter ready",
        on_stderr: false,
        within: Duration::from_secs(120),
    };

    fn wait_for(self) -> WaitFor {
        if self.on_stderr {
            WaitFor::message_on_stderr(self.line)
        } else {
            WaitFor::message_on_stdout(self.line)
        }
    }
}

/// A running container; removed (with its anonymous volumes) when dropped.
pub struct Container {
    pub name: String,
    pub ip4: Ipv4Addr,
    pub ip6: Ipv6Addr,
    ready: Ready,
    /// `None` only while dropping.
    inner: Option<ContainerAsync<GenericImage>>,
}

impl std::fmt::Debug for Container {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Container")
            .field("name", &self.name)
            .field("ip4", &self.ip4)
            .field("ip6", &self.ip6)
            .finish()
    }
}

impl Container {
    fn inner(&self) -> io::Result<&ContainerAsync<GenericImage>> {
        self.inner
            .as_ref()
            .ok_or_else(|| io::Error::other(format!("{} is gone", self.name)))
    }

    /// Runs a command in the container and returns its standard output; a non-zero exit
    /// is an error carrying its standard error.
    pub fn exec(&self, args: &[&str]) -> io::Result<String> {
        self.exec_env(args, &[])
    }

    /// Runs a command with extra environment variables (how text is handed to a command
    /// without quoting it into a shell line).
    pub fn exec_env(&self, args: &[&str], env: &[(&str, &str)]) -> io::Result<String> {
        let what = || format!("exec {args:?} in {}", self.name);
        block_on(async {
            let cmd = ExecCommand::new(args.iter().copied()).with_env_vars(env.iter().copied());
            let mut result = self.inner()?.exec(cmd).await.map_err(|e| err(what(), e))?;
            let stdout = result.stdout_to_vec().await.map_err(|e| err(what(), e))?;
            let stderr = result.stderr_to_vec().await.map_err(|e| err(what(), e))?;
            // The output streams end when the process does; its exit code is then known
            // (or about to be: the daemon records it right after).
            let mut code = None;
            for _ in 0..50 {
                code = result.exit_code().await.map_err(|e| err(what(), e))?;
                if code.is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            match code {
                Some(0) => Ok(String::from_utf8_lossy(&stdout).into_owned()),
                code => Err(io::Error::other(format!(
                    "{} exited with {code:?}: {}",
                    what(),
                    String::from_utf8_lossy(&stderr).trim()
                ))),
            }
        })
    }

    /// SIGKILL: the process dies without any chance to clean up.
    pub fn kill(&self) -> io::Result<()> {
        block_on(async {
            let options = KillContainerOptions {
                signal: "KILL".into(),
            };
            client()
                .await?
                .kill_container(self.inner()?.id(), Some(options))
                .await
                .map_err(|e| err(format!("kill {}", self.name), e))
        })
    }

    /// Freezes every process of the container: its TCP connections stay open (the
    /// kernel still accepts them) but nothing answers.
    pub fn pause(&self) -> io::Result<()> {
        block_on(async {
            client()
                .await?
                .pause_container(self.inner()?.id())
                .await
                .map_err(|e| err(format!("pause {}", self.name), e))
        })
    }

    /// Undoes [`Container::pause`].
    pub fn unpause(&self) -> io::Result<()> {
        block_on(async {
            client()
                .await?
                .unpause_container(self.inner()?.id())
                .await
                .map_err(|e| err(format!("unpause {}", self.name), e))
        })
    }

    /// Stops the container (SIGTERM, SIGKILL after 2 s): the host goes away.
    pub fn stop(&self) -> io::Result<()> {
        block_on(async {
            self.inner()?
                .stop_with_timeout(Some(2))
                .await
                .map_err(|e| err(format!("stop {}", self.name), e))
        })
    }

    /// Starts the container again after a stop or kill (same address, same filesystem)
    /// and waits until its process has logged its ready line once more.
    pub fn start(&self) -> io::Result<()> {
        block_on(async {
            let inner = self.inner()?;
            let before = self.ready_lines().await?;
            inner
                .start()
                .await
                .map_err(|e| err(format!("start {}", self.name), e))?;
            self.wait_ready_lines(before + 1).await
        })
    }

    /// How often the ready line appears in the log so far.
    async fn ready_lines(&self) -> io::Result<usize> {
        let inner = self.inner()?;
        let text = if self.ready.on_stderr {
            inner.stderr_to_vec().await
        } else {
            inner.stdout_to_vec().await
        }
        .map_err(|e| err(format!("logs of {}", self.name), e))?;
        Ok(String::from_utf8_lossy(&text)
            .matches(self.ready.line)
            .count())
    }

    /// Follows the log until the ready line has appeared `times` times.
    async fn wait_ready_lines(&self, times: usize) -> io::Result<()> {
        let inner = self.inner()?;
        let mut log = if self.ready.on_stderr {
            inner.stderr(true)
        } else {
            inner.stdout(true)
        };
        let follow = async {
            let mut seen = 0;
            let mut line = String::new();
            while seen < times {
                line.clear();
                if log.read_line(&mut line).await? == 0 {
                    return Err(io::Error::other("the log ended"));
                }
                if line.contains(self.ready.line) {
                    seen += 1;
                }
            }
            Ok(())
        };
        match tokio::time::timeout(self.ready.within, follow).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(err(format!("{} did not get ready", self.name), e)),
            Err(_) => Err(io::Error::other(format!(
                "{} did not log {:?} within {:?}",
                self.name, self.ready.line, self.ready.within
            ))),
        }
    }

    /// The container's log so far (stdout, then stderr).
    pub fn logs(&self) -> String {
        block_on(async {
            let Ok(inner) = self.inner() else {
                return String::new();
            };
            let out = inner.stdout_to_vec().await.unwrap_or_default();
            let errs = inner.stderr_to_vec().await.unwrap_or_default();
            format!(
                "{}{}",
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(&errs)
            )
        })
    }

    /// Copies `data` into the running container as `dir/name` (mode 0644), replacing
    /// what is there.
    pub fn copy_in(&self, dir: &str, name: &str, data: &[u8]) -> io::Result<()> {
        let id = self.inner()?.id().to_string();
        block_on(upload(&id, dir, name, data))
    }
}

/// Copies `data` into container `container` (id or name) as `dir/name` (mode 0644).
async fn upload(container: &str, dir: &str, name: &str, data: &[u8]) -> io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    );
    header.set_cksum();
    let mut archive = tar::Builder::new(Vec::new());
    archive.append_data(&mut header, name, data)?;
    let archive = archive.into_inner()?;
    let options = UploadToContainerOptions {
        path: dir.into(),
        ..Default::default()
    };
    client()
        .await?
        .upload_to_container(container, Some(options), bollard::body_full(archive.into()))
        .await
        .map_err(|e| err(format!("copy {name} into {container}:{dir}"), e))
}

impl Drop for Container {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            // testcontainers removes the container in its own Drop, which needs a runtime.
            let _entered = runtime().enter();
            drop(inner);
        }
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

/// Role addresses inside a scenario network (last octet / last group). Addresses from
/// [`host::DYNAMIC`] up are left to Docker for a container's first moments (see
/// [`Scenario::run`]).
pub mod host {
    pub const GATEWAY: u8 = 1;
    pub const RELAY: u8 = 10;
    pub const DNS: u8 = 11;
    /// A load balancer (HAProxy) in front of the relay.
    pub const PROXY: u8 = 12;
    /// Clients are `CLIENT + n`, servers `SERVER + n`.
    pub const CLIENT: u8 = 20;
    pub const SERVER: u8 = 40;
    /// Content filters (rspamd, clamav-milter) are `FILTER + n`.
    pub const FILTER: u8 = 60;
    /// Start of the range Docker assigns from (`.128/25`).
    pub const DYNAMIC: u8 = 128;
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

/// Files a container gets before it starts: path inside the container and content.
type Files = Vec<(String, Vec<u8>)>;

/// One scenario: a network and the containers on it. Dropping it removes the containers,
/// then anything else carrying its label, then the network.
pub struct Scenario {
    containers: Vec<Container>,
    network: String,
    /// Second and third octet of `10.a.b.0/24`, also the groups of `fd00:a:b::/64` (hex).
    a: u8,
    b: u8,
    /// Short name used in container names and as the value of [`LABEL`].
    pub id: String,
}

impl Scenario {
    /// Creates the network `smtprelay-<label>-<random>` with `10.a.b.0/24` and
    /// `fd00:a:b::/64`, retrying with another subnet if one is taken.
    pub fn new(label: &str) -> io::Result<Self> {
        block_on(async {
            let docker = client().await?;
            let mut last = None;
            for _ in 0..8 {
                let r = random_u32();
                let (a, b) = (100 + (r % 100) as u8, ((r >> 8) % 250) as u8 + 1);
                let id = format!("{label}-{:06x}", r & 0xff_ffff);
                let network = format!("smtprelay-{id}");
                let pool = |subnet: String, ip_range: String| IpamConfig {
                    subnet: Some(subnet),
                    ip_range: Some(ip_range),
                    ..Default::default()
                };
                let request = NetworkCreateRequest {
                    name: network.clone(),
                    driver: Some("bridge".into()),
                    enable_ipv6: Some(true),
                    ipam: Some(Ipam {
                        config: Some(vec![
                            pool(
                                format!("10.{a}.{b}.0/24"),
                                format!("10.{a}.{b}.{}/25", host::DYNAMIC),
                            ),
                            pool(
                                format!("fd00:{a:x}:{b:x}::/64"),
                                format!("fd00:{a:x}:{b:x}::{:x}/121", host::DYNAMIC),
                            ),
                        ]),
                        ..Default::default()
                    }),
                    labels: Some(HashMap::from([(LABEL.to_string(), id.clone())])),
                    ..Default::default()
                };
                match docker.create_network(request).await {
                    Ok(_) => {
                        return Ok(Self {
                            containers: Vec::new(),
                            network,
                            a,
                            b,
                            id,
                        });
                    }
                    Err(e) => last = Some(err(format!("create network {network}"), e)),
                }
            }
            Err(last.unwrap_or_else(|| io::Error::other("cannot create a network")))
        })
    }

    /// The IPv4 address of host number `n` on this network.
    pub fn ip4(&self, n: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, self.a, self.b, n)
    }

    /// The IPv6 address of host number `n` on this network.
    pub fn ip6(&self, n: u8) -> Ipv6Addr {
        Ipv6Addr::new(
            0xfd00,
            u16::from(self.a),
            u16::from(self.b),
            0,
            0,
            0,
            0,
            u16::from(n),
        )
    }

    /// The network in CIDR form.
    pub fn subnet4(&self) -> String {
        format!("10.{}.{}.0/24", self.a, self.b)
    }

    /// Runs `image` as host `n` named `<role>-<id>` with `files` copied in, waits for its
    /// ready line, then moves it to its fixed addresses.
    ///
    /// testcontainers cannot give a container fixed addresses at creation, so it starts
    /// with one Docker picks from the upper half of the subnet (no scenario host lives
    /// there) and is then reconnected with the fixed ones through bollard. Services bind
    /// wildcard addresses, and nothing talks to a container before this returns.
    fn run(
        &mut self,
        role: &str,
        n: u8,
        image: &str,
        env: &[(&str, String)],
        files: Files,
        ready: Ready,
    ) -> io::Result<&Container> {
        self.run_full(role, n, image, env, files, ready, &[], None)
    }

    /// [`Scenario::run`] with named volumes (`(volume, path)`) mounted and the image's
    /// command replaced by `cmd`.
    #[allow(clippy::too_many_arguments)]
    fn run_full(
        &mut self,
        role: &str,
        n: u8,
        image: &str,
        env: &[(&str, String)],
        files: Files,
        ready: Ready,
        volumes: &[(String, String)],
        cmd: Option<&[String]>,
    ) -> io::Result<&Container> {
        if n >= host::DYNAMIC {
            return Err(io::Error::other(format!(
                "host {n} lies in the dynamic range (from {})",
                host::DYNAMIC
            )));
        }
        let name = format!("{role}-{}", self.id);
        let (repo, tag) = image
            .rsplit_once(':')
            .ok_or_else(|| io::Error::other(format!("image {image} has no tag")))?;
        let early_log = Arc::new(Mutex::new(Vec::<u8>::new()));
        let consumer = {
            let early_log = early_log.clone();
            move |frame: &LogFrame| {
                if let Ok(mut log) = early_log.lock() {
                    log.extend_from_slice(frame.bytes());
                }
            }
        };
        let mut request = GenericImage::new(repo, tag)
            .with_wait_for(ready.wait_for())
            .with_container_name(&name)
            .with_hostname(role)
            .with_network(&self.network)
            .with_label(LABEL, &self.id)
            .with_startup_timeout(ready.within)
            .with_log_consumer(consumer)
            // Nothing outside the scenario network needs to reach a container.
            .with_host_config_modifier(|config| config.publish_all_ports = Some(false));
        for (k, v) in env {
            request = request.with_env_var(*k, v);
        }
        for (path, data) in files {
            request = request.with_copy_to(path, data);
        }
        for (volume, path) in volumes {
            request = request.with_mount(Mount::volume_mount(volume.as_str(), path.as_str()));
        }
        if let Some(cmd) = cmd {
            request = request.with_cmd(cmd.iter().cloned());
        }
        let ip4 = self.ip4(n);
        let ip6 = self.ip6(n);
        let network = self.network.clone();
        let started = block_on(async {
            let inner = request.start().await.map_err(|e| {
                let log = early_log.lock().map(|l| l.clone()).unwrap_or_default();
                io::Error::other(format!(
                    "{name} did not start: {e}\n{}",
                    String::from_utf8_lossy(&log)
                ))
            })?;
            let container = Container {
                name: name.clone(),
                ip4,
                ip6,
                ready,
                inner: Some(inner),
            };
            readdress(&network, &container).await?;
            Ok::<_, io::Error>(container)
        });
        match started {
            Ok(container) => {
                self.containers.push(container);
                self.containers
                    .last()
                    .ok_or_else(|| io::Error::other("no container"))
            }
            Err(e) => {
                // A container created but never handed over (failed copy or start) is not
                // testcontainers' to remove.
                block_on(remove_container(&name));
                Err(e)
            }
        }
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
        self.postfix_server_env(role, n, cert, &[])
    }

    /// [`Scenario::postfix_server`] with more environment for the image's entrypoint
    /// (`SMTPUTF8=yes`, ...).
    pub fn postfix_server_env(
        &mut self,
        role: &str,
        n: u8,
        cert: Option<&Pem>,
        extra_env: &[(&'static str, String)],
    ) -> io::Result<()> {
        let image = images()?.postfix.clone();
        let mut files = Files::new();
        if let Some(cert) = cert {
            files.push(("/certs/tls.crt".into(), cert.cert_pem.clone().into_bytes()));
            files.push(("/certs/tls.key".into(), cert.key_pem.clone().into_bytes()));
        }
        let mut env = vec![
            ("ROLE", "server".to_string()),
            ("MYHOSTNAME", format!("{role}.partner.test")),
        ];
        env.extend_from_slice(extra_env);
        self.run(role, n, &image, &env, files, Ready::POSTFIX)
            .map(|_| ())
    }

    /// A Postfix client as host `n` that relays everything through the relay.
    pub fn postfix_client(&mut self, role: &str, n: u8, opts: &ClientOptions) -> io::Result<()> {
        self.postfix_client_env(role, n, opts, &[])
    }

    /// [`Scenario::postfix_client`] with more environment for the image's entrypoint.
    pub fn postfix_client_env(
        &mut self,
        role: &str,
        n: u8,
        opts: &ClientOptions,
        extra_env: &[(&'static str, String)],
    ) -> io::Result<()> {
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
        env.extend_from_slice(extra_env);
        self.run(role, n, &image, &env, Files::new(), Ready::POSTFIX)
            .map(|_| ())
    }

    /// The DNS server (dnsmasq) as host [`host::DNS`] with `records` as its configuration.
    pub fn dns(&mut self, records: &str) -> io::Result<SocketAddr> {
        let image = images()?.dns.clone();
        let files = vec![(
            "/etc/dnsmasq.d/scenario.conf".to_string(),
            records.as_bytes().to_vec(),
        )];
        self.run("dns", host::DNS, &image, &[], files, Ready::DNS)?;
        Ok(SocketAddr::new(IpAddr::V4(self.ip4(host::DNS)), 53))
    }

    /// A content filter as host `n`: `rspamd` (milter on port 11332) or `clamav`
    /// (clamav-milter on port 7357, clamd knowing only the EICAR test signature).
    pub fn content_filter(&mut self, role: &str, n: u8, which: &str) -> io::Result<&Container> {
        let image = images()?.filters.clone();
        let cmd = [which.to_string()];
        self.run_full(
            role,
            n,
            &image,
            &[],
            Files::new(),
            Ready::FILTER,
            &[],
            Some(&cmd),
        )
    }

    /// HAProxy as host `n` with `config` as its `haproxy.cfg`.
    pub fn haproxy(&mut self, role: &str, n: u8, config: &str) -> io::Result<&Container> {
        let image = images()?.haproxy.clone();
        let files = vec![(
            "/etc/haproxy/haproxy.cfg".to_string(),
            config.as_bytes().to_vec(),
        )];
        self.run(role, n, &image, &[], files, Ready::HAPROXY)
    }

    /// Starts the relay as host [`host::RELAY`] with the config rendered from `manifests`,
    /// its own certificate `tls`, the credentials file and the CA roots copied in under
    /// `/etc/smtprelay`; returns a handle that can rewrite the config in place (hot
    /// reload).
    pub fn relay(
        &mut self,
        manifests: &Manifests,
        tls: Option<&Pem>,
        cas: &[(&str, &str)],
        delivery: DeliveryConfig,
    ) -> io::Result<RelayFiles> {
        self.relay_on("relay", host::RELAY, manifests, tls, cas, delivery, None)
    }

    /// [`Scenario::relay`] with the Secrets of routes' `auth` mounted as the operator
    /// mounts them: for each `(secret, username, password)`, the files `username` and
    /// `password` in `<route-auth dir>/<secret>/`, the paths the rendered config names.
    pub fn relay_with_route_auth(
        &mut self,
        manifests: &Manifests,
        tls: Option<&Pem>,
        cas: &[(&str, &str)],
        route_auth: &[(&str, &str, &str)],
        delivery: DeliveryConfig,
    ) -> io::Result<RelayFiles> {
        let dir = container_env(DeliveryConfig::default()).route_auth_dir();
        let mut extra = Files::new();
        for (secret, username, password) in route_auth {
            extra.push((
                format!("{dir}/{secret}/username"),
                username.as_bytes().to_vec(),
            ));
            extra.push((
                format!("{dir}/{secret}/password"),
                password.as_bytes().to_vec(),
            ));
        }
        self.relay_with_files(manifests, tls, cas, &extra, delivery)
    }

    /// [`Scenario::relay`] with `extra` files copied in as well, each `(path, content)`
    /// (e.g. DKIM keys at [`RenderEnv::dkim_key_file`]).
    pub fn relay_with_files(
        &mut self,
        manifests: &Manifests,
        tls: Option<&Pem>,
        cas: &[(&str, &str)],
        extra: &[(String, Vec<u8>)],
        delivery: DeliveryConfig,
    ) -> io::Result<RelayFiles> {
        self.relay_full(
            "relay",
            host::RELAY,
            manifests,
            tls,
            cas,
            delivery,
            None,
            extra.to_vec(),
        )
    }

    /// [`Scenario::relay`] as host `n` named `<role>-<id>`, with its spool on the named
    /// volume `spool` (from [`Scenario::volume`]) when given, and the admin token
    /// [`ADMIN_TOKEN`] at the path the config names. A relay that finds mail on its spool
    /// starts delivering before it is moved to its fixed address, and a session opened
    /// from the first address dies with the move: keep its downstream stopped until this
    /// returns.
    #[allow(clippy::too_many_arguments)]
    pub fn relay_on(
        &mut self,
        role: &str,
        n: u8,
        manifests: &Manifests,
        tls: Option<&Pem>,
        cas: &[(&str, &str)],
        delivery: DeliveryConfig,
        spool: Option<&str>,
    ) -> io::Result<RelayFiles> {
        self.relay_full(role, n, manifests, tls, cas, delivery, spool, Files::new())
    }

    /// [`Scenario::relay_on`] with `extra` files copied in as well.
    #[allow(clippy::too_many_arguments)]
    fn relay_full(
        &mut self,
        role: &str,
        n: u8,
        manifests: &Manifests,
        tls: Option<&Pem>,
        cas: &[(&str, &str)],
        delivery: DeliveryConfig,
        spool: Option<&str>,
        extra: Files,
    ) -> io::Result<RelayFiles> {
        let image = images()?.relay.clone();
        let env = container_env(delivery);
        let config = manifests.render(&env).map_err(io::Error::other)?;
        let mut files = vec![
            (
                format!("{}/{}", RelayFiles::CONFIG_DIR, RelayFiles::CONFIG_FILE),
                config.to_json().into_bytes(),
            ),
            (
                "/etc/smtprelay/auth/credentials".to_string(),
                CREDENTIALS.as_bytes().to_vec(),
            ),
        ];
        if let Some(tls) = tls {
            files.push((
                "/etc/smtprelay/tls/tls.crt".into(),
                tls.cert_pem.clone().into_bytes(),
            ));
            files.push((
                "/etc/smtprelay/tls/tls.key".into(),
                tls.key_pem.clone().into_bytes(),
            ));
        }
        for (secret, pem) in cas {
            files.push((
                format!("/etc/smtprelay/ca/{secret}/ca.crt"),
                pem.as_bytes().to_vec(),
            ));
        }
        files.push((env.admin_token_file(), ADMIN_TOKEN.as_bytes().to_vec()));
        files.extend(extra);
        let id = self.id.clone();
        let volumes: Vec<(String, String)> = spool
            .map(|v| (v.to_string(), env.spool_dir.clone()))
            .into_iter()
            .collect();
        self.run_full(role, n, &image, &[], files, Ready::RELAY, &volumes, None)?;
        Ok(RelayFiles {
            container: format!("{role}-{id}"),
            env,
        })
    }

    /// A named volume of this scenario (removed with it); its name.
    pub fn volume(&mut self, name: &str) -> io::Result<String> {
        let volume = format!("{name}-{}", self.id);
        let id = self.id.clone();
        block_on(async {
            let docker = client().await?;
            docker
                .create_volume(bollard::models::VolumeCreateRequest {
                    name: Some(volume.clone()),
                    labels: Some(HashMap::from([(LABEL.to_string(), id)])),
                    ..Default::default()
                })
                .await
                .map_err(|e| err(format!("create volume {volume}"), e))
        })?;
        Ok(volume)
    }

    /// Stops and removes the container of `role` (its named volumes stay).
    pub fn remove(&mut self, role: &str) {
        let name = format!("{role}-{}", self.id);
        let _entered = runtime().enter();
        self.containers.retain(|c| c.name != name);
    }

    /// Runs the relay image in drain mode as host `n` on the spool volume `spool`, with
    /// the config rendered from `manifests`: it hands every queued message over to the
    /// relays at `targets` (their admin endpoints), or delivers them itself when there is
    /// none, and exits once the spool is empty. Returns its log (ending in `drained …`).
    pub fn drain(
        &mut self,
        role: &str,
        n: u8,
        manifests: &Manifests,
        delivery: DeliveryConfig,
        spool: &str,
        targets: &[SocketAddr],
    ) -> io::Result<String> {
        let image = images()?.relay.clone();
        let env = container_env(delivery);
        let config = manifests.render(&env).map_err(io::Error::other)?;
        let config_path = format!("{}/{}", RelayFiles::CONFIG_DIR, RelayFiles::CONFIG_FILE);
        let files = vec![
            (config_path.clone(), config.to_json().into_bytes()),
            (env.admin_token_file(), ADMIN_TOKEN.as_bytes().to_vec()),
        ];
        // The image's entrypoint is `relay`: these are its arguments.
        let mut cmd = vec!["--config".to_string(), config_path, "--drain".into()];
        for t in targets {
            cmd.extend(["--drain-to".to_string(), format!("http://{t}")]);
        }
        let volumes = [(spool.to_string(), env.spool_dir.clone())];
        let container = self.run_full(
            role,
            n,
            &image,
            &[],
            files,
            Ready::DRAINED,
            &volumes,
            Some(&cmd),
        )?;
        Ok(container.logs())
    }
}

/// The queue administration token every scenario relay has (queue operations, drains).
pub const ADMIN_TOKEN: &str = "conformance-admin-token";

impl Drop for Scenario {
    fn drop(&mut self) {
        {
            let _entered = runtime().enter();
            self.containers.clear();
        }
        block_on(async {
            // Whatever carries the label and is still there (a container whose start
            // failed half-way) goes too, then the network.
            if let Ok((containers, _)) = labelled(&self.id).await {
                for name in containers {
                    remove_container(&name).await;
                }
            }
            if let Ok(docker) = client().await {
                let _ = docker.remove_network(&self.network).await;
                let filters =
                    HashMap::from([("label".to_string(), vec![format!("{LABEL}={}", self.id)])]);
                if let Ok(list) = docker
                    .list_volumes(Some(bollard::query_parameters::ListVolumesOptions {
                        filters: Some(filters),
                    }))
                    .await
                {
                    for v in list.volumes.into_iter().flatten() {
                        let _ = docker
                            .remove_volume(
                                &v.name,
                                None::<bollard::query_parameters::RemoveVolumeOptions>,
                            )
                            .await;
                    }
                }
            }
        });
    }
}

/// Moves `container` from the address Docker gave it to its fixed ones.
async fn readdress(network: &str, container: &Container) -> io::Result<()> {
    let docker = client().await?;
    let id = container
        .inner
        .as_ref()
        .map(|c| c.id().to_string())
        .unwrap_or_default();
    let what = |e| err(format!("address {} on {network}", container.name), e);
    docker
        .disconnect_network(
            network,
            NetworkDisconnectRequest {
                container: id.clone(),
                force: Some(true),
            },
        )
        .await
        .map_err(what)?;
    docker
        .connect_network(
            network,
            NetworkConnectRequest {
                container: id,
                endpoint_config: Some(EndpointSettings {
                    ipam_config: Some(EndpointIpamConfig {
                        ipv4_address: Some(container.ip4.to_string()),
                        ipv6_address: Some(container.ip6.to_string()),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            },
        )
        .await
        .map_err(what)
}

async fn remove_container(name: &str) {
    if let Ok(docker) = client().await {
        let options = RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        let _ = docker.remove_container(name, Some(options)).await;
    }
}

/// Names of the containers (running or not) and networks labelled with scenario `id`.
async fn labelled(id: &str) -> io::Result<(Vec<String>, Vec<String>)> {
    let docker = client().await?;
    let filters = HashMap::from([("label".to_string(), vec![format!("{LABEL}={id}")])]);
    let containers = docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filters.clone()),
            ..Default::default()
        }))
        .await
        .map_err(|e| err("list containers", e))?;
    let networks = docker
        .list_networks(Some(ListNetworksOptions {
            filters: Some(filters),
        }))
        .await
        .map_err(|e| err("list networks", e))?;
    Ok((
        containers
            .into_iter()
            .flat_map(|c| c.names.unwrap_or_default())
            .map(|n| n.trim_start_matches('/').to_string())
            .collect(),
        networks.into_iter().filter_map(|n| n.name).collect(),
    ))
}

/// Names of the containers and networks that still carry [`LABEL`]`=id`.
pub fn leftovers(id: &str) -> io::Result<(Vec<String>, Vec<String>)> {
    block_on(labelled(id))
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

/// The relay container's configuration: which container, and how its config is rendered.
pub struct RelayFiles {
    container: String,
    env: RenderEnv,
}

impl RelayFiles {
    const CONFIG_DIR: &str = "/etc/smtprelay/config";
    const CONFIG_FILE: &str = "config.json";

    /// Renders `manifests` and copies `config.json` into the relay container in place;
    /// the relay notices within a second and reloads.
    pub fn write(&self, manifests: &Manifests) -> io::Result<RelayConfig> {
        let config = manifests.render(&self.env).map_err(io::Error::other)?;
        block_on(upload(
            &self.container,
            Self::CONFIG_DIR,
            Self::CONFIG_FILE,
            config.to_json().as_bytes(),
        ))?;
        Ok(config)
    }
}

/// Submits a message on a Postfix client with `sendmail -f from rcpts…`.
pub fn sendmail(client: &Container, from: &str, rcpts: &[&str], subject: &str) -> io::Result<()> {
    let text = format!(
        "From: <{from}>\nTo: {}\nSubject: {subject}\nMessage-ID: <{subject}@conformance.test>\n\nbody of {subject}\n",
        rcpts.join(", ")
    );
    sendmail_text(client, from, rcpts, &text)
}

/// Submits `text` (a whole message, LF line ends) on a Postfix client with
/// `sendmail -f from rcpts…`.
pub fn sendmail_text(client: &Container, from: &str, rcpts: &[&str], text: &str) -> io::Result<()> {
    // The message travels in the environment: the exec API has no standard input here.
    let mut args = vec![
        "sh",
        "-c",
        "printf '%s' \"$MESSAGE\" | sendmail -f \"$0\" \"$@\"",
        from,
    ];
    args.extend_from_slice(rcpts);
    client.exec_env(&args, &[("MESSAGE", text)]).map(|_| ())
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
