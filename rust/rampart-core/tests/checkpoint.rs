//! Checkpoints: an algorithm restored from `Engine::checkpoint` into another engine continues
//! exactly as the original would, and bad checkpoints are refused without changing anything.

use proptest::prelude::*;
use rampart_core::{
    AlgoConfig, Breach, CoreError, Engine, Guards, LimitSpec, OrderEvent, Snapshot,
    CHECKPOINT_VERSION,
};
use serde_json::{json, Value};

const T0: i64 = 1_764_028_800_000_000_000; // 2025-11-25 00:00 UTC
const SEC: i64 = 1_000_000_000;
const SYMS: [&str; 4] = ["ES", "NQ", "CL", "GC"];
const ALGOS: [&str; 2] = ["a", "b"];

#[derive(Debug, Clone)]
enum Ev {
    Fill {
        algo: usize,
        sym: usize,
        qty: f64,
        price: f64,
        fee: f64,
    },
    Quote {
        sym: usize,
        bid: f64,
        ask: f64,
    },
    Mark {
        sym: usize,
        price: f64,
    },
    Order {
        algo: usize,
        kind: u8,
        latency_ns: i64,
    },
    SetCapital {
        algo: usize,
        capital: f64,
    },
    MarkStage {
        algo: usize,
    },
    ResetBreaches {
        algo: usize,
    },
    Advance,
}

/// An event and the time step before it (negative steps exercise the tolerance and its refusal).
type Step = (i64, Ev);

fn configs() -> Vec<AlgoConfig> {
    let mut a = AlgoConfig::new("a", "1.0.0", 10_000.0);
    a.limits.daily_loss = Some(LimitSpec {
        threshold: 0.02,
        consecutive: 2,
    });
    a.limits.drawdown = Some(LimitSpec::new(0.03));
    a.limits.error_rate = Some(LimitSpec {
        threshold: 0.3,
        consecutive: 2,
    });
    a.limits.latency_ns = Some(LimitSpec {
        threshold: 5_000.0,
        consecutive: 3,
    });
    a.error_min_orders = 5;
    a.latency_min_samples = 5;
    a.error_window_ns = 30 * SEC;
    a.latency_window_ns = 20 * SEC;
    a.return_interval_ns = 10 * SEC;
    a.sharpe_window = 16;
    a.periods_per_year = 3_153_600.0;
    a.risk_free_rate = 0.01;
    a.session_offset_ns = 3_600 * SEC;
    let mut b = AlgoConfig::new("b", "2.0.0", 50_000.0);
    b.limits.drawdown = Some(LimitSpec {
        threshold: 0.01,
        consecutive: 3,
    });
    b.return_interval_ns = 7 * SEC;
    b.sharpe_window = 5;
    vec![a, b]
}

fn engine_with(algos: usize) -> Engine {
    let mut e = Engine::new(5 * SEC).unwrap();
    for c in configs().into_iter().take(algos) {
        e.register(c).unwrap();
    }
    e
}

fn apply(e: &mut Engine, ts: i64, ev: &Ev, out: &mut Vec<Breach>) -> Result<(), CoreError> {
    match *ev {
        Ev::Fill {
            algo,
            sym,
            qty,
            price,
            fee,
        } => e.fill(ALGOS[algo], SYMS[sym], qty, price, fee, ts, out),
        Ev::Quote { sym, bid, ask } => e.quote(SYMS[sym], bid, ask, ts, out),
        Ev::Mark { sym, price } => e.mark(SYMS[sym], price, ts, out),
        Ev::Order {
            algo,
            kind,
            latency_ns,
        } => {
            let ev = match kind {
                0 => OrderEvent::Submitted,
                1 => OrderEvent::Rejected,
                2 => OrderEvent::Acked { latency_ns },
                _ => OrderEvent::Cancelled,
            };
            e.order(ALGOS[algo], ev, ts, out)
        }
        Ev::SetCapital { algo, capital } => e.set_capital(ALGOS[algo], capital, ts, out),
        Ev::MarkStage { algo } => e.mark_stage(ALGOS[algo]),
        Ev::ResetBreaches { algo } => e.reset_breaches(ALGOS[algo]),
        Ev::Advance => e.advance(ts),
    }
}

