//! The CQL schema (schema/cql/, embedded at build time), `herald migrate`, and the
//! version check a node runs before it uses the keyspace.

use ::scylla::client::session::Session;

use super::unavailable;
use crate::store::StoreError;

/// Creates the keyspace and the schema_version table; run on every migrate.
const BOOTSTRAP: &str = include_str!("../../../schema/cql/keyspace.cql");

/// Versioned schema files: version N is `MIGRATIONS[N - 1]`. Append only: a released
/// file never changes, a change is a new file.
pub const MIGRATIONS: &[(&str, &str)] = &[(
    "0001_init",
    include_str!("../../../schema/cql/0001_init.cql"),
)];

/// The schema version this build needs.
pub fn latest_version() -> i32 {
    MIGRATIONS.len() as i32
}

/// The schema_version partition Herald writes.
const COMPONENT: &str = "herald";

/// A keyspace name is put into CQL text, so it is checked: a letter, then letters,
/// digits or `_`, at most 48 characters (CQL's limit).
pub fn check_keyspace(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
    if !first_ok || name.len() > 48 || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!(
            "{name:?}: use a letter, then letters, digits or _ (at most 48)"
        ));
    }
    Ok(())
}

/// The replication option is a CQL map put into `CREATE KEYSPACE`: it must look like
/// one (`{'class': ...}`) and cannot end the statement or start a comment.
pub fn check_replication(map: &str) -> Result<(), String> {
    let m = map.trim();
    let well_formed = m.starts_with('{')
        && m.ends_with('}')
        && m.contains("'class'")
        && !m.contains(';')
        && !m.contains("--")
        && !m.contains("/*")
        && !m.contains("${");
    if !well_formed {
        return Err(format!(
            "{map:?}: expected a CQL replication map such as \
             {{'class': 'SimpleStrategy', 'replication_factor': 1}}"
        ));
    }
    Ok(())
}

/// Replaces `${keyspace}` and `${replication}` in a schema file.
pub fn render(template: &str, keyspace: &str, replication: &str) -> String {
    template
        .replace("${keyspace}", keyspace)
        .replace("${replication}", replication.trim())
}

/// Splits a schema file into statements: `--` comments (to the end of the line) are
/// dropped, statements end with `;`, blank ones are skipped. The schema files hold no
/// string literal with `--` or `;` in it.
pub fn split_statements(cql: &str) -> Vec<String> {
    let without_comments: String = cql
        .lines()
        .map(|line| match line.find("--") {
            Some(i) => &line[..i],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n");
    without_comments
        .split(';')
        .map(|s| {
            s.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join("\n")
        })
        .filter(|s| !s.is_empty())
        .collect()
}

/// What `migrate` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrateReport {
    pub keyspace: String,
    /// The version recorded before (0 for a new keyspace).
    pub from: i32,
    /// The version recorded now.
    pub to: i32,
}

impl std::fmt::Display for MigrateReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.from == self.to {
            write!(
                f,
                "keyspace {} is up to date (schema version {})",
                self.keyspace, self.to
            )
        } else {
            write!(
                f,
                "keyspace {}: schema version {} -> {}",
                self.keyspace, self.from, self.to
            )
        }
    }
}

async fn run_file(session: &Session, name: &str, cql: &str) -> Result<(), StoreError> {
    for stmt in split_statements(cql) {
        session
            .query_unpaged(stmt.as_str(), ())
            .await
            .map_err(|e| unavailable(&format!("schema {name}: {stmt}"), e))?;
    }
    Ok(())
}

/// The highest version recorded in the keyspace; `None` when the keyspace or its
/// schema_version table does not exist (looked up in `system_schema`, so a missing
/// table is not confused with an unreachable cluster).
pub async fn recorded_version(
    session: &Session,
    keyspace: &str,
) -> Result<Option<i32>, StoreError> {
    let exists = session
        .query_unpaged(
            "SELECT table_name FROM system_schema.tables WHERE keyspace_name = ? AND table_name = ?",
            (keyspace, "schema_version"),
        )
        .await
        .map_err(|e| unavailable("reading system_schema.tables", e))?
        .into_rows_result()
        .map_err(|e| unavailable("reading system_schema.tables", e))?
        .rows_num()
        > 0;
    if !exists {
        return Ok(None);
    }
    let q = format!("SELECT version FROM {keyspace}.schema_version WHERE component = ? LIMIT 1");
    let rows = session
        .query_unpaged(q, (COMPONENT,))
        .await
        .map_err(|e| unavailable("reading schema_version", e))?
        .into_rows_result()
        .map_err(|e| unavailable("reading schema_version", e))?;
    let v = rows
        .maybe_first_row::<(i32,)>()
        .map_err(|e| unavailable("reading schema_version", e))?
        .map(|(v,)| v);
    Ok(Some(v.unwrap_or(0)))
}

