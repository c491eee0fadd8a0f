//! Running the roles: the receiver's HTTP server, the worker with its health
//! endpoints, and both in one process. Each stops on a shutdown signal: the
//! receiver stops accepting and finishes requests in flight, the worker finishes
//! in-flight jobs within its grace period.

use std::{net::SocketAddr, sync::Arc};

use tokio::{net::TcpListener, sync::watch};

use crate::deployment::Deployment;

/// A shutdown signal that any number of tasks can wait on.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

/// Triggers a [`Shutdown`].
pub struct ShutdownTrigger(watch::Sender<bool>);

impl Shutdown {
    pub fn new() -> (ShutdownTrigger, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (ShutdownTrigger(tx), Shutdown(rx))
    }

    pub async fn wait(mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }

    /// Whether the signal was given.
    pub fn is_triggered(&self) -> bool {
        *self.0.borrow()
    }
}

impl ShutdownTrigger {
    pub fn trigger(&self) {
        let _ = self.0.send(true);
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn termination_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("termination signal received");
}

pub async fn bind(address: &str) -> anyhow::Result<TcpListener> {
    let address: SocketAddr = address.parse()?;
    TcpListener::bind(address)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {address}: {e}"))
}

/// Serves the receiver (webhooks and health) until shutdown.
pub async fn serve_receiver(
    deployment: Arc<Deployment>,
    listener: TcpListener,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    serve_http(
        crate::receiver::router(deployment.clone()),
        listener,
        shutdown,
        &deployment,
    )
    .await
}

/// Serves `app` until shutdown, finishing the requests in flight.
pub async fn serve_http(
    app: axum::Router,
    listener: TcpListener,
    shutdown: Shutdown,
    deployment: &Arc<Deployment>,
) -> anyhow::Result<()> {
    tracing::info!(address = %listener.local_addr()?, "receiver listening");
    let deployment = deployment.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.wait().await;
            // Open event streams end, or the server would wait for them forever.
            deployment.close_streams();
        })
        .await?;
    tracing::info!("receiver stopped");
    Ok(())
}

/// Serves the worker's health endpoints and runs the worker until shutdown.
pub async fn run_worker(
    deployment: Arc<Deployment>,
    health: Option<TcpListener>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let health_server = health.map(|listener| {
        let app = crate::health::router(deployment.store.clone());
        let stop = shutdown.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(stop.wait())
                .await
        })
    });
    let result = crate::worker::run(deployment, shutdown).await;
    if let Some(server) = health_server {
        let _ = server.await;
    }
    result
}
