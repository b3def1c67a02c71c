//! Engine-level behaviour: accounting, drawdown, sessions, returns, windows, limits, bad input.

use rampart_core::config::{DAY_NS, SECOND_NS};
use rampart_core::{AlgoConfig, Breach, BreachKind, CoreError, Engine, LimitSpec, OrderEvent};

const T0: i64 = 1_764_028_800_000_000_000; // 2025-11-25 00:00:00 UTC
const HOUR: i64 = 3_600 * SECOND_NS;

fn approx(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

macro_rules! assert_approx {
    ($a:expr, $b:expr) => {{
        let (a, b) = ($a, $b);
        assert!(approx(a, b), "{} = {a}, expected {b}", stringify!($a));
    }};
}

fn engine(cfg: AlgoConfig) -> Engine {
    let mut e = Engine::default();
    e.register(cfg).unwrap();
    e
}

fn fill(e: &mut Engine, qty: f64, price: f64, fee: f64, ts: i64) -> Vec<Breach> {
    let mut out = Vec::new();
    e.fill("a", "ES", qty, price, fee, ts, &mut out).unwrap();
    out
}

fn quote(e: &mut Engine, px: f64, ts: i64) -> Vec<Breach> {
    let mut out = Vec::new();
    e.quote("ES", px, px, ts, &mut out).unwrap();
    out
}

fn order(e: &mut Engine, ev: OrderEvent, ts: i64) -> Vec<Breach> {
    let mut out = Vec::new();
    e.order("a", ev, ts, &mut out).unwrap();
    out
}

#[test]
fn long_round_trip_accounting() {
    let mut e = engine(AlgoConfig::new("a", "v1", 100_000.0));
    fill(&mut e, 10.0, 100.0, 1.0, T0);
    fill(&mut e, 10.0, 102.0, 1.0, T0 + 1);
    quote(&mut e, 105.0, T0 + 2);
    let s = e.snapshot("a").unwrap();
    assert_approx!(s.positions[0].avg_cost, 101.0);
    assert_approx!(s.unrealized_pnl, 20.0 * 4.0);
    assert_approx!(s.fees, 2.0);
    assert_approx!(s.equity, 100_000.0 + 80.0 - 2.0);
    fill(&mut e, -20.0, 104.0, 1.0, T0 + 3);
    let s = e.snapshot("a").unwrap();
    assert_approx!(s.realized_pnl, 60.0);
    assert_approx!(s.unrealized_pnl, 0.0);
    assert_approx!(s.equity, 100_000.0 + 60.0 - 3.0);
    assert_eq!((s.trades, s.wins), (1, 1));
    assert_eq!(s.win_rate, Some(1.0));
}

#[test]
fn short_partial_close_then_flip() {
    let mut e = engine(AlgoConfig::new("a", "v1", 100_000.0));
    fill(&mut e, -10.0, 50.0, 0.0, T0);
    fill(&mut e, 4.0, 45.0, 0.0, T0 + 1); // closes 4 at +5
    let s = e.snapshot("a").unwrap();
    assert_approx!(s.realized_pnl, 20.0);
    assert_approx!(s.positions[0].qty, -6.0);
    assert_eq!(s.trades, 0, "a partial close does not end the trade");
    fill(&mut e, 10.0, 55.0, 2.0, T0 + 2); // closes 6 at -5, opens +4 at 55
    let s = e.snapshot("a").unwrap();
    assert_approx!(s.realized_pnl, 20.0 - 30.0);
    assert_approx!(s.positions[0].qty, 4.0);
    assert_approx!(s.positions[0].avg_cost, 55.0);
    assert_eq!((s.trades, s.wins), (1, 0), "the short lost 10 + fee share");
    fill(&mut e, -4.0, 60.0, 0.0, T0 + 3);
    let s = e.snapshot("a").unwrap();
    // new long: +20 realized, carries 2 * 4/10 = 0.8 of the flipping fee
    assert_eq!((s.trades, s.wins), (2, 1));
    assert_approx!(s.realized_pnl, 10.0);
    assert_approx!(s.fees, 2.0);
}

#[test]
fn unquoted_symbol_is_marked_at_the_fill_price_then_at_quotes() {
    let mut e = engine(AlgoConfig::new("a", "v1", 1_000.0));
    fill(&mut e, 1.0, 10.0, 0.0, T0);
    let s = e.snapshot("a").unwrap();
    assert_eq!(s.positions[0].mark, Some(10.0));
    let mut out = Vec::new();
    e.quote("ES", 11.0, 11.5, T0 + 1, &mut out).unwrap();
    let s = e.snapshot("a").unwrap();
    assert_approx!(s.unrealized_pnl, 1.25);
    fill(&mut e, 1.0, 12.0, 0.0, T0 + 2);
    let s = e.snapshot("a").unwrap();
    assert_eq!(
        s.positions[0].mark,
        Some(11.25),
        "a fill does not move a quoted mark"
    );
    assert_approx!(s.unrealized_pnl, 2.0 * (11.25 - 11.0));
}

#[test]
fn drawdown_tracks_the_peak_including_starting_capital() {
    let mut e = engine(AlgoConfig::new("a", "v1", 1_000.0));
    fill(&mut e, 10.0, 10.0, 0.0, T0);
    quote(&mut e, 9.0, T0 + 1); // equity 990
    let s = e.snapshot("a").unwrap();
    assert_approx!(s.peak_equity, 1_000.0);
    assert_approx!(s.drawdown, 0.01);
    quote(&mut e, 30.0, T0 + 2); // equity 1200, new peak
    quote(&mut e, 18.0, T0 + 3); // equity 1080
    let s = e.snapshot("a").unwrap();
    assert_approx!(s.peak_equity, 1_200.0);
    assert_approx!(s.drawdown, 0.1);
    assert_approx!(s.max_drawdown, 0.1);
    quote(&mut e, 25.0, T0 + 4);
    let s = e.snapshot("a").unwrap();
    assert_approx!(s.drawdown, (1_200.0 - 1_150.0) / 1_200.0);
    assert_approx!(s.max_drawdown, 0.1);
}

#[test]
fn daily_pnl_rolls_at_the_session_boundary() {
    let mut cfg = AlgoConfig::new("a", "v1", 1_000.0);
    cfg.session_offset_ns = 13 * HOUR; // sessions start at 13:00 UTC
    let mut e = engine(cfg);
    fill(&mut e, 10.0, 10.0, 0.0, T0 + 12 * HOUR);
    quote(&mut e, 11.0, T0 + 12 * HOUR + 1);
    assert_approx!(e.snapshot("a").unwrap().daily_pnl, 10.0);
    quote(&mut e, 12.0, T0 + 13 * HOUR); // first event of the new session
    let s = e.snapshot("a").unwrap();
    assert_approx!(s.session_start_equity, 1_010.0);
    assert_approx!(s.daily_pnl, 10.0);
    // advance() rolls without an event for the algorithm
    e.advance(T0 + 13 * HOUR + DAY_NS).unwrap();
    let s = e.snapshot("a").unwrap();
    assert_approx!(s.session_start_equity, 1_020.0);
    assert_approx!(s.daily_pnl, 0.0);
}

#[test]
fn returns_close_per_interval_with_zero_returns_for_empty_periods() {
    let mut cfg = AlgoConfig::new("a", "v1", 1_000.0);
    cfg.return_interval_ns = HOUR;
    cfg.sharpe_window = 4;
    let mut e = engine(cfg);
    fill(&mut e, 10.0, 10.0, 0.0, T0);
    quote(&mut e, 11.0, T0 + HOUR / 2); // equity 1010 in period 0
    quote(&mut e, 12.0, T0 + HOUR + 1); // closes period 0: 1010/1000 - 1
    quote(&mut e, 12.0, T0 + 4 * HOUR); // closes 1 (1020/1010-1), 2 and 3 empty
    let r = e.returns("a").unwrap();
    assert_eq!(r.len(), 4);
    assert_approx!(r[0], 0.01);
    assert_approx!(r[1], 1_020.0 / 1_010.0 - 1.0);
    assert_eq!(&r[2..], &[0.0, 0.0]);
    e.advance(T0 + 100 * HOUR).unwrap();
    let r = e.returns("a").unwrap();
    assert_eq!(r, vec![0.0; 4], "a long gap fills the window with zeros");
    assert_eq!(
        e.snapshot("a").unwrap().sharpe,
        None,
        "zero deviation has no Sharpe"
    );
}

#[test]
fn sharpe_matches_the_textbook_formula() {
    let mut cfg = AlgoConfig::new("a", "v1", 1_000.0);
    cfg.return_interval_ns = HOUR;
    cfg.sharpe_window = 3;
    cfg.periods_per_year = 252.0;
    cfg.risk_free_rate = 0.0252;
    let mut e = engine(cfg);
    fill(&mut e, 100.0, 10.0, 0.0, T0);
    let prices = [10.0, 10.5, 10.2, 10.4, 10.9];
    for (i, p) in prices.iter().enumerate() {
        quote(&mut e, *p, T0 + i as i64 * HOUR + 1);
    }
    e.advance(T0 + 5 * HOUR).unwrap();
    let eq: Vec<f64> = prices
        .iter()
        .map(|p| 1_000.0 + 100.0 * (p - 10.0))
        .collect();
    let r: Vec<f64> = eq.windows(2).map(|w| w[1] / w[0] - 1.0).collect();
    let w = &r[r.len() - 3..];
    let mean = w.iter().sum::<f64>() / 3.0;
    let sd = (w.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 2.0).sqrt();
    let expected = (mean - 0.0252 / 252.0) / sd * 252f64.sqrt();
    assert_approx!(e.snapshot("a").unwrap().sharpe.unwrap(), expected);
}

#[test]
fn stage_pnl_and_capital_changes_are_cash_flows() {
    let mut e = engine(AlgoConfig::new("a", "v1", 1_000.0));
    fill(&mut e, 10.0, 10.0, 0.0, T0);
    quote(&mut e, 9.0, T0 + 1); // equity 990, drawdown 1%
    e.mark_stage("a").unwrap();
    quote(&mut e, 9.5, T0 + 2);
    assert_approx!(e.snapshot("a").unwrap().stage_pnl, 5.0);
    let mut out = Vec::new();
    e.set_capital("a", 5_000.0, T0 + 3, &mut out).unwrap();
    let s = e.snapshot("a").unwrap();
    assert_approx!(s.equity, 4_995.0);
    assert_approx!(s.peak_equity, 5_000.0);
    assert_approx!(s.daily_pnl, -5.0);
    assert_approx!(s.stage_pnl, 5.0);
    assert_approx!(s.drawdown, 5.0 / 5_000.0);
}

#[test]
fn a_new_measurement_restarts_pnl_at_the_capital_and_holds_positions_at_their_marks() {
    // paper trading on 1,000,000 with a 0.5% drawdown at promotion, then 1% of it for real
    let mut cfg = AlgoConfig::new("a", "v1", 1_000_000.0);
    cfg.limits.drawdown = Some(LimitSpec::new(0.05));
    cfg.error_min_orders = 1;
    let mut e = engine(cfg);
    fill(&mut e, 1_000.0, 100.0, 10.0, T0);
    quote(&mut e, 110.0, T0 + HOUR); // +10,000
    quote(&mut e, 105.0, T0 + 2 * HOUR); // peak 1,009,990, equity 1,004,990
    order(&mut e, OrderEvent::Submitted, T0 + 3 * HOUR - 10);
    order(&mut e, OrderEvent::Rejected, T0 + 3 * HOUR - 10);
    let before = e.snapshot("a").unwrap();
    assert!(before.drawdown > 0.004 && before.returns_count > 0 && before.error_rate.is_some());
    let mut out = Vec::new();
    e.set_capital("a", 10_000.0, T0 + 3 * HOUR, &mut out)
        .unwrap();
    assert!(
        e.snapshot("a").unwrap().drawdown > 0.2,
        "as a cash flow, the paper drawdown in money is a 20%+ drawdown of the canary"
    );
    e.new_measurement("a", T0 + 3 * HOUR).unwrap();
    let s = e.snapshot("a").unwrap();
    assert_approx!(s.equity, 10_000.0);
    assert_approx!(s.peak_equity, 10_000.0);
    assert_eq!((s.drawdown, s.max_drawdown), (0.0, 0.0));
    assert_eq!((s.realized_pnl, s.fees, s.unrealized_pnl), (0.0, 0.0, 0.0));
    assert_eq!((s.daily_pnl, s.stage_pnl), (0.0, 0.0));
    assert_eq!((s.trades, s.wins, s.returns_count), (0, 0, 0));
    assert_eq!(s.sharpe, None);
    assert_approx!(s.positions[0].qty, 1_000.0);
    assert_approx!(s.positions[0].avg_cost, 105.0);
    assert_eq!(s.positions[0].realized_pnl, 0.0);
    // the orders' health is kept
    assert_eq!(s.orders_rejected_total, before.orders_rejected_total);
    assert_eq!(s.error_rate, before.error_rate);
    // PnL from here is the canary's: selling at 106 realizes 1,000 on 10,000
    fill(&mut e, -1_000.0, 106.0, 1.0, T0 + 3 * HOUR + 1);
    let s = e.snapshot("a").unwrap();
    assert_approx!(s.realized_pnl, 1_000.0);
    assert_approx!(s.equity, 10_999.0);
    assert_eq!(
        (s.trades, s.wins),
        (1, 1),
        "the trade counts from the new basis"
    );
    // and a checkpoint carries the new basis
    let ck = e.checkpoint("a").unwrap();
    let mut e2 = Engine::default();
    e2.restore(&ck, None).unwrap();
    assert_approx!(e2.snapshot("a").unwrap().equity, 10_999.0);
    assert!(e.new_measurement("nobody", T0 + 4 * HOUR).is_err());
}

#[test]
fn stale_holdings_are_open_positions_without_a_recent_quote_or_fill() {
    let mut e = Engine::default();
    for a in ["a", "b"] {
        e.register(AlgoConfig::new(a, "v1", 100_000.0)).unwrap();
    }
    let mut out = Vec::new();
    e.quote("ES", 100.0, 100.0, T0, &mut out).unwrap();
    e.fill("a", "ES", 2.0, 100.0, 0.0, T0, &mut out).unwrap();
    e.fill("b", "NQ", -1.0, 50.0, 0.0, T0 + 5 * SECOND_NS, &mut out)
        .unwrap(); // never quoted
    e.fill("b", "ES", 1.0, 100.0, 0.0, T0, &mut out).unwrap();
    e.fill("b", "ES", -1.0, 100.0, 0.0, T0, &mut out).unwrap(); // flat: never stale
    let limit = 3 * SECOND_NS;
    assert!(e.stale_holdings(T0 + 3 * SECOND_NS, limit).is_empty());
    let stale = e.stale_holdings(T0 + 4 * SECOND_NS, limit);
    assert_eq!(stale, vec![("a".into(), "ES".into(), 2.0, T0)]);
    // b's NQ counts from b's last fill; a fresh quote clears a's ES
    e.quote("ES", 101.0, 101.0, T0 + 9 * SECOND_NS, &mut out)
        .unwrap();
    let stale = e.stale_holdings(T0 + 9 * SECOND_NS, limit);
    assert_eq!(
        stale,
        vec![("b".into(), "NQ".into(), -1.0, T0 + 5 * SECOND_NS)]
    );
}

#[test]
fn reject_rate_slides_and_trips_after_min_orders() {
    let mut cfg = AlgoConfig::new("a", "v1", 1_000.0);
    cfg.error_window_ns = 10 * SECOND_NS;
    cfg.error_min_orders = 4;
    cfg.limits.error_rate = Some(LimitSpec::new(0.25));
    let mut e = engine(cfg);
    for i in 0..3 {
        assert!(order(&mut e, OrderEvent::Submitted, T0 + i).is_empty());
    }
    assert!(
        order(&mut e, OrderEvent::Rejected, T0 + 3).is_empty(),
        "1/3 > 0.25 but only 3 orders: below the minimum"
    );
    assert!(
        order(&mut e, OrderEvent::Submitted, T0 + 4).is_empty(),
        "1/4 = 0.25 is not above 0.25"
    );
    let b = order(&mut e, OrderEvent::Rejected, T0 + 5);
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].kind, BreachKind::ErrorRate);
    assert_approx!(b[0].value, 0.5);
    assert_eq!(b[0].ts, T0 + 5);
    assert!(
        order(&mut e, OrderEvent::Rejected, T0 + 6).is_empty(),
        "latched: reported once"
    );
    assert_eq!(
        e.snapshot("a").unwrap().breached,
        vec![BreachKind::ErrorRate]
    );
    // the window slides: at T0 + 10 s + 4 everything up to T0 + 4 has left it
    e.advance(T0 + 10 * SECOND_NS + 4).unwrap();
    let s = e.snapshot("a").unwrap();
    assert_eq!((s.orders_in_window, s.rejects_in_window), (0, 2));
    assert_eq!(s.error_rate, None);
    assert_eq!(s.orders_submitted_total, 4);
    e.reset_breaches("a").unwrap();
    assert!(e.snapshot("a").unwrap().breached.is_empty());
}

