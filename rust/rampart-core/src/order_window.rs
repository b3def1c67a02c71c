//! Sliding event-time windows over order events: reject rate and ack-latency quantiles.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// Submits and rejects in the window `(t - width, t]`.
///
/// Checkpoints carry only the events (`[ts, is_reject]`); the width comes from the configuration
/// and the counts are recounted (`restore`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RejectWindow {
    #[serde(skip)]
    width: i64,
    events: VecDeque<(i64, bool)>,
    #[serde(skip)]
    submitted: u64,
    #[serde(skip)]
    rejected: u64,
}

impl RejectWindow {
    pub fn new(width: i64) -> Self {
        RejectWindow {
            width,
            events: VecDeque::new(),
            submitted: 0,
            rejected: 0,
        }
    }

    pub fn expire(&mut self, t: i64) {
        let cutoff = t.saturating_sub(self.width);
        while let Some(&(ts, is_reject)) = self.events.front() {
            if ts > cutoff {
                break;
            }
            self.events.pop_front();
            if is_reject {
                self.rejected -= 1;
            } else {
                self.submitted -= 1;
            }
        }
    }

    pub fn record(&mut self, t: i64, is_reject: bool) {
        self.expire(t);
        self.events.push_back((t, is_reject));
        if is_reject {
            self.rejected += 1;
        } else {
            self.submitted += 1;
        }
    }

    /// Forget every event.
    pub fn clear(&mut self) {
        self.events.clear();
        self.submitted = 0;
        self.rejected = 0;
    }

    pub fn submitted(&self) -> u64 {
        self.submitted
    }

    pub fn rejected(&self) -> u64 {
        self.rejected
    }

    /// rejected / submitted, capped at 1; `None` without submits.
    pub fn rate(&self) -> Option<f64> {
        (self.submitted > 0).then(|| (self.rejected as f64 / self.submitted as f64).min(1.0))
    }

    /// After decoding a checkpoint: set the width (from the configuration), check the events are
    /// in time order and recount them.
    pub(crate) fn restore(&mut self, width: i64) -> Result<(), String> {
        check_time_order("the order window", self.events.iter().map(|e| e.0))?;
        self.width = width;
        self.rejected = self.events.iter().filter(|e| e.1).count() as u64;
        self.submitted = self.events.len() as u64 - self.rejected;
        Ok(())
    }
}

fn check_time_order(what: &str, ts: impl Iterator<Item = i64>) -> Result<(), String> {
    let mut prev = i64::MIN;
    for (i, t) in ts.enumerate() {
        if t < prev {
            return Err(format!(
                "{what}: event {i} at {t} is before the previous one at {prev}"
            ));
        }
        prev = t;
    }
    Ok(())
}

const SUB_BUCKETS: u64 = 64;
const MAX_VALUE: u64 = (1 << 42) - 1; // ~73 minutes in ns; larger latencies are clamped
const BUCKETS: usize = bucket_index(MAX_VALUE) + 1;

/// Log-linear bucket index: exact below 128, then 64 buckets per power of two (<= 1/64 relative width).
pub const fn bucket_index(v: u64) -> usize {
    if v < 2 * SUB_BUCKETS {
        return v as usize;
    }
    let msb = 63 - v.leading_zeros() as u64; // >= 7
    let shift = msb - 6;
    (shift * SUB_BUCKETS + (v >> shift)) as usize
}

/// The highest value that falls into bucket `idx` (HDR's "highest equivalent value").
pub const fn bucket_high(idx: usize) -> u64 {
    let idx = idx as u64;
    if idx < 2 * SUB_BUCKETS {
        return idx;
    }
    let shift = idx / SUB_BUCKETS - 1;
    let low = (idx - shift * SUB_BUCKETS) << shift;
    low + (1 << shift) - 1
}

/// Nearest rank of quantile `num/den` among `n` values: ceil(n * num / den), at least 1.
pub fn nearest_rank(n: u64, num: u64, den: u64) -> u64 {
    (n * num).div_ceil(den).max(1)
}

/// Ack latencies in the window `(t - width, t]`: a histogram for quantiles plus an exact count of
/// samples above the latency limit, so the p99 limit is checked exactly in O(1).
///
/// Checkpoints carry only the events (`[ts, latency_ns]`); the width and threshold come from the
/// configuration and the histogram and count are rebuilt from the events (`restore`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatencyWindow {
    #[serde(skip)]
    width: i64,
    events: VecDeque<(i64, u64)>,
    #[serde(skip)]
    counts: Vec<u32>,
    #[serde(skip)]
    threshold: Option<u64>,
    #[serde(skip)]
    above: u64,
}

/// v > f64 threshold  <=>  v > floor(threshold) for integer v
fn integer_threshold(threshold_ns: Option<f64>) -> Option<u64> {
    threshold_ns.map(|t| t.floor().min(u64::MAX as f64) as u64)
}

impl LatencyWindow {
    pub fn new(width: i64, threshold_ns: Option<f64>) -> Self {
        LatencyWindow {
            width,
            events: VecDeque::new(),
            counts: Vec::new(), // allocated on the first sample
            threshold: integer_threshold(threshold_ns),
            above: 0,
        }
    }

