//! Every CQL statement the store runs, prepared once at open. `{ks}` stands for the
//! keyspace (checked by `schema::check_keyspace` before it gets here).

use ::scylla::client::session::Session;
use ::scylla::statement::prepared::PreparedStatement;
use ::scylla::statement::{Consistency, Statement};

use super::unavailable;
use crate::store::StoreError;

/// Rows per page of a paged read.
pub const PAGE_SIZE: i32 = 1000;

/// How a statement is prepared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A read or a plain (last-write-wins) write: the driver may retry it.
    Idempotent,
    /// A lightweight transaction: never retried blindly.
    Lwt,
    /// A read at LOCAL_SERIAL: sees every committed lightweight transaction.
    SerialRead,
}

macro_rules! statements {
    ($($name:ident : $kind:ident = $cql:expr;)*) => {
        /// The prepared statements, one field per statement.
        pub struct Statements {
            $(pub $name: PreparedStatement,)*
        }

        /// Name, kind and text (with `{ks}`) of every statement.
        #[cfg(test)]
        pub const CQL: &[(&str, Kind, &str)] = &[$((stringify!($name), Kind::$kind, $cql),)*];

        impl Statements {
            pub async fn prepare(session: &Session, keyspace: &str) -> Result<Statements, StoreError> {
                Ok(Statements {
                    $($name: prepare(session, keyspace, stringify!($name), Kind::$kind, $cql).await?,)*
                })
            }
        }
    };
}

statements! {
    // ---- channels (every write is a lightweight transaction) ----
    channel_get: Idempotent = "SELECT epoch, top, low FROM {ks}.channels WHERE channel = ?";
    channel_get_serial: SerialRead = "SELECT epoch, top, low FROM {ks}.channels WHERE channel = ?";
    channel_create: Lwt = "INSERT INTO {ks}.channels (channel, epoch, top, low, created_ms) VALUES (?, ?, 0, 1, ?) IF NOT EXISTS";
    channel_commit: Lwt = "UPDATE {ks}.channels SET top = ?, low = ? WHERE channel = ? IF top = ?";
    // Cluster mode (`append_at`): top and low only ever move up, whoever writes.
    channel_advance: Lwt = "UPDATE {ks}.channels SET top = ?, low = ? WHERE channel = ? IF top < ? AND low <= ?";
    channel_adopt_epoch: Lwt = "UPDATE {ks}.channels SET epoch = ? WHERE channel = ? IF epoch = ?";

    // ---- messages ----
    message_insert: Idempotent = "INSERT INTO {ks}.messages (channel, bucket, seq, time_ms, author, body) VALUES (?, ?, ?, ?, ?, ?) USING TTL ?";
    // Cluster mode: a row already at the offset is kept (see scylla/cluster.rs), except
    // an uncommitted leftover past top, replaced only if it is still what was read.
    message_insert_new: Lwt = "INSERT INTO {ks}.messages (channel, bucket, seq, time_ms, author, body) VALUES (?, ?, ?, ?, ?, ?) IF NOT EXISTS USING TTL ?";
    message_replace: Lwt = "UPDATE {ks}.messages USING TTL ? SET time_ms = ?, author = ?, body = ? WHERE channel = ? AND bucket = ? AND seq = ? IF body = ?";
    message_get: Idempotent = "SELECT author, body, TTL(body) FROM {ks}.messages WHERE channel = ? AND bucket = ? AND seq = ?";
    page_asc: Idempotent = "SELECT seq, body FROM {ks}.messages WHERE channel = ? AND bucket = ? AND seq >= ? AND seq <= ? ORDER BY seq ASC LIMIT ?";
    page_desc: Idempotent = "SELECT seq, body FROM {ks}.messages WHERE channel = ? AND bucket = ? AND seq >= ? AND seq <= ? ORDER BY seq DESC LIMIT ?";
    message_tombstone: Idempotent = "UPDATE {ks}.messages USING TTL ? SET body = ?, author = '' WHERE channel = ? AND bucket = ? AND seq = ?";
    bucket_delete: Idempotent = "DELETE FROM {ks}.messages WHERE channel = ? AND bucket = ?";
    bucket_delete_below: Idempotent = "DELETE FROM {ks}.messages WHERE channel = ? AND bucket = ? AND seq < ?";
    by_user_insert: Idempotent = "INSERT INTO {ks}.messages_by_user (user_id, channel, seq) VALUES (?, ?, ?) USING TTL ?";
    by_user_scan: Idempotent = "SELECT channel, seq FROM {ks}.messages_by_user WHERE user_id = ?";
    by_user_delete: Idempotent = "DELETE FROM {ks}.messages_by_user WHERE user_id = ?";

    // ---- idempotency ----
    idem_get: Idempotent = "SELECT seq FROM {ks}.idempotency WHERE channel = ? AND idem_key = ?";
    idem_put: Idempotent = "INSERT INTO {ks}.idempotency (channel, idem_key, seq) VALUES (?, ?, ?) USING TTL ?";

    // ---- members ----
    member_add_by_channel: Idempotent = "INSERT INTO {ks}.members_by_channel (channel, user_id, joined_ms) VALUES (?, ?, ?)";
    member_add_by_user: Idempotent = "INSERT INTO {ks}.members_by_user (user_id, channel, joined_ms) VALUES (?, ?, ?)";
    member_del_by_channel: Idempotent = "DELETE FROM {ks}.members_by_channel WHERE channel = ? AND user_id = ?";
    member_del_by_user: Idempotent = "DELETE FROM {ks}.members_by_user WHERE user_id = ? AND channel = ?";
    members_of_channel: Idempotent = "SELECT user_id FROM {ks}.members_by_channel WHERE channel = ?";
    member_get: Idempotent = "SELECT user_id FROM {ks}.members_by_channel WHERE channel = ? AND user_id = ?";
    channels_of_member: Idempotent = "SELECT channel FROM {ks}.members_by_user WHERE user_id = ?";
    member_channels_delete: Idempotent = "DELETE FROM {ks}.members_by_user WHERE user_id = ?";

    // ---- read markers ----
    marker_put: Idempotent = "INSERT INTO {ks}.read_markers (user_id, channel, seq, updated_ms) VALUES (?, ?, ?, ?)";
    marker_trim: Idempotent = "DELETE FROM {ks}.read_markers WHERE user_id = ? AND channel = ? AND seq < ?";
    marker_get: Idempotent = "SELECT seq FROM {ks}.read_markers WHERE user_id = ? AND channel = ? LIMIT 1";
    markers_delete: Idempotent = "DELETE FROM {ks}.read_markers WHERE user_id = ?";

    // ---- DM channels ----
    dm_insert: Idempotent = "INSERT INTO {ks}.dm_channels (user_id, channel) VALUES (?, ?)";
    dm_list: Idempotent = "SELECT channel FROM {ks}.dm_channels WHERE user_id = ?";
}

