//! `rampart._core`: thin PyO3 bindings over `rampart-core`.
//!
//! Every call returns `PyResult`; core errors become `rampart` exceptions here, at the edge, and a
//! panic (a bug) is caught and raised as `RampartError` rather than crossing as `PanicException`.

use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyTuple, PyType};

use rampart_core as core;
use rampart_core::{CoreError, LimitSpec, OrderEvent};

create_exception!(
    rampart._core,
    RampartError,
    PyException,
    "Root of every error raised by Rampart."
);

static CONFIG_ERROR: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static INVALID_EVENT_ERROR: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static UNKNOWN_ALGORITHM_ERROR: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static OUT_OF_ORDER_ERROR: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static DECODE_ERROR: PyOnceLock<Py<PyType>> = PyOnceLock::new();

/// Create `class name(*bases)` with a docstring, as `type(name, bases, dict)` would.
fn new_exception<'py>(
    py: Python<'py>,
    name: &str,
    doc: &str,
    bases: Bound<'py, PyTuple>,
) -> PyResult<Py<PyType>> {
    let dict = PyDict::new(py);
    dict.set_item("__doc__", doc)?;
    dict.set_item("__module__", "rampart._core")?;
    let ty = py.get_type::<PyType>().call1((name, bases, dict))?;
    Ok(ty.cast_into::<PyType>()?.unbind())
}

fn raise(py: Python<'_>, cell: &PyOnceLock<Py<PyType>>, msg: String) -> PyErr {
    match cell.get(py) {
        Some(ty) => PyErr::from_type(ty.bind(py).clone(), msg),
        None => RampartError::new_err(msg),
    }
}

/// The exception for a core error, with the error's stable code as its `reason` attribute.
fn to_py_err(py: Python<'_>, e: CoreError) -> PyErr {
    let reason = e.reason();
    let err = exception_for(py, e);
    // Setting an attribute cannot fail on a fresh exception instance; if it somehow did, the
    // exception is still raised, just without `reason`.
    let _ = err.value(py).setattr("reason", reason);
    err
}

fn exception_for(py: Python<'_>, e: CoreError) -> PyErr {
    let msg = e.to_string();
    match e {
        CoreError::Config(_) | CoreError::DuplicateAlgorithm(_) => raise(py, &CONFIG_ERROR, msg),
        CoreError::UnknownAlgorithm(_) => raise(py, &UNKNOWN_ALGORITHM_ERROR, msg),
        CoreError::OutOfOrder { .. } => raise(py, &OUT_OF_ORDER_ERROR, msg),
        CoreError::Decode(_) => raise(py, &DECODE_ERROR, msg),
        CoreError::BadPrice(_)
        | CoreError::BadQuantity(_)
        | CoreError::BadFee(_)
        | CoreError::BadLatency(_) => raise(py, &INVALID_EVENT_ERROR, msg),
    }
}

/// Run `f`, turning a core error into its exception and a panic into `RampartError`.
fn guard<T>(py: Python<'_>, f: impl FnOnce() -> Result<T, CoreError>) -> PyResult<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(to_py_err(py, e)),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(RampartError::new_err(format!(
                "internal error in the Rust core (a bug, please report it): {what}"
            )))
        }
    }
}

/// Format an option the way Python prints it (`None` or the value).
fn py_opt<T: std::fmt::Display>(v: &Option<T>) -> String {
    v.as_ref()
        .map_or_else(|| "None".to_owned(), |v| v.to_string())
}

// ---- configuration ------------------------------------------------------------------------

/// One algorithm's identity, capital, metric windows and limits (see docs/metrics.md).
#[pyclass(module = "rampart._core", name = "AlgoConfig", frozen, get_all)]
#[derive(Clone)]
struct PyAlgoConfig {
    algo_id: String,
    version: String,
    capital: f64,
    max_daily_loss: Option<f64>,
    max_drawdown: Option<f64>,
    max_error_rate: Option<f64>,
    max_latency_ns: Option<i64>,
    daily_loss_consecutive: u32,
    drawdown_consecutive: u32,
    error_rate_consecutive: u32,
    latency_consecutive: u32,
    error_window_ns: i64,
    error_min_orders: u32,
    latency_window_ns: i64,
    latency_min_samples: u32,
    return_interval_ns: i64,
    sharpe_window: usize,
    periods_per_year: f64,
    risk_free_rate: f64,
    session_offset_ns: i64,
    confidence_drawdown_ref: f64,
}

