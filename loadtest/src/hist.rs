//! Latency histograms (HDR, microseconds): one per worker process, sent to the
//! coordinator as base64 of the compressed V2 encoding and merged there.

use anyhow::Context;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest latency tracked: 10 minutes, in microseconds (larger values are clamped).
const MAX_MICROS: u64 = 600_000_000;

/// A histogram of latencies in microseconds, 1 µs .. 10 min, 3 significant digits.
pub fn new() -> Histogram<u64> {
    // Both bounds are valid constants, so this cannot fail.
    Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("valid histogram bounds")
}

/// Records one latency; values outside 1 µs .. 10 min are clamped into it.
pub fn record(h: &mut Histogram<u64>, micros: u64) {
    h.saturating_record(micros.clamp(1, MAX_MICROS));
}

/// Base64 of the deflate-compressed V2 encoding.
pub fn encode(h: &Histogram<u64>) -> anyhow::Result<String> {
    let mut buf = Vec::new();
    V2DeflateSerializer::new()
        .serialize(h, &mut buf)
        .map_err(|e| anyhow::anyhow!("serializing histogram: {e:?}"))?;
    Ok(B64.encode(buf))
}

/// The inverse of [`encode`].
pub fn decode(text: &str) -> anyhow::Result<Histogram<u64>> {
    let raw = B64.decode(text).context("histogram is not base64")?;
    Deserializer::new()
        .deserialize(&mut raw.as_slice())
        .map_err(|e| anyhow::anyhow!("decoding histogram: {e:?}"))
}

/// Adds every encoded histogram in `parts` into one.
pub fn merge<'a>(parts: impl IntoIterator<Item = &'a str>) -> anyhow::Result<Histogram<u64>> {
    let mut total = new();
    for p in parts {
        let h = decode(p)?;
        total
            .add(&h)
            .map_err(|e| anyhow::anyhow!("merging histograms: {e:?}"))?;
    }
    Ok(total)
}

/// Percentiles of a latency histogram, in milliseconds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    pub count: u64,
    pub min_ms: f64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// (percentile, latency ms) points from 0 to 100 for plotting: 0, 50, 75, 87.5, ...
    pub spectrum: Vec<(f64, f64)>,
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

/// `None` for an empty histogram.
pub fn summary(h: &Histogram<u64>) -> Option<Summary> {
    if h.is_empty() {
        return None;
    }
    let mut spectrum = Vec::new();
    // Halve the distance to 100 each step, up to 99.9999 or the histogram's resolution.
    let mut gap = 100.0_f64;
    spectrum.push((0.0, ms(h.min())));
    for _ in 0..20 {
        gap /= 2.0;
        let p = 100.0 - gap;
        spectrum.push((p, ms(h.value_at_quantile(p / 100.0))));
        if gap < 0.0002 || (gap / 100.0) * (h.len() as f64) < 1.0 {
            break;
        }
    }
    spectrum.push((100.0, ms(h.max())));
    Some(Summary {
        count: h.len(),
        min_ms: ms(h.min()),
        mean_ms: h.mean() / 1000.0,
        p50_ms: ms(h.value_at_quantile(0.50)),
        p90_ms: ms(h.value_at_quantile(0.90)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        p999_ms: ms(h.value_at_quantile(0.999)),
        max_ms: ms(h.max()),
        spectrum,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_adds_worker_histograms() {
        let mut a = new();
        let mut b = new();
        for v in 1..=1000 {
            record(&mut a, v);
        }
        for _ in 0..1000 {
            record(&mut b, 5000);
        }
        let parts = [encode(&a).expect("encode"), encode(&b).expect("encode")];
        let m = merge(parts.iter().map(String::as_str)).expect("merge");
        assert_eq!(m.len(), 2000);
        assert_eq!(m.min(), 1);
        assert!((4990..=5010).contains(&m.max()));
        // Half the values are 1..1000, half are 5000: the median is at the boundary.
        assert!(m.value_at_quantile(0.25) <= 1000);
        assert!(m.value_at_quantile(0.75) >= 4990);
    }

    #[test]
    fn clamps_out_of_range_values() {
        let mut h = new();
        record(&mut h, 0);
        record(&mut h, u64::MAX);
        assert_eq!(h.len(), 2);
        assert_eq!(h.min(), 1);
        assert!(h.max() >= MAX_MICROS - MAX_MICROS / 1000);
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(decode("not base64!").is_err());
        assert!(decode("AAAA").is_err());
        assert!(merge(["AAAA"]).is_err());
    }

    #[test]
    fn summary_in_milliseconds_with_spectrum() {
        assert!(summary(&new()).is_none());
        let mut h = new();
        for v in 1..=10_000 {
            record(&mut h, v * 10); // 10 µs .. 100 ms
        }
        let s = summary(&h).expect("non-empty");
        assert_eq!(s.count, 10_000);
        assert!((s.p50_ms - 50.0).abs() < 0.1, "{}", s.p50_ms);
        assert!((s.p99_ms - 99.0).abs() < 0.1, "{}", s.p99_ms);
        assert!(s.max_ms >= 99.9);
        assert_eq!(s.spectrum.first().map(|p| p.0), Some(0.0));
        assert_eq!(s.spectrum.last().map(|p| p.0), Some(100.0));
        assert!(s
            .spectrum
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1));
    }
}
