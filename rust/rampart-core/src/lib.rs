//! Rampart's risk core: per-algorithm positions, PnL, equity, drawdown, daily loss, rolling
//! Sharpe, win rate, reject rate and ack latency, with limits checked inside every update.
//!
//! No I/O and no clock reads: time arrives with events as integer nanoseconds since the epoch.
//! Metric definitions are in `docs/metrics.md`; the Python bindings live in `rust/rampart-py`.

pub mod algo;
pub mod commands;
pub mod config;
pub mod drift;
pub mod engine;
pub mod error;
pub mod event;
pub mod guards;
pub mod ledger;
pub mod order_window;
pub mod rolling;
pub mod subject;
pub mod wire;

pub use algo::{Breach, BreachKind};
pub use config::{AlgoConfig, LimitSpec, Limits, ReturnSampling};
pub use drift::PositionDrift;
pub use engine::{Engine, PositionView, Snapshot, CHECKPOINT_VERSION, DEFAULT_TIME_TOLERANCE_NS};
pub use error::{CoreError, Result};
pub use event::{decode_json, Event, OrderEvent, Side};
pub use guards::Guards;
pub use wire::{Frame, FrameParser, WireError};
