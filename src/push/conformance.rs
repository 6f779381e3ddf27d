//! The behaviour every [`PushStore`] must have; each backend runs `run_all`.

use std::collections::BTreeMap;

use super::devices::TopicsOp;
use super::*;

fn device(user: &str, provider: Provider, platform: Platform, token: &str) -> NewDevice {
    NewDevice {
        id: String::new(),
        user: user.into(),
        provider,
        platform,
        token: token.into(),
        topics: Vec::new(),
        meta: BTreeMap::new(),
    }
}

fn job(d: &Device, title: &str) -> NewJob {
    NewJob {
        device_id: d.id.clone(),
        provider: d.provider,
        token: d.token.clone(),
        notification: Notification {
            title: title.into(),
            ..Default::default()
        },
    }
}

/// Devices and mutes: every [`PushStore`].
pub async fn run_all(s: &dyn PushStore) {
    devices(s).await;
    mutes(s).await;
}

async fn devices(s: &dyn PushStore) {
    let mut a = device("alice", Provider::Apns, Platform::Ios, "aa01");
    a.topics = vec!["news".into()];
    a.meta = [("app".to_string(), "1.0".to_string())].into();
    let a = s.register(a).await.unwrap();
    assert!(!a.id.is_empty());
    assert_eq!(a.topics, vec!["news".to_string()]);
    let b = s
        .register(device("bob", Provider::Fcm, Platform::Android, "fcm-b"))
        .await
        .unwrap();
    // The same token registered again (by another user) moves, keeping its id.
    let moved = s
        .register(device("carol", Provider::Apns, Platform::Ios, "aa01"))
        .await
        .unwrap();
    assert_eq!(moved.id, a.id);
    assert_eq!(moved.user, "carol");
    // Re-registering by id replaces the token.
    let mut again = device("carol", Provider::Apns, Platform::Ios, "aa02");
    again.id = a.id.clone();
    let again = s.register(again).await.unwrap();
    assert_eq!(
        (again.id.as_str(), again.token.as_str()),
        (a.id.as_str(), "aa02")
    );

    let all = s
        .list(&DeviceFilter::default(), "", 10, true)
        .await
        .unwrap();
    assert_eq!(all.items.len(), 2);
    assert_eq!(all.total, Some(2));
    let by_provider = DeviceFilter {
        providers: vec![Provider::Fcm],
        ..Default::default()
    };
    let fcm = s.list(&by_provider, "", 10, false).await.unwrap();
    assert_eq!(fcm.items, vec![b.clone()]);

    // Paging by cursor.
    let first = s
        .list(&DeviceFilter::default(), "", 1, false)
        .await
        .unwrap();
    assert_eq!(first.items.len(), 1);
    assert!(!first.next_cursor.is_empty());
    let second = s
        .list(&DeviceFilter::default(), &first.next_cursor, 1, false)
        .await
        .unwrap();
    assert_eq!(second.items.len(), 1);
    assert_ne!(first.items[0].id, second.items[0].id);
    assert!(second.next_cursor.is_empty());

    // Updates: topics, meta, user.
    let by_user = DeviceFilter {
        users: vec!["bob".into()],
        ..Default::default()
    };
    let upd = DeviceUpdate {
        topics: Some((TopicsOp::Add, vec!["sport".into(), "news".into()])),
        meta: Some([("k".to_string(), "v".to_string())].into()),
        ..Default::default()
    };
    assert_eq!(s.update(&by_user, &upd).await.unwrap(), 1);
    let by_topic = DeviceFilter {
        topics: vec!["sport".into()],
        ..Default::default()
    };
    let sport = s.list(&by_topic, "", 10, false).await.unwrap();
    assert_eq!(sport.items.len(), 1);
    assert_eq!(
        sport.items[0].topics,
        vec!["news".to_string(), "sport".to_string()]
    );
    assert_eq!(sport.items[0].meta.get("k").map(String::as_str), Some("v"));
    let rm = DeviceUpdate {
        topics: Some((TopicsOp::Remove, vec!["sport".into()])),
        user: Some("bobby".into()),
        ..Default::default()
    };
    assert_eq!(s.update(&by_user, &rm).await.unwrap(), 1);
    assert!(s
        .list(&by_topic, "", 10, false)
        .await
        .unwrap()
        .items
        .is_empty());
    let bobby = DeviceFilter {
        users: vec!["bobby".into()],
        ..Default::default()
    };
    assert_eq!(s.list(&bobby, "", 10, false).await.unwrap().items.len(), 1);

    // Removal by user and by token; an empty filter removes nothing.
    assert_eq!(s.remove(&DeviceFilter::default()).await.unwrap(), 0);
    assert_eq!(s.remove(&bobby).await.unwrap(), 1);
    assert_eq!(s.remove_token(Provider::Apns, "aa02").await.unwrap(), 1);
    assert!(s
        .list(&DeviceFilter::default(), "", 10, false)
        .await
        .unwrap()
        .items
        .is_empty());
}

