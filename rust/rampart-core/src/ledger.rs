//! Positions with average cost, and the flat-to-flat trade they belong to.

use serde::{Deserialize, Serialize};

/// A position is flat when |Q| <= FLAT_EPS x max(|Q before|, |fill qty|) after a fill.
pub const FLAT_EPS: f64 = 1e-9;

/// One symbol's position of one algorithm.
///
/// The symbol id is local to an engine, so checkpoints leave it out and name the symbol instead
/// (see `Engine::checkpoint`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Position {
    #[serde(skip)]
    pub symbol: u32,
    pub qty: f64,
    pub avg_cost: f64,
    /// Realized PnL of this symbol (gross of fees), since registration or the last new
    /// measurement.
    pub realized: f64,
    /// qty x (mark - avg_cost), kept in step with the symbol's mark.
    pub unrealized: f64,
    /// Realized PnL of the open trade (round trip) so far.
    trade_pnl: f64,
    /// Fees of the open trade so far.
    trade_fees: f64,
}

/// What a fill did to the position.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct FillOutcome {
    /// Realized PnL of this fill (gross of fees).
    pub realized: f64,
    /// Net PnL of the trade this fill closed, if it closed one.
    pub closed_trade: Option<f64>,
}

impl Position {
    pub fn new(symbol: u32) -> Self {
        Position {
            symbol,
            ..Default::default()
        }
    }

    /// Apply a fill of signed quantity `q` at `price` with `fee`; `mark` is the symbol's mark after
    /// the fill. Inputs are validated by the caller (finite, q != 0, price > 0, fee >= 0).
    pub fn apply_fill(&mut self, q: f64, price: f64, fee: f64, mark: f64) -> FillOutcome {
        let held = self.qty;
        let mut out = FillOutcome::default();
        if held == 0.0 || held.signum() == q.signum() {
            let (a, b) = (held.abs(), q.abs());
            self.avg_cost = (a * self.avg_cost + b * price) / (a + b);
            self.qty = held + q;
            self.trade_fees += fee;
        } else {
            let after = held + q;
            let full_close = after.abs() <= FLAT_EPS * held.abs().max(q.abs());
            let closed = if full_close || q.abs() >= held.abs() {
                held.abs()
            } else {
                q.abs()
            };
            let pnl = closed * (price - self.avg_cost) * held.signum();
            out.realized = pnl;
            self.realized += pnl;
            if full_close {
                out.closed_trade = Some(self.trade_pnl + pnl - (self.trade_fees + fee));
                self.reset_flat();
            } else if q.abs() < held.abs() {
                self.trade_pnl += pnl;
                self.trade_fees += fee;
                self.qty = after;
            } else {
                // Flip: the closing part takes its pro-rata share of the fee.
                let close_fee = fee * closed / q.abs();
                out.closed_trade = Some(self.trade_pnl + pnl - (self.trade_fees + close_fee));
                self.qty = after;
                self.avg_cost = price;
                self.trade_pnl = 0.0;
                self.trade_fees = fee - close_fee;
            }
        }
        self.unrealized = self.qty * (mark - self.avg_cost);
        out
    }

    fn reset_flat(&mut self) {
        self.qty = 0.0;
        self.avg_cost = 0.0;
        self.trade_pnl = 0.0;
        self.trade_fees = 0.0;
    }

    /// Every field is finite (branch-free: on the fill path).
    #[inline]
    pub(crate) fn is_finite(&self) -> bool {
        [
            self.qty,
            self.avg_cost,
            self.realized,
            self.unrealized,
            self.trade_pnl,
            self.trade_fees,
        ]
        .iter()
        .fold(true, |ok, v| ok & v.is_finite())
    }

