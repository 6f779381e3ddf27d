//! Metric handles for the per-message paths, registered once per process.
//!
//! `metrics::counter!(NAME)` builds a key, hashes it and looks it up in the recorder's
//! registry on every call: about 8% of all instructions Herald executed in the broadcast
//! profile (docs/BENCHMARKS.md). A handle is an `Arc` to the atomic itself, so an update
//! is one atomic add.

use metrics::{Counter, Histogram};

use crate::metrics as m;

#[derive(Clone)]
pub struct WireMeters {
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    pub frames_out: Counter,
    pub publish_to_write: Histogram,
}

impl WireMeters {
    /// Call after the recorder is installed: a handle taken before counts nowhere.
    pub fn register() -> Self {
        WireMeters {
            bytes_in: metrics::counter!(m::BYTES_IN_TOTAL),
            bytes_out: metrics::counter!(m::BYTES_OUT_TOTAL),
            frames_out: metrics::counter!(m::FRAMES_OUT_TOTAL),
            publish_to_write: metrics::histogram!(m::PUBLISH_TO_WRITE_SECONDS),
        }
    }
}
