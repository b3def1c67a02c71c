//! Rolling mean and sample variance over the last `W` values (Welford with removal).

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// Mean and sample variance of the last `capacity` values, O(1) per push.
///
/// Removal in Welford's scheme accumulates rounding error, so the sums are recomputed from the
/// window (two-pass) every `capacity` removals: amortised O(1), drift bounded to one window.
///
/// Checkpoints carry the window and the running sums (they are not recomputable bit for bit); the
/// capacity comes from the configuration (`restore_capacity`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollingStats {
    values: VecDeque<f64>,
    #[serde(skip)]
    capacity: usize,
    mean: f64,
    m2: f64,
    removals_since_refresh: usize,
    /// A bound on the rounding error that removals have left in `m2`.
    #[serde(default)]
    noise: f64,
    /// How many of the newest values are equal to the newest: when it covers the window, the
    /// variance is exactly zero, whatever rounding removals left in `m2`.
    #[serde(skip)]
    equal_run: usize,
}

impl RollingStats {
    pub fn new(capacity: usize) -> Self {
        RollingStats {
            values: VecDeque::with_capacity(capacity.min(4096)),
            capacity,
            mean: 0.0,
            m2: 0.0,
            removals_since_refresh: 0,
            noise: 0.0,
            equal_run: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn push(&mut self, x: f64) {
        if self.values.len() == self.capacity {
            let old = self.values.pop_front().unwrap_or(0.0);
            self.remove(old);
            self.removals_since_refresh += 1;
        }
        let same = self.values.back() == Some(&x);
        self.equal_run = if same { self.equal_run + 1 } else { 1 };
        self.values.push_back(x);
        if self.equal_run >= self.values.len() {
            // every value in the window is x: the stats are exact, whatever the removals before
            // left (so they depend on the window alone, not on how it was reached)
            self.mean = x;
            self.m2 = 0.0;
            self.noise = 0.0;
            self.removals_since_refresh = 0;
            return;
        }
        let n = self.values.len() as f64;
        let d = x - self.mean;
        self.mean += d / n;
        self.m2 += d * (x - self.mean);
        // Recompute when the drift guard is due, or when M2 is no larger than the rounding
        // error removals may have left in it: a window of equal returns then has exactly zero
        // variance (and no Sharpe), instead of a residue.
        if self.removals_since_refresh >= self.capacity
            || (self.noise > 0.0 && self.m2 <= self.noise)
        {
            self.refresh();
        }
    }

    fn remove(&mut self, y: f64) {
        // `values` already excludes y.
        let n_after = self.values.len();
        if n_after == 0 {
            self.mean = 0.0;
            self.m2 = 0.0;
            return;
        }
        let n_before = (n_after + 1) as f64;
        let mean_after = (n_before * self.mean - y) / n_after as f64;
        let step = (y - self.mean) * (y - mean_after);
        self.noise += 64.0 * f64::EPSILON * (step.abs() + self.m2.abs() + n_before * y * y);
        self.m2 -= step;
        self.mean = mean_after;
        if self.m2 < 0.0 {
            self.m2 = 0.0;
        }
    }

    /// Recompute mean and M2 exactly (two-pass) from the window.
    pub fn refresh(&mut self) {
        self.removals_since_refresh = 0;
        self.noise = 0.0;
        let n = self.values.len();
        if n == 0 {
            self.mean = 0.0;
            self.m2 = 0.0;
            return;
        }
        let mean = self.values.iter().fold(0.0, |acc, v| acc + v) / n as f64;
        self.mean = mean;
        self.m2 = self
            .values
            .iter()
            .fold(0.0, |acc, v| acc + (v - mean) * (v - mean));
    }

    pub fn mean(&self) -> f64 {
        self.mean
    }

    /// Sample variance (ddof = 1); `None` with fewer than 2 values; exactly 0 when every value
    /// in the window is equal.
    pub fn variance(&self) -> Option<f64> {
        let n = self.values.len();
        if n < 2 {
            return None;
        }
        if self.equal_run >= n {
            return Some(0.0);
        }
        Some(self.m2 / (n - 1) as f64)
    }

    pub fn values(&self) -> impl Iterator<Item = f64> + '_ {
        self.values.iter().copied()
    }

    /// The first field that is NaN or infinite (JSON cannot carry it), if any.
    pub(crate) fn non_finite_field(&self) -> Option<&'static str> {
        if !self.mean.is_finite() {
            Some("returns.mean")
        } else if !self.m2.is_finite() {
            Some("returns.m2")
        } else if self.values.iter().any(|v| !v.is_finite()) {
            Some("returns.values")
        } else {
            None
        }
    }