/// A deterministic, random-ish event sequence (xorshift), for `algos` algorithms.
fn random_steps(seed: u64, n: usize, algos: usize) -> Vec<Step> {
    let mut x = seed | 1;
    let mut next = move |m: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % m
    };
    let mut price = [100.0, 200.0, 50.0, 400.0];
    (0..n)
        .map(|_| {
            let dt = match next(20) {
                0 => -(next(8) as i64) * SEC, // late, sometimes beyond the tolerance
                1 => (next(30) as i64) * 3_600 * SEC, // jump hours (days, empty periods)
                2..=5 => 0,
                _ => next(4_000) as i64 * 1_000_000, // up to 4 s
            };
            let algo = next(algos as u64) as usize;
            let sym = next(4) as usize;
            price[sym] *= 1.0 + (next(2001) as f64 - 1000.0) / 40_000.0;
            let p = (price[sym] * 100.0).round() / 100.0;
            let ev = match next(100) {
                0..=29 => Ev::Fill {
                    algo,
                    sym,
                    qty: (next(41) as f64 - 20.0).max(-19.5) * 0.5 + 0.25,
                    price: p,
                    fee: next(50) as f64 * 0.01,
                },
                30..=49 => Ev::Quote {
                    sym,
                    bid: p - 0.01,
                    ask: p + 0.01 * next(3) as f64,
                },
                50..=54 => Ev::Mark { sym, price: p },
                55..=89 => Ev::Order {
                    algo,
                    kind: next(4) as u8,
                    latency_ns: match next(10) {
                        0 => 1 << 45, // clamped
                        1..=3 => 2_000 + next(10_000) as i64,
                        _ => next(5_000) as i64,
                    },
                },
                90..=92 => Ev::SetCapital {
                    algo,
                    capital: 5_000.0 + next(20_000) as f64,
                },
                93..=94 => Ev::MarkStage { algo },
                95..=96 => Ev::ResetBreaches { algo },
                _ => Ev::Advance,
            };
            (dt, ev)
        })
        .collect()
}

fn snapshots(e: &mut Engine) -> Vec<Snapshot> {
    e.algorithms()
        .iter()
        .map(|id| e.snapshot(id).unwrap())
        .collect()
}

/// Breaches in a canonical order: several algorithms holding one symbol may trip in either order
/// on one quote (the order the engine first saw them trade it).
fn canonical(mut b: Vec<Breach>) -> Vec<Breach> {
    b.sort_by_key(|b| (b.algo_id.clone(), b.kind.as_str()));
    b
}

/// Run `steps[..split]` on one engine, checkpoint every algorithm, restore them into a fresh
/// engine, then run `steps[split..]` on both and demand identical results throughout.
fn check_round_trip(algos: usize, steps: &[Step], split: usize) {
    let mut orig = engine_with(algos);
    let mut out = Vec::new();
    let mut ts = T0;
    for (dt, ev) in &steps[..split] {
        ts += dt;
        let _ = apply(&mut orig, ts, ev, &mut out);
    }
    let ids = orig.algorithms();
    let cks: Vec<Vec<u8>> = ids.iter().map(|id| orig.checkpoint(id).unwrap()).collect();
    let mut restored = Engine::new(orig.time_tolerance_ns()).unwrap();
    for ck in &cks {
        restored.restore(ck, None).unwrap();
    }
    assert_eq!(restored.now(), orig.now());
    // The restored state checkpoints to the same bytes: nothing was lost or changed.
    for (id, ck) in ids.iter().zip(&cks) {
        assert_eq!(
            &restored.checkpoint(id).unwrap(),
            ck,
            "re-checkpoint of {id} differs"
        );
        assert_eq!(restored.returns(id).unwrap(), orig.returns(id).unwrap());
    }
    // Checkpoints carry only the marks of the algorithms' own (held or once held) symbols: a
    // symbol only quoted is unknown to the restored engine until its next quote, which both
    // engines get here.
    for s in SYMS {
        if restored.last_quote_ts(s) != orig.last_quote_ts(s) {
            assert_eq!(restored.last_quote_ts(s), None, "{s}");
            let now = orig.now().unwrap();
            for e in [&mut orig, &mut restored] {
                e.quote(s, 100.0, 100.0, now, &mut out).unwrap();
            }
        }
    }
    assert_eq!(snapshots(&mut restored), snapshots(&mut orig));

    let (mut out_o, mut out_r) = (Vec::new(), Vec::new());
    for (i, (dt, ev)) in steps[split..].iter().enumerate() {
        ts += dt;
        out_o.clear();
        out_r.clear();
        let ro = apply(&mut orig, ts, ev, &mut out_o);
        let rr = apply(&mut restored, ts, ev, &mut out_r);
        assert_eq!(rr, ro, "result of step {} ({ev:?})", split + i);
        assert_eq!(
            canonical(out_r.clone()),
            canonical(out_o.clone()),
            "breaches of step {} ({ev:?})",
            split + i
        );
        if i % 16 == 0 {
            assert_eq!(
                snapshots(&mut restored),
                snapshots(&mut orig),
                "step {}",
                split + i
            );
        }
    }
    assert_eq!(snapshots(&mut restored), snapshots(&mut orig));
    for id in &ids {
        assert_eq!(restored.returns(id).unwrap(), orig.returns(id).unwrap());
        assert_eq!(
            restored.checkpoint(id).unwrap(),
            orig.checkpoint(id).unwrap()
        );
    }
}

