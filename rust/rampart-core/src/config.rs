//! Per-algorithm configuration: identity, capital, metric windows and limits.

use serde::{Deserialize, Serialize};

use crate::error::{CoreError, Result};

pub const SECOND_NS: i64 = 1_000_000_000;
pub const DAY_NS: i64 = 86_400 * SECOND_NS;
const YEAR_NS: f64 = 365.0 * 86_400.0 * 1e9;

/// One limit: a threshold and how many consecutive breaching evaluations trip it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSpec {
    pub threshold: f64,
    pub consecutive: u32,
}

impl LimitSpec {
    pub fn new(threshold: f64) -> Self {
        LimitSpec {
            threshold,
            consecutive: 1,
        }
    }
}

/// The limits checked inside every update call. `None` disables a limit.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Trips when daily PnL < -threshold x capital.
    pub daily_loss: Option<LimitSpec>,
    /// Trips when drawdown > threshold (a fraction of the peak).
    pub drawdown: Option<LimitSpec>,
    /// Trips when the windowed reject rate > threshold (with at least `error_min_orders` submits).
    pub error_rate: Option<LimitSpec>,
    /// Trips when the exact windowed p99 ack latency > threshold nanoseconds.
    pub latency_ns: Option<LimitSpec>,
}

/// How returns are sampled for the Sharpe ratio (docs/metrics.md, "Returns").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReturnSampling {
    /// One return per `return_interval_ns` of event time; periods without events return 0.
    #[default]
    Interval,
    /// One return per trading session (day, from `session_offset_ns`) that saw events, close to
    /// close; days without events (weekends, holidays) add no return.
    Session,
}

impl ReturnSampling {
    pub fn as_str(self) -> &'static str {
        match self {
            ReturnSampling::Interval => "interval",
            ReturnSampling::Session => "session",
        }
    }
}

/// The largest Sharpe window: 8 bytes a return, so at most 8 MB per algorithm.
pub const MAX_SHARPE_WINDOW: usize = 1_000_000;
/// The longest order window (reject rate, ack latency): 16 bytes per order event in the window.
pub const MAX_ORDER_WINDOW_NS: i64 = 3_600 * SECOND_NS;
/// The longest return interval (and so the coarsest sampling): one year.
pub const MAX_RETURN_INTERVAL_NS: i64 = 366 * DAY_NS;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlgoConfig {
    pub algo_id: String,
    pub version: String,
    /// Allocated capital, in account currency.
    pub capital: f64,
    pub limits: Limits,
    pub error_window_ns: i64,
    pub error_min_orders: u32,
    pub latency_window_ns: i64,
    pub latency_min_samples: u32,
    pub return_interval_ns: i64,
    #[serde(default)]
    pub return_sampling: ReturnSampling,
    pub sharpe_window: usize,
    pub periods_per_year: f64,
    /// Annual risk-free rate; the per-period rate is `risk_free_rate / periods_per_year`.
    pub risk_free_rate: f64,
    /// Session (day) boundary, as an offset after 00:00 UTC.
    pub session_offset_ns: i64,
    /// The drawdown at which the confidence score's drawdown term reaches 0 (seed: 0.10).
    pub confidence_drawdown_ref: f64,
}

impl AlgoConfig {
    /// A configuration with the documented defaults (docs/metrics.md).
    pub fn new(algo_id: impl Into<String>, version: impl Into<String>, capital: f64) -> Self {
        let return_interval_ns = 3_600 * SECOND_NS;
        AlgoConfig {
            algo_id: algo_id.into(),
            version: version.into(),
            capital,
            limits: Limits::default(),
            error_window_ns: 60 * SECOND_NS,
            error_min_orders: 20,
            latency_window_ns: 60 * SECOND_NS,
            latency_min_samples: 20,
            return_interval_ns,
            return_sampling: ReturnSampling::Interval,
            sharpe_window: 720,
            periods_per_year: default_periods_per_year(return_interval_ns),
            risk_free_rate: 0.0,
            session_offset_ns: 0,
            confidence_drawdown_ref: 0.10,
        }
    }

