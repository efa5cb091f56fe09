//! `relayctl`: the command line of the SmtpRelay project: print the CRDs and the install
//! manifests, validate and render manifests offline, explain and test their policy, review
//! changes between Git revisions, run a relay from manifests on this machine, administer a
//! relay's queue, print a DKIM key's DNS record, shell completions and man pages.
//!
//! One grammar for every command ([`operator::output`]): `-o/--output text|json|yaml`
//! (`markdown` too for `plan` and `explain`) wherever a result is printed; exit 0 done, 1
//! the answer is no, 2 invalid input; objects of other API groups in a manifest folder are
//! skipped with a note unless `--strict`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use crds::manifest::{LoadOptions, ManifestErrors, ManifestSet};
use operator::manifests::render_set;
use operator::output::{
    self, DONE, Format, INVALID, NO, ObjectsFormat, ReviewFormat, note_deprecated, warn_findings,
};
use operator::plan::FailOn;
use operator::queue_admin::QueueAction;
use operator::render::RenderEnv;
use serde::Serialize;

#[derive(Parser)]
#[command(
    name = "relayctl",
    version = concat!(env!("CARGO_PKG_VERSION"), " (git ", env!("SMTPRELAY_GIT_REVISION"), ")"),
    about = "Manage SmtpRelay manifests: validate, render, explain, test, plan, run",
    after_help = CLI_HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

const CLI_HELP: &str = "Every command that prints a result takes -o/--output: text, json or yaml
(plan and explain also markdown); stdout holds only the result.

