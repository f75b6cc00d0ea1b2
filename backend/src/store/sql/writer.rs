//! The store's single writer: one OS thread that owns the write connection and the
//! [`Hot`] picture, and commits whatever is queued as one transaction (group commit).
//!
//! Every write of the store is a job: a closure over [`Ctx`] (the connection inside an
//! open transaction, the picture, the notices to send). The writer takes the first job
//! from its bounded queue, then every job already waiting behind it (never sleeping to
//! gather more), runs each in its own `SAVEPOINT` (a job that fails is rolled back alone
//! and answers its error), and commits once. Placements are jobs of their own kind
//! ([`Writer::place`]): those queued one after another run together, without savepoints
//! (`place::place_many`; on Postgres one statement for all of them). A commit that fails fails the whole batch and
//! drops the picture, which reloads from the database.
//!
//! Durability is pipelined: the commit writes the batch to the write-ahead log (so a kill
//! -9 can no longer lose it) and the writer goes on with the next batch, while the
//! flusher thread fsyncs the log and only then answers the batch's jobs and tells its
//! notices. An answer therefore means "on disk", as with `synchronous = FULL`, but one
//! fsync serves every batch committed before it, and the writer never waits for the disk.
//!
//! Read jobs ([`Writer::read`]) skip the queue: they wait in a list of their own and run
//! right after the batch in progress commits (not behind every write queued before them:
//! a reconciler's zone summary or an agent's desired state does not wait for thousands of
//! placements), so what they read of the picture is committed (but perhaps not yet
//! synced: a waiter may hear of a change a moment before its author does).

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::store::db::Conn;
use tokio::sync::{mpsc, oneshot};

use super::leases::Fenced;
use super::place;
use crate::changes::{Changes, Notice};
use crate::leases::Lease;
use crate::store::hot::Hot;
use crate::store::{PlaceArgs, PlaceOutcome};
use crate::{Error, Result};

/// Most jobs one transaction takes: a bound on how long the first of them waits.
const MAX_BATCH: usize = 256;

/// A job that takes longer than this is logged: every write waits for it.
const SLOW_JOB: std::time::Duration = std::time::Duration::from_millis(20);

/// Jobs that may wait in the queue. A full queue is back-pressure: placements are
/// answered `Overloaded` (a 429 with `Retry-After`) instead of queueing without bound.
pub const QUEUE_CAPACITY: usize = 16 * 1024;

/// What a job sees: the connection (inside the batch's transaction for writes), the
/// picture, and the notices to send once the batch commits. A job refuses (a 4xx error)
/// before it changes the picture, never after: see [`doubtful`].
pub struct Ctx<'a> {
    pub conn: &'a Conn,
    pub hot: &'a mut Hot,
    notices: &'a mut Vec<Notice>,
    /// The zone lease the job was made under (a reconciler's write): see
    /// [`super::leases::fence`].
    pub lease: Option<Lease>,
    /// The zones whose lease rows this batch's transaction has locked.
    pub fenced: &'a mut Fenced,
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
    /// It failed with an error that may have come after it changed the picture (a
    /// statement failed, not a refusal): the picture is dropped with its changes.
    doubt: bool,
    answer: Answer,
}

/// Whether a job's error may have left the picture ahead of the database. A job refuses
/// (not found, conflict, invalid, no capacity…) only before it changes the picture, so
/// after a refusal the picture still matches what its savepoint rolled back to; any other
/// error drops the picture, which reloads from the database.
fn doubtful(error: &Error) -> bool {
    !matches!(
        error,
        Error::Invalid { .. }
            | Error::BadRequest { .. }
            | Error::NotFound { .. }
            | Error::Conflict { .. }
            | Error::NoCapacity { .. }
            | Error::Unauthorized
            | Error::PayloadTooLarge { .. }
            | Error::Overloaded { .. }
            | Error::LeaseLost { .. }
            | Error::Unavailable { .. }
    )
}

