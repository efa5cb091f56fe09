//! `relayctl`: the command line of the SmtpRelay project: print the CRDs, validate and render
//! manifests offline, and run a relay from manifests on this machine.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use operator::manifests::render_set;
use operator::render::RenderEnv;

#[derive(Parser)]
#[command(
    name = "relayctl",
    version,
    about = "Manage SmtpRelay manifests: validate, render, run"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions, for `kubectl apply -f -`.
    Crds,
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
    /// What changes in relay behaviour between two Git revisions of the manifests.
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
        Command::Validate { paths } => match crds::manifest::load_paths(&paths) {
            Ok(set) => {
                println!("{} objects valid", set.len());
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
    let changes = operator::plan::plan(&b.config, &h.config);
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
