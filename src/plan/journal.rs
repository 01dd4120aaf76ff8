//! The plan journal: a SQLite database in the state directory that records every work plan
//! before work on it starts and its result before the result is printed, so that a supervisor
//! started again on the same directory loses nothing and repeats nothing.
//!
//! One OS thread owns the [`rusqlite::Connection`]. The async [`Journal`] handle sends it
//! requests over a channel and awaits oneshot replies. The thread *group-commits*: it takes
//! every request already queued (up to [`MAX_BATCH`]) into one transaction and replies to all
//! of them after the single fsync of its commit, so plans arriving quickly cost one fsync per
//! batch rather than one each.
//!
//! Each plan is one row, keyed by its id, that moves through three states:
//!
//! * *unfinished* — accepted; the row holds the plan's body;
//! * *finished* — its result is recorded and the body is cleared to keep the row small;
//! * *emitted* — the result has been written to stdout, or to the connection of the client
//!   that submitted the plan.
//!
//! A plan handed in through the control socket (`mnemosyne submit`) is marked *submitted*. Its
//! result belongs to its submitter alone: it is never printed on a later run's stdout, and it
//! stays unemitted (so compaction keeps it) until a client submits that id again and is
//! answered from the journal.
//!
//! A finished result may be *retryable*: the plan failed because of its surroundings (no
//! usable agent, a rejected key), not because of what it asks. Offering its id again then
//! replaces the row with the new body instead of replaying the result, so the plan runs again.
//!
//! Compaction deletes the oldest emitted rows beyond [`JournalSettings::retain_finished`]. Once
//! a row is gone the journal no longer knows its id, so a plan with that id submitted later
//! runs again. Unfinished and unemitted rows are never deleted.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use rusqlite::types::Type;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use tokio::sync::oneshot;

use super::statedir::StateDir;

/// The journal's file name inside the state directory.
pub const JOURNAL_FILE: &str = "journal.sqlite3";

/// The most requests the journal thread puts into one transaction. Large enough that a burst
/// of plans costs few fsyncs, small enough that the first caller in a batch is not kept waiting
/// long by the ones behind it.
pub const MAX_BATCH: usize = 512;

/// How long a statement waits for another connection to the same file to let go.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The schema this code reads and writes, stored in `PRAGMA user_version`. Version 0 is a new,
/// empty database; version 1 lacks the `submitted` and `retryable` columns, which opening
/// adds.
const SCHEMA_VERSION: i64 = 2;

/// Whether a finished row's result may be replaced by running the plan again; only a finished
/// row can be retryable. Shared by the schema and the migration from version 1.
const RETRYABLE_COLUMN: &str = "retryable INTEGER NOT NULL DEFAULT 0
        CHECK (retryable IN (0, 1) AND (retryable = 0 OR result IS NOT NULL))";

/// The CHECK constraints spell out the three states of the module documentation, so that a bug
/// here cannot store a row that is, say, finished and still holding its body.
const SCHEMA: &str = "
    CREATE TABLE plans (
        seq          INTEGER PRIMARY KEY,
        id           TEXT    NOT NULL UNIQUE,
        body         TEXT,
        result       TEXT,
        finished_seq INTEGER UNIQUE,
        emitted      INTEGER NOT NULL DEFAULT 0,
        submitted    INTEGER NOT NULL DEFAULT 0 CHECK (submitted IN (0, 1)),
        {RETRYABLE_COLUMN},
        CHECK ((body IS NULL) <> (result IS NULL)),
        CHECK ((result IS NULL) = (finished_seq IS NULL)),
        CHECK (emitted IN (0, 1) AND (emitted = 0 OR result IS NOT NULL))
    );
";

/// Version 1 lacked `submitted`; every plan it holds came from stdin.
const MIGRATE_FROM_1: &str = "
    ALTER TABLE plans ADD COLUMN submitted INTEGER NOT NULL DEFAULT 0 CHECK (submitted IN (0, 1));
";

/// How much history the journal keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalSettings {
    /// At most this many finished and emitted plans are kept, so that a resubmitted plan with
    /// one of their ids is answered from the journal instead of being run again.
    pub retain_finished: usize,
    /// Compaction runs after this many finishes (and once at open); 0 means only at open.
    pub compact_every: usize,
}

impl Default for JournalSettings {
    fn default() -> Self {
        JournalSettings {
            retain_finished: 100_000,
            compact_every: 10_000,
        }
    }
}

/// What the journal says about a plan offered to [`Journal::accept`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Not seen before; it is now recorded as unfinished and should be run.
    New,
    /// A plan with this id already finished; here is its stored result, and it must not run
    /// again. (A finished plan whose result is retryable is [`Admission::New`] instead.)
    AlreadyFinished { result: String },
    /// An unfinished plan with this id is already recorded: resumed from a previous run, or a
    /// duplicate submitted earlier in this one.
    InProgress,
}