/// A job's closure: run with the context, or (`None`) answered with the batch's failure
/// without running.
type Work = Box<dyn FnOnce(Option<&mut Ctx<'_>>) -> Done + Send>;

enum Job {
    /// A write in its own savepoint.
    Write(Work),
    /// A write without a savepoint: see [`Writer::write_plain`].
    Plain(Work),
    /// A placement: run with the placements queued beside it, see [`Writer::place`].
    Place(Placement),
    /// Reads are waiting in [`Writer::reads`]: wakes an idle writer.
    Reads,
}

/// A placement waiting in the queue.
struct Placement {
    args: PlaceArgs,
    answer: oneshot::Sender<Result<PlaceOutcome>>,
}

/// Read jobs waiting for the end of the batch in progress.
type Reads = Arc<Mutex<Vec<Work>>>;

/// The handle every store method writes through.
#[derive(Clone)]
pub struct Writer {
    queue: mpsc::Sender<Job>,
    reads: Reads,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("queued", &(QUEUE_CAPACITY - self.queue.capacity()))
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Job::Write(_) => "Job::Write",
            Job::Plain(_) => "Job::Plain",
            Job::Place(_) => "Job::Place",
            Job::Reads => "Job::Reads",
        })
    }
}

fn work<T: Send + 'static>(
    f: impl FnOnce(&mut Ctx<'_>) -> Result<T> + Send + 'static,
) -> (Work, oneshot::Receiver<Result<T>>) {
    let (sender, receiver) = oneshot::channel();
    // Which store method this job is for: the closure's type names it.
    let name = std::any::type_name_of_val(&f);
    // A reconciler's write carries the lease of its zone (a task-local of its pass).
    let lease = crate::leases::current();
    let work: Work = Box::new(move |ctx| match ctx {
        Some(ctx) => {
            let started = std::time::Instant::now();
            let cpu_before = thread_cpu();
            ctx.lease = lease;
            let result = f(ctx);
            ctx.lease = None;
            let took = started.elapsed();
            if took >= SLOW_JOB {
                // CPU time well below the wall time: the writer was waiting for a core
                // (the machine is short of CPU), not working.
                tracing::warn!(
                    job = name,
                    took_ms = took.as_secs_f64() * 1000.0,
                    cpu_ms = thread_cpu().saturating_sub(cpu_before).as_secs_f64() * 1000.0,
                    "slow store job: it held up every other write"
                );
            }
            finished(name, result, sender)
        }
        None => unrun(sender),
    });
    (work, receiver)
}

/// A job's outcome, answered once its batch commits (or with the batch's failure).
fn finished<T: Send + 'static>(
    name: &str,
    result: Result<T>,
    sender: oneshot::Sender<Result<T>>,
) -> Done {
    let doubt = result.as_ref().err().is_some_and(doubtful);
    if let (true, Err(error)) = (doubt, &result) {
        tracing::warn!(job = name, %error, "a store job failed, perhaps after it changed the writer's picture: the picture is dropped and reloaded");
    }
    Done {
        ok: result.is_ok(),
        doubt,
        answer: Box::new(move |commit_error| {
            let _ = sender.send(match commit_error {
                None => result,
                Some(error) => Err(Error::Internal(format!("store commit failed: {error}"))),
            });
        }),
    }
}

/// A job that did not run: answered with its batch's failure.
fn unrun<T: Send + 'static>(sender: oneshot::Sender<Result<T>>) -> Done {
    Done {
        ok: false,
        doubt: false,
        answer: Box::new(move |error| {
            let _ = sender.send(Err(Error::Internal(format!(
                "store transaction failed: {}",
                error.unwrap_or("unknown error")
            ))));
        }),
    }
}

/// The CPU time the calling thread has used.
fn thread_cpu() -> std::time::Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given, which lives on this stack.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) } != 0 {
        return std::time::Duration::ZERO;
    }
    std::time::Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

async fn answer<T>(receiver: oneshot::Receiver<Result<T>>) -> Result<T> {
    receiver
        .await
        .unwrap_or_else(|_| Err(Error::Internal("the store's writer dropped a job".into())))
}

