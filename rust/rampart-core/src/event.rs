//! Events as the core sees them, and their JSON form (docs/events.md).

use std::borrow::Cow;

use serde::Deserialize;

use crate::error::{CoreError, Result};

/// An order life-cycle event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderEvent {
    Submitted,
    Acked { latency_ns: i64 },
    Rejected,
    Cancelled,
}

/// The side of a fill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Buy,
    Sell,
}

/// One input event. Strings borrow from the decoded buffer where they can.
#[derive(Debug, Clone, PartialEq)]
pub enum Event<'a> {
    Quote {
        symbol: Cow<'a, str>,
        bid: f64,
        ask: f64,
        ts: i64,
    },
    Mark {
        symbol: Cow<'a, str>,
        price: f64,
        ts: i64,
    },
    Fill {
        algo: Cow<'a, str>,
        symbol: Cow<'a, str>,
        side: Side,
        /// As sent: must be > 0 (checked by the engine, in the documented order).
        qty: f64,
        price: f64,
        fee: f64,
        ts: i64,
    },
    Order {
        algo: Cow<'a, str>,
        event: OrderEvent,
        ts: i64,
    },
}

impl Event<'_> {
    /// The event's `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Quote { .. } => "quote",
            Event::Mark { .. } => "mark",
            Event::Fill { .. } => "fill",
            Event::Order { .. } => "order",
        }
    }
}

/// The union of every event's fields; decoding a flat struct is faster than a tagged enum.
#[derive(Deserialize)]
struct RawEvent<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    symbol: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    algo: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    side: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    event: Option<Cow<'a, str>>,
    #[serde(default)]
    bid: Option<f64>,
    #[serde(default)]
    ask: Option<f64>,
    #[serde(default)]
    price: Option<f64>,
    #[serde(default)]
    qty: Option<f64>,
    #[serde(default)]
    fee: Option<f64>,
    #[serde(default)]
    latency_ns: Option<i64>,
    #[serde(default)]
    ts: Option<i64>,
}

fn need<T>(v: Option<T>, kind: &str, field: &str) -> Result<T> {
    v.ok_or_else(|| CoreError::Decode(format!("{kind} event: missing field `{field}`")))
}

