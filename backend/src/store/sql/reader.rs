//! Reads that need the database rather than the writer's picture (lists, history, single
//! rows): a few threads, each with its own read-only connection, taking closures from one
//! queue. A read sees the last committed state (WAL). One thread hop per store call,
//! whatever the number of statements and rows.

use std::sync::{mpsc, Arc, Mutex};

use crate::store::db::Conn;
use tokio::sync::oneshot;

use crate::{Error, Result};

type ReadWork = Box<dyn FnOnce(&Conn) + Send>;

/// The handle every store read goes through.
#[derive(Debug, Clone)]
pub struct Reader {
    queue: mpsc::Sender<ReadWork>,
}

impl Reader {
    /// Starts `threads` readers, each on a connection `connect` opens.
    /// A reader whose connection broke (Postgres restarted) opens a new one with `connect`.
    pub fn spawn(
        threads: usize,
        connect: impl Fn() -> Result<Conn> + Clone + Send + 'static,
    ) -> Result<Reader> {
        let (queue, jobs) = mpsc::channel::<ReadWork>();
        let jobs = Arc::new(Mutex::new(jobs));
        for index in 0..threads.max(1) {
            let mut conn = connect()?;
            let jobs = jobs.clone();
            let connect = connect.clone();
            std::thread::Builder::new()
                .name(format!("store-reader-{index}"))
                .spawn(move || loop {
                    let job = {
                        let jobs = jobs.lock().expect("reader queue poisoned");
                        jobs.recv()
                    };
                    match job {
                        Ok(job) => {
                            // A panicking read answers an error (its sender is dropped)
                            // and leaves the thread serving.
                            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                job(&conn)
                            }));
                            if conn.is_broken() {
                                match connect() {
                                    Ok(fresh) => conn = fresh,
                                    Err(error) => tracing::warn!(%error, "a store reader cannot reconnect; retrying at its next read"),
                                }
                            }
                        }
                        Err(_) => return,
                    }
                })
                .map_err(|e| Error::Internal(format!("start a store reader: {e}")))?;
        }
        Ok(Reader { queue })
    }

    /// Runs `f` on a reader connection.
    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Conn) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (sender, receiver) = oneshot::channel();
        self.queue
            .send(Box::new(move |conn| {
                let _ = sender.send(f(conn));
            }))
            .map_err(|_| Error::Internal("the store's readers have stopped".into()))?;
        receiver
            .await
            .unwrap_or_else(|_| Err(Error::Internal("a store reader dropped a job".into())))
    }
}
