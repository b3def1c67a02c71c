//! The engine: every registered algorithm, the market's marks, and the event-time clock.
//!
//! Every entry point validates its input completely before it changes anything, so a rejected
//! event leaves the state exactly as it was. Breaches are appended to the caller's `out` buffer;
//! nothing is appended when all is well.

use std::collections::BTreeMap;

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::algo::{AlgoState, Breach, BreachKind};
use crate::config::{AlgoConfig, SECOND_NS};
use crate::error::{CoreError, Result};
use crate::event::{decode_json, Event, OrderEvent, Side};
use crate::guards::Guards;
use crate::ledger::Position;
use crate::subject::Route;

/// The market state of one symbol.
#[derive(Debug, Clone)]
struct SymbolState {
    name: String,
    mark: Option<f64>,
    last_quote_ts: Option<i64>,
    /// (algorithm slot, index into its positions) for every algorithm that has traded the symbol.
    holders: Vec<(u32, u32)>,
    /// The price band of this symbol (a fraction of the last accepted mark), if any.
    band: Option<f64>,
    /// Consecutive quotes or marks refused by the price band.
    band_misses: u32,
}

/// A position as reported in a snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct PositionView {
    pub symbol: String,
    pub qty: f64,
    pub avg_cost: f64,
    pub mark: Option<f64>,
    pub unrealized_pnl: f64,
    pub realized_pnl: f64,
}

/// Every metric of one algorithm at the engine clock. Definitions: docs/metrics.md.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub algo_id: String,
    pub version: String,
    pub ts: Option<i64>,
    pub capital: f64,
    pub equity: f64,
    pub realized_pnl: f64,
    pub unrealized_pnl: f64,
    pub fees: f64,
    pub peak_equity: f64,
    pub drawdown: f64,
    pub max_drawdown: f64,
    pub daily_pnl: f64,
    pub session_start_equity: f64,
    pub stage_pnl: f64,
    pub returns_count: usize,
    pub sharpe: Option<f64>,
    pub trades: u64,
    pub wins: u64,
    pub win_rate: Option<f64>,
    pub fills: u64,
    pub orders_in_window: u64,
    pub rejects_in_window: u64,
    pub error_rate: Option<f64>,
    pub acks_in_window: u64,
    pub latency_p50_ns: Option<u64>,
    pub latency_p99_ns: Option<u64>,
    pub orders_submitted_total: u64,
    pub orders_rejected_total: u64,
    pub orders_acked_total: u64,
    pub orders_cancelled_total: u64,
    pub last_fill_ts: Option<i64>,
    pub last_order_ts: Option<i64>,
    pub last_event_ts: Option<i64>,
    pub confidence: f64,
    pub breached: Vec<BreachKind>,
    pub positions: Vec<PositionView>,
}

pub const DEFAULT_TIME_TOLERANCE_NS: i64 = 5 * SECOND_NS;

/// The checkpoint format version `Engine::checkpoint` writes and `Engine::restore` reads.
pub const CHECKPOINT_VERSION: u32 = 1;

/// A symbol's market state in a checkpoint.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MarkState {
    mark: f64,
    last_quote_ts: Option<i64>,
}

/// A checkpoint as written (borrowing the engine's state). Format: docs/metrics.md, "Checkpoints".
#[derive(Serialize)]
struct CheckpointOut<'a> {
    v: u32,
    /// The engine clock when the checkpoint was taken.
    now: Option<i64>,
    algo: &'a AlgoState,
    /// The symbol of `algo.positions[i]` (positions hold engine-local symbol ids).
    position_symbols: Vec<&'a str>,
    /// The marks of the algorithm's position symbols, by name (sorted: equal states give equal
    /// bytes).
    marks: BTreeMap<&'a str, MarkState>,
}

/// A checkpoint as read.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckpointIn {
    v: u32,
    now: Option<i64>,
    algo: AlgoState,
    position_symbols: Vec<String>,
    marks: BTreeMap<String, MarkState>,
}

/// Every symbol's mark, with the engine clock: written with each round of incremental
/// checkpoints (docs/metrics.md, "Checkpoints"), so an algorithm whose own checkpoint is older
/// still restores to the latest marks.
#[derive(Serialize)]
struct MarksOut<'a> {
    v: u32,
    now: Option<i64>,
    marks: BTreeMap<&'a str, MarkState>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MarksIn {
    v: u32,
    now: Option<i64>,
    marks: BTreeMap<String, MarkState>,
}

/// Just the version: read when a checkpoint does not decode, to say why in the terms that
/// matter most (not a checkpoint at all, or another version).
#[derive(Deserialize)]
struct CheckpointHeader {
    v: Option<u64>,
}

fn version_error(v: u64) -> CoreError {
    CoreError::Decode(format!(
        "checkpoint format version {v} is not supported: this build reads version \
         {CHECKPOINT_VERSION}"
    ))
}

/// Decode and check a checkpoint without touching any engine. Every error says what is wrong.
fn decode_checkpoint(data: &[u8]) -> Result<CheckpointIn> {
    let mut ck: CheckpointIn = match serde_json::from_slice(data) {
        Ok(ck) => ck,
        Err(e) => {
            return Err(match serde_json::from_slice::<CheckpointHeader>(data) {
                Err(h) => CoreError::Decode(format!("not a Rampart checkpoint: {h}")),
                Ok(CheckpointHeader { v: None }) => CoreError::Decode(
                    "not a Rampart checkpoint: the format version field `v` is missing".into(),
                ),
                Ok(CheckpointHeader { v: Some(v) }) if v != u64::from(CHECKPOINT_VERSION) => {
                    version_error(v)
                }
                Ok(_) => CoreError::Decode(format!(
                    "checkpoint (format version {CHECKPOINT_VERSION}) does not decode: {e}"
                )),
            })
        }
    };
    if ck.v != CHECKPOINT_VERSION {
        return Err(version_error(u64::from(ck.v)));
    }
    let id = ck.algo.config.algo_id.clone();
    ck.algo.config.validate().map_err(|e| match e {
        CoreError::Config(m) => CoreError::Config(format!("in the checkpoint of {id:?}: {m}")),
        other => other,
    })?;
    let inconsistent =
        |m: String| CoreError::Decode(format!("the checkpoint of {id:?} is inconsistent: {m}"));
    ck.algo.rebuild_after_decode().map_err(inconsistent)?;
    if ck.position_symbols.len() != ck.algo.positions.len() {
        return Err(inconsistent(format!(
            "{} position symbols for {} positions",
            ck.position_symbols.len(),
            ck.algo.positions.len()
        )));
    }
    let mut seen = std::collections::HashSet::new();
    for name in &ck.position_symbols {
        if !seen.insert(name.as_str()) {
            return Err(inconsistent(format!("two positions in symbol {name:?}")));
        }
        if !ck.marks.contains_key(name) {
            return Err(inconsistent(format!(
                "the position in {name:?} has no mark in `marks`"
            )));
        }
    }
    for (name, m) in &ck.marks {
        if !(m.mark.is_finite() && m.mark > 0.0) {
            return Err(inconsistent(format!(
                "the mark of {name:?} must be a finite number > 0, got {}",
                m.mark
            )));
        }
    }
    Ok(ck)
}

