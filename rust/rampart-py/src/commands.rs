//! The gateway's command rules (`rampart_core::commands`) for the gateway SDK
//! (`rampart.gateway.commands.CommandBook` wraps it): a command of 1,000 targets judged and
//! recorded in one call each.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedStr;
use rampart_core::commands::{Command, CommandBook, Dim, HaltCause, Kind, Status, Target};

/// What a report says of one algorithm: halted, halt cause, allocation, active, and per
/// dimension its last decision as (dimension, term, epoch).
type Report = (
    bool,
    Option<&'static str>,
    Option<f64>,
    Option<bool>,
    Vec<(&'static str, i128, i128)>,
);

/// The indices of the targets to apply, and `(index, status)` of the others.
type Judged = (Vec<usize>, Vec<(usize, &'static str)>);

fn kind(name: &str) -> PyResult<Kind> {
    Kind::parse(name).ok_or_else(|| PyValueError::new_err(format!("unknown command kind {name:?}")))
}

fn targets<'a>(
    algos: &'a [PyBackedStr],
    allocations: &Option<Vec<Option<f64>>>,
) -> PyResult<Vec<Target<'a>>> {
    match allocations {
        None => Ok(algos.iter().map(|a| (&**a, None)).collect()),
        Some(allocs) if allocs.len() == algos.len() => {
            Ok(algos.iter().zip(allocs).map(|(a, &x)| (&**a, x)).collect())
        }
        Some(allocs) => Err(PyValueError::new_err(format!(
            "{} algorithms but {} allocations",
            algos.len(),
            allocs.len()
        ))),
    }
}

#[pyclass(module = "rampart._core", name = "CommandBook")]
pub struct PyCommandBook {
    inner: CommandBook,
    apply: Vec<usize>,
    refused: Vec<(usize, Status)>,
}

#[pymethods]
impl PyCommandBook {
    #[new]
    fn new() -> Self {
        PyCommandBook {
            inner: CommandBook::new(),
            apply: Vec::new(),
            refused: Vec::new(),
        }
    }

    #[getter]
    fn version(&self) -> u64 {
        self.inner.version
    }

    #[getter]
    fn term(&self) -> i128 {
        self.inner.term
    }

    fn see_term(&mut self, term: i128) {
        self.inner.see_term(term);
    }

    fn __contains__(&self, algo: &str) -> bool {
        self.inner.control(algo).is_some()
    }

    fn halted(&self, algo: &str) -> bool {
        self.inner.control(algo).is_some_and(|c| c.halted)
    }

    /// The indices of the targets to apply now, in order, and `(index, status)` of the others.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (command_id, kind_name, term, epoch, valid_until, now, algos, allocations))]
    fn admit(
        &mut self,
        command_id: &str,
        kind_name: &str,
        term: i128,
        epoch: i128,
        valid_until: i128,
        now: i128,
        algos: Vec<PyBackedStr>,
        allocations: Option<Vec<Option<f64>>>,
    ) -> PyResult<Judged> {
        let command = Command {
            id: command_id,
            kind: kind(kind_name)?,
            term,
            epoch,
            valid_until,
        };
        let targets = targets(&algos, &allocations)?;
        self.apply.clear();
        self.refused.clear();
        self.inner
            .admit(&command, now, &targets, &mut self.apply, &mut self.refused);
        let refused = self.refused.iter().map(|&(i, s)| (i, s.name())).collect();
        Ok((std::mem::take(&mut self.apply), refused))
    }

    /// These targets of the command were applied.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (command_id, kind_name, term, epoch, algos, allocations))]
    fn applied(
        &mut self,
        command_id: &str,
        kind_name: &str,
        term: i128,
        epoch: i128,
        algos: Vec<PyBackedStr>,
        allocations: Option<Vec<Option<f64>>>,
    ) -> PyResult<()> {
        let command = Command {
            id: command_id,
            kind: kind(kind_name)?,
            term,
            epoch,
            valid_until: i128::MAX,
        };
        let targets = targets(&algos, &allocations)?;
        self.inner.applied(&command, &targets);
        Ok(())
    }

    fn halt_locally(&mut self, algo: &str, cause: &str) -> PyResult<()> {
        let cause = HaltCause::parse(cause)
            .ok_or_else(|| PyValueError::new_err(format!("unknown halt cause {cause:?}")))?;
        self.inner.halt_locally(algo, cause);
        Ok(())
    }

    fn allocate_locally(&mut self, algo: &str, allocation: f64) -> PyResult<()> {
        if !(0.0..=1.0).contains(&allocation) {
            return Err(PyValueError::new_err(format!(
                "an allocation is in [0, 1], got {allocation}"
            )));
        }
        self.inner.allocate_locally(algo, allocation);
        Ok(())
    }

    /// `None` for an algorithm no command has touched.
    fn report(&self, algo: &str) -> Option<Report> {
        let c = self.inner.control(algo)?;
        let last = Dim::ALL
            .iter()
            .filter_map(|&d| c.last[d as usize].map(|(t, e)| (d.name(), t, e)))
            .collect();
        let cause = if c.halted {
            c.halt_cause.map(HaltCause::name)
        } else {
            None
        };
        Some((c.halted, cause, c.allocation, c.active, last))
    }

    /// The (term, epoch) of the algorithm's latest halt ((0, -1): none).
    fn halt_decision(&self, algo: &str) -> (i128, i128) {
        self.inner.control(algo).map_or((0, -1), |c| c.halt)
    }
}
