//! `rampart._core`: thin PyO3 bindings over `rampart-core`.
//!
//! Every call returns `PyResult`; core errors become `rampart` exceptions here, at the edge, and a
//! panic (a bug) is caught and raised as `RampartError` rather than crossing as `PanicException`.

use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::buffer::PyBuffer;
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyTuple, PyType};

mod commands;
mod signing;
mod wire;

use rampart_core as core;
use rampart_core::{CoreError, Guards, LimitSpec, OrderEvent, ReturnSampling};

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
        CoreError::BadTimestamp(_)
        | CoreError::Future(_)
        | CoreError::BadPrice(_)
        | CoreError::BadQuantity(_)
        | CoreError::BadNotional(_)
        | CoreError::BadFee(_)
        | CoreError::BadLatency(_)
        | CoreError::PriceBand(_)
        | CoreError::Overflow(_)
        | CoreError::WrongSubject(_)
        | CoreError::WrongGateway(_) => raise(py, &INVALID_EVENT_ERROR, msg),
    }
}

// ---- argument conversion --------------------------------------------------------------------
// What Python passes is converted here, and a value that does not convert is refused with
// Rampart's exception and reason (never a bare OverflowError, TypeError or UnicodeEncodeError).

fn describe(obj: &Bound<'_, PyAny>) -> String {
    let text = obj
        .repr()
        .map(|r| r.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "<unprintable>".into());
    let short: String = text.chars().take(80).collect();
    let ty = obj
        .get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_default();
    format!("{short} ({ty})")
}

/// An event time: an integer count of ns since the epoch that fits 64 bits (`bad_timestamp`).
struct Ts(i64);

impl<'a, 'py> FromPyObject<'a, 'py> for Ts {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        obj.extract::<i64>().map(Ts).map_err(|_| {
            to_py_err(
                obj.py(),
                CoreError::BadTimestamp(format!(
                    "a timestamp must be an integer count of ns since the epoch within 64 bits, \
                     got {}",
                    describe(&obj)
                )),
            )
        })
    }
}

/// An id or symbol: a str that is valid Unicode text (`decode`: no lone surrogates).
struct Text<'a>(&'a str);

impl<'a, 'py> FromPyObject<'a, 'py> for Text<'a> {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        <&'a str as FromPyObject<'a, 'py>>::extract(obj)
            .map(Text)
            .map_err(|e| {
                let py = obj.py();
                to_py_err(
                    py,
                    CoreError::Decode(format!(
                        "an id or symbol must be a str of valid Unicode text, got {}: {}",
                        describe(&obj),
                        e.value(py)
                    )),
                )
            })
    }
}

/// A number (`decode` when it is not one, or out of the double range).
struct Num(f64);

impl<'a, 'py> FromPyObject<'a, 'py> for Num {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        obj.extract::<f64>().map(Num).map_err(|_| {
            to_py_err(
                obj.py(),
                CoreError::Decode(format!("expected a number, got {}", describe(&obj))),
            )
        })
    }
}

/// A configuration value of type `T` (`ConfigError` when it does not convert).
struct Cfg<T>(T);

