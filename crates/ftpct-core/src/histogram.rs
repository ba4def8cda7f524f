//! A latency histogram: pure arithmetic on durations the caller measured (the core reads no
//! clock). The shell records the time from a packet's receipt to its verdict; `ftpct stats`
//! shows quantiles of it and the exposition its cumulative buckets
//! ([`crate::stats::render_exposition`]).

/// Sub-buckets per power of two: 8, so a bucket is at most 12.5 % wide.
const SUB_BITS: u32 = 3;
const SUB: usize = 1 << SUB_BITS;
/// Enough buckets for every `u64`.
const BUCKETS: usize = (64 - SUB_BITS as usize + 1) * SUB;

/// Durations in nanoseconds, log-linear buckets (as HdrHistogram with 3 significant bits):
/// below 8 ns one bucket per value, then each power of two split into 8 equal buckets.
/// Quantiles are within 12.5 % of the true value; recording is a few integer operations and
/// never allocates.
#[derive(Clone, Debug)]
pub struct Histogram {
    buckets: Box<[u64; BUCKETS]>,
    count: u64,
    sum_ns: u64,
    max_ns: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: Box::new([0; BUCKETS]),
            count: 0,
            sum_ns: 0,
            max_ns: 0,
        }
    }
}

/// The bucket of a sample.
#[inline]
fn bucket_of(ns: u64) -> usize {
    if ns < SUB as u64 {
        return ns as usize;
    }
    let shift = 63 - ns.leading_zeros() - SUB_BITS;
    (shift as usize + 1) * SUB + ((ns >> shift) as usize & (SUB - 1))
}

/// The first value above bucket `i` (its exclusive upper bound).
fn bucket_end(i: usize) -> u64 {
    if i < SUB {
        return i as u64 + 1;
    }
    let shift = (i / SUB - 1) as u32;
    let top = (SUB + i % SUB) as u64 + 1;
    top.checked_shl(shift).unwrap_or(u64::MAX)
}

impl Histogram {
    /// Records one duration of `ns` nanoseconds.
    #[inline]
    pub fn record(&mut self, ns: u64) {
        if let Some(x) = self.buckets.get_mut(bucket_of(ns)) {
            *x += 1;
        }
        self.count += 1;
        self.sum_ns = self.sum_ns.saturating_add(ns);
        self.max_ns = self.max_ns.max(ns);
    }
    /// An upper bound of quantile `q` (0..=1), in ns: the end of the bucket that holds it,
    /// never above the largest sample.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let target = ((self.count as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= target {
                return bucket_end(i).saturating_sub(1).min(self.max_ns);
            }
        }
        self.max_ns
    }
    /// Samples below `2^exp` ns.
    pub(crate) fn below_pow2(&self, exp: u32) -> u64 {
        let end = if exp <= SUB_BITS {
            1usize << exp
        } else {
            (exp - SUB_BITS + 1) as usize * SUB
        };
        self.buckets.iter().take(end).sum()
    }
    /// How many durations were recorded.
    pub fn count(&self) -> u64 {
        self.count
    }
    /// The sum of the recorded durations, in ns (saturating).
    pub fn sum(&self) -> u64 {
        self.sum_ns
    }
    /// The largest recorded duration, in ns.
    pub fn max(&self) -> u64 {
        self.max_ns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles() {
        let mut h = Histogram::default();
        for ns in [100u64, 200, 300, 5000, 100_000] {
            h.record(ns);
        }
        assert_eq!(h.count(), 5);
        // within one bucket (12.5 %) above the true value
        let p50 = h.quantile(0.5);
        assert!((300..=300 * 9 / 8).contains(&p50), "{p50}");
        assert_eq!(h.quantile(0.99), 100_000, "capped at the largest sample");
        assert_eq!(h.quantile(0.2), 103, "last value of 100's bucket [96, 104)");
        assert_eq!(h.max(), 100_000);
    }

    #[test]
    fn histogram_buckets_tile_the_range() {
        // every value falls in a bucket whose bounds contain it, buckets are contiguous, and
        // no bucket is wider than 1/8 of its start (beyond the exact ones below 8)
        let mut prev_end = 0u64;
        for i in 0..BUCKETS - 1 {
            let end = bucket_end(i);
            assert!(end > prev_end, "bucket {i}");
            assert_eq!(bucket_of(prev_end), i, "start of bucket {i}");
            assert_eq!(bucket_of(end - 1), i, "end of bucket {i}");
            if prev_end >= 8 {
                assert!(end - prev_end <= prev_end / 8, "bucket {i} too wide");
            }
            prev_end = end;
        }
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
        let mut h = Histogram::default();
        for ns in [0, 1, 255, 256, 257, 1 << 20, u64::MAX] {
            h.record(ns);
        }
        assert_eq!(h.below_pow2(8), 3);
        assert_eq!(h.below_pow2(9), 5);
        assert_eq!(h.below_pow2(21), 6);
    }
}
