//! Hostile and absurd input (docs/events.md, "Refusals"): one message must never drag the clock,
//! overflow a metric, switch a limit off, or pass for another gateway's algorithm. Every refusal
//! leaves every algorithm's state byte-identical.

use rampart_core::config::{DAY_NS, SECOND_NS};
use rampart_core::{
    AlgoConfig, Breach, BreachKind, CoreError, Engine, Guards, LimitSpec, ReturnSampling,
};

const T0: i64 = 1_764_028_800_000_000_000; // 2025-11-25 00:00:00 UTC
const YEAR: i64 = 365 * DAY_NS;

fn config(id: &str) -> AlgoConfig {
    let mut c = AlgoConfig::new(id, "v1", 100_000.0);
    c.limits.drawdown = Some(LimitSpec::new(0.10));
    c
}

fn engine_with(guards: Guards) -> Engine {
    let mut e = Engine::with_guards(guards).unwrap();
    e.register(config("a")).unwrap();
    e.register(config("b")).unwrap();
    e.set_gateway("a", "gw1").unwrap();
    e.set_gateway("b", "gw2").unwrap();
    e
}

fn live() -> Engine {
    engine_with(Guards {
        max_future_ns: Some(5 * SECOND_NS),
        ..Guards::default()
    })
}

/// Every algorithm's complete state, as bytes.
fn state(e: &Engine) -> Vec<Vec<u8>> {
    e.algorithms()
        .iter()
        .map(|a| e.checkpoint(a).unwrap())
        .collect()
}

/// Apply `f`, expect the refusal `reason`, and that nothing changed.
fn refused(e: &mut Engine, reason: &str, f: impl FnOnce(&mut Engine) -> Result<(), CoreError>) {
    let (before, now) = (state(e), e.now());
    let err = f(e).expect_err(reason);
    assert_eq!(err.reason(), reason, "{err}");
    assert_eq!(
        state(e),
        before,
        "state changed by a refused {reason} event"
    );
    assert_eq!(e.now(), now, "the clock moved on a refused {reason} event");
}

fn msg(json: String) -> Vec<u8> {
    json.into_bytes()
}

#[test]
fn a_future_timestamp_is_refused_and_the_clock_stays_usable() {
    let mut e = live();
    let mut out = Vec::new();
    e.set_wall_clock(T0);
    e.fill("a", "ES", 1_000.0, 100.0, 0.0, T0, &mut out)
        .unwrap();
    for ahead in [5 * SECOND_NS + 1, 3_600 * SECOND_NS, YEAR, 75 * YEAR] {
        refused(&mut e, "future", |e| {
            e.quote("NQ", 1.0, 1.0, T0 + ahead, &mut Vec::new())
        });
    }
    assert_eq!(e.horizon(), Some(T0 + 5 * SECOND_NS));
    // Correct events keep flowing, and the drawdown limit still trips.
    e.quote("ES", 95.0, 95.0, T0 + SECOND_NS, &mut out).unwrap();
    e.quote("ES", 80.0, 80.0, T0 + 2 * SECOND_NS, &mut out)
        .unwrap();
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].kind, BreachKind::Drawdown);
    // Exactly at the bound is accepted; the wall clock only moves forward.
    e.set_wall_clock(T0 - YEAR);
    e.mark("ES", 80.0, T0 + 5 * SECOND_NS, &mut out).unwrap();
    assert_eq!(e.now(), Some(T0 + 5 * SECOND_NS));
}

#[test]
fn replay_bounds_each_jump_of_the_clock() {
    let mut e = engine_with(Guards {
        max_jump_ns: Some(DAY_NS),
        ..Guards::default()
    });
    let mut out = Vec::new();
    e.mark("ES", 100.0, T0, &mut out).unwrap();
    refused(&mut e, "future", |e| {
        e.mark("ES", 100.0, T0 + DAY_NS + 1, &mut Vec::new())
    });
    e.mark("ES", 100.0, T0 + DAY_NS, &mut out).unwrap();
    e.mark("ES", 100.0, T0 + 2 * DAY_NS, &mut out).unwrap();
}