impl PyAlgoConfig {
    fn to_core(&self) -> core::AlgoConfig {
        let spec = |t: Option<f64>, n: u32| {
            t.map(|threshold| LimitSpec {
                threshold,
                consecutive: n,
            })
        };
        let mut c = core::AlgoConfig::new(self.algo_id.clone(), self.version.clone(), self.capital);
        c.limits = core::Limits {
            daily_loss: spec(self.max_daily_loss, self.daily_loss_consecutive),
            drawdown: spec(self.max_drawdown, self.drawdown_consecutive),
            error_rate: spec(self.max_error_rate, self.error_rate_consecutive),
            latency_ns: spec(
                self.max_latency_ns.map(|v| v as f64),
                self.latency_consecutive,
            ),
        };
        c.error_window_ns = self.error_window_ns;
        c.error_min_orders = self.error_min_orders;
        c.latency_window_ns = self.latency_window_ns;
        c.latency_min_samples = self.latency_min_samples;
        c.return_interval_ns = self.return_interval_ns;
        c.sharpe_window = self.sharpe_window;
        c.periods_per_year = self.periods_per_year;
        c.risk_free_rate = self.risk_free_rate;
        c.session_offset_ns = self.session_offset_ns;
        c.confidence_drawdown_ref = self.confidence_drawdown_ref;
        c
    }
}

#[pymethods]
impl PyAlgoConfig {
    #[new]
    #[pyo3(signature = (
        algo_id, version, capital, *,
        max_daily_loss=None, max_drawdown=None, max_error_rate=None, max_latency_ns=None,
        daily_loss_consecutive=1, drawdown_consecutive=1, error_rate_consecutive=1,
        latency_consecutive=1,
        error_window_ns=60_000_000_000, error_min_orders=20,
        latency_window_ns=60_000_000_000, latency_min_samples=20,
        return_interval_ns=3_600_000_000_000, sharpe_window=720, periods_per_year=None,
        risk_free_rate=0.0, session_offset_ns=0, confidence_drawdown_ref=0.10,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        algo_id: String,
        version: String,
        capital: f64,
        max_daily_loss: Option<f64>,
        max_drawdown: Option<f64>,
        max_error_rate: Option<f64>,
        max_latency_ns: Option<i64>,
        daily_loss_consecutive: u32,
        drawdown_consecutive: u32,
        error_rate_consecutive: u32,
        latency_consecutive: u32,
        error_window_ns: i64,
        error_min_orders: u32,
        latency_window_ns: i64,
        latency_min_samples: u32,
        return_interval_ns: i64,
        sharpe_window: usize,
        periods_per_year: Option<f64>,
        risk_free_rate: f64,
        session_offset_ns: i64,
        confidence_drawdown_ref: f64,
    ) -> PyResult<Self> {
        if max_latency_ns.is_some_and(|v| v < 0) {
            return Err(to_py_err(
                py,
                CoreError::Config(format!(
                    "max_latency_ns must be >= 0, got {}",
                    max_latency_ns.unwrap_or_default()
                )),
            ));
        }
        let cfg = PyAlgoConfig {
            algo_id,
            version,
            capital,
            max_daily_loss,
            max_drawdown,
            max_error_rate,
            max_latency_ns,
            daily_loss_consecutive,
            drawdown_consecutive,
            error_rate_consecutive,
            latency_consecutive,
            error_window_ns,
            error_min_orders,
            latency_window_ns,
            latency_min_samples,
            return_interval_ns,
            sharpe_window,
            periods_per_year: periods_per_year.unwrap_or_else(|| {
                if return_interval_ns > 0 {
                    core::config::default_periods_per_year(return_interval_ns)
                } else {
                    f64::NAN // rejected by validate() with a message about return_interval_ns
                }
            }),
            risk_free_rate,
            session_offset_ns,
            confidence_drawdown_ref,
        };
        guard(py, || cfg.to_core().validate())?;
        Ok(cfg)
    }

    fn __repr__(&self) -> String {
        format!(
            "AlgoConfig(algo_id={:?}, version={:?}, capital={}, max_daily_loss={}, \
             max_drawdown={}, max_error_rate={}, max_latency_ns={})",
            self.algo_id,
            self.version,
            self.capital,
            py_opt(&self.max_daily_loss),
            py_opt(&self.max_drawdown),
            py_opt(&self.max_error_rate),
            py_opt(&self.max_latency_ns)
        )
    }
}

