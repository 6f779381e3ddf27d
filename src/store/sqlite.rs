//! Embedded store on SQLite (WAL mode).
//!
//! One writer thread owns the write connection and commits appends in groups: every
//! append waiting when a transaction starts shares its single fsync. After the commit
//! the thread hands the publications, in commit order, to the node's fan-out, then
//! answers the callers; so subscribers see a channel's messages in offset order and a
//! publish is acknowledged only once it is durable. Reads use a small pool of read-only
//! connections on the blocking thread pool; WAL lets them run beside the writer.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use prost::Message as _;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use tokio::sync::oneshot;

use super::{
    Append, Appended, ConversationStore, ConversationSummary, MessageStore, Retention, StoreError,
};
use crate::broker::{BrokerEventHandler, HistoryFilter};
use crate::metrics as m;
use crate::node::channels::user_limited_allows;
use crate::protocol::messages::{Publication, StreamPosition};

const MIGRATIONS: &[&str] = &[
    include_str!("../../schema/sqlite/0001_init.sql"),
    include_str!("../../schema/sqlite/0002_fewer_indexes.sql"),
];
/// Appends committed in one transaction at most.
const MAX_BATCH: usize = 8192;
const READERS: usize = 4;
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(10);

/// How hard a commit waits for the disk (SQLite `synchronous` in WAL mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sync {
    /// fsync on every commit: durable across power loss.
    Full,
    /// fsync at checkpoints: durable across a process crash (kill -9), not power loss.
    Normal,
}

#[derive(Debug, Clone)]
pub struct SqliteOptions {
    pub path: PathBuf,
    pub sync: Sync,
    pub idempotency_window: Duration,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn new_epoch() -> String {
    format!("{:08x}", rand::random::<u32>())
}

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;
type Job = Box<dyn FnOnce(&mut Connection) + Send>;

enum Op {
    Append(Box<Append>, Reply<Appended>),
    /// Cluster mode: a write at an offset the sequencer assigned (`append_at`).
    AppendAt(Box<AppendAt>, Reply<()>),
    /// Any other write, run alone on the writer connection.
    Exec(Job),
}

pub struct SqliteStore {
    tx: Mutex<mpsc::Sender<Op>>,
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
    handler: Arc<RwLock<Option<Weak<dyn BrokerEventHandler>>>>,
}

fn open(path: &Path, flags: OpenFlags) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    // A 64 MiB page cache and memory-mapped reads: B-tree pages of hot channels stay in
    // memory instead of being copied from the OS cache on every lookup.
    conn.pragma_update(None, "cache_size", -65_536)?;
    conn.pragma_update(None, "mmap_size", 1_i64 << 30)?;
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

impl SqliteStore {
    /// Opens (creating if needed) `options.path`, applies migrations, starts the writer.
    pub fn open(options: SqliteOptions) -> Result<SqliteStore, StoreError> {
        if let Some(dir) = options.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| unavailable(format!("{}: {e}", dir.display())))?;
        }
        let mut writer = open(
            &options.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
        )
        .map_err(|e| unavailable(format!("{}: {e}", options.path.display())))?;
        writer
            .pragma_update(None, "journal_mode", "WAL")
            .map_err(unavailable)?;
        let sync = match options.sync {
            Sync::Full => "FULL",
            Sync::Normal => "NORMAL",
        };
        writer
            .pragma_update(None, "synchronous", sync)
            .map_err(unavailable)?;
        // Checkpoint every ~40 MiB of WAL instead of ~4 MiB: fewer stalls of the writer.
        writer
            .pragma_update(None, "wal_autocheckpoint", 10_000)
            .map_err(unavailable)?;
        migrate(&mut writer).map_err(unavailable)?;
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let r = open(&options.path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(unavailable)?;
            readers.push(Mutex::new(r));
        }
        let handler: Arc<RwLock<Option<Weak<dyn BrokerEventHandler>>>> =
            Arc::new(RwLock::new(None));
        let (tx, rx) = mpsc::channel();
        let mut w = Writer {
            conn: writer,
            tops: HashMap::new(),
            handler: handler.clone(),
            window_ms: options.idempotency_window.as_millis() as i64,
            retention: HashMap::new(),
            last_housekeeping: Instant::now(),
        };
        std::thread::Builder::new()
            .name("herald-store-writer".into())
            .spawn(move || w.run(rx))
            .map_err(unavailable)?;
        Ok(SqliteStore {
            tx: Mutex::new(tx),
            readers,
            next_reader: AtomicUsize::new(0),
            handler,
        })
    }

    fn send(&self, op: Op) -> Result<(), StoreError> {
        self.tx
            .lock()
            .send(op)
            .map_err(|_| unavailable("store writer stopped"))
    }

    /// Runs `f` on the writer connection and returns its result.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.send(Op::Exec(Box::new(move |conn| {
            let _ = tx.send(f(conn).map_err(unavailable));
        })))?;
        rx.await.map_err(|_| unavailable("store writer stopped"))?
    }

    /// Runs `f` on a read connection on the blocking pool.
    async fn read<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            let i = me.next_reader.fetch_add(1, Ordering::Relaxed) % me.readers.len();
            let conn = me.readers[i].lock();
            f(&conn).map_err(unavailable)
        })
        .await
        .map_err(unavailable)?
    }

    /// A history page and the position it is answered with, from one read transaction
    /// (one WAL snapshot): a channel expired and re-created with a new epoch between two
    /// separate reads would otherwise answer new-epoch rows with the old epoch. `None`
    /// when the channel has no row yet.
    async fn page(
        self: &Arc<Self>,
        channel: &str,
        filter: HistoryFilter,
    ) -> Result<PageRead, StoreError> {
        let ch = channel.to_string();
        self.read(move |c| {
            let tx = c.unchecked_transaction()?;
            let Some(top) = read_position(&tx, &ch)? else {
                return Ok(None);
            };
            let pubs = read_history(&tx, &ch, &filter, &top);
            tx.finish()?;
            Ok(Some((pubs, top)))
        })
        .await
    }

    /// The channel's epoch and top, creating the channel's row if it has none yet (so
    /// that an empty channel already has the epoch its first messages will carry).
    async fn position(self: &Arc<Self>, channel: &str) -> Result<StreamPosition, StoreError> {
        let ch = channel.to_string();
        let found = self.read(move |c| read_position(c, &ch)).await?;
        if let Some(p) = found {
            return Ok(p);
        }
        let ch = channel.to_string();
        self.write(move |c| {
            c.execute(
                "INSERT INTO channels (channel, epoch, top) VALUES (?1, ?2, 0) ON CONFLICT(channel) DO NOTHING",
                params![ch, new_epoch()],
            )?;
            Ok(read_position(c, &ch)?.unwrap_or_default())
        })
        .await
    }
}

