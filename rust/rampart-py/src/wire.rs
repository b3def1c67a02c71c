//! `WireIngest`: the bytes of a NATS connection's market-data subscription, parsed and applied
//! to the engine in one call per chunk (docs/protocol.md, "The wire path").

use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::prelude::*;
use pyo3::types::PyBytes;

use rampart_core::{Frame, FrameParser};

use crate::{PyBreach, PyEngine, Ts};

/// A refused message: (subject, reason, error, the payload's first bytes, payload size).
type Refusal = (String, &'static str, String, Py<PyBytes>, usize);

/// What one chunk held, for the caller to act on. `failed`: the stream is not the protocol
/// (or the core failed); close the connection. Everything before it was applied once.
#[pyclass(module = "rampart._core", name = "WireResult", frozen, get_all)]
pub(crate) struct PyWireResult {
    breaches: Vec<PyBreach>,
    ingested: usize,
    refused: Vec<Refusal>,
    pings: usize,
    pongs: usize,
    oks: usize,
    errors: Vec<String>,
    infos: Vec<Py<PyBytes>>,
    failed: Option<(&'static str, String)>,
}

impl PyWireResult {
    fn failed(why: (&'static str, String)) -> Self {
        Self {
            breaches: Vec::new(),
            ingested: 0,
            refused: Vec::new(),
            pings: 0,
            pongs: 0,
            oks: 0,
            errors: Vec::new(),
            infos: Vec::new(),
            failed: Some(why),
        }
    }
}

#[pymethods]
impl PyWireResult {
    fn __repr__(&self) -> String {
        format!(
            "WireResult(ingested={}, breaches={}, refused={}, pings={}, failed={:?})",
            self.ingested,
            self.breaches.len(),
            self.refused.len(),
            self.pings,
            self.failed
        )
    }
}

/// One connection's incoming bytes: NATS frames parsed in Rust, market data applied to an
/// engine as `Engine.ingest_msg` would, without a Python call per message.
#[pyclass(module = "rampart._core", name = "WireIngest")]
pub(crate) struct PyWireIngest {
    parser: FrameParser,
    max_event: usize,
    keep: usize,
    // the subscriptions' sids are 1..=sids (0 until subscribed: nothing is a message of ours)
    sids: u64,
    // a panic in the core stopped this stream: every later chunk is refused
    broken: bool,
}

const INTERNAL: &str = "internal error in the Rust core (a bug, please report it)";

#[pymethods]
impl PyWireIngest {
    /// `max_payload`: the server's (from its INFO); `max_event`: the largest event applied
    /// (`ingest.max_payload_bytes`; larger ones are refused `oversize`); `keep`: how many bytes
    /// of a refused payload are returned (for the dead letter).
    #[new]
    #[pyo3(signature = (max_payload=1_048_576, max_event=65_536, keep=4_096))]
    fn new(max_payload: usize, max_event: usize, keep: usize) -> Self {
        Self {
            parser: FrameParser::new(max_payload),
            max_event,
            keep,
            sids: 0,
            broken: false,
        }
    }

    fn set_max_payload(&mut self, max_payload: usize) {
        self.parser.set_max_payload(max_payload);
    }

    /// The connection subscribed with sids 1..=`sids`: a message of any other sid (or one
    /// before the subscriptions were sent) is refused as `unknown_sid`, never applied.
    fn set_sids(&mut self, sids: u64) {
        self.sids = sids;
    }

    /// Bytes of a partial frame waiting for the next chunk.
    #[getter]
    fn buffered(&self) -> usize {
        self.parser.buffered()
    }

    /// Parse `data` and apply every message's event to `engine` (moving its wall clock to
    /// `wall_ns` first, if given).
    #[pyo3(signature = (engine, data, wall_ns=None))]
    fn feed(
        &mut self,
        py: Python<'_>,
        engine: &Bound<'_, PyEngine>,
        data: &[u8],
        wall_ns: Option<Ts>,
    ) -> PyResult<PyWireResult> {
        if self.broken {
            return Ok(PyWireResult::failed(("internal", INTERNAL.to_owned())));
        }
        let mut eng = engine.try_borrow_mut()?;
        let eng = &mut *eng;
        if let Some(w) = wall_ns {
            eng.inner.set_wall_clock(w.0);
        }
        eng.out.clear();
        let (inner, out) = (&mut eng.inner, &mut eng.out);
        let (max_event, keep, sids) = (self.max_event, self.keep, self.sids);
        let mut ingested = 0;
        let mut refused: Vec<(String, &'static str, String, Vec<u8>, usize)> = Vec::new();
        let (mut pings, mut pongs, mut oks) = (0, 0, 0);
        let mut errors = Vec::new();
        let mut infos: Vec<Vec<u8>> = Vec::new();
        let parser = &mut self.parser;
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            parser.feed(data, |frame| match frame {
                Frame::Bad {
                    subject,
                    reason,
                    payload,
                } => {
                    let error = match reason {
                        "bad_headers" => "a header block that does not start NATS/1.0",
                        _ => "a subject, sid or reply that is not UTF-8",
                    };
                    let kept = payload[..payload.len().min(keep)].to_vec();
                    let subject = String::from_utf8_lossy(subject).into_owned();
                    refused.push((subject, reason, error.into(), kept, payload.len()));
                }
                Frame::Msg {
                    subject,
                    sid,
                    payload,
                    ..
                } => {
                    let kept = || payload[..payload.len().min(keep)].to_vec();
                    if !known_sid(sid, sids) {
                        let error = format!("a message for sid {sid:?}, which is not subscribed");
                        refused.push((subject.into(), "unknown_sid", error, kept(), payload.len()));
                        return;
                    }
                    if payload.len() > max_event {
                        let error = format!(
                            "payload of {} bytes exceeds ingest.max_payload_bytes = {max_event}",
                            payload.len()
                        );
                        refused.push((subject.into(), "oversize", error, kept(), payload.len()));
                        return;
                    }
                    match inner.ingest_msg(subject, payload, out) {
                        Ok(()) => ingested += 1,
                        Err(e) => refused.push((
                            subject.into(),
                            e.reason(),
                            e.to_string(),
                            kept(),
                            payload.len(),
                        )),
                    }
                }
                Frame::Ping => pings += 1,
                Frame::Pong => pongs += 1,
                Frame::Ok => oks += 1,
                Frame::Err(e) => errors.push(e.to_owned()),
                Frame::Info(i) => infos.push(i.to_vec()),
            })
        }));
        let failed = match outcome {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some((e.reason(), e.to_string())),
            Err(_) => {
                // a bug in the core: stop this stream rather than go on from unknown state
                self.broken = true;
                Some(("internal", INTERNAL.to_owned()))
            }
        };
        Ok(PyWireResult {
            breaches: eng.out.drain(..).map(PyBreach::from).collect(),
            ingested,
            refused: refused
                .into_iter()
                .map(|(s, r, e, p, n)| (s, r, e, PyBytes::new(py, &p).unbind(), n))
                .collect(),
            pings,
            pongs,
            oks,
            errors,
            infos: infos
                .into_iter()
                .map(|i| PyBytes::new(py, &i).unbind())
                .collect(),
            failed,
        })
    }

    /// Parse `data` and count its messages, applying nothing: the frame parser's own cost
    /// (the raw limit in benches/ingest.py). Raises `ValueError` on a protocol error.
    fn scan(&mut self, data: &[u8]) -> PyResult<usize> {
        let mut n = 0;
        self.parser
            .feed(data, |f| {
                if matches!(f, Frame::Msg { .. }) {
                    n += 1;
                }
            })
            .map_err(|e| pyo3::exceptions::PyValueError::new_err(e.to_string()))?;
        Ok(n)
    }
}

/// Is `sid` one of the subscriptions 1..=`sids`?
fn known_sid(sid: &str, sids: u64) -> bool {
    sid.parse::<u64>().is_ok_and(|n| n >= 1 && n <= sids)
}

/// A message of a `WireFrames` chunk: (subject, reply, header block or None, payload).
type Message = (String, Option<String>, Option<Py<PyBytes>>, Py<PyBytes>);

/// What one chunk held (`WireFrames.feed`): its messages in order, and the protocol's own
/// frames for the caller to act on. `failed`: not the protocol; close the connection.
#[pyclass(module = "rampart._core", name = "Frames", frozen, get_all)]
pub(crate) struct PyFrames {
    messages: Vec<Message>,
    /// messages not handed on: (subject, reason) — `bad_subject`, `bad_headers`, `unknown_sid`
    refused: Vec<(String, &'static str)>,
    pings: usize,
    pongs: usize,
    oks: usize,
    errors: Vec<String>,
    infos: Vec<Py<PyBytes>>,
    failed: Option<(&'static str, String)>,
}

#[pymethods]
impl PyFrames {
    fn __repr__(&self) -> String {
        format!(
            "Frames(messages={}, pings={}, pongs={}, failed={:?})",
            self.messages.len(),
            self.pings,
            self.pongs,
            self.failed
        )
    }
}

/// A NATS connection's incoming bytes parsed in Rust, its messages handed back whole: the
/// gateway SDK's commands and Rampart's heartbeats (docs/protocol.md, "The wire path").
#[pyclass(module = "rampart._core", name = "WireFrames")]
pub(crate) struct PyWireFrames {
    parser: FrameParser,
    sids: u64,
}

#[pymethods]
impl PyWireFrames {
    #[new]
    #[pyo3(signature = (max_payload=1_048_576))]
    fn new(max_payload: usize) -> Self {
        Self {
            parser: FrameParser::new(max_payload),
            sids: 0,
        }
    }

    fn set_max_payload(&mut self, max_payload: usize) {
        self.parser.set_max_payload(max_payload);
    }

    /// As `WireIngest.set_sids`.
    fn set_sids(&mut self, sids: u64) {
        self.sids = sids;
    }

    fn feed(&mut self, py: Python<'_>, data: &[u8]) -> PyFrames {
        let sids = self.sids;
        let mut out = PyFrames {
            messages: Vec::new(),
            refused: Vec::new(),
            pings: 0,
            pongs: 0,
            oks: 0,
            errors: Vec::new(),
            infos: Vec::new(),
            failed: None,
        };
        let result = self.parser.feed(data, |frame| match frame {
            Frame::Bad {
                subject, reason, ..
            } => out
                .refused
                .push((String::from_utf8_lossy(subject).into_owned(), reason)),
            Frame::Msg { subject, sid, .. } if !known_sid(sid, sids) => {
                out.refused.push((subject.to_owned(), "unknown_sid"))
            }
            Frame::Msg {
                subject,
                reply,
                headers,
                payload,
                ..
            } => out.messages.push((
                subject.to_owned(),
                reply.map(str::to_owned),
                headers.map(|h| PyBytes::new(py, h).unbind()),
                PyBytes::new(py, payload).unbind(),
            )),
            Frame::Ping => out.pings += 1,
            Frame::Pong => out.pongs += 1,
            Frame::Ok => out.oks += 1,
            Frame::Err(e) => out.errors.push(e.to_owned()),
            Frame::Info(i) => out.infos.push(PyBytes::new(py, i).unbind()),
        });
        if let Err(e) = result {
            out.failed = Some((e.reason(), e.to_string()));
        }
        out
    }
}
