//! History retention: ended sessions, exited processes and ended machines older than
//! `--retention-days` are removed, a batch at a time so the store's writer is never held
//! for long. Live rows are never touched (see [`Store::prune_history`]).

use std::sync::Arc;
use std::time::Duration;

use crate::store::{Pruned, Store};
use crate::time::now_ms;

/// Rows of each kind one prune removes.
pub const BATCH: u32 = 2_000;

/// How often history is pruned.
pub const PERIOD: Duration = Duration::from_secs(60);

/// Removes everything older than `retention` now, a batch at a time; what it removed.
pub async fn prune_once(
    store: &dyn Store,
    retention: Duration,
    now_ms: i64,
) -> crate::Result<Pruned> {
    let before_ms = now_ms - i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
    let mut total = Pruned::default();
    loop {
        let pruned = store.prune_history(before_ms, BATCH).await?;
        total.sessions += pruned.sessions;
        total.processes += pruned.processes;
        total.machines += pruned.machines;
        if pruned.total() == 0 {
            return Ok(total);
        }
        // Leave the writer to placements between two batches.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Prunes at start and every [`PERIOD`] until `shutdown` resolves.
pub async fn run(
    store: Arc<dyn Store>,
    retention: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        match prune_once(store.as_ref(), retention, now_ms()).await {
            Ok(pruned) if pruned.total() > 0 => tracing::info!(
                sessions = pruned.sessions,
                processes = pruned.processes,
                machines = pruned.machines,
                "history older than {} days pruned",
                retention.as_secs() / 86_400
            ),
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "pruning history failed; retrying later"),
        }
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(PERIOD) => {}
        }
    }
}
