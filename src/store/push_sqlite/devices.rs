//! Device, topic and filter SQL of the embedded push store (run on its thread).

use rusqlite::types::Value as Sql;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension};

use crate::push::devices::TopicsOp;
use crate::push::{
    now_ms, Device, DeviceFilter, DevicePage, DeviceUpdate, NewDevice, Platform, Provider,
    PushStoreError,
};

pub(super) fn placeholders(n: usize) -> String {
    vec!["?"; n].join(",")
}

pub(super) fn row_device(r: &rusqlite::Row<'_>) -> rusqlite::Result<Device> {
    let provider: String = r.get(2)?;
    let platform: String = r.get(3)?;
    let meta: String = r.get(5)?;
    Ok(Device {
        id: r.get(0)?,
        user: r.get(1)?,
        provider: Provider::parse(&provider).unwrap_or(Provider::Fcm),
        platform: Platform::parse(&platform).unwrap_or(Platform::Android),
        token: r.get(4)?,
        topics: Vec::new(),
        meta: serde_json::from_str(&meta).unwrap_or_default(),
        created_at: r.get(6)?,
        updated_at: r.get(7)?,
    })
}

pub(super) const DEVICE_COLS: &str =
    "id, user, provider, platform, token, meta, created_ms, updated_ms";

pub(super) fn load_topics(c: &Connection, d: &mut Device) -> rusqlite::Result<()> {
    let mut st = c.prepare_cached(
        "SELECT topic FROM push_device_topics WHERE device_id = ?1 ORDER BY topic",
    )?;
    d.topics = st
        .query_map([&d.id], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(())
}

pub(super) fn get_device(c: &Connection, id: &str) -> rusqlite::Result<Option<Device>> {
    let d = c
        .prepare_cached(&format!(
            "SELECT {DEVICE_COLS} FROM push_devices WHERE id = ?1"
        ))?
        .query_row([id], row_device)
        .optional()?;
    match d {
        Some(mut d) => {
            load_topics(c, &mut d)?;
            Ok(Some(d))
        }
        None => Ok(None),
    }
}

pub(super) fn set_topics(c: &Connection, id: &str, topics: &[String]) -> rusqlite::Result<()> {
    c.execute("DELETE FROM push_device_topics WHERE device_id = ?1", [id])?;
    add_topics(c, id, topics)
}

pub(super) fn add_topics(c: &Connection, id: &str, topics: &[String]) -> rusqlite::Result<()> {
    let mut st = c.prepare_cached(
        "INSERT OR IGNORE INTO push_device_topics (topic, device_id) VALUES (?1, ?2)",
    )?;
    for t in topics {
        st.execute(params![t, id])?;
    }
    Ok(())
}

/// The `WHERE` clause and parameters of a device filter (after `cursor` when given).
pub(super) fn filter_sql(f: &DeviceFilter, cursor: Option<&str>) -> (String, Vec<Sql>) {
    let mut sql = String::from(" WHERE 1=1");
    let mut args: Vec<Sql> = Vec::new();
    let mut add = |sql: &mut String, col: &str, vals: Vec<String>| {
        if !vals.is_empty() {
            sql.push_str(&format!(" AND {col} IN ({})", placeholders(vals.len())));
            args.extend(vals.into_iter().map(Sql::Text));
        }
    };
    add(&mut sql, "id", f.ids.clone());
    add(&mut sql, "user", f.users.clone());
    add(
        &mut sql,
        "provider",
        f.providers.iter().map(|p| p.as_str().to_string()).collect(),
    );
    add(
        &mut sql,
        "platform",
        f.platforms.iter().map(|p| p.as_str().to_string()).collect(),
    );
    if !f.topics.is_empty() {
        sql.push_str(&format!(
            " AND id IN (SELECT device_id FROM push_device_topics WHERE topic IN ({}))",
            placeholders(f.topics.len())
        ));
        args.extend(f.topics.iter().cloned().map(Sql::Text));
    }
    if let Some(c) = cursor.filter(|c| !c.is_empty()) {
        sql.push_str(" AND id > ?");
        args.push(Sql::Text(c.to_string()));
    }
    (sql, args)
}

/// Ids, providers and tokens of the devices a (ids, users) filter selects.
pub(super) fn select_targets(
    c: &Connection,
    f: &DeviceFilter,
) -> rusqlite::Result<Vec<(String, String, String)>> {
    let narrow = DeviceFilter {
        ids: f.ids.clone(),
        users: f.users.clone(),
        ..Default::default()
    };
    if narrow.is_empty() {
        return Ok(Vec::new());
    }
    let (sql, args) = filter_sql(&narrow, None);
    let mut st = c.prepare(&format!(
        "SELECT id, provider, token FROM push_devices{sql}"
    ))?;
    let rows = st.query_map(params_from_iter(args.iter()), |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
    })?;
    rows.collect()
}

