//! One algorithm's state: ledger, equity curve, returns, orders, limits.

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::config::{AlgoConfig, LimitSpec, ReturnSampling, DAY_NS};
use crate::ledger::Position;
use crate::order_window::{LatencyWindow, RejectWindow};
use crate::rolling::RollingStats;

/// Which limit tripped. `PriceBand` is the market's, not a limit of the algorithm: a held
/// symbol's price left its band several times in a row (`Guards::price_band_consecutive`), so
/// the algorithm's marks cannot be trusted; it never latches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BreachKind {
    DailyLoss,
    Drawdown,
    ErrorRate,
    Latency,
    PriceBand,
}

impl BreachKind {
    /// The algorithm's own limits (each with a latch).
    pub const ALL: [BreachKind; 4] = [
        BreachKind::DailyLoss,
        BreachKind::Drawdown,
        BreachKind::ErrorRate,
        BreachKind::Latency,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BreachKind::DailyLoss => "daily_loss",
            BreachKind::Drawdown => "drawdown",
            BreachKind::ErrorRate => "error_rate",
            BreachKind::Latency => "latency",
            BreachKind::PriceBand => "price_band",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A limit that tripped in this update call.
#[derive(Debug, Clone, PartialEq)]
pub struct Breach {
    pub algo_id: String,
    pub kind: BreachKind,
    pub value: f64,
    pub threshold: f64,
    pub ts: i64,
}

/// Debounce counter and latch of one limit.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitState {
    consecutive: u32,
    latched: bool,
}

/// A return this close to 0 is rounding (8 ulps of 1), recorded as 0 (docs/metrics.md).
pub const RETURN_ROUNDING: f64 = 8.0 * f64::EPSILON;

/// Re-sum unrealized PnL from the positions every this many incremental updates (drift guard).
const UNREALIZED_RESUM_EVERY: u32 = 1024;

/// Everything the engine knows about one algorithm. Serialized whole into checkpoints
/// (`Engine::checkpoint`), except what is derived: the position index and the engine-local symbol
/// ids (re-linked by the engine on restore) and the windows' derived parts (see their types).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlgoState {
    pub config: AlgoConfig,
    pub positions: Vec<Position>,
    /// symbol id -> index into `positions`
    #[serde(skip)]
    position_index: FxHashMap<u32, usize>,
    pub realized: f64,
    pub fees: f64,
    pub unrealized: f64,
    unrealized_updates: u32,
    pub peak: f64,
    pub max_drawdown: f64,
    /// Has the algorithm seen its first event (opened its first period and session)?
    started: bool,
    day: i64,
    pub session_start_equity: f64,
    pub stage_mark_equity: f64,
    period: i64,
    period_start_equity: f64,
    pub returns: RollingStats,
    pub returns_total: u64,
    pub trades: u64,
    pub wins: u64,
    pub fills: u64,
    pub rejects: RejectWindow,
    pub latency: LatencyWindow,
    pub orders_submitted_total: u64,
    pub orders_rejected_total: u64,
    pub orders_acked_total: u64,
    pub orders_cancelled_total: u64,
    pub last_fill_ts: Option<i64>,
    pub last_order_ts: Option<i64>,
    pub last_event_ts: Option<i64>,
    limit_state: [LimitState; 4],
    /// Changed since the last `Engine::take_changed` (its stored checkpoint is out of date).
    /// Not serialized: the engine sets it for a registered or restored algorithm.
    #[serde(skip)]
    pub(crate) changed: bool,
}