/// What a previous supervisor left in the journal, as returned by [`Journal::open`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Plans accepted but not finished, in acceptance order: run them.
    pub unfinished: Vec<StoredPlan>,
    /// Results recorded but never marked emitted, in finish order: print them. Results of
    /// submitted plans are not among them; they wait for their submitter.
    pub unemitted: Vec<StoredResult>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPlan {
    pub id: String,
    pub body: String,
    /// Orders plans by acceptance. Only the order means anything, not the numbers.
    pub accepted_seq: u64,
    /// Handed in through the control socket: its result goes to no stdout.
    pub submitted: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResult {
    pub id: String,
    pub result: String,
}

/// Counters of the journal thread, for tests and status output.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JournalStats {
    /// Transactions committed by the thread (one per group commit).
    pub commits: u64,
    /// Compactions run by the thread, not counting the one at open.
    pub compactions: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot open journal {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "journal {path} has schema version {found}, newer than version {SCHEMA_VERSION} that this supervisor understands"
    )]
    NewerSchema { path: PathBuf, found: i64 },
    #[error("journal {path} cannot use write-ahead logging (sqlite chose journal mode {mode})")]
    NoWal { path: PathBuf, mode: String },
    #[error("cannot start the thread for journal {path}")]
    Thread {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// One failed transaction answers every request in it, hence the shared source.
    #[error("cannot write to journal {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: Arc<rusqlite::Error>,
    },
    #[error("journal {path} is closed")]
    Closed { path: PathBuf },
}

/// A cloneable handle to the journal thread. The thread stops when [`Journal::close`] is
/// called or the last handle is dropped, in both cases after finishing the work already
/// queued.
///
/// The journal does not hold the state directory's lock: keep the [`StateDir`] alive for as
/// long as the journal is used.
///
/// Ids are stored verbatim, whatever their characters; limiting their length (256 characters)
/// is the job of plan validation.
#[derive(Debug, Clone)]
pub struct Journal {
    requests: mpsc::Sender<Request>,
    path: Arc<Path>,
}

impl Journal {
    /// Opens (creating) `journal.sqlite3` in the locked state directory, compacts it, and
    /// returns what a previous run left: plans accepted but not finished (in acceptance order)
    /// and results recorded but never marked emitted (in finish order).
    pub fn open(
        dir: &StateDir,
        settings: JournalSettings,
    ) -> Result<(Journal, Recovery), JournalError> {
        let path = dir.path().join(JOURNAL_FILE);
        let open_error = |source| JournalError::Open {
            path: path.clone(),
            source,
        };
        let conn = Connection::open(&path).map_err(open_error)?;
        configure(&conn, &path)?;
        let recovery = recover(&conn).map_err(open_error)?;
        let last_finished_seq = conn
            .query_row(
                "SELECT COALESCE(MAX(finished_seq), 0) FROM plans",
                [],
                |row| row.get(0),
            )
            .map_err(open_error)?;
        let path: Arc<Path> = path.into();
        let mut writer = Writer {
            conn,
            path: path.clone(),
            settings,
            last_finished_seq,
            finishes_since_compaction: 0,
            synchronous_full: true,
            stats: JournalStats::default(),
        };
        let deleted = writer.compact().map_err(|source| JournalError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        tracing::debug!(
            journal = %path.display(),
            unfinished = recovery.unfinished.len(),
            unemitted = recovery.unemitted.len(),
            deleted,
            "journal opened"
        );

        let (requests, queue) = mpsc::channel();
        std::thread::Builder::new()
            .name("journal".to_owned())
            .spawn(move || writer.run(queue))
            .map_err(|source| JournalError::Thread {
                path: path.to_path_buf(),
                source,
            })?;
        Ok((Journal { requests, path }, recovery))
    }

    /// Durably records plans, given as `(id, plan JSON)`, before work on them starts: the
    /// future completes after the fsynced commit that holds them. Answers each input, in
    /// order, with [`Admission::New`] (now recorded as unfinished),
    /// [`Admission::AlreadyFinished`] or [`Admission::InProgress`].
    ///
    /// The request is queued when this is called, not when the future is first polled, so
    /// requests reach the journal in the order of the calls.
    pub fn accept(
        &self,
        plans: Vec<(String, String)>,
    ) -> impl Future<Output = Result<Vec<Admission>, JournalError>> + Send + 'static {
        self.request(|reply| {
            Request::Write(Write::Accept {
                plans,
                submitted: false,
                reply,
            })
        })
    }

