//! Per-event cost of the pure core (no Python): `cargo bench -p rampart-core --bench engine`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use rampart_core::{AlgoConfig, Engine, LimitSpec, OrderEvent};

const T0: i64 = 1_764_028_800_000_000_000;

fn engine_with(algos: usize) -> Engine {
    let mut e = Engine::default();
    let mut out = Vec::new();
    for i in 0..algos {
        let mut c = AlgoConfig::new(format!("algo-{i}"), "v1", 1_000_000.0);
        c.return_interval_ns = 1_000_000_000;
        c.limits.daily_loss = Some(LimitSpec::new(0.5));
        c.limits.drawdown = Some(LimitSpec::new(0.5));
        c.limits.error_rate = Some(LimitSpec::new(0.9));
        c.limits.latency_ns = Some(LimitSpec::new(1e9));
        e.register(c).unwrap();
        e.fill(&format!("algo-{i}"), "ES", 10.0, 100.0, 0.1, T0, &mut out)
            .unwrap();
    }
    e
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("core");
    g.throughput(Throughput::Elements(1));

    // A quote that re-marks one algorithm's position and checks its limits.
    let mut e = engine_with(1);
    let mut out = Vec::with_capacity(8);
    let mut t = T0;
    g.bench_function("quote_one_holder", |b| {
        b.iter(|| {
            t += 1_000;
            let px = 100.0 + ((t / 1_000) % 7) as f64 * 0.01;
            e.quote(black_box("ES"), px - 0.01, px + 0.01, t, &mut out)
                .unwrap();
        })
    });

    let mut e = engine_with(1);
    let mut t = T0;
    let mut side = 1.0;
    g.bench_function("fill", |b| {
        b.iter(|| {
            t += 1_000;
            side = -side;
            e.fill(black_box("algo-0"), "ES", side, 100.0, 0.01, t, &mut out)
                .unwrap();
        })
    });

    let mut e = engine_with(1);
    let mut t = T0;
    let mut k = 0u64;
    g.bench_function("order_event", |b| {
        b.iter(|| {
            t += 1_000;
            k += 1;
            let ev = match k % 3 {
                0 => OrderEvent::Submitted,
                1 => OrderEvent::Acked {
                    latency_ns: 500_000,
                },
                _ => OrderEvent::Cancelled,
            };
            e.order(black_box("algo-0"), ev, t, &mut out).unwrap();
        })
    });

    let mut e = engine_with(1);
    let mut t = T0;
    g.bench_function("json_fill", |b| {
        b.iter_batched(
            || {
                t += 1_000;
                format!(
                    r#"{{"type":"fill","algo":"algo-0","symbol":"ES","side":"buy","qty":1,"price":100.5,"fee":0.01,"ts":{t}}}"#
                )
            },
            |msg| e.ingest_json(msg.as_bytes(), &mut out).unwrap(),
            BatchSize::SmallInput,
        )
    });
    g.finish();

    let mut g = c.benchmark_group("core_fanout");
    g.throughput(Throughput::Elements(100));
    let mut e = engine_with(100);
    let mut t = T0;
    g.bench_function("quote_100_holders", |b| {
        b.iter(|| {
            t += 1_000;
            e.quote("ES", 99.99, 100.01, t, &mut out).unwrap();
        })
    });
    g.finish();
    black_box(out);
}

criterion_group!(benches, bench);
criterion_main!(benches);
