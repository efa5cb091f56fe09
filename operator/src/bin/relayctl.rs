//! `relayctl`: the command line of the SmtpRelay project: print the CRDs and the install
//! manifests, validate and render manifests offline, explain and test their policy, review
//! changes between Git revisions, run a relay from manifests on this machine, administer a
//! relay's queue, and print shell completions.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use operator::manifests::render_set;
use operator::queue_admin::QueueAction;
use operator::render::RenderEnv;

#[derive(Parser)]
#[command(
    name = "relayctl",
    version = concat!(env!("CARGO_PKG_VERSION"), " (git ", env!("SMTPRELAY_GIT_REVISION"), ")"),
    about = "Manage SmtpRelay manifests: validate, render, explain, test, plan, run"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions, for `kubectl apply -f -`.
    Crds,
    /// Print everything a cluster needs (CRDs, namespace, RBAC, operator Deployment), for
    /// `kubectl apply --server-side -f -`.
    Install {
        /// Tag of the operator and relay images (as `images/build.sh` tags them).
        #[arg(long = "image", value_name = "TAG", default_value = operator::install::VERSION)]
        image: String,
    },
    /// Check manifests offline with the same rules as the API server.
    Validate {
        /// Files or directories of YAML manifests.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Print the RelayConfig the manifests render to (as the operator would put it in the ConfigMap).
    Render {
        /// Files or directories of YAML manifests.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Run a relay on this machine from manifests, reloading when they change.
    Run {
        /// Files or directories of YAML manifests (one Organization).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        #[command(flatten)]
        local: LocalArgs,
    },
    /// Probe each host of a MailRoute with the route's TLS checks, as delivery would.
    ///
    /// Exit code 0 when every host verifies, 1 otherwise.
    TestTls {
        /// Files or directories of YAML manifests.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Name of the MailRoute (`name` or `namespace/name`).
        #[arg(long)]
        route: String,
        /// DNS server for MX lookup (repeatable; default: the system's).
        #[arg(long = "nameserver")]
        nameservers: Vec<std::net::SocketAddr>,
    },
    /// A local SMTP server that accepts every message and prints it (a downstream for trials).
    Sink {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:2525")]
        listen: std::net::SocketAddr,
    },
    /// What the relay would answer to one session, and why.
    ///
    /// Prints each SmtpRelaySetting box by box (IP allow list, SMTP AUTH, TLS, sender),
    /// the replies to MAIL and each RCPT, any sender rewrite, and each recipient's route.
    ///
    /// Exit code 0: answered (accepted or refused); 2: invalid manifests or arguments.
    Explain {
        /// Files or directories of YAML manifests.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// The client's IP address.
        #[arg(long)]
        client_ip: std::net::IpAddr,
        /// HELO/EHLO name (default: the address literal of the client IP).
        #[arg(long)]
        helo: Option<String>,
        /// The client logs in as USER (its password is assumed right).
        #[arg(long, value_name = "USER")]
        auth: Option<String>,
        /// The client uses TLS (STARTTLS, or port 465).
        #[arg(long)]
        tls: bool,
        /// Envelope sender (`""` for the null sender).
        #[arg(long, value_name = "ADDR")]
        from: String,
        /// Envelope recipient (repeatable).
        #[arg(long = "to", value_name = "ADDR", required = true)]
        to: Vec<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = ExplainFormat::Text)]
        format: ExplainFormat,
    },
    /// Check the cases of the RelayExpectation documents among the manifests.
    ///
    /// Exit code 0: every case passed; 1: a case failed (a diff is printed); 2: invalid
    /// manifests, or no RelayExpectation found.
    Test {
        /// Files or directories of YAML manifests and expectation files.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// What changes in relay behaviour between two Git revisions of the manifests.
    ///
    /// RelayExpectation cases run at both revisions; a case whose outcome changes is listed.
    ///
    /// Exit code 0: no behavioural change; 1: changes; 2: invalid manifests or a Git error.
    Plan {
        /// The revision to compare from (for example `origin/main`).
        #[arg(long)]
        base: String,
        /// The revision to compare to; the working tree when omitted.
        #[arg(long)]
        head: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = PlanFormat::Text)]
        format: PlanFormat,
        /// Files or directories of manifests (default: the current directory).
        paths: Vec<PathBuf>,
    },
    /// Administer relay queues through their admin endpoint: list, show, hold, release,
    /// flush, delete.
    ///
    /// One endpoint: `relayctl run`'s (found in the state directory) unless `--url` names
    /// one. The token is read from `--token-file`, else from `SMTPRELAY_ADMIN_TOKEN`, else
    /// from `relayctl run`'s state directory.
    ///
    /// Every relay pod of a namespace: `-n NAMESPACE` (with `--context`, `--kubeconfig`)
    /// finds the pods through the Kubernetes API with your credentials, port-forwards to
    /// each pod's admin port and reads the token from the Secret the pods mount. `list`
    /// shows one table with a POD column; `show`, `hold`, `release` and `delete` act on the
    /// pod that holds the message; `flush` on every pod. Your RBAC needs, in the namespace:
    /// `list` pods, `get` secrets, `create` pods/portforward.
    ///
    /// Exit code 0: done; 1: the relay or the cluster refused, or could not be reached;
    /// 2: bad arguments.
    Queue {
        #[command(subcommand)]
        action: QueueAction,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Print the DNS TXT record that publishes a DKIM key's public half.
    ///
    /// Reads the PEM private key (the `private.key` of the Secret that
    /// `Organization.spec.dkim[].secretRef` names, e.g. `kubectl get secret NAME -o
    /// jsonpath='{.data.private\.key}' | base64 -d > key.pem`) and prints one zone-file line:
    /// `SELECTOR._domainkey.DOMAIN. IN TXT "v=DKIM1; k=rsa; p=..."`, the value split into
    /// strings of at most 255 bytes. Exit code 0: printed; 1: the key cannot be read.
    DkimRecord {
        /// PEM private key file (PKCS#8 `PRIVATE KEY`; PKCS#1 `RSA PRIVATE KEY` for RSA).
        #[arg(long)]
        key: PathBuf,
        /// The key's selector (`dkim[].selector`).
        #[arg(long)]
        selector: String,
        /// The signing domain (`dkim[].domain`).
        #[arg(long)]
        domain: String,
        /// `rsa-sha256` or `ed25519-sha256`; default: whichever the key is.
        #[arg(long)]
        algorithm: Option<String>,
    },
    /// Print a shell completion script (`source <(relayctl completions bash)`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// Which relay `relayctl queue` talks to, and how.
#[derive(clap::Args, Clone, Debug)]
struct AdminTarget {
    /// The relay's admin endpoint, `http://HOST:PORT` (default: the one `relayctl run`
    /// recorded in the state directory).
    #[arg(long = "url", alias = "admin", global = true, value_name = "URL")]
    url: Option<String>,
    /// File holding the admin token.
    #[arg(long, global = true, value_name = "PATH", conflicts_with = "namespace")]
    token_file: Option<PathBuf>,
    /// `relayctl run`'s state directory (for its admin address and token).
    #[arg(long, global = true, default_value = ".relayctl")]
    state_dir: PathBuf,
    /// Every relay pod of this namespace, through the Kubernetes API.
    #[arg(
        short = 'n',
        long,
        global = true,
        value_name = "NAMESPACE",
        conflicts_with = "url"
    )]
    namespace: Option<String>,
    /// Kubeconfig context (default: the current context).
    #[arg(long, global = true, value_name = "NAME", requires = "namespace")]
    context: Option<String>,
    /// Kubeconfig file (default: `KUBECONFIG`, then `~/.kube/config`).
    #[arg(long, global = true, value_name = "PATH", requires = "namespace")]
    kubeconfig: Option<PathBuf>,
    /// Only the relays of this Organization (when a namespace holds several).
    #[arg(
        long = "org",
        global = true,
        value_name = "NAME",
        requires = "namespace"
    )]
    organization: Option<String>,
    /// Only this relay pod.
    #[arg(long, global = true, value_name = "NAME", requires = "namespace")]
    pod: Option<String>,
    /// Print the relay's JSON answer instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