// ---- results ------------------------------------------------------------------------------

/// A limit that tripped. Returned once per trip; the limit then stays latched.
#[pyclass(module = "rampart._core", name = "Breach", frozen, get_all)]
#[derive(Clone)]
struct PyBreach {
    algo_id: String,
    kind: &'static str,
    value: f64,
    threshold: f64,
    ts: i64,
}

impl From<core::Breach> for PyBreach {
    fn from(b: core::Breach) -> Self {
        PyBreach {
            algo_id: b.algo_id,
            kind: b.kind.as_str(),
            value: b.value,
            threshold: b.threshold,
            ts: b.ts,
        }
    }
}

#[pymethods]
impl PyBreach {
    fn __repr__(&self) -> String {
        format!(
            "Breach(algo_id={:?}, kind={:?}, value={}, threshold={}, ts={})",
            self.algo_id, self.kind, self.value, self.threshold, self.ts
        )
    }

    fn __eq__(&self, other: &Self) -> bool {
        self.algo_id == other.algo_id
            && self.kind == other.kind
            && self.value.to_bits() == other.value.to_bits()
            && self.threshold.to_bits() == other.threshold.to_bits()
            && self.ts == other.ts
    }
}

#[pyclass(module = "rampart._core", name = "Position", frozen, get_all)]
#[derive(Clone)]
struct PyPosition {
    symbol: String,
    qty: f64,
    avg_cost: f64,
    mark: Option<f64>,
    unrealized_pnl: f64,
    realized_pnl: f64,
}

#[pymethods]
impl PyPosition {
    fn __repr__(&self) -> String {
        format!(
            "Position(symbol={:?}, qty={}, avg_cost={}, mark={}, unrealized_pnl={}, realized_pnl={})",
            self.symbol, self.qty, self.avg_cost, py_opt(&self.mark), self.unrealized_pnl, self.realized_pnl
        )
    }
}

/// Declares the snapshot class, its conversion from the core struct and `to_dict`, from one list
/// of field names, so the three cannot drift apart.
macro_rules! snapshot_class {
    ($($field:ident : $ty:ty),* $(,)?) => {
        /// Every metric of one algorithm at the engine clock (`ts`).
        #[pyclass(module = "rampart._core", name = "Snapshot", frozen, get_all)]
        struct PySnapshot {
            $($field: $ty,)*
            breached: Vec<&'static str>,
            positions: Vec<PyPosition>,
        }

        impl From<core::Snapshot> for PySnapshot {
            fn from(s: core::Snapshot) -> Self {
                PySnapshot {
                    $($field: s.$field,)*
                    breached: s.breached.iter().map(|k| k.as_str()).collect(),
                    positions: s
                        .positions
                        .into_iter()
                        .map(|p| PyPosition {
                            symbol: p.symbol,
                            qty: p.qty,
                            avg_cost: p.avg_cost,
                            mark: p.mark,
                            unrealized_pnl: p.unrealized_pnl,
                            realized_pnl: p.realized_pnl,
                        })
                        .collect(),
                }
            }
        }

        #[pymethods]
        impl PySnapshot {
            /// Plain, JSON-serialisable dict of every field (positions as dicts).
            fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
                let d = PyDict::new(py);
                $(d.set_item(stringify!($field), self.$field.clone())?;)*
                d.set_item("breached", self.breached.clone())?;
                let positions = self
                    .positions
                    .iter()
                    .map(|p| {
                        let pd = PyDict::new(py);
                        pd.set_item("symbol", &p.symbol)?;
                        pd.set_item("qty", p.qty)?;
                        pd.set_item("avg_cost", p.avg_cost)?;
                        pd.set_item("mark", p.mark)?;
                        pd.set_item("unrealized_pnl", p.unrealized_pnl)?;
                        pd.set_item("realized_pnl", p.realized_pnl)?;
                        Ok(pd)
                    })
                    .collect::<PyResult<Vec<_>>>()?;
                d.set_item("positions", positions)?;
                Ok(d)
            }

            fn __repr__(&self) -> String {
                format!(
                    "Snapshot(algo_id={:?}, version={:?}, ts={}, equity={}, drawdown={}, daily_pnl={}, sharpe={}, trades={}, breached={:?})",
                    self.algo_id, self.version, py_opt(&self.ts), self.equity, self.drawdown,
                    self.daily_pnl, py_opt(&self.sharpe), self.trades, self.breached
                )
            }
        }
    };
}

