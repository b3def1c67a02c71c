//! The engine's input bounds and clock guards (docs/events.md, "Refusals"): what keeps one
//! absurd or hostile event from dragging the clock, overflowing a metric or freezing the limits.

use crate::config::SECOND_NS;
use crate::error::{CoreError, Result};

/// 1980-01-01T00:00:00Z: the default earliest accepted event time.
pub const DEFAULT_MIN_TS: i64 = 315_532_800 * SECOND_NS;
/// 2200-01-01T00:00:00Z: the latest event time any engine accepts. Far inside `i64` nanoseconds
/// (which end in 2262), so every sum and difference of times the engine forms is exact.
pub const MAX_TS: i64 = 7_258_118_400 * SECOND_NS;

/// Bounds every event is checked against before it changes anything.
#[derive(Debug, Clone, PartialEq)]
pub struct Guards {
    /// How far behind the engine clock an event may be (`out_of_order` beyond).
    pub time_tolerance_ns: i64,
    /// Live mode: how far ahead of the wall clock (`Engine::set_wall_clock`) an event may be
    /// (`future` beyond). Applies once a wall clock has been given.
    pub max_future_ns: Option<i64>,
    /// Replay mode: how far past the engine clock one event may move it (`future` beyond).
    pub max_jump_ns: Option<i64>,
    /// Earliest accepted event time (`bad_timestamp` before).
    pub min_ts: i64,
    /// Latest accepted event time (`bad_timestamp` after); at most `MAX_TS`.
    pub max_ts: i64,
    /// Largest accepted price (`bad_price` above).
    pub max_price: f64,
    /// Largest accepted fill quantity (`bad_quantity` above).
    pub max_quantity: f64,
    /// Largest accepted fill notional, |qty| x price, and fee (`bad_notional` / `bad_fee`).
    pub max_notional: f64,
    /// Default price band of every symbol: a quote or mark moving the mark by more than this
    /// fraction of the last accepted one is refused (`price_band`). `None`: no band.
    pub price_band: Option<f64>,
    /// After this many consecutive band refusals of a symbol, the next out-of-band price is
    /// accepted and every holder of the symbol gets a `price_band` breach.
    pub price_band_consecutive: u32,
}

impl Default for Guards {
    fn default() -> Self {
        Guards {
            time_tolerance_ns: 5 * SECOND_NS,
            max_future_ns: None,
            max_jump_ns: None,
            min_ts: DEFAULT_MIN_TS,
            max_ts: MAX_TS,
            max_price: 1e9,
            max_quantity: 1e12,
            max_notional: 1e13,
            price_band: None,
            price_band_consecutive: 3,
        }
    }
}

pub(crate) fn check_band(b: f64) -> Result<()> {
    if b.is_finite() && b > 0.0 {
        Ok(())
    } else {
        Err(CoreError::Config(format!(
            "a price band must be a fraction > 0 (0.2 = 20%), got {b}"
        )))
    }
}

impl Guards {
    /// Check every bound; the error names the field and what a valid value looks like.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(CoreError::Config(m));
        if self.time_tolerance_ns < 0 {
            return bad(format!(
                "time_tolerance_ns must be >= 0, got {}",
                self.time_tolerance_ns
            ));
        }
        if let Some(f) = self.max_future_ns {
            if f < 0 {
                return bad(format!("max_future_ns must be >= 0, got {f}"));
            }
        }
        if let Some(j) = self.max_jump_ns {
            if j <= 0 {
                return bad(format!("max_jump_ns must be > 0, got {j}"));
            }
        }
        if !(0 <= self.min_ts && self.min_ts < self.max_ts && self.max_ts <= MAX_TS) {
            return bad(format!(
                "the timestamp range must satisfy 0 <= min_ts < max_ts <= {MAX_TS} (2200-01-01), \
                 got [{}, {}]",
                self.min_ts, self.max_ts
            ));
        }
        for (name, v) in [
            ("max_price", self.max_price),
            ("max_quantity", self.max_quantity),
            ("max_notional", self.max_notional),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return bad(format!("{name} must be a finite number > 0, got {v}"));
            }
        }
        if let Some(b) = self.price_band {
            check_band(b)?;
        }
        if self.price_band_consecutive == 0 {
            return bad("price_band_consecutive must be >= 1, got 0".into());
        }
        Ok(())
    }
}
