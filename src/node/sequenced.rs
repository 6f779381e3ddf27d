//! Persisted channels in cluster mode: the broker (Redis) sequences, the store keeps.
//!
//! A publish runs the broker's sequencer (next offset, recent stream, delivery to every
//! node) and then writes the store at that offset; it is acknowledged only after the
//! store write, so an acknowledged publish is durable (guarantee 2). A node that dies
//! between the two leaves the publication in the stream and on the sequencer's
//! unstored list; every node's reconciler ([`Node::reconcile_once`]) copies such
//! publications into the store. Writes at a given offset are idempotent, so a
//! reconciler racing a slow publisher writes the same row twice, harmlessly.
//!
//! The store stays the authority for a persisted channel's epoch and top: when Redis
//! has no sequence for the channel (first use, or Redis lost its data) the node seeds
//! it from the store, so offsets never restart below an acknowledged one.

use std::sync::Arc;
use std::time::Duration;

use super::{Node, NodeError};
use crate::broker::{BrokerError, HistoryFilter, HistoryOptions, PersistedSequencer};
use crate::config::ChannelOptions;
use crate::metrics as m;
use crate::protocol::messages::{Publication, StreamPosition};
use crate::store::{Retention, StoreError};

/// Unstored publications handled per sequencer call.
const RECONCILE_BATCH: usize = 256;

fn not_seeded() -> NodeError {
    NodeError::Broker(BrokerError::Unavailable(
        "channel sequence could not be seeded".into(),
    ))
}

fn retention(o: &ChannelOptions) -> Retention {
    Retention {
        max_age: o.history_max_age,
        max_count: o.history_max_count,
    }
}

impl Node {
    /// The cluster-mode publish of a persisted channel (see the module docs).
    pub(super) async fn publish_sequenced(
        &self,
        seq: &dyn PersistedSequencer,
        channel: &str,
        publication: Publication,
        options: &ChannelOptions,
        idempotency_key: Option<&str>,
    ) -> Result<StreamPosition, NodeError> {
        let stream = HistoryOptions {
            size: options.history_size,
            ttl: options.history_ttl,
        };
        let window = self.shared.config.store.idempotency_window;
        let idempotency = idempotency_key.map(|k| (k, window));
        let mut seeded = false;
        let s = loop {
            match seq
                .publish_persisted(channel, publication.clone(), stream, idempotency)
                .await?
            {
                Some(s) => break s,
                None if !seeded => {
                    self.seed(seq, channel).await?;
                    seeded = true;
                }
                None => return Err(not_seeded()),
            }
        };
        let store = &self.stores()?.messages;
        if s.duplicate {
            // The original's store write may still be under way (or its node died):
            // copy it from the stream before acknowledging it again. Gone from the
            // stream means long since stored (or reconciled).
            let before = StreamPosition {
                offset: s.position.offset.saturating_sub(1),
                epoch: s.position.epoch.clone(),
            };
            let filter = HistoryFilter {
                since: Some(before),
                limit: Some(1),
                reverse: false,
            };
            if let Ok(Some((pubs, _))) = seq.recent(channel, filter).await {
                if let Some(original) = pubs.into_iter().find(|p| p.offset == s.position.offset) {
                    store
                        .append_at(channel, &s.position.epoch, original, retention(options))
                        .await?;
                }
            }
            return Ok(s.position);
        }
        store
            .append_at(
                channel,
                &s.position.epoch,
                s.publication.clone(),
                retention(options),
            )
            .await?;
        if let Err(e) = seq.mark_stored(channel, s.position.offset).await {
            // Stored all the same; the reconciler will find it there and forget it.
            tracing::debug!(cause = %e, channel, "mark stored failed");
        }
        self.shared
            .notify_observers(channel, &Arc::new(s.publication), &s.position.epoch);
        Ok(s.position)
    }

    /// Starts the channel's sequence in the broker at the store's position.
    async fn seed(&self, seq: &dyn PersistedSequencer, channel: &str) -> Result<(), NodeError> {
        let filter = HistoryFilter {
            limit: Some(0),
            ..Default::default()
        };
        let (_, top) = self.stores()?.messages.history(channel, filter).await?;
        Ok(seq.seed(channel, &top).await?)
    }