snapshot_class! {
    algo_id: String,
    version: String,
    ts: Option<i64>,
    capital: f64,
    equity: f64,
    realized_pnl: f64,
    unrealized_pnl: f64,
    fees: f64,
    peak_equity: f64,
    drawdown: f64,
    max_drawdown: f64,
    daily_pnl: f64,
    session_start_equity: f64,
    stage_pnl: f64,
    returns_count: usize,
    sharpe: Option<f64>,
    trades: u64,
    wins: u64,
    win_rate: Option<f64>,
    fills: u64,
    orders_in_window: u64,
    rejects_in_window: u64,
    error_rate: Option<f64>,
    acks_in_window: u64,
    latency_p50_ns: Option<u64>,
    latency_p99_ns: Option<u64>,
    orders_submitted_total: u64,
    orders_rejected_total: u64,
    orders_acked_total: u64,
    orders_cancelled_total: u64,
    last_fill_ts: Option<i64>,
    last_order_ts: Option<i64>,
    last_event_ts: Option<i64>,
    confidence: f64,
}

/// Outcome of a batch: breaches that tripped, and the events that were rejected.
#[pyclass(module = "rampart._core", name = "BatchResult", frozen, get_all)]
struct PyBatchResult {
    breaches: Vec<PyBreach>,
    accepted: usize,
    errors: Vec<(usize, &'static str, String)>,
}

#[pymethods]
impl PyBatchResult {
    fn __repr__(&self) -> String {
        format!(
            "BatchResult(accepted={}, breaches={}, errors={})",
            self.accepted,
            self.breaches.len(),
            self.errors.len()
        )
    }
}

// ---- the engine ---------------------------------------------------------------------------

/// The per-algorithm risk engine. Per-event calls return `None` unless a limit trips.
#[pyclass(module = "rampart._core", name = "Engine")]
struct PyEngine {
    inner: core::Engine,
    out: Vec<core::Breach>,
}

impl PyEngine {
    /// Run one event; `None` when nothing tripped, else the breaches.
    #[inline]
    fn event(
        &mut self,
        py: Python<'_>,
        f: impl FnOnce(&mut core::Engine, &mut Vec<core::Breach>) -> Result<(), CoreError>,
    ) -> PyResult<Option<Vec<PyBreach>>> {
        let (inner, out) = (&mut self.inner, &mut self.out);
        out.clear();
        guard(py, || f(inner, out))?;
        Ok(if self.out.is_empty() {
            None
        } else {
            Some(self.out.drain(..).map(PyBreach::from).collect())
        })
    }

    fn batch<I>(
        &mut self,
        py: Python<'_>,
        items: I,
        mut f: impl FnMut(&mut core::Engine, I::Item, &mut Vec<core::Breach>) -> Result<(), CoreError>,
    ) -> PyResult<PyBatchResult>
    where
        I: IntoIterator,
    {
        let (inner, out) = (&mut self.inner, &mut self.out);
        out.clear();
        let mut errors = Vec::new();
        let mut accepted = 0usize;
        guard(py, || {
            for (i, item) in items.into_iter().enumerate() {
                match f(inner, item, out) {
                    Ok(()) => accepted += 1,
                    Err(e) => errors.push((i, e.reason(), e.to_string())),
                }
            }
            Ok(())
        })?;
        Ok(PyBatchResult {
            breaches: self.out.drain(..).map(PyBreach::from).collect(),
            accepted,
            errors,
        })
    }
}

#[pymethods]
impl PyEngine {
    #[new]
    #[pyo3(signature = (*, time_tolerance_ns=5_000_000_000))]
    fn new(py: Python<'_>, time_tolerance_ns: i64) -> PyResult<Self> {
        let inner = guard(py, || core::Engine::new(time_tolerance_ns))?;
        Ok(PyEngine {
            inner,
            out: Vec::with_capacity(8),
        })
    }

    #[getter]
    fn now(&self) -> Option<i64> {
        self.inner.now()
    }

    #[getter]
    fn time_tolerance_ns(&self) -> i64 {
        self.inner.time_tolerance_ns()
    }

    fn register(&mut self, py: Python<'_>, config: &PyAlgoConfig) -> PyResult<()> {
        guard(py, || self.inner.register(config.to_core()))
    }

