//! Wiring: open the store, start the reconciler, serve the API until shutdown.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::api::{self, AppState};
use crate::changes::Changes;
use crate::config::{self, ServerConfig};
use crate::leases::Leases;
use crate::machines::sim::SimWorld;
use crate::store::SqlStore;
use crate::store::Store;
use crate::time::new_id;
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
    // Shown without a password, should the URL carry one.
    tracing::info!(database = %config.database(), "opening the store");
    let store = Arc::new(SqlStore::open_with(&config.database(), Changes::default()).await?);
    run_with_store(config, listener, store, shutdown).await
}

/// How long in-flight requests may take to finish once a shutdown stopped accepting
/// connections, before fleetformd exits anyway (within the 10 s a supervisor's stop allows,
/// with the drain delay before it).
const GRACE: Duration = Duration::from_secs(7);

/// [`run`] on a store opened by the caller (tests keep a handle on it to check it).
///
/// Shutdown (when `shutdown` resolves): `/readyz` answers 503 at once and the reconciler
/// stops; after `config.drain` the listener closes, held agent syncs and waiting
/// placements answer, and in-flight requests finish (for at most [`GRACE`]); once the
/// reconciler has stopped, every zone lease is given back, so another replica takes over
/// at once rather than at expiry.
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
    let own_url = if address.ip().is_unspecified() {
        format!("http://127.0.0.1:{}", address.port())
    } else {
        format!("http://{address}")
    };
    let leases = Leases::new(
        new_id("rep"),
        config
            .replica_url
            .clone()
            .unwrap_or_else(|| own_url.clone()),
        config.lease_ttl,
    );
    tracing::info!(replica = %leases.replica_id, url = %leases.url, "replica starting");
    let release = crate::leases::start(store.as_ref(), &leases).await;
    let state = AppState {
        leases: leases.clone(),
        ..AppState::new(
            store.clone(),
            locations.clone(),
            &config.admin_token,
            config.heartbeat_interval,
            demand.clone(),
        )
    };
    let draining = state.draining.clone();
    let closing = state.closing.clone();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut stop: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stop.wait_for(|stop| *stop).await;
    };
    let reconciler = Reconciler {
        store: store.clone(),
        locations,
        server_url: config.agent_url.clone().unwrap_or_else(|| own_url.clone()),
        interval: config.reconcile_interval,
        demand,
        shortages: Arc::new(Shortages::default()),
        heartbeat_interval: config.heartbeat_interval,
        sweeps: Arc::default(),
        leases: leases.clone(),
    };
    let reconciler = tokio::spawn(reconciler.run(stopped(stop_rx.clone())));
    let lease_manager = tokio::spawn(crate::leases::run(
        store.clone(),
        leases.clone(),
        release,
        stopped(stop_rx.clone()),
    ));
    // Once the reconciler has stopped, its zones go back (a pass still running would be
    // refused its writes by the fence anyway).
    let released = tokio::spawn({
        let store = store.clone();
        let leases = leases.clone();
        async move {
            let _ = reconciler.await;
            let _ = lease_manager.await;
            crate::leases::release_all(store.as_ref(), &leases).await;
        }
    });
    let retention = config.retention.map(|retention| {
        tokio::spawn(crate::retention::run(
            store.clone(),
            retention,
            stopped(stop_rx.clone()),
        ))
    });
    // Simulated machines stand for agents on other hosts: their loop runs on a thread of
    // its own, so simulating thousands of them never holds up a request of the API.
    let sim_stop = stop_rx.clone();
    let sim = std::thread::Builder::new()
        .name("sim-world".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("the sim world's runtime");
            runtime.block_on(sim.run(stopped(sim_stop)));
        })
        .map_err(|e| Error::Internal(format!("start the sim world: {e}")))?;
    let app = api::router(state);
    let drain = config.drain;
    let served = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown.await;
        tracing::info!("shutting down: /readyz answers 503; machines keep running");
        draining.store(true, Ordering::SeqCst);
        let _ = stop_tx.send(true);
        tokio::time::sleep(drain).await;
        // Held syncs and waiting placements answer now; the listener closes.
        let _ = closing.send(true);
    });
    let mut grace_stop = stop_rx.clone();
    let served = tokio::select! {
        served = served => served.map_err(|e| Error::Internal(format!("serve: {e}"))),
        _ = async move {
            let _ = grace_stop.wait_for(|stop| *stop).await;
            tokio::time::sleep(drain + GRACE).await;
        } => {
            tracing::warn!("in-flight requests did not finish within {GRACE:?}; exiting");
            Ok(())
        }
    };
    let _ = released.await;
    let _ = tokio::task::spawn_blocking(move || sim.join()).await;
    if let Some(retention) = retention {
        let _ = retention.await;
    }
    tracing::info!("stopped");
    served
}
