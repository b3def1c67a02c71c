//! The core's one error type. The bindings turn it into Python exceptions at the edge.

use std::fmt;

/// Why an event, a configuration or a call was refused. A refused call never changes engine state.
#[derive(Debug, Clone, PartialEq)]
pub enum CoreError {
    /// A configuration value is invalid (the message names the field and the rule).
    Config(String),
    /// An algorithm with this id is already registered.
    DuplicateAlgorithm(String),
    /// The event names an algorithm that is not registered.
    UnknownAlgorithm(String),
    /// The event's timestamp is further behind the engine clock than the tolerance allows.
    OutOfOrder {
        ts: i64,
        now: i64,
        tolerance_ns: i64,
    },
    /// The timestamp is outside the range Rampart accepts (`Guards::min_ts`..=`Guards::max_ts`).
    BadTimestamp(String),
    /// The timestamp is further ahead of the wall clock (live) or of the engine clock (replay)
    /// than the configured bound: accepting it would drag the event clock into the future.
    Future(String),
    /// A price (or bid/ask pair) is not finite and positive, above the sanity bound, or bid > ask.
    BadPrice(String),
    /// A quantity is zero, negative where it must be positive, or not finite.
    BadQuantity(String),
    /// A fill's notional (|qty| x price) is above the sanity bound.
    BadNotional(String),
    /// A fee is negative or not finite.
    BadFee(String),
    /// An ack latency is negative.
    BadLatency(String),
    /// A quote or mark moved the symbol's mid further from the last accepted one than its price
    /// band allows (the run of such quotes is counted; see `Guards::price_band_consecutive`).
    PriceBand(String),
    /// Applying the event would make a metric (mark, equity, peak, PnL, exposure) non-finite.
    Overflow(String),
    /// The event arrived on a subject that may not carry it (a fill on a market-data subject, a
    /// symbol other than the subject's).
    WrongSubject(String),
    /// The event names an algorithm that the sending gateway does not run.
    WrongGateway(String),
    /// Raw bytes are not a valid event (not UTF-8 JSON, a field missing or of the wrong type).
    Decode(String),
}

impl CoreError {
    /// A short, stable code for counting and dead-lettering rejected input.
    pub fn reason(&self) -> &'static str {
        match self {
            CoreError::Config(_) => "config",
            CoreError::DuplicateAlgorithm(_) => "duplicate_algorithm",
            CoreError::UnknownAlgorithm(_) => "unknown_algorithm",
            CoreError::OutOfOrder { .. } => "out_of_order",
            CoreError::BadTimestamp(_) => "bad_timestamp",
            CoreError::Future(_) => "future",
            CoreError::BadPrice(_) => "bad_price",
            CoreError::BadQuantity(_) => "bad_quantity",
            CoreError::BadNotional(_) => "bad_notional",
            CoreError::BadFee(_) => "bad_fee",
            CoreError::BadLatency(_) => "bad_latency",
            CoreError::PriceBand(_) => "price_band",
            CoreError::Overflow(_) => "overflow",
            CoreError::WrongSubject(_) => "wrong_subject",
            CoreError::WrongGateway(_) => "wrong_gateway",
            CoreError::Decode(_) => "decode",
        }
    }
}

impl fmt::Display for CoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CoreError::Config(m) => write!(f, "invalid configuration: {m}"),
            CoreError::DuplicateAlgorithm(id) => write!(
                f,
                "algorithm {id:?} is already registered; unregister it first or use another id"
            ),
            CoreError::UnknownAlgorithm(id) => {
                write!(f, "unknown algorithm {id:?}: register it before sending its events")
            }
            CoreError::OutOfOrder {
                ts,
                now,
                tolerance_ns,
            } => write!(
                f,
                "timestamp {ts} is {} ns behind the engine clock {now}, more than the tolerance of {tolerance_ns} ns",
                now.saturating_sub(*ts)
            ),
            CoreError::BadTimestamp(m)
            | CoreError::Future(m)
            | CoreError::BadPrice(m)
            | CoreError::BadQuantity(m)
            | CoreError::BadNotional(m)
            | CoreError::BadFee(m)
            | CoreError::BadLatency(m)
            | CoreError::PriceBand(m)
            | CoreError::Overflow(m)
            | CoreError::WrongSubject(m)
            | CoreError::WrongGateway(m)
            | CoreError::Decode(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for CoreError {}

pub type Result<T> = std::result::Result<T, CoreError>;
