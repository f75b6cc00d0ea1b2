//! The store's single writer: one OS thread that owns the write connection and the
//! [`Hot`] picture, and commits whatever is queued as one transaction (group commit).
//!
//! Every write of the store is a job: a closure over [`Ctx`] (the connection inside an
//! open transaction, the picture, the notices to send). The writer takes the first job
//! from its bounded queue, then every job already waiting behind it (never sleeping to
//! gather more), runs each in its own `SAVEPOINT` (a job that fails is rolled back alone
//! and answers its error), commits once, and only then answers every job of the batch: an
//! answer means the transaction is on disk (`synchronous = FULL`). A commit that fails
//! fails the whole batch and drops the picture, which reloads from the database.
//!
//! Read jobs ([`Writer::read`]) run after the batch's commit, so what they read of the
//! picture is committed. Notices go to [`Changes`] after the commit too: a woken waiter
//! always reads what woke it.

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use crate::changes::{Changes, Notice};
use crate::store::hot::Hot;
use crate::{Error, Result};

/// Most jobs one transaction takes: a bound on how long the first of them waits.
const MAX_BATCH: usize = 1024;

/// Jobs that may wait in the queue. A full queue is back-pressure: placements are
/// answered `Overloaded` (a 429 with `Retry-After`) instead of queueing without bound.
pub const QUEUE_CAPACITY: usize = 16 * 1024;

/// What a job sees: the connection (inside the batch's transaction for writes), the
/// picture, and the notices to send once the batch commits.
pub struct Ctx<'a> {
    pub conn: &'a Connection,
    pub hot: &'a mut Hot,
    notices: &'a mut Vec<Notice>,
}

impl Ctx<'_> {
    /// Tells, after the commit, whoever waits for this change.
    pub fn notice(&mut self, notice: Notice) {
        self.notices.push(notice);
    }

    /// The desired state of a machine may have changed (and its zone wants a look).
    pub fn machine_changed(&mut self, machine_id: &str, zone_id: &str) {
        self.notices.push(Notice::Machine {
            machine_id: machine_id.to_string(),
            zone_id: zone_id.to_string(),
        });
        self.notices.push(Notice::Zone {
            zone_id: zone_id.to_string(),
        });
    }
}

/// Answers a job: with its own result when the batch committed, else (`Some`) the
/// batch's error.
type Answer = Box<dyn FnOnce(Option<&str>) + Send>;

/// A job's outcome, held until its batch commits.
struct Done {
    ok: bool,
    answer: Answer,
}

/// A job's closure: run with the context, or (`None`) answered with the batch's failure
/// without running.
type Work = Box<dyn FnOnce(Option<&mut Ctx<'_>>) -> Done + Send>;

enum Job {
    Write(Work),
    Read(Work),
}

/// The handle every store method writes through.
#[derive(Debug, Clone)]
pub struct Writer {
    queue: mpsc::Sender<Job>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Job::Write(_) => "Job::Write",
            Job::Read(_) => "Job::Read",
        })
    }
}

fn work<T: Send + 'static>(
    f: impl FnOnce(&mut Ctx<'_>) -> Result<T> + Send + 'static,
) -> (Work, oneshot::Receiver<Result<T>>) {
    let (sender, receiver) = oneshot::channel();
    let work: Work = Box::new(move |ctx| match ctx {
        Some(ctx) => {
            let result = f(ctx);
            Done {
                ok: result.is_ok(),
                answer: Box::new(move |commit_error| {
                    let _ = sender.send(match commit_error {
                        None => result,
                        Some(error) => {
                            Err(Error::Internal(format!("store commit failed: {error}")))
                        }
                    });
                }),
            }
        }
        None => Done {
            ok: false,
            answer: Box::new(move |error| {
                let _ = sender.send(Err(Error::Internal(format!(
                    "store transaction failed: {}",
                    error.unwrap_or("unknown error")
                ))));
            }),
        },
    });
    (work, receiver)
}

async fn answer<T>(receiver: oneshot::Receiver<Result<T>>) -> Result<T> {
    receiver
        .await
        .unwrap_or_else(|_| Err(Error::Internal("the store's writer dropped a job".into())))
}

