//! The embedded push store on SQLite: devices, mutes and the durable queue of pushes in
//! `store.path/push.db` (WAL).
//!
//! A file of its own rather than tables in herald.db: the two writers would otherwise
//! share one write lock, and SQLite's busy handler sleeps whole milliseconds, which
//! the message store's group commit (on the publish path) must never do.
//!
//! One thread owns the connection and runs every operation. Whatever is waiting when
//! it wakes runs in one transaction (a savepoint each, so one failing operation fails
//! alone) and shares one commit, so the dispatcher's many small writes (a delete per
//! delivered push) cost one fsync per group, not one each.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use rusqlite::types::Value as Sql;
use rusqlite::{params, params_from_iter, Connection};
use tokio::sync::oneshot;

use crate::push::queue::PushQueue;
use crate::push::{
    now_ms, Device, DeviceFilter, DevicePage, DeviceUpdate, Finish, Job, NewDevice, NewJob,
    Notification, Provider, PushStore, PushStoreError,
};

mod devices;

use devices::{delete_device, list, placeholders, register, select_targets};

const MIGRATIONS: &[&str] = &[include_str!("../../schema/sqlite/push/0001_init.sql")];
/// Operations sharing one transaction at most.
const MAX_GROUP: usize = 1024;
/// Users per `IN (...)` list (SQLite allows 32766 parameters; keep statements small).
const CHUNK: usize = 500;

#[derive(Debug, Clone)]
pub struct PushSqliteOptions {
    pub path: PathBuf,
    /// fsync on every commit (`store.sync = "full"`), or at checkpoints.
    pub sync_full: bool,
}

impl From<rusqlite::Error> for PushStoreError {
    fn from(e: rusqlite::Error) -> Self {
        PushStoreError::Unavailable(e.to_string())
    }
}

type Finisher = Box<dyn FnOnce(Result<(), String>) + Send>;
type Op = Box<dyn FnOnce(&Connection) -> (bool, Finisher) + Send>;

pub struct SqlitePushStore {
    /// std Mutex-free send side: `mpsc::Sender` is `Send` but not `Sync`, hence the lock,
    /// held only for the send.
    tx: Mutex<mpsc::Sender<Op>>,
}

fn open_conn(path: &Path, sync_full: bool) -> rusqlite::Result<Connection> {
    let mut conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(
        None,
        "synchronous",
        if sync_full { "FULL" } else { "NORMAL" },
    )?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(conn)
}

