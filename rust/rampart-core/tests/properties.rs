//! Property tests of the pure core (no Python).

use proptest::prelude::*;
use rampart_core::{AlgoConfig, Engine, LimitSpec, OrderEvent};

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

proptest! {
    /// A quote by interned id (`quote_id`, the columnar path) is the same as by name, refusals
    /// included, whatever the events before it.
    #[test]
    fn quote_by_id_is_quote_by_name(events in prop::collection::vec(event(), 1..120)) {
        let mut by_name = Engine::default();
        let mut by_id = Engine::default();
        for e in [&mut by_name, &mut by_id] {
            let mut cfg = AlgoConfig::new("a", "v1", 1_000_000.0);
            cfg.limits.drawdown = Some(LimitSpec::new(0.0002));
            e.register(cfg).unwrap();
        }
        let ids: Vec<u32> = SYMS.iter().map(|s| by_id.intern(s)).collect();
        let (mut out_name, mut out_id) = (Vec::new(), Vec::new());
        for (i, ev) in events.iter().enumerate() {
            let ts = 1_000 + i as i64;
            let (a, b) = match ev {
                Ev::Fill { sym, qty, price, fee } => (
                    by_name.fill("a", SYMS[*sym], *qty, *price, *fee, ts, &mut out_name),
                    by_id.fill("a", SYMS[*sym], *qty, *price, *fee, ts, &mut out_id),
                ),
                Ev::Quote { sym, price } => {
                    // a crossed quote now and then: refused the same way
                    let (bid, ask) = if i % 7 == 3 { (price + 1.0, *price) } else { (price - 0.25, *price) };
                    (
                        by_name.quote(SYMS[*sym], bid, ask, ts, &mut out_name),
                        by_id.quote_id(ids[*sym], bid, ask, ts, &mut out_id),
                    )
                }
                Ev::Order(_) => continue,
            };
            prop_assert_eq!(a.is_ok(), b.is_ok());
            if let (Err(x), Err(y)) = (&a, &b) {
                prop_assert_eq!(x.reason(), y.reason());
            }
        }
        prop_assert_eq!(&out_name, &out_id);
        prop_assert_eq!(
            format!("{:?}", by_name.snapshot("a").unwrap()),
            format!("{:?}", by_id.snapshot("a").unwrap())
        );
        prop_assert!(by_id.quote_id(99, 1.0, 2.0, 10_000, &mut out_id).is_err());
    }
}