fn read_position(c: &Connection, channel: &str) -> rusqlite::Result<Option<StreamPosition>> {
    c.query_row(
        "SELECT epoch, top FROM channels WHERE channel = ?1",
        [channel],
        |r| {
            Ok(StreamPosition {
                epoch: r.get(0)?,
                offset: r.get::<_, i64>(1)? as u64,
            })
        },
    )
    .optional()
}

fn decode_row(offset: i64, body: Vec<u8>) -> rusqlite::Result<Publication> {
    let mut p = Publication::decode(body.as_slice()).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Blob, Box::new(e))
    })?;
    p.offset = offset as u64;
    Ok(p)
}

fn query_pubs(
    c: &Connection,
    sql: &str,
    channel: &str,
    bound: i64,
    limit: i64,
    top: i64,
) -> rusqlite::Result<Vec<Publication>> {
    let mut stmt = c.prepare_cached(sql)?;
    let rows = stmt.query_map(params![channel, bound, limit, top], |r| {
        decode_row(r.get(0)?, r.get(1)?)
    })?;
    rows.collect()
}

/// What [`SqliteStore::page`] read: the page (or why there is none) and the position.
type PageRead = Option<(Result<Vec<Publication>, StoreError>, StreamPosition)>;

/// Reads a page of history. Runs on a read connection.
///
/// Only up to `top`, the position the page is answered with: a page reaching past it
/// would make a recovering subscriber get those publications twice (in the page, and
/// live, since the session drops live ones only up to that position). `history` reads
/// both in one snapshot, where no row is past `top` (an append moves `top` in its own
/// transaction); the bound keeps that contract for any caller of this function.
fn read_history(
    c: &Connection,
    channel: &str,
    filter: &HistoryFilter,
    top: &StreamPosition,
) -> Result<Vec<Publication>, StoreError> {
    let limit = filter
        .limit
        .map(|l| l.min(i64::MAX as usize) as i64)
        .unwrap_or(i64::MAX);
    if limit == 0 {
        return Ok(Vec::new());
    }
    let top_offset = top.offset.min(i64::MAX as u64) as i64;
    let q = |sql: &str, bound: i64| {
        query_pubs(c, sql, channel, bound, limit, top_offset).map_err(unavailable)
    };
    match (&filter.since, filter.reverse) {
        (Some(since), _) if since.epoch != top.epoch => Err(StoreError::UnrecoverablePosition),
        (Some(since), false) => {
            let pubs = q(
                "SELECT offset, body FROM messages WHERE channel = ?1 AND offset > ?2 AND offset <= ?4 ORDER BY offset ASC LIMIT ?3",
                since.offset as i64,
            )?;
            // Everything after `since` must still be there, or there is a gap.
            let continuous = pubs.first().map_or(since.offset >= top.offset, |p| p.offset == since.offset + 1);
            if continuous {
                Ok(pubs)
            } else {
                Err(StoreError::UnrecoverablePosition)
            }
        }
        (Some(since), true) => q(
            "SELECT offset, body FROM messages WHERE channel = ?1 AND offset < ?2 AND offset <= ?4 ORDER BY offset DESC LIMIT ?3",
            since.offset as i64,
        ),
        (None, false) => q(
            "SELECT offset, body FROM messages WHERE channel = ?1 AND offset > ?2 AND offset <= ?4 ORDER BY offset ASC LIMIT ?3",
            0,
        ),
        (None, true) => q(
            "SELECT offset, body FROM messages WHERE channel = ?1 AND offset > ?2 AND offset <= ?4 ORDER BY offset DESC LIMIT ?3",
            0,
        ),
    }
}