/// Creates the keyspace if needed and applies every schema file it has not recorded;
/// idempotent, safe to run again after a failure part-way.
pub async fn migrate(
    session: &Session,
    keyspace: &str,
    replication: &str,
) -> Result<MigrateReport, StoreError> {
    check_keyspace(keyspace).map_err(|e| unavailable("store.scylla_keyspace", e))?;
    check_replication(replication).map_err(|e| unavailable("store.scylla_replication", e))?;
    run_file(
        session,
        "keyspace",
        &render(BOOTSTRAP, keyspace, replication),
    )
    .await?;
    let from = recorded_version(session, keyspace).await?.unwrap_or(0);
    let record = format!(
        "INSERT INTO {keyspace}.schema_version (component, version, applied_ms, description) \
         VALUES (?, ?, ?, ?)"
    );
    for (i, (name, cql)) in MIGRATIONS.iter().enumerate() {
        let version = i as i32 + 1;
        if version <= from {
            continue;
        }
        run_file(session, name, &render(cql, keyspace, replication)).await?;
        session
            .query_unpaged(
                record.as_str(),
                (COMPONENT, version, super::now_ms(), *name),
            )
            .await
            .map_err(|e| unavailable("recording the schema version", e))?;
        tracing::info!(keyspace, version, name, "schema applied");
    }
    Ok(MigrateReport {
        keyspace: keyspace.to_string(),
        from,
        to: from.max(latest_version()),
    })
}

/// Fails unless the keyspace is at (or past) the version this build needs.
pub async fn check_version(session: &Session, keyspace: &str) -> Result<(), StoreError> {
    let need = latest_version();
    match recorded_version(session, keyspace).await? {
        Some(v) if v >= need => {
            if v > need {
                tracing::warn!(
                    keyspace,
                    recorded = v,
                    known = need,
                    "the keyspace has a newer schema than this build knows"
                );
            }
            Ok(())
        }
        found => Err(StoreError::Unavailable(format!(
            "keyspace {keyspace} is at schema version {} but this build needs {need}: \
             run `herald migrate`",
            found.unwrap_or(0)
        ))),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    const REPL: &str = "{'class': 'SimpleStrategy', 'replication_factor': 1}";

    #[test]
    fn keyspace_names() {
        assert!(check_keyspace("herald").is_ok());
        assert!(check_keyspace("herald_test_0a1b").is_ok());
        assert!(check_keyspace("").is_err());
        assert!(check_keyspace("1herald").is_err());
        assert!(check_keyspace("her-ald").is_err());
        assert!(check_keyspace("herald; DROP").is_err());
        assert!(check_keyspace(&"h".repeat(49)).is_err());
    }

    #[test]
    fn replication_maps() {
        assert!(check_replication(REPL).is_ok());
        assert!(
            check_replication("{'class': 'NetworkTopologyStrategy', 'dc1': 3, 'dc2': 3}").is_ok()
        );
        assert!(check_replication("SimpleStrategy").is_err());
        assert!(check_replication("{'class': 'SimpleStrategy'}; DROP KEYSPACE x").is_err());
        assert!(check_replication("{'replication_factor': 1}").is_err());
    }

    #[test]
    fn bootstrap_renders_keyspace_and_version_table() {
        let stmts = split_statements(&render(BOOTSTRAP, "hk", REPL));
        assert_eq!(stmts.len(), 2, "{stmts:#?}");
        assert!(stmts[0].starts_with("CREATE KEYSPACE IF NOT EXISTS hk"));
        assert!(stmts[0].contains(REPL));
        assert!(stmts[1].starts_with("CREATE TABLE IF NOT EXISTS hk.schema_version"));
    }

    #[test]
    fn migrations_are_idempotent_statements() {
        for (name, cql) in MIGRATIONS {
            let rendered = render(cql, "hk", REPL);
            assert!(!rendered.contains("${"), "{name}: unreplaced placeholder");
            let stmts = split_statements(&rendered);
            assert!(!stmts.is_empty(), "{name}");
            for s in &stmts {
                assert!(
                    s.starts_with("CREATE TABLE IF NOT EXISTS hk.")
                        || s.starts_with("CREATE INDEX IF NOT EXISTS")
                        || s.starts_with("ALTER TABLE hk."),
                    "{name}: not an idempotent schema statement: {s}"
                );
                assert!(!s.contains("--"), "{name}: comment left in {s}");
            }
        }
    }

    #[test]
    fn version_one_has_every_table() {
        let tables = tables_created();
        for t in [
            "channels",
            "messages",
            "messages_by_user",
            "idempotency",
            "members_by_channel",
            "members_by_user",
            "read_markers",
            "dm_channels",
            "devices",
        ] {
            assert!(tables.iter().any(|x| x == t), "no table {t}");
        }
        assert_eq!(latest_version(), 1);
    }

    #[test]
    fn splitting() {
        let s = split_statements("-- a comment; with a semicolon\nCREATE TABLE a (x int);\n\n  -- x\nCREATE TABLE b (y int) -- trailing\n;\n");
        assert_eq!(s, vec!["CREATE TABLE a (x int)", "CREATE TABLE b (y int)"]);
    }

    /// Table names the schema files create (without the keyspace).
    pub(crate) fn tables_created() -> Vec<String> {
        std::iter::once(BOOTSTRAP)
            .chain(MIGRATIONS.iter().map(|(_, c)| *c))
            .flat_map(|c| split_statements(&render(c, "hk", REPL)))
            .filter_map(|s| {
                s.strip_prefix("CREATE TABLE IF NOT EXISTS hk.")
                    .map(|rest| {
                        rest.split([' ', '(', '\n'])
                            .next()
                            .unwrap_or("")
                            .to_string()
                    })
            })
            .collect()
    }
}