impl AlgoState {
    pub fn new(config: AlgoConfig) -> Self {
        let c = config.capital;
        AlgoState {
            returns: RollingStats::new(config.sharpe_window),
            rejects: RejectWindow::new(config.error_window_ns),
            latency: LatencyWindow::new(
                config.latency_window_ns,
                config.limits.latency_ns.map(|l| l.threshold),
            ),
            config,
            positions: Vec::new(),
            position_index: FxHashMap::default(),
            realized: 0.0,
            fees: 0.0,
            unrealized: 0.0,
            unrealized_updates: 0,
            peak: c,
            max_drawdown: 0.0,
            started: false,
            day: 0,
            session_start_equity: c,
            stage_mark_equity: c,
            period: 0,
            period_start_equity: c,
            returns_total: 0,
            trades: 0,
            wins: 0,
            fills: 0,
            orders_submitted_total: 0,
            orders_rejected_total: 0,
            orders_acked_total: 0,
            orders_cancelled_total: 0,
            last_fill_ts: None,
            last_order_ts: None,
            last_event_ts: None,
            limit_state: [LimitState::default(); 4],
            changed: true,
        }
    }

    #[inline]
    pub fn capital(&self) -> f64 {
        self.config.capital
    }

    #[inline]
    pub fn equity(&self) -> f64 {
        self.config.capital + self.realized - self.fees + self.unrealized
    }

    #[inline]
    pub fn drawdown(&self) -> f64 {
        if self.peak > 0.0 {
            ((self.peak - self.equity()) / self.peak).max(0.0)
        } else {
            0.0
        }
    }

    pub fn daily_pnl(&self) -> f64 {
        self.equity() - self.session_start_equity
    }

    pub fn stage_pnl(&self) -> f64 {
        self.equity() - self.stage_mark_equity
    }

    pub fn win_rate(&self) -> Option<f64> {
        (self.trades > 0).then(|| self.wins as f64 / self.trades as f64)
    }

    /// Rolling Sharpe of the return window; `None` with < 2 returns or zero deviation.
    pub fn sharpe(&self) -> Option<f64> {
        let var = self.returns.variance()?;
        let std = var.sqrt();
        let mean = self.returns.mean();
        // Rounding leaves a residue of ~1e-16 x |mean| when every return is equal: treat as zero.
        if std.is_nan() || std <= 1e-14 * mean.abs() {
            return None;
        }
        let n = self.config.periods_per_year;
        Some((mean - self.config.risk_free_rate / n) / std * n.sqrt())
    }

    pub fn confidence(&self) -> f64 {
        let sharpe_term = self.sharpe().map_or(0.0, |s| (s / 2.0).clamp(0.0, 1.0));
        let win_term = self.win_rate().map_or(0.0, |w| w.clamp(0.0, 1.0));
        let dd_term = (1.0 - self.drawdown() / self.config.confidence_drawdown_ref).clamp(0.0, 1.0);
        0.4 * sharpe_term + 0.3 * win_term + 0.3 * dd_term
    }

