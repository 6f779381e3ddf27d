//! Observers of the node's publications: Kafka egress and the push fallback hook in here
//! so that adding one never touches the publish path.

use std::sync::Arc;

use crate::protocol::messages::Publication;

/// Sees every publication this node fans out, in offset order per channel, after the
/// local subscribers got it.
///
/// Called on the sequencing path (under the broker's channel lock, or on the store's
/// writer thread): an observer must not block. Hand the publication to a bounded queue
/// of your own and do the work elsewhere; decide what happens when that queue is full.
///
/// In cluster mode (`broker.kind = "redis"`) every node fans out the publications of
/// its channels, so observers run instead on the node that published, once the broker
/// (and, for persisted channels, the store) accepted the publication: each publication
/// is observed once in the cluster. Concurrent publishes to one channel may then reach
/// the observers slightly out of offset order; the offset tells the true order.
pub trait PublicationObserver: Send + Sync + 'static {
    fn on_publication(&self, channel: &str, publication: &Arc<Publication>, epoch: &str);
}