#[derive(Debug, Clone)]
pub struct Engine {
    algos: Vec<Option<AlgoState>>,
    free_slots: Vec<usize>,
    algo_index: FxHashMap<String, usize>,
    symbols: Vec<SymbolState>,
    symbol_index: FxHashMap<String, u32>,
    now: Option<i64>,
    guards: Guards,
    /// The latest wall-clock reading the caller gave (`set_wall_clock`); live mode bounds event
    /// time by it.
    wall: Option<i64>,
    /// Which gateway runs each algorithm: its fills and order events are accepted only on that
    /// gateway's subjects (`ingest_msg`).
    gateway_of: FxHashMap<String, String>,
    /// The subject prefix `ingest_msg` routes under (`<prefix>.md.<symbol>`, ...).
    prefix: String,
    /// Set only while `ingest_durable` applies an event: a durable event behind the clock is
    /// applied at the clock's time instead of refused as `out_of_order`.
    late_ok: bool,
}

impl Default for Engine {
    fn default() -> Self {
        Engine::with_guards(Guards::default()).expect("the default guards are valid")
    }
}

/// What committing a fill will write, computed before anything changes.
struct FillPlan {
    position: Position,
    realized: f64,
    closed_trade: Option<f64>,
    delta_unrealized: f64,
    /// The position's index in the algorithm's positions; `None`: a new position.
    existing: Option<usize>,
}

#[inline]
fn max_opt(a: Option<i64>, b: i64) -> Option<i64> {
    Some(a.map_or(b, |a| a.max(b)))
}

impl Engine {
    /// An engine with the default guards and this out-of-order tolerance.
    pub fn new(time_tolerance_ns: i64) -> Result<Self> {
        Engine::with_guards(Guards {
            time_tolerance_ns,
            ..Guards::default()
        })
    }

    /// An engine with these input bounds and clock guards (validated).
    pub fn with_guards(guards: Guards) -> Result<Self> {
        guards.validate()?;
        Ok(Engine {
            algos: Vec::new(),
            free_slots: Vec::new(),
            algo_index: FxHashMap::default(),
            symbols: Vec::new(),
            symbol_index: FxHashMap::default(),
            now: None,
            guards,
            wall: None,
            gateway_of: FxHashMap::default(),
            late_ok: false,
            prefix: crate::subject::DEFAULT_PREFIX.to_owned(),
        })
    }

    /// The engine clock: the latest event time accepted.
    pub fn now(&self) -> Option<i64> {
        self.now
    }

    pub fn time_tolerance_ns(&self) -> i64 {
        self.guards.time_tolerance_ns
    }

    pub fn guards(&self) -> &Guards {
        &self.guards
    }

    /// Tell the engine the wall clock (live mode): from now on an event stamped more than
    /// `max_future_ns` ahead of it is refused (`future`). The reading only moves forward.
    pub fn set_wall_clock(&mut self, wall_ns: i64) {
        self.wall = Some(self.wall.map_or(wall_ns, |w| w.max(wall_ns)));
    }

    pub fn wall_clock(&self) -> Option<i64> {
        self.wall
    }

    /// The latest event time the engine will accept now, if it is bounded.
    pub fn horizon(&self) -> Option<i64> {
        let live = self
            .guards
            .max_future_ns
            .zip(self.wall)
            .map(|(f, w)| w.saturating_add(f));
        let replay = self
            .guards
            .max_jump_ns
            .zip(self.now)
            .map(|(j, n)| n.saturating_add(j));
        match (live, replay) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Set the subject prefix `ingest_msg` routes under (default `rampart`).
    pub fn set_subject_prefix(&mut self, prefix: &str) -> Result<()> {
        if !crate::subject::is_subject(prefix) {
            return Err(CoreError::Config(format!(
                "subject prefix {prefix:?} must be a NATS subject (tokens without spaces or \
                 wildcards, separated by dots)"
            )));
        }
        self.prefix = prefix.to_owned();
        Ok(())
    }

    /// Record that `gateway` runs `algo_id`: `ingest_msg` accepts the algorithm's fills and order
    /// events only on that gateway's subjects. The algorithm need not be registered yet.
    pub fn set_gateway(&mut self, algo_id: &str, gateway: &str) -> Result<()> {
        if !crate::subject::is_token(gateway) {
            return Err(CoreError::Config(format!(
                "gateway {gateway:?} must be one NATS subject token (no spaces, dots or \
                 wildcards)"
            )));
        }
        self.gateway_of
            .insert(algo_id.to_owned(), gateway.to_owned());
        Ok(())
    }

    /// The gateway `set_gateway` recorded for `algo_id`.
    pub fn gateway_of(&self, algo_id: &str) -> Option<&str> {
        self.gateway_of.get(algo_id).map(String::as_str)
    }

    /// The registered algorithms `gateway` runs (`set_gateway`), unordered.
    pub fn algorithms_of<'a>(&'a self, gateway: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.gateway_of
            .iter()
            .filter(move |(algo, gw)| gw.as_str() == gateway && self.algo_index.contains_key(*algo))
            .map(|(algo, _)| algo.as_str())
    }

    /// Every open position (quantity not zero) whose symbol has had neither a quote nor a fill
    /// of its algorithm for more than `limit_ns` before `now` (a position never quoted counts
    /// from its algorithm's last fill): `(algo, symbol, qty, last)` with `last` that latest
    /// time (0 if none). One pass over the positions, for the daemon's staleness watchdog.
    pub fn stale_holdings(&self, now: i64, limit_ns: i64) -> Vec<(String, String, f64, i64)> {
        let mut out = Vec::new();
        for algo in self.algos.iter().flatten() {
            let fill = algo.last_fill_ts.unwrap_or(0);
            for p in &algo.positions {
                if p.qty == 0.0 {
                    continue;
                }
                let sym = &self.symbols[p.symbol as usize];
                let last = sym.last_quote_ts.unwrap_or(0).max(fill);
                if now.saturating_sub(last) > limit_ns {
                    out.push((algo.config.algo_id.clone(), sym.name.clone(), p.qty, last));
                }
            }
        }
        out
    }