#[test]
fn timestamps_outside_the_range_are_refused() {
    let mut e = live();
    for ts in [-1, 0, i64::MIN, 315_532_800 * SECOND_NS - 1, i64::MAX] {
        refused(&mut e, "bad_timestamp", |e| {
            e.mark("ES", 1.0, ts, &mut Vec::new())
        });
        refused(&mut e, "bad_timestamp", |e| e.advance(ts));
    }
    let raw = msg(format!(
        r#"{{"type":"mark","symbol":"ES","price":1,"ts":{}}}"#,
        -5
    ));
    refused(&mut e, "bad_timestamp", |e| {
        e.ingest_json(&raw, &mut Vec::new())
    });
    // 2^63 does not fit: not an event.
    let raw = br#"{"type":"mark","symbol":"ES","price":1,"ts":9223372036854775808}"#;
    refused(&mut e, "decode", |e| e.ingest_json(raw, &mut Vec::new()));
}

#[test]
fn absurd_prices_are_refused_and_the_drawdown_limit_keeps_working() {
    let mut e = live();
    let mut out = Vec::new();
    e.fill("a", "ES", 1.0, 100.0, 0.0, T0, &mut out).unwrap();
    for p in [1e307, 1e308, f64::MAX, 2e9] {
        refused(&mut e, "bad_price", |e| {
            e.quote("ES", p, p, T0 + 1, &mut Vec::new())
        });
    }
    e.quote("ES", 70.0, 70.0, T0 + 2, &mut out).unwrap();
    let s = e.snapshot("a").unwrap();
    assert!(s.equity.is_finite() && s.peak_equity == 100_000.0, "{s:?}");
    // a 30-lot loss of 30 on 100k is only 0.03%: use a bigger position to see the limit trip
    e.fill("a", "ES", 1_000.0, 70.0, 0.0, T0 + 3, &mut out)
        .unwrap();
    e.quote("ES", 55.0, 55.0, T0 + 4, &mut out).unwrap();
    assert!(
        out.iter().any(|b| b.kind == BreachKind::Drawdown),
        "{out:?}"
    );
}

fn unbounded() -> Engine {
    engine_with(Guards {
        max_price: f64::MAX,
        max_quantity: f64::MAX,
        max_notional: f64::MAX,
        ..Guards::default()
    })
}

#[test]
fn an_overflow_is_refused_even_with_the_bounds_opened() {
    // A quote: the mid of two maximal prices does not overflow, and a 1-lot position at
    // 1.8e308 still has a finite equity; 3 lots do not.
    let mut e = unbounded();
    let mut out = Vec::new();
    e.fill("a", "ES", 1.0, 100.0, 0.0, T0, &mut out).unwrap();
    e.quote("ES", f64::MAX, f64::MAX, T0 + 1, &mut out).unwrap();
    assert!(e.snapshot("a").unwrap().equity.is_finite());
    e.quote("ES", 100.0, 100.0, T0 + 2, &mut out).unwrap();
    e.fill("a", "ES", 2.0, 100.0, 0.0, T0 + 3, &mut out)
        .unwrap();
    refused(&mut e, "overflow", |e| {
        e.quote("ES", f64::MAX, f64::MAX, T0 + 4, &mut Vec::new())
    });

    // A fill whose own notional is finite but which takes the exposure past the doubles.
    let mut e = unbounded();
    e.fill("a", "ES", 1e300, 1.5e8, 0.0, T0, &mut out).unwrap();
    refused(&mut e, "overflow", |e| {
        e.fill("a", "ES", 1e300, 1.5e8, 0.0, T0 + 1, &mut Vec::new())
    });

    // A holder of an unquoted symbol re-marked by another algorithm's fill is checked too.
    let mut e = unbounded();
    e.fill("a", "CL", 1e300, 1.0, 0.0, T0, &mut out).unwrap();
    refused(&mut e, "overflow", |e| {
        e.fill("b", "CL", 1.0, 1e300, 0.0, T0 + 1, &mut Vec::new())
    });
    for a in ["a", "b"] {
        let s = e.snapshot(a).unwrap();
        assert!(s.equity.is_finite() && s.peak_equity.is_finite(), "{s:?}");
    }
}