/// Incremental checkpoints, as the daemon writes them: every `every` steps, a round stores the
/// checkpoints of the algorithms `take_changed` names and the marks; at `split` (after a round)
/// a fresh engine restores the marks, then every stored checkpoint, however old. It must continue
/// exactly as the original.
fn check_incremental(algos: usize, steps: &[Step], split: usize, every: usize) {
    let mut orig = engine_with(algos);
    let mut stored: std::collections::BTreeMap<String, Vec<u8>> = Default::default();
    let mut out = Vec::new();
    let mut ts = T0;
    let round = |e: &mut Engine, stored: &mut std::collections::BTreeMap<String, Vec<u8>>| {
        for id in e.take_changed() {
            stored.insert(id.clone(), e.checkpoint(&id).unwrap());
        }
        e.marks_checkpoint()
    };
    for (i, (dt, ev)) in steps[..split].iter().enumerate() {
        ts += dt;
        let _ = apply(&mut orig, ts, ev, &mut out);
        if i % every == 0 {
            // reads between rounds are not changes
            let _ = snapshots(&mut orig);
            round(&mut orig, &mut stored);
        }
    }
    let marks = round(&mut orig, &mut stored);
    assert_eq!(
        orig.take_changed(),
        Vec::<String>::new(),
        "a round leaves nothing changed"
    );
    let mut restored = Engine::new(orig.time_tolerance_ns()).unwrap();
    restored.restore_marks(&marks, None).unwrap();
    for ck in stored.values() {
        restored.restore(ck, None).unwrap();
    }
    assert_eq!(restored.now(), orig.now());
    for s in SYMS {
        assert_eq!(restored.last_quote_ts(s), orig.last_quote_ts(s), "{s}");
    }
    assert_eq!(snapshots(&mut restored), snapshots(&mut orig));
    let (mut out_o, mut out_r) = (Vec::new(), Vec::new());
    for (i, (dt, ev)) in steps[split..].iter().enumerate() {
        ts += dt;
        out_o.clear();
        out_r.clear();
        let ro = apply(&mut orig, ts, ev, &mut out_o);
        let rr = apply(&mut restored, ts, ev, &mut out_r);
        assert_eq!(rr, ro, "result of step {} ({ev:?})", split + i);
        assert_eq!(canonical(out_r.clone()), canonical(out_o.clone()));
    }
    assert_eq!(snapshots(&mut restored), snapshots(&mut orig));
}

#[test]
fn incremental_checkpoints_restore_exactly() {
    for seed in [7u64, 11, 0xfeed] {
        let steps = random_steps(seed, 400, 2);
        for every in [1, 5, 40] {
            for split in [0, 1, 41, 120, 399] {
                check_incremental(2, &steps, split, every);
            }
        }
    }
}