Exit status, for every command (each one's --help says when):
  0  done
  1  the answer is no: a case failed, a host did not verify, a plan --fail-on gate
     tripped, the relay refused
  2  invalid input: arguments, manifests, key files

Objects of other API groups among the manifests (a Namespace, a SealedSecret, a
kustomization.yaml) are skipped with a note on stderr; --strict refuses them.";
const VALIDATE_HELP: &str = "Exit status:
  0  every object is valid
  2  invalid manifests or arguments (every problem is listed; -o json|yaml prints them as
     the result too)";
const RENDER_HELP: &str = "Output: -o json (the default) or yaml prints the RelayConfig \
document; -o text a summary.

Exit status:
  0  rendered (findings are warnings on stderr)
  2  invalid manifests or arguments, or the objects do not render";
const RUN_HELP: &str = "Exit status:
  0  stopped by Ctrl-C or SIGTERM
  1  the relay could not start
  2  invalid manifests or arguments";
const TEST_TLS_HELP: &str = "Exit status:
  0  every host verified
  1  a host did not verify
  2  invalid manifests or arguments, or no such MailRoute";
const EXPLAIN_HELP: &str = "Exit status:
  0  answered (accepted or refused)
  2  invalid manifests or arguments";
const TEST_HELP: &str = "Exit status:
  0  every case passed
  1  a case failed (a diff is printed)
  2  invalid manifests or arguments, or no RelayExpectation found";
const PLAN_HELP: &str = "Exit status:
  0  the plan is printed (and no --fail-on gate tripped)
  1  a --fail-on gate tripped: `change` any behavioural change, `warning` a loosened
     policy or a failing expectation, `breaking` a RelayExpectation case that passed at
     the base and fails at the head
  2  invalid manifests or arguments, or a Git error";
const QUEUE_HELP: &str = "Exit status:
  0  done
  1  the relay or the cluster refused, or could not be reached (with -n: also when only
     some pods answered; their answers are printed)
  2  invalid arguments, or no admin address or token, or an unusable kubeconfig/context";
const DKIM_HELP: &str = "Exit status:
  0  printed
  2  the key cannot be read or is not a usable key of the algorithm (an RSA key needs 2048
     to 8192 bits)";
const OBJECTS_HELP: &str = "Exit status:
  0  printed
  1  the objects could not be written";
const MAN_HELP: &str = "Exit status:
  0  written
  1  a page could not be written";

#[derive(Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions, for `kubectl apply -f -`.
    #[command(after_help = OBJECTS_HELP)]
    Crds {
        /// `yaml` (a multi-document stream) or `json` (one v1 List).
        #[arg(short = 'o', long = "output", value_enum, default_value_t)]
        output: ObjectsFormat,
    },
    /// Print everything a cluster needs (CRDs, namespace, RBAC, operator Deployment), for
    /// `kubectl apply --server-side -f -`.
    #[command(after_help = OBJECTS_HELP)]
    Install {
        /// Tag of the operator and relay images (as `images/build.sh` tags them).
        #[arg(long = "image", value_name = "TAG", default_value = operator::install::VERSION)]
        image: String,
        /// `yaml` (a multi-document stream) or `json` (one v1 List).
        #[arg(short = 'o', long = "output", value_enum, default_value_t)]
        output: ObjectsFormat,
    },
    /// Check manifests offline with the same rules as the API server.
    #[command(after_help = VALIDATE_HELP)]
    Validate {
        #[command(flatten)]
        manifests: Manifests,
        #[arg(short = 'o', long = "output", value_enum, default_value_t)]
        output: Format,
    },
    /// Print the RelayConfig the manifests render to (as the operator would put it in the ConfigMap).
    #[command(after_help = RENDER_HELP)]
    Render {
        #[command(flatten)]
        manifests: Manifests,
        /// `json` (the default), `yaml`, or `text` for a summary.
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Json)]
        output: Format,
    },
    /// Run a relay on this machine from manifests, reloading when they change.
    #[command(after_help = RUN_HELP)]
    Run {
        #[command(flatten)]
        manifests: Manifests,
        #[command(flatten)]
        local: LocalArgs,
    },
    /// Probe each host of a MailRoute with the route's TLS checks, as delivery would.
    #[command(after_help = TEST_TLS_HELP)]
    TestTls {
        #[command(flatten)]
        manifests: Manifests,
        /// Name of the MailRoute (`name` or `namespace/name`).
        #[arg(long)]
        route: String,
        /// DNS server for MX lookup (repeatable; default: the system's).
        #[arg(long = "nameserver")]
        nameservers: Vec<std::net::SocketAddr>,
        #[arg(short = 'o', long = "output", value_enum, default_value_t)]
        output: Format,
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
    #[command(after_help = EXPLAIN_HELP)]
    Explain {
        #[command(flatten)]
        manifests: Manifests,
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
        #[arg(short = 'o', long = "output", value_enum, default_value_t)]
        output: ReviewFormat,
        /// Deprecated: use -o/--output.
        #[arg(long, value_enum, hide = true, conflicts_with = "output")]
        format: Option<ReviewFormat>,
    },
    /// Check the cases of the RelayExpectation documents among the manifests.
    #[command(after_help = TEST_HELP)]
    Test {
        #[command(flatten)]
        manifests: Manifests,
        #[arg(short = 'o', long = "output", value_enum, default_value_t)]
        output: Format,
    },
    /// What changes in relay behaviour between two Git revisions of the manifests.
    ///
    /// RelayExpectation cases run at both revisions; a case whose outcome changes is listed.
    #[command(after_help = PLAN_HELP)]
    Plan {
        /// The revision to compare from (for example `origin/main`).
        #[arg(long)]
        base: String,
        /// The revision to compare to; the working tree when omitted.
        #[arg(long)]
        head: Option<String>,
        #[arg(short = 'o', long = "output", value_enum, default_value_t)]
        output: ReviewFormat,
        /// Deprecated: use -o/--output.
        #[arg(long, value_enum, hide = true, conflicts_with = "output")]
        format: Option<ReviewFormat>,
        /// Exit 1 when the plan holds such a change (a CI gate).
        #[arg(long, value_enum, value_name = "WHAT")]
        fail_on: Option<FailOn>,
        /// Refuse objects of other API groups instead of skipping them with a note.
        #[arg(long)]
        strict: bool,
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
    #[command(after_help = QUEUE_HELP)]
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
    /// strings of at most 255 bytes.
    #[command(after_help = DKIM_HELP)]
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
        /// The key's algorithm; default: whichever the key is.
        #[arg(long, value_enum)]
        algorithm: Option<DkimAlgorithmArg>,
        #[arg(short = 'o', long = "output", value_enum, default_value_t)]
        output: Format,
    },
    /// Print a shell completion script (`source <(relayctl completions bash)`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write man pages: `relayctl.1` and one `relayctl-COMMAND.1` per command, into DIR.
    #[command(after_help = MAN_HELP)]
    Man {
        /// Directory to write the pages to (created when missing).
        dir: PathBuf,
    },
}