    /// The broker's position and recent history of a persisted channel, seeding it
    /// from the store first if needed.
    pub(super) async fn recent_sequenced(
        &self,
        seq: &dyn PersistedSequencer,
        channel: &str,
        filter: HistoryFilter,
    ) -> Result<(Vec<Publication>, StreamPosition), NodeError> {
        if let Some(r) = seq.recent(channel, filter.clone()).await? {
            return Ok(r);
        }
        self.seed(seq, channel).await?;
        seq.recent(channel, filter).await?.ok_or_else(not_seeded)
    }

    /// Recovery of a persisted channel in cluster mode: from the broker's recent
    /// stream when it reaches back far enough (it also has what the store may not have
    /// yet), otherwise from the store's full history, completed from the stream.
    pub(super) async fn recover_sequenced(
        &self,
        seq: &dyn PersistedSequencer,
        channel: &str,
        since: StreamPosition,
    ) -> Result<(Vec<Publication>, StreamPosition), NodeError> {
        let max = self.shared.config.store.max_recovery;
        let filter = HistoryFilter {
            since: Some(since.clone()),
            limit: Some(max + 1),
            reverse: false,
        };
        match self.recent_sequenced(seq, channel, filter.clone()).await {
            Ok((pubs, top)) if pubs.len() <= max => return Ok((pubs, top)),
            Ok(_) => return Err(StoreError::UnrecoverablePosition.into()),
            Err(NodeError::Broker(BrokerError::UnrecoverablePosition)) => {}
            Err(e) => return Err(e),
        }
        let (mut pubs, store_top) = self.stores()?.messages.history(channel, filter).await?;
        // Several nodes store concurrently, so the store may lack a publication that is
        // still being stored while holding later ones: keep the gap-free run, and take
        // the rest from the stream, which has no holes.
        let whole = pubs.len();
        let run = pubs
            .iter()
            .enumerate()
            .take_while(|(i, p)| p.offset == since.offset + 1 + *i as u64)
            .count();
        pubs.truncate(run);
        let rest = HistoryFilter {
            since: Some(StreamPosition {
                offset: since.offset + run as u64,
                epoch: since.epoch.clone(),
            }),
            limit: Some(max + 1 - run.min(max)),
            reverse: false,
        };
        let top = match seq.recent(channel, rest).await {
            Ok(Some((more, top))) => {
                pubs.extend(more);
                top
            }
            // The stream does not reach back to the end of the run: without a hole,
            // the store's run is complete up to its top.
            Ok(None) | Err(BrokerError::UnrecoverablePosition) if run == whole => store_top,
            Ok(None) | Err(BrokerError::UnrecoverablePosition) => {
                return Err(StoreError::UnrecoverablePosition.into())
            }
            Err(e) => return Err(e.into()),
        };
        if pubs.len() > max {
            return Err(StoreError::UnrecoverablePosition.into());
        }
        Ok((pubs, top))
    }

    /// Copies into the store the persisted publications the sequencer handed out at
    /// least `older_than` ago and whose store write was never confirmed (a node died
    /// between the two steps). Returns how many it copied. Every node runs it; the
    /// writes are idempotent.
    pub async fn reconcile_once(&self, older_than: Duration) -> Result<usize, NodeError> {
        let Some(seq) = self.shared.broker.sequencer() else {
            return Ok(0);
        };
        let Some(stores) = &self.shared.store else {
            return Ok(0);
        };
        let mut copied = 0;
        loop {
            let batch = seq.unstored(older_than, RECONCILE_BATCH).await?;
            let full = batch.len() == RECONCILE_BATCH;
            for u in batch {
                match u.publication {
                    Some(p) if !u.epoch.is_empty() => {
                        let r = self
                            .shared
                            .rules
                            .options(&u.channel)
                            .map(retention)
                            .unwrap_or_default();
                        stores
                            .messages
                            .append_at(&u.channel, &u.epoch, p, r)
                            .await?;
                        copied += 1;
                        metrics::counter!(m::RECONCILED_TOTAL, "result" => "copied").increment(1);
                        tracing::info!(
                            channel = %u.channel,
                            offset = u.offset,
                            "reconciler copied a publication the store lacked"
                        );
                    }
                    _ => {
                        metrics::counter!(m::RECONCILED_TOTAL, "result" => "lost").increment(1);
                        tracing::error!(
                            channel = %u.channel,
                            offset = u.offset,
                            "unacknowledged publication left the stream before reaching the store"
                        );
                    }
                }
                seq.mark_stored(&u.channel, u.offset).await?;
            }
            if !full {
                return Ok(copied);
            }
        }
    }
}
