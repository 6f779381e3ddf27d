//! Pure arithmetic of the message layout: offset buckets and history read plans.
//!
//! Messages live in partitions `(channel, bucket)` with `bucket = offset / BUCKET_SIZE`,
//! clustered by offset. Offset buckets (rather than time buckets) make every read a
//! function of offsets alone: `since` names its bucket directly, a reverse page starts
//! at the top's bucket, and no index of non-empty buckets is needed. A partition holds
//! at most `BUCKET_SIZE` messages however bursty the channel is.

/// Messages per partition. A page of `store.max_history_page` (1000 by default) spans
/// at most two partitions.
pub const BUCKET_SIZE: u64 = 1000;

/// The partition (bucket) of an offset.
pub fn bucket(offset: u64) -> u64 {
    offset / BUCKET_SIZE
}

/// First offset of a bucket.
pub fn bucket_start(b: u64) -> u64 {
    b.saturating_mul(BUCKET_SIZE)
}

/// Last offset of a bucket.
pub fn bucket_end(b: u64) -> u64 {
    bucket_start(b).saturating_add(BUCKET_SIZE - 1)
}

/// One partition's part of a range read: offsets `lo..=hi` of bucket `bucket`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slice {
    pub bucket: u64,
    pub lo: u64,
    pub hi: u64,
}

/// The partitions that hold `from..=to`, in read order (descending when `reverse`).
pub fn slices(from: u64, to: u64, reverse: bool) -> Vec<Slice> {
    if from > to {
        return Vec::new();
    }
    let mut out: Vec<Slice> = (bucket(from)..=bucket(to))
        .map(|b| Slice {
            bucket: b,
            lo: from.max(bucket_start(b)),
            hi: to.min(bucket_end(b)),
        })
        .collect();
    if reverse {
        out.reverse();
    }
    out
}

/// The partitions to delete when `low` rises from `old_low` to `new_low`: whole
/// partitions below the new low (`whole`), and the partition holding `new_low`, from
/// which only offsets below it go (`partial`). Whole-partition deletes are safe because
/// no append ever writes below the top again; the boundary partition gets a range
/// delete so a later message in it can never be shadowed.
pub fn trim(old_low: u64, new_low: u64) -> (Vec<u64>, Option<u64>) {
    if new_low <= old_low {
        return (Vec::new(), None);
    }
    let first = bucket(old_low);
    let boundary = bucket(new_low);
    let whole = (first..boundary).collect();
    let partial = (bucket_start(boundary) < new_low).then_some(boundary);
    (whole, partial)
}

/// What a history call must read, decided from the channel's `low`/`top` alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Nothing to read.
    Empty,
    /// The position asked for is gone (removed by retention or remove_history).
    Unrecoverable,
    /// Read `from..=to` (descending when `reverse`), at most `limit` messages. With
    /// `contiguous`, the result must start at `from`: otherwise retention removed what
    /// follows the position, and it is unrecoverable.
    Range {
        from: u64,
        to: u64,
        reverse: bool,
        limit: usize,
        contiguous: bool,
    },
}

/// Plans a history read. `since` is the offset of a position whose epoch already
/// matched; `limit` is `None` for everything.
pub fn plan(low: u64, top: u64, since: Option<u64>, reverse: bool, limit: Option<usize>) -> Plan {
    let limit = limit.unwrap_or(usize::MAX);
    if limit == 0 {
        return Plan::Empty;
    }
    let low = low.max(1);
    match (since, reverse) {
        (Some(since), false) => {
            if since >= top {
                return Plan::Empty;
            }
            let from = since + 1;
            if from < low {
                return Plan::Unrecoverable;
            }
            Plan::Range {
                from,
                to: top,
                reverse: false,
                limit,
                contiguous: true,
            }
        }
        (Some(since), true) => {
            let to = since.saturating_sub(1).min(top);
            if since == 0 || to < low {
                return Plan::Empty;
            }
            Plan::Range {
                from: low,
                to,
                reverse: true,
                limit,
                contiguous: false,
            }
        }
        (None, reverse) => {
            if top < low {
                return Plan::Empty;
            }
            Plan::Range {
                from: low,
                to: top,
                reverse,
                limit,
                contiguous: false,
            }
        }
    }
}