impl Writer {
    /// Starts the writer thread on `conn` (which commits without syncing: the flusher
    /// thread fsyncs `wal_path`, the database's write-ahead log, before any job is
    /// answered); both stop when the last handle is dropped.
    ///
    /// With an `origin` (Postgres), each batch's notices are also sent to the other
    /// replicas, in its transaction (see `notify`).
    ///
    /// With `reconnect`, a connection that broke (Postgres restarted) is replaced before
    /// the next batch, and the picture reloads.
    pub fn spawn(
        conn: Conn,
        wal_path: Option<PathBuf>,
        changes: Changes,
        origin: Option<String>,
        reconnect: Option<Reconnect>,
    ) -> Result<Writer> {
        let (queue, jobs) = mpsc::channel(QUEUE_CAPACITY);
        let reads = Reads::default();
        let (flusher, batches) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("store-flusher".into())
            .spawn(move || flush(wal_path, batches, changes))
            .map_err(|e| Error::Internal(format!("start the store flusher: {e}")))?;
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn({
                let reads = reads.clone();
                move || run(conn, jobs, &reads, flusher, origin, reconnect)
            })
            .map_err(|e| Error::Internal(format!("start the store writer: {e}")))?;
        Ok(Writer { queue, reads })
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

    /// Like [`Writer::write`] but without a savepoint of its own (the hot path: a
    /// savepoint copies every page the job touches), and a full queue answers
    /// [`Error::Overloaded`] at once. For jobs whose every statement is atomic on its own
    /// and that return an error only before their first change, or after undoing it: a
    /// job that fails after changing a row fails its whole batch (rolled back, every job
    /// answered with the error), so nothing half-done is ever committed.
    pub async fn write_plain<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Ctx<'_>) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (work, receiver) = work(f);
        self.send_now(Job::Plain(work))?;
        answer(receiver).await
    }

    /// Places a session. Like [`Writer::write_plain`] (no savepoint; a full queue answers
    /// [`Error::Overloaded`]), and the placements queued one after another run together
    /// ([`place::place_many`]: on Postgres one statement for all of them).
    pub async fn place(&self, args: PlaceArgs) -> Result<PlaceOutcome> {
        let (reply, receiver) = oneshot::channel();
        self.send_now(Job::Place(Placement {
            args,
            answer: reply,
        }))?;
        answer(receiver).await
    }

    /// Queues a job without waiting for room: a full queue is [`Error::Overloaded`].
    fn send_now(&self, job: Job) -> Result<()> {
        self.queue.try_send(job).map_err(|error| match error {
            mpsc::error::TrySendError::Full(_) => Error::Overloaded {
                retry_after_secs: 1,
            },
            mpsc::error::TrySendError::Closed(_) => {
                Error::Internal("the store's writer has stopped".into())
            }
        })
    }

    /// Runs `f` on the writer after the current batch, outside a transaction, without
    /// waiting for it (from a thread outside the runtime): the picture brought up to what
    /// another replica changed.
    pub fn refresh(&self, f: impl FnOnce(&mut Ctx<'_>) -> Result<()> + Send + 'static) {
        let (work, _answer) = work(f);
        self.reads.lock().expect("reads lock").push(work);
        let _ = self.queue.try_send(Job::Reads);
    }

    /// Runs `f` on the writer after the current batch commits, outside a transaction: a
    /// read of the committed picture (it may load parts of it from the database).
    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Ctx<'_>) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (work, receiver) = work(f);
        self.reads.lock().expect("reads lock").push(work);
        // The wake-up for an idle writer; a full queue needs none (the writer is busy,
        // and takes the reads after its batch).
        if let Err(mpsc::error::TrySendError::Closed(_)) = self.queue.try_send(Job::Reads) {
            return Err(Error::Internal("the store's writer has stopped".into()));
        }
        answer(receiver).await
    }
}

fn exec(conn: &Conn, sql: &str) -> std::result::Result<(), crate::store::db::DbError> {
    conn.batch(sql)
}

/// Runs one write job, in its savepoint unless it is `plain`.
fn run_write(
    conn: &Conn,
    hot: &mut Hot,
    notices: &mut Vec<Notice>,
    fenced: &mut Fenced,
    work: Work,
    plain: bool,
) -> Result<Done> {
    if !plain {
        exec(conn, "SAVEPOINT job")?;
    }
    let changes_before = conn.total_changes();
    let errors_before = conn.total_errors();
    let mark = notices.len();
    let fenced_mark = fenced.mark();
    let outcome = {
        let mut ctx = Ctx {
            conn,
            hot: &mut *hot,
            notices: &mut *notices,
            lease: None,
            fenced: &mut *fenced,
        };
        std::panic::catch_unwind(AssertUnwindSafe(|| work(Some(&mut ctx))))
    };
    let done = match outcome {
        Ok(done) if done.ok => {
            if !plain {
                exec(conn, "RELEASE job")?;
            }
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
                doubt: true,
                answer: Box::new(|_| {}),
            }
        }
    };
    notices.truncate(mark);
    // Its savepoint's rollback gave back the lease rows it locked.
    fenced.truncate(fenced_mark);
    if done.doubt {
        hot.clear();
    }
    if plain {
        if conn.total_changes() != changes_before || conn.total_errors() != errors_before {
            // Nothing to roll it back to: the batch goes, and with it this job's changes
            // (and on Postgres a failed statement has aborted the transaction).
            return Err(Error::Internal(
                "a store job failed after changing rows; its batch is rolled back".into(),
            ));
        }
        return Ok(done);
    }
    exec(conn, "ROLLBACK TO job")?;
    exec(conn, "RELEASE job")?;
    Ok(done)
}

