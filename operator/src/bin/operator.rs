//! `operator`: runs the SmtpRelay controller in a cluster.
//!
//! Serves its metrics, campaigns for the leader Lease, and reconciles Organizations only
//! while it holds the lease. Losing the lease ends the process (its Deployment restarts it
//! as a follower), so two replicas never reconcile at once. On SIGTERM the leader stops
//! reconciling and then releases the lease, so that a follower takes over at once.

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
    version = concat!(env!("CARGO_PKG_VERSION"), " (git ", env!("SMTPRELAY_GIT_REVISION"), ")"),
    about = "Reconcile SmtpRelay Organizations into relay StatefulSets"
)]
struct Args {
    /// Address of `/metrics` and `/healthz` (`[::]` takes both address families, and falls
    /// back to `0.0.0.0` where there is no IPv6).
    #[arg(long, default_value = "[::]:8080")]
    metrics_addr: SocketAddr,
    /// Relay image for Organizations that do not set `spec.relay.image`.
    #[arg(long, default_value = operator::controller::children::DEFAULT_RELAY_IMAGE)]
    relay_image: String,
    /// Namespace of the leader-election Lease (normally the operator's own).
    #[arg(long, default_value = "smtprelay-system")]
    lease_namespace: String,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "smtprelay-operator")]
    lease_name: String,
    /// This replica's identity in the Lease. Default: `$POD_NAME`, else `$HOSTNAME` (the
    /// pod name in a pod), else a random one. Two replicas must never share it.
    #[arg(long)]
    identity: Option<String>,
    /// Seconds a Lease stays valid without renewal.
    #[arg(long, default_value_t = 15)]
    lease_seconds: u64,
    /// Seconds between TLS probes of each MailRoute.
    #[arg(long, default_value_t = 600)]
    probe_interval_seconds: u64,
    /// An image Organizations may name in `spec.relay.image` (repeatable). The default
    /// relay image is always allowed; any other image is refused unless listed.
    #[arg(long = "allowed-relay-image")]
    allowed_relay_images: Vec<String>,
    /// Refuse `spec.relay.serviceType: LoadBalancer`.
    #[arg(long)]
    forbid_load_balancer: bool,
    /// Namespaces whose pods may reach the relays' admin port (repeatable; default: the
    /// lease namespace, i.e. the operator's own, and `monitoring`).
    #[arg(long = "admin-namespace")]
    admin_namespaces: Vec<String>,
    /// A network of this cluster (pod or service CIDR, repeatable). Relays never dial it
    /// for MX or direct delivery, so a recipient domain whose MX points into the cluster
    /// cannot make a relay reach internal services; routes that name a host still can.
    #[arg(long = "cluster-network")]
    cluster_networks: Vec<ipnet::IpNet>,
    /// Log output: `text` lines, `json` objects (one per line), or `auto` (text on a
    /// terminal, JSON otherwise).
    #[arg(long, value_enum, default_value_t = relay::logging::LogFormat::Text)]
    log_format: relay::logging::LogFormat,
}

/// This replica's identity in the Lease.
fn identity(flag: Option<String>) -> String {
    flag.or_else(|| std::env::var("POD_NAME").ok())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("smtprelay-operator-{:016x}", fastrand::u64(..)))
}

/// Resolves on SIGTERM (how the kubelet stops a pod) or Ctrl-C.
async fn terminated() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    relay::logging::init(args.log_format);
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
    let listener = relay::net::listen(args.metrics_addr)?;
    tokio::spawn(serve(listener, metrics.clone()));

    let identity = identity(args.identity);
    let (leading_tx, mut leading) = watch::channel(false);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let elector = LeaderElector::new(
        Api::<Lease>::namespaced(client.clone(), &args.lease_namespace),
        &args.lease_name,
        &identity,
        Duration::from_secs(args.lease_seconds.max(3)),
    );
    let election = tokio::spawn(elector.run(leading_tx, async move {
        let _ = stop_rx.await;
    }));
    tracing::info!(%identity, "waiting for the leader lease");
    tokio::select! {
        r = leading.wait_for(|l| *l) => { r?; }
        () = terminated() => {
            let _ = stop_tx.send(());
            let _ = election.await;
            return Ok(());
        }
    }

    let admin_namespaces = if args.admin_namespaces.is_empty() {
        vec![args.lease_namespace.clone(), "monitoring".into()]
    } else {
        args.admin_namespaces
    };
    let mut env = operator::render::RenderEnv::pod();
    env.delivery.cluster_networks = args.cluster_networks;
    let settings = Settings {
        env,
        defaults: ChildDefaults {
            relay_image: args.relay_image,
            admin_namespaces,
            operator_namespace: args.lease_namespace.clone(),
        },
        probe_interval: Duration::from_secs(args.probe_interval_seconds),
        allowed_images: args.allowed_relay_images,
        forbid_load_balancer: args.forbid_load_balancer,
        ..Settings::default()
    };
    let ctx = Arc::new(Context::new(
        client,
        settings,
        DeliveryProber,
        metrics,
        Some(identity),
    ));
    let mut lost = leading.clone();
    let shutdown = async move {
        let lost = async {
            let _ = lost.wait_for(|l| !*l).await;
        };
        tokio::select! {
            () = terminated() => {}
            () = lost => {}
        }
    };
    run(ctx, shutdown).await;
    // Reconciling has stopped: now the lease may go.
    let still_leading = *leading.borrow();
    let _ = stop_tx.send(());
    let elector = election.await?;
    if !still_leading {
        anyhow::bail!("lost the leader lease; exiting so that another replica leads");
    }
    if let Err(e) = elector.release().await {
        tracing::warn!(error = %e, "could not release the leader lease; a follower takes over when it expires");
    }
    Ok(())
}