#[test]
fn latency_quantiles_slide_and_the_p99_limit_is_exact() {
    let mut cfg = AlgoConfig::new("a", "v1", 1_000.0);
    cfg.latency_window_ns = 10 * SECOND_NS;
    cfg.latency_min_samples = 100;
    cfg.limits.latency_ns = Some(LimitSpec::new(1_000_000.0));
    let mut e = engine(cfg);
    for i in 0..99 {
        let b = order(
            &mut e,
            OrderEvent::Acked {
                latency_ns: 500_000,
            },
            T0 + i,
        );
        assert!(b.is_empty());
    }
    // 100 samples, one slow: p99 = rank 99 = 500 us, no breach
    let b = order(
        &mut e,
        OrderEvent::Acked {
            latency_ns: 5_000_000,
        },
        T0 + 99,
    );
    assert!(b.is_empty());
    let s = e.snapshot("a").unwrap();
    let p50 = s.latency_p50_ns.unwrap();
    assert!((500_000..=500_000 + 500_000 / 64).contains(&p50), "{p50}");
    // a second slow one: 101 samples, rank ceil(99.99) = 100 -> a slow sample
    let b = order(
        &mut e,
        OrderEvent::Acked {
            latency_ns: 5_000_000,
        },
        T0 + 100,
    );
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].kind, BreachKind::Latency);
    assert!(b[0].value >= 5_000_000.0 && b[0].value <= 5_000_000.0 * (1.0 + 1.0 / 64.0));
    e.advance(T0 + 20 * SECOND_NS).unwrap();
    let s = e.snapshot("a").unwrap();
    assert_eq!((s.acks_in_window, s.latency_p99_ns), (0, None));
}