    /// After decoding a checkpoint: set the width and threshold (from the configuration), check
    /// the events, and rebuild the histogram and the count above the threshold from them.
    pub(crate) fn restore(&mut self, width: i64, threshold_ns: Option<f64>) -> Result<(), String> {
        check_time_order("the latency window", self.events.iter().map(|e| e.0))?;
        if let Some((i, &(_, v))) = self.events.iter().enumerate().find(|e| e.1 .1 > MAX_VALUE) {
            return Err(format!(
                "the latency window: event {i} has latency {v} ns, above the clamp {MAX_VALUE}"
            ));
        }
        self.width = width;
        self.threshold = integer_threshold(threshold_ns);
        self.counts = Vec::new();
        if !self.events.is_empty() {
            self.counts = vec![0; BUCKETS];
            for &(_, v) in &self.events {
                self.counts[bucket_index(v)] += 1;
            }
        }
        self.above = match self.threshold {
            Some(thr) => self.events.iter().filter(|e| e.1 > thr).count() as u64,
            None => 0,
        };
        Ok(())
    }

    pub fn expire(&mut self, t: i64) {
        let cutoff = t.saturating_sub(self.width);
        while let Some(&(ts, v)) = self.events.front() {
            if ts > cutoff {
                break;
            }
            self.events.pop_front();
            self.counts[bucket_index(v)] -= 1;
            if self.threshold.is_some_and(|thr| v > thr) {
                self.above -= 1;
            }
        }
    }

    pub fn record(&mut self, t: i64, latency_ns: u64) {
        self.expire(t);
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS];
        }
        let v = latency_ns.min(MAX_VALUE);
        self.events.push_back((t, v));
        self.counts[bucket_index(v)] += 1;
        if self.threshold.is_some_and(|thr| v > thr) {
            self.above += 1;
        }
    }

    /// Forget every sample.
    pub fn clear(&mut self) {
        self.events.clear();
        self.counts.iter_mut().for_each(|c| *c = 0);
        self.above = 0;
    }

    pub fn len(&self) -> u64 {
        self.events.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Exact: is the nearest-rank p99 of the window above the threshold?
    pub fn p99_above_threshold(&self) -> bool {
        let n = self.len();
        n > 0 && self.above > n - nearest_rank(n, 99, 100)
    }

    /// Nearest-rank quantile `num/den`, as the highest value of its histogram bucket.
    pub fn quantile(&self, num: u64, den: u64) -> Option<u64> {
        let n = self.len();
        if n == 0 {
            return None;
        }
        let rank = nearest_rank(n, num, den);
        let mut seen = 0u64;
        for (idx, &c) in self.counts.iter().enumerate() {
            seen += u64::from(c);
            if seen >= rank {
                return Some(bucket_high(idx));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_bounds_contain_their_values_within_one_64th() {
        for v in (0..5000u64)
            .chain((0..40).map(|s| 1u64 << s))
            .chain([123_456_789, MAX_VALUE])
        {
            let idx = bucket_index(v);
            let high = bucket_high(idx);
            assert!(high >= v, "{v}: high {high}");
            assert!((high - v) as f64 <= v as f64 / 64.0, "{v}: high {high}");
            assert_eq!(bucket_index(high), idx);
            assert_eq!(bucket_index(high + 1), idx + 1);
        }
    }

    #[test]
    fn reject_window_slides() {
        let mut w = RejectWindow::new(10);
        w.record(1, false);
        w.record(2, false);
        w.record(3, true);
        assert_eq!(w.rate(), Some(0.5));
        w.expire(11); // (1, 11]: drops t=1
        assert_eq!((w.submitted(), w.rejected()), (1, 1));
        w.expire(13);
        assert_eq!(w.rate(), None);
        w.record(14, true);
        assert_eq!(w.rate(), None, "a reject alone has no submit to divide by");
    }

    #[test]
    fn reject_rate_is_capped_at_one() {
        let mut w = RejectWindow::new(10);
        w.record(1, false);
        w.record(2, true);
        w.record(3, true);
        assert_eq!(w.rate(), Some(1.0));
    }

    #[test]
    fn latency_quantiles_and_exact_p99_limit() {
        let mut w = LatencyWindow::new(1_000, Some(100.0));
        for i in 1..=100u64 {
            w.record(i as i64, i);
        }
        assert_eq!(w.quantile(1, 2), Some(50));
        assert_eq!(w.quantile(99, 100), Some(99));
        assert!(!w.p99_above_threshold(), "p99 = 99 <= 100");
        w.record(101, 101);
        w.record(102, 5_000);
        // 102 samples: rank ceil(0.99*102) = 101 -> sorted[100] = 101 > 100
        assert!(w.p99_above_threshold());
        w.expire(2_000);
        assert!(w.is_empty());
        assert!(!w.p99_above_threshold());
        assert_eq!(w.quantile(1, 2), None);
    }
}
