//! Cluster mode: writes at the offsets the broker's sequencer (Redis) assigned
//! (`MessageStore::append_at`, called by `node::sequenced`).
//!
//! Several nodes write one channel at once, each at the offsets Redis gave it, and the
//! reconciler may write an offset again long after. So there is no sequencer task
//! here, and every write is safe to repeat and to race:
//!
//! 1. The channel row is created with the sequencer's epoch if it has none.
//! 2. The `messages_by_user` (and, once, `dm_channels`) rows go first: plain idempotent
//!    inserts, so `remove_user_data` can find every message that may become visible.
//! 3. The message row is inserted `IF NOT EXISTS`: a row already at that offset is
//!    kept. A plain `INSERT` would rewrite identical content harmlessly in the usual
//!    race (publisher against reconciler) but would also undo a `user_data_remove`
//!    tombstone written in between, restart the row's TTL, and bring back a row that
//!    retention deleted. One exception: a *different* message past `top` is the
//!    leftover of a write that never committed (its node died before step 4 and Redis
//!    then lost the entry and handed the offset out again); the acknowledged write
//!    replaces it, with `IF body = <what was read>`.
//! 4. `top` (and `low`, for `history_max_count`) move with
//!    `UPDATE ... IF top < ? AND low <= ?`: both only ever move up, whoever wins. An
//!    unknown outcome is settled with a LOCAL_SERIAL read, as the single-node commit
//!    does. Rows are written before `top` moves, so readers, which never look past
//!    `top`, only see written rows (a hole is a lower offset another node is still
//!    writing; recovery fills it from the stream).
//! 5. Rows below a raised `low` are deleted, as in single-node mode.
//!
//! Nothing is delivered: the broker already did.

use ::scylla::serialize::row::SerializeRow;
use ::scylla::statement::prepared::PreparedStatement;
use futures_util::future::try_join_all;
use prost::Message as _;

use super::{
    bind, layout, lwt_outcome, now_ms, to_i64, to_u64, unavailable, ChannelState, Inner, LwtOutcome,
};
use crate::protocol::messages::Publication;
use crate::store::{Retention, StoreError};

/// Rounds of the `top` compare-and-set before giving up (each lost round means another
/// node moved `top` or `low` in between; the caller's error leaves the publication to
/// the reconciler).
const ADVANCE_ATTEMPTS: usize = 16;
/// DM channels remembered as indexed.
const DM_CACHE: usize = 10_000;

impl Inner {
    pub(super) async fn append_at(
        &self,
        channel: &str,
        epoch: &str,
        publication: Publication,
        retention: Retention,
    ) -> Result<(), StoreError> {
        let offset = publication.offset;
        if offset == 0 {
            return Err(unavailable(
                channel,
                "append_at without the sequencer's offset",
            ));
        }
        let state = self.state_in_epoch(channel, epoch).await?;
        if offset < state.low {
            // Retention or remove_history removed it since it was sequenced.
            return Ok(());
        }
        let mut p = publication;
        p.offset = 0;
        let author = p.info.as_ref().map(|i| i.user.clone()).unwrap_or_default();
        let ttl = layout::ttl_secs(retention.max_age);
        self.index_rows(channel, &author, offset, ttl).await?;
        self.insert_message(channel, offset, &author, p.encode_to_vec(), ttl)
            .await?;
        let floor = match retention.max_count {
            n if n > 0 && offset > n => offset - n + 1,
            _ => 1,
        };
        if let Some((old_low, new_low)) = self.advance(channel, state, offset, floor).await? {
            self.trim(channel, old_low, new_low).await;
        }
        Ok(())
    }

    /// The channel's state in the sequencer's `epoch`, creating the row with it if the
    /// channel has none. Redis is seeded from this row, so another epoch here means the
    /// row was lost or replaced since: the sequencer's epoch wins (the SQLite store does
    /// the same), since it is the one subscribers were given.
    async fn state_in_epoch(&self, channel: &str, epoch: &str) -> Result<ChannelState, StoreError> {
        let state = match self.read_state(channel, false).await? {
            Some(s) => s,
            None => {
                self.execute(
                    &self.st.channel_create,
                    (channel, epoch, now_ms()),
                    "creating a channel",
                )
                .await?;
                self.serial_state(channel).await?
            }
        };
        if state.epoch == epoch {
            return Ok(state);
        }
        tracing::warn!(
            channel,
            store = %state.epoch,
            sequencer = epoch,
            "channel epoch differs from the sequencer's; adopting the sequencer's"
        );
        // Applied, lost to another node doing the same, or unknown: the serial read
        // says where it stands.
        let adopted = self
            .execute(
                &self.st.channel_adopt_epoch,
                (epoch, channel, &state.epoch),
                "changing a channel's epoch",
            )
            .await;
        let state = self.serial_state(channel).await?;
        match adopted {
            _ if state.epoch == epoch => Ok(state),
            Err(e) => Err(e),
            Ok(_) => Err(unavailable(
                channel,
                format!(
                    "epoch {} in the store, {epoch} at the sequencer",
                    state.epoch
                ),
            )),
        }
    }

    async fn serial_state(&self, channel: &str) -> Result<ChannelState, StoreError> {
        self.read_state(channel, true)
            .await?
            .ok_or_else(|| unavailable(channel, "channel row missing right after its creation"))
    }