/// Decode one JSON event. The whole message must be UTF-8 (serde skips unknown fields without
/// looking inside their strings, so this is checked first).
pub fn decode_json(data: &[u8]) -> Result<Event<'_>> {
    let text = std::str::from_utf8(data)
        .map_err(|e| CoreError::Decode(format!("not a valid event: not UTF-8: {e}")))?;
    let raw: RawEvent<'_> = serde_json::from_str(text)
        .map_err(|e| CoreError::Decode(format!("not a valid event: {e}")))?;
    let kind = raw.kind.as_ref();
    let ts = need(raw.ts, kind, "ts")?;
    match kind {
        "quote" => Ok(Event::Quote {
            symbol: need(raw.symbol, kind, "symbol")?,
            bid: need(raw.bid, kind, "bid")?,
            ask: need(raw.ask, kind, "ask")?,
            ts,
        }),
        "mark" => Ok(Event::Mark {
            symbol: need(raw.symbol, kind, "symbol")?,
            price: need(raw.price, kind, "price")?,
            ts,
        }),
        "fill" => {
            let qty = need(raw.qty, kind, "qty")?;
            let side = match need(raw.side, kind, "side")?.as_ref() {
                "buy" => Side::Buy,
                "sell" => Side::Sell,
                other => {
                    return Err(CoreError::Decode(format!(
                        "fill event: side must be \"buy\" or \"sell\", got {other:?}"
                    )))
                }
            };
            Ok(Event::Fill {
                algo: need(raw.algo, kind, "algo")?,
                symbol: need(raw.symbol, kind, "symbol")?,
                side,
                qty,
                price: need(raw.price, kind, "price")?,
                fee: raw.fee.unwrap_or(0.0),
                ts,
            })
        }
        "order" => {
            let event = match need(raw.event, kind, "event")?.as_ref() {
                "submitted" => OrderEvent::Submitted,
                "acked" => OrderEvent::Acked {
                    latency_ns: need(raw.latency_ns, "acked order", "latency_ns")?,
                },
                "rejected" => OrderEvent::Rejected,
                "cancelled" => OrderEvent::Cancelled,
                other => {
                    return Err(CoreError::Decode(format!(
                        "order event: event must be one of submitted, acked, rejected, cancelled; got {other:?}"
                    )))
                }
            };
            Ok(Event::Order {
                algo: need(raw.algo, kind, "algo")?,
                event,
                ts,
            })
        }
        other => Err(CoreError::Decode(format!(
            "unknown event type {other:?}: expected quote, mark, fill or order"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_each_type() {
        let q = decode_json(br#"{"type":"quote","symbol":"ES","bid":1.0,"ask":1.5,"ts":5,"v":1}"#);
        assert_eq!(
            q.unwrap(),
            Event::Quote {
                symbol: "ES".into(),
                bid: 1.0,
                ask: 1.5,
                ts: 5
            }
        );
        let f = decode_json(
            br#"{"type":"fill","algo":"a","symbol":"ES","side":"sell","qty":2,"price":3.5,"ts":7}"#,
        )
        .unwrap();
        assert_eq!(
            f,
            Event::Fill {
                algo: "a".into(),
                symbol: "ES".into(),
                side: Side::Sell,
                qty: 2.0,
                price: 3.5,
                fee: 0.0,
                ts: 7
            }
        );
        let o =
            decode_json(br#"{"type":"order","algo":"a","event":"acked","latency_ns":900,"ts":8}"#);
        assert_eq!(
            o.unwrap(),
            Event::Order {
                algo: "a".into(),
                event: OrderEvent::Acked { latency_ns: 900 },
                ts: 8
            }
        );
    }

    #[test]
    fn prices_round_trip_exactly() {
        // Shortest round-trip decimal of a double (what msgspec and most encoders emit) must
        // decode to the same double; serde_json's default float parser is off by an ulp here.
        let price = 90.530_377_326_052_99_f64;
        let msg = format!(r#"{{"type":"mark","symbol":"ES","price":{price},"ts":1}}"#);
        match decode_json(msg.as_bytes()).unwrap() {
            Event::Mark { price: p, .. } => assert_eq!(p.to_bits(), price.to_bits()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn reports_what_is_wrong() {
        let e =
            decode_json(br#"{"type":"fill","algo":"a","symbol":"ES","qty":2,"price":3.5,"ts":7}"#);
        assert_eq!(
            e.unwrap_err().to_string(),
            "fill event: missing field `side`"
        );
        let e = decode_json(br#"{"type":"order","algo":"a","event":"acked","ts":8}"#);
        assert!(e.unwrap_err().to_string().contains("latency_ns"));
        let e = decode_json(b"{not json");
        assert_eq!(e.unwrap_err().reason(), "decode");
        let e = decode_json(br#"{"type":"quote","symbol":"ES","bid":"1","ask":1.5,"ts":5}"#);
        assert_eq!(e.unwrap_err().reason(), "decode");
        // The sign is the engine's to check, after the algorithm and the time (docs/events.md).
        let e = decode_json(
            br#"{"type":"fill","algo":"a","symbol":"ES","side":"buy","qty":-2,"price":3.5,"ts":7}"#,
        );
        assert!(matches!(e.unwrap(), Event::Fill { qty, .. } if qty == -2.0));
        // Invalid UTF-8 anywhere, even inside a field nobody reads, is not an event.
        let e = decode_json(
            b"{\"type\":\"mark\",\"symbol\":\"ES\",\"price\":1,\"ts\":1,\"x\":\"\xff\"}",
        );
        assert_eq!(e.unwrap_err().reason(), "decode");
    }
}
