//! Position reconciliation: a gateway's reported positions against the core's.
//!
//! A gateway reports, per algorithm it runs, its position in each symbol (docs/protocol.md,
//! "Positions"). Compared with the core's positions of the algorithms that gateway runs, a
//! symbol whose quantities differ by more than the tolerance is drift. The comparison is one
//! call per report, with no Python object per algorithm (1,000 algorithms: one JSON parse).

use rustc_hash::FxHashMap;

use crate::engine::Engine;
use crate::error::{CoreError, Result};

/// One symbol of one algorithm whose quantity at the gateway differs from the core's.
#[derive(Debug, Clone, PartialEq)]
pub struct PositionDrift {
    pub algo: String,
    pub symbol: String,
    /// The core's quantity (0 when it holds none).
    pub ours: f64,
    /// The gateway's quantity (0 when it reports none).
    pub theirs: f64,
}

/// A report: algorithm -> symbol -> signed quantity.
type Report = FxHashMap<String, FxHashMap<String, f64>>;

impl Engine {
    /// Compare `gateway`'s position report (JSON object: algorithm -> symbol -> quantity) with
    /// the core's positions of every registered algorithm that gateway runs. An algorithm the
    /// report leaves out holds nothing at the gateway; one the core does not know is skipped (a
    /// gateway may host algorithms Rampart does not govern). Sorted by algorithm, then symbol.
    ///
    /// Refused: `decode` (not such an object, or a quantity not a finite number) and
    /// `wrong_gateway` (the report names an algorithm another gateway runs).
    pub fn position_drift(
        &self,
        gateway: &str,
        report: &[u8],
        tolerance: f64,
    ) -> Result<Vec<PositionDrift>> {
        let reported: Report = serde_json::from_slice(report)
            .map_err(|e| CoreError::Decode(format!("position report: {e}")))?;
        for (algo, symbols) in &reported {
            if let Some(runs) = self.gateway_of(algo) {
                if runs != gateway && self.contains(algo) {
                    return Err(CoreError::WrongGateway(format!(
                        "gateway {gateway} reports positions of {algo:?}, which {runs} runs"
                    )));
                }
            }
            if let Some((symbol, qty)) = symbols.iter().find(|(_, q)| !q.is_finite()) {
                return Err(CoreError::Decode(format!(
                    "position report: {algo:?} {symbol:?} quantity {qty} is not finite"
                )));
            }
        }
        let empty = FxHashMap::default();
        let mut out = Vec::new();
        for algo in self.algorithms_of(gateway) {
            let theirs = reported.get(algo).unwrap_or(&empty);
            let ours: FxHashMap<&str, f64> = self.open_positions(algo)?.collect();
            for (&symbol, &q) in &ours {
                let t = theirs.get(symbol).copied().unwrap_or(0.0);
                if (q - t).abs() > tolerance {
                    out.push(drift(algo, symbol, q, t));
                }
            }
            for (symbol, &t) in theirs {
                if !ours.contains_key(symbol.as_str()) && t.abs() > tolerance {
                    out.push(drift(algo, symbol, 0.0, t));
                }
            }
        }
        out.sort_by(|a, b| (&a.algo, &a.symbol).cmp(&(&b.algo, &b.symbol)));
        Ok(out)
    }
}

fn drift(algo: &str, symbol: &str, ours: f64, theirs: f64) -> PositionDrift {
    PositionDrift {
        algo: algo.to_owned(),
        symbol: symbol.to_owned(),
        ours,
        theirs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algo::Breach;
    use crate::config::AlgoConfig;
    use crate::event::Side;

    const T: i64 = 1_700_000_000_000_000_000;

    fn engine() -> Engine {
        let mut e = Engine::default();
        for (algo, gw) in [("a", "g1"), ("b", "g1"), ("c", "g2")] {
            e.register(AlgoConfig::new(algo, "v1", 1_000_000.0))
                .unwrap();
            e.set_gateway(algo, gw).unwrap();
        }
        let mut out: Vec<Breach> = Vec::new();
        e.fill_sided("a", "ES", Side::Buy, 2.0, 100.0, 0.0, T, &mut out)
            .unwrap();
        e.fill_sided("c", "NQ", Side::Sell, 1.0, 100.0, 0.0, T + 1, &mut out)
            .unwrap();
        e
    }

    #[test]
    fn equal_positions_are_in_sync() {
        let e = engine();
        let d = e
            .position_drift("g1", br#"{"a": {"ES": 2.0}, "b": {}}"#, 1e-9)
            .unwrap();
        assert!(d.is_empty(), "{d:?}");
        // an algorithm left out holds nothing; zero quantities are no positions
        let d = e
            .position_drift("g1", br#"{"a": {"ES": 2.0, "NQ": 0}}"#, 1e-9)
            .unwrap();
        assert!(d.is_empty(), "{d:?}");
        let d = e
            .position_drift("g2", br#"{"c": {"NQ": -1.0}}"#, 1e-9)
            .unwrap();
        assert!(d.is_empty(), "{d:?}");
    }

    #[test]
    fn differences_both_ways_are_drift() {
        let e = engine();
        let d = e
            .position_drift("g1", br#"{"a": {"ES": 1.5}, "b": {"CL": 3}}"#, 1e-9)
            .unwrap();
        assert_eq!(
            d,
            vec![drift("a", "ES", 2.0, 1.5), drift("b", "CL", 0.0, 3.0)]
        );
        // nothing reported at all: every open position of the gateway's algorithms is drift
        let d = e.position_drift("g1", b"{}", 1e-9).unwrap();
        assert_eq!(d, vec![drift("a", "ES", 2.0, 0.0)]);
        // within the tolerance: in sync
        let d = e
            .position_drift("g1", br#"{"a": {"ES": 2.004}}"#, 0.01)
            .unwrap();
        assert!(d.is_empty());
    }

    #[test]
    fn hostile_reports_are_refused() {
        let e = engine();
        let err = e
            .position_drift("g1", br#"{"c": {"NQ": -1}}"#, 1e-9)
            .unwrap_err();
        assert_eq!(err.reason(), "wrong_gateway");
        for bad in [
            &b"[]"[..],
            b"{\"a\": {\"ES\": \"x\"}}",
            b"{\"a\": {\"ES\": 1e999}}",
            b"not",
        ] {
            let err = e.position_drift("g1", bad, 1e-9).unwrap_err();
            assert_eq!(err.reason(), "decode", "{}", String::from_utf8_lossy(bad));
        }
        // algorithms Rampart does not govern are the gateway's business
        let d = e
            .position_drift("g1", br#"{"a": {"ES": 2}, "other": {"X": 5}}"#, 1e-9)
            .unwrap();
        assert!(d.is_empty());
    }
}