#[async_trait]
impl MessageStore for Arc<SqliteStore> {
    fn set_handler(&self, handler: Weak<dyn BrokerEventHandler>) {
        *self.handler.write() = Some(handler);
    }

    async fn append(&self, req: Append) -> Result<Appended, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.send(Op::Append(Box::new(req), tx))?;
        rx.await.map_err(|_| unavailable("store writer stopped"))?
    }

    async fn append_at(
        &self,
        channel: &str,
        epoch: &str,
        publication: Publication,
        retention: Retention,
    ) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        let req = AppendAt {
            channel: channel.to_string(),
            epoch: epoch.to_string(),
            publication,
            retention,
        };
        self.send(Op::AppendAt(Box::new(req), tx))?;
        rx.await.map_err(|_| unavailable("store writer stopped"))?
    }

    async fn history(
        &self,
        channel: &str,
        filter: HistoryFilter,
    ) -> Result<(Vec<Publication>, StreamPosition), StoreError> {
        if let Some((pubs, top)) = self.page(channel, filter.clone()).await? {
            return Ok((pubs?, top));
        }
        // A channel never written: create its row (and epoch), then read again.
        self.position(channel).await?;
        match self.page(channel, filter).await? {
            Some((pubs, top)) => Ok((pubs?, top)),
            None => Err(unavailable("channel row missing after creating it")),
        }
    }

    async fn remove_history(&self, channel: &str) -> Result<(), StoreError> {
        let ch = channel.to_string();
        self.write(move |c| {
            c.execute("DELETE FROM messages WHERE channel = ?1", [ch])
                .map(|_| ())
        })
        .await
    }
}

#[async_trait]
impl ConversationStore for Arc<SqliteStore> {
    async fn add_members(&self, channel: &str, users: &[String]) -> Result<(), StoreError> {
        let (ch, users) = (channel.to_string(), users.to_vec());
        self.write(move |c| {
            let tx = c.transaction()?;
            {
                let mut st = tx.prepare_cached(
                    "INSERT INTO members (channel, user, joined_ms) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
                )?;
                for u in &users {
                    st.execute(params![ch, u, now_ms()])?;
                }
            }
            tx.commit()
        })
        .await
    }