#[test]
fn only_changes_mark_an_algorithm_changed() {
    let mut e = engine_with(2);
    assert_eq!(
        e.take_changed(),
        ["a", "b"],
        "registered: no checkpoint yet"
    );
    assert!(e.take_changed().is_empty());
    let mut out = Vec::new();
    e.quote("ES", 100.0, 100.0, T0, &mut out).unwrap();
    assert!(
        e.take_changed().is_empty(),
        "a quote nobody holds changes no algorithm"
    );
    e.fill("a", "ES", 1.0, 100.0, 0.0, T0 + 1, &mut out)
        .unwrap();
    assert_eq!(e.take_changed(), ["a"]);
    e.quote("ES", 101.0, 101.0, T0 + 2, &mut out).unwrap();
    assert_eq!(e.take_changed(), ["a"], "a quote re-marks its holder");
    e.snapshot("a").unwrap();
    e.advance(T0 + 10 * 3_600 * SEC).unwrap();
    assert!(
        e.take_changed().is_empty(),
        "reads and clock moves are not changes"
    );
    e.order("b", OrderEvent::Submitted, T0 + 10 * 3_600 * SEC, &mut out)
        .unwrap();
    e.mark_stage("a").unwrap();
    assert_eq!(e.take_changed(), ["a", "b"]);
    e.reset_breaches("b").unwrap();
    assert_eq!(e.take_changed(), ["b"]);
    e.mark_all_changed();
    assert_eq!(e.take_changed(), ["a", "b"]);
    let ck = e.checkpoint("a").unwrap();
    e.unregister("a").unwrap();
    e.restore(&ck, None).unwrap();
    assert_eq!(
        e.take_changed(),
        ["a"],
        "restored: its stored checkpoint is not known to be it"
    );
    // a marks document that is not one is refused, the engine unchanged
    let before = e.marks_checkpoint();
    assert!(e.restore_marks(b"{}", None).is_err());
    assert!(e
        .restore_marks(
            br#"{"v":1,"now":1,"marks":{"ES":{"mark":-1.0,"last_quote_ts":null}}}"#,
            None
        )
        .is_err());
    assert_eq!(e.marks_checkpoint(), before);
}

#[test]
fn stored_marks_beyond_the_trusted_clock_are_clamped_and_reported() {
    let doc = br#"{"v":1,"now":100,"marks":{"ES":{"mark":5.0,"last_quote_ts":200}}}"#;
    let mut e = Engine::new(0).unwrap();
    assert_eq!(e.restore_marks(doc, Some(150)).unwrap(), Some(200));
    assert_eq!(e.last_quote_ts("ES"), Some(150));
    assert_eq!(e.now(), Some(100));
    let mut e = Engine::new(0).unwrap();
    assert_eq!(
        e.restore_marks(doc, Some(300)).unwrap(),
        None,
        "within the bound"
    );
    assert_eq!(e.last_quote_ts("ES"), Some(200));
    let mut e = Engine::new(0).unwrap();
    assert_eq!(
        e.restore_marks(doc, None).unwrap(),
        None,
        "no bound: nothing to distrust"
    );
}

#[test]
fn round_trip_one_algorithm_at_many_points() {
    let steps = random_steps(0x5eed_1234, 600, 1);
    for split in (0..=600).step_by(37) {
        check_round_trip(1, &steps, split);
    }
}

#[test]
fn round_trip_two_algorithms_sharing_symbols() {
    for seed in [1u64, 2, 3, 0xdead_beef] {
        let steps = random_steps(seed, 500, 2);
        for split in [0, 1, 50, 173, 250, 499, 500] {
            check_round_trip(2, &steps, split);
        }
    }
}

#[test]
fn the_sequences_exercise_what_they_should() {
    // Guard against a generator that never trips a limit or fills a window.
    let steps = random_steps(0x5eed_1234, 600, 1);
    let mut e = engine_with(1);
    let mut out = Vec::new();
    let mut ts = T0;
    let mut refused = 0;
    for (dt, ev) in &steps {
        ts += dt;
        refused += apply(&mut e, ts, ev, &mut out).is_err() as usize;
    }
    let s = e.snapshot("a").unwrap();
    assert!(refused > 0, "some events are out of order");
    assert!(!out.is_empty(), "limits tripped");
    assert!(s.trades > 0 && s.returns_count == 16, "{s:?}");
    assert!(s.positions.len() == 4);
}

#[test]
fn the_format_is_versioned_json_naming_symbols() {
    let mut e = engine_with(1);
    let mut out = Vec::new();
    e.quote("ES", 99.0, 101.0, T0, &mut out).unwrap();
    e.fill("a", "ES", 2.0, 100.5, 0.1, T0 + 1, &mut out)
        .unwrap();
    e.mark("CL", 70.0, T0 + 2, &mut out).unwrap();
    let ck: Value = serde_json::from_slice(&e.checkpoint("a").unwrap()).unwrap();
    assert_eq!(ck["v"], json!(CHECKPOINT_VERSION));
    assert_eq!(ck["now"], json!(T0 + 2));
    assert_eq!(ck["position_symbols"], json!(["ES"]));
    assert_eq!(
        ck["marks"],
        json!({"ES": {"mark": 100.0, "last_quote_ts": T0}}),
        "only the marks of the algorithm's own symbols"
    );
    let algo = &ck["algo"];
    assert_eq!(algo["config"]["algo_id"], json!("a"));
    assert_eq!(algo["positions"][0]["qty"], json!(2.0));
    assert_eq!(algo["limit_state"].as_array().unwrap().len(), 4);
    // The histogram is rebuilt from the events, never stored.
    assert!(algo["latency"].get("counts").is_none());
    assert_eq!(algo["latency"]["events"], json!([]));
}