/// A statement's text for `keyspace`.
pub fn text(template: &str, keyspace: &str) -> String {
    template.replace("{ks}", keyspace)
}

async fn prepare(
    session: &Session,
    keyspace: &str,
    name: &str,
    kind: Kind,
    template: &str,
) -> Result<PreparedStatement, StoreError> {
    let stmt = Statement::new(text(template, keyspace)).with_page_size(PAGE_SIZE);
    let mut p = session
        .prepare(stmt)
        .await
        .map_err(|e| unavailable(&format!("preparing {name}"), e))?;
    match kind {
        Kind::Idempotent => p.set_is_idempotent(true),
        Kind::Lwt => p.set_is_idempotent(false),
        Kind::SerialRead => {
            p.set_is_idempotent(true);
            p.set_consistency(Consistency::LocalSerial);
        }
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table a statement reads or writes.
    fn table_of(cql: &str) -> Option<&str> {
        let words: Vec<&str> = cql.split_whitespace().collect();
        let at = words
            .iter()
            .position(|w| matches!(*w, "FROM" | "INTO" | "UPDATE"))?;
        words.get(at + 1)?.strip_prefix("hk.")
    }

    #[test]
    fn every_statement_uses_a_table_of_the_schema() {
        let tables = super::super::schema::tests::tables_created();
        for (name, _, cql) in CQL {
            let t = text(cql, "hk");
            assert!(!t.contains("{ks}"), "{name}");
            let table = table_of(&t).unwrap_or_else(|| panic!("{name}: no table in {t}"));
            assert!(
                tables.iter().any(|x| x == table),
                "{name}: no table {table}"
            );
        }
    }

    #[test]
    fn lightweight_transactions_are_marked() {
        for (name, kind, cql) in CQL {
            let is_lwt = cql.contains(" IF ");
            assert_eq!(is_lwt, *kind == Kind::Lwt, "{name}");
        }
        let names: Vec<&str> = CQL.iter().map(|(n, _, _)| *n).collect();
        let mut dedup = names.clone();
        dedup.sort();
        dedup.dedup();
        assert_eq!(names.len(), dedup.len());
    }

    /// Every column a statement names exists in the schema (a cheap stand-in for the
    /// server's own check, which needs a live ScyllaDB).
    #[test]
    fn statements_name_only_known_columns() {
        let schema: String = super::super::schema::MIGRATIONS
            .iter()
            .map(|(_, c)| *c)
            .collect();
        let keywords = [
            "SELECT", "FROM", "WHERE", "AND", "INSERT", "INTO", "VALUES", "USING", "TTL", "UPDATE",
            "SET", "DELETE", "IF", "NOT", "EXISTS", "ORDER", "BY", "ASC", "DESC", "LIMIT",
        ];
        for (name, _, cql) in CQL {
            let t = text(cql, "hk");
            for word in t
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
                .filter(|w| !w.is_empty())
            {
                if keywords.contains(&word)
                    || word.starts_with("hk.")
                    || word.chars().all(|c| c.is_ascii_digit())
                {
                    continue;
                }
                assert!(
                    schema.contains(&format!("    {word} ")),
                    "{name}: column {word} is not in the schema"
                );
            }
        }
    }
}