#[test]
fn equity_limits_trip_once_with_debounce() {
    let mut cfg = AlgoConfig::new("a", "v1", 1_000.0);
    cfg.limits.daily_loss = Some(LimitSpec::new(0.02));
    cfg.limits.drawdown = Some(LimitSpec {
        threshold: 0.03,
        consecutive: 2,
    });
    let mut e = engine(cfg);
    fill(&mut e, 10.0, 10.0, 0.0, T0);
    assert!(quote(&mut e, 9.0, T0 + 1).is_empty(), "loss 10 = 1%: fine");
    let b = quote(&mut e, 7.9, T0 + 2); // loss 21 = 2.1%: daily loss trips; drawdown 1st of 2
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].kind, BreachKind::DailyLoss);
    assert_approx!(b[0].value, -21.0);
    assert_approx!(b[0].threshold, -20.0);
    assert!(
        quote(&mut e, 9.5, T0 + 3).is_empty(),
        "recovered: debounce resets"
    );
    assert!(
        quote(&mut e, 6.0, T0 + 4).is_empty(),
        "drawdown 4%: 1st breaching evaluation"
    );
    let b = quote(&mut e, 6.0, T0 + 5);
    assert_eq!(b.len(), 1, "2nd consecutive evaluation trips: {b:?}");
    assert_eq!(b[0].kind, BreachKind::Drawdown);
    assert!(quote(&mut e, 5.0, T0 + 6).is_empty(), "both latched");
    let s = e.snapshot("a").unwrap();
    assert_eq!(
        s.breached,
        vec![BreachKind::DailyLoss, BreachKind::Drawdown]
    );
}