/// The manifests a command reads.
#[derive(clap::Args, Clone, Debug)]
struct Manifests {
    /// Files or directories of YAML manifests.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Refuse objects of other API groups (a Namespace, a SealedSecret, a
    /// kustomization.yaml) instead of skipping them with a note.
    #[arg(long)]
    strict: bool,
}

impl Manifests {
    fn options(&self) -> LoadOptions {
        load_options(self.strict)
    }
}

fn load_options(strict: bool) -> LoadOptions {
    if strict {
        LoadOptions::STRICT
    } else {
        LoadOptions::LENIENT
    }
}

/// `dkim-record --algorithm`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum DkimAlgorithmArg {
    #[value(name = "rsa-sha256")]
    RsaSha256,
    #[value(name = "ed25519-sha256")]
    Ed25519Sha256,
}

impl From<DkimAlgorithmArg> for relay::config::DkimAlgorithm {
    fn from(a: DkimAlgorithmArg) -> Self {
        match a {
            DkimAlgorithmArg::RsaSha256 => relay::config::DkimAlgorithm::RsaSha256,
            DkimAlgorithmArg::Ed25519Sha256 => relay::config::DkimAlgorithm::Ed25519Sha256,
        }
    }
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
    /// `text` (a table), or the relay's answer as `json` or `yaml`.
    #[arg(
        short = 'o',
        long = "output",
        global = true,
        value_enum,
        default_value_t
    )]
    output: Format,
    /// Deprecated: use -o json.
    #[arg(long, global = true, hide = true)]
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

/// `-o` unless the deprecated `--format` was given (with a note).
fn review_format(output: ReviewFormat, format: Option<ReviewFormat>) -> ReviewFormat {
    match format {
        Some(f) => {
            note_deprecated("--format", "-o/--output");
            f
        }
        None => output,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Plan {
            base,
            head,
            output,
            format,
            fail_on,
            strict,
            paths,
        } => plan(
            &base,
            head.as_deref(),
            review_format(output, format),
            fail_on,
            load_options(strict),
            paths,
        ),
        Command::Explain {
            manifests,
            client_ip,
            helo,
            auth,
            tls,
            from,
            to,
            output,
            format,
        } => explain(
            &manifests,
            &operator::explain::Query {
                client_ip,
                helo,
                tls,
                auth,
                from,
                to,
            },
            review_format(output, format),
        ),
        Command::Test { manifests, output } => test(&manifests, output),
        Command::Queue { action, mut target } => {
            if target.json {
                note_deprecated("--json", "-o json");
                target.output = Format::Json;
            }
            runtime().block_on(queue(action, target))
        }
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "relayctl",
                &mut std::io::stdout(),
            );
            ExitCode::SUCCESS
        }
        Command::Man { dir } => man(&dir),
        Command::DkimRecord {
            key,
            selector,
            domain,
            algorithm,
            output,
        } => dkim_record(&key, &selector, &domain, algorithm, output),
        Command::Run { manifests, local } => runtime().block_on(run(
            manifests.paths.clone(),
            manifests.options(),
            local.options(),
        )),
        Command::TestTls {
            manifests,
            route,
            nameservers,
            output,
        } => runtime().block_on(test_tls(&manifests, &route, nameservers, output)),
        Command::Sink { listen } => runtime().block_on(sink(listen)),
        Command::Install { image, output } => objects(
            operator::install::install_yaml(&image).map_err(|e| e.to_string()),
            output,
            "the install manifests",
        ),
        Command::Crds { output } => objects(
            crds::crds_yaml().map_err(|e| e.to_string()),
            output,
            "the CRDs",
        ),
        Command::Validate { manifests, output } => validate(&manifests, output),
        Command::Render { manifests, output } => render(&manifests, output),
    }
}

/// `relayctl crds` and `relayctl install`.
fn objects(stream: Result<String, String>, format: ObjectsFormat, what: &str) -> ExitCode {
    match stream.and_then(|s| output::objects(&s, format)) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: cannot write {what}: {e}");
            output::exit(NO)
        }
    }
}

/// Loads manifests, noting what was skipped; prints every problem on stderr.
fn load(manifests: &Manifests) -> Result<ManifestSet, ExitCode> {
    load_paths(&manifests.paths, manifests.options()).map_err(|errors| {
        print_errors(&errors);
        output::exit(INVALID)
    })
}