    /// [`Journal::accept`] for plans handed in through the control socket: their rows are
    /// marked submitted, so that their results are never among [`Recovery::unemitted`].
    pub fn accept_submitted(
        &self,
        plans: Vec<(String, String)>,
    ) -> impl Future<Output = Result<Vec<Admission>, JournalError>> + Send + 'static {
        self.request(|reply| {
            Request::Write(Write::Accept {
                plans,
                submitted: true,
                reply,
            })
        })
    }

    /// Durably records a plan's result (the JSON line that will be printed) and clears its
    /// body. Idempotent: a second result for the same id is ignored and the first kept. A
    /// result for an id that was never accepted is recorded too, so it is still emitted after
    /// a crash. A `retryable` result does not stop the id from being accepted (and run) again.
    pub fn finish(
        &self,
        id: String,
        result: String,
        retryable: bool,
    ) -> impl Future<Output = Result<(), JournalError>> + Send + 'static {
        self.request(move |reply| {
            Request::Write(Write::Finish {
                id,
                result,
                retryable,
                reply,
            })
        })
    }

    /// Records that these plans' results were written to stdout. Unknown or unfinished ids
    /// are ignored. Committed without fsync: a WAL commit survives the process being
    /// SIGKILLed right after, and after a power loss a result may at worst be printed twice.
    pub fn mark_emitted(
        &self,
        ids: Vec<String>,
    ) -> impl Future<Output = Result<(), JournalError>> + Send + 'static {
        self.request(|reply| Request::Write(Write::MarkEmitted { ids, reply }))
    }

    /// The journal thread's counters, read after the requests queued before this call.
    pub fn stats(
        &self,
    ) -> impl Future<Output = Result<JournalStats, JournalError>> + Send + 'static {
        let (reply, answer) = oneshot::channel();
        let sent = self.requests.send(Request::Stats(reply));
        let path = self.path.clone();
        async move {
            sent.map_err(|_| closed(&path))?;
            answer.await.map_err(|_| closed(&path))
        }
    }

    /// Stops the thread after it has finished the requests queued before this call, and
    /// closes the database. Requests made later through other handles fail with
    /// [`JournalError::Closed`].
    pub async fn close(self) {
        let (reply, done) = oneshot::channel();
        if self.requests.send(Request::Close(reply)).is_ok() {
            // An error means the thread is already gone, which is what we want.
            let _ = done.await;
        }
    }

    /// Queues a write now and returns the future of its reply.
    fn request<T: Send + 'static>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, JournalError>>) -> Request,
    ) -> impl Future<Output = Result<T, JournalError>> + Send + 'static {
        let (reply, answer) = oneshot::channel();
        let sent = self.requests.send(make(reply));
        let path = self.path.clone();
        async move {
            sent.map_err(|_| closed(&path))?;
            answer.await.map_err(|_| closed(&path))?
        }
    }

    /// Stops the thread until `release` receives or is dropped, so a test can queue requests
    /// behind it and watch how they are batched.
    #[cfg(test)]
    fn hold(&self) -> mpsc::Sender<()> {
        let (release, held) = mpsc::channel();
        self.requests
            .send(Request::Hold(held))
            .expect("the journal thread is running");
        release
    }
}

fn closed(path: &Path) -> JournalError {
    JournalError::Closed {
        path: path.to_path_buf(),
    }
}

/// Sets the journal mode and brings the schema up to date.
fn configure(conn: &Connection, path: &Path) -> Result<(), JournalError> {
    let open_error = |source| JournalError::Open {
        path: path.to_path_buf(),
        source,
    };
    // The state directory lock keeps other supervisors out, but a journal of this process
    // that was just dropped may still be closing its connection on its own thread.
    conn.busy_timeout(BUSY_TIMEOUT).map_err(open_error)?;
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .map_err(open_error)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(JournalError::NoWal {
            path: path.to_path_buf(),
            mode,
        });
    }
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(open_error)?;
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(open_error)?;
    match version {
        1 => conn
            .execute_batch(&format!(
                "BEGIN IMMEDIATE; {MIGRATE_FROM_1} ALTER TABLE plans ADD COLUMN {RETRYABLE_COLUMN}; \
                 PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
            ))
            .map_err(open_error),
        0 => conn
            .execute_batch(&format!(
                "BEGIN IMMEDIATE; {} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;",
                schema()
            ))
            .map_err(open_error),
        SCHEMA_VERSION => Ok(()),
        found => Err(JournalError::NewerSchema {
            path: path.to_path_buf(),
            found,
        }),
    }
}

fn schema() -> String {
    SCHEMA.replace("{RETRYABLE_COLUMN}", RETRYABLE_COLUMN)
}