    async fn remove_members(&self, channel: &str, users: &[String]) -> Result<(), StoreError> {
        let (ch, users) = (channel.to_string(), users.to_vec());
        self.write(move |c| {
            let tx = c.transaction()?;
            for u in &users {
                tx.execute(
                    "DELETE FROM members WHERE channel = ?1 AND user = ?2",
                    params![ch, u],
                )?;
            }
            tx.commit()
        })
        .await
    }

    async fn members(&self, channel: &str) -> Result<Vec<String>, StoreError> {
        let ch = channel.to_string();
        self.read(move |c| {
            let mut st =
                c.prepare_cached("SELECT user FROM members WHERE channel = ?1 ORDER BY user")?;
            let rows = st.query_map([ch], |r| r.get(0))?;
            rows.collect()
        })
        .await
    }

    async fn is_member(&self, channel: &str, user: &str) -> Result<bool, StoreError> {
        let (ch, u) = (channel.to_string(), user.to_string());
        self.read(move |c| {
            c.prepare_cached("SELECT 1 FROM members WHERE channel = ?1 AND user = ?2")?
                .exists(params![ch, u])
        })
        .await
    }

    async fn set_read(&self, user: &str, channel: &str, offset: u64) -> Result<u64, StoreError> {
        let (u, ch) = (user.to_string(), channel.to_string());
        self.write(move |c| {
            let top: i64 = c
                .query_row("SELECT top FROM channels WHERE channel = ?1", [&ch], |r| r.get(0))
                .optional()?
                .unwrap_or(0);
            let offset = (offset as i64).min(top);
            c.execute(
                "INSERT INTO read_markers (user, channel, offset, updated_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(user, channel) DO UPDATE SET offset = max(offset, excluded.offset), updated_ms = excluded.updated_ms",
                params![u, ch, offset, now_ms()],
            )?;
            c.query_row("SELECT offset FROM read_markers WHERE user = ?1 AND channel = ?2", params![u, ch], |r| {
                r.get::<_, i64>(0)
            })
            .map(|v| v as u64)
        })
        .await
    }

    async fn conversations(
        &self,
        user: &str,
        extra: &[String],
    ) -> Result<Vec<ConversationSummary>, StoreError> {
        let (u, extra) = (user.to_string(), extra.to_vec());
        self.read(move |c| {
            let mut channels: Vec<String> = {
                let mut st = c.prepare_cached("SELECT channel FROM members WHERE user = ?1")?;
                let rows = st.query_map([&u], |r| r.get(0))?;
                rows.collect::<rusqlite::Result<_>>()?
            };
            for e in extra {
                if !channels.contains(&e) {
                    channels.push(e);
                }
            }
            let mut out = Vec::with_capacity(channels.len());
            for ch in channels {
                let top: u64 = c
                    .prepare_cached("SELECT top FROM channels WHERE channel = ?1")?
                    .query_row([&ch], |r| r.get::<_, i64>(0))
                    .optional()?
                    .unwrap_or(0) as u64;
                let read: u64 = c
                    .prepare_cached("SELECT offset FROM read_markers WHERE user = ?1 AND channel = ?2")?
                    .query_row(params![u, ch], |r| r.get::<_, i64>(0))
                    .optional()?
                    .unwrap_or(0) as u64;
                let last = c
                    .prepare_cached("SELECT offset, body FROM messages WHERE channel = ?1 ORDER BY offset DESC LIMIT 1")?
                    .query_row([&ch], |r| decode_row(r.get(0)?, r.get(1)?))
                    .optional()?;
                out.push(ConversationSummary { channel: ch, top, read_offset: read, unread: top.saturating_sub(read), last });
            }
            out.sort_by(|a, b| b.top.cmp(&a.top).then_with(|| a.channel.cmp(&b.channel)));
            Ok(out)
        })
        .await
    }