    /// After decoding a checkpoint: set the capacity (from the configuration) and check that the
    /// decoded window fits it.
    pub(crate) fn restore_capacity(&mut self, capacity: usize) -> Result<(), String> {
        if self.values.len() > capacity {
            return Err(format!(
                "the return window holds {} values, more than sharpe_window = {capacity}",
                self.values.len()
            ));
        }
        if self.removals_since_refresh >= capacity {
            return Err(format!(
                "removals_since_refresh = {} must be < sharpe_window = {capacity}",
                self.removals_since_refresh
            ));
        }
        if self.m2 < 0.0 {
            return Err(format!("m2 must be >= 0, got {}", self.m2));
        }
        self.capacity = capacity;
        self.equal_run = match self.values.back() {
            Some(&last) => self.values.iter().rev().take_while(|&&v| v == last).count(),
            None => 0,
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(xs: &[f64]) -> (f64, f64) {
        let n = xs.len() as f64;
        let m = xs.iter().sum::<f64>() / n;
        let v = xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1.0);
        (m, v)
    }

    #[test]
    fn matches_naive_over_a_sliding_window() {
        let xs: Vec<f64> = (0..1000)
            .map(|i| ((i * 7919) % 101) as f64 / 1000.0 - 0.05)
            .collect();
        let mut r = RollingStats::new(37);
        for (i, &x) in xs.iter().enumerate() {
            r.push(x);
            let lo = (i + 1).saturating_sub(37);
            let w = &xs[lo..=i];
            if w.len() >= 2 {
                let (m, v) = naive(w);
                assert!((r.mean() - m).abs() <= 1e-12, "mean at {i}");
                assert!(
                    (r.variance().unwrap() - v).abs() <= 1e-12 * v.max(1e-12),
                    "var at {i}"
                );
            }
        }
    }

    #[test]
    fn constant_values_have_zero_variance() {
        let mut r = RollingStats::new(5);
        for _ in 0..50 {
            r.push(0.1);
        }
        assert!(r.variance().unwrap() <= 1e-30);
    }

    #[test]
    fn fewer_than_two_values_have_no_variance() {
        let mut r = RollingStats::new(5);
        assert_eq!(r.variance(), None);
        r.push(1.0);
        assert_eq!(r.variance(), None);
        r.push(2.0);
        assert_eq!(r.variance(), Some(0.5));
    }

    #[test]
    fn a_window_of_equal_values_forgets_how_it_was_reached() {
        // different histories, the same window of zeros: the same state, bit for bit, and the
        // same stats after the next values
        let mut a = RollingStats::new(3);
        let mut b = RollingStats::new(3);
        for x in [0.3, -1.7, 2.9e-5, 11.0, 0.0, 0.0, 0.0, 0.0] {
            a.push(x);
        }
        for x in [5e-5, 0.0, 0.0, 0.0] {
            b.push(x);
        }
        for x in [5e-5, 0.0] {
            a.push(x);
            b.push(x);
        }
        assert_eq!(a.mean().to_bits(), b.mean().to_bits());
        assert_eq!(
            a.variance().map(f64::to_bits),
            b.variance().map(f64::to_bits)
        );
    }
}