#[test]
fn a_quote_marks_every_holder_and_reports_each_breach() {
    let mut e = Engine::default();
    for id in ["x", "y", "z"] {
        let mut c = AlgoConfig::new(id, "v1", 1_000.0);
        c.limits.drawdown = Some(LimitSpec::new(0.05));
        e.register(c).unwrap();
    }
    let mut out = Vec::new();
    e.fill("x", "ES", 10.0, 10.0, 0.0, T0, &mut out).unwrap();
    e.fill("y", "ES", -10.0, 10.0, 0.0, T0, &mut out).unwrap();
    e.fill("z", "NQ", 10.0, 10.0, 0.0, T0, &mut out).unwrap();
    e.quote("ES", 3.0, 3.0, T0 + 1, &mut out).unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].algo_id, "x");
    assert_approx!(e.snapshot("y").unwrap().unrealized_pnl, 70.0);
    assert_approx!(e.snapshot("z").unwrap().unrealized_pnl, 0.0);
}

#[test]
fn bad_input_is_refused_without_changing_state() {
    let mut e = engine(AlgoConfig::new("a", "v1", 1_000.0));
    fill(&mut e, 1.0, 10.0, 0.0, T0 + 10 * SECOND_NS);
    let before = e.snapshot("a").unwrap();
    let mut out = Vec::new();
    let nan = f64::NAN;
    let t = T0 + 10 * SECOND_NS + 1;
    let cases: Vec<(CoreError, &str)> = vec![
        (
            e.fill("a", "ES", 1.0, nan, 0.0, t, &mut out).unwrap_err(),
            "bad_price",
        ),
        (
            e.fill("a", "ES", 1.0, -1.0, 0.0, t, &mut out).unwrap_err(),
            "bad_price",
        ),
        (
            e.fill("a", "ES", 0.0, 10.0, 0.0, t, &mut out).unwrap_err(),
            "bad_quantity",
        ),
        (
            e.fill("a", "ES", f64::INFINITY, 10.0, 0.0, t, &mut out)
                .unwrap_err(),
            "bad_quantity",
        ),
        (
            e.fill("a", "ES", 1.0, 10.0, -0.1, t, &mut out).unwrap_err(),
            "bad_fee",
        ),
        (
            e.fill("b", "ES", 1.0, 10.0, 0.0, t, &mut out).unwrap_err(),
            "unknown_algorithm",
        ),
        (
            e.fill("a", "ES", 1.0, 10.0, 0.0, T0, &mut out).unwrap_err(),
            "out_of_order",
        ),
        (
            e.quote("ES", 11.0, 10.0, t, &mut out).unwrap_err(),
            "bad_price",
        ),
        (
            e.quote("ES", f64::NAN, 10.0, t, &mut out).unwrap_err(),
            "bad_price",
        ),
        (
            e.mark("ES", f64::NEG_INFINITY, t, &mut out).unwrap_err(),
            "bad_price",
        ),
        (
            e.order("a", OrderEvent::Acked { latency_ns: -1 }, t, &mut out)
                .unwrap_err(),
            "bad_latency",
        ),
        (e.set_capital("a", 0.0, t, &mut out).unwrap_err(), "config"),
        (e.ingest_json(b"[1,2]", &mut out).unwrap_err(), "decode"),
        (e.advance(T0).unwrap_err(), "out_of_order"),
    ];
    for (err, reason) in cases {
        assert_eq!(err.reason(), reason, "{err}");
    }
    assert!(out.is_empty());
    assert_eq!(e.snapshot("a").unwrap(), before);
    assert_eq!(e.now(), Some(T0 + 10 * SECOND_NS));
    // within the tolerance: applied at the engine clock
    fill(&mut e, 1.0, 10.0, 0.0, T0 + 6 * SECOND_NS);
    assert_eq!(e.snapshot("a").unwrap().fills, 2);
}