/// Where `relayctl run` listens and keeps its state.
#[derive(clap::Args, Clone, Debug)]
struct LocalArgs {
    /// Address the listeners bind to.
    #[arg(long, default_value = "127.0.0.1")]
    host: std::net::IpAddr,
    /// Plain SMTP (STARTTLS offered); port 25 in a pod.
    #[arg(long, default_value_t = 10025)]
    smtp_port: u16,
    /// Submission (STARTTLS offered); port 587 in a pod.
    #[arg(long, default_value_t = 10587)]
    submission_port: u16,
    /// Implicit TLS; port 465 in a pod.
    #[arg(long, default_value_t = 10465)]
    smtps_port: u16,
    /// HTTP port of /metrics, /healthz and /readyz.
    #[arg(long, default_value_t = 10090)]
    admin_port: u16,
    /// Spool, delivery state and files made from Secrets.
    #[arg(long, default_value = ".relayctl")]
    state_dir: PathBuf,
    /// DNS server for MX lookup (repeatable; default: the system's).
    #[arg(long = "nameserver")]
    nameservers: Vec<std::net::SocketAddr>,
}

impl LocalArgs {
    fn options(&self) -> operator::local::LocalOptions {
        operator::local::LocalOptions {
            host: self.host,
            smtp_port: self.smtp_port,
            submission_port: self.submission_port,
            smtps_port: self.smtps_port,
            admin_port: self.admin_port,
            state_dir: self.state_dir.clone(),
            nameservers: self.nameservers.clone(),
        }
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ExplainFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum PlanFormat {
    Text,
    Markdown,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Plan {
            base,
            head,
            format,
            paths,
        } => plan(&base, head.as_deref(), format, paths),
        Command::Explain {
            paths,
            client_ip,
            helo,
            auth,
            tls,
            from,
            to,
            format,
        } => explain(
            &paths,
            &operator::explain::Query {
                client_ip,
                helo,
                tls,
                auth,
                from,
                to,
            },
            format,
        ),
        Command::Test { paths } => test(&paths),
        Command::Queue { action, target } => runtime().block_on(queue(action, target)),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "relayctl",
                &mut std::io::stdout(),
            );
            ExitCode::SUCCESS
        }
        Command::DkimRecord {
            key,
            selector,
            domain,
            algorithm,
        } => dkim_record(&key, &selector, &domain, algorithm.as_deref()),
        Command::Run { paths, local } => runtime().block_on(run(paths, local.options())),
        Command::TestTls {
            paths,
            route,
            nameservers,
        } => runtime().block_on(test_tls(paths, &route, nameservers)),
        Command::Sink { listen } => runtime().block_on(sink(listen)),
        Command::Install { image } => install(&image),
        Command::Crds => match crds::crds_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: cannot serialize the CRDs: {e}");
                ExitCode::FAILURE
            }
        },
        // The CRDs first: a rule the API server would refuse for its cost is reported in
        // the API server's words, before any manifest is read.
        Command::Validate { .. } if crds::cel_cost::check_crds().is_err() => {
            let errors = crds::cel_cost::check_crds().err().unwrap_or_default();
            for e in &errors {
                eprintln!("{e}");
            }
            eprintln!("{} CEL cost error(s) in the CRDs", errors.len());
            ExitCode::FAILURE
        }
        Command::Validate { paths } => match crds::manifest::load_paths(&paths) {
            Ok(set) => {
                let cases: usize = set
                    .expectations
                    .iter()
                    .map(|x| x.object.spec.cases.len())
                    .sum();
                if cases > 0 {
                    println!(
                        "{} objects valid, {cases} expectation case(s) (check them with relayctl test)",
                        set.len()
                    );
                } else {
                    println!("{} objects valid", set.len());
                }
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{errors}");
                eprintln!("{} error(s)", errors.0.len());
                ExitCode::FAILURE
            }
        },
        Command::Render { paths } => {
            let set = match crds::manifest::load_paths(&paths) {
                Ok(set) => set,
                Err(errors) => {
                    eprintln!("{errors}");
                    return ExitCode::FAILURE;
                }
            };
            match render_set(&set, &RenderEnv::pod()) {
                Ok(rendered) => {
                    for f in &rendered.findings {
                        eprintln!("warning: {:?} {}: {}", f.kind, f.name, f.message);
                    }
                    println!("{}", rendered.config.to_json());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// `relayctl plan`: renders both revisions and prints the behavioural diff.
fn install(tag: &str) -> ExitCode {
    match operator::install::install_yaml(tag) {
        Ok(yaml) => {
            print!("{yaml}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: cannot serialize the install manifests: {e}");
            ExitCode::FAILURE
        }
    }
}

fn plan(base: &str, head: Option<&str>, format: PlanFormat, paths: Vec<PathBuf>) -> ExitCode {
    const INVALID: u8 = 2;
    let paths = if paths.is_empty() {
        vec![PathBuf::from(".")]
    } else {
        paths
    };
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let top = match operator::git::toplevel(&cwd) {
        Ok(top) => top,
        Err(e) => {
            eprintln!("error: relayctl plan needs a Git repository: {e}");
            return ExitCode::from(INVALID);
        }
    };
    // Paths as the repository names them, for `git ls-tree`.
    let repo_paths: Vec<String> = paths
        .iter()
        .map(|p| {
            let abs = std::fs::canonicalize(cwd.join(p)).unwrap_or_else(|_| cwd.join(p));
            let top = std::fs::canonicalize(&top).unwrap_or_else(|_| top.clone());
            let rel = abs
                .strip_prefix(&top)
                .map(|r| r.display().to_string())
                .unwrap_or_default();
            if rel.is_empty() { ".".to_string() } else { rel }
        })
        .collect();
    let load_rev = |rev: &str| -> Result<crds::manifest::ManifestSet, String> {
        let files =
            operator::git::yaml_files_at(&top, rev, &repo_paths).map_err(|e| e.to_string())?;
        crds::manifest::load_sources(&files)
            .map_err(|e| format!("manifests at {rev} are invalid:\n{e}"))
    };
    let base_set = match load_rev(base) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(INVALID);
        }
    };
    let head_set = match head {
        Some(rev) => load_rev(rev),
        None => crds::manifest::load_paths(&paths)
            .map_err(|e| format!("manifests in the working tree are invalid:\n{e}")),
    };
    let head_set = match head_set {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(INVALID);
        }
    };
    let env = RenderEnv::pod();
    let (b, h) = match (render_set(&base_set, &env), render_set(&head_set, &env)) {
        (Ok(b), Ok(h)) => (b, h),
        (Err(e), _) => {
            eprintln!("error: base {base} does not render: {e}");
            return ExitCode::from(INVALID);
        }
        (_, Err(e)) => {
            eprintln!(
                "error: head {} does not render: {e}",
                head.unwrap_or("(working tree)")
            );
            return ExitCode::from(INVALID);
        }
    };
    let mut changes = operator::plan::plan(&b.config, &h.config);
    changes.extend(operator::plan::secret_changes(&base_set, &head_set));
    // Expectation cases run as `relayctl test` runs them: Secrets the manifests reference
    // but do not hold (a cert-manager certificate) are assumed present, as on a cluster.
    let assuming =
        |set| operator::manifests::render_set_assuming_secrets(set, &env).map(|(r, _)| r.config);
    if let (Ok(bx), Ok(hx)) = (assuming(&base_set), assuming(&head_set)) {
        changes.extend(operator::expect::outcome_changes(
            (&bx, &base_set),
            (&hx, &head_set),
        ));
    }
    let out = match format {
        PlanFormat::Text => operator::plan::format::text(&changes),
        PlanFormat::Markdown => operator::plan::format::markdown(&changes),
        PlanFormat::Json => operator::plan::format::json(&changes),
    };
    print!("{out}");
    if changes.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Exit code of `explain` and `test` for manifests or arguments that cannot be used.
const INVALID_INPUT: u8 = 2;

/// Loads and renders manifests as the operator would, printing what is wrong.
fn load_rendered(
    paths: &[PathBuf],
) -> Result<(crds::manifest::ManifestSet, relay::config::RelayConfig), ExitCode> {
    let set = crds::manifest::load_paths(paths).map_err(|errors| {
        eprintln!("{errors}");
        eprintln!("{} error(s)", errors.0.len());
        ExitCode::from(INVALID_INPUT)
    })?;
    match operator::manifests::render_set_assuming_secrets(&set, &RenderEnv::pod()) {
        Ok((rendered, assumed)) => {
            print_findings(&rendered.findings);
            for name in assumed {
                eprintln!(
                    "note: Secret {name} is not among the manifests; assumed present, as on a cluster"
                );
            }
            Ok((set, rendered.config))
        }
        Err(e) => {
            eprintln!("error: {e}");
            Err(ExitCode::from(INVALID_INPUT))
        }
    }
}

/// `relayctl explain`: one hypothetical session, played through the relay's session.
fn explain(paths: &[PathBuf], query: &operator::explain::Query, format: ExplainFormat) -> ExitCode {
    let (set, config) = match load_rendered(paths) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let facts = operator::explain::ManifestFacts::of(&set);
    let e = operator::explain::explain(&config, &facts, query);
    match format {
        ExplainFormat::Text => print!("{}", operator::explain::text(&e)),
        ExplainFormat::Json => print!("{}", operator::explain::json(&e)),
    }
    ExitCode::SUCCESS
}

/// `relayctl test`: every RelayExpectation case against the manifests.
fn test(paths: &[PathBuf]) -> ExitCode {
    let (set, config) = match load_rendered(paths) {
        Ok(x) => x,
        Err(code) => return code,
    };
    if set.expectations.is_empty() {
        eprintln!(
            "error: no RelayExpectation found in {}: nothing to test",
            paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        return ExitCode::from(INVALID_INPUT);
    }
    let facts = operator::explain::ManifestFacts::of(&set);
    let results = operator::expect::evaluate(&config, &facts, &set.expectations);
    print!("{}", operator::expect::text(&results));
    if results.iter().all(|r| r.passed()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn runtime() -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    }
}

/// `relayctl queue`.
async fn queue(action: QueueAction, target: AdminTarget) -> ExitCode {
    use operator::queue_admin::{action_request, list_table, request, show_text};
    if let Some(namespace) = &target.namespace {
        let cluster = operator::queue_cluster::ClusterTarget {
            namespace: namespace.clone(),
            context: target.context.clone(),
            kubeconfig: target.kubeconfig.clone(),
            organization: target.organization.clone(),
            pod: target.pod.clone(),
            pod_timeout: None,
        };
        return queue_on_cluster(action, &cluster, target.json).await;
    }
    let local = operator::local::LocalOptions {
        state_dir: target.state_dir.clone(),
        ..Default::default()
    };
    let admin = match &target.url {
        Some(url) => url.clone(),
        None => match std::fs::read_to_string(local.admin_address_path()) {
            Ok(url) => url.trim().to_string(),
            Err(_) => {
                eprintln!(
                    "error: no --url or -n NAMESPACE given and no `relayctl run` admin address in {}",
                    local.admin_address_path().display()
                );
                return ExitCode::from(2);
            }
        },
    };
    let token = match (&target.token_file, std::env::var("SMTPRELAY_ADMIN_TOKEN")) {
        (Some(file), _) => std::fs::read_to_string(file)
            .map_err(|e| format!("cannot read {}: {e}", file.display())),
        (None, Ok(token)) => Ok(token),
        (None, Err(_)) => std::fs::read_to_string(local.admin_token_path()).map_err(|_| {
            format!(
                "no admin token: give --token-file or SMTPRELAY_ADMIN_TOKEN (no `relayctl run` token in {})",
                local.admin_token_path().display()
            )
        }),
    };
    let token = match token {
        Ok(t) => t.trim().to_string(),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let (method, path) = action_request(&action);
    let answer = match request(&admin, &token, method, &path).await {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if target.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&answer).unwrap_or_default()
        );
        return ExitCode::SUCCESS;
    }
    match &action {
        QueueAction::List => print!("{}", list_table(&answer)),
        QueueAction::Show { .. } => print!("{}", show_text(&answer)),
        QueueAction::Flush { .. } => println!(
            "{} message(s) due now (held messages stay held)",
            answer["flushed"]
        ),
        QueueAction::Hold { id } | QueueAction::Release { id } | QueueAction::Delete { id } => {
            println!("{id}: {}", answer["result"].as_str().unwrap_or("done"))
        }
    }
    ExitCode::SUCCESS
}

/// `relayctl queue -n NAMESPACE`: every relay pod of the namespace, through the API server.
async fn queue_on_cluster(
    action: QueueAction,
    target: &operator::queue_cluster::ClusterTarget,
    json: bool,
) -> ExitCode {
    let report = operator::queue_cluster::run(&action, target, json).await;
    for line in &report.notes {
        eprintln!("{line}");
    }
    print!("{}", report.output);
    ExitCode::from(report.exit_code)
}

fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

fn print_findings(findings: &[operator::render::Finding]) {
    for f in findings {
        eprintln!("warning: {:?} {}: {}", f.kind, f.name, f.message);
    }
}

/// Loads and prepares the manifests, printing what is wrong.
fn prepare(
    paths: &[PathBuf],
    opts: &operator::local::LocalOptions,
) -> Option<operator::local::LocalConfig> {
    let set = match crds::manifest::load_paths(paths) {
        Ok(set) => set,
        Err(errors) => {
            eprintln!("{errors}");
            return None;
        }
    };
    match opts.prepare(&set) {
        Ok(local) => Some(local),
        Err(e) => {
            eprintln!("error: {e}");
            None
        }
    }
}

/// `relayctl run`: the relay in this process, reloaded when the manifests change.
async fn run(paths: Vec<PathBuf>, opts: operator::local::LocalOptions) -> ExitCode {
    init_logs();
    // Taken before loading, so an edit made while the relay starts is noticed.
    let mut last = operator::local::snapshot(&paths);
    let Some(local) = prepare(&paths, &opts) else {
        return ExitCode::FAILURE;
    };
    print_findings(&local.findings);
    if let Some(name) = &local.self_signed_for {
        eprintln!(
            "note: the manifests have no TLS Secret (Organization spec.relay.tlsSecretRef); \
             STARTTLS and port {} use a self-signed certificate for {name} made for this run",
            opts.smtps_port
        );
    }
    let organization = local.config.organization.name.clone();
    let handle = match relay::start(local.config, relay::StartOptions::default()).await {
        Ok(h) => h,
        Err(e) => {
            eprintln!("error: cannot start the relay: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("relay for {organization} is running");
    println!("  smtp        {}   (STARTTLS)", handle.smtp_addr());
    println!("  submission  {}   (STARTTLS)", handle.submission_addr());
    println!("  smtps       {}   (implicit TLS)", handle.smtps_addr());
    println!("  metrics     http://{}/metrics", handle.admin_addr());
    println!(
        "  admin token {}   (relayctl queue reads it)",
        opts.admin_token_path().display()
    );
    if let Err(e) = opts.write_admin_address(handle.admin_addr()) {
        eprintln!("warning: relayctl queue will need --admin: {e}");
    }
    println!("  state       {}", opts.state_dir.display());
    println!(
        "configuration generation {} in force (hash {})",
        handle.generation(),
        short(&handle.content_hash())
    );
    println!(
        "watching {} for changes; Ctrl-C stops",
        paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );

    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: cannot watch for SIGTERM: {e}");
                return ExitCode::FAILURE;
            }
        };
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
            _ = tokio::time::sleep(std::time::Duration::from_millis(200)) => {}
        }
        let now = operator::local::snapshot(&paths);
        if now == last {
            continue;
        }
        last = now;
        let Some(local) = prepare(&paths, &opts) else {
            eprintln!(
                "the manifests changed but cannot be used; generation {} stays in force",
                handle.generation()
            );
            continue;
        };
        // The document or the Secrets it names (written by `prepare`): the content hash
        // covers both, so a deleted user or a rotated certificate is a change.
        let findings = local.findings.clone();
        match handle.reload_if_changed(local.config) {
            Ok(None) => println!("manifests changed; no behavioural change"),
            Ok(Some(reload)) => {
                print_findings(&findings);
                if reload.only_files {
                    println!(
                        "credentials changed (a Secret's content; the manifests' settings did not change)"
                    );
                }
                println!(
                    "configuration generation {} in force (hash {})",
                    reload.generation,
                    short(&handle.content_hash())
                );
            }
            Err(e) => eprintln!(
                "error: the new configuration was refused, the previous one stays in force: {e}"
            ),
        }
    }
    println!(
        "stopping: open sessions finish, queued mail stays in {}",
        opts.state_dir.display()
    );
    handle.shutdown().await;
    ExitCode::SUCCESS
}

fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

/// `relayctl test-tls`: probes each host of one route with its TLS policy.
async fn test_tls(
    paths: Vec<PathBuf>,
    route: &str,
    nameservers: Vec<std::net::SocketAddr>,
) -> ExitCode {
    let state = std::env::temp_dir().join(format!("relayctl-test-tls-{}", std::process::id()));
    let opts = operator::local::LocalOptions {
        state_dir: state.clone(),
        nameservers,
        ..Default::default()
    };
    let local = prepare(&paths, &opts);
    let code = match local {
        None => ExitCode::FAILURE,
        Some(local) => {
            let found = local
                .config
                .routes
                .iter()
                .find(|r| r.name == route || r.name.rsplit('/').next() == Some(route));
            match found {
                None => {
                    let names: Vec<&str> = local
                        .config
                        .routes
                        .iter()
                        .map(|r| r.name.as_str())
                        .collect();
                    eprintln!(
                        "error: no MailRoute {route}; the manifests have: {}",
                        names.join(", ")
                    );
                    ExitCode::FAILURE
                }
                Some(r) => {
                    println!("MailRoute {} ({})", r.name, r.description);
                    let probes =
                        relay::delivery::probe::probe_route(r, &local.config.delivery).await;
                    let mut all = !probes.is_empty();
                    for p in &probes {
                        all &= p.verified;
                        let verdict = if p.verified {
                            "verified"
                        } else {
                            "NOT VERIFIED"
                        };
                        println!("  {}:{}  {verdict}: {}", p.host, p.port, p.message);
                    }
                    if all {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                }
            }
        }
    };
    let _ = std::fs::remove_dir_all(&state);
    code
}

/// `relayctl sink`: accepts every message and prints its envelope and headers.
async fn sink(listen: std::net::SocketAddr) -> ExitCode {
    let sink = match relay::delivery::testing::TestSink::start_on(listen, Default::default()).await
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot listen on {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "sink listening on {}; every message is accepted and printed; Ctrl-C stops",
        sink.addr()
    );
    let mut shown = 0;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return ExitCode::SUCCESS,
            _ = tokio::time::sleep(std::time::Duration::from_millis(100)) => {}
        }
        let messages = sink.messages();
        for m in messages.iter().skip(shown) {
            let text = String::from_utf8_lossy(&m.data);
            let headers = text.split("\r\n\r\n").next().unwrap_or("");
            println!(
                "--- message {} from <{}> to {}{}",
                shown + 1,
                m.mail_from,
                m.rcpt_to
                    .iter()
                    .map(|r| format!("<{r}>"))
                    .collect::<Vec<_>>()
                    .join(", "),
                if m.tls { " (TLS)" } else { "" }
            );
            println!("{}\n", headers.replace("\r\n", "\n"));
            shown += 1;
        }
    }
}

