//! `operator`: runs the SmtpRelay controller in a cluster.
//!
//! Serves its metrics, campaigns for the leader Lease, and reconciles Organizations only
//! while it holds the lease. Losing the lease ends the process (its Deployment restarts it
//! as a follower), so two replicas never reconcile at once.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use operator::controller::children::ChildDefaults;
use operator::controller::leader::LeaderElector;
use operator::controller::metrics::{Metrics, serve};
use operator::controller::probe::DeliveryProber;
use operator::controller::{Context, Settings, run};
use tokio::sync::watch;

#[derive(Parser)]
#[command(
    name = "operator",
    version,
    about = "Reconcile SmtpRelay Organizations into relay Deployments"
)]
struct Args {
    /// Address of `/metrics` and `/healthz`.
    #[arg(long, default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Relay image for Organizations that do not set `spec.relay.image`.
    #[arg(long, default_value = "smtprelay-relay:dev")]
    relay_image: String,
    /// Namespace of the leader-election Lease (normally the operator's own).
    #[arg(long, default_value = "smtprelay-system")]
    lease_namespace: String,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "smtprelay-operator")]
    lease_name: String,
    /// This replica's identity in the Lease (normally the pod name).
    #[arg(long, default_value = "smtprelay-operator")]
    identity: String,
    /// Seconds a Lease stays valid without renewal.
    #[arg(long, default_value_t = 15)]
    lease_seconds: u64,
    /// Seconds between TLS probes of each MailRoute.
    #[arg(long, default_value_t = 600)]
    probe_interval_seconds: u64,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    match operate(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

async fn operate(args: Args) -> anyhow::Result<()> {
    let client = Client::try_default().await?;
    let metrics = Arc::new(Metrics::default());
    let listener = tokio::net::TcpListener::bind(args.metrics_addr).await?;
    tokio::spawn(serve(listener, metrics.clone()));

    let (leading_tx, mut leading) = watch::channel(false);
    let elector = LeaderElector {
        api: Api::<Lease>::namespaced(client.clone(), &args.lease_namespace),
        lease_name: args.lease_name.clone(),
        identity: args.identity.clone(),
        lease_duration: Duration::from_secs(args.lease_seconds),
        renew_every: Duration::from_secs((args.lease_seconds / 3).max(1)),
    };
    let election = tokio::spawn(elector.run(leading_tx));
    tracing::info!(identity = %args.identity, "waiting for the leader lease");
    leading.wait_for(|l| *l).await?;

    let settings = Settings {
        defaults: ChildDefaults {
            relay_image: args.relay_image,
        },
        probe_interval: Duration::from_secs(args.probe_interval_seconds),
        ..Settings::default()
    };
    let ctx = Arc::new(Context::new(
        client,
        settings,
        DeliveryProber,
        metrics,
        Some(args.identity),
    ));
    let mut lost = leading.clone();
    let shutdown = async move {
        let signal = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        let lost = async {
            let _ = lost.wait_for(|l| !*l).await;
        };
        tokio::select! {
            () = signal => {}
            () = lost => {}
        }
    };
    run(ctx, shutdown).await;
    election.abort();
    if !*leading.borrow() {
        anyhow::bail!("lost the leader lease; exiting so that another replica leads");
    }
    Ok(())
}