impl<'a, 'py, T: FromPyObject<'a, 'py>> FromPyObject<'a, 'py> for Cfg<T> {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        T::extract(obj).map(Cfg).map_err(|e| {
            let py = obj.py();
            to_py_err(
                py,
                CoreError::Config(format!(
                    "{} is not a valid value here: {}",
                    describe(&obj),
                    e.into().value(py)
                )),
            )
        })
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
    return_sampling: &'static str,
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
        c.return_sampling = if self.return_sampling == "session" {
            ReturnSampling::Session
        } else {
            ReturnSampling::Interval
        };
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
        max_daily_loss=Cfg(None), max_drawdown=Cfg(None), max_error_rate=Cfg(None), max_latency_ns=Cfg(None),
        daily_loss_consecutive=Cfg(1), drawdown_consecutive=Cfg(1), error_rate_consecutive=Cfg(1),
        latency_consecutive=Cfg(1),
        error_window_ns=Cfg(60_000_000_000), error_min_orders=Cfg(20),
        latency_window_ns=Cfg(60_000_000_000), latency_min_samples=Cfg(20),
        return_interval_ns=Cfg(3_600_000_000_000), return_sampling=Cfg("interval".to_owned()), sharpe_window=Cfg(720),
        periods_per_year=Cfg(None), risk_free_rate=Cfg(0.0), session_offset_ns=Cfg(0),
        confidence_drawdown_ref=Cfg(0.10),
    ), text_signature = "(algo_id, version, capital, *, max_daily_loss=None, max_drawdown=None, \
        max_error_rate=None, max_latency_ns=None, daily_loss_consecutive=1, \
        drawdown_consecutive=1, error_rate_consecutive=1, latency_consecutive=1, \
        error_window_ns=60000000000, error_min_orders=20, latency_window_ns=60000000000, \
        latency_min_samples=20, return_interval_ns=3600000000000, return_sampling='interval', \
        sharpe_window=720, periods_per_year=None, risk_free_rate=0.0, session_offset_ns=0, \
        confidence_drawdown_ref=0.1)")]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        algo_id: Cfg<String>,
        version: Cfg<String>,
        capital: Cfg<f64>,
        max_daily_loss: Cfg<Option<f64>>,
        max_drawdown: Cfg<Option<f64>>,
        max_error_rate: Cfg<Option<f64>>,
        max_latency_ns: Cfg<Option<i64>>,
        daily_loss_consecutive: Cfg<u32>,
        drawdown_consecutive: Cfg<u32>,
        error_rate_consecutive: Cfg<u32>,
        latency_consecutive: Cfg<u32>,
        error_window_ns: Cfg<i64>,
        error_min_orders: Cfg<u32>,
        latency_window_ns: Cfg<i64>,
        latency_min_samples: Cfg<u32>,
        return_interval_ns: Cfg<i64>,
        return_sampling: Cfg<String>,
        sharpe_window: Cfg<usize>,
        periods_per_year: Cfg<Option<f64>>,
        risk_free_rate: Cfg<f64>,
        session_offset_ns: Cfg<i64>,
        confidence_drawdown_ref: Cfg<f64>,
    ) -> PyResult<Self> {
        let max_latency_ns = max_latency_ns.0;
        if max_latency_ns.is_some_and(|v| v < 0) {
            return Err(to_py_err(
                py,
                CoreError::Config(format!(
                    "max_latency_ns must be >= 0, got {}",
                    max_latency_ns.unwrap_or_default()
                )),
            ));
        }
        let return_sampling = match return_sampling.0.as_str() {
            "interval" => ReturnSampling::Interval,
            "session" => ReturnSampling::Session,
            other => {
                return Err(to_py_err(
                    py,
                    CoreError::Config(format!(
                        "return_sampling must be \"interval\" or \"session\", got {other:?}"
                    )),
                ))
            }
        };
        let return_interval_ns = return_interval_ns.0;
        let cfg = PyAlgoConfig {
            algo_id: algo_id.0,
            version: version.0,
            capital: capital.0,
            max_daily_loss: max_daily_loss.0,
            max_drawdown: max_drawdown.0,
            max_error_rate: max_error_rate.0,
            max_latency_ns,
            daily_loss_consecutive: daily_loss_consecutive.0,
            drawdown_consecutive: drawdown_consecutive.0,
            error_rate_consecutive: error_rate_consecutive.0,
            latency_consecutive: latency_consecutive.0,
            error_window_ns: error_window_ns.0,
            error_min_orders: error_min_orders.0,
            latency_window_ns: latency_window_ns.0,
            latency_min_samples: latency_min_samples.0,
            return_interval_ns,
            return_sampling: return_sampling.as_str(),
            sharpe_window: sharpe_window.0,
            periods_per_year: periods_per_year.0.unwrap_or_else(|| {
                if return_sampling == ReturnSampling::Session {
                    core::config::SESSIONS_PER_YEAR
                } else if return_interval_ns > 0 {
                    core::config::default_periods_per_year(return_interval_ns)
                } else {
                    f64::NAN // rejected by validate() with a message about return_interval_ns
                }
            }),
            risk_free_rate: risk_free_rate.0,
            session_offset_ns: session_offset_ns.0,
            confidence_drawdown_ref: confidence_drawdown_ref.0,
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

/// `obj` as a buffer of `T`, or a `TypeError` naming the column and the type it must have.
fn buffer<T: pyo3::buffer::Element>(
    obj: &Bound<'_, PyAny>,
    name: &str,
    want: &str,
) -> PyResult<PyBuffer<T>> {
    PyBuffer::<T>::get(obj).map_err(|e| {
        pyo3::exceptions::PyTypeError::new_err(format!(
            "quote_columns: {name} must be a buffer of {want}, e.g. a numpy array of that dtype \
             ({e})"
        ))
    })
}

/// A buffer's items in place (C-contiguous), or a `ValueError` naming the column.
fn column<'a, T: pyo3::buffer::Element>(
    py: Python<'a>,
    buf: &'a PyBuffer<T>,
    name: &str,
) -> PyResult<&'a [pyo3::buffer::ReadOnlyCell<T>]> {
    buf.as_slice(py).ok_or_else(|| {
        PyValueError::new_err(format!(
            "quote_columns: {name} must be a C-contiguous buffer (numpy.ascontiguousarray)"
        ))
    })
}

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
    #[pyo3(signature = (
        *, time_tolerance_ns=Cfg(5_000_000_000), max_future_ns=Cfg(None), max_jump_ns=Cfg(None),
        min_ts_ns=Cfg(core::guards::DEFAULT_MIN_TS), max_ts_ns=Cfg(core::guards::MAX_TS),
        max_price=Cfg(1e9), max_quantity=Cfg(1e12), max_notional=Cfg(1e13), price_band=Cfg(None),
        price_band_consecutive=Cfg(3), subject_prefix=Cfg("rampart".to_owned()),
    ), text_signature = "(*, time_tolerance_ns=5000000000, max_future_ns=None, \
        max_jump_ns=None, min_ts_ns=315532800000000000, max_ts_ns=7258118400000000000, \
        max_price=1000000000.0, max_quantity=1000000000000.0, max_notional=10000000000000.0, \
        price_band=None, price_band_consecutive=3, subject_prefix='rampart')")]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        time_tolerance_ns: Cfg<i64>,
        max_future_ns: Cfg<Option<i64>>,
        max_jump_ns: Cfg<Option<i64>>,
        min_ts_ns: Cfg<i64>,
        max_ts_ns: Cfg<i64>,
        max_price: Cfg<f64>,
        max_quantity: Cfg<f64>,
        max_notional: Cfg<f64>,
        price_band: Cfg<Option<f64>>,
        price_band_consecutive: Cfg<u32>,
        subject_prefix: Cfg<String>,
    ) -> PyResult<Self> {
        let guards = Guards {
            time_tolerance_ns: time_tolerance_ns.0,
            max_future_ns: max_future_ns.0,
            max_jump_ns: max_jump_ns.0,
            min_ts: min_ts_ns.0,
            max_ts: max_ts_ns.0,
            max_price: max_price.0,
            max_quantity: max_quantity.0,
            max_notional: max_notional.0,
            price_band: price_band.0,
            price_band_consecutive: price_band_consecutive.0,
        };
        let inner = guard(py, || {
            let mut e = core::Engine::with_guards(guards)?;
            e.set_subject_prefix(&subject_prefix.0)?;
            Ok(e)
        })?;
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

    #[getter]
    fn max_future_ns(&self) -> Option<i64> {
        self.inner.guards().max_future_ns
    }

    /// The latest wall-clock reading given (`set_wall_clock`, `ingest_msg`).
    #[getter]
    fn wall_clock(&self) -> Option<i64> {
        self.inner.wall_clock()
    }

    /// The latest event time the engine accepts now (`None`: unbounded).
    #[getter]
    fn horizon(&self) -> Option<i64> {
        self.inner.horizon()
    }

    fn set_wall_clock(&mut self, wall_ns: Ts) {
        self.inner.set_wall_clock(wall_ns.0);
    }

    fn set_gateway(
        &mut self,
        py: Python<'_>,
        algo_id: Text<'_>,
        gateway: Text<'_>,
    ) -> PyResult<()> {
        guard(py, || self.inner.set_gateway(algo_id.0, gateway.0))
    }

    fn set_price_band(
        &mut self,
        py: Python<'_>,
        symbol: Text<'_>,
        band: Cfg<Option<f64>>,
    ) -> PyResult<()> {
        guard(py, || self.inner.set_price_band(symbol.0, band.0))
    }

    fn register(&mut self, py: Python<'_>, config: &PyAlgoConfig) -> PyResult<()> {
        guard(py, || self.inner.register(config.to_core()))
    }

    fn unregister(&mut self, py: Python<'_>, algo_id: Text<'_>) -> PyResult<()> {
        guard(py, || self.inner.unregister(algo_id.0))
    }

    fn algorithms(&self) -> Vec<String> {
        self.inner.algorithms()
    }

    fn __contains__(&self, algo_id: &Bound<'_, PyAny>) -> bool {
        algo_id
            .extract::<&str>()
            .is_ok_and(|id| self.inner.contains(id))
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    fn quote(
        &mut self,
        py: Python<'_>,
        symbol: Text<'_>,
        bid: Num,
        ask: Num,
        ts: Ts,
    ) -> PyResult<Option<Vec<PyBreach>>> {
        self.event(py, |e, out| e.quote(symbol.0, bid.0, ask.0, ts.0, out))
    }

    fn mark(
        &mut self,
        py: Python<'_>,
        symbol: Text<'_>,
        price: Num,
        ts: Ts,
    ) -> PyResult<Option<Vec<PyBreach>>> {
        self.event(py, |e, out| e.mark(symbol.0, price.0, ts.0, out))
    }

    #[allow(clippy::too_many_arguments)]
    fn fill(
        &mut self,
        py: Python<'_>,
        algo_id: Text<'_>,
        symbol: Text<'_>,
        qty: Num,
        price: Num,
        fee: Num,
        ts: Ts,
    ) -> PyResult<Option<Vec<PyBreach>>> {
        self.event(py, |e, out| {
            e.fill(algo_id.0, symbol.0, qty.0, price.0, fee.0, ts.0, out)
        })
    }

    fn order_submitted(
        &mut self,
        py: Python<'_>,
        algo_id: Text<'_>,
        ts: Ts,
    ) -> PyResult<Option<Vec<PyBreach>>> {
        self.event(py, |e, out| {
            e.order(algo_id.0, OrderEvent::Submitted, ts.0, out)
        })
    }

    fn order_acked(
        &mut self,
        py: Python<'_>,
        algo_id: Text<'_>,
        latency_ns: &Bound<'_, PyAny>,
        ts: Ts,
    ) -> PyResult<Option<Vec<PyBreach>>> {
        let latency_ns = latency_ns.extract::<i64>().map_err(|_| {
            to_py_err(
                py,
                CoreError::BadLatency(format!(
                    "ack latency must be an integer count of ns within 64 bits, got {}",
                    describe(latency_ns)
                )),
            )
        })?;
        self.event(py, |e, out| {
            e.order(algo_id.0, OrderEvent::Acked { latency_ns }, ts.0, out)
        })
    }

    fn order_rejected(
        &mut self,
        py: Python<'_>,
        algo_id: Text<'_>,
        ts: Ts,
    ) -> PyResult<Option<Vec<PyBreach>>> {
        self.event(py, |e, out| {
            e.order(algo_id.0, OrderEvent::Rejected, ts.0, out)
        })
    }

    fn order_cancelled(
        &mut self,
        py: Python<'_>,
        algo_id: Text<'_>,
        ts: Ts,
    ) -> PyResult<Option<Vec<PyBreach>>> {
        self.event(py, |e, out| {
            e.order(algo_id.0, OrderEvent::Cancelled, ts.0, out)
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

    /// The ids of `symbols` for `quote_columns` (interned for the engine's life).
    fn intern(&mut self, py: Python<'_>, symbols: Vec<String>) -> PyResult<Vec<u32>> {
        guard(py, || {
            Ok(symbols.iter().map(|s| self.inner.intern(s)).collect())
        })
    }

    /// Quotes as columns of buffers (numpy arrays, `array.array`, any C-contiguous buffer):
    /// symbol ids from `intern` (uint32), bids and asks (float64), ts (int64). Each row is
    /// applied as `quote` would; the refused ones are listed in `errors` with their index.
    fn quote_columns(
        &mut self,
        py: Python<'_>,
        symbol_ids: &Bound<'_, PyAny>,
        bids: &Bound<'_, PyAny>,
        asks: &Bound<'_, PyAny>,
        ts: &Bound<'_, PyAny>,
    ) -> PyResult<PyBatchResult> {
        let symbol_ids = buffer::<u32>(symbol_ids, "symbol_ids", "uint32 (the ids from intern)")?;
        let bids = buffer::<f64>(bids, "bids", "float64")?;
        let asks = buffer::<f64>(asks, "asks", "float64")?;
        let ts = buffer::<i64>(ts, "ts", "int64 (ns since the epoch)")?;
        let n = symbol_ids.item_count();
        if bids.item_count() != n || asks.item_count() != n || ts.item_count() != n {
            return Err(PyValueError::new_err(format!(
                "quote_columns: symbol_ids, bids, asks and ts must have the same length, got \
                 {}, {}, {}, {}",
                n,
                bids.item_count(),
                asks.item_count(),
                ts.item_count()
            )));
        }
        let (ids, b, a, t) = (
            column(py, &symbol_ids, "symbol_ids")?,
            column(py, &bids, "bids")?,
            column(py, &asks, "asks")?,
            column(py, &ts, "ts")?,
        );
        let rows = (0..n).map(|i| (ids[i].get(), b[i].get(), a[i].get(), t[i].get()));
        self.batch(py, rows, |e, (s, b, a, t), out| e.quote_id(s, b, a, t, out))
    }

    /// Decode one JSON event and apply it, with no identity check (replays, tests).
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

    /// Decode one event received on `subject` and apply it if the subject may carry it; with
    /// `wall_ns`, first move the wall clock to it (live mode: the event may not be further
    /// ahead of it than `max_future_ns`). `durable`: a fill or order event from the durable
    /// events stream, applied at the clock's time when it is late rather than refused.
    #[pyo3(signature = (subject, data, wall_ns=None, *, durable=false))]
    fn ingest_msg(
        &mut self,
        py: Python<'_>,
        subject: Text<'_>,
        data: &[u8],
        wall_ns: Option<Ts>,
        durable: bool,
    ) -> PyResult<Option<Vec<PyBreach>>> {
        if let Some(w) = wall_ns {
            self.inner.set_wall_clock(w.0);
        }
        if durable {
            self.event(py, |e, out| e.ingest_durable(subject.0, data, out))
        } else {
            self.event(py, |e, out| e.ingest_msg(subject.0, data, out))
        }
    }

    /// A batch of fills and order events from the durable events stream, received on
    /// `<prefix>.batch.<gateway>` (a JSON array): each applied as `ingest_msg(..., durable=True)`
    /// would, the refused ones listed in `errors` with their index. Raises `InvalidEventError`
    /// when the batch as a whole cannot be taken (not an array, not a batch subject).
    #[pyo3(signature = (subject, data, wall_ns=None))]
    fn ingest_batch(
        &mut self,
        py: Python<'_>,
        subject: Text<'_>,
        data: &[u8],
        wall_ns: Option<Ts>,
    ) -> PyResult<PyBatchResult> {
        if let Some(w) = wall_ns {
            self.inner.set_wall_clock(w.0);
        }
        let (inner, out) = (&mut self.inner, &mut self.out);
        out.clear();
        let mut refused = Vec::new();
        let accepted = guard(py, || {
            inner.ingest_durable_batch(subject.0, data, out, &mut refused)
        })?;
        Ok(PyBatchResult {
            breaches: self.out.drain(..).map(PyBreach::from).collect(),
            accepted,
            errors: refused
                .into_iter()
                .map(|(i, e)| (i, e.reason(), e.to_string()))
                .collect(),
        })
    }

    fn set_capital(
        &mut self,
        py: Python<'_>,
        algo_id: Text<'_>,
        capital: Num,
        ts: Ts,
    ) -> PyResult<Option<Vec<PyBreach>>> {
        self.event(py, |e, out| e.set_capital(algo_id.0, capital.0, ts.0, out))
    }

    fn mark_stage(&mut self, py: Python<'_>, algo_id: Text<'_>) -> PyResult<()> {
        guard(py, || self.inner.mark_stage(algo_id.0))
    }

    fn new_measurement(&mut self, py: Python<'_>, algo_id: Text<'_>, ts: Ts) -> PyResult<()> {
        guard(py, || self.inner.new_measurement(algo_id.0, ts.0))
    }

    fn reset_breaches(&mut self, py: Python<'_>, algo_id: Text<'_>) -> PyResult<()> {
        guard(py, || self.inner.reset_breaches(algo_id.0))
    }

    fn advance(&mut self, py: Python<'_>, ts: Ts) -> PyResult<()> {
        guard(py, || self.inner.advance(ts.0))
    }

    fn snapshot(&mut self, py: Python<'_>, algo_id: Text<'_>) -> PyResult<PySnapshot> {
        guard(py, || self.inner.snapshot(algo_id.0)).map(PySnapshot::from)
    }

    fn snapshots(&mut self, py: Python<'_>) -> PyResult<Vec<PySnapshot>> {
        let ids = self.inner.algorithms();
        ids.iter()
            .map(|id| guard(py, || self.inner.snapshot(id)).map(PySnapshot::from))
            .collect()
    }

    /// `gateway`'s position report (JSON: algorithm -> symbol -> quantity) against the core's
    /// positions of the algorithms it runs: `(algo, symbol, ours, theirs)` per symbol that
    /// differs by more than `tolerance`, sorted. Raises `InvalidEventError` (`decode`,
    /// `wrong_gateway`) for a report that cannot be taken.
    fn position_drift(
        &self,
        py: Python<'_>,
        gateway: Text<'_>,
        report: &[u8],
        tolerance: f64,
    ) -> PyResult<Vec<(String, String, f64, f64)>> {
        let drift = guard(py, || {
            self.inner.position_drift(gateway.0, report, tolerance)
        })?;
        Ok(drift
            .into_iter()
            .map(|d| (d.algo, d.symbol, d.ours, d.theirs))
            .collect())
    }

    fn last_quote_ts(&self, symbol: Text<'_>) -> Option<i64> {
        self.inner.last_quote_ts(symbol.0)
    }

    /// The returns in the Sharpe window, oldest first.
    fn returns(&self, py: Python<'_>, algo_id: Text<'_>) -> PyResult<Vec<f64>> {
        guard(py, || self.inner.returns(algo_id.0))
    }

    /// The algorithm's complete state as a versioned JSON checkpoint (docs/metrics.md).
    fn checkpoint<'py>(&self, py: Python<'py>, algo_id: Text<'_>) -> PyResult<Bound<'py, PyBytes>> {
        let data = guard(py, || self.inner.checkpoint(algo_id.0))?;
        Ok(PyBytes::new(py, &data))
    }

    /// Register an algorithm from a checkpoint, in exactly the state it was saved in. A
    /// checkpoint clock beyond `max_clock` is not trusted (see the core's `restore`): the
    /// untrusted clock is returned, else `None`.
    #[pyo3(signature = (data, *, max_clock=None))]
    fn restore(
        &mut self,
        py: Python<'_>,
        data: &[u8],
        max_clock: Option<Ts>,
    ) -> PyResult<Option<i64>> {
        guard(py, || self.inner.restore(data, max_clock.map(|t| t.0)))
    }

    /// The algorithms changed since the last call (or registered, or restored); each is then
    /// marked unchanged. Reads and clock moves are not changes.
    fn take_changed(&mut self) -> Vec<String> {
        self.inner.take_changed()
    }

    /// Open positions with no quote (nor fill of their algorithm) for more than `limit_ns`
    /// before `now`: `(algo, symbol, qty, last)`.
    fn stale_holdings(&self, now: i64, limit_ns: i64) -> Vec<(String, String, f64, i64)> {
        self.inner.stale_holdings(now, limit_ns)
    }

    /// Mark every algorithm changed (after a checkpoint write failed).
    fn mark_all_changed(&mut self) {
        self.inner.mark_all_changed()
    }

    /// Every symbol's mark and the engine clock (JSON), for `restore_marks`.
    fn marks_checkpoint<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.marks_checkpoint())
    }

    /// Take the marks and clock of `marks_checkpoint` (before restoring the algorithms); the
    /// untrusted clock (beyond `max_clock`, clamped) or `None`.
    #[pyo3(signature = (data, *, max_clock=None))]
    fn restore_marks(
        &mut self,
        py: Python<'_>,
        data: &[u8],
        max_clock: Option<Ts>,
    ) -> PyResult<Option<i64>> {
        guard(py, || {
            self.inner.restore_marks(data, max_clock.map(|t| t.0))
        })
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
    m.add_class::<wire::PyWireIngest>()?;
    m.add_class::<wire::PyWireResult>()?;
    m.add_class::<wire::PyWireFrames>()?;
    m.add_class::<wire::PyFrames>()?;
    m.add_class::<commands::PyCommandBook>()?;
    m.add_class::<signing::PySigningKey>()?;
    m.add_class::<signing::PyKeyRing>()?;
    m.add_class::<signing::PyArmedHalts>()?;
    m.add_function(wrap_pyfunction!(signing::armed_commit, m)?)?;
    m.add_function(wrap_pyfunction!(signing::verify_message, m)?)?;
    m.add_function(wrap_pyfunction!(signing::is_public_key, m)?)?;
    Ok(())
}