    pub fn breached(&self) -> impl Iterator<Item = BreachKind> + '_ {
        BreachKind::ALL
            .into_iter()
            .filter(|k| self.limit_state[k.index()].latched)
    }

    pub fn reset_breaches(&mut self) {
        self.limit_state = [LimitState::default(); 4];
        self.changed = true;
    }

    pub fn position_mut(&mut self, symbol: u32) -> (&mut Position, bool) {
        let mut created = false;
        let idx = *self.position_index.entry(symbol).or_insert_with(|| {
            created = true;
            self.positions.push(Position::new(symbol));
            self.positions.len() - 1
        });
        (&mut self.positions[idx], created)
    }

    pub fn position_slot(&self, symbol: u32) -> Option<usize> {
        self.position_index.get(&symbol).copied()
    }

    /// Bring the session and return period up to event time `t` (the engine clock), using the
    /// equity before the event that caused the roll.
    /// Roll an algorithm that has seen its first event; reads (snapshots) and clock moves
    /// (`advance`) never start one.
    /// Not a change for checkpoints: rolling later to a later time gives the same state, so a
    /// checkpoint taken before it restores to the same metrics ("reads never change a later
    /// result", docs/metrics.md).
    pub fn roll_if_started(&mut self, t: i64) {
        if self.started {
            self.roll_to(t);
        }
    }

    /// Roll before a change of the algorithm's state: every change goes through here (or sets
    /// `changed` itself), which marks the algorithm changed for incremental checkpoints.
    pub fn roll(&mut self, t: i64) {
        self.changed = true;
        self.roll_to(t);
    }

    fn roll_to(&mut self, t: i64) {
        let day = t
            .saturating_sub(self.config.session_offset_ns)
            .div_euclid(DAY_NS);
        let period = t.div_euclid(self.config.return_interval_ns);
        if !self.started {
            self.started = true;
            self.day = day;
            self.period = period;
            return;
        }
        let sessions = self.config.return_sampling == ReturnSampling::Session;
        if day > self.day {
            self.day = day;
            let e = self.equity();
            self.session_start_equity = e;
            if sessions {
                // One return per session that saw events: this roll closes the last one.
                self.push_return(e);
                self.period_start_equity = e;
            }
        }
        if !sessions && period > self.period {
            let e = self.equity();
            self.push_return(e);
            // the empty periods in between start (and end) at `e`: no return when ruined
            // (every one counts; more than a window of them leave only a window of zeros)
            if e > 0.0 {
                let empty = period.saturating_sub(self.period).saturating_sub(1).max(0);
                for _ in 0..empty.min(self.returns.capacity() as i64) {
                    self.returns.push(0.0);
                }
                self.returns_total += empty as u64;
            }
            self.period = period;
            self.period_start_equity = e;
        }
    }

    /// The return of the period closing at equity `e`; none when ruined (or if the ratio is not
    /// finite, which only a period starting at a vanishing equity can produce).
    fn push_return(&mut self, e: f64) {
        if self.period_start_equity > 0.0 {
            let r = e / self.period_start_equity - 1.0;
            // Within rounding of zero (a cash flow moves the period's start and its end by the
            // same amount, rounded apart): a flat period, recorded as exactly 0.
            let r = if r.abs() <= RETURN_ROUNDING { 0.0 } else { r };
            if r.is_finite() {
                self.returns.push(r);
                self.returns_total += 1;
            }
        }
    }

    /// Add to unrealized PnL incrementally, re-summing from positions now and then.
    #[inline]
    pub fn add_unrealized(&mut self, delta: f64) {
        self.unrealized += delta;
        self.unrealized_updates += 1;
        if self.unrealized_updates >= UNREALIZED_RESUM_EVERY {
            self.resum_unrealized();
        }
    }

    pub fn resum_unrealized(&mut self) {
        self.unrealized_updates = 0;
        self.unrealized = self.positions.iter().fold(0.0, |acc, p| acc + p.unrealized);
    }

    /// Would changing realized PnL, fees and unrealized PnL by these amounts keep every metric
    /// finite? The error names the first metric that would not be. (On the hot path: one
    /// branch-free test, the names only when it fails.)
    #[inline]
    pub fn check_finite_after(
        &self,
        d_realized: f64,
        d_fees: f64,
        d_unrealized: f64,
    ) -> Result<(), &'static str> {
        let realized = self.realized + d_realized;
        let fees = self.fees + d_fees;
        let unrealized = self.unrealized + d_unrealized;
        let e = self.config.capital + realized - fees + unrealized;
        let peak = self.peak.max(e);
        let values = [
            realized,
            fees,
            unrealized,
            e,
            peak,
            peak - e,
            e - self.session_start_equity,
            e - self.stage_mark_equity,
        ];
        if values.iter().fold(true, |ok, v| ok & v.is_finite()) {
            return Ok(());
        }
        const NAMES: [&str; 8] = [
            "realized PnL",
            "fees",
            "unrealized PnL",
            "equity",
            "peak equity",
            "drawdown",
            "daily PnL",
            "stage PnL",
        ];
        let first = values.iter().position(|v| !v.is_finite()).unwrap_or(0);
        Err(NAMES[first])
    }

    /// Would `set_capital(capital)` keep every equity reference finite?
    pub fn capital_change_is_finite(&self, capital: f64) -> bool {
        let delta = capital - self.config.capital;
        [
            delta,
            self.peak + delta,
            self.session_start_equity + delta,
            self.stage_mark_equity + delta,
            self.period_start_equity + delta,
            self.equity() + delta,
        ]
        .iter()
        .all(|v| v.is_finite())
    }

    /// A restored clock that cannot be trusted (ahead of `max_clock`): clamp every time to it,
    /// empty the order windows (their events are in the future) and restart the return period
    /// and the session at the next event. Positions, PnL, peak and trades are kept.
    pub(crate) fn distrust_clock(&mut self, max_clock: i64) {
        let clamp = |t: Option<i64>| t.map(|t| t.min(max_clock));
        self.last_fill_ts = clamp(self.last_fill_ts);
        self.last_order_ts = clamp(self.last_order_ts);
        self.last_event_ts = clamp(self.last_event_ts);
        self.rejects.clear();
        self.latency.clear();
        self.started = false;
    }

    /// A capital change is a cash flow: every equity reference moves with it.
    pub fn set_capital(&mut self, capital: f64) {
        let delta = capital - self.config.capital;
        self.config.capital = capital;
        self.peak += delta;
        self.session_start_equity += delta;
        self.stage_mark_equity += delta;
        self.period_start_equity += delta;
    }

    /// A new measurement at the current capital (paper trading promoted to real capital): the
    /// PnL so far was not made on this capital, so equity restarts at it. Positions are held on
    /// at `marks[i]` (the mark of `positions[i]`); realized PnL, fees, peak, max drawdown, the
    /// session, stage and period references, the return window and the trade counts restart;
    /// the equity limits' debounce and latches are cleared. Order counts and windows (the
    /// gateway's health, not the PnL's) are kept. The caller rolls the periods to the clock
    /// first.
    pub fn new_measurement(&mut self, marks: &[Option<f64>]) {
        debug_assert_eq!(marks.len(), self.positions.len());
        for (p, &m) in self.positions.iter_mut().zip(marks) {
            p.rebase(m);
        }
        let c = self.config.capital;
        self.realized = 0.0;
        self.fees = 0.0;
        self.unrealized = 0.0;
        self.unrealized_updates = 0;
        self.peak = c;
        self.max_drawdown = 0.0;
        self.session_start_equity = c;
        self.stage_mark_equity = c;
        self.period_start_equity = c;
        self.returns = RollingStats::new(self.config.sharpe_window);
        self.returns_total = 0;
        self.trades = 0;
        self.wins = 0;
        self.limit_state[BreachKind::DailyLoss.index()] = LimitState::default();
        self.limit_state[BreachKind::Drawdown.index()] = LimitState::default();
    }

    /// Raise the peak and the max drawdown to the current equity; returns the drawdown.
    fn track_peak(&mut self) -> f64 {
        let e = self.equity();
        if e > self.peak {
            self.peak = e;
        }
        let dd = self.drawdown();
        if dd > self.max_drawdown {
            self.max_drawdown = dd;
        }
        dd
    }

    /// After any equity change: peak, drawdown, and the equity limits.
    pub fn after_equity_change(&mut self, ts: i64, out: &mut Vec<Breach>) {
        let dd = self.track_peak();
        let e = self.equity();
        if let Some(spec) = self.config.limits.daily_loss {
            let daily = e - self.session_start_equity;
            let floor = -spec.threshold * self.config.capital;
            if self.evaluate(BreachKind::DailyLoss, spec, daily < floor) {
                out.push(self.breach(BreachKind::DailyLoss, daily, floor, ts));
            }
        }
        if let Some(spec) = self.config.limits.drawdown {
            if self.evaluate(BreachKind::Drawdown, spec, dd > spec.threshold) {
                out.push(self.breach(BreachKind::Drawdown, dd, spec.threshold, ts));
            }
        }
    }

    pub fn check_error_rate(&mut self, ts: i64, out: &mut Vec<Breach>) {
        if let Some(spec) = self.config.limits.error_rate {
            let rate = self.rejects.rate().unwrap_or(0.0);
            let breaching = self.rejects.submitted() >= u64::from(self.config.error_min_orders)
                && rate > spec.threshold;
            if self.evaluate(BreachKind::ErrorRate, spec, breaching) {
                out.push(self.breach(BreachKind::ErrorRate, rate, spec.threshold, ts));
            }
        }
    }

    pub fn check_latency(&mut self, ts: i64, out: &mut Vec<Breach>) {
        if let Some(spec) = self.config.limits.latency_ns {
            let breaching = self.latency.len() >= u64::from(self.config.latency_min_samples)
                && self.latency.p99_above_threshold();
            if self.evaluate(BreachKind::Latency, spec, breaching) {
                // The histogram's p99 is its bucket's highest value: >= the exact p99 > threshold.
                let p99 = self.latency.quantile(99, 100).unwrap_or(0) as f64;
                out.push(self.breach(BreachKind::Latency, p99, spec.threshold, ts));
            }
        }
    }

    /// Count one evaluation of a limit; true when this evaluation trips it (it then latches).
    #[inline]
    fn evaluate(&mut self, kind: BreachKind, spec: LimitSpec, breaching: bool) -> bool {
        let st = &mut self.limit_state[kind.index()];
        if st.latched {
            return false;
        }
        if !breaching {
            st.consecutive = 0;
            return false;
        }
        st.consecutive += 1;
        st.latched = st.consecutive >= spec.consecutive;
        st.latched
    }

    // ---- checkpoints ------------------------------------------------------------------------

    /// The first field that is NaN or infinite, if any: JSON has no form for these, so such a
    /// state (only reachable by overflowing prices or quantities) cannot be checkpointed.
    /// The configuration is validated finite on registration and on every capital change.
    pub(crate) fn non_finite_field(&self) -> Option<&'static str> {
        [
            ("realized", self.realized),
            ("fees", self.fees),
            ("unrealized", self.unrealized),
            ("peak", self.peak),
            ("max_drawdown", self.max_drawdown),
            ("session_start_equity", self.session_start_equity),
            ("stage_mark_equity", self.stage_mark_equity),
            ("period_start_equity", self.period_start_equity),
        ]
        .into_iter()
        .find_map(|(name, v)| (!v.is_finite()).then_some(name))
        .or_else(|| self.positions.iter().find_map(Position::non_finite_field))
        .or_else(|| self.returns.non_finite_field())
    }

    /// After decoding a checkpoint: rebuild the windows' derived parts from the configuration and
    /// check the invariants the update code relies on. The error says what is inconsistent.
    pub(crate) fn rebuild_after_decode(&mut self) -> Result<(), String> {
        let c = &self.config;
        self.returns.restore_capacity(c.sharpe_window)?;
        self.rejects.restore(c.error_window_ns)?;
        self.latency.restore(
            c.latency_window_ns,
            c.limits.latency_ns.map(|l| l.threshold),
        )?;
        if self.unrealized_updates >= UNREALIZED_RESUM_EVERY {
            return Err(format!(
                "unrealized_updates = {} must be < {UNREALIZED_RESUM_EVERY}",
                self.unrealized_updates
            ));
        }
        if self.wins > self.trades {
            return Err(format!(
                "wins = {} exceeds trades = {}",
                self.wins, self.trades
            ));
        }
        Ok(())
    }

    /// Point the positions at this engine's symbol ids (`ids[i]` for `positions[i]`) and rebuild
    /// the index.
    pub(crate) fn relink_positions(&mut self, ids: &[u32]) {
        debug_assert_eq!(ids.len(), self.positions.len());
        self.position_index.clear();
        for (i, (p, &id)) in self.positions.iter_mut().zip(ids).enumerate() {
            p.symbol = id;
            self.position_index.insert(id, i);
        }
    }

    /// Re-mark a restored position to a mark the engine already had, as a quote would (without
    /// evaluating the limits: the next equity change does). `t` is the engine clock.
    pub(crate) fn remark_restored(&mut self, pidx: usize, mark: f64, t: i64) {
        self.roll(t);
        let delta = self.positions[pidx].remark(mark);
        self.add_unrealized(delta);
        self.track_peak();
    }

    fn breach(&self, kind: BreachKind, value: f64, threshold: f64, ts: i64) -> Breach {
        Breach {
            algo_id: self.config.algo_id.clone(),
            kind,
            value,
            threshold,
            ts,
        }
    }
}