    async fn dm_channels(
        &self,
        user: &str,
        namespace_prefix: &str,
    ) -> Result<Vec<String>, StoreError> {
        let (u, pattern) = (user.to_string(), format!("{namespace_prefix}%#%"));
        self.read(move |c| {
            let mut st =
                c.prepare_cached("SELECT channel FROM channels WHERE channel LIKE ?1 AND top > 0")?;
            let rows = st.query_map([pattern], |r| r.get::<_, String>(0))?;
            let mut out = Vec::new();
            for ch in rows {
                let ch = ch?;
                if user_limited_allows(&ch, &u) == Some(true) {
                    out.push(ch);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn remove_user_data(&self, user: &str, tombstone: bool) -> Result<u64, StoreError> {
        let u = user.to_string();
        self.write(move |c| {
            let tx = c.transaction()?;
            tx.execute("DELETE FROM read_markers WHERE user = ?1", [&u])?;
            tx.execute("DELETE FROM members WHERE user = ?1", [&u])?;
            let mut n = 0;
            if tombstone {
                let rows: Vec<(String, i64, Vec<u8>)> = {
                    let mut st = tx.prepare("SELECT channel, offset, body FROM messages WHERE user = ?1")?;
                    let rows = st.query_map([&u], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
                    rows.collect::<rusqlite::Result<_>>()?
                };
                for (ch, off, body) in rows {
                    let mut p = decode_row(off, body)?;
                    p.data = Bytes::from_static(br#"{"deleted":true}"#);
                    p.info = None;
                    p.offset = 0;
                    tx.execute(
                        "UPDATE messages SET body = ?1, user = '' WHERE channel = ?2 AND offset = ?3",
                        params![p.encode_to_vec(), ch, off],
                    )?;
                    n += 1;
                }
            }
            tx.commit()?;
            Ok(n)
        })
        .await
    }
}

/// A publication to write at the offset it carries, in the given epoch.
struct AppendAt {
    channel: String,
    epoch: String,
    publication: Publication,
    retention: Retention,
}

/// State owned by the writer thread.
struct Writer {
    conn: Connection,
    /// channel -> (epoch, top), loaded on first use; dropped after a failed commit.
    tops: HashMap<String, (String, u64)>,
    handler: Arc<RwLock<Option<Weak<dyn BrokerEventHandler>>>>,
    window_ms: i64,
    /// Age limits seen per channel, applied by housekeeping.
    retention: HashMap<String, Duration>,
    last_housekeeping: Instant,
}

/// What one append in a batch led to, before the commit decides its fate.
enum Pending {
    Fresh {
        channel: String,
        publication: Box<Publication>,
        position: StreamPosition,
    },
    Duplicate(StreamPosition),
    Failed(StoreError),
}

impl Writer {
    fn run(&mut self, rx: mpsc::Receiver<Op>) {
        loop {
            let first = match rx.recv_timeout(HOUSEKEEPING_EVERY) {
                Ok(op) => op,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    self.housekeeping();
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            };
            let mut appends = Vec::new();
            let mut execs = Vec::new();
            let mut next = Some(first);
            while let Some(op) = next {
                match op {
                    Op::Append(req, reply) => appends.push((req, reply)),
                    Op::Exec(job) => execs.push(job),
                    Op::AppendAt(req, reply) => {
                        let r = self.append_at(&req);
                        let _ = reply.send(r);
                    }
                }
                next = if appends.len() < MAX_BATCH {
                    rx.try_recv().ok()
                } else {
                    None
                };
            }
            if !appends.is_empty() {
                self.commit_batch(appends);
            }
            for job in execs {
                job(&mut self.conn);
            }
            if self.last_housekeeping.elapsed() >= HOUSEKEEPING_EVERY {
                self.housekeeping();
            }
        }
    }

    fn commit_batch(&mut self, appends: Vec<(Box<Append>, Reply<Appended>)>) {
        let started = Instant::now();
        let mut results = Vec::with_capacity(appends.len());
        let outcome = (|| -> rusqlite::Result<()> {
            let mut tx = self.conn.transaction()?;
            let mut touched: HashMap<&str, u64> = HashMap::new();
            for (req, _) in &appends {
                // A savepoint per append: one failing append leaves nothing behind and
                // does not fail the others.
                let sp = tx.savepoint()?;
                let r = match append_one(&sp, &mut self.tops, req, self.window_ms) {
                    Ok(p) => {
                        sp.commit()?;
                        p
                    }
                    Err(e) => {
                        drop(sp);
                        self.tops.remove(&req.channel);
                        Pending::Failed(unavailable(e))
                    }
                };
                if let Pending::Fresh { position, .. } = &r {
                    touched.insert(&req.channel, position.offset);
                }
                results.push(r);
            }
            // The channel's top is written once per batch, not once per message.
            for (channel, top) in touched {
                tx.prepare_cached("UPDATE channels SET top = ?2 WHERE channel = ?1")?
                    .execute(params![channel, top as i64])?;
            }
            tx.commit()
        })();
        if let Err(e) = outcome {
            // Nothing of the batch is durable: forget cached tops (they may have moved
            // inside the rolled-back transaction) and fail every caller.
            tracing::error!(cause = %e, "store commit failed");
            metrics::counter!(m::STORE_ERRORS_TOTAL, "op" => "commit").increment(1);
            metrics::counter!(m::STORE_APPENDS_TOTAL, "result" => "error")
                .increment(appends.len() as u64);
            self.tops.clear();
            for (_, reply) in appends {
                let _ = reply.send(Err(unavailable(&e)));
            }
            return;
        }
        metrics::histogram!(m::STORE_COMMIT_SECONDS).record(started.elapsed().as_secs_f64());
        let handler = self.handler.read().as_ref().and_then(Weak::upgrade);
        for ((req, reply), r) in appends.into_iter().zip(results) {
            if !req.retention.max_age.is_zero() {
                self.retention
                    .insert(req.channel.clone(), req.retention.max_age);
            }
            let answer = match r {
                Pending::Fresh {
                    channel,
                    publication,
                    position,
                } => {
                    if let Some(h) = &handler {
                        h.handle_publication(&channel, Arc::new(*publication), &position.epoch);
                    }
                    metrics::counter!(m::STORE_APPENDS_TOTAL, "result" => "ok").increment(1);
                    Ok(Appended {
                        position,
                        duplicate: false,
                    })
                }
                Pending::Duplicate(position) => {
                    metrics::counter!(m::STORE_APPENDS_TOTAL, "result" => "duplicate").increment(1);
                    Ok(Appended {
                        position,
                        duplicate: true,
                    })
                }
                Pending::Failed(e) => {
                    metrics::counter!(m::STORE_APPENDS_TOTAL, "result" => "error").increment(1);
                    Err(e)
                }
            };
            let _ = reply.send(answer);
        }
    }

    /// Writes one publication at its given offset, idempotently, in its own
    /// transaction. The cached top of the channel is dropped: another node may have
    /// moved it (the file can be shared by several nodes in tests).
    fn append_at(&mut self, req: &AppendAt) -> Result<(), StoreError> {
        let offset = req.publication.offset;
        let result = (|| -> rusqlite::Result<()> {
            let tx = self
                .conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let mut publication = req.publication.clone();
            publication.offset = 0;
            let user = publication
                .info
                .as_ref()
                .map(|i| i.user.clone())
                .unwrap_or_default();
            tx.prepare_cached(
                "INSERT INTO messages (channel, offset, time_ms, user, body) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT DO NOTHING",
            )?
            .execute(params![
                req.channel,
                offset as i64,
                now_ms(),
                user,
                publication.encode_to_vec()
            ])?;
            tx.prepare_cached(
                "INSERT INTO channels (channel, epoch, top) VALUES (?1, ?2, ?3)
                 ON CONFLICT(channel) DO UPDATE SET epoch = excluded.epoch, top = max(top, excluded.top)",
            )?
            .execute(params![req.channel, req.epoch, offset as i64])?;
            // Counted from the channel's top, not this offset: a late write (the
            // reconciler) below the kept range is removed again at once.
            let max_count = req.retention.max_count;
            if max_count > 0 {
                tx.prepare_cached(
                    "DELETE FROM messages WHERE channel = ?1
                     AND offset <= (SELECT top FROM channels WHERE channel = ?1) - ?2",
                )?
                .execute(params![req.channel, max_count.min(i64::MAX as u64) as i64])?;
            }
            tx.commit()
        })();
        self.tops.remove(&req.channel);
        match result {
            Ok(()) => {
                if !req.retention.max_age.is_zero() {
                    self.retention
                        .insert(req.channel.clone(), req.retention.max_age);
                }
                metrics::counter!(m::STORE_APPENDS_TOTAL, "result" => "ok").increment(1);
                Ok(())
            }
            Err(e) => {
                metrics::counter!(m::STORE_APPENDS_TOTAL, "result" => "error").increment(1);
                Err(unavailable(e))
            }
        }
    }

    /// Drops expired idempotency keys and messages past their namespace's max age.
    fn housekeeping(&mut self) {
        self.last_housekeeping = Instant::now();
        let now = now_ms();
        if let Err(e) = self.conn.execute(
            "DELETE FROM idempotency WHERE created_ms < ?1",
            [now - self.window_ms],
        ) {
            tracing::warn!(cause = %e, "idempotency cleanup failed");
        }
        for (channel, age) in &self.retention {
            // Time grows with the offset inside a channel: delete the oldest run whose
            // time is past the cutoff, looking at no more than a bounded prefix.
            let cutoff = now - age.as_millis() as i64;
            let sql = "DELETE FROM messages WHERE channel = ?1 AND offset <= (
                 SELECT MAX(offset) FROM (
                     SELECT offset, time_ms FROM messages WHERE channel = ?1 ORDER BY offset LIMIT 10000
                 ) WHERE time_ms < ?2)";
            if let Err(e) = self.conn.execute(sql, params![channel, cutoff]) {
                tracing::warn!(cause = %e, channel, "retention cleanup failed");
            }
        }
    }
}

fn load_top(
    tx: &Connection,
    tops: &mut HashMap<String, (String, u64)>,
    channel: &str,
) -> rusqlite::Result<(String, u64)> {
    if let Some(t) = tops.get(channel) {
        return Ok(t.clone());
    }
    let found = tx
        .query_row(
            "SELECT epoch, top FROM channels WHERE channel = ?1",
            [channel],
            |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64)),
        )
        .optional()?;
    let t = match found {
        Some(t) => t,
        None => {
            let epoch = new_epoch();
            tx.execute(
                "INSERT INTO channels (channel, epoch, top) VALUES (?1, ?2, 0)",
                params![channel, epoch],
            )?;
            (epoch, 0)
        }
    };
    tops.insert(channel.to_string(), t.clone());
    Ok(t)
}

fn append_one(
    tx: &Connection,
    tops: &mut HashMap<String, (String, u64)>,
    req: &Append,
    window_ms: i64,
) -> rusqlite::Result<Pending> {
    let (epoch, top) = load_top(tx, tops, &req.channel)?;
    let now = now_ms();
    if let Some(key) = &req.idempotency_key {
        let earlier: Option<i64> = tx
            .prepare_cached("SELECT offset FROM idempotency WHERE channel = ?1 AND key = ?2 AND created_ms >= ?3")?
            .query_row(params![req.channel, key, now - window_ms], |r| r.get(0))
            .optional()?;
        if let Some(offset) = earlier {
            return Ok(Pending::Duplicate(StreamPosition {
                offset: offset as u64,
                epoch,
            }));
        }
    }
    let offset = top + 1;
    let mut publication = req.publication.clone();
    publication.offset = 0;
    let user = publication
        .info
        .as_ref()
        .map(|i| i.user.clone())
        .unwrap_or_default();
    tx.prepare_cached(
        "INSERT INTO messages (channel, offset, time_ms, user, body) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        req.channel,
        offset as i64,
        now,
        user,
        publication.encode_to_vec()
    ])?;
    tx.prepare_cached("UPDATE channels SET top = ?2 WHERE channel = ?1")?
        .execute(params![req.channel, offset as i64])?;
    if let Some(key) = &req.idempotency_key {
        tx.prepare_cached(
            "INSERT INTO idempotency (channel, key, offset, created_ms) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(channel, key) DO UPDATE SET offset = excluded.offset, created_ms = excluded.created_ms",
        )?
        .execute(params![req.channel, key, offset as i64, now])?;
    }
    let Retention { max_count, .. } = req.retention;
    if max_count > 0 && offset > max_count {
        tx.prepare_cached("DELETE FROM messages WHERE channel = ?1 AND offset <= ?2")?
            .execute(params![req.channel, (offset - max_count) as i64])?;
    }
    tops.insert(req.channel.clone(), (epoch.clone(), offset));
    publication.offset = offset;
    Ok(Pending::Fresh {
        channel: req.channel.clone(),
        publication: Box::new(publication),
        position: StreamPosition { offset, epoch },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_store() -> (Arc<SqliteStore>, tempdir::Dir) {
        let dir = tempdir::Dir::new();
        let s = SqliteStore::open(SqliteOptions {
            path: dir.path().join("herald.db"),
            sync: Sync::Normal,
            idempotency_window: Duration::from_secs(60),
        })
        .unwrap();
        (Arc::new(s), dir)
    }

    /// A unique directory under the system temp dir, removed on drop.
    mod tempdir {
        pub struct Dir(std::path::PathBuf);
        impl Dir {
            pub fn new() -> Dir {
                let p = std::env::temp_dir().join(format!("herald-store-{}", uuid::Uuid::new_v4()));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
            pub fn path(&self) -> &std::path::Path {
                &self.0
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[tokio::test]
    async fn sqlite_store_passes_conformance() {
        let (s, _dir) = temp_store();
        crate::store::conformance::run_all(s).await;
    }

    /// Cluster mode writes at the sequencer's offsets: idempotent, top only forward,
    /// the sequencer's epoch, nothing delivered.
    #[tokio::test]
    async fn append_at_is_idempotent_and_keeps_the_given_offsets() {
        let (s, _dir) = temp_store();
        let at = |offset: u64, text: &'static str| Publication {
            data: Bytes::from_static(text.as_bytes()),
            offset,
            ..Default::default()
        };
        let r = Retention::default();
        s.append_at("c", "e1", at(2, "b"), r).await.unwrap();
        s.append_at("c", "e1", at(1, "a"), r).await.unwrap();
        s.append_at("c", "e1", at(2, "other"), r).await.unwrap();
        let (pubs, top) = s.history("c", HistoryFilter::default()).await.unwrap();
        assert_eq!(
            top,
            StreamPosition {
                offset: 2,
                epoch: "e1".into()
            }
        );
        let got: Vec<(u64, &[u8])> = pubs.iter().map(|p| (p.offset, &p.data[..])).collect();
        assert_eq!(got, vec![(1, b"a".as_slice()), (2, b"b".as_slice())]);
    }

    /// A page never reaches past the position it is answered with: appends that commit
    /// after the position was read (here 4 and 5, after a `top` of 3) are left to live
    /// delivery, in every direction. A recovering subscriber got 404 twice without this
    /// (tests/sdk durable.test.mjs under load).
    #[tokio::test]
    async fn pages_stop_at_the_position_read_before_them() {
        let (s, _dir) = temp_store();
        let r = Retention::default();
        for o in 1..=5 {
            let p = Publication {
                data: Bytes::from_static(b"{}"),
                offset: o,
                ..Default::default()
            };
            s.append_at("c", "e", p, r).await.unwrap();
        }
        let top = StreamPosition {
            offset: 3,
            epoch: "e".into(),
        };
        let since = |o: u64| {
            Some(StreamPosition {
                offset: o,
                epoch: "e".into(),
            })
        };
        let cases = [
            (since(1), false, vec![2, 3]),
            (since(5), true, vec![3, 2, 1]),
            (None, false, vec![1, 2, 3]),
            (None, true, vec![3, 2, 1]),
        ];
        for (since, reverse, want) in cases {
            let filter = HistoryFilter {
                since: since.clone(),
                limit: None,
                reverse,
            };
            let top = top.clone();
            let got = s
                .read(move |c| Ok(read_history(c, "c", &filter, &top)))
                .await
                .unwrap()
                .unwrap();
            let offsets: Vec<u64> = got.iter().map(|p| p.offset).collect();
            assert_eq!(offsets, want, "since {since:?} reverse {reverse}");
        }
    }

    #[tokio::test]
    async fn data_survives_reopen() {
        let dir = tempdir::Dir::new();
        let opts = SqliteOptions {
            path: dir.path().join("h.db"),
            sync: Sync::Full,
            idempotency_window: Duration::from_secs(60),
        };
        let first = {
            let s = Arc::new(SqliteStore::open(opts.clone()).unwrap());
            let a = Append {
                channel: "c".into(),
                publication: Publication {
                    data: Bytes::from_static(b"{}"),
                    ..Default::default()
                },
                ..Default::default()
            };
            s.append(a.clone()).await.unwrap();
            s.append(a).await.unwrap().position
        };
        let s = Arc::new(SqliteStore::open(opts).unwrap());
        let (pubs, top) = s.history("c", HistoryFilter::default()).await.unwrap();
        assert_eq!(top, first);
        assert_eq!(
            pubs.iter().map(|p| p.offset).collect::<Vec<_>>(),
            vec![1, 2]
        );
    }
}