fn recover(conn: &Connection) -> rusqlite::Result<Recovery> {
    let unfinished = conn
        .prepare("SELECT id, body, seq, submitted FROM plans WHERE result IS NULL ORDER BY seq")?
        .query_map([], |row| {
            Ok(StoredPlan {
                id: row.get(0)?,
                body: row.get(1)?,
                accepted_seq: u64::try_from(row.get::<_, i64>(2)?).map_err(|error| {
                    rusqlite::Error::FromSqlConversionFailure(2, Type::Integer, Box::new(error))
                })?,
                submitted: row.get(3)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    let unemitted = conn
        .prepare(
            "SELECT id, result FROM plans
             WHERE finished_seq IS NOT NULL AND emitted = 0 AND submitted = 0
             ORDER BY finished_seq",
        )?
        .query_map([], |row| {
            Ok(StoredResult {
                id: row.get(0)?,
                result: row.get(1)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok(Recovery {
        unfinished,
        unemitted,
    })
}

enum Request {
    Write(Write),
    Stats(oneshot::Sender<JournalStats>),
    Close(oneshot::Sender<()>),
    #[cfg(test)]
    Hold(mpsc::Receiver<()>),
}

/// A request that changes the database, with the sender of its reply.
enum Write {
    Accept {
        plans: Vec<(String, String)>,
        submitted: bool,
        reply: oneshot::Sender<Result<Vec<Admission>, JournalError>>,
    },
    Finish {
        id: String,
        result: String,
        retryable: bool,
        reply: oneshot::Sender<Result<(), JournalError>>,
    },
    MarkEmitted {
        ids: Vec<String>,
        reply: oneshot::Sender<Result<(), JournalError>>,
    },
}

impl Write {
    /// Whether the write must be fsynced before it is answered. Only marking results emitted
    /// may skip it: losing that mark to a power failure prints a result twice, never loses one.
    fn needs_fsync(&self) -> bool {
        !matches!(self, Write::MarkEmitted { .. })
    }

    /// Sends the outcome; `admissions` is only read by an accept. A caller that stopped
    /// waiting is no error: the write is on disk all the same.
    fn answer(self, outcome: Result<Vec<Admission>, JournalError>) {
        match self {
            Write::Accept { reply, .. } => {
                let _ = reply.send(outcome);
            }
            Write::Finish { reply, .. } | Write::MarkEmitted { reply, .. } => {
                let _ = reply.send(outcome.map(drop));
            }
        }
    }
}

/// The state of the journal thread, which alone touches the connection.
struct Writer {
    conn: Connection,
    path: Arc<Path>,
    settings: JournalSettings,
    /// The finish order of the newest finished row. Starting from the largest stored value
    /// keeps the order right across restarts; gaps left by rolled-back batches do no harm.
    last_finished_seq: i64,
    finishes_since_compaction: usize,
    /// The connection's current `synchronous` setting, to skip redundant pragmas.
    synchronous_full: bool,
    stats: JournalStats,
}

impl Writer {
    fn run(mut self, queue: mpsc::Receiver<Request>) {
        let mut closers = Vec::new();
        loop {
            // After a close, finish what is queued but wait for nothing more.
            let first = if closers.is_empty() {
                queue.recv().ok()
            } else {
                queue.try_recv().ok()
            };
            let Some(first) = first else { break };
            #[cfg(test)]
            if let Request::Hold(release) = first {
                let _ = release.recv();
                continue;
            }
            let mut batch = vec![first];
            batch.extend(queue.try_iter().take(MAX_BATCH - 1));

            let mut writes = Vec::with_capacity(batch.len());
            let mut stats = Vec::new();
            for request in batch {
                match request {
                    Request::Write(write) => writes.push(write),
                    Request::Stats(reply) => stats.push(reply),
                    Request::Close(reply) => closers.push(reply),
                    #[cfg(test)]
                    Request::Hold(release) => {
                        let _ = release.recv();
                    }
                }
            }
            self.write(writes);
            for reply in stats {
                let _ = reply.send(self.stats);
            }
        }
        // Closing the last connection checkpoints the WAL into the database and removes it.
        if let Err((_, error)) = self.conn.close() {
            tracing::warn!(
                journal = %self.path.display(),
                error = &error as &dyn std::error::Error,
                "cannot close the journal cleanly"
            );
        }
        for reply in closers {
            let _ = reply.send(());
        }
    }

    /// Commits `writes` as one transaction and answers them. If that fails, each write is
    /// retried in a transaction of its own, so that one bad request cannot fail the others.
    fn write(&mut self, writes: Vec<Write>) {
        if writes.is_empty() {
            return;
        }
        match self.commit(&writes) {
            Ok(admissions) => {
                for (write, admissions) in writes.into_iter().zip(admissions) {
                    write.answer(Ok(admissions));
                }
                if self.settings.compact_every > 0
                    && self.finishes_since_compaction >= self.settings.compact_every
                {
                    // A failed compaction loses nothing; the next one will try again.
                    match self.compact() {
                        Ok(_) => self.stats.compactions += 1,
                        Err(error) => tracing::warn!(
                            error = &error as &dyn std::error::Error,
                            "cannot compact the journal"
                        ),
                    }
                }
            }
            Err(error) if writes.len() > 1 => {
                tracing::warn!(
                    error = &error as &dyn std::error::Error,
                    requests = writes.len(),
                    "journal group commit failed; retrying its requests one by one"
                );
                for write in writes {
                    self.write(vec![write]);
                }
            }
            Err(error) => {
                let error = Arc::new(error);
                for write in writes {
                    write.answer(Err(JournalError::Write {
                        path: self.path.to_path_buf(),
                        source: error.clone(),
                    }));
                }
            }
        }
    }

    /// Applies `writes` in one transaction; returns each write's admissions (empty for all
    /// but accepts).
    fn commit(&mut self, writes: &[Write]) -> rusqlite::Result<Vec<Vec<Admission>>> {
        let full = writes.iter().any(Write::needs_fsync);
        if full != self.synchronous_full {
            self.conn
                .pragma_update(None, "synchronous", if full { "FULL" } else { "NORMAL" })?;
            self.synchronous_full = full;
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut admissions = Vec::with_capacity(writes.len());
        let mut finishes = 0;
        for write in writes {
            match write {
                Write::Accept {
                    plans, submitted, ..
                } => admissions.push(accept_plans(&tx, plans, *submitted)?),
                Write::Finish {
                    id,
                    result,
                    retryable,
                    ..
                } => {
                    let seq = self.last_finished_seq + 1;
                    if finish_plan(&tx, id, result, *retryable, seq)? {
                        self.last_finished_seq += 1;
                        finishes += 1;
                    }
                    admissions.push(Vec::new());
                }
                Write::MarkEmitted { ids, .. } => {
                    mark_plans_emitted(&tx, ids)?;
                    admissions.push(Vec::new());
                }
            }
        }
        tx.commit()?;
        self.stats.commits += 1;
        self.finishes_since_compaction += finishes;
        Ok(admissions)
    }

    /// Deletes the oldest emitted plans beyond `retain_finished`, then truncates the WAL so
    /// the file on disk shrinks too. Returns how many plans were deleted.
    fn compact(&mut self) -> rusqlite::Result<usize> {
        self.finishes_since_compaction = 0;
        let retain = i64::try_from(self.settings.retain_finished).unwrap_or(i64::MAX);
        let deleted = self.conn.execute(
            "DELETE FROM plans WHERE seq IN (
                 SELECT seq FROM plans WHERE finished_seq IS NOT NULL AND emitted = 1
                 ORDER BY finished_seq DESC LIMIT -1 OFFSET ?1)",
            [retain],
        )?;
        // The checkpoint answers with a row (busy, log frames, checkpointed frames).
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        if deleted > 0 {
            tracing::debug!(deleted, "journal compacted");
        }
        Ok(deleted)
    }
}

fn accept_plans(
    conn: &Connection,
    plans: &[(String, String)],
    submitted: bool,
) -> rusqlite::Result<Vec<Admission>> {
    let mut find = conn.prepare_cached("SELECT result, retryable FROM plans WHERE id = ?1")?;
    let mut insert =
        conn.prepare_cached("INSERT INTO plans (id, body, submitted) VALUES (?1, ?2, ?3)")?;
    // Deleting and inserting (rather than updating in place) gives the new run a new place in
    // acceptance order, as any new plan gets.
    let mut forget = conn.prepare_cached("DELETE FROM plans WHERE id = ?1")?;
    plans
        .iter()
        .map(|(id, body)| {
            let found: Option<(Option<String>, bool)> = find
                .query_row([id], |row| Ok((row.get(0)?, row.get(1)?)))
                .optional()?;
            Ok(match found {
                Some((Some(result), false)) => Admission::AlreadyFinished { result },
                Some((None, _)) => Admission::InProgress,
                Some((Some(_), true)) => {
                    tracing::info!(plan = %id, "the plan's earlier result is retryable; running it again");
                    forget.execute([id])?;
                    insert.execute(params![id, body, submitted])?;
                    Admission::New
                }
                None => {
                    insert.execute(params![id, body, submitted])?;
                    Admission::New
                }
            })
        })
        .collect()
}

/// Records a result unless one is already recorded; returns whether it recorded one.
fn finish_plan(
    conn: &Connection,
    id: &str,
    result: &str,
    retryable: bool,
    finished_seq: i64,
) -> rusqlite::Result<bool> {
    let changed = conn
        .prepare_cached(
            "UPDATE plans SET result = ?2, body = NULL, finished_seq = ?3, retryable = ?4
             WHERE id = ?1 AND result IS NULL",
        )?
        .execute(params![id, result, finished_seq, retryable])?;
    if changed > 0 {
        return Ok(true);
    }
    let inserted = conn
        .prepare_cached(
            "INSERT INTO plans (id, result, finished_seq, retryable) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (id) DO NOTHING",
        )?
        .execute(params![id, result, finished_seq, retryable])?;
    Ok(inserted > 0)
}

fn mark_plans_emitted(conn: &Connection, ids: &[String]) -> rusqlite::Result<()> {
    let mut mark = conn.prepare_cached(
        "UPDATE plans SET emitted = 1 WHERE id = ?1 AND result IS NOT NULL AND emitted = 0",
    )?;
    for id in ids {
        mark.execute([id])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every await in these tests is bounded; a hung journal thread fails the test instead.
    async fn bounded<F: Future>(future: F) -> F::Output {
        tokio::time::timeout(Duration::from_secs(60), future)
            .await
            .expect("the journal answered in time")
    }

    fn plan(id: &str) -> (String, String) {
        (id.to_owned(), format!(r#"{{"id":"{id}","steps":[]}}"#))
    }

    fn result_of(id: &str) -> String {
        format!(r#"{{"id":"{id}","status":"ok"}}"#)
    }

    fn ids(plans: &[StoredPlan]) -> Vec<&str> {
        plans.iter().map(|plan| plan.id.as_str()).collect()
    }

    fn open(state: &StateDir) -> (Journal, Recovery) {
        open_with(state, JournalSettings::default())
    }

    fn open_with(state: &StateDir, settings: JournalSettings) -> (Journal, Recovery) {
        Journal::open(state, settings).expect("open the journal")
    }

    struct Fixture {
        // Dropped last, after the state dir that lives in it.
        state: StateDir,
        _root: tempfile::TempDir,
    }

    fn fixture() -> Fixture {
        let root = tempfile::tempdir().expect("temp dir");
        let state = StateDir::lock(&root.path().join("state")).expect("lock the state dir");
        Fixture { state, _root: root }
    }

    #[tokio::test]
    async fn accept_finish_and_emit_round_trip() {
        let fx = fixture();
        let (journal, recovery) = open(&fx.state);
        assert_eq!(recovery, Recovery::default());

        let admissions = bounded(journal.accept(vec![plan("a"), plan("b")])).await;
        assert_eq!(
            admissions.expect("accept"),
            [Admission::New, Admission::New]
        );
        bounded(journal.finish("a".into(), result_of("a"), false))
            .await
            .expect("finish");
        bounded(journal.mark_emitted(vec!["a".into()]))
            .await
            .expect("mark emitted");
        bounded(journal.close()).await;

        let (journal, recovery) = open(&fx.state);
        assert_eq!(ids(&recovery.unfinished), ["b"]);
        assert_eq!(recovery.unfinished[0].body, plan("b").1);
        assert!(recovery.unemitted.is_empty());
        let admissions = bounded(journal.accept(vec![plan("a")])).await;
        assert_eq!(
            admissions.expect("accept"),
            [Admission::AlreadyFinished {
                result: result_of("a")
            }]
        );
        bounded(journal.close()).await;
    }

    #[tokio::test]
    async fn accepted_plans_are_committed_before_accept_returns() {
        let fx = fixture();
        let (journal, _) = open(&fx.state);
        bounded(journal.accept(vec![plan("a"), plan("b")]))
            .await
            .expect("accept");
        let reader = Connection::open(fx.state.path().join(JOURNAL_FILE)).expect("second reader");
        let count: i64 = reader
            .query_row(
                "SELECT COUNT(*) FROM plans WHERE body IS NOT NULL",
                [],
                |row| row.get(0),
            )
            .expect("count");
        assert_eq!(count, 2);
        drop(reader);
        bounded(journal.close()).await;
    }

    #[tokio::test]
    async fn reopening_returns_unfinished_plans_in_order_and_unemitted_results_in_finish_order() {
        let fx = fixture();
        let (journal, _) = open(&fx.state);
        bounded(journal.accept(vec![plan("c"), plan("a")]))
            .await
            .expect("accept");
        bounded(journal.accept(vec![plan("b"), plan("d")]))
            .await
            .expect("accept");
        bounded(journal.finish("b".into(), result_of("b"), false))
            .await
            .expect("finish b");
        bounded(journal.finish("c".into(), result_of("c"), false))
            .await
            .expect("finish c");
        // Dropping the handle instead of closing it must lose nothing either.
        drop(journal);

        let (journal, recovery) = open(&fx.state);
        assert_eq!(ids(&recovery.unfinished), ["a", "d"]);
        assert!(recovery.unfinished[0].accepted_seq < recovery.unfinished[1].accepted_seq);
        assert_eq!(
            recovery.unemitted,
            [
                StoredResult {
                    id: "b".into(),
                    result: result_of("b")
                },
                StoredResult {
                    id: "c".into(),
                    result: result_of("c")
                },
            ]
        );
        bounded(journal.close()).await;
    }

    #[tokio::test]
    async fn an_already_finished_plan_returns_its_stored_result() {
        let fx = fixture();
        let (journal, _) = open(&fx.state);
        bounded(journal.accept(vec![plan("x")]))
            .await
            .expect("accept");
        bounded(journal.finish("x".into(), result_of("x"), false))
            .await
            .expect("finish");
        let admissions = bounded(journal.accept(vec![plan("x")])).await;
        assert_eq!(
            admissions.expect("accept again"),
            [Admission::AlreadyFinished {
                result: result_of("x")
            }]
        );
        bounded(journal.close()).await;
    }

    #[tokio::test]
    async fn a_duplicate_of_an_unfinished_plan_is_in_progress() {
        let fx = fixture();
        let (journal, _) = open(&fx.state);
        let admissions = bounded(journal.accept(vec![plan("x"), plan("x")])).await;
        assert_eq!(
            admissions.expect("accept"),
            [Admission::New, Admission::InProgress]
        );
        bounded(journal.close()).await;

        let (journal, recovery) = open(&fx.state);
        assert_eq!(ids(&recovery.unfinished), ["x"]);
        let admissions = bounded(journal.accept(vec![plan("x")])).await;
        assert_eq!(admissions.expect("accept"), [Admission::InProgress]);
        bounded(journal.close()).await;
    }

    #[tokio::test]
    async fn finish_is_idempotent_and_keeps_the_first_result() {
        let fx = fixture();
        let (journal, _) = open(&fx.state);
        bounded(journal.accept(vec![plan("x")]))
            .await
            .expect("accept");
        bounded(journal.finish("x".into(), "first".into(), false))
            .await
            .expect("finish");
        bounded(journal.finish("x".into(), "second".into(), false))
            .await
            .expect("finish again");
        bounded(journal.close()).await;

        let (journal, recovery) = open(&fx.state);
        assert_eq!(
            recovery.unemitted,
            [StoredResult {
                id: "x".into(),
                result: "first".into()
            }]
        );
        bounded(journal.close()).await;
    }

    #[tokio::test]
    async fn a_result_for_a_plan_never_accepted_is_still_emitted_after_a_restart() {
        let fx = fixture();
        let (journal, _) = open(&fx.state);
        bounded(journal.finish("stray".into(), result_of("stray"), false))
            .await
            .expect("finish");
        bounded(journal.close()).await;

        let (journal, recovery) = open(&fx.state);
        assert!(recovery.unfinished.is_empty());
        assert_eq!(ids_of_results(&recovery.unemitted), ["stray"]);
        bounded(journal.close()).await;
    }

    fn ids_of_results(results: &[StoredResult]) -> Vec<&str> {
        results.iter().map(|result| result.id.as_str()).collect()
    }

    #[tokio::test]
    async fn ids_are_stored_verbatim() {
        let fx = fixture();
        let (journal, _) = open(&fx.state);
        let odd = "ünï'cödé\"; DROP TABLE plans; --\n\t".repeat(8);
        let long: String = std::iter::repeat_n('é', 256).collect();
        let admissions = bounded(journal.accept(vec![
            (odd.clone(), "{}".into()),
            (long.clone(), "{}".into()),
        ]))
        .await;
        assert_eq!(
            admissions.expect("accept"),
            [Admission::New, Admission::New]
        );
        bounded(journal.close()).await;

        let (journal, recovery) = open(&fx.state);
        assert_eq!(ids(&recovery.unfinished), [odd.as_str(), long.as_str()]);
        bounded(journal.close()).await;
    }

    #[tokio::test]
    async fn group_commit_puts_queued_accepts_into_few_transactions() {
        const PLANS: usize = 10_000;
        let fx = fixture();
        let (journal, _) = open(&fx.state);
        let before = bounded(journal.stats()).await.expect("stats");

        // Hold the thread so that every accept is queued before it looks at the queue again,
        // which makes the batching exact rather than dependent on timing.
        let release = journal.hold();
        let pending: Vec<_> = (0..PLANS)
            .map(|i| journal.accept(vec![plan(&format!("plan-{i}"))]))
            .collect();
        drop(release);
        let admissions = bounded(futures_util::future::join_all(pending)).await;
        for admission in admissions {
            assert_eq!(admission.expect("accept"), [Admission::New]);
        }

        let after = bounded(journal.stats()).await.expect("stats");
        assert_eq!(
            after.commits - before.commits,
            PLANS.div_ceil(MAX_BATCH) as u64
        );
        bounded(journal.close()).await;
    }

    #[tokio::test]
    async fn concurrent_accepts_from_many_tasks_all_get_recorded() {
        const PLANS: usize = 2_000;
        let fx = fixture();
        let (journal, _) = open(&fx.state);
        let tasks: Vec<_> = (0..PLANS)
            .map(|i| {
                let journal = journal.clone();
                tokio::spawn(async move { journal.accept(vec![plan(&format!("p{i}"))]).await })
            })
            .collect();
        for task in tasks {
            let admissions = bounded(task).await.expect("task").expect("accept");
            assert_eq!(admissions, [Admission::New]);
        }
        let stats = bounded(journal.stats()).await.expect("stats");
        assert!(stats.commits <= PLANS as u64);
        bounded(journal.close()).await;

        let (journal, recovery) = open(&fx.state);
        assert_eq!(recovery.unfinished.len(), PLANS);
        bounded(journal.close()).await;
    }

    #[tokio::test]
    async fn compaction_at_open_deletes_the_oldest_emitted_plans_and_keeps_the_rest() {
        let fx = fixture();
        let settings = JournalSettings {
            retain_finished: 2,
            compact_every: 0,
        };
        let (journal, _) = open_with(&fx.state, settings);
        let names = ["p0", "p1", "p2", "p3", "p4", "open"];
        bounded(journal.accept(names.iter().map(|id| plan(id)).collect()))
            .await
            .expect("accept");
        for id in &names[..5] {
            bounded(journal.finish((*id).into(), result_of(id), false))
                .await
                .expect("finish");
        }
        // p4 stays finished but unemitted.
        bounded(journal.mark_emitted(names[..4].iter().map(|id| (*id).into()).collect()))
            .await
            .expect("mark emitted");
        bounded(journal.close()).await;

        let (journal, recovery) = open_with(&fx.state, settings);
        assert_eq!(ids(&recovery.unfinished), ["open"]);
        assert_eq!(ids_of_results(&recovery.unemitted), ["p4"]);
        let admissions = bounded(journal.accept(names.iter().map(|id| plan(id)).collect()))
            .await
            .expect("accept");
        let finished = |id: &str| Admission::AlreadyFinished {
            result: result_of(id),
        };
        assert_eq!(
            admissions,
            [
                // Compacted away: the journal no longer knows them, so they run again.
                Admission::New,
                Admission::New,
                finished("p2"),
                finished("p3"),
                finished("p4"),
                Admission::InProgress,
            ]
        );
        bounded(journal.close()).await;
    }

    #[tokio::test]
    async fn compaction_runs_every_compact_every_finishes_and_truncates_the_wal() {
        let fx = fixture();
        let settings = JournalSettings {
            retain_finished: 1,
            compact_every: 3,
        };
        let (journal, _) = open_with(&fx.state, settings);
        let names = ["p0", "p1", "p2", "p3"];
        bounded(journal.accept(names.iter().map(|id| plan(id)).collect()))
            .await
            .expect("accept");
        for id in &names[..2] {
            bounded(journal.finish((*id).into(), result_of(id), false))
                .await
                .expect("finish");
        }
        bounded(journal.mark_emitted(vec!["p0".into(), "p1".into()]))
            .await
            .expect("mark emitted");
        assert_eq!(
            bounded(journal.stats()).await.expect("stats").compactions,
            0
        );

        // The third finish triggers a compaction: p0 goes, p1 (the newest emitted) stays, and
        // p2 is not emitted yet.
        bounded(journal.finish("p2".into(), result_of("p2"), false))
            .await
            .expect("finish");
        assert_eq!(
            bounded(journal.stats()).await.expect("stats").compactions,
            1
        );
        let wal = fx.state.path().join(format!("{JOURNAL_FILE}-wal"));
        assert_eq!(std::fs::metadata(&wal).expect("wal").len(), 0);

        let admissions = bounded(journal.accept(vec![plan("p0"), plan("p1"), plan("p2")]))
            .await
            .expect("accept");
        assert_eq!(
            admissions,
            [
                Admission::New,
                Admission::AlreadyFinished {
                    result: result_of("p1")
                },
                Admission::AlreadyFinished {
                    result: result_of("p2")
                },
            ]
        );
        bounded(journal.close()).await;
    }

    #[tokio::test]
    async fn close_finishes_queued_work_and_later_requests_fail() {
        let fx = fixture();
        let (journal, _) = open(&fx.state);
        let other = journal.clone();
        let queued = journal.accept(vec![plan("q")]);
        bounded(journal.close()).await;
        assert_eq!(bounded(queued).await.expect("accept"), [Admission::New]);

        let error = bounded(other.accept(vec![plan("late")]))
            .await
            .expect_err("the journal is closed");
        assert!(matches!(error, JournalError::Closed { .. }), "{error:?}");
        drop(other);

        let (journal, recovery) = open(&fx.state);
        assert_eq!(ids(&recovery.unfinished), ["q"]);
        bounded(journal.close()).await;
    }

    #[tokio::test]
    async fn results_of_submitted_plans_wait_for_their_submitter_not_for_stdout() {
        let fx = fixture();
        let (journal, _) = open(&fx.state);
        bounded(journal.accept_submitted(vec![plan("sub-done"), plan("sub-open")]))
            .await
            .expect("accept submitted");
        bounded(journal.accept(vec![plan("stdin-done")]))
            .await
            .expect("accept");
        for id in ["sub-done", "stdin-done"] {
            bounded(journal.finish(id.into(), result_of(id), false))
                .await
                .expect("finish");
        }
        bounded(journal.close()).await;

        let (journal, recovery) = open(&fx.state);
        assert_eq!(ids_of_results(&recovery.unemitted), ["stdin-done"]);
        assert_eq!(ids(&recovery.unfinished), ["sub-open"]);
        assert!(recovery.unfinished[0].submitted);
        let admissions = bounded(journal.accept_submitted(vec![plan("sub-done")])).await;
        assert_eq!(
            admissions.expect("accept"),
            [Admission::AlreadyFinished {
                result: result_of("sub-done")
            }]
        );
        bounded(journal.close()).await;
    }

    #[tokio::test]
    async fn a_version_1_journal_is_migrated_and_its_plans_count_as_from_stdin() {
        let fx = fixture();
        let path = fx.state.path().join(JOURNAL_FILE);
        {
            let conn = Connection::open(&path).expect("create");
            conn.execute_batch(
                "CREATE TABLE plans (
                     seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, body TEXT, result TEXT,
                     finished_seq INTEGER UNIQUE, emitted INTEGER NOT NULL DEFAULT 0);
                 INSERT INTO plans (id, body) VALUES ('open', '{}');
                 INSERT INTO plans (id, result, finished_seq) VALUES ('done', '{}', 1);
                 PRAGMA user_version = 1;",
            )
            .expect("a version 1 journal");
        }
        let (journal, recovery) = open(&fx.state);
        assert_eq!(ids(&recovery.unfinished), ["open"]);
        assert!(!recovery.unfinished[0].submitted);
        assert_eq!(ids_of_results(&recovery.unemitted), ["done"]);
        bounded(journal.close()).await;
        let version: i64 = Connection::open(&path)
            .expect("reopen")
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .expect("version");
        assert_eq!(version, SCHEMA_VERSION);
    }

    #[test]
    fn a_journal_with_a_newer_schema_is_refused() {
        let fx = fixture();
        let path = fx.state.path().join(JOURNAL_FILE);
        Connection::open(&path)
            .expect("create")
            .pragma_update(None, "user_version", 99)
            .expect("set version");
        let error = Journal::open(&fx.state, JournalSettings::default())
            .expect_err("a newer schema is refused");
        assert!(
            matches!(error, JournalError::NewerSchema { found: 99, .. }),
            "{error:?}"
        );
        assert_eq!(
            error.to_string(),
            format!(
                "journal {} has schema version 99, newer than version 2 that this supervisor understands",
                path.display()
            )
        );
    }

    #[tokio::test]
    async fn a_plan_whose_result_is_retryable_is_accepted_again_and_a_final_one_is_not() {
        let fx = fixture();
        let (journal, _) = open(&fx.state);
        bounded(journal.accept(vec![plan("env"), plan("own")]))
            .await
            .expect("accept");
        bounded(journal.finish("env".into(), result_of("env"), true))
            .await
            .expect("finish");
        bounded(journal.finish("own".into(), result_of("own"), false))
            .await
            .expect("finish");
        let admissions = bounded(journal.accept(vec![plan("env"), plan("own")]))
            .await
            .expect("accept again");
        assert_eq!(
            admissions,
            [
                Admission::New,
                Admission::AlreadyFinished {
                    result: result_of("own")
                }
            ]
        );
        bounded(journal.close()).await;
        // The re-admitted plan is unfinished again, so a restart resumes it.
        let (journal, recovery) = open(&fx.state);
        assert_eq!(ids(&recovery.unfinished), ["env"]);
        bounded(journal.close()).await;
    }

    #[tokio::test]
    async fn a_version_1_journal_is_migrated_keeping_its_plans_final() {
        let fx = fixture();
        let path = fx.state.path().join(JOURNAL_FILE);
        {
            let conn = Connection::open(&path).expect("create");
            let v1 = SCHEMA.replace("{RETRYABLE_COLUMN},", "").replace(
                "submitted    INTEGER NOT NULL DEFAULT 0 CHECK (submitted IN (0, 1)),",
                "",
            );
            conn.execute_batch(&format!(
                "{v1} INSERT INTO plans (id, result, finished_seq, emitted) VALUES ('old', 'r', 1, 1); \
                 PRAGMA user_version = 1;"
            ))
            .expect("a version 1 journal");
        }
        let (journal, _) = open(&fx.state);
        let admissions = bounded(journal.accept(vec![plan("old")]))
            .await
            .expect("accept");
        assert_eq!(
            admissions,
            [Admission::AlreadyFinished { result: "r".into() }]
        );
        bounded(journal.close()).await;
    }
}