impl SqlitePushStore {
    /// Every mute still in force, as `(user, channel, until_ms)`: for `herald
    /// push-import`, which moves them to the shared registry of cluster mode.
    pub async fn mutes(&self) -> Result<Vec<(String, String, Option<i64>)>, PushStoreError> {
        let now = now_ms();
        self.op(move |c| {
            let mut st = c.prepare(
                "SELECT user, channel, until_ms FROM push_mutes
                 WHERE until_ms IS NULL OR until_ms > ?1 ORDER BY user, channel",
            )?;
            let rows = st.query_map([now], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    /// Opens (creating if needed) the file, applies migrations, starts the thread.
    pub fn open(options: PushSqliteOptions) -> Result<SqlitePushStore, PushStoreError> {
        let fail = |e: &dyn std::fmt::Display| {
            PushStoreError::Unavailable(format!("{}: {e}", options.path.display()))
        };
        if let Some(dir) = options.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| fail(&e))?;
        }
        let conn = open_conn(&options.path, options.sync_full).map_err(|e| fail(&e))?;
        let (tx, rx) = mpsc::channel::<Op>();
        std::thread::Builder::new()
            .name("herald-push-store".into())
            .spawn(move || run(conn, rx))
            .map_err(|e| fail(&e))?;
        Ok(SqlitePushStore { tx: Mutex::new(tx) })
    }

    /// Runs `f` on the store's thread inside the current group's transaction; the
    /// answer comes once that transaction committed.
    async fn op<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, PushStoreError> + Send + 'static,
    ) -> Result<T, PushStoreError> {
        let (tx, rx) = oneshot::channel();
        let op: Op = Box::new(move |conn| {
            let r = f(conn);
            let ok = r.is_ok();
            let fin: Finisher = Box::new(move |commit| {
                let out = match (r, commit) {
                    (Err(e), _) => Err(e),
                    (Ok(_), Err(e)) => Err(PushStoreError::Unavailable(e)),
                    (Ok(v), Ok(())) => Ok(v),
                };
                let _ = tx.send(out);
            });
            (ok, fin)
        });
        self.tx
            .lock()
            .send(op)
            .map_err(|_| PushStoreError::Unavailable("push store stopped".into()))?;
        rx.await
            .map_err(|_| PushStoreError::Unavailable("push store stopped".into()))?
    }
}

fn run(mut conn: Connection, rx: mpsc::Receiver<Op>) {
    while let Ok(first) = rx.recv() {
        let mut ops = vec![first];
        while ops.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        let mut fins: Vec<Finisher> = Vec::with_capacity(ops.len());
        let committed = (|| -> rusqlite::Result<()> {
            let mut tx = conn.transaction()?;
            for op in ops.drain(..) {
                let sp = tx.savepoint()?;
                let (ok, fin) = op(&sp);
                fins.push(fin);
                if ok {
                    sp.commit()?;
                }
                // A failed operation's savepoint rolls back when dropped.
            }
            tx.commit()
        })();
        let commit = committed.map_err(|e| {
            tracing::error!(cause = %e, "push store commit failed");
            e.to_string()
        });
        for fin in fins {
            fin(commit.clone());
        }
    }
}

fn due(
    c: &Connection,
    provider: Provider,
    now: i64,
    limit: usize,
    skip: &HashSet<String>,
) -> Result<(Vec<Job>, Option<i64>), PushStoreError> {
    let p = provider.as_str();
    // Rows in flight are read (they are still due) but not decoded; ask for enough
    // rows to return `limit` others.
    let rows_wanted = limit + skip.len();
    let rows: Vec<(i64, String, String, String, i64)> = c
        .prepare_cached(
            "SELECT id, device_id, token, body, attempts FROM push_queue
             WHERE provider = ?1 AND due_ms <= ?2 ORDER BY due_ms, id LIMIT ?3",
        )?
        .query_map(params![p, now, rows_wanted as i64], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut jobs = Vec::with_capacity(limit.min(rows.len()));
    for (id, device_id, token, body, attempts) in rows {
        if skip.contains(&id.to_string()) || jobs.len() >= limit {
            continue;
        }
        match serde_json::from_str::<Notification>(&body) {
            Ok(notification) => jobs.push(Job {
                id: id.to_string(),
                device_id,
                provider,
                token,
                notification,
                attempts: attempts.max(0) as u32,
            }),
            Err(e) => {
                // Unreadable (corrupted) rows would block the head of the queue forever.
                tracing::error!(cause = %e, id, "dropping unreadable push job");
                c.execute("DELETE FROM push_queue WHERE id = ?1", [id])?;
            }
        }
    }
    let next: Option<i64> = c
        .prepare_cached("SELECT MIN(due_ms) FROM push_queue WHERE provider = ?1 AND due_ms > ?2")?
        .query_row(params![p, now], |r| r.get(0))?;
    Ok((jobs, next))
}

#[async_trait]
impl PushStore for SqlitePushStore {
    async fn register(&self, device: NewDevice) -> Result<Device, PushStoreError> {
        self.op(move |c| register(c, device)).await
    }

    async fn update(
        &self,
        filter: &DeviceFilter,
        update: &DeviceUpdate,
    ) -> Result<u64, PushStoreError> {
        let (f, u) = (filter.clone(), update.clone());
        self.op(move |c| devices::update(c, &f, &u)).await
    }

    async fn remove(&self, filter: &DeviceFilter) -> Result<u64, PushStoreError> {
        let f = filter.clone();
        self.op(move |c| {
            let targets = select_targets(c, &f)?;
            for (id, p, t) in &targets {
                delete_device(c, id, p, t)?;
            }
            Ok(targets.len() as u64)
        })
        .await
    }

    async fn remove_token(&self, provider: Provider, token: &str) -> Result<u64, PushStoreError> {
        let t = token.to_string();
        self.op(move |c| {
            let p = provider.as_str();
            let ids: Vec<String> = c
                .prepare_cached("SELECT id FROM push_devices WHERE provider = ?1 AND token = ?2")?
                .query_map(params![p, t], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            for id in &ids {
                delete_device(c, id, p, &t)?;
            }
            c.execute(
                "DELETE FROM push_queue WHERE provider = ?1 AND token = ?2",
                params![p, t],
            )?;
            Ok(ids.len() as u64)
        })
        .await
    }

    async fn list(
        &self,
        filter: &DeviceFilter,
        cursor: &str,
        limit: usize,
        with_total: bool,
    ) -> Result<DevicePage, PushStoreError> {
        let (f, cur) = (filter.clone(), cursor.to_string());
        if f.users.len() > CHUNK {
            // Long user lists (big conversations) are read in chunks, cursor ignored.
            let mut items = Vec::new();
            for chunk in f.users.chunks(CHUNK) {
                let part = DeviceFilter {
                    users: chunk.to_vec(),
                    ..f.clone()
                };
                items.extend(
                    self.op(move |c| list(c, &part, "", usize::MAX / 2, false))
                        .await?
                        .items,
                );
            }
            items.sort_by(|a, b| a.id.cmp(&b.id));
            let total = with_total.then_some(items.len() as u64);
            return Ok(DevicePage {
                items,
                next_cursor: String::new(),
                total,
            });
        }
        self.op(move |c| list(c, &f, &cur, limit, with_total)).await
    }

    async fn mute(
        &self,
        user: &str,
        channel: &str,
        until_ms: Option<i64>,
    ) -> Result<(), PushStoreError> {
        let (u, ch) = (user.to_string(), channel.to_string());
        self.op(move |c| {
            c.execute(
                "INSERT INTO push_mutes (user, channel, until_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT(user, channel) DO UPDATE SET until_ms = excluded.until_ms",
                params![u, ch, until_ms],
            )?;
            Ok(())
        })
        .await
    }

    async fn unmute(&self, user: &str, channel: &str) -> Result<(), PushStoreError> {
        let (u, ch) = (user.to_string(), channel.to_string());
        self.op(move |c| {
            c.execute(
                "DELETE FROM push_mutes WHERE user = ?1 AND channel = ?2",
                params![u, ch],
            )?;
            Ok(())
        })
        .await
    }

    async fn muted(&self, users: &[String], channel: &str) -> Result<Vec<String>, PushStoreError> {
        let mut out = Vec::new();
        for chunk in users.chunks(CHUNK) {
            let mut args: Vec<Sql> = vec![Sql::Text(channel.to_string()), Sql::Integer(now_ms())];
            args.extend(chunk.iter().cloned().map(Sql::Text));
            let sql = format!(
                "SELECT user FROM push_mutes WHERE channel = ? AND (until_ms IS NULL OR until_ms > ?)
                 AND user IN ({})",
                placeholders(chunk.len())
            );
            let found: Vec<String> = self
                .op(move |c| {
                    let mut st = c.prepare(&sql)?;
                    let rows = st.query_map(params_from_iter(args.iter()), |r| r.get(0))?;
                    Ok(rows.collect::<rusqlite::Result<Vec<String>>>()?)
                })
                .await?;
            out.extend(found);
        }
        Ok(out)
    }
}

/// The queue's table in the same file: removing a device drops its jobs in the same
/// transaction.
#[async_trait]
impl PushQueue for SqlitePushStore {
    async fn enqueue(&self, jobs: Vec<NewJob>) -> Result<u64, PushStoreError> {
        if jobs.is_empty() {
            return Ok(0);
        }
        self.op(move |c| {
            let now = now_ms();
            let mut st = c.prepare_cached(
                "INSERT INTO push_queue (provider, device_id, token, body, attempts, due_ms, created_ms)
                 VALUES (?1, ?2, ?3, ?4, 0, ?5, ?5)",
            )?;
            for j in &jobs {
                let body = serde_json::to_string(&j.notification)
                    .map_err(|e| PushStoreError::Unavailable(e.to_string()))?;
                st.execute(params![j.provider.as_str(), j.device_id, j.token, body, now])?;
            }
            Ok(jobs.len() as u64)
        })
        .await
    }

    async fn due(
        &self,
        provider: Provider,
        now_ms: i64,
        limit: usize,
        skip: HashSet<String>,
    ) -> Result<(Vec<Job>, Option<i64>), PushStoreError> {
        self.op(move |c| due(c, provider, now_ms, limit, &skip))
            .await
    }

    async fn finish(&self, done: Vec<(Job, Finish)>) -> Result<(), PushStoreError> {
        self.op(move |c| {
            for (job, f) in &done {
                // Ids this store did not hand out match no row.
                let id: i64 = job.id.parse().unwrap_or(-1);
                match f {
                    Finish::Done => {
                        c.prepare_cached("DELETE FROM push_queue WHERE id = ?1")?
                            .execute([id])?;
                    }
                    Finish::Retry { due_ms, attempts } => {
                        c.prepare_cached(
                            "UPDATE push_queue SET due_ms = ?2, attempts = ?3 WHERE id = ?1",
                        )?
                        .execute(params![id, due_ms, attempts])?;
                    }
                }
            }
            Ok(())
        })
        .await
    }

    async fn depth(&self) -> Result<Vec<(Provider, u64)>, PushStoreError> {
        self.op(|c| {
            let mut st =
                c.prepare_cached("SELECT provider, COUNT(*) FROM push_queue GROUP BY provider")?;
            let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
            let mut out = Vec::new();
            for r in rows {
                let (p, n) = r?;
                if let Some(p) = Provider::parse(&p) {
                    out.push((p, n as u64));
                }
            }
            Ok(out)
        })
        .await
    }

    async fn forget_token(&self, provider: Provider, token: &str) -> Result<u64, PushStoreError> {
        let t = token.to_string();
        self.op(move |c| {
            let n = c.execute(
                "DELETE FROM push_queue WHERE provider = ?1 AND token = ?2",
                params![provider.as_str(), t],
            )?;
            Ok(n as u64)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sqlite_push_store_passes_conformance() {
        let dir = std::env::temp_dir().join(format!("herald-push-{}", uuid::Uuid::new_v4()));
        let store = SqlitePushStore::open(PushSqliteOptions {
            path: dir.join("push.db"),
            sync_full: false,
        })
        .unwrap();
        crate::push::conformance::run_all(&store).await;
        crate::push::conformance::queue_with_devices(&store, &store).await;
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Each handle opens the file anew, as a restarted process does.
    #[tokio::test]
    async fn sqlite_push_queue_passes_conformance() {
        let dir = std::env::temp_dir().join(format!("herald-pushq-{}", uuid::Uuid::new_v4()));
        let d = dir.clone();
        crate::push::queue_conformance::run_all(
            move |ns: String, _consumer: String| {
                let path = d.join(format!("{ns}.db"));
                async move {
                    let s = SqlitePushStore::open(PushSqliteOptions {
                        path,
                        sync_full: false,
                    })
                    .unwrap();
                    std::sync::Arc::new(s) as std::sync::Arc<dyn PushQueue>
                }
            },
            false,
        )
        .await;
        let _ = std::fs::remove_dir_all(&dir);
    }
}