    /// Check every field; the error names the field and what a valid value looks like.
    pub fn validate(&self) -> Result<()> {
        fn bad(msg: String) -> Result<()> {
            Err(CoreError::Config(msg))
        }
        if self.algo_id.trim().is_empty() {
            return bad("algo_id must be a non-empty string".into());
        }
        if !(self.capital.is_finite() && self.capital > 0.0 && self.capital <= 1e15) {
            return bad(format!(
                "capital must be a number in (0, 1e15], got {}",
                self.capital
            ));
        }
        let fraction_limits = [
            ("max_daily_loss", &self.limits.daily_loss),
            ("max_drawdown", &self.limits.drawdown),
            ("max_error_rate", &self.limits.error_rate),
        ];
        for (name, spec) in fraction_limits {
            if let Some(s) = spec {
                if !(s.threshold.is_finite() && s.threshold >= 0.0 && s.threshold <= 1.0) {
                    return bad(format!(
                        "{name} must be a fraction in [0, 1], got {}",
                        s.threshold
                    ));
                }
            }
        }
        if let Some(s) = &self.limits.latency_ns {
            if !(s.threshold.is_finite() && s.threshold >= 0.0 && s.threshold <= 1e18) {
                return bad(format!("max_latency_ns must be >= 0, got {}", s.threshold));
            }
        }
        let all = [
            ("daily_loss_consecutive", &self.limits.daily_loss),
            ("drawdown_consecutive", &self.limits.drawdown),
            ("error_rate_consecutive", &self.limits.error_rate),
            ("latency_consecutive", &self.limits.latency_ns),
        ];
        for (name, spec) in all {
            if let Some(s) = spec {
                if s.consecutive == 0 {
                    return bad(format!("{name} must be >= 1, got 0"));
                }
            }
        }
        for (name, v, max, max_text) in [
            (
                "error_window_ns",
                self.error_window_ns,
                MAX_ORDER_WINDOW_NS,
                "1 hour",
            ),
            (
                "latency_window_ns",
                self.latency_window_ns,
                MAX_ORDER_WINDOW_NS,
                "1 hour",
            ),
            (
                "return_interval_ns",
                self.return_interval_ns,
                MAX_RETURN_INTERVAL_NS,
                "366 days",
            ),
        ] {
            if !(1..=max).contains(&v) {
                return bad(format!(
                    "{name} must be > 0 and at most {max} ns ({max_text}), got {v}"
                ));
            }
        }
        if !(2..=MAX_SHARPE_WINDOW).contains(&self.sharpe_window) {
            return bad(format!(
                "sharpe_window must be between 2 and {MAX_SHARPE_WINDOW} returns (8 bytes each), \
                 got {}",
                self.sharpe_window
            ));
        }
        if !(self.periods_per_year.is_finite() && self.periods_per_year > 0.0) {
            return bad(format!(
                "periods_per_year must be a finite number > 0, got {}",
                self.periods_per_year
            ));
        }
        if !(self.risk_free_rate.is_finite() && self.risk_free_rate.abs() <= 10.0) {
            return bad(format!(
                "risk_free_rate must be an annual rate in [-10, 10], got {}",
                self.risk_free_rate
            ));
        }
        if !(0..DAY_NS).contains(&self.session_offset_ns) {
            return bad(format!(
                "session_offset_ns must be in [0, 86400e9) (an offset after 00:00 UTC), got {}",
                self.session_offset_ns
            ));
        }
        if !(self.confidence_drawdown_ref.is_finite()
            && self.confidence_drawdown_ref > 0.0
            && self.confidence_drawdown_ref <= 1.0)
        {
            return bad(format!(
                "confidence_drawdown_ref must be in (0, 1], got {}",
                self.confidence_drawdown_ref
            ));
        }
        Ok(())
    }
}

/// Periods per year for a sampling interval on continuous event time (365 days).
pub fn default_periods_per_year(return_interval_ns: i64) -> f64 {
    YEAR_NS / return_interval_ns as f64
}

/// Trading sessions per year, the annualization of `ReturnSampling::Session` by default.
pub const SESSIONS_PER_YEAR: f64 = 252.0;