#[test]
fn sanity_bounds_on_quantity_notional_and_fee() {
    let mut e = live();
    refused(&mut e, "bad_quantity", |e| {
        e.fill("a", "ES", 2e12, 1.0, 0.0, T0, &mut Vec::new())
    });
    refused(&mut e, "bad_notional", |e| {
        e.fill("a", "ES", 1e9, 1e5, 0.0, T0, &mut Vec::new())
    });
    refused(&mut e, "bad_fee", |e| {
        e.fill("a", "ES", 1.0, 1.0, 1e14, T0, &mut Vec::new())
    });
}

#[test]
fn the_price_band_refuses_a_jump_and_breaches_holders_after_a_run() {
    let mut e = engine_with(Guards {
        price_band: Some(0.2),
        price_band_consecutive: 3,
        ..Guards::default()
    });
    let mut out = Vec::new();
    e.fill("a", "ES", 1.0, 100.0, 0.0, T0, &mut out).unwrap();
    e.quote("ES", 100.0, 100.0, T0 + 1, &mut out).unwrap();
    // One fat finger: refused, nothing changes, no breach.
    refused(&mut e, "price_band", |e| {
        e.quote("ES", 1_000.0, 1_000.0, T0 + 2, &mut Vec::new())
    });
    e.quote("ES", 110.0, 110.0, T0 + 3, &mut out).unwrap(); // within 20%: the run restarts
    refused(&mut e, "price_band", |e| {
        e.quote("ES", 50.0, 50.0, T0 + 4, &mut Vec::new())
    });
    refused(&mut e, "price_band", |e| {
        e.quote("ES", 50.0, 50.0, T0 + 5, &mut Vec::new())
    });
    assert!(out.is_empty());
    // The third in a row is accepted: the holder breaches (and only the holder).
    e.quote("ES", 50.0, 50.0, T0 + 6, &mut out).unwrap();
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(
        (out[0].algo_id.as_str(), out[0].kind),
        ("a", BreachKind::PriceBand)
    );
    assert_eq!(e.snapshot("a").unwrap().positions[0].mark, Some(50.0));
    // A symbol's own band overrides the default; None switches it off.
    e.set_price_band("ES", None).unwrap();
    e.quote("ES", 500.0, 500.0, T0 + 7, &mut out).unwrap();
}

#[test]
fn identity_comes_from_the_subject() {
    let mut e = live();
    let mut out = Vec::new();
    let fill = |algo: &str, ts: i64| {
        msg(format!(
            r#"{{"type":"fill","algo":"{algo}","symbol":"ES","side":"sell","qty":5,"price":100,"ts":{ts}}}"#
        ))
    };
    e.ingest_msg("rampart.fills.gw2.b", &fill("b", T0), &mut out)
        .unwrap();
    // gw1 may not report fills of gw2's algorithm, on its own subject or on gw2's algo token.
    refused(&mut e, "wrong_gateway", |e| {
        e.ingest_msg("rampart.fills.gw1.b", &fill("b", T0 + 1), &mut Vec::new())
    });
    refused(&mut e, "wrong_gateway", |e| {
        e.ingest_msg("rampart.fills.gw1.a", &fill("b", T0 + 1), &mut Vec::new())
    });
    // Fills are not market data and market data carries only its own symbol.
    refused(&mut e, "wrong_subject", |e| {
        e.ingest_msg("rampart.md.ES", &fill("a", T0 + 1), &mut Vec::new())
    });
    let q = msg(format!(
        r#"{{"type":"quote","symbol":"NQ","bid":1,"ask":1,"ts":{}}}"#,
        T0 + 1
    ));
    refused(&mut e, "wrong_subject", |e| {
        e.ingest_msg("rampart.md.ES", &q, &mut Vec::new())
    });
    refused(&mut e, "wrong_subject", |e| {
        e.ingest_msg("rampart.orders.gw2.b", &fill("b", T0 + 1), &mut Vec::new())
    });
    refused(&mut e, "wrong_subject", |e| {
        e.ingest_msg("other.fills.gw2.b", &fill("b", T0 + 1), &mut Vec::new())
    });
    // An unknown algorithm is reported as such, before any gateway question.
    refused(&mut e, "unknown_algorithm", |e| {
        e.ingest_msg(
            "rampart.fills.gw1.ghost",
            &fill("ghost", T0 + 1),
            &mut Vec::new(),
        )
    });
    // A registered algorithm no gateway was assigned to is accepted from none.
    e.register(config("c")).unwrap();
    refused(&mut e, "wrong_gateway", |e| {
        e.ingest_msg("rampart.fills.gw1.c", &fill("c", T0 + 1), &mut Vec::new())
    });
}