    fn unregister(&mut self, py: Python<'_>, algo_id: &str) -> PyResult<()> {
        guard(py, || self.inner.unregister(algo_id))
    }

    fn algorithms(&self) -> Vec<String> {
        self.inner.algorithms()
    }

    fn __contains__(&self, algo_id: &str) -> bool {
        self.inner.contains(algo_id)
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    fn quote(
        &mut self,
        py: Python<'_>,
        symbol: &str,
        bid: f64,
        ask: f64,
        ts: i64,
    ) -> PyResult<Option<Vec<PyBreach>>> {
        self.event(py, |e, out| e.quote(symbol, bid, ask, ts, out))
    }

    fn mark(
        &mut self,
        py: Python<'_>,
        symbol: &str,
        price: f64,
        ts: i64,
    ) -> PyResult<Option<Vec<PyBreach>>> {
        self.event(py, |e, out| e.mark(symbol, price, ts, out))
    }

    #[allow(clippy::too_many_arguments)]
    fn fill(
        &mut self,
        py: Python<'_>,
        algo_id: &str,
        symbol: &str,
        qty: f64,
        price: f64,
        fee: f64,
        ts: i64,
    ) -> PyResult<Option<Vec<PyBreach>>> {
        self.event(py, |e, out| {
            e.fill(algo_id, symbol, qty, price, fee, ts, out)
        })
    }

    fn order_submitted(
        &mut self,
        py: Python<'_>,
        algo_id: &str,
        ts: i64,
    ) -> PyResult<Option<Vec<PyBreach>>> {
        self.event(py, |e, out| {
            e.order(algo_id, OrderEvent::Submitted, ts, out)
        })
    }

    fn order_acked(
        &mut self,
        py: Python<'_>,
        algo_id: &str,
        latency_ns: i64,
        ts: i64,
    ) -> PyResult<Option<Vec<PyBreach>>> {
        self.event(py, |e, out| {
            e.order(algo_id, OrderEvent::Acked { latency_ns }, ts, out)
        })
    }

    fn order_rejected(
        &mut self,
        py: Python<'_>,
        algo_id: &str,
        ts: i64,
    ) -> PyResult<Option<Vec<PyBreach>>> {
        self.event(py, |e, out| e.order(algo_id, OrderEvent::Rejected, ts, out))
    }

    fn order_cancelled(
        &mut self,
        py: Python<'_>,
        algo_id: &str,
        ts: i64,
    ) -> PyResult<Option<Vec<PyBreach>>> {
        self.event(py, |e, out| {
            e.order(algo_id, OrderEvent::Cancelled, ts, out)
        })
    }

    fn quotes(
        &mut self,
        py: Python<'_>,
        symbols: Vec<String>,
        bids: Vec<f64>,
        asks: Vec<f64>,
        ts: Vec<i64>,
    ) -> PyResult<PyBatchResult> {
        let n = symbols.len();
        if bids.len() != n || asks.len() != n || ts.len() != n {
            return Err(PyValueError::new_err(format!(
                "quotes: symbols, bids, asks and ts must have the same length, got {}, {}, {}, {}",
                n,
                bids.len(),
                asks.len(),
                ts.len()
            )));
        }
        let rows = symbols
            .iter()
            .zip(bids)
            .zip(asks)
            .zip(ts)
            .map(|(((s, b), a), t)| (s, b, a, t));
        self.batch(py, rows, |e, (s, b, a, t), out| e.quote(s, b, a, t, out))
    }

    fn ingest_json(&mut self, py: Python<'_>, data: &[u8]) -> PyResult<Option<Vec<PyBreach>>> {
        self.event(py, |e, out| e.ingest_json(data, out))
    }

    fn ingest_json_batch(
        &mut self,
        py: Python<'_>,
        messages: &Bound<'_, PyAny>,
    ) -> PyResult<PyBatchResult> {
        let mut items: Vec<Bound<'_, PyBytes>> = Vec::new();
        for (i, m) in messages.try_iter()?.enumerate() {
            let m = m?;
            let b = m.cast_into::<PyBytes>().map_err(|e| {
                PyValueError::new_err(format!(
                    "ingest_json_batch: message {i} must be bytes, got {}",
                    e.into_inner()
                        .get_type()
                        .name()
                        .map(|n| n.to_string())
                        .unwrap_or_default()
                ))
            })?;
            items.push(b);
        }
        self.batch(py, items.iter(), |e, b, out| {
            e.ingest_json(b.as_bytes(), out)
        })
    }

    fn set_capital(
        &mut self,
        py: Python<'_>,
        algo_id: &str,
        capital: f64,
        ts: i64,
    ) -> PyResult<Option<Vec<PyBreach>>> {
        self.event(py, |e, out| e.set_capital(algo_id, capital, ts, out))
    }

    fn mark_stage(&mut self, py: Python<'_>, algo_id: &str) -> PyResult<()> {
        guard(py, || self.inner.mark_stage(algo_id))
    }

    fn reset_breaches(&mut self, py: Python<'_>, algo_id: &str) -> PyResult<()> {
        guard(py, || self.inner.reset_breaches(algo_id))
    }

    fn advance(&mut self, py: Python<'_>, ts: i64) -> PyResult<()> {
        guard(py, || self.inner.advance(ts))
    }

    fn snapshot(&mut self, py: Python<'_>, algo_id: &str) -> PyResult<PySnapshot> {
        guard(py, || self.inner.snapshot(algo_id)).map(PySnapshot::from)
    }

    fn snapshots(&mut self, py: Python<'_>) -> PyResult<Vec<PySnapshot>> {
        let ids = self.inner.algorithms();
        ids.iter()
            .map(|id| guard(py, || self.inner.snapshot(id)).map(PySnapshot::from))
            .collect()
    }

    fn last_quote_ts(&self, symbol: &str) -> Option<i64> {
        self.inner.last_quote_ts(symbol)
    }

    /// The returns in the Sharpe window, oldest first.
    fn returns(&self, py: Python<'_>, algo_id: &str) -> PyResult<Vec<f64>> {
        guard(py, || self.inner.returns(algo_id))
    }

    /// The algorithm's complete state as a versioned JSON checkpoint (docs/metrics.md).
    fn checkpoint<'py>(&self, py: Python<'py>, algo_id: &str) -> PyResult<Bound<'py, PyBytes>> {
        let data = guard(py, || self.inner.checkpoint(algo_id))?;
        Ok(PyBytes::new(py, &data))
    }

