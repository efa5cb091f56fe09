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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
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