fn load_paths(paths: &[PathBuf], options: LoadOptions) -> Result<ManifestSet, ManifestErrors> {
    let set = crds::manifest::load_paths_with(paths, options)?;
    output::note_skipped(&set);
    Ok(set)
}

fn print_errors(errors: &ManifestErrors) {
    eprintln!("{errors}");
    eprintln!("{} error(s)", errors.0.len());
}

/// What `relayctl validate -o json|yaml` prints.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ValidateReport<'a> {
    valid: bool,
    /// Objects that configure the relay (RelayExpectations not counted).
    objects: usize,
    expectation_cases: usize,
    skipped: &'a [crds::manifest::Skipped],
    errors: &'a [crds::manifest::ManifestError],
}

/// `relayctl validate`.
fn validate(manifests: &Manifests, format: Format) -> ExitCode {
    // The CRDs first: a rule the API server would refuse for its cost is reported in the
    // API server's words, before any manifest is read.
    if let Err(errors) = crds::cel_cost::check_crds() {
        for e in &errors {
            eprintln!("{e}");
        }
        eprintln!("{} CEL cost error(s) in the CRDs", errors.len());
        return output::exit(INVALID);
    }
    match load_paths(&manifests.paths, manifests.options()) {
        Ok(set) => {
            let cases: usize = set
                .expectations
                .iter()
                .map(|x| x.object.spec.cases.len())
                .sum();
            let report = ValidateReport {
                valid: true,
                objects: set.len(),
                expectation_cases: cases,
                skipped: &set.skipped,
                errors: &[],
            };
            output::print(
                format,
                &report,
                || {
                    if cases > 0 {
                        format!(
                            "{} objects valid, {cases} expectation case(s) (check them with relayctl test)\n",
                            set.len()
                        )
                    } else {
                        format!("{} objects valid\n", set.len())
                    }
                },
                DONE,
            )
        }
        Err(errors) => {
            print_errors(&errors);
            if format == Format::Text {
                return output::exit(INVALID);
            }
            let report = ValidateReport {
                valid: false,
                objects: 0,
                expectation_cases: 0,
                skipped: &[],
                errors: &errors.0,
            };
            output::print(format, &report, String::new, INVALID)
        }
    }
}

/// `relayctl render`.
fn render(manifests: &Manifests, format: Format) -> ExitCode {
    let set = match load(manifests) {
        Ok(set) => set,
        Err(code) => return code,
    };
    let rendered = match render_set(&set, &RenderEnv::pod()) {
        Ok(rendered) => rendered,
        Err(e) => {
            eprintln!("error: {e}");
            return output::exit(INVALID);
        }
    };
    warn_findings(&rendered.findings);
    let config = &rendered.config;
    match format {
        // The ConfigMap's document, byte for byte.
        Format::Json => {
            println!("{}", config.to_json());
            output::exit(DONE)
        }
        _ => output::print(format, config, || render_summary(config), DONE),
    }
}

/// `relayctl render -o text`: what the document holds, in a few lines.
fn render_summary(c: &relay::config::RelayConfig) -> String {
    let names = |v: Vec<&str>| {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.join(", ")
        }
    };
    let mut out = format!(
        "RelayConfig of Organization {} (hash {})\n",
        c.organization.name,
        short(&c.hash)
    );
    out.push_str(&format!("  hostname   {}\n", c.hostname));
    out.push_str(&format!(
        "  domains    {}\n",
        names(c.organization.domains.iter().map(String::as_str).collect())
    ));
    out.push_str(&format!(
        "  settings   {}\n",
        names(c.settings.iter().map(|s| s.name.as_str()).collect())
    ));
    out.push_str(&format!(
        "  routes     {}\n",
        names(c.routes.iter().map(|r| r.name.as_str()).collect())
    ));
    out.push_str(&format!(
        "  dkim       {}\n",
        names(c.dkim.iter().map(|k| k.domain.as_str()).collect())
    ));
    out.push_str("The whole document: -o json or -o yaml.\n");
    out
}