/// Opens the batch's transaction unless it is open.
fn begin(conn: &Conn, in_transaction: &mut bool) -> std::result::Result<(), String> {
    if !*in_transaction {
        exec(conn, conn.dialect().begin()).map_err(|error| error.to_string())?;
        *in_transaction = true;
    }
    Ok(())
}

/// Opens the batch's transaction unless it is open, then runs the placements gathered so
/// far (answered with the failure when the transaction cannot be opened).
fn open_and_place(
    conn: &Conn,
    in_transaction: &mut bool,
    hot: &mut Hot,
    notices: &mut Vec<Notice>,
    fenced: &mut Fenced,
    places: &mut Vec<Placement>,
    done: &mut Vec<Done>,
) -> std::result::Result<(), String> {
    let gathered = std::mem::take(places);
    if let Err(error) = begin(conn, in_transaction) {
        done.extend(gathered.into_iter().map(|p| unrun(p.answer)));
        return Err(error);
    }
    run_places(conn, hot, notices, fenced, gathered, done)
}

/// Runs placements queued one after another ([`place::place_many`]), without savepoints:
/// each one's refusal is its own, but a failed statement (or a panic) fails the batch —
/// then `Err`, and every placement is answered with the batch's failure.
fn run_places(
    conn: &Conn,
    hot: &mut Hot,
    notices: &mut Vec<Notice>,
    fenced: &mut Fenced,
    places: Vec<Placement>,
    done: &mut Vec<Done>,
) -> std::result::Result<(), String> {
    if places.is_empty() {
        return Ok(());
    }
    let (args, answers): (Vec<PlaceArgs>, Vec<_>) =
        places.into_iter().map(|p| (p.args, p.answer)).unzip();
    let count = args.len();
    let errors_before = conn.total_errors();
    let started = std::time::Instant::now();
    let outcome = {
        let mut ctx = Ctx {
            conn,
            hot: &mut *hot,
            notices: &mut *notices,
            lease: None,
            fenced: &mut *fenced,
        };
        std::panic::catch_unwind(AssertUnwindSafe(|| place::place_many(&mut ctx, args)))
    };
    let took = started.elapsed();
    if took >= SLOW_JOB {
        tracing::warn!(
            placements = count,
            took_ms = took.as_secs_f64() * 1000.0,
            "slow placements: they held up every other write"
        );
    }
    let failed = match outcome {
        // On Postgres a failed statement aborts the transaction, whoever answered it.
        Ok(Ok(results)) if conn.total_errors() == errors_before => {
            for zone in hot.zones.values_mut() {
                if zone.take_capacity_gained() {
                    notices.push(Notice::Capacity {
                        zone_id: zone.id().to_string(),
                    });
                }
            }
            for (result, answer) in results.into_iter().zip(answers) {
                let job = finished("place_session", result, answer);
                if job.doubt {
                    hot.clear();
                }
                done.push(job);
            }
            return Ok(());
        }
        Ok(Ok(results)) => {
            let error = results.into_iter().find_map(|result| result.err());
            format!(
                "a placement's statement failed ({}); its batch is rolled back",
                error.map_or_else(|| "unknown error".to_string(), |e| e.to_string())
            )
        }
        Ok(Err(error)) => format!("placements failed: {error}"),
        Err(_) => {
            tracing::error!("a placement panicked; its batch is rolled back");
            "a placement panicked".to_string()
        }
    };
    hot.clear();
    done.extend(answers.into_iter().map(unrun));
    Err(failed)
}

/// A committed batch on its way to the flusher: its answers and notices wait for the
/// fsync that makes it durable.
struct Flush {
    done: Vec<Done>,
    notices: Vec<Notice>,
    failure: Option<String>,
    /// It committed a transaction (not only failed, or read).
    committed: bool,
}

