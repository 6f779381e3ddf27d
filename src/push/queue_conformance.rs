//! The behaviour every [`PushQueue`] must have; each backend runs `run_all`.
//!
//! `make(ns, consumer)` opens the queue `ns` (a fresh one per check) as the consumer
//! `consumer`: another SQLite handle on the same file, or another node of the Redis
//! consumer group. Dropping a handle is a crash: nothing is finished or acknowledged.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::queue::PushQueue;
use super::*;

/// The visibility timeout the Redis queue is opened with in these checks.
pub const VISIBILITY: Duration = Duration::from_millis(500);

/// A queued push for `token`, told apart by `title`.
pub fn job(token: &str, provider: Provider, title: &str) -> NewJob {
    NewJob {
        device_id: format!("dev-{token}"),
        provider,
        token: token.into(),
        notification: Notification {
            id: format!("n-{title}"),
            title: title.into(),
            ..Default::default()
        },
    }
}

fn titles(jobs: &[Job]) -> Vec<&str> {
    jobs.iter().map(|j| j.notification.title.as_str()).collect()
}

async fn depth(q: &dyn PushQueue, p: Provider) -> u64 {
    q.depth()
        .await
        .unwrap()
        .into_iter()
        .find(|(x, _)| *x == p)
        .map_or(0, |(_, n)| n)
}