/// Seconds for `USING TTL`: 0 (no expiry) for a zero duration, otherwise at least one
/// second, at most the 20 years CQL accepts.
pub fn ttl_secs(d: std::time::Duration) -> i32 {
    const MAX_TTL: u64 = 630_720_000;
    if d.is_zero() {
        return 0;
    }
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    secs.clamp(1, MAX_TTL) as i32
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_math() {
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(1), 0);
        assert_eq!(bucket(999), 0);
        assert_eq!(bucket(1000), 1);
        assert_eq!(bucket(12_345), 12);
        assert_eq!((bucket_start(12), bucket_end(12)), (12_000, 12_999));
        assert_eq!(bucket_end(bucket(u64::MAX)), u64::MAX);
    }

    #[test]
    fn slices_cover_the_range_in_order() {
        assert_eq!(
            slices(1, 10, false),
            vec![Slice {
                bucket: 0,
                lo: 1,
                hi: 10
            }]
        );
        let s = slices(990, 2005, false);
        assert_eq!(
            s,
            vec![
                Slice {
                    bucket: 0,
                    lo: 990,
                    hi: 999
                },
                Slice {
                    bucket: 1,
                    lo: 1000,
                    hi: 1999
                },
                Slice {
                    bucket: 2,
                    lo: 2000,
                    hi: 2005
                },
            ]
        );
        let r = slices(990, 2005, true);
        assert_eq!(
            r.iter().map(|s| s.bucket).collect::<Vec<_>>(),
            vec![2, 1, 0]
        );
        assert!(slices(5, 4, false).is_empty());
    }

    #[test]
    fn trim_deletes_whole_partitions_below_and_a_range_at_the_boundary() {
        assert_eq!(trim(1, 1), (vec![], None));
        assert_eq!(trim(5, 3), (vec![], None));
        assert_eq!(trim(1, 8), (vec![], Some(0)));
        assert_eq!(trim(1, 1000), (vec![0], None));
        assert_eq!(trim(1, 2500), (vec![0, 1], Some(2)));
        assert_eq!(trim(1500, 2000), (vec![1], None));
    }

    #[test]
    fn plans() {
        // limit 0 asks only for the position.
        assert_eq!(plan(1, 10, None, false, Some(0)), Plan::Empty);
        let range = |from, to, reverse, limit, contiguous| Plan::Range {
            from,
            to,
            reverse,
            limit,
            contiguous,
        };
        assert_eq!(
            plan(1, 10, None, false, Some(3)),
            range(1, 10, false, 3, false)
        );
        assert_eq!(
            plan(0, 10, None, true, None),
            range(1, 10, true, usize::MAX, false)
        );
        assert_eq!(plan(1, 0, None, false, None), Plan::Empty);
        // since: forward must continue right after it.
        assert_eq!(
            plan(1, 10, Some(3), false, Some(3)),
            range(4, 10, false, 3, true)
        );
        assert_eq!(plan(1, 10, Some(10), false, None), Plan::Empty);
        assert_eq!(plan(1, 10, Some(12), false, None), Plan::Empty);
        // removed history (low = top + 1): an old position is unrecoverable.
        assert_eq!(plan(5, 4, Some(2), false, None), Plan::Unrecoverable);
        assert_eq!(plan(8, 10, Some(6), false, None), Plan::Unrecoverable);
        assert_eq!(
            plan(8, 10, Some(7), false, None),
            range(8, 10, false, usize::MAX, true)
        );
        // since, reverse: strictly before it.
        assert_eq!(
            plan(1, 10, Some(4), true, Some(10)),
            range(1, 3, true, 10, false)
        );
        assert_eq!(
            plan(1, 10, Some(40), true, Some(2)),
            range(1, 10, true, 2, false)
        );
        assert_eq!(plan(1, 10, Some(1), true, None), Plan::Empty);
        assert_eq!(plan(1, 10, Some(0), true, None), Plan::Empty);
        assert_eq!(plan(8, 10, Some(5), true, None), Plan::Empty);
    }

    #[test]
    fn ttls() {
        assert_eq!(ttl_secs(Duration::ZERO), 0);
        assert_eq!(ttl_secs(Duration::from_millis(1)), 1);
        assert_eq!(ttl_secs(Duration::from_millis(1500)), 2);
        assert_eq!(ttl_secs(Duration::from_secs(300)), 300);
        assert_eq!(ttl_secs(Duration::from_secs(u64::MAX)), 630_720_000);
    }
}