#[test]
fn configuration_errors_name_the_field() {
    let mut c = AlgoConfig::new("a", "v1", -5.0);
    assert!(c.validate().unwrap_err().to_string().contains("capital"));
    c.capital = 1.0;
    c.return_interval_ns = 0;
    assert!(c
        .validate()
        .unwrap_err()
        .to_string()
        .contains("return_interval_ns"));
    c.return_interval_ns = 1;
    c.limits.drawdown = Some(LimitSpec::new(1.5));
    assert!(c
        .validate()
        .unwrap_err()
        .to_string()
        .contains("max_drawdown"));
    let mut e = Engine::default();
    e.register(AlgoConfig::new("a", "v1", 1.0)).unwrap();
    let err = e.register(AlgoConfig::new("a", "v2", 1.0)).unwrap_err();
    assert_eq!(err.reason(), "duplicate_algorithm");
}

#[test]
fn unregister_frees_the_slot_and_stops_marking() {
    let mut e = engine(AlgoConfig::new("a", "v1", 1_000.0));
    fill(&mut e, 1.0, 10.0, 0.0, T0);
    e.unregister("a").unwrap();
    assert!(!e.contains("a"));
    let mut out = Vec::new();
    e.quote("ES", 1.0, 1.0, T0 + 1, &mut out).unwrap();
    e.register(AlgoConfig::new("b", "v1", 1_000.0)).unwrap();
    e.quote("ES", 2.0, 2.0, T0 + 2, &mut out).unwrap();
    assert_eq!(e.snapshot("b").unwrap().equity, 1_000.0);
    assert_eq!(e.algorithms(), vec!["b".to_string()]);
}