/// Reads until `want` jobs came back (or panics after a bound), skipping none.
async fn take_eventually(q: &dyn PushQueue, want: usize) -> Vec<Job> {
    let started = Instant::now();
    let mut got = Vec::new();
    while got.len() < want {
        assert!(
            started.elapsed() < VISIBILITY * 20,
            "only {} of {want} jobs came back",
            got.len()
        );
        let skip: HashSet<String> = got.iter().map(|j: &Job| j.id.clone()).collect();
        let (jobs, _) = q.due(Provider::Apns, now_ms(), 100, skip).await.unwrap();
        got.extend(jobs);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    got
}

/// `shared`: several consumers read one queue and each job goes to one of them (Redis);
/// otherwise one process reads it and a new handle sees everything unfinished at once
/// (SQLite).
pub async fn run_all<F, Fut>(make: F, shared: bool)
where
    F: Fn(String, String) -> Fut,
    Fut: Future<Output = Arc<dyn PushQueue>>,
{
    let ns = |s: &str| format!("{s}-{}", uuid::Uuid::new_v4().simple());
    order_and_ack(&*make(ns("order"), "a".into()).await).await;
    retry_delay(&*make(ns("retry"), "a".into()).await).await;
    forget(&*make(ns("forget"), "a".into()).await).await;

    // A consumer dies with a job in flight: another one sends it.
    let name = ns("crash");
    let a = make(name.clone(), "a".into()).await;
    a.enqueue(vec![job("t1", Provider::Apns, "x")])
        .await
        .unwrap();
    let (taken, _) = a
        .due(Provider::Apns, now_ms(), 10, HashSet::new())
        .await
        .unwrap();
    assert_eq!(titles(&taken), vec!["x"]);
    let b = make(name.clone(), "b".into()).await;
    if shared {
        // Not while the first may still be sending it.
        let (none, _) = b
            .due(Provider::Apns, now_ms(), 10, HashSet::new())
            .await
            .unwrap();
        assert!(none.is_empty(), "handed to two consumers at once");
    }
    drop(a);
    let again = take_eventually(&*b, 1).await;
    assert_eq!(again[0].notification.id, "n-x");
    assert_eq!(again[0].token, "t1");
    b.finish(vec![(again[0].clone(), Finish::Done)])
        .await
        .unwrap();
    assert_eq!(depth(&*b, Provider::Apns).await, 0);
    drop(b);

    // A restart with jobs queued, in flight and waiting for a retry: none is lost.
    let name = ns("restart");
    let a = make(name.clone(), "a".into()).await;
    let batch: Vec<NewJob> = (0..3)
        .map(|i| job(&format!("r{i}"), Provider::Apns, &format!("r{i}")))
        .collect();
    a.enqueue(batch).await.unwrap();
    let (two, _) = a
        .due(Provider::Apns, now_ms(), 2, HashSet::new())
        .await
        .unwrap();
    assert_eq!(titles(&two), vec!["r0", "r1"]);
    let soon = now_ms() + 200;
    a.finish(vec![(
        two[1].clone(),
        Finish::Retry {
            due_ms: soon,
            attempts: 1,
        },
    )])
    .await
    .unwrap();
    drop(a);
    let a2 = make(name, "a2".into()).await;
    assert_eq!(depth(&*a2, Provider::Apns).await, 3);
    let mut all = take_eventually(&*a2, 3).await;
    all.sort_by(|x, y| x.notification.title.cmp(&y.notification.title));
    assert_eq!(titles(&all), vec!["r0", "r1", "r2"]);
    assert_eq!(all[1].attempts, 1);
    a2.finish(all.into_iter().map(|j| (j, Finish::Done)).collect())
        .await
        .unwrap();
    assert_eq!(depth(&*a2, Provider::Apns).await, 0);
    drop(a2);

    if shared {
        // Two live consumers split a backlog: every job to one of them.
        let name = ns("split");
        let (a, b) = (
            make(name.clone(), "a".into()).await,
            make(name, "b".into()).await,
        );
        let backlog: Vec<NewJob> = (0..20)
            .map(|i| job("s", Provider::Fcm, &format!("{i:02}")))
            .collect();
        a.enqueue(backlog).await.unwrap();
        let mut seen: Vec<String> = Vec::new();
        for _ in 0..10 {
            for q in [&a, &b] {
                let (jobs, _) = q
                    .due(Provider::Fcm, now_ms(), 3, HashSet::new())
                    .await
                    .unwrap();
                seen.extend(titles(&jobs).into_iter().map(String::from));
                q.finish(jobs.into_iter().map(|j| (j, Finish::Done)).collect())
                    .await
                    .unwrap();
            }
        }
        seen.sort();
        let want: Vec<String> = (0..20).map(|i| format!("{i:02}")).collect();
        assert_eq!(seen, want, "each job once");
        assert_eq!(depth(&*a, Provider::Fcm).await, 0);
    }
}

async fn order_and_ack(q: &dyn PushQueue) {
    let batch: Vec<NewJob> = (1..=5)
        .map(|i| job("t", Provider::Apns, &i.to_string()))
        .chain([job("f", Provider::Fcm, "fcm")])
        .collect();
    assert_eq!(q.enqueue(batch).await.unwrap(), 6);
    assert_eq!(depth(q, Provider::Apns).await, 5);
    assert_eq!(depth(q, Provider::Fcm).await, 1);
    let now = now_ms();
    let (first, next) = q.due(Provider::Apns, now, 2, HashSet::new()).await.unwrap();
    assert_eq!(titles(&first), vec!["1", "2"]);
    assert_eq!(next, None);
    assert_eq!(first[0].attempts, 0);
    assert_eq!(first[0].device_id, "dev-t");
    // Sends in flight are not handed out again.
    let skip: HashSet<String> = first.iter().map(|j| j.id.clone()).collect();
    let (rest, _) = q.due(Provider::Apns, now, 10, skip).await.unwrap();
    assert_eq!(titles(&rest), vec!["3", "4", "5"]);
    // Acknowledged jobs are gone; the others stay until they are.
    q.finish(first.into_iter().map(|j| (j, Finish::Done)).collect())
        .await
        .unwrap();
    assert_eq!(depth(q, Provider::Apns).await, 3);
    q.finish(rest.into_iter().map(|j| (j, Finish::Done)).collect())
        .await
        .unwrap();
    assert_eq!(depth(q, Provider::Apns).await, 0);
    let (fcm, _) = q.due(Provider::Fcm, now, 10, HashSet::new()).await.unwrap();
    assert_eq!(titles(&fcm), vec!["fcm"]);
    q.finish(vec![(fcm[0].clone(), Finish::Done)])
        .await
        .unwrap();
    assert_eq!(depth(q, Provider::Fcm).await, 0);
}

async fn retry_delay(q: &dyn PushQueue) {
    q.enqueue(vec![job("t", Provider::Apns, "late")])
        .await
        .unwrap();
    let now = now_ms();
    let (jobs, _) = q
        .due(Provider::Apns, now, 10, HashSet::new())
        .await
        .unwrap();
    assert_eq!(jobs.len(), 1);
    let due = now + 60_000;
    q.finish(vec![(
        jobs[0].clone(),
        Finish::Retry {
            due_ms: due,
            attempts: 1,
        },
    )])
    .await
    .unwrap();
    // Still queued, not due before its time, and the next due time is known.
    assert_eq!(depth(q, Provider::Apns).await, 1);
    let (early, next) = q
        .due(Provider::Apns, due - 1, 10, HashSet::new())
        .await
        .unwrap();
    assert!(early.is_empty());
    assert_eq!(next, Some(due));
    let (later, _) = q
        .due(Provider::Apns, due, 10, HashSet::new())
        .await
        .unwrap();
    assert_eq!(titles(&later), vec!["late"]);
    assert_eq!(later[0].attempts, 1);
    assert_eq!(later[0].notification.id, jobs[0].notification.id);
    q.finish(vec![(later[0].clone(), Finish::Done)])
        .await
        .unwrap();
    assert_eq!(depth(q, Provider::Apns).await, 0);
}

async fn forget(q: &dyn PushQueue) {
    q.enqueue(vec![
        job("dead", Provider::Apns, "d1"),
        job("dead", Provider::Apns, "d2"),
        job("dead", Provider::Apns, "d3"),
        job("live", Provider::Apns, "l1"),
    ])
    .await
    .unwrap();
    let now = now_ms();
    let (two, _) = q.due(Provider::Apns, now, 2, HashSet::new()).await.unwrap();
    assert_eq!(titles(&two), vec!["d1", "d2"]);
    // d1 waits for a retry, d2 is in flight, d3 is queued when the token dies.
    q.finish(vec![(
        two[0].clone(),
        Finish::Retry {
            due_ms: now + 10,
            attempts: 1,
        },
    )])
    .await
    .unwrap();
    assert_eq!(q.forget_token(Provider::Apns, "dead").await.unwrap(), 3);
    assert_eq!(depth(q, Provider::Apns).await, 1);
    // The send in flight ends with a retry: it does not come back.
    q.finish(vec![(
        two[1].clone(),
        Finish::Retry {
            due_ms: now + 10,
            attempts: 1,
        },
    )])
    .await
    .unwrap();
    let skip: HashSet<String> = [two[1].id.clone()].into();
    let (left, _) = q.due(Provider::Apns, now + 20, 10, skip).await.unwrap();
    assert_eq!(titles(&left), vec!["l1"]);
    q.finish(vec![(left[0].clone(), Finish::Done)])
        .await
        .unwrap();
    assert_eq!(depth(q, Provider::Apns).await, 0);
    assert_eq!(q.forget_token(Provider::Apns, "dead").await.unwrap(), 0);
}