/// The same bad event is refused for the same reason on every entry point, in the documented
/// order: decode, wrong_subject, unknown_algorithm, wrong_gateway, bad_timestamp, out_of_order,
/// future, bad_price, bad_quantity, bad_notional, bad_fee, bad_latency, price_band, overflow.
#[test]
fn one_reason_order_on_every_entry_point() {
    #[allow(clippy::type_complexity)]
    let cases: &[(&str, &str, f64, f64, f64, i64)] = &[
        // (reason, algo, qty, price, fee, ts)
        ("unknown_algorithm", "ghost", -1.0, -1.0, -1.0, -1),
        ("bad_timestamp", "a", -1.0, -1.0, -1.0, -1),
        ("bad_price", "a", -1.0, -1.0, -1.0, T0),
        ("bad_quantity", "a", -1.0, 1.0, -1.0, T0),
        ("bad_notional", "a", 1e9, 1e9, -1.0, T0),
        ("bad_fee", "a", 1.0, 1.0, -1.0, T0),
    ];
    for &(reason, algo, qty, price, fee, ts) in cases {
        let mut e = live();
        e.set_wall_clock(T0);
        let side = "buy";
        let json = msg(format!(
            r#"{{"type":"fill","algo":"{algo}","symbol":"ES","side":"{side}","qty":{qty:?},"price":{price:?},"fee":{fee:?},"ts":{ts}}}"#
        ));
        let gw = if algo == "b" { "gw2" } else { "gw1" };
        let subject = format!("rampart.fills.{gw}.{algo}");
        let by_call = e
            .fill_sided(
                algo,
                "ES",
                rampart_core::Side::Buy,
                qty,
                price,
                fee,
                ts,
                &mut Vec::new(),
            )
            .unwrap_err();
        let by_json = e.ingest_json(&json, &mut Vec::new()).unwrap_err();
        let by_msg = e.ingest_msg(&subject, &json, &mut Vec::new()).unwrap_err();
        assert_eq!(by_call.reason(), reason, "{by_call}");
        assert_eq!(by_json.reason(), reason, "{by_json}");
        assert_eq!(by_msg.reason(), reason, "{by_msg}");
    }
    // Out of order before future before price.
    let mut e = live();
    e.set_wall_clock(T0);
    e.mark("ES", 1.0, T0, &mut Vec::new()).unwrap();
    let err = e
        .fill(
            "a",
            "ES",
            1.0,
            -1.0,
            0.0,
            T0 - 3_600 * SECOND_NS,
            &mut Vec::new(),
        )
        .unwrap_err();
    assert_eq!(err.reason(), "out_of_order");
    let err = e
        .fill("a", "ES", 1.0, -1.0, 0.0, T0 + YEAR, &mut Vec::new())
        .unwrap_err();
    assert_eq!(err.reason(), "future");
}