/// `relayctl plan`: renders both revisions and prints the behavioural diff.
fn plan(
    base: &str,
    head: Option<&str>,
    format: ReviewFormat,
    fail_on: Option<FailOn>,
    options: LoadOptions,
    paths: Vec<PathBuf>,
) -> ExitCode {
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
            return output::exit(INVALID);
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
    let load_rev = |rev: &str| -> Result<ManifestSet, String> {
        let files =
            operator::git::yaml_files_at(&top, rev, &repo_paths).map_err(|e| e.to_string())?;
        crds::manifest::load_sources_with(&files, options)
            .map_err(|e| format!("manifests at {rev} are invalid:\n{e}"))
    };
    let base_set = match load_rev(base) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return output::exit(INVALID);
        }
    };
    // Notes for the head only: the base is what the head replaces.
    let head_set = match head {
        Some(rev) => load_rev(rev).inspect(output::note_skipped),
        None => load_paths(&paths, options)
            .map_err(|e| format!("manifests in the working tree are invalid:\n{e}")),
    };
    let head_set = match head_set {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return output::exit(INVALID);
        }
    };
    let env = RenderEnv::pod();
    let (b, h) = match (render_set(&base_set, &env), render_set(&head_set, &env)) {
        (Ok(b), Ok(h)) => (b, h),
        (Err(e), _) => {
            eprintln!("error: base {base} does not render: {e}");
            return output::exit(INVALID);
        }
        (_, Err(e)) => {
            eprintln!(
                "error: head {} does not render: {e}",
                head.unwrap_or("(working tree)")
            );
            return output::exit(INVALID);
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
        ReviewFormat::Text => Ok(operator::plan::format::text(&changes)),
        ReviewFormat::Markdown => Ok(operator::plan::format::markdown(&changes)),
        ReviewFormat::Json => output::json(&changes),
        ReviewFormat::Yaml => output::yaml(&changes),
    };
    match out {
        Ok(out) => print!("{out}"),
        Err(e) => {
            eprintln!("error: {e}");
            return output::exit(NO);
        }
    }
    match fail_on {
        Some(gate) if gate.tripped(&changes) => output::exit(NO),
        _ => output::exit(DONE),
    }
}

/// Loads and renders manifests as the operator would, printing what is wrong.
fn load_rendered(
    manifests: &Manifests,
) -> Result<(ManifestSet, relay::config::RelayConfig), ExitCode> {
    let set = load(manifests)?;
    match operator::manifests::render_set_assuming_secrets(&set, &RenderEnv::pod()) {
        Ok((rendered, assumed)) => {
            warn_findings(&rendered.findings);
            for name in assumed {
                eprintln!(
                    "note: Secret {name} is not among the manifests; assumed present, as on a cluster"
                );
            }
            Ok((set, rendered.config))
        }
        Err(e) => {
            eprintln!("error: {e}");
            Err(output::exit(INVALID))
        }
    }
}

/// `relayctl explain`: one hypothetical session, played through the relay's session.
fn explain(
    manifests: &Manifests,
    query: &operator::explain::Query,
    format: ReviewFormat,
) -> ExitCode {
    let (set, config) = match load_rendered(manifests) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let facts = operator::explain::ManifestFacts::of(&set);
    let e = operator::explain::explain(&config, &facts, query);
    match format {
        ReviewFormat::Text => output::print(Format::Text, &e, || operator::explain::text(&e), DONE),
        ReviewFormat::Markdown => {
            print!("{}", operator::explain::markdown(&e));
            output::exit(DONE)
        }
        ReviewFormat::Json => output::print(Format::Json, &e, String::new, DONE),
        ReviewFormat::Yaml => output::print(Format::Yaml, &e, String::new, DONE),
    }
}

/// What `relayctl test -o json|yaml` prints.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TestReport<'a> {
    passed: bool,
    cases: usize,
    failed: usize,
    results: &'a [operator::expect::CaseResult],
}