/// `relayctl dkim-record`: the TXT record of a private key file.
fn dkim_record(
    key: &std::path::Path,
    selector: &str,
    domain: &str,
    algorithm: Option<&str>,
) -> ExitCode {
    use relay::config::DkimAlgorithm;
    let pem = match std::fs::read(key) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", key.display());
            return ExitCode::FAILURE;
        }
    };
    let algorithms = match algorithm {
        None => vec![DkimAlgorithm::RsaSha256, DkimAlgorithm::Ed25519Sha256],
        Some("rsa-sha256") => vec![DkimAlgorithm::RsaSha256],
        Some("ed25519-sha256") => vec![DkimAlgorithm::Ed25519Sha256],
        Some(other) => {
            eprintln!("error: unknown algorithm {other:?}: use rsa-sha256 or ed25519-sha256");
            return ExitCode::from(2);
        }
    };
    let mut errors = Vec::new();
    for a in algorithms {
        match relay::delivery::dkim::dns_record(&pem, a, selector, domain) {
            Ok(line) => {
                println!("{line}");
                return ExitCode::SUCCESS;
            }
            Err(e) => errors.push(format!("{}: {e}", a.as_str())),
        }
    }
    eprintln!(
        "error: {} is not a usable DKIM private key ({})",
        key.display(),
        errors.join("; ")
    );
    ExitCode::FAILURE
}