#[test]
fn invalid_utf8_anywhere_is_not_an_event() {
    let mut e = live();
    let mut raw =
        format!(r#"{{"type":"mark","symbol":"ES","price":1,"ts":{T0},"note":"x"}}"#).into_bytes();
    let at = raw.len() - 3;
    raw[at] = 0xff;
    refused(&mut e, "decode", |e| e.ingest_json(&raw, &mut Vec::new()));
    refused(&mut e, "decode", |e| {
        e.ingest_msg("rampart.md.ES", &raw, &mut Vec::new())
    });
}

#[test]
fn windows_are_bounded_in_validation() {
    let mut c = config("x");
    c.sharpe_window = 1_000_000_000_000;
    let err = c.validate().unwrap_err();
    assert_eq!(err.reason(), "config");
    assert!(err.to_string().contains("sharpe_window"), "{err}");
    let mut c = config("x");
    c.error_window_ns = 2 * 3_600 * SECOND_NS;
    assert!(c
        .validate()
        .unwrap_err()
        .to_string()
        .contains("error_window_ns"));
    let mut c = config("x");
    c.return_interval_ns = i64::MAX;
    assert!(c
        .validate()
        .unwrap_err()
        .to_string()
        .contains("return_interval_ns"));
}

#[test]
fn a_checkpoint_carries_only_its_own_marks() {
    let mut e = live();
    let mut out = Vec::new();
    e.fill("a", "ES", 1.0, 100.0, 0.0, T0, &mut out).unwrap();
    let small = e.checkpoint("a").unwrap().len();
    for i in 0..8_000 {
        e.quote(&format!("S{i}"), 1.0, 1.0, T0 + 1, &mut out)
            .unwrap();
    }
    assert_eq!(e.checkpoint("a").unwrap().len(), small);
}

#[test]
fn a_restored_clock_ahead_of_the_bound_is_not_trusted() {
    let mut src = engine_with(Guards::default());
    let mut out = Vec::new();
    let future = T0 + 75 * YEAR;
    src.fill("a", "ES", 1.0, 100.0, 0.0, T0, &mut out).unwrap();
    src.order("a", rampart_core::OrderEvent::Submitted, future, &mut out)
        .unwrap();
    src.quote("ES", 90.0, 90.0, future, &mut out).unwrap();
    let ck = src.checkpoint("a").unwrap();
    let mut e = Engine::with_guards(Guards::default()).unwrap();
    let bound = T0 + 5 * SECOND_NS;
    assert_eq!(e.restore(&ck, Some(bound)).unwrap(), Some(future));
    assert_eq!(e.now(), Some(bound));
    let s = e.snapshot("a").unwrap();
    assert_eq!(s.positions[0].qty, 1.0, "positions are kept");
    assert_eq!(s.equity, src.snapshot("a").unwrap().equity, "PnL is kept");
    assert_eq!(
        s.orders_in_window, 0,
        "the future-stamped order window is emptied"
    );
    assert!(s.last_event_ts.unwrap() <= bound);
    assert_eq!(e.last_quote_ts("ES"), Some(bound));
    // Events at the present are accepted again.
    e.quote("ES", 91.0, 91.0, T0 + SECOND_NS, &mut out).unwrap();
    // A trusted clock restores exactly.
    let mut f = Engine::default();
    assert_eq!(f.restore(&ck, Some(future)).unwrap(), None);
    assert_eq!(f.now(), Some(future));
}

#[test]
fn session_sampling_adds_one_return_per_session_with_events() {
    let mut c = config("s");
    c.return_sampling = ReturnSampling::Session;
    let mut e = Engine::default();
    e.register(c).unwrap();
    let mut out: Vec<Breach> = Vec::new();
    e.fill(
        "s",
        "X",
        1.0,
        100.0,
        0.0,
        T0 + 20 * 3_600 * SECOND_NS,
        &mut out,
    )
    .unwrap();
    // Mon..Fri closes then the next Monday: the weekend adds nothing.
    for (day, px) in [(1, 101.0), (2, 102.0), (3, 99.0), (6, 100.0)] {
        e.mark(
            "X",
            px,
            T0 + day * DAY_NS + 20 * 3_600 * SECOND_NS,
            &mut out,
        )
        .unwrap();
    }
    assert_eq!(e.snapshot("s").unwrap().returns_count, 4);
}

#[test]
fn a_late_durable_fill_is_applied_at_the_clock_and_a_late_live_one_refused() {
    let mut e = live();
    e.set_wall_clock(T0 + 600 * SECOND_NS);
    let mut out = Vec::new();
    let quote = msg(format!(
        r#"{{"type":"quote","symbol":"ES","bid":100,"ask":100,"ts":{}}}"#,
        T0 + 600 * SECOND_NS
    ));
    e.ingest_msg("rampart.md.ES", &quote, &mut out).unwrap();
    // a fill the gateway's outbox held through a 10-minute outage
    let late = msg(format!(
        r#"{{"type":"fill","algo":"a","symbol":"ES","side":"buy","qty":3,"price":99,"ts":{T0}}}"#
    ));
    refused(&mut e, "out_of_order", |e| {
        e.ingest_msg("rampart.fills.gw1.a", &late, &mut Vec::new())
    });
    e.ingest_durable("rampart.fills.gw1.a", &late, &mut out)
        .unwrap();
    let snap = e.snapshot("a").unwrap();
    assert_eq!(snap.fills, 1);
    assert_eq!(snap.positions[0].qty, 3.0);
    assert_eq!(
        e.now(),
        Some(T0 + 600 * SECOND_NS),
        "the clock never goes back"
    );
    // the late pass is for that one event: the next live one is judged as before
    refused(&mut e, "out_of_order", |e| {
        e.ingest_msg("rampart.fills.gw1.a", &late, &mut Vec::new())
    });
    // every other check stands on the durable path, and market data is not durable
    refused(&mut e, "wrong_gateway", |e| {
        e.ingest_durable("rampart.fills.gw2.a", &late, &mut Vec::new())
    });
    refused(&mut e, "wrong_subject", |e| {
        e.ingest_durable("rampart.md.ES", &quote, &mut Vec::new())
    });
    refused(&mut e, "decode", |e| {
        e.ingest_durable("rampart.md.ES", b"{", &mut Vec::new())
    });
}

#[test]
fn a_batch_applies_its_gateways_events_and_refuses_the_rest_one_by_one() {
    let mut e = live();
    e.set_wall_clock(T0 + 600 * SECOND_NS);
    let fill = |algo: &str, qty: u32, ts: i64| {
        format!(
            r#"{{"type":"fill","algo":"{algo}","symbol":"ES","side":"buy","qty":{qty},"price":100,"ts":{ts}}}"#
        )
    };
    let quote = format!(r#"{{"type":"quote","symbol":"ES","bid":100,"ask":100,"ts":{T0}}}"#);
    let batch = format!(
        "[{},{},{},{},{}]",
        fill("a", 1, T0),
        fill("b", 7, T0),                    // gw2's algorithm in gw1's batch
        quote,                               // market data is never durable
        r#"{"type":"fill"}"#,                // not a fill
        fill("a", 2, T0 - 3600 * SECOND_NS), // late: applied at the clock, as durable events are
    );
    let (mut out, mut refusals) = (Vec::new(), Vec::new());
    let applied = e
        .ingest_durable_batch(
            "rampart.batch.gw1",
            batch.as_bytes(),
            &mut out,
            &mut refusals,
        )
        .unwrap();
    assert_eq!(applied, 2);
    let reasons: Vec<(usize, &str)> = refusals.iter().map(|(i, e)| (*i, e.reason())).collect();
    assert_eq!(
        reasons,
        vec![(1, "wrong_gateway"), (2, "wrong_subject"), (3, "decode")]
    );
    assert_eq!(e.snapshot("a").unwrap().positions[0].qty, 3.0);
    assert_eq!(
        e.snapshot("b").unwrap().fills,
        0,
        "another gateway's event was applied"
    );
    // a batch that cannot be taken at all changes nothing
    let one = fill("a", 1, T0);
    for (subject, data, reason) in [
        ("rampart.batch.gw1", one.as_bytes(), "decode"), // an event, not an array
        ("rampart.batch.gw1", b"[1,".as_slice(), "decode"),
        ("rampart.fills.gw1.a", b"[]".as_slice(), "wrong_subject"),
        ("rampart.batch.gw1.a", b"[]".as_slice(), "wrong_subject"),
    ] {
        refused(&mut e, reason, |e| {
            e.ingest_durable_batch(subject, data, &mut Vec::new(), &mut Vec::new())
                .map(|_| ())
        });
    }
    // and a batch is refused on the live path
    refused(&mut e, "decode", |e| {
        e.ingest_msg("rampart.batch.gw1", b"[]", &mut Vec::new())
    });
}