#[test]
fn json_events_drive_the_same_state_as_calls() {
    let mut a = engine(AlgoConfig::new("a", "v1", 1_000.0));
    let mut b = engine(AlgoConfig::new("a", "v1", 1_000.0));
    let mut out = Vec::new();
    let msgs = [
        format!(
            r#"{{"type":"fill","algo":"a","symbol":"ES","side":"buy","qty":3,"price":10,"fee":0.5,"ts":{}}}"#,
            T0 + 1
        ),
        format!(
            r#"{{"type":"quote","symbol":"ES","bid":11,"ask":11.5,"ts":{}}}"#,
            T0 + 2
        ),
        format!(
            r#"{{"type":"order","algo":"a","event":"submitted","ts":{}}}"#,
            T0 + 3
        ),
        format!(
            r#"{{"type":"order","algo":"a","event":"acked","latency_ns":700,"ts":{}}}"#,
            T0 + 4
        ),
        format!(
            r#"{{"type":"mark","symbol":"ES","price":12,"ts":{}}}"#,
            T0 + 5
        ),
        format!(
            r#"{{"type":"fill","algo":"a","symbol":"ES","side":"sell","qty":3,"price":12,"ts":{}}}"#,
            T0 + 6
        ),
    ];
    for m in msgs {
        a.ingest_json(m.as_bytes(), &mut out).unwrap();
    }
    b.fill("a", "ES", 3.0, 10.0, 0.5, T0 + 1, &mut out).unwrap();
    b.quote("ES", 11.0, 11.5, T0 + 2, &mut out).unwrap();
    b.order("a", OrderEvent::Submitted, T0 + 3, &mut out)
        .unwrap();
    b.order("a", OrderEvent::Acked { latency_ns: 700 }, T0 + 4, &mut out)
        .unwrap();
    b.mark("ES", 12.0, T0 + 5, &mut out).unwrap();
    b.fill("a", "ES", -3.0, 12.0, 0.0, T0 + 6, &mut out)
        .unwrap();
    let (sa, sb) = (a.snapshot("a").unwrap(), b.snapshot("a").unwrap());
    assert_eq!(sa, sb);
    assert_approx!(sa.realized_pnl, 6.0);
    assert_eq!(
        (sa.trades, sa.wins, sa.latency_p50_ns),
        (1, 1, Some(703)),
        "700 ns falls in the bucket [692, 703]"
    );
}