/// The flusher: fsyncs the write-ahead log after the writer's commits and only then
/// answers their jobs and tells their notices. One fsync covers every batch committed
/// before it began (the writer goes on with the next batch meanwhile), so the disk's
/// latency is paid once per round of commits, beside the writer instead of inside it.
fn flush(wal_path: Option<PathBuf>, batches: std::sync::mpsc::Receiver<Flush>, changes: Changes) {
    let mut wal: Option<std::fs::File> = None;
    while let Ok(first) = batches.recv() {
        let mut pending = vec![first];
        pending.extend(batches.try_iter());
        let sync_error = if pending.iter().any(|b| b.committed && b.failure.is_none()) {
            // Postgres commits durably itself; SQLite's log is synced here.
            wal_path
                .as_deref()
                .and_then(|path| sync_wal(path, &mut wal).err())
        } else {
            None
        };

        if let Some(error) = &sync_error {
            tracing::error!(%error, "fsync of the write-ahead log failed; its batches are answered with an error");
        }
        for batch in pending {
            let failure = batch.failure.or_else(|| sync_error.clone());
            for job in batch.done {
                (job.answer)(failure.as_deref());
            }
            if failure.is_none() {
                changes.emit(&batch.notices);
            }
        }
    }
}

/// fdatasync of the WAL file (opened again if SQLite replaced it).
fn sync_wal(path: &Path, wal: &mut Option<std::fs::File>) -> std::result::Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let current = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let stale = wal
        .as_ref()
        .and_then(|file| file.metadata().ok())
        .is_none_or(|open| open.ino() != current.ino() || open.dev() != current.dev());
    if stale {
        *wal = Some(std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?);
    }
    wal.as_ref()
        .expect("opened above")
        .sync_data()
        .map_err(|e| format!("fsync {}: {e}", path.display()))
}

/// Opens a new connection for the writer.
pub type Reconnect = Box<dyn Fn() -> Result<Conn> + Send>;