async fn mutes(s: &dyn PushStore) {
    let users: Vec<String> = ["u1", "u2", "u3"].iter().map(|u| u.to_string()).collect();
    s.mute("u1", "chat:a", None).await.unwrap();
    s.mute("u2", "chat:a", Some(now_ms() - 1)).await.unwrap();
    s.mute("u3", "chat:b", None).await.unwrap();
    assert_eq!(
        s.muted(&users, "chat:a").await.unwrap(),
        vec!["u1".to_string()]
    );
    s.unmute("u1", "chat:a").await.unwrap();
    assert!(s.muted(&users, "chat:a").await.unwrap().is_empty());
}

/// A store that is also the queue (SQLite): removing a device drops its queued jobs in
/// the same transaction. The queue alone is checked by `queue_conformance`.
pub async fn queue_with_devices(s: &dyn PushStore, q: &dyn queue::PushQueue) {
    let d = s
        .register(device("q", Provider::Apns, Platform::Ios, "bb01"))
        .await
        .unwrap();
    let f = s
        .register(device("q", Provider::Fcm, Platform::Web, "web-1"))
        .await
        .unwrap();
    let n = q
        .enqueue(vec![job(&d, "1"), job(&d, "2"), job(&f, "3")])
        .await
        .unwrap();
    assert_eq!(n, 3);
    let mut depth = q.depth().await.unwrap();
    depth.sort();
    assert_eq!(depth, vec![(Provider::Apns, 2), (Provider::Fcm, 1)]);

    let now = now_ms();
    let (jobs, next) = q
        .due(Provider::Apns, now, 10, Default::default())
        .await
        .unwrap();
    assert_eq!(
        jobs.iter()
            .map(|j| j.notification.title.as_str())
            .collect::<Vec<_>>(),
        vec!["1", "2"]
    );
    assert_eq!(next, None);
    assert_eq!(jobs[0].token, "bb01");
    // Jobs in flight are left out.
    let skip = [jobs[0].id.clone()].into_iter().collect();
    let (rest, _) = q.due(Provider::Apns, now, 10, skip).await.unwrap();
    assert_eq!(
        rest.iter().map(|j| j.id.clone()).collect::<Vec<_>>(),
        vec![jobs[1].id.clone()]
    );
    assert_eq!(jobs[0].attempts, 0);
    q.finish(vec![
        (jobs[0].clone(), Finish::Done),
        (
            jobs[1].clone(),
            Finish::Retry {
                due_ms: now + 60_000,
                attempts: 1,
            },
        ),
    ])
    .await
    .unwrap();
    let (jobs2, next) = q
        .due(Provider::Apns, now, 10, Default::default())
        .await
        .unwrap();
    assert!(jobs2.is_empty());
    assert_eq!(next, Some(now + 60_000));
    let (later, _) = q
        .due(Provider::Apns, now + 60_000, 10, Default::default())
        .await
        .unwrap();
    assert_eq!(later.len(), 1);
    assert_eq!(later[0].attempts, 1);

    // A dead token takes its queued jobs with it.
    s.remove_token(Provider::Apns, "bb01").await.unwrap();
    assert!(q
        .due(Provider::Apns, now + 60_000, 10, Default::default())
        .await
        .unwrap()
        .0
        .is_empty());
    // Removing a device by user does too.
    let by_user = DeviceFilter {
        users: vec!["q".into()],
        ..Default::default()
    };
    s.remove(&by_user).await.unwrap();
    assert!(q.depth().await.unwrap().iter().all(|(_, n)| *n == 0));
}