/// A full 720-return window (1 h periods) and 1000 submits + 1000 acks in the 60 s windows.
fn full_windows() -> Engine {
    let mut e = Engine::default();
    let mut cfg = AlgoConfig::new("full", "1.0.0", 1_000_000.0);
    cfg.limits.latency_ns = Some(LimitSpec::new(1e9));
    cfg.limits.error_rate = Some(LimitSpec::new(0.5));
    e.register(cfg).unwrap();
    let mut out = Vec::new();
    let hour = 3_600 * SEC;
    for h in 0..=730i64 {
        let p = 100.0 + (h % 17) as f64 * 0.37 - (h % 5) as f64 * 0.11;
        e.fill(
            "full",
            SYMS[(h % 4) as usize],
            1.0,
            p,
            0.01,
            T0 + h * hour,
            &mut out,
        )
        .unwrap();
        e.quote(
            SYMS[((h + 1) % 4) as usize],
            p - 0.01,
            p + 0.01,
            T0 + h * hour + 1,
            &mut out,
        )
        .unwrap();
    }
    let t = T0 + 731 * hour;
    for i in 0..1000i64 {
        let ts = t + i * 50_000_000; // 50 s for 1000
        e.order("full", OrderEvent::Submitted, ts, &mut out)
            .unwrap();
        e.order(
            "full",
            OrderEvent::Acked {
                latency_ns: 40_000 + 37 * i,
            },
            ts,
            &mut out,
        )
        .unwrap();
        if i % 10 == 0 {
            e.order("full", OrderEvent::Rejected, ts, &mut out).unwrap();
        }
    }
    e
}

#[test]
fn checkpoint_size_with_full_windows() {
    let mut e = full_windows();
    let s = e.snapshot("full").unwrap();
    assert_eq!(s.returns_count, 720);
    assert_eq!(s.orders_in_window, 1000);
    assert_eq!(s.acks_in_window, 1000);
    let ck = e.checkpoint("full").unwrap();
    let v: Value = serde_json::from_slice(&ck).unwrap();
    let part = |k: &str| serde_json::to_vec(&v["algo"][k]).unwrap().len();
    eprintln!(
        "checkpoint: {} bytes (returns {}, order window {}, latency window {}, marks {})",
        ck.len(),
        part("returns"),
        part("rejects"),
        part("latency"),
        serde_json::to_vec(&v["marks"]).unwrap().len()
    );
    assert!(ck.len() < 96 * 1024, "{} bytes", ck.len());
    let started = std::time::Instant::now();
    for _ in 0..100 {
        std::hint::black_box(e.checkpoint("full").unwrap());
    }
    let per_ck = started.elapsed() / 100;
    let started = std::time::Instant::now();
    for _ in 0..100 {
        let mut r = Engine::default();
        r.restore(&ck, None).unwrap();
        std::hint::black_box(r);
    }
    eprintln!(
        "checkpoint {:?}, restore {:?} (debug builds are much slower)",
        per_ck,
        started.elapsed() / 100
    );
    let mut r = Engine::default();
    r.restore(&ck, None).unwrap();
    assert_eq!(r.snapshot("full").unwrap(), s);
}

// ---- refusals ---------------------------------------------------------------------------------

fn busy_engine() -> Engine {
    let mut e = engine_with(2);
    let mut out = Vec::new();
    let mut ts = T0;
    for (dt, ev) in random_steps(7, 300, 2) {
        ts += dt;
        let _ = apply(&mut e, ts, &ev, &mut out);
    }
    e
}

/// Everything observable about an engine (its Debug form covers every field).
fn state(e: &Engine) -> String {
    format!("{e:?}")
}

fn edited(ck: &[u8], f: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(ck).unwrap();
    f(&mut v);
    serde_json::to_vec(&v).unwrap()
}

