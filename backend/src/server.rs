//! Wiring: open the store, start the reconciler, serve the API until shutdown.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::api::{self, AppState};
use crate::changes::Changes;
use crate::config::{self, ServerConfig};
use crate::machines::sim::SimWorld;
use crate::store::SqlStore;
use crate::store::Store;
use crate::zones::{Demand, Reconciler, Shortages};
use crate::{Error, Result};

/// Serves fleetformd on `listener` until `shutdown` resolves.
pub async fn run(
    config: ServerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| Error::Internal(format!("create {}: {e}", config.data_dir.display())))?;
    let store = Arc::new(SqlStore::open_with(&config.database(), Changes::default()).await?);
    run_with_store(config, listener, store, shutdown).await
}

/// [`run`] on a store opened by the caller (tests keep a handle on it to check it).
pub async fn run_with_store(
    config: ServerConfig,
    listener: TcpListener,
    store: Arc<dyn Store>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| Error::Internal(format!("create {}: {e}", config.data_dir.display())))?;
    let demand = Arc::new(Demand::default());
    // Simulated machines report to the store in-process, as agents would over HTTP.
    let sim = SimWorld::new(store.clone(), demand.clone());
    let locations = Arc::new(config::locations(&config, &sim).await?);
    let address = listener
        .local_addr()
        .map_err(|e| Error::Internal(e.to_string()))?;
    // Local agents reach us on loopback even when we listen on every interface.
    let server_url = if address.ip().is_unspecified() {
        format!("http://127.0.0.1:{}", address.port())
    } else {
        format!("http://{address}")
    };
    let state = AppState {
        store: store.clone(),
        locations: locations.clone(),
        admin_token: config.admin_token.clone().into(),
        heartbeat_interval: config.heartbeat_interval,
        demand: demand.clone(),
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let reconciler = Reconciler {
        store: store.clone(),
        locations,
        server_url,
        interval: config.reconcile_interval,
        demand,
        shortages: Arc::new(Shortages::default()),
        heartbeat_interval: config.heartbeat_interval,
        sweeps: Arc::default(),
    };
    let mut reconciler_stop = stop_rx.clone();
    let reconciler = tokio::spawn(reconciler.run(async move {
        let _ = reconciler_stop.wait_for(|stop| *stop).await;
    }));
    let retention = config.retention.map(|retention| {
        let mut retention_stop = stop_rx.clone();
        tokio::spawn(crate::retention::run(
            store.clone(),
            retention,
            async move {
                let _ = retention_stop.wait_for(|stop| *stop).await;
            },
        ))
    });
    // Simulated machines stand for agents on other hosts: their loop runs on a thread of
    // its own, so simulating thousands of them never holds up a request of the API.
    let mut sim_stop = stop_rx.clone();
    let sim = std::thread::Builder::new()
        .name("sim-world".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("the sim world's runtime");
            runtime.block_on(sim.run(async move {
                let _ = sim_stop.wait_for(|stop| *stop).await;
            }));
        })
        .map_err(|e| Error::Internal(format!("start the sim world: {e}")))?;
    let app = api::router(state);
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        })
        .await;
    let _ = reconciler.await;
    let _ = tokio::task::spawn_blocking(move || sim.join()).await;
    if let Some(retention) = retention {
        let _ = retention.await;
    }
    served.map_err(|e| Error::Internal(format!("serve: {e}")))
}