    /// Register an algorithm from a checkpoint, in exactly the state it was saved in.
    fn restore(&mut self, py: Python<'_>, data: &[u8]) -> PyResult<()> {
        guard(py, || self.inner.restore(data))
    }

    fn __repr__(&self) -> String {
        format!(
            "Engine(algorithms={}, now={})",
            self.inner.len(),
            py_opt(&self.inner.now())
        )
    }
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    let root = py.get_type::<RampartError>();
    let value_error = py.get_type::<PyValueError>();
    m.add("RampartError", &root)?;

    let config = new_exception(
        py,
        "ConfigError",
        "An algorithm configuration is invalid, or the algorithm is already registered.",
        PyTuple::new(py, [root.clone(), value_error.clone()])?,
    )?;
    let invalid = new_exception(
        py,
        "InvalidEventError",
        "An event was rejected; the engine state is unchanged.",
        PyTuple::new(py, [root.clone(), value_error.clone()])?,
    )?;
    let sub = |name: &str, doc: &str| {
        new_exception(py, name, doc, PyTuple::new(py, [invalid.bind(py).clone()])?)
    };
    let unknown = sub(
        "UnknownAlgorithmError",
        "The event names an algorithm that is not registered.",
    )?;
    let out_of_order = sub(
        "OutOfOrderError",
        "The event's timestamp is further behind the engine clock than the tolerance allows.",
    )?;
    let decode = sub(
        "DecodeError",
        "Raw message bytes could not be decoded into an event.",
    )?;
    for (name, ty, cell) in [
        ("ConfigError", config, &CONFIG_ERROR),
        ("InvalidEventError", invalid, &INVALID_EVENT_ERROR),
        ("UnknownAlgorithmError", unknown, &UNKNOWN_ALGORITHM_ERROR),
        ("OutOfOrderError", out_of_order, &OUT_OF_ORDER_ERROR),
        ("DecodeError", decode, &DECODE_ERROR),
    ] {
        m.add(name, ty.bind(py))?;
        let _ = cell.set(py, ty);
    }

    m.add_class::<PyAlgoConfig>()?;
    m.add_class::<PyBreach>()?;
    m.add_class::<PyPosition>()?;
    m.add_class::<PySnapshot>()?;
    m.add_class::<PyBatchResult>()?;
    m.add_class::<PyEngine>()?;
    Ok(())
}