impl Writer {
    /// Starts the writer thread on `conn`; it stops when the last handle is dropped.
    pub fn spawn(conn: Connection, changes: Changes) -> Result<Writer> {
        let (queue, jobs) = mpsc::channel(QUEUE_CAPACITY);
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || run(conn, jobs, changes))
            .map_err(|e| Error::Internal(format!("start the store writer: {e}")))?;
        Ok(Writer { queue })
    }

    /// Runs `f` in the next transaction; returns once it committed.
    pub async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Ctx<'_>) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (work, receiver) = work(f);
        self.queue
            .send(Job::Write(work))
            .await
            .map_err(|_| Error::Internal("the store's writer has stopped".into()))?;
        answer(receiver).await
    }

    /// Like [`Writer::write`], but a full queue answers [`Error::Overloaded`] at once.
    pub async fn try_write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Ctx<'_>) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (work, receiver) = work(f);
        match self.queue.try_send(Job::Write(work)) {
            Ok(()) => answer(receiver).await,
            Err(mpsc::error::TrySendError::Full(_)) => Err(Error::Overloaded {
                retry_after_secs: 1,
            }),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                Err(Error::Internal("the store's writer has stopped".into()))
            }
        }
    }

    /// Runs `f` on the writer after the current batch commits, outside a transaction: a
    /// read of the committed picture (it may load parts of it from the database).
    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Ctx<'_>) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (work, receiver) = work(f);
        self.queue
            .send(Job::Read(work))
            .await
            .map_err(|_| Error::Internal("the store's writer has stopped".into()))?;
        answer(receiver).await
    }
}

fn exec(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([])?;
    Ok(())
}

/// Runs one write job in its savepoint.
fn run_write(
    conn: &Connection,
    hot: &mut Hot,
    notices: &mut Vec<Notice>,
    work: Work,
) -> Result<Done> {
    exec(conn, "SAVEPOINT job")?;
    let mark = notices.len();
    let outcome = {
        let mut ctx = Ctx {
            conn,
            hot: &mut *hot,
            notices: &mut *notices,
        };
        std::panic::catch_unwind(AssertUnwindSafe(|| work(Some(&mut ctx))))
    };
    let done = match outcome {
        Ok(done) if done.ok => {
            exec(conn, "RELEASE job")?;
            for zone in hot.zones.values_mut() {
                if zone.take_capacity_gained() {
                    notices.push(Notice::Capacity {
                        zone_id: zone.id().to_string(),
                    });
                }
            }
            return Ok(done);
        }
        Ok(done) => done,
        Err(_) => {
            tracing::error!("a store job panicked; its changes are rolled back");
            // The picture may hold half of what the job did.
            hot.clear();
            Done {
                ok: false,
                answer: Box::new(|_| {}),
            }
        }
    };
    exec(conn, "ROLLBACK TO job")?;
    exec(conn, "RELEASE job")?;
    notices.truncate(mark);
    Ok(done)
}

fn run(conn: Connection, mut jobs: mpsc::Receiver<Job>, changes: Changes) {
    let mut hot = Hot::default();
    let mut notices: Vec<Notice> = Vec::new();
    while let Some(first) = jobs.blocking_recv() {
        let mut done: Vec<Done> = Vec::new();
        let mut reads: Vec<Work> = Vec::new();
        let mut failure: Option<String> = None;
        let mut in_transaction = false;
        let mut next = Some(first);
        while let Some(job) = next.take() {
            match job {
                Job::Read(work) => reads.push(work),
                Job::Write(work) => {
                    if !in_transaction {
                        if let Err(error) = exec(&conn, "BEGIN IMMEDIATE") {
                            failure = Some(error.to_string());
                            done.push(work(None));
                            break;
                        }
                        in_transaction = true;
                    }
                    match run_write(&conn, &mut hot, &mut notices, work) {
                        Ok(job_done) => done.push(job_done),
                        Err(error) => {
                            // The savepoint itself failed: the transaction is unusable.
                            failure = Some(error.to_string());
                            break;
                        }
                    }
                }
            }
            if done.len() >= MAX_BATCH {
                break;
            }
            next = jobs.try_recv().ok();
        }
        if in_transaction && failure.is_none() {
            if let Err(error) = exec(&conn, "COMMIT") {
                failure = Some(error.to_string());
            }
        }
        if let Some(error) = &failure {
            tracing::error!(%error, jobs = done.len(), "store transaction failed; its jobs are answered with an error");
            if in_transaction {
                let _ = exec(&conn, "ROLLBACK");
            }
            hot.clear();
            notices.clear();
        }
        for job in done {
            (job.answer)(failure.as_deref());
        }
        changes.emit(&notices);
        notices.clear();
        for work in reads {
            let mut ctx = Ctx {
                conn: &conn,
                hot: &mut hot,
                notices: &mut notices,
            };
            let done = match std::panic::catch_unwind(AssertUnwindSafe(|| work(Some(&mut ctx)))) {
                Ok(done) => done,
                Err(_) => {
                    tracing::error!("a store read panicked");
                    hot.clear();
                    continue;
                }
            };
            (done.answer)(None);
        }
        // Reads change nothing worth telling.
        notices.clear();
        if failure.is_some() {
            // Give a failing disk a moment before the next batch hits it.
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