/// `relayctl test`: every RelayExpectation case against the manifests.
fn test(manifests: &Manifests, format: Format) -> ExitCode {
    let (set, config) = match load_rendered(manifests) {
        Ok(x) => x,
        Err(code) => return code,
    };
    if set.expectations.is_empty() {
        eprintln!(
            "error: no RelayExpectation found in {}: nothing to test",
            manifests
                .paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        return output::exit(INVALID);
    }
    let facts = operator::explain::ManifestFacts::of(&set);
    let results = operator::expect::evaluate(&config, &facts, &set.expectations);
    let failed = results.iter().filter(|r| !r.passed()).count();
    let report = TestReport {
        passed: failed == 0,
        cases: results.len(),
        failed,
        results: &results,
    };
    output::print(
        format,
        &report,
        || operator::expect::text(&results),
        if failed == 0 { DONE } else { NO },
    )
}

/// `relayctl man DIR`: one page for `relayctl` and one per command.
fn man(dir: &Path) -> ExitCode {
    if let Err(e) = std::fs::create_dir_all(dir) {
        eprintln!("error: cannot create {}: {e}", dir.display());
        return output::exit(NO);
    }
    let mut cli = Cli::command();
    cli.build();
    let mut pages = vec![("relayctl".to_string(), cli.clone())];
    for sub in cli.get_subcommands() {
        pages.push((format!("relayctl-{}", sub.get_name()), sub.clone()));
    }
    for (name, cmd) in pages {
        let path = dir.join(format!("{name}.1"));
        let mut page = Vec::new();
        let written = clap_mangen::Man::new(cmd)
            .title(name.clone())
            .render(&mut page)
            .and_then(|_| std::fs::write(&path, &page));
        if let Err(e) = written {
            eprintln!("error: cannot write {}: {e}", path.display());
            return output::exit(NO);
        }
        println!("{}", path.display());
    }
    output::exit(DONE)
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
        return queue_on_cluster(action, &cluster, target.output).await;
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
                return output::exit(INVALID);
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
            return output::exit(INVALID);
        }
    };
    let (method, path) = action_request(&action);
    let answer = match request(&admin, &token, method, &path).await {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: {e}");
            return output::exit(NO);
        }
    };
    output::print(
        target.output,
        &answer,
        || match &action {
            QueueAction::List => list_table(&answer),
            QueueAction::Show { .. } => show_text(&answer),
            QueueAction::Flush { .. } => format!(
                "{} message(s) due now (held messages stay held)\n",
                answer["flushed"]
            ),
            QueueAction::Hold { id } | QueueAction::Release { id } | QueueAction::Delete { id } => {
                format!("{id}: {}\n", answer["result"].as_str().unwrap_or("done"))
            }
        },
        DONE,
    )
}

/// `relayctl queue -n NAMESPACE`: every relay pod of the namespace, through the API server.
async fn queue_on_cluster(
    action: QueueAction,
    target: &operator::queue_cluster::ClusterTarget,
    format: Format,
) -> ExitCode {
    let report = operator::queue_cluster::run(&action, target, format != Format::Text).await;
    for line in &report.notes {
        eprintln!("{line}");
    }
    if format == Format::Yaml && !report.output.is_empty() {
        // The cluster answer is built as JSON; YAML is the same value.
        return match serde_json::from_str::<serde_json::Value>(&report.output) {
            Ok(value) => output::print(Format::Yaml, &value, String::new, report.exit_code),
            Err(e) => {
                eprintln!("error: {e}");
                output::exit(NO)
            }
        };
    }
    print!("{}", report.output);
    output::exit(report.exit_code)
}