    /// The first field that is NaN or infinite (JSON cannot carry it), if any.
    pub(crate) fn non_finite_field(&self) -> Option<&'static str> {
        [
            ("positions[].qty", self.qty),
            ("positions[].avg_cost", self.avg_cost),
            ("positions[].realized", self.realized),
            ("positions[].unrealized", self.unrealized),
            ("positions[].trade_pnl", self.trade_pnl),
            ("positions[].trade_fees", self.trade_fees),
        ]
        .into_iter()
        .find_map(|(name, v)| (!v.is_finite()).then_some(name))
    }

    /// A new measurement: the position is held on at `mark` as if just opened there (its
    /// realized PnL, its open trade and its unrealized PnL start from zero).
    pub fn rebase(&mut self, mark: Option<f64>) {
        if self.qty != 0.0 {
            // without a mark (none yet), the cost basis stays and so does its zero unrealized
            if let Some(m) = mark {
                self.avg_cost = m;
            }
        }
        self.realized = 0.0;
        self.unrealized = 0.0;
        self.trade_pnl = 0.0;
        self.trade_fees = 0.0;
    }

    /// Re-mark; returns the change in unrealized PnL.
    pub fn remark(&mut self, mark: f64) -> f64 {
        let u = self.qty * (mark - self.avg_cost);
        let delta = u - self.unrealized;
        self.unrealized = u;
        delta
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
    }

    #[test]
    fn long_add_and_partial_close() {
        let mut p = Position::new(0);
        p.apply_fill(10.0, 100.0, 1.0, 100.0);
        p.apply_fill(10.0, 110.0, 1.0, 110.0);
        assert!(close(p.avg_cost, 105.0));
        let o = p.apply_fill(-5.0, 120.0, 0.5, 120.0);
        assert!(close(o.realized, 75.0));
        assert_eq!(o.closed_trade, None);
        assert!(close(p.qty, 15.0));
        assert!(close(p.avg_cost, 105.0), "reducing keeps the average cost");
        assert!(close(p.unrealized, 15.0 * 15.0));
        let o = p.apply_fill(-15.0, 100.0, 0.5, 100.0);
        assert!(close(o.realized, -75.0));
        // trade: +75 - 75 realized, fees 1 + 1 + 0.5 + 0.5 = 3
        assert!(close(o.closed_trade.unwrap(), -3.0));
        assert_eq!(p.qty, 0.0);
        assert_eq!(p.avg_cost, 0.0);
        assert!(close(p.realized, 0.0));
    }

    #[test]
    fn short_profits_when_price_falls() {
        let mut p = Position::new(0);
        p.apply_fill(-4.0, 50.0, 0.0, 50.0);
        assert!(close(p.unrealized, 0.0));
        assert!(close(p.remark(45.0), 20.0));
        let o = p.apply_fill(4.0, 45.0, 0.2, 45.0);
        assert!(close(o.realized, 20.0));
        assert!(close(o.closed_trade.unwrap(), 19.8));
        assert_eq!(p.unrealized, 0.0);
    }

    #[test]
    fn flip_closes_one_trade_and_opens_the_next_with_split_fee() {
        let mut p = Position::new(0);
        p.apply_fill(2.0, 10.0, 0.0, 10.0);
        let o = p.apply_fill(-6.0, 12.0, 3.0, 12.0);
        // closes 2 at +2 each = 4, fee share 3 * 2/6 = 1
        assert!(close(o.realized, 4.0));
        assert!(close(o.closed_trade.unwrap(), 3.0));
        assert!(close(p.qty, -4.0));
        assert!(close(p.avg_cost, 12.0));
        // the new short trade carries the remaining fee of 2
        let o = p.apply_fill(4.0, 12.0, 0.0, 12.0);
        assert!(close(o.closed_trade.unwrap(), -2.0));
    }

    #[test]
    fn float_residue_is_flat() {
        let mut p = Position::new(0);
        p.apply_fill(0.1, 10.0, 0.0, 10.0);
        p.apply_fill(0.2, 10.0, 0.0, 10.0);
        let o = p.apply_fill(-0.3, 11.0, 0.0, 11.0);
        assert!(o.closed_trade.is_some());
        assert_eq!(p.qty, 0.0);
        assert!(close(o.realized, 0.3));
    }
}