    /// The rows that let `remove_user_data` and `dm_channels` find the message.
    async fn index_rows(
        &self,
        channel: &str,
        author: &str,
        offset: u64,
        ttl: i32,
    ) -> Result<(), StoreError> {
        let mut writes = Vec::new();
        if !author.is_empty() {
            writes.push(bind(
                &self.st.by_user_insert,
                (author, channel, to_i64(offset), ttl),
            )?);
        }
        let dm_users = channel
            .rsplit_once('#')
            .filter(|_| !self.dm_indexed.lock().contains(channel))
            .map(|(_, users)| users);
        for u in dm_users.into_iter().flat_map(|u| u.split(',')) {
            if !u.is_empty() {
                writes.push(bind(&self.st.dm_insert, (u, channel))?);
            }
        }
        try_join_all(writes.iter().map(|b| self.execute_bound(b))).await?;
        if dm_users.is_some() {
            let mut known = self.dm_indexed.lock();
            if known.len() >= DM_CACHE {
                known.clear();
            }
            known.insert(channel.to_string());
        }
        Ok(())
    }

    /// Runs a lightweight transaction, once more if its outcome is unknown: the two
    /// used here are safe to repeat (a repeat re-checks the condition and answers "not
    /// applied" with the row the first attempt wrote).
    async fn lwt(
        &self,
        stmt: &PreparedStatement,
        values: impl SerializeRow,
        what: &str,
    ) -> Result<LwtOutcome, StoreError> {
        let b = bind(stmt, values)?;
        let run = || async {
            self.session
                .execute_bound_unpaged(&b)
                .await
                .map_err(|e| unavailable(what, e))
                .and_then(lwt_outcome)
        };
        match run().await {
            Ok(o) => Ok(o),
            Err(e) => {
                tracing::debug!(cause = %e, what, "lightweight transaction outcome unknown; retrying");
                run().await
            }
        }
    }

    /// Inserts the message row unless one is there (see the module docs for the one
    /// case where an existing row is replaced).
    async fn insert_message(
        &self,
        channel: &str,
        offset: u64,
        author: &str,
        body: Vec<u8>,
        ttl: i32,
    ) -> Result<(), StoreError> {
        let (bucket, seq, now) = (to_i64(layout::bucket(offset)), to_i64(offset), now_ms());
        let inserted = self
            .lwt(
                &self.st.message_insert_new,
                (channel, bucket, seq, now, author, &body, ttl),
                "storing a message",
            )
            .await?;
        if inserted.applied {
            return Ok(());
        }
        let existing = match inserted.blob("body") {
            Some(b) => Some(b.to_vec()),
            None => self
                .first::<(Option<String>, Option<Vec<u8>>, Option<i32>)>(
                    &self.st.message_get,
                    (channel, bucket, seq),
                    "reading a message",
                )
                .await?
                .and_then(|(_, b, _)| b),
        };
        let Some(existing) = existing.filter(|e| *e != body) else {
            return Ok(()); // this same publication, written by another node or earlier
        };
        // A different message. At or below `top` it was committed (possibly tombstoned
        // by remove_user_data): it stays. Past `top` nothing ever acknowledged it.
        if offset <= self.serial_state(channel).await?.top {
            tracing::warn!(
                channel,
                offset,
                "another message is already stored at this offset; kept"
            );
            return Ok(());
        }
        let replaced = self
            .lwt(
                &self.st.message_replace,
                (ttl, now, author, &body, channel, bucket, seq, &existing),
                "replacing an uncommitted message",
            )
            .await?;
        if replaced.applied {
            tracing::warn!(
                channel,
                offset,
                "replaced a message row that was never committed"
            );
        }
        // Not applied: another node replaced it first (with this same publication).
        Ok(())
    }

    /// Moves `top` up to `offset` and `low` up to `floor`, never down. Returns the
    /// (old, new) `low` when this call raised it, for the trim.
    async fn advance(
        &self,
        channel: &str,
        mut state: ChannelState,
        offset: u64,
        floor: u64,
    ) -> Result<Option<(u64, u64)>, StoreError> {
        for _ in 0..ADVANCE_ATTEMPTS {
            // Whoever moved `top` to or past `offset` raised `low` for it (the same
            // namespace, the same retention).
            if state.top >= offset {
                return Ok(None);
            }
            let low = state.low.max(floor);
            let raised = (low > state.low).then_some((state.low, low));
            let (o, l) = (to_i64(offset), to_i64(low));
            let res = self
                .execute(
                    &self.st.channel_advance,
                    (o, l, channel, o, l),
                    "moving a channel's top",
                )
                .await
                .and_then(lwt_outcome);
            state = match res {
                Ok(r) if r.applied => return Ok(raised),
                Ok(r) => match (r.bigint("top"), r.bigint("low")) {
                    (Some(top), Some(low)) => ChannelState {
                        epoch: state.epoch,
                        top: to_u64(Some(top)),
                        low: to_u64(Some(low)).max(1),
                    },
                    _ => self.serial_state(channel).await?,
                },
                Err(e) => match self.read_state(channel, true).await {
                    Ok(Some(now)) if now.top >= offset && now.low >= low => return Ok(raised),
                    Ok(Some(now)) => now,
                    Ok(None) => return Err(e),
                    Err(_) => {
                        return Err(unavailable(
                            channel,
                            format!("top move outcome unknown ({e})"),
                        ))
                    }
                },
            };
        }
        Err(unavailable(
            channel,
            "top kept moving under this node; the reconciler will retry",
        ))
    }
}
