//! Which events a NATS subject may carry (docs/protocol.md): identity comes from the subject the
//! transport delivered a message on, never from the message body alone.

use crate::error::{CoreError, Result};

pub const DEFAULT_PREFIX: &str = "rampart";

/// NATS subject token rules: non-empty, no whitespace, `.`, `*` or `>`.
pub fn is_token(value: &str) -> bool {
    !value.is_empty()
        && !value
            .chars()
            .any(|c| c.is_whitespace() || c == '.' || c == '*' || c == '>')
}

/// Tokens joined by dots.
pub fn is_subject(value: &str) -> bool {
    value.split('.').all(is_token)
}

/// Where an event arrived, and so what it may be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route<'s> {
    /// `<prefix>.md.<symbol>`: quotes and marks of that symbol.
    Market { symbol: &'s str },
    /// `<prefix>.fills.<gateway>.<algo>`: fills of that gateway's algorithm.
    Fills { gateway: &'s str, algo: &'s str },
    /// `<prefix>.orders.<gateway>.<algo>`: order events of that gateway's algorithm.
    Orders { gateway: &'s str, algo: &'s str },
    /// `<prefix>.batch.<gateway>`: a JSON array of fills and order events of that gateway's
    /// algorithms, in order (durable events only: the SDK's outbox batches what waits).
    Batch { gateway: &'s str },
}

impl<'s> Route<'s> {
    pub fn parse(prefix: &str, subject: &'s str) -> Result<Route<'s>> {
        let bad = || {
            CoreError::WrongSubject(format!(
                "{subject:?} is not an event subject: expected {prefix}.md.<symbol>, \
                 {prefix}.fills.<gateway>.<algo>, {prefix}.orders.<gateway>.<algo> or \
                 {prefix}.batch.<gateway>"
            ))
        };
        let rest = subject
            .strip_prefix(prefix)
            .and_then(|r| r.strip_prefix('.'))
            .ok_or_else(bad)?;
        let (kind, rest) = rest.split_once('.').ok_or_else(bad)?;
        match kind {
            "md" if is_token(rest) => Ok(Route::Market { symbol: rest }),
            "batch" if is_token(rest) => Ok(Route::Batch { gateway: rest }),
            "fills" | "orders" => {
                let (gateway, algo) = rest.split_once('.').ok_or_else(bad)?;
                if !is_token(gateway) || !is_subject(algo) {
                    return Err(bad());
                }
                Ok(if kind == "fills" {
                    Route::Fills { gateway, algo }
                } else {
                    Route::Orders { gateway, algo }
                })
            }
            _ => Err(bad()),
        }
    }

    /// What the subject may carry, for error messages.
    pub fn carries(&self) -> &'static str {
        match self {
            Route::Market { .. } => "market-data subjects carry quotes and marks",
            Route::Fills { .. } => "fill subjects carry fills",
            Route::Orders { .. } => "order subjects carry order events",
            Route::Batch { .. } => "batch subjects carry arrays of fills and order events",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_kind() {
        assert_eq!(
            Route::parse("rampart", "rampart.md.ESZ6").unwrap(),
            Route::Market { symbol: "ESZ6" }
        );
        assert_eq!(
            Route::parse("p.q", "p.q.fills.gw1.momentum-v2.1.0").unwrap(),
            Route::Fills {
                gateway: "gw1",
                algo: "momentum-v2.1.0"
            }
        );
        assert_eq!(
            Route::parse("rampart", "rampart.batch.gw1").unwrap(),
            Route::Batch { gateway: "gw1" }
        );
        assert_eq!(
            Route::parse("rampart", "rampart.orders.gw1.a").unwrap(),
            Route::Orders {
                gateway: "gw1",
                algo: "a"
            }
        );
    }

    #[test]
    fn refuses_what_is_not_an_event_subject() {
        for s in [
            "rampart",
            "rampart.md",
            "rampart.md.a.b",
            "rampart.fills.gw1",
            "rampart.fills.gw1.",
            "rampart.hb.gw1",
            "other.md.ES",
            "rampartx.md.ES",
            "rampart.orders..a",
            "rampart.batch",
            "rampart.batch.gw1.x",
        ] {
            let e = Route::parse("rampart", s).unwrap_err();
            assert_eq!(e.reason(), "wrong_subject", "{s}");
        }
    }
}