fn run(
    mut conn: Conn,
    mut jobs: mpsc::Receiver<Job>,
    reads: &Mutex<Vec<Work>>,
    flusher: std::sync::mpsc::Sender<Flush>,
    origin: Option<String>,
    reconnect: Option<Reconnect>,
) {
    let mut hot = Hot::default();
    let mut notices: Vec<Notice> = Vec::new();
    let mut fenced = Fenced::default();
    while let Some(first) = jobs.blocking_recv() {
        if let (true, Some(reconnect)) = (conn.is_broken(), &reconnect) {
            // One try per batch: while the database is away, batches fail fast.
            match reconnect() {
                Ok(fresh) => {
                    tracing::info!("the store's writer reconnected to the database");
                    conn = fresh;
                    hot.clear();
                }
                Err(error) => {
                    tracing::warn!(%error, "the store's writer cannot reconnect");
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
            }
        }
        let mut done: Vec<Done> = Vec::new();
        let mut failure: Option<String> = None;
        let mut in_transaction = false;
        // Placements gathered until a job of another kind, or the batch's end.
        let mut places: Vec<Placement> = Vec::new();
        let mut next = Some(first);
        while let Some(job) = next.take() {
            let (work, plain) = match job {
                Job::Reads => {
                    // They run after this batch, whatever its size.
                    next = jobs.try_recv().ok();
                    continue;
                }
                Job::Place(placement) => {
                    places.push(placement);
                    if done.len() + places.len() >= MAX_BATCH {
                        break;
                    }
                    next = jobs.try_recv().ok();
                    continue;
                }
                Job::Write(work) => (work, false),
                Job::Plain(work) => (work, true),
            };
            // The transaction, and in it the placements queued before this job.
            if let Err(error) = open_and_place(
                &conn,
                &mut in_transaction,
                &mut hot,
                &mut notices,
                &mut fenced,
                &mut places,
                &mut done,
            ) {
                failure = Some(error);
                done.push(work(None));
                break;
            }
            match run_write(&conn, &mut hot, &mut notices, &mut fenced, work, plain) {
                Ok(job_done) => done.push(job_done),
                Err(error) => {
                    // The savepoint itself failed, or a plain job failed half-way: the
                    // transaction goes.
                    failure = Some(error.to_string());
                    break;
                }
            }
            if done.len() >= MAX_BATCH {
                break;
            }
            next = jobs.try_recv().ok();
        }
        if !places.is_empty() {
            if failure.is_some() {
                done.extend(places.drain(..).map(|p| unrun(p.answer)));
            } else if let Err(error) = open_and_place(
                &conn,
                &mut in_transaction,
                &mut hot,
                &mut notices,
                &mut fenced,
                &mut places,
                &mut done,
            ) {
                failure = Some(error);
            }
        }
        // The commit (or rollback) ends the lease rows' locks.
        fenced.clear();
        if let (Some(origin), true, None) = (&origin, in_transaction, &failure) {
            if !notices.is_empty() {
                if let Err(error) = super::notify::send(&conn, origin, &notices) {
                    failure = Some(error.to_string());
                }
            }
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
        if in_transaction || !done.is_empty() {
            let batch = Flush {
                done,
                notices: std::mem::take(&mut notices),
                committed: in_transaction,
                failure,
            };
            if let Err(std::sync::mpsc::SendError(batch)) = flusher.send(batch) {
                for job in batch.done {
                    (job.answer)(Some("the store's flusher has stopped"));
                }
            }
        }
        let waiting = std::mem::take(&mut *reads.lock().expect("reads lock"));
        for work in waiting {
            let mut ctx = Ctx {
                conn: &conn,
                hot: &mut hot,
                notices: &mut notices,
                lease: None,
                fenced: &mut fenced,
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn writer() -> (tempfile::TempDir, Writer) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        let wal = PathBuf::from(format!("{}-wal", path.display()));
        (
            dir,
            Writer::spawn(
                Conn::Sqlite(conn),
                Some(wal),
                Changes::default(),
                None,
                None,
            )
            .unwrap(),
        )
    }

    /// Marks the picture (a machine of zone `z`), then fails with `error`.
    async fn mark_then_fail(writer: &Writer, error: Error) -> bool {
        let outcome = writer
            .write(move |ctx| -> Result<()> {
                ctx.hot.machine_zone.insert("mch-1".into(), "z".into());
                Err(error)
            })
            .await;
        assert!(outcome.is_err());
        writer
            .read(|ctx| Ok(ctx.hot.machine_zone.contains_key("mch-1")))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_failed_statement_drops_the_picture() {
        let (_dir, writer) = writer().await;
        let error = Error::Internal("disk I/O error".into());
        assert!(
            !mark_then_fail(&writer, error).await,
            "the picture kept a change its transaction rolled back"
        );
    }

    /// A read waits for the batch in progress, not for every write queued before it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_skips_the_queue() {
        let (_dir, writer) = writer().await;
        let mark = |ctx: &mut Ctx<'_>, i: usize| {
            ctx.hot.machine_zone.insert(format!("mch-{i}"), "z".into());
        };
        // The first write holds the writer until every other job is queued.
        let (release, held) = std::sync::mpsc::channel::<()>();
        let (running, started) = oneshot::channel::<()>();
        let first = tokio::spawn({
            let writer = writer.clone();
            async move {
                writer
                    .write(move |ctx| {
                        let _ = running.send(());
                        held.recv().expect("released");
                        mark(ctx, 0);
                        Ok(())
                    })
                    .await
            }
        });
        started.await.unwrap();
        let queued = 3 * MAX_BATCH;
        let mut writes = Vec::new();
        for i in 1..=queued {
            let writer = writer.clone();
            writes.push(tokio::spawn(async move {
                writer
                    .write(move |ctx| {
                        mark(ctx, i);
                        Ok(())
                    })
                    .await
            }));
        }
        while writer.queue.capacity() > QUEUE_CAPACITY - queued {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let read = tokio::spawn({
            let writer = writer.clone();
            async move { writer.read(|ctx| Ok(ctx.hot.machine_zone.len())).await }
        });
        while writer.reads.lock().unwrap().is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        release.send(()).unwrap();
        let seen = read.await.unwrap().unwrap();
        assert!(
            seen <= 1 + MAX_BATCH,
            "the read waited for {seen} writes: it queued behind them"
        );
        first.await.unwrap().unwrap();
        for write in writes {
            write.await.unwrap().unwrap();
        }
    }

    #[tokio::test]
    async fn a_refusal_keeps_the_picture() {
        let (_dir, writer) = writer().await;
        // A refusal comes before any change: the picture stays (and is not reloaded).
        let refusal = Error::not_found("fleet", "flt-1");
        assert!(mark_then_fail(&writer, refusal).await);
    }
}