/// Loads and prepares the manifests, printing what is wrong.
fn prepare(
    paths: &[PathBuf],
    options: LoadOptions,
    opts: &operator::local::LocalOptions,
) -> Option<operator::local::LocalConfig> {
    let set = match load_paths(paths, options) {
        Ok(set) => set,
        Err(errors) => {
            print_errors(&errors);
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

fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// `relayctl run`: the relay in this process, reloaded when the manifests change.
async fn run(
    paths: Vec<PathBuf>,
    options: LoadOptions,
    opts: operator::local::LocalOptions,
) -> ExitCode {
    init_logs();
    // Taken before loading, so an edit made while the relay starts is noticed.
    let mut last = operator::local::snapshot(&paths);
    let Some(local) = prepare(&paths, options, &opts) else {
        return output::exit(INVALID);
    };
    warn_findings(&local.findings);
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
        let Some(local) = prepare(&paths, options, &opts) else {
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
                warn_findings(&findings);
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
    manifests: &Manifests,
    route: &str,
    nameservers: Vec<std::net::SocketAddr>,
    format: Format,
) -> ExitCode {
    let state = std::env::temp_dir().join(format!("relayctl-test-tls-{}", std::process::id()));
    let opts = operator::local::LocalOptions {
        state_dir: state.clone(),
        nameservers,
        ..Default::default()
    };
    let code = match prepare(&manifests.paths, manifests.options(), &opts) {
        None => output::exit(INVALID),
        Some(local) => probe_route(&local.config, route, format).await,
    };
    let _ = std::fs::remove_dir_all(&state);
    code
}

/// What `relayctl test-tls -o json|yaml` prints.
#[derive(Serialize)]
struct TlsReport<'a> {
    route: &'a str,
    description: &'a str,
    verified: bool,
    hosts: Vec<TlsHost<'a>>,
}

#[derive(Serialize)]
struct TlsHost<'a> {
    host: &'a str,
    port: u16,
    verified: bool,
    message: &'a str,
}

async fn probe_route(config: &relay::config::RelayConfig, route: &str, format: Format) -> ExitCode {
    let found = config
        .routes
        .iter()
        .find(|r| r.name == route || r.name.rsplit('/').next() == Some(route));
    let Some(r) = found else {
        let names: Vec<&str> = config.routes.iter().map(|r| r.name.as_str()).collect();
        eprintln!(
            "error: no MailRoute {route}; the manifests have: {}",
            names.join(", ")
        );
        return output::exit(INVALID);
    };
    let probes = relay::delivery::probe::probe_route(r, &config.delivery).await;
    let report = TlsReport {
        route: &r.name,
        description: &r.description,
        verified: !probes.is_empty() && probes.iter().all(|p| p.verified),
        hosts: probes
            .iter()
            .map(|p| TlsHost {
                host: &p.host,
                port: p.port,
                verified: p.verified,
                message: &p.message,
            })
            .collect(),
    };
    output::print(
        format,
        &report,
        || {
            let mut out = format!("MailRoute {} ({})\n", r.name, r.description);
            for p in &probes {
                let verdict = if p.verified {
                    "verified"
                } else {
                    "NOT VERIFIED"
                };
                out.push_str(&format!(
                    "  {}:{}  {verdict}: {}\n",
                    p.host, p.port, p.message
                ));
            }
            out
        },
        if report.verified { DONE } else { NO },
    )
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

/// What `relayctl dkim-record -o json|yaml` prints.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DkimRecord {
    /// `SELECTOR._domainkey.DOMAIN.`
    name: String,
    r#type: &'static str,
    algorithm: &'static str,
    /// The whole TXT value.
    value: String,
    /// The value as DNS character-strings of at most 255 bytes.
    strings: Vec<String>,
    /// The zone-file line the text output prints.
    zone_line: String,
}

/// `relayctl dkim-record`: the TXT record of a private key file.
fn dkim_record(
    key: &Path,
    selector: &str,
    domain: &str,
    algorithm: Option<DkimAlgorithmArg>,
    format: Format,
) -> ExitCode {
    use base64::Engine;
    use relay::config::DkimAlgorithm;
    let pem = match std::fs::read(key) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", key.display());
            return output::exit(INVALID);
        }
    };
    let algorithms = match algorithm {
        None => vec![DkimAlgorithm::RsaSha256, DkimAlgorithm::Ed25519Sha256],
        Some(a) => vec![a.into()],
    };
    let mut errors = Vec::new();
    for a in algorithms {
        let record = relay::delivery::dkim::dns_record(&pem, a, selector, domain)
            .and_then(|line| relay::delivery::dkim::public_key(&pem, a).map(|(k, p)| (line, k, p)));
        match record {
            Ok((line, k, public)) => {
                let value = format!(
                    "v=DKIM1; k={k}; p={}",
                    base64::engine::general_purpose::STANDARD.encode(public)
                );
                let record = DkimRecord {
                    name: format!(
                        "{selector}._domainkey.{}.",
                        domain.trim_end_matches('.').to_ascii_lowercase()
                    ),
                    r#type: "TXT",
                    algorithm: a.as_str(),
                    strings: value
                        .as_bytes()
                        .chunks(255)
                        .map(|c| String::from_utf8_lossy(c).into_owned())
                        .collect(),
                    value,
                    zone_line: line,
                };
                return output::print(format, &record, || format!("{}\n", record.zone_line), DONE);
            }
            Err(e) => errors.push(format!("{}: {e}", a.as_str())),
        }
    }
    eprintln!(
        "error: {} is not a usable DKIM private key ({})",
        key.display(),
        errors.join("; ")
    );
    output::exit(INVALID)
}