#[test]
fn bad_checkpoints_are_refused_without_change() {
    let mut src = busy_engine();
    let ck = src.checkpoint("a").unwrap();
    // A target that already has state: one algorithm, marks, a clock.
    let mut target = engine_with(2);
    target.unregister("a").unwrap();
    let mut out = Vec::new();
    target.quote("ES", 1.0, 2.0, T0, &mut out).unwrap();
    target.fill("b", "ES", 1.0, 1.5, 0.0, T0, &mut out).unwrap();

    type Case = (&'static str, Vec<u8>, &'static str);
    let cases: Vec<Case> = vec![
        ("empty", b"".to_vec(), "decode"),
        ("not json", b"hello".to_vec(), "decode"),
        ("truncated", ck[..ck.len() / 2].to_vec(), "decode"),
        ("not an object", b"[1, 2]".to_vec(), "decode"),
        ("trailing bytes", [&ck[..], b"x"].concat(), "decode"),
        (
            "no version",
            edited(&ck, |v| drop(v.as_object_mut().unwrap().remove("v"))),
            "decode",
        ),
        ("version 2", edited(&ck, |v| v["v"] = json!(2)), "decode"),
        (
            "version as text",
            edited(&ck, |v| v["v"] = json!("1")),
            "decode",
        ),
        (
            "missing algo",
            edited(&ck, |v| drop(v.as_object_mut().unwrap().remove("algo"))),
            "decode",
        ),
        (
            "missing field",
            edited(&ck, |v| {
                drop(v["algo"].as_object_mut().unwrap().remove("peak"))
            }),
            "decode",
        ),
        (
            "unknown field",
            edited(&ck, |v| v["algo"]["extra"] = json!(1)),
            "decode",
        ),
        (
            "unknown top field",
            edited(&ck, |v| v["extra"] = json!(1)),
            "decode",
        ),
        (
            "derived field stored",
            edited(&ck, |v| v["algo"]["latency"]["counts"] = json!([])),
            "decode",
        ),
        (
            "null number",
            edited(&ck, |v| v["algo"]["realized"] = json!(null)),
            "decode",
        ),
        (
            "huge number",
            {
                let s = String::from_utf8(ck.clone()).unwrap();
                let i = s.find("\"fees\":").unwrap() + 7;
                let j = i + s[i..].find(',').unwrap();
                format!("{}1e999{}", &s[..i], &s[j..]).into_bytes()
            },
            "decode",
        ),
        (
            "capital",
            edited(&ck, |v| v["algo"]["config"]["capital"] = json!(-1.0)),
            "config",
        ),
        (
            "sharpe window",
            edited(&ck, |v| v["algo"]["config"]["sharpe_window"] = json!(1)),
            "config",
        ),
        (
            "empty id",
            edited(&ck, |v| v["algo"]["config"]["algo_id"] = json!(" ")),
            "config",
        ),
        (
            "window larger than config",
            edited(&ck, |v| v["algo"]["config"]["sharpe_window"] = json!(3)),
            "decode",
        ),
        (
            "latency above clamp",
            edited(&ck, |v| {
                v["algo"]["latency"]["events"] = json!([[T0, 1u64 << 50]])
            }),
            "decode",
        ),
        (
            "order window out of time order",
            edited(&ck, |v| {
                v["algo"]["rejects"]["events"] = json!([[T0 + 5, false], [T0, true]])
            }),
            "decode",
        ),
        (
            "latency window out of time order",
            edited(&ck, |v| {
                v["algo"]["latency"]["events"] = json!([[T0 + 5, 1], [T0, 2]])
            }),
            "decode",
        ),
        (
            "position symbols short",
            edited(&ck, |v| {
                v["position_symbols"].as_array_mut().unwrap().pop();
            }),
            "decode",
        ),
        (
            "position symbols repeated",
            edited(&ck, |v| {
                let s = v["position_symbols"].as_array_mut().unwrap();
                s[1] = s[0].clone();
            }),
            "decode",
        ),
        (
            "position without mark",
            edited(&ck, |v| {
                let s = v["position_symbols"][0].as_str().unwrap().to_owned();
                v["marks"].as_object_mut().unwrap().remove(&s);
            }),
            "decode",
        ),
        (
            "bad mark",
            edited(&ck, |v| v["marks"]["ES"]["mark"] = json!(0.0)),
            "decode",
        ),
        (
            "wins above trades",
            edited(&ck, |v| v["algo"]["wins"] = json!(1_000_000)),
            "decode",
        ),
        (
            "limit state short",
            edited(&ck, |v| {
                v["algo"]["limit_state"].as_array_mut().unwrap().pop();
            }),
            "decode",
        ),
        (
            "negative count",
            edited(&ck, |v| v["algo"]["trades"] = json!(-1)),
            "decode",
        ),
        (
            "already registered",
            src.checkpoint("b").unwrap(),
            "duplicate_algorithm",
        ),
    ];
    for (what, data, reason) in cases {
        let before = state(&target);
        let err = target.restore(&data, None).expect_err(what);
        assert_eq!(err.reason(), reason, "{what}: {err}");
        assert!(!err.to_string().is_empty());
        assert_eq!(state(&target), before, "{what} changed the engine");
    }
    // Messages say what is wrong.
    let msg = |data: Vec<u8>| target.clone().restore(&data, None).unwrap_err().to_string();
    assert!(msg(edited(&ck, |v| v["v"] = json!(2))).contains("version 2 is not supported"));
    assert!(msg(b"{}".to_vec()).contains("`v` is missing"));
    assert!(
        msg(edited(&ck, |v| v["algo"]["config"]["capital"] = json!(-1.0)))
            .contains("capital must be a number in (0, 1e15]")
    );
    assert!(msg(edited(&ck, |v| drop(
        v["algo"].as_object_mut().unwrap().remove("peak")
    )))
    .contains("missing field `peak`"));
    assert!(msg(src.checkpoint("b").unwrap()).contains("already registered"));
    // And the good one still restores (re-marked to the target's own ES mark).
    target.restore(&ck, None).unwrap();
    let s = target.snapshot("a").unwrap();
    assert!(s
        .positions
        .iter()
        .any(|p| p.symbol == "ES" && p.mark == Some(1.5)));
    let mut fresh = Engine::default();
    fresh.restore(&ck, None).unwrap();
    assert_eq!(fresh.snapshot("a").unwrap(), src.snapshot("a").unwrap());
}

