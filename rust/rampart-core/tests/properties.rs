//! Property tests of the pure core (no Python).

use proptest::prelude::*;
use rampart_core::{AlgoConfig, Engine, OrderEvent};

#[derive(Debug, Clone)]
enum Ev {
    Fill {
        sym: usize,
        qty: f64,
        price: f64,
        fee: f64,
    },
    Quote {
        sym: usize,
        price: f64,
    },
    Order(u8),
}

fn event() -> impl Strategy<Value = Ev> {
    prop_oneof![
        (0..3usize, -50i32..50, 50u32..150, 0u32..100).prop_filter_map(
            "non-zero qty",
            |(sym, q, p, f)| {
                (q != 0).then_some(Ev::Fill {
                    sym,
                    qty: q as f64 * 0.5,
                    price: p as f64 * 0.25,
                    fee: f as f64 * 0.01,
                })
            }
        ),
        (0..3usize, 40u32..160).prop_map(|(sym, p)| Ev::Quote {
            sym,
            price: p as f64 * 0.25
        }),
        (0..4u8).prop_map(Ev::Order),
    ]
}

const SYMS: [&str; 3] = ["ES", "NQ", "CL"];

proptest! {
    /// Average-cost accounting must agree with plain cash accounting:
    /// equity = capital - sum(q * p) - fees + sum(position x mark).
    #[test]
    fn average_cost_agrees_with_cash_accounting(events in prop::collection::vec(event(), 1..200)) {
        let mut e = Engine::default();
        let mut cfg = AlgoConfig::new("a", "v1", 1_000_000.0);
        cfg.return_interval_ns = 1_000;
        cfg.sharpe_window = 16;
        e.register(cfg).unwrap();
        let mut out = Vec::new();
        let mut cash = 0.0;
        let mut fees = 0.0;
        let mut qty = [0.0f64; 3];
        let mut mark = [None::<f64>; 3];
        let mut quoted = [false; 3];
        for (i, ev) in events.iter().enumerate() {
            let ts = 1_764_028_800_000_000_000 + 137 * i as i64;
            match *ev {
                Ev::Fill { sym, qty: q, price, fee } => {
                    e.fill("a", SYMS[sym], q, price, fee, ts, &mut out).unwrap();
                    cash -= q * price;
                    fees += fee;
                    qty[sym] += q;
                    if !quoted[sym] { mark[sym] = Some(price); }
                }
                Ev::Quote { sym, price } => {
                    e.quote(SYMS[sym], price, price, ts, &mut out).unwrap();
                    mark[sym] = Some(price);
                    quoted[sym] = true;
                }
                Ev::Order(k) => {
                    let ev = match k {
                        0 => OrderEvent::Submitted,
                        1 => OrderEvent::Rejected,
                        2 => OrderEvent::Acked { latency_ns: 1_000 + i as i64 },
                        _ => OrderEvent::Cancelled,
                    };
                    e.order("a", ev, ts, &mut out).unwrap();
                }
            }
            let s = e.snapshot("a").unwrap();
            let held: f64 = (0..3).map(|k| qty[k] * mark[k].unwrap_or(0.0)).sum();
            let expected = 1_000_000.0 + cash - fees + held;
            prop_assert!((s.equity - expected).abs() <= 1e-6, "equity {} vs cash accounting {}", s.equity, expected);
            prop_assert!(s.drawdown >= 0.0 && s.drawdown <= s.max_drawdown + 1e-15);
            prop_assert!(s.peak_equity >= s.equity - 1e-9);
            prop_assert!((0.0..=1.0).contains(&s.confidence));
            prop_assert!(s.wins <= s.trades);
            if let Some(r) = s.error_rate { prop_assert!((0.0..=1.0).contains(&r)); }
        }
    }
}