pub(super) fn delete_device(
    c: &Connection,
    id: &str,
    provider: &str,
    token: &str,
) -> rusqlite::Result<()> {
    c.execute("DELETE FROM push_device_topics WHERE device_id = ?1", [id])?;
    c.execute(
        "DELETE FROM push_queue WHERE provider = ?1 AND token = ?2",
        params![provider, token],
    )?;
    c.execute("DELETE FROM push_devices WHERE id = ?1", [id])?;
    Ok(())
}

pub(super) fn register(c: &Connection, d: NewDevice) -> Result<Device, PushStoreError> {
    let now = now_ms();
    let provider = d.provider.as_str();
    let meta = serde_json::to_string(&d.meta).unwrap_or_else(|_| "{}".into());
    let by_token: Option<String> = c
        .prepare_cached("SELECT id FROM push_devices WHERE provider = ?1 AND token = ?2")?
        .query_row(params![provider, d.token], |r| r.get(0))
        .optional()?;
    let by_id = if d.id.is_empty() {
        None
    } else {
        get_device(c, &d.id)?.map(|x| x.id)
    };
    let id = match (by_id, by_token) {
        (Some(id), other) => {
            // The token may sit on another device row: it moves to this one.
            if let Some(other) = other.filter(|o| *o != id) {
                c.execute(
                    "DELETE FROM push_device_topics WHERE device_id = ?1",
                    [&other],
                )?;
                c.execute("DELETE FROM push_devices WHERE id = ?1", [&other])?;
            }
            id
        }
        (None, Some(id)) => id,
        (None, None) => {
            let id = if d.id.is_empty() {
                uuid::Uuid::new_v4().to_string()
            } else {
                d.id.clone()
            };
            c.execute(
                "INSERT INTO push_devices (id, user, provider, platform, token, meta, created_ms, updated_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
                params![id, d.user, provider, d.platform.as_str(), d.token, meta, now],
            )?;
            set_topics(c, &id, &d.topics)?;
            return get_device(c, &id)?.ok_or(PushStoreError::NotFound);
        }
    };
    c.execute(
        "UPDATE push_devices SET user = ?2, provider = ?3, platform = ?4, token = ?5, meta = ?6, updated_ms = ?7
         WHERE id = ?1",
        params![id, d.user, provider, d.platform.as_str(), d.token, meta, now],
    )?;
    set_topics(c, &id, &d.topics)?;
    get_device(c, &id)?.ok_or(PushStoreError::NotFound)
}

pub(super) fn update(
    c: &Connection,
    f: &DeviceFilter,
    u: &DeviceUpdate,
) -> Result<u64, PushStoreError> {
    let targets = select_targets(c, f)?;
    let now = now_ms();
    for (id, _, _) in &targets {
        if let Some(user) = &u.user {
            c.execute(
                "UPDATE push_devices SET user = ?2, updated_ms = ?3 WHERE id = ?1",
                params![id, user, now],
            )?;
        }
        if let Some(meta) = &u.meta {
            let meta = serde_json::to_string(meta).unwrap_or_else(|_| "{}".into());
            c.execute(
                "UPDATE push_devices SET meta = ?2, updated_ms = ?3 WHERE id = ?1",
                params![id, meta, now],
            )?;
        }
        if let Some((op, topics)) = &u.topics {
            match op {
                TopicsOp::Set => set_topics(c, id, topics)?,
                TopicsOp::Add => add_topics(c, id, topics)?,
                TopicsOp::Remove => {
                    let mut st = c.prepare_cached(
                        "DELETE FROM push_device_topics WHERE device_id = ?1 AND topic = ?2",
                    )?;
                    for t in topics {
                        st.execute(params![id, t])?;
                    }
                }
            }
            c.execute(
                "UPDATE push_devices SET updated_ms = ?2 WHERE id = ?1",
                params![id, now],
            )?;
        }
    }
    Ok(targets.len() as u64)
}

pub(super) fn list(
    c: &Connection,
    f: &DeviceFilter,
    cursor: &str,
    limit: usize,
    with_total: bool,
) -> Result<DevicePage, PushStoreError> {
    let (sql, mut args) = filter_sql(f, Some(cursor));
    args.push(Sql::Integer(
        limit.saturating_add(1).min(i64::MAX as usize) as i64
    ));
    let mut st = c.prepare(&format!(
        "SELECT {DEVICE_COLS} FROM push_devices{sql} ORDER BY id LIMIT ?"
    ))?;
    let mut items: Vec<Device> = st
        .query_map(params_from_iter(args.iter()), row_device)?
        .collect::<rusqlite::Result<_>>()?;
    let next_cursor = if items.len() > limit {
        items.truncate(limit);
        items.last().map(|d| d.id.clone()).unwrap_or_default()
    } else {
        String::new()
    };
    for d in &mut items {
        load_topics(c, d)?;
    }
    let total = if with_total {
        let (sql, args) = filter_sql(f, None);
        let n: i64 = c.query_row(
            &format!("SELECT COUNT(*) FROM push_devices{sql}"),
            params_from_iter(args.iter()),
            |r| r.get(0),
        )?;
        Some(n as u64)
    } else {
        None
    };
    Ok(DevicePage {
        items,
        next_cursor,
        total,
    })
}