#[test]
fn checkpoint_of_an_unknown_algorithm() {
    let e = engine_with(1);
    assert_eq!(
        e.checkpoint("zz").unwrap_err().reason(),
        "unknown_algorithm"
    );
}

#[test]
fn a_state_json_cannot_carry_is_never_created() {
    // Even with the sanity bounds opened up, an event that would overflow is refused and the
    // state keeps checkpointing.
    let mut e = Engine::with_guards(Guards {
        max_price: f64::MAX,
        max_quantity: f64::MAX,
        max_notional: f64::MAX,
        ..Guards::default()
    })
    .unwrap();
    e.register(configs().remove(0)).unwrap();
    let mut out = Vec::new();
    e.fill("a", "ES", 1e200, 1e100, 0.0, T0, &mut out).unwrap();
    let before = e.checkpoint("a").unwrap();
    // unrealized = 1e200 * 1e300 = inf
    let err = e.quote("ES", 1e300, 1e300, T0 + 1, &mut out).unwrap_err();
    assert_eq!(err.reason(), "overflow", "{err}");
    assert_eq!(e.checkpoint("a").unwrap(), before);
}

// ---- restoring into a live engine -------------------------------------------------------------

#[test]
fn the_clock_only_moves_forward() {
    let mut src = engine_with(1);
    let mut out = Vec::new();
    src.fill("a", "ES", 1.0, 100.0, 0.0, T0, &mut out).unwrap();
    let ck = src.checkpoint("a").unwrap();
    let mut later = Engine::default();
    later.mark("NQ", 5.0, T0 + 100 * SEC, &mut out).unwrap();
    later.restore(&ck, None).unwrap();
    assert_eq!(later.now(), Some(T0 + 100 * SEC));
    let mut fresh = Engine::default();
    fresh.restore(&ck, None).unwrap();
    assert_eq!(fresh.now(), Some(T0));
    // An event more than the tolerance behind the restored clock is refused, as in the original.
    let err = fresh.mark("ES", 1.0, T0 - 6 * SEC, &mut out).unwrap_err();
    assert_eq!(err.reason(), "out_of_order");
}

