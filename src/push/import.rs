//! `herald push-import`: moves what an embedded node kept in `store.path/push.db`
//! (devices, mutes, pushes still queued) into the shared Redis registry and queue that
//! cluster mode uses, so that switching a deployment to `broker.kind = "redis"` does not
//! forget every registered phone.
//!
//! Safe to run again: devices keep their ids (registering an id again updates it),
//! mutes are set again, and each queued push is written to Redis before it is deleted
//! from push.db, so an interrupted run sends a push twice at worst (at-least-once, as
//! everywhere else), never zero times. Run it with the embedded node stopped.

use std::collections::HashSet;
use std::path::Path;

use super::devices::{DeviceFilter, NewDevice};
use super::queue::PushQueue;
use super::redis_devices::RedisDevices;
use super::redis_queue::RedisQueue;
use super::{Finish, NewJob, Provider, PushStore, PushStoreError};
use crate::cluster::redis::Redis;
use crate::store::push_sqlite::{PushSqliteOptions, SqlitePushStore};

/// `herald push-import`: from `path` (or `store.path/push.db`) into the Redis of
/// `config.broker`, which must be cluster mode.
pub async fn from_file(
    config: &crate::config::Config,
    path: Option<&Path>,
) -> Result<Imported, String> {
    if config.broker.kind != "redis" {
        return Err(
            "broker.kind is not \"redis\": cluster mode keeps devices and the push queue in \
             Redis; an embedded node already uses push.db"
                .into(),
        );
    }
    let path = path.map_or_else(
        || Path::new(&config.store.path).join("push.db"),
        Path::to_path_buf,
    );
    // Opening creates a missing file: a mistyped path must not import an empty store.
    if !path.is_file() {
        return Err(format!("{}: no such push store", path.display()));
    }
    let from = SqlitePushStore::open(PushSqliteOptions {
        path: path.clone(),
        sync_full: true,
    })
    .map_err(|e| e.to_string())?;
    let redis = Redis::connect(&config.broker)
        .await
        .map_err(|e| format!("broker.redis_url: {e}"))?;
    let devices = RedisDevices::new(redis.clone());
    let queue = RedisQueue::new(redis, "push-import", config.push.visibility_timeout);
    sqlite_to_shared(&from, &devices, &queue)
        .await
        .map_err(|e| e.to_string())
}

/// Devices and queued pushes are moved this many at a time.
const PAGE: usize = 500;

/// What one run moved.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Imported {
    pub devices: u64,
    pub mutes: u64,
    /// Queued pushes (their attempt counts start again at 0).
    pub queued: u64,
}