    /// The open positions (quantity not zero) of a registered algorithm, by symbol name.
    pub fn open_positions<'a>(
        &'a self,
        algo_id: &str,
    ) -> Result<impl Iterator<Item = (&'a str, f64)> + 'a> {
        let algo = self.algo(self.slot(algo_id)?);
        Ok(algo
            .positions
            .iter()
            .filter(|p| p.qty != 0.0)
            .map(|p| (self.symbols[p.symbol as usize].name.as_str(), p.qty)))
    }

    /// Set (or clear, with `None`) the price band of one symbol, overriding the default.
    pub fn set_price_band(&mut self, symbol: &str, band: Option<f64>) -> Result<()> {
        if let Some(b) = band {
            crate::guards::check_band(b)?;
        }
        let sid = self.symbol_id(symbol) as usize;
        self.symbols[sid].band = band;
        self.symbols[sid].band_misses = 0;
        Ok(())
    }

    // ---- registry -------------------------------------------------------------------------

    pub fn register(&mut self, config: AlgoConfig) -> Result<()> {
        config.validate()?;
        if self.algo_index.contains_key(&config.algo_id) {
            return Err(CoreError::DuplicateAlgorithm(config.algo_id));
        }
        self.insert_algo(AlgoState::new(config));
        Ok(())
    }

    /// Put a new algorithm into a free slot and index it; returns the slot.
    fn insert_algo(&mut self, mut state: AlgoState) -> usize {
        let id = state.config.algo_id.clone();
        state.changed = true; // its stored checkpoint, if any, is not known to be this state
        let slot = match self.free_slots.pop() {
            Some(s) => {
                self.algos[s] = Some(state);
                s
            }
            None => {
                self.algos.push(Some(state));
                self.algos.len() - 1
            }
        };
        self.algo_index.insert(id, slot);
        slot
    }

    // ---- checkpoints ----------------------------------------------------------------------

    /// The algorithm's complete state as a versioned JSON document (docs/metrics.md,
    /// "Checkpoints"): everything `restore` needs to continue exactly where this engine is, plus
    /// the engine clock and the marks of the algorithm's position symbols.
    ///
    /// Refused (`Overflow`) only if the state holds a number JSON cannot carry (which the engine
    /// refuses to create): the bytes returned always restore.
    pub fn checkpoint(&self, algo_id: &str) -> Result<Vec<u8>> {
        let slot = self.slot(algo_id)?;
        let algo = self.algo(slot);
        let ck = CheckpointOut {
            v: CHECKPOINT_VERSION,
            now: self.now,
            algo,
            position_symbols: algo
                .positions
                .iter()
                .map(|p| self.symbols[p.symbol as usize].name.as_str())
                .collect(),
            marks: algo
                .positions
                .iter()
                .filter_map(|p| {
                    let s = &self.symbols[p.symbol as usize];
                    s.mark.map(|mark| {
                        let m = MarkState {
                            mark,
                            last_quote_ts: s.last_quote_ts,
                        };
                        (s.name.as_str(), m)
                    })
                })
                .collect(),
        };
        // serde_json would write NaN and infinities as `null`, which does not restore.
        if let Some(field) = algo.non_finite_field() {
            return Err(CoreError::Overflow(format!(
                "the state of {algo_id:?} cannot be checkpointed: `{field}` is not finite and \
                 JSON has no form for it"
            )));
        }
        let bytes = serde_json::to_vec(&ck).map_err(|e| {
            CoreError::Overflow(format!("the state of {algo_id:?} does not encode: {e}"))
        })?;
        debug_assert!(
            decode_checkpoint(&bytes).is_ok(),
            "a checkpoint must restore: {:?}",
            decode_checkpoint(&bytes).err()
        );
        Ok(bytes)
    }

    /// The algorithms changed since the last call (or registered, or restored), in slot order;
    /// each is marked unchanged. Reads and clock moves (`snapshot`, `advance`) are not changes.
    pub fn take_changed(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        for a in self.algos.iter_mut().flatten() {
            if std::mem::take(&mut a.changed) {
                out.push(a.config.algo_id.clone());
            }
        }
        out
    }

    /// Mark every algorithm changed (the next `take_changed` returns them all).
    pub fn mark_all_changed(&mut self) {
        for a in self.algos.iter_mut().flatten() {
            a.changed = true;
        }
    }

    /// Every symbol's mark and last quote time, and the engine clock, as a versioned JSON
    /// document for `restore_marks`.
    pub fn marks_checkpoint(&self) -> Vec<u8> {
        let out = MarksOut {
            v: CHECKPOINT_VERSION,
            now: self.now,
            marks: self
                .symbols
                .iter()
                .filter_map(|s| {
                    s.mark.map(|mark| {
                        let m = MarkState {
                            mark,
                            last_quote_ts: s.last_quote_ts,
                        };
                        (s.name.as_str(), m)
                    })
                })
                .collect(),
        };
        serde_json::to_vec(&out).expect("marks are finite and always encode")
    }

    /// Take the marks and clock of `marks_checkpoint` (before restoring the algorithms: their
    /// positions are then re-marked to these where their own checkpoint is older). A symbol
    /// that already has a mark keeps it. Times beyond `max_clock` are clamped to it, and the
    /// latest of them is returned (the untrusted clock, for the caller to alert and record, as
    /// `restore` does); `None` when every time was within it.
    /// Errors (`Decode`), with no change: not a marks document, another version, a bad mark.
    pub fn restore_marks(&mut self, data: &[u8], max_clock: Option<i64>) -> Result<Option<i64>> {
        let doc: MarksIn = serde_json::from_slice(data)
            .map_err(|e| CoreError::Decode(format!("not a Rampart marks checkpoint: {e}")))?;
        if doc.v != CHECKPOINT_VERSION {
            return Err(version_error(u64::from(doc.v)));
        }
        for (name, m) in &doc.marks {
            if !(m.mark.is_finite() && m.mark > 0.0) {
                return Err(CoreError::Decode(format!(
                    "the marks checkpoint is inconsistent: the mark of {name:?} must be a \
                     finite number > 0, got {}",
                    m.mark
                )));
            }
        }
        let latest = doc
            .marks
            .values()
            .filter_map(|m| m.last_quote_ts)
            .fold(doc.now, max_opt);
        let untrusted = match (latest, max_clock) {
            (Some(t), Some(m)) if t > m => Some(t),
            _ => None,
        };
        let clamp = |t: i64| max_clock.map_or(t, |m| t.min(m));
        if let Some(t) = doc.now {
            self.now = max_opt(self.now, clamp(t));
        }
        for (name, m) in &doc.marks {
            let sid = self.symbol_id(name) as usize;
            let sym = &mut self.symbols[sid];
            if sym.mark.is_none() {
                sym.mark = Some(m.mark);
                sym.last_quote_ts = m.last_quote_ts.map(clamp);
            }
        }
        Ok(untrusted)
    }

    /// Register an algorithm from a checkpoint written by `checkpoint`, in exactly the state it
    /// was in. The engine clock advances to the checkpoint's if that is later. Symbols the engine
    /// has no mark for take the checkpoint's mark (and quote time); symbols it has a mark for
    /// keep it, and the restored positions in them are re-marked to it as a quote would (the
    /// limits are evaluated on the algorithm's next equity change).
    ///
    /// `max_clock`: the latest event time the caller can trust (live: the wall clock plus
    /// `max_future_ns`). A checkpoint whose clock is beyond it is not trusted: positions, PnL,
    /// peak and trades are restored, but every time in it is clamped to `max_clock`, the order
    /// windows are emptied and the return period and session restart at the next event. The
    /// untrusted clock is returned so the caller can alert and record it; `None` otherwise.
    ///
    /// Errors, with no change to the engine: `Decode` (not a checkpoint, another format version,
    /// malformed or inconsistent), `Config` (the embedded configuration is invalid),
    /// `DuplicateAlgorithm` (already registered).
    pub fn restore(&mut self, data: &[u8], max_clock: Option<i64>) -> Result<Option<i64>> {
        let CheckpointIn {
            now,
            mut algo,
            position_symbols,
            mut marks,
            ..
        } = decode_checkpoint(data)?;
        if self.algo_index.contains_key(&algo.config.algo_id) {
            return Err(CoreError::DuplicateAlgorithm(algo.config.algo_id));
        }
        // Nothing below can fail.
        let mut clock = marks
            .values()
            .filter_map(|m| m.last_quote_ts)
            .chain(algo.last_event_ts)
            .fold(now, max_opt);
        let untrusted = match (clock, max_clock) {
            (Some(c), Some(m)) if c > m => Some(c),
            _ => None,
        };
        if let (Some(_), Some(m)) = (untrusted, max_clock) {
            algo.distrust_clock(m);
            for mark in marks.values_mut() {
                mark.last_quote_ts = mark.last_quote_ts.map(|t| t.min(m));
            }
            clock = clock.map(|c| c.min(m));
        }
        if let Some(t) = clock {
            self.now = max_opt(self.now, t);
        }
        for (name, m) in &marks {
            let sid = self.symbol_id(name) as usize;
            let sym = &mut self.symbols[sid];
            if sym.mark.is_none() {
                sym.mark = Some(m.mark);
                sym.last_quote_ts = m
                    .last_quote_ts
                    .map_or(sym.last_quote_ts, |t| max_opt(sym.last_quote_ts, t));
            }
        }
        let ids: Vec<u32> = position_symbols
            .iter()
            .map(|name| self.symbol_id(name))
            .collect();
        algo.relink_positions(&ids);
        for (pidx, (&sid, name)) in ids.iter().zip(&position_symbols).enumerate() {
            let engine_mark = self.symbols[sid as usize].mark;
            let saved_mark = marks.get(name).map(|m| m.mark);
            if let (Some(mark), Some(t)) = (engine_mark, self.now) {
                if engine_mark != saved_mark && algo.positions[pidx].qty != 0.0 {
                    algo.remark_restored(pidx, mark, t);
                }
            }
        }
        let slot = self.insert_algo(algo);
        for (pidx, &sid) in ids.iter().enumerate() {
            self.symbols[sid as usize]
                .holders
                .push((slot as u32, pidx as u32));
        }
        Ok(untrusted)
    }

    pub fn unregister(&mut self, algo_id: &str) -> Result<()> {
        let slot = self.slot(algo_id)?;
        self.algo_index.remove(algo_id);
        for sym in &mut self.symbols {
            sym.holders.retain(|&(s, _)| s as usize != slot);
        }
        self.algos[slot] = None;
        self.free_slots.push(slot);
        Ok(())
    }

    pub fn algorithms(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.algo_index.keys().cloned().collect();
        ids.sort();
        ids
    }

    pub fn contains(&self, algo_id: &str) -> bool {
        self.algo_index.contains_key(algo_id)
    }

    pub fn len(&self) -> usize {
        self.algo_index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.algo_index.is_empty()
    }

    pub fn config(&self, algo_id: &str) -> Result<&AlgoConfig> {
        let slot = self.slot(algo_id)?;
        Ok(&self.algo(slot).config)
    }

    #[inline]
    fn slot(&self, algo_id: &str) -> Result<usize> {
        self.algo_index
            .get(algo_id)
            .copied()
            .ok_or_else(|| CoreError::UnknownAlgorithm(algo_id.to_owned()))
    }

    #[inline]
    fn algo(&self, slot: usize) -> &AlgoState {
        self.algos[slot].as_ref().expect("indexed slot is live")
    }

    #[inline]
    fn algo_mut(&mut self, slot: usize) -> &mut AlgoState {
        self.algos[slot].as_mut().expect("indexed slot is live")
    }

    /// The symbol's id for [`Engine::quote_id`] (interned: the same name, the same id, for the
    /// engine's life). A symbol interned and never quoted has no mark.
    pub fn intern(&mut self, symbol: &str) -> u32 {
        self.symbol_id(symbol)
    }

    fn symbol_id(&mut self, symbol: &str) -> u32 {
        if let Some(&id) = self.symbol_index.get(symbol) {
            return id;
        }
        let id = self.symbols.len() as u32;
        self.symbols.push(SymbolState {
            name: symbol.to_owned(),
            mark: None,
            last_quote_ts: None,
            holders: Vec::new(),
            band: self.guards.price_band,
            band_misses: 0,
        });
        self.symbol_index.insert(symbol.to_owned(), id);
        id
    }

    // ---- time -----------------------------------------------------------------------------

    /// The clock checks, in their documented order: the timestamp is in range (`bad_timestamp`),
    /// not too far behind the engine clock (`out_of_order`), not too far ahead of the wall clock
    /// or the engine clock (`future`).
    #[inline]
    fn check_time(&self, ts: i64) -> Result<()> {
        let g = &self.guards;
        if ts < g.min_ts || ts > g.max_ts {
            return Err(CoreError::BadTimestamp(format!(
                "timestamp {ts} is outside the accepted range [{}, {}] (ns since the epoch; \
                 ingest.min_timestamp and the year-2200 ceiling)",
                g.min_ts, g.max_ts
            )));
        }
        if let (Some(now), false) = (self.now, self.late_ok) {
            if ts < now.saturating_sub(g.time_tolerance_ns) {
                return Err(CoreError::OutOfOrder {
                    ts,
                    now,
                    tolerance_ns: g.time_tolerance_ns,
                });
            }
        }
        if let (Some(f), Some(wall)) = (g.max_future_ns, self.wall) {
            if ts > wall.saturating_add(f) {
                return Err(CoreError::Future(format!(
                    "timestamp {ts} is {} ns ahead of the wall clock {wall}, more than \
                     ingest.max_future = {f} ns",
                    ts - wall
                )));
            }
        }
        if let (Some(j), Some(now)) = (g.max_jump_ns, self.now) {
            if ts > now.saturating_add(j) {
                return Err(CoreError::Future(format!(
                    "timestamp {ts} jumps {} ns past the engine clock {now}, more than the \
                     maximum jump of {j} ns",
                    ts - now
                )));
            }
        }
        Ok(())
    }

    /// Move the clock forward (never back) and return the effective time of the event.
    #[inline]
    fn tick(&mut self, ts: i64) -> i64 {
        let t = self.now.map_or(ts, |n| n.max(ts));
        self.now = Some(t);
        t
    }

    /// Move the engine clock to `ts` and roll every algorithm's periods, session and windows.
    pub fn advance(&mut self, ts: i64) -> Result<()> {
        self.check_time(ts)?;
        let t = self.tick(ts);
        for a in self.algos.iter_mut().flatten() {
            a.roll_if_started(t);
            a.rejects.expire(t);
            a.latency.expire(t);
        }
        Ok(())
    }

    // ---- validation ---------------------------------------------------------------------

    fn check_price(&self, what: &str, p: f64) -> Result<()> {
        if !(p.is_finite() && p > 0.0) {
            return Err(CoreError::BadPrice(format!(
                "{what} must be a finite number > 0, got {p}"
            )));
        }
        if p > self.guards.max_price {
            return Err(CoreError::BadPrice(format!(
                "{what} {p} is above ingest.max_price = {}",
                self.guards.max_price
            )));
        }
        Ok(())
    }

    /// An unsigned quantity (`> 0`, within the sanity bound) and its notional at `price`.
    fn check_quantity(&self, qty: f64, price: f64) -> Result<()> {
        if !(qty.is_finite() && qty > 0.0) {
            return Err(CoreError::BadQuantity(format!(
                "fill qty must be a finite number > 0 (the direction is the side), got {qty}"
            )));
        }
        if qty > self.guards.max_quantity {
            return Err(CoreError::BadQuantity(format!(
                "fill qty {qty} is above ingest.max_quantity = {}",
                self.guards.max_quantity
            )));
        }
        let notional = qty * price;
        if notional > self.guards.max_notional {
            return Err(CoreError::BadNotional(format!(
                "fill notional {notional} (qty {qty} x price {price}) is above \
                 ingest.max_notional = {}",
                self.guards.max_notional
            )));
        }
        Ok(())
    }

    /// Would re-marking every holder of `sid` to `price` keep every metric finite?
    fn check_remark(&self, sid: usize, price: f64, skip_slot: Option<usize>) -> Result<()> {
        for &(slot, pidx) in &self.symbols[sid].holders {
            if Some(slot as usize) == skip_slot {
                continue;
            }
            let Some(algo) = self.algos[slot as usize].as_ref() else {
                continue;
            };
            let pos = &algo.positions[pidx as usize];
            if pos.qty == 0.0 {
                continue;
            }
            let u = pos.qty * (price - pos.avg_cost);
            let exposure = pos.qty * price;
            if !(u.is_finite() && exposure.is_finite()) {
                return Err(self.overflow(&algo.config.algo_id, "unrealized PnL or exposure"));
            }
            algo.check_finite_after(0.0, 0.0, u - pos.unrealized)
                .map_err(|m| self.overflow(&algo.config.algo_id, m))?;
        }
        Ok(())
    }

    fn overflow(&self, algo_id: &str, what: &str) -> CoreError {
        CoreError::Overflow(format!(
            "applying the event would make the {what} of {algo_id:?} non-finite; nothing changed"
        ))
    }

    // ---- market data ----------------------------------------------------------------------

    pub fn quote(
        &mut self,
        symbol: &str,
        bid: f64,
        ask: f64,
        ts: i64,
        out: &mut Vec<Breach>,
    ) -> Result<()> {
        self.check_time(ts)?;
        self.check_price("bid", bid)?;
        self.check_price("ask", ask)?;
        if bid > ask {
            return Err(CoreError::BadPrice(format!(
                "crossed quote for {symbol}: bid {bid} > ask {ask}"
            )));
        }
        // Half of each: the sum of two large prices may overflow, the mid never does.
        self.apply_mark(symbol, 0.5 * bid + 0.5 * ask, ts, out)
    }

    /// [`Engine::quote`] of the symbol interned as `sid` ([`Engine::intern`]): the same checks
    /// and effects, without looking its name up.
    pub fn quote_id(
        &mut self,
        sid: u32,
        bid: f64,
        ask: f64,
        ts: i64,
        out: &mut Vec<Breach>,
    ) -> Result<()> {
        let Some(sym) = self.symbols.get(sid as usize) else {
            return Err(CoreError::Decode(format!(
                "symbol id {sid} was not interned by this engine ({} symbols)",
                self.symbols.len()
            )));
        };
        self.check_time(ts)?;
        self.check_price("bid", bid)?;
        self.check_price("ask", ask)?;
        if bid > ask {
            return Err(CoreError::BadPrice(format!(
                "crossed quote for {}: bid {bid} > ask {ask}",
                sym.name
            )));
        }
        self.mark_known(sid as usize, 0.5 * bid + 0.5 * ask, ts, out)
    }

    pub fn mark(&mut self, symbol: &str, price: f64, ts: i64, out: &mut Vec<Breach>) -> Result<()> {
        self.check_time(ts)?;
        self.check_price("price", price)?;
        self.apply_mark(symbol, price, ts, out)
    }

    /// The price band, the overflow check, then the mark (validated: nothing changes on error,
    /// except the count of consecutive band refusals).
    fn apply_mark(
        &mut self,
        symbol: &str,
        price: f64,
        ts: i64,
        out: &mut Vec<Breach>,
    ) -> Result<()> {
        match self.symbol_index.get(symbol).copied() {
            Some(sid) => self.mark_known(sid as usize, price, ts, out),
            None => {
                // nobody holds a symbol never seen: no band, nothing to re-mark
                self.tick(ts);
                let sid = self.symbol_id(symbol) as usize;
                let sym = &mut self.symbols[sid];
                sym.mark = Some(price);
                sym.last_quote_ts = max_opt(sym.last_quote_ts, ts);
                Ok(())
            }
        }
    }

    /// `apply_mark` of a symbol the engine knows.
    fn mark_known(&mut self, sid: usize, price: f64, ts: i64, out: &mut Vec<Breach>) -> Result<()> {
        let band_move = self.band_verdict(sid, price)?;
        self.check_remark(sid, price, None)?;
        let t = self.tick(ts);
        let sym = &mut self.symbols[sid];
        sym.mark = Some(price);
        sym.band_misses = 0;
        sym.last_quote_ts = max_opt(sym.last_quote_ts, ts);
        for &(slot, pidx) in &sym.holders {
            let Some(algo) = self.algos[slot as usize].as_mut() else {
                continue;
            };
            if algo.positions[pidx as usize].qty == 0.0 {
                continue;
            }
            algo.roll(t);
            let delta = algo.positions[pidx as usize].remark(price);
            algo.add_unrealized(delta);
            algo.after_equity_change(t, out);
            if let Some((moved, band)) = band_move {
                out.push(Breach {
                    algo_id: algo.config.algo_id.clone(),
                    kind: BreachKind::PriceBand,
                    value: moved,
                    threshold: band,
                    ts: t,
                });
            }
        }
        Ok(())
    }

    /// `Ok(None)`: within the band (or no band). `Err(PriceBand)`: refused, counted.
    /// `Ok(Some((move, band)))`: the configured number of consecutive refusals is reached; this
    /// one is accepted (the feed really moved, or is broken: either way the holders must stop),
    /// and every holder gets a `price_band` breach.
    fn band_verdict(&mut self, sid: usize, price: f64) -> Result<Option<(f64, f64)>> {
        let sym = &self.symbols[sid];
        let (Some(band), Some(last)) = (sym.band, sym.mark) else {
            return Ok(None);
        };
        let moved = (price - last).abs() / last;
        if moved <= band {
            return Ok(None);
        }
        let misses = sym.band_misses + 1;
        if misses >= self.guards.price_band_consecutive {
            return Ok(Some((moved, band)));
        }
        let msg = format!(
            "{} moved {:.4}% from the last accepted mark {last} to {price}, beyond its price \
             band of {:.4}% ({misses} in a row; at {} the move is accepted and its holders \
             breach)",
            sym.name,
            moved * 100.0,
            band * 100.0,
            self.guards.price_band_consecutive
        );
        self.symbols[sid].band_misses = misses;
        Err(CoreError::PriceBand(msg))
    }

    // ---- executions and orders --------------------------------------------------------------

    /// Apply a fill of signed quantity `qty` (> 0 buy, < 0 sell).
    #[allow(clippy::too_many_arguments)]
    pub fn fill(
        &mut self,
        algo_id: &str,
        symbol: &str,
        qty: f64,
        price: f64,
        fee: f64,
        ts: i64,
        out: &mut Vec<Breach>,
    ) -> Result<()> {
        let side = if qty < 0.0 { Side::Sell } else { Side::Buy };
        let unsigned = if qty < 0.0 { -qty } else { qty };
        self.fill_sided(algo_id, symbol, side, unsigned, price, fee, ts, out)
    }

    /// Apply a fill of unsigned quantity `qty` (> 0) on `side`. Checks, in the documented
    /// order: unknown algorithm, time, price, quantity, notional, fee, overflow.
    #[allow(clippy::too_many_arguments)]
    pub fn fill_sided(
        &mut self,
        algo_id: &str,
        symbol: &str,
        side: Side,
        qty: f64,
        price: f64,
        fee: f64,
        ts: i64,
        out: &mut Vec<Breach>,
    ) -> Result<()> {
        let slot = self.slot(algo_id)?;
        self.check_time(ts)?;
        self.check_price("fill price", price)?;
        self.check_quantity(qty, price)?;
        if !(fee.is_finite() && fee >= 0.0) {
            return Err(CoreError::BadFee(format!(
                "fee must be a finite number >= 0, got {fee}"
            )));
        }
        if fee > self.guards.max_notional {
            return Err(CoreError::BadFee(format!(
                "fee {fee} is above ingest.max_notional = {}",
                self.guards.max_notional
            )));
        }
        let signed = match side {
            Side::Buy => qty,
            Side::Sell => -qty,
        };
        // Until the symbol is quoted, every fill moves its mark to the fill price: the other
        // holders are re-marked too (their limits are evaluated after this algorithm's).
        let known = self.symbol_index.get(symbol).map(|&s| s as usize);
        let unquoted = known.map_or(true, |sid| self.symbols[sid].last_quote_ts.is_none());
        if let (true, Some(sid)) = (unquoted, known) {
            self.check_remark(sid, price, Some(slot))?;
        }
        let mark = match known {
            Some(sid) if !unquoted => self.symbols[sid].mark.unwrap_or(price),
            _ => price,
        };
        let plan = self.plan_fill(slot, known, signed, price, fee, mark)?;
        // Nothing below can fail.
        let t = self.tick(ts);
        let sid = match known {
            Some(sid) => sid as u32,
            None => self.symbol_id(symbol),
        };
        let mut others: Vec<usize> = Vec::new();
        if unquoted {
            let sym = &mut self.symbols[sid as usize];
            sym.mark = Some(price);
            for &(s, pidx) in &sym.holders {
                let s = s as usize;
                let Some(b) = self.algos[s].as_mut().filter(|_| s != slot) else {
                    continue;
                };
                if b.positions[pidx as usize].qty == 0.0 {
                    continue;
                }
                b.roll(t);
                let delta = b.positions[pidx as usize].remark(price);
                b.add_unrealized(delta);
                others.push(s);
            }
        }
        let sym = &mut self.symbols[sid as usize];
        sym.mark.get_or_insert(price);
        let algo = self.algos[slot].as_mut().expect("indexed slot is live");
        algo.roll(t);
        let mut position = plan.position;
        position.symbol = sid;
        match plan.existing {
            Some(i) => algo.positions[i] = position,
            None => {
                let (pos, created) = algo.position_mut(sid);
                debug_assert!(created);
                *pos = position;
                let pidx = algo.position_slot(sid).expect("just created") as u32;
                sym.holders.push((slot as u32, pidx));
            }
        }
        algo.realized += plan.realized;
        algo.fees += fee;
        algo.add_unrealized(plan.delta_unrealized);
        if let Some(net) = plan.closed_trade {
            algo.trades += 1;
            if net > 0.0 {
                algo.wins += 1;
            }
        }
        algo.fills += 1;
        algo.last_fill_ts = max_opt(algo.last_fill_ts, ts);
        algo.last_event_ts = max_opt(algo.last_event_ts, ts);
        algo.after_equity_change(t, out);
        for s in others {
            if let Some(b) = self.algos[s].as_mut() {
                b.after_equity_change(t, out);
            }
        }
        Ok(())
    }

    /// The fill applied to a copy of the position, checked finite: what `fill_sided` commits.
    fn plan_fill(
        &self,
        slot: usize,
        sid: Option<usize>,
        qty: f64,
        price: f64,
        fee: f64,
        mark: f64,
    ) -> Result<FillPlan> {
        let algo = self.algo(slot);
        let existing = sid.and_then(|s| algo.position_slot(s as u32));
        let mut position = existing.map_or_else(
            || Position::new(sid.unwrap_or(0) as u32),
            |i| algo.positions[i].clone(),
        );
        let before = position.unrealized;
        let outcome = position.apply_fill(qty, price, fee, mark);
        let delta_unrealized = position.unrealized - before;
        let id = &algo.config.algo_id;
        if !(position.is_finite() && (position.qty * mark).is_finite()) {
            return Err(self.overflow(id, "position or exposure"));
        }
        algo.check_finite_after(outcome.realized, fee, delta_unrealized)
            .map_err(|m| self.overflow(id, m))?;
        if outcome.closed_trade.is_some_and(|n| !n.is_finite()) {
            return Err(self.overflow(id, "trade PnL"));
        }
        Ok(FillPlan {
            position,
            realized: outcome.realized,
            closed_trade: outcome.closed_trade,
            delta_unrealized,
            existing,
        })
    }

    pub fn order(
        &mut self,
        algo_id: &str,
        event: OrderEvent,
        ts: i64,
        out: &mut Vec<Breach>,
    ) -> Result<()> {
        let slot = self.slot(algo_id)?;
        self.check_time(ts)?;
        if let OrderEvent::Acked { latency_ns } = event {
            if latency_ns < 0 {
                return Err(CoreError::BadLatency(format!(
                    "ack latency must be >= 0 ns, got {latency_ns}"
                )));
            }
        }
        let t = self.tick(ts);
        let algo = self.algo_mut(slot);
        algo.roll(t);
        algo.last_order_ts = max_opt(algo.last_order_ts, ts);
        algo.last_event_ts = max_opt(algo.last_event_ts, ts);
        match event {
            OrderEvent::Submitted => {
                algo.orders_submitted_total += 1;
                algo.rejects.record(t, false);
                algo.check_error_rate(t, out);
            }
            OrderEvent::Rejected => {
                algo.orders_rejected_total += 1;
                algo.rejects.record(t, true);
                algo.check_error_rate(t, out);
            }
            OrderEvent::Acked { latency_ns } => {
                algo.orders_acked_total += 1;
                algo.latency.record(t, latency_ns as u64);
                algo.check_latency(t, out);
            }
            OrderEvent::Cancelled => {
                algo.orders_cancelled_total += 1;
            }
        }
        Ok(())
    }

    /// Apply one decoded event.
    pub fn apply(&mut self, event: &Event<'_>, out: &mut Vec<Breach>) -> Result<()> {
        match event {
            Event::Quote {
                symbol,
                bid,
                ask,
                ts,
            } => self.quote(symbol, *bid, *ask, *ts, out),
            Event::Mark { symbol, price, ts } => self.mark(symbol, *price, *ts, out),
            Event::Fill {
                algo,
                symbol,
                side,
                qty,
                price,
                fee,
                ts,
            } => self.fill_sided(algo, symbol, *side, *qty, *price, *fee, *ts, out),
            Event::Order { algo, event, ts } => self.order(algo, *event, *ts, out),
        }
    }

    /// Decode one JSON event (docs/events.md) and apply it. No identity check: for trusted
    /// sources (replays, tests). Bus messages go through `ingest_msg`.
    pub fn ingest_json(&mut self, data: &[u8], out: &mut Vec<Breach>) -> Result<()> {
        let event = decode_json(data)?;
        self.apply(&event, out)
    }

    /// Decode one event received on NATS subject `subject` and apply it, if the subject may
    /// carry it: market data only on `<prefix>.md.<symbol>` (its own symbol), an algorithm's fills
    /// and order events only on `<prefix>.fills|orders.<gateway>.<algo>` of the gateway that runs
    /// it (`set_gateway`), with the body naming the same algorithm.
    ///
    /// Refusal reasons in order: decode, wrong_subject, unknown_algorithm, wrong_gateway, then
    /// those of the event itself (docs/events.md).
    pub fn ingest_msg(&mut self, subject: &str, data: &[u8], out: &mut Vec<Breach>) -> Result<()> {
        self.late_ok = false; // (whatever a panic inside ingest_durable left behind)
        self.route_and_apply(subject, data, out)
    }

    fn route_and_apply(&mut self, subject: &str, data: &[u8], out: &mut Vec<Breach>) -> Result<()> {
        let event = decode_json(data)?;
        let route = Route::parse(&self.prefix, subject)?;
        match (&route, &event) {
            (Route::Market { symbol: s }, Event::Quote { symbol, .. })
            | (Route::Market { symbol: s }, Event::Mark { symbol, .. }) => {
                if s != symbol {
                    return Err(CoreError::WrongSubject(format!(
                        "market data for {symbol:?} on the subject of {s:?} ({subject})"
                    )));
                }
            }
            (Route::Fills { gateway, algo: a }, Event::Fill { algo, .. })
            | (Route::Orders { gateway, algo: a }, Event::Order { algo, .. }) => {
                self.slot(algo)?;
                let runs = self.gateway_of.get(algo.as_ref()).map(String::as_str);
                if a != algo || runs != Some(*gateway) {
                    return Err(CoreError::WrongGateway(format!(
                        "an event of {algo:?} on {subject}: only the subjects of its own \
                         gateway ({}) and algorithm may carry it",
                        runs.unwrap_or("none configured")
                    )));
                }
            }
            (_, e) => {
                return Err(CoreError::WrongSubject(format!(
                    "a {} event may not arrive on {subject} ({})",
                    e.kind(),
                    route.carries()
                )))
            }
        }
        self.apply(&event, out)
    }

    /// `ingest_msg` for a fill or order event from the durable events stream: the gateway's
    /// record of what happened, delivered late when it was buffered (an outage) or replayed (a
    /// restart). One older than the clock by more than the tolerance is applied at the clock's
    /// time rather than refused as `out_of_order`: refusing it would lose it for good. Every
    /// other check stands; market data is refused (`wrong_subject`).
    pub fn ingest_durable(
        &mut self,
        subject: &str,
        data: &[u8],
        out: &mut Vec<Breach>,
    ) -> Result<()> {
        match Route::parse(&self.prefix, subject) {
            Ok(Route::Fills { .. }) | Ok(Route::Orders { .. }) => {}
            Ok(route) => {
                // decode first, as ingest_msg does: the same reason for the same bytes
                decode_json(data)?;
                return Err(CoreError::WrongSubject(format!(
                    "only fills and order events are durable, not {subject} ({})",
                    route.carries()
                )));
            }
            Err(e) => {
                decode_json(data)?;
                return Err(e);
            }
        }
        self.late_ok = true;
        let result = self.route_and_apply(subject, data, out);
        self.late_ok = false;
        result
    }

    /// A batch from the durable events stream, received on `<prefix>.batch.<gateway>`: a JSON
    /// array of fills and order events of that gateway's algorithms, applied in order as
    /// `ingest_durable` applies each (late ones at the clock's time). An event that is refused
    /// is pushed to `refused` with its index, and the others are applied all the same; returns
    /// how many were applied. The whole batch is refused (`decode`: not an array;
    /// `wrong_subject`: not a batch subject) before anything is applied.
    pub fn ingest_durable_batch(
        &mut self,
        subject: &str,
        data: &[u8],
        out: &mut Vec<Breach>,
        refused: &mut Vec<(usize, CoreError)>,
    ) -> Result<usize> {
        let gateway = match Route::parse(&self.prefix, subject)? {
            Route::Batch { gateway } => gateway,
            route => {
                return Err(CoreError::WrongSubject(format!(
                    "a batch may not arrive on {subject} ({})",
                    route.carries()
                )))
            }
        };
        let items: Vec<&serde_json::value::RawValue> = serde_json::from_slice(data)
            .map_err(|e| CoreError::Decode(format!("not a batch of events: {e}")))?;
        let mut applied = 0;
        self.late_ok = true;
        for (i, item) in items.iter().enumerate() {
            match self.apply_from_gateway(gateway, item.get().as_bytes(), out) {
                Ok(()) => applied += 1,
                Err(e) => refused.push((i, e)),
            }
        }
        self.late_ok = false;
        Ok(applied)
    }

    /// One event of a gateway's batch: a fill or order event of an algorithm that gateway runs.
    fn apply_from_gateway(
        &mut self,
        gateway: &str,
        data: &[u8],
        out: &mut Vec<Breach>,
    ) -> Result<()> {
        let event = decode_json(data)?;
        let algo = match &event {
            Event::Fill { algo, .. } | Event::Order { algo, .. } => algo,
            e => {
                return Err(CoreError::WrongSubject(format!(
                    "a {} event may not arrive in a batch (batches carry fills and order events)",
                    e.kind()
                )))
            }
        };
        self.slot(algo)?;
        let runs = self.gateway_of.get(algo.as_ref()).map(String::as_str);
        if runs != Some(gateway) {
            return Err(CoreError::WrongGateway(format!(
                "an event of {algo:?} in a batch of gateway {gateway}: only its own gateway ({}) \
                 may send it",
                runs.unwrap_or("none configured")
            )));
        }
        self.apply(&event, out)
    }

    // ---- control --------------------------------------------------------------------------

    /// Change the allocated capital (a cash flow: see docs/metrics.md).
    pub fn set_capital(
        &mut self,
        algo_id: &str,
        capital: f64,
        ts: i64,
        out: &mut Vec<Breach>,
    ) -> Result<()> {
        let slot = self.slot(algo_id)?;
        self.check_time(ts)?;
        if !(capital.is_finite() && capital > 0.0) {
            return Err(CoreError::Config(format!(
                "capital must be a finite number > 0, got {capital}"
            )));
        }
        let algo = self.algo(slot);
        if !algo.capital_change_is_finite(capital) {
            return Err(self.overflow(algo_id, "equity references"));
        }
        let t = self.tick(ts);
        let algo = self.algo_mut(slot);
        algo.roll(t);
        algo.set_capital(capital);
        algo.after_equity_change(t, out);
        Ok(())
    }

    /// Start measuring stage PnL from the current equity.
    pub fn mark_stage(&mut self, algo_id: &str) -> Result<()> {
        let slot = self.slot(algo_id)?;
        let algo = self.algo_mut(slot);
        algo.stage_mark_equity = algo.equity();
        algo.changed = true;
        Ok(())
    }

    /// Start a new measurement of the algorithm at its current capital (docs/metrics.md, "A new
    /// measurement"): equity restarts at the capital, positions are held on at their marks.
    pub fn new_measurement(&mut self, algo_id: &str, ts: i64) -> Result<()> {
        let slot = self.slot(algo_id)?;
        self.check_time(ts)?;
        let t = self.tick(ts);
        let algo = self.algo(slot);
        let marks: Vec<Option<f64>> = algo
            .positions
            .iter()
            .map(|p| self.symbols[p.symbol as usize].mark)
            .collect();
        let algo = self.algo_mut(slot);
        algo.roll(t);
        algo.new_measurement(&marks);
        Ok(())
    }

    /// Unlatch every limit of the algorithm (after a rollback has been handled).
    pub fn reset_breaches(&mut self, algo_id: &str) -> Result<()> {
        let slot = self.slot(algo_id)?;
        self.algo_mut(slot).reset_breaches();
        Ok(())
    }

    // ---- reads ----------------------------------------------------------------------------

    pub fn last_quote_ts(&self, symbol: &str) -> Option<i64> {
        let id = *self.symbol_index.get(symbol)?;
        self.symbols[id as usize].last_quote_ts
    }

    /// Every metric of the algorithm, rolled forward to the engine clock.
    pub fn snapshot(&mut self, algo_id: &str) -> Result<Snapshot> {
        let slot = self.slot(algo_id)?;
        let now = self.now;
        let algo = self.algos[slot].as_mut().expect("indexed slot is live");
        if let Some(t) = now {
            algo.roll_if_started(t);
            algo.rejects.expire(t);
            algo.latency.expire(t);
        }
        let algo = &*algo;
        let positions = algo
            .positions
            .iter()
            .map(|p| {
                let sym = &self.symbols[p.symbol as usize];
                PositionView {
                    symbol: sym.name.clone(),
                    qty: p.qty,
                    avg_cost: p.avg_cost,
                    mark: sym.mark,
                    unrealized_pnl: p.unrealized,
                    realized_pnl: p.realized,
                }
            })
            .collect();
        Ok(Snapshot {
            algo_id: algo.config.algo_id.clone(),
            version: algo.config.version.clone(),
            ts: now,
            capital: algo.capital(),
            equity: algo.equity(),
            realized_pnl: algo.realized,
            unrealized_pnl: algo.unrealized,
            fees: algo.fees,
            peak_equity: algo.peak,
            drawdown: algo.drawdown(),
            max_drawdown: algo.max_drawdown,
            daily_pnl: algo.daily_pnl(),
            session_start_equity: algo.session_start_equity,
            stage_pnl: algo.stage_pnl(),
            returns_count: algo.returns.len(),
            sharpe: algo.sharpe(),
            trades: algo.trades,
            wins: algo.wins,
            win_rate: algo.win_rate(),
            fills: algo.fills,
            orders_in_window: algo.rejects.submitted(),
            rejects_in_window: algo.rejects.rejected(),
            error_rate: algo.rejects.rate(),
            acks_in_window: algo.latency.len(),
            latency_p50_ns: algo.latency.quantile(1, 2),
            latency_p99_ns: algo.latency.quantile(99, 100),
            orders_submitted_total: algo.orders_submitted_total,
            orders_rejected_total: algo.orders_rejected_total,
            orders_acked_total: algo.orders_acked_total,
            orders_cancelled_total: algo.orders_cancelled_total,
            last_fill_ts: algo.last_fill_ts,
            last_order_ts: algo.last_order_ts,
            last_event_ts: algo.last_event_ts,
            confidence: algo.confidence(),
            breached: algo.breached().collect(),
            positions,
        })
    }

    /// The return series in the Sharpe window, oldest first (for audits and reference checks).
    pub fn returns(&self, algo_id: &str) -> Result<Vec<f64>> {
        let slot = self.slot(algo_id)?;
        Ok(self.algo(slot).returns.values().collect())
    }
}