#[test]
fn a_symbol_the_engine_already_marks_keeps_its_mark_and_repositions_the_algorithm() {
    let mut src = engine_with(1);
    let mut out = Vec::new();
    src.fill("a", "ES", 10.0, 100.0, 0.0, T0, &mut out).unwrap();
    src.fill("a", "CL", -5.0, 70.0, 0.0, T0, &mut out).unwrap();
    let ck = src.checkpoint("a").unwrap();

    let mut live = engine_with(2);
    live.unregister("a").unwrap();
    live.quote("ES", 101.0, 101.0, T0 + SEC, &mut out).unwrap();
    live.fill("b", "ES", 1.0, 101.0, 0.0, T0 + SEC, &mut out)
        .unwrap();
    let b_before = live.snapshot("b").unwrap();
    live.restore(&ck, None).unwrap();
    let s = live.snapshot("a").unwrap();
    let es = s.positions.iter().find(|p| p.symbol == "ES").unwrap();
    assert_eq!(es.mark, Some(101.0), "the engine's mark is kept");
    assert_eq!(es.unrealized_pnl, 10.0);
    let cl = s.positions.iter().find(|p| p.symbol == "CL").unwrap();
    assert_eq!(
        cl.mark,
        Some(70.0),
        "a symbol the engine had no mark for takes the saved one"
    );
    assert_eq!(live.last_quote_ts("CL"), None);
    assert_eq!(s.equity, 10_010.0);
    assert_eq!(s.peak_equity, 10_010.0);
    assert_eq!(
        live.snapshot("b").unwrap(),
        b_before,
        "other algorithms are untouched"
    );
    // Both holders of ES follow the next quote.
    live.quote("ES", 99.0, 99.0, T0 + 2 * SEC, &mut out)
        .unwrap();
    assert_eq!(live.snapshot("a").unwrap().unrealized_pnl, -10.0);
    assert_eq!(live.snapshot("b").unwrap().unrealized_pnl, -2.0);
}

#[test]
fn unregister_then_restore_reuses_the_slot() {
    let mut e = busy_engine();
    let ck = e.checkpoint("a").unwrap();
    let before = e.snapshot("a").unwrap();
    e.unregister("a").unwrap();
    e.restore(&ck, None).unwrap();
    assert_eq!(e.snapshot("a").unwrap(), before);
    let mut out = Vec::new();
    e.quote("ES", 1.0, 1.0, e.now().unwrap(), &mut out).unwrap();
    let after = e.snapshot("a").unwrap();
    if let Some(p) = after
        .positions
        .iter()
        .find(|p| p.symbol == "ES" && p.qty != 0.0)
    {
        assert_eq!(
            p.mark,
            Some(1.0),
            "the restored position is linked to its symbol"
        );
    }
}

// ---- property -------------------------------------------------------------------------------------

fn step() -> impl Strategy<Value = Step> {
    let dt = prop_oneof![
        6 => 0i64..3 * SEC,
        2 => Just(0i64),
        1 => -8 * SEC..0,
        1 => (1i64..40).prop_map(|h| h * 3_600 * SEC),
    ];
    let algo = 0..2usize;
    let sym = 0..4usize;
    let price = (1u32..400).prop_map(|p| p as f64 * 0.5);
    let ev = prop_oneof![
        4 => (algo.clone(), sym.clone(), -20i32..20, price.clone(), 0u32..30).prop_filter_map(
            "non-zero qty",
            |(algo, sym, q, price, f)| (q != 0).then_some(Ev::Fill {
                algo, sym, qty: q as f64 * 0.5, price, fee: f as f64 * 0.01,
            })
        ),
        3 => (sym.clone(), price.clone()).prop_map(|(sym, p)| Ev::Quote { sym, bid: p, ask: p + 0.25 }),
        1 => (sym, price).prop_map(|(sym, price)| Ev::Mark { sym, price }),
        4 => (algo.clone(), 0u8..4, 0i64..20_000).prop_map(|(algo, kind, latency_ns)| Ev::Order {
            algo, kind, latency_ns,
        }),
        1 => (algo.clone(), 1_000u32..100_000).prop_map(|(algo, c)| Ev::SetCapital {
            algo, capital: c as f64,
        }),
        1 => algo.clone().prop_map(|algo| Ev::MarkStage { algo }),
        1 => algo.prop_map(|algo| Ev::ResetBreaches { algo }),
        1 => Just(Ev::Advance),
    ];
    (dt, ev)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn restored_engines_continue_identically(
        steps in prop::collection::vec(step(), 0..160),
        split in 0.0f64..=1.0,
        algos in 1usize..=2,
    ) {
        let split = (steps.len() as f64 * split) as usize;
        check_round_trip(algos, &steps, split);
    }
}