/// Copies devices and mutes from `from` to `to`, and moves `from`'s queued pushes to
/// `queue`.
pub async fn sqlite_to_shared(
    from: &SqlitePushStore,
    to: &dyn PushStore,
    queue: &dyn PushQueue,
) -> Result<Imported, PushStoreError> {
    let mut done = Imported::default();
    let mut cursor = String::new();
    loop {
        let page = from
            .list(&DeviceFilter::default(), &cursor, PAGE, false)
            .await?;
        for d in page.items {
            to.register(NewDevice {
                id: d.id,
                user: d.user,
                provider: d.provider,
                platform: d.platform,
                token: d.token,
                topics: d.topics,
                meta: d.meta,
            })
            .await?;
            done.devices += 1;
        }
        if page.next_cursor.is_empty() {
            break;
        }
        cursor = page.next_cursor;
    }
    for (user, channel, until_ms) in from.mutes().await? {
        to.mute(&user, &channel, until_ms).await?;
        done.mutes += 1;
    }
    for provider in Provider::ALL {
        loop {
            // Every job, retrying ones too (due later): they are due at once in Redis.
            let (jobs, _) = from.due(provider, i64::MAX, PAGE, HashSet::new()).await?;
            if jobs.is_empty() {
                break;
            }
            let new = jobs
                .iter()
                .map(|j| NewJob {
                    device_id: j.device_id.clone(),
                    provider: j.provider,
                    token: j.token.clone(),
                    notification: j.notification.clone(),
                })
                .collect();
            queue.enqueue(new).await?;
            done.queued += jobs.len() as u64;
            from.finish(jobs.into_iter().map(|j| (j, Finish::Done)).collect())
                .await?;
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::cluster::testing::RedisServer;
    use crate::push::devices::Platform;
    use crate::push::now_ms;
    use crate::push::queue_conformance::job;

    fn device(user: &str, provider: Provider, token: &str) -> NewDevice {
        NewDevice {
            id: String::new(),
            user: user.into(),
            provider,
            platform: if provider == Provider::Apns {
                Platform::Ios
            } else {
                Platform::Android
            },
            token: token.into(),
            topics: vec!["news".into()],
            meta: [("app".to_string(), "1.2".to_string())].into(),
        }
    }

    /// 1,203 devices (more than two pages), mutes (one expired), queued pushes of both
    /// providers (one waiting for a retry): all of them in Redis afterwards, with the
    /// same ids, the queue of push.db empty, and a second run changing nothing.
    #[tokio::test]
    async fn an_embedded_push_db_moves_to_redis() {
        let dir = std::env::temp_dir().join(format!("herald-import-{}", uuid::Uuid::new_v4()));
        let from = SqlitePushStore::open(PushSqliteOptions {
            path: dir.join("push.db"),
            sync_full: false,
        })
        .unwrap();
        let mut ids = Vec::new();
        for i in 0..1203 {
            let provider = if i % 3 == 0 {
                Provider::Fcm
            } else {
                Provider::Apns
            };
            let d = from
                .register(device(
                    &format!("u{}", i % 50),
                    provider,
                    &format!("tok{i:04}"),
                ))
                .await
                .unwrap();
            ids.push(d.id);
        }
        from.mute("u1", "chat:a", None).await.unwrap();
        from.mute("u2", "chat:b", Some(now_ms() + 3_600_000))
            .await
            .unwrap();
        from.mute("u3", "chat:c", Some(now_ms() - 1)).await.unwrap();
        from.enqueue(vec![
            job("tok0001", Provider::Apns, "a1"),
            job("tok0002", Provider::Apns, "a2"),
            job("tok0000", Provider::Fcm, "f1"),
        ])
        .await
        .unwrap();
        let (taken, _) = from
            .due(Provider::Apns, now_ms(), 1, HashSet::new())
            .await
            .unwrap();
        let retry = Finish::Retry {
            due_ms: now_ms() + 3_600_000,
            attempts: 1,
        };
        from.finish(vec![(taken[0].clone(), retry)]).await.unwrap();

        let server = RedisServer::start();
        let cfg = crate::config::BrokerConfig {
            kind: "redis".into(),
            redis_url: server.url(),
            redis_cluster: false,
            redis_prefix: "imp".into(),
            redis_timeout: Duration::from_secs(2),
            history_meta_ttl: Duration::from_secs(600),
            presence_ttl: Duration::from_secs(30),
            node_heartbeat: Duration::from_secs(1),
            node_ttl: Duration::from_secs(3),
            reconcile_interval: Duration::from_secs(1),
        };
        let redis = Redis::connect(&cfg).await.unwrap();
        let to = RedisDevices::new(redis.clone());
        let queue = Arc::new(RedisQueue::new(redis, "n1", Duration::from_secs(30)));

        let done = sqlite_to_shared(&from, &to, queue.as_ref()).await.unwrap();
        assert_eq!(
            done,
            Imported {
                devices: 1203,
                mutes: 2,
                queued: 3
            }
        );
        let mut got = Vec::new();
        let mut cursor = String::new();
        loop {
            let page = to
                .list(&DeviceFilter::default(), &cursor, 1000, false)
                .await
                .unwrap();
            got.extend(page.items);
            if page.next_cursor.is_empty() {
                break;
            }
            cursor = page.next_cursor;
        }
        let mut got_ids: Vec<String> = got.iter().map(|d| d.id.clone()).collect();
        got_ids.sort();
        ids.sort();
        assert_eq!(got_ids, ids, "every device, with its id");
        let one = got.iter().find(|d| d.token == "tok0003").unwrap();
        assert_eq!(
            (one.user.as_str(), one.provider, one.platform),
            ("u3", Provider::Fcm, Platform::Android)
        );
        assert_eq!(one.topics, vec!["news".to_string()]);
        assert_eq!(one.meta.get("app").map(String::as_str), Some("1.2"));
        let users: Vec<String> = ["u1", "u2", "u3"].map(String::from).to_vec();
        assert_eq!(to.muted(&users, "chat:a").await.unwrap(), vec!["u1"]);
        assert_eq!(to.muted(&users, "chat:b").await.unwrap(), vec!["u2"]);
        assert!(to.muted(&users, "chat:c").await.unwrap().is_empty());
        for (provider, want) in [(Provider::Apns, 2), (Provider::Fcm, 1)] {
            let (jobs, _) = queue
                .due(provider, now_ms(), 10, HashSet::new())
                .await
                .unwrap();
            assert_eq!(jobs.len(), want, "{provider:?} jobs due in Redis");
        }
        assert!(from.depth().await.unwrap().iter().all(|(_, n)| *n == 0));

        let again = sqlite_to_shared(&from, &to, queue.as_ref()).await.unwrap();
        assert_eq!(
            again,
            Imported {
                devices: 1203,
                mutes: 2,
                queued: 0
            }
        );
        let page = to
            .list(&DeviceFilter::default(), "", 1, true)
            .await
            .unwrap();
        assert_eq!(page.total, Some(1203), "no device twice");
        let _ = std::fs::remove_dir_all(dir);
    }
}
