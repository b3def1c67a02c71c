//! The NATS client protocol as a subscriber receives it: frames parsed from a byte stream that
//! arrives in chunks of any size (docs/protocol.md, "The wire path").
//!
//! `FrameParser::feed` takes each chunk the socket gives and calls back once per complete frame,
//! in order: `MSG`/`HMSG` (subject, sid, reply, headers, payload borrowed from the chunk or the
//! parser's buffer), `PING`, `PONG`, `+OK`, `-ERR` and `INFO`. A partial frame waits for the next
//! chunk. Anything that is not the protocol (an unknown operation, a control line over the
//! limit, a size that is not a number or over `max_payload`, a payload not followed by CRLF) is a
//! [`WireError`]: the stream cannot be resynchronised after it, so the parser refuses every later
//! chunk and the connection must be closed. Every frame before the error was delivered once;
//! nothing after it is.

use std::fmt;

/// The longest control line accepted. nats-server's `max_control_line` (4,096 by default)
/// bounds what clients send; the `MSG` line it forwards adds a sid, and a server may be set to
/// allow longer lines, so a message line is allowed well past it.
pub const DEFAULT_MAX_CONTROL: usize = 64 * 1024;

/// One frame of the server's side of the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame<'a> {
    Msg {
        subject: &'a str,
        sid: &'a str,
        reply: Option<&'a str>,
        /// `HMSG` only: the header block, starting `NATS/1.0`
        headers: Option<&'a [u8]>,
        payload: &'a [u8],
    },
    /// A message framed correctly but refused on its own: its subject, sid or reply is not
    /// UTF-8 (`bad_subject`), or its header block does not start `NATS/1.0` (`bad_headers`).
    /// A publisher on the bus can send either through the server: the stream goes on.
    Bad {
        subject: &'a [u8],
        reason: &'static str,
        payload: &'a [u8],
    },
    Ping,
    Pong,
    Ok,
    Err(&'a str),
    Info(&'a [u8]),
}

/// Why a stream was refused. The connection must be closed: nothing after it can be trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// no CRLF within the control line limit
    ControlTooLong { limit: usize },
    /// a line that is not a protocol operation of the server's (printable start of it)
    UnknownOp(String),
    /// an operation's arguments could not be read
    BadArgs { op: &'static str, detail: String },
    /// a message larger than the connection's `max_payload`
    TooBig { size: usize, max: usize },
    /// a line or a payload not ended by CRLF
    MissingCrlf { after: &'static str },
}

impl WireError {
    /// A stable code for logs and counters.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::ControlTooLong { .. } => "control_too_long",
            Self::UnknownOp(_) => "unknown_op",
            Self::BadArgs { .. } => "bad_args",
            Self::TooBig { .. } => "too_big",
            Self::MissingCrlf { .. } => "missing_crlf",
        }
    }
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ControlTooLong { limit } => {
                write!(f, "no end of line within {limit} bytes of a control line")
            }
            Self::UnknownOp(start) => write!(f, "not a NATS protocol operation: {start:?}"),
            Self::BadArgs { op, detail } => write!(f, "{op}: {detail}"),
            Self::TooBig { size, max } => {
                write!(f, "a message of {size} bytes, over max_payload {max}")
            }
            Self::MissingCrlf { after } => write!(f, "no CRLF after {after}"),
        }
    }
}

impl std::error::Error for WireError {}

/// A parser for one connection's incoming bytes.
#[derive(Debug)]
pub struct FrameParser {
    buf: Vec<u8>,
    max_payload: usize,
    max_control: usize,
    failed: Option<WireError>,
}

impl FrameParser {
    /// `max_payload`: the largest message accepted (the server's, from its `INFO`).
    pub fn new(max_payload: usize) -> Self {
        Self::with_limits(max_payload, DEFAULT_MAX_CONTROL)
    }

    pub fn with_limits(max_payload: usize, max_control: usize) -> Self {
        Self {
            buf: Vec::new(),
            max_payload,
            max_control,
            failed: None,
        }
    }

    pub fn set_max_payload(&mut self, max_payload: usize) {
        self.max_payload = max_payload;
    }

    /// Bytes of a partial frame waiting for the next chunk.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The error that stopped this stream, if one did.
    pub fn failed(&self) -> Option<&WireError> {
        self.failed.as_ref()
    }

    /// Parse `chunk` (after what earlier chunks left), calling `on` for every complete frame in
    /// order. On a protocol error, the frames before it have been delivered and the error is
    /// returned now and for every later chunk.
    pub fn feed(&mut self, chunk: &[u8], mut on: impl FnMut(Frame<'_>)) -> Result<(), WireError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let (max_payload, max_control) = (self.max_payload, self.max_control);
        let result = if self.buf.is_empty() {
            // the common case: whole frames in the chunk, parsed where they are
            let (used, result) = parse_frames(chunk, max_payload, max_control, &mut on);
            if result.is_ok() {
                self.buf.extend_from_slice(&chunk[used..]);
            }
            result
        } else {
            self.buf.extend_from_slice(chunk);
            let (used, result) = parse_frames(&self.buf, max_payload, max_control, &mut on);
            self.buf.drain(..used);
            result
        };
        if let Err(e) = &result {
            self.failed = Some(e.clone());
            self.buf = Vec::new();
        }
        result
    }
}

fn parse_frames(
    data: &[u8],
    max_payload: usize,
    max_control: usize,
    on: &mut impl FnMut(Frame<'_>),
) -> (usize, Result<(), WireError>) {
    let mut pos = 0;
    loop {
        match parse_one(&data[pos..], max_payload, max_control) {
            Ok(Some((frame, used))) => {
                on(frame);
                pos += used;
            }
            Ok(None) => return (pos, Ok(())),
            Err(e) => return (pos, Err(e)),
        }
    }
}

fn find_lf(d: &[u8]) -> Option<usize> {
    d.iter().position(|&b| b == b'\n')
}

fn is_space(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// One frame at the start of `d`: `None` while incomplete.
fn parse_one(
    d: &[u8],
    max_payload: usize,
    max_control: usize,
) -> Result<Option<(Frame<'_>, usize)>, WireError> {
    if d.is_empty() {
        return Ok(None);
    }
    let window = &d[..d.len().min(max_control + 2)];
    let Some(lf) = find_lf(window) else {
        if d.len() > max_control + 1 {
            return Err(WireError::ControlTooLong { limit: max_control });
        }
        // a partial line: if what is there already cannot start an operation, say so now
        check_op_prefix(d)?;
        return Ok(None);
    };
    if lf == 0 || d[lf - 1] != b'\r' {
        return Err(WireError::MissingCrlf {
            after: "a control line",
        });
    }
    let line = &d[..lf - 1];
    let next = lf + 1;
    let op_end = line.iter().position(|&b| is_space(b)).unwrap_or(line.len());
    let (op, rest) = line.split_at(op_end);
    let args = trim(rest);
    if op.eq_ignore_ascii_case(b"MSG") {
        let a = split_args::<4>("MSG", args)?;
        let (reply, size) = match a.1 {
            4 => (Some(a.0[2]), a.0[3]),
            3 => (None, a.0[2]),
            _ => return Err(bad("MSG", "expected: subject sid [reply] size")),
        };
        let size = number("MSG", size)?;
        if size > max_payload {
            return Err(WireError::TooBig {
                size,
                max: max_payload,
            });
        }
        let Some(payload) = body(d, next, size)? else {
            return Ok(None);
        };
        let frame = message(a.0[0], a.0[1], reply, None, payload);
        return Ok(Some((frame, next + size + 2)));
    }
    if op.eq_ignore_ascii_case(b"HMSG") {
        let a = split_args::<5>("HMSG", args)?;
        let (reply, hsize, tsize) = match a.1 {
            5 => (Some(a.0[2]), a.0[3], a.0[4]),
            4 => (None, a.0[2], a.0[3]),
            _ => {
                return Err(bad(
                    "HMSG",
                    "expected: subject sid [reply] header_size total_size",
                ))
            }
        };
        let (hsize, tsize) = (number("HMSG", hsize)?, number("HMSG", tsize)?);
        if hsize > tsize {
            return Err(bad("HMSG", "header size over total size"));
        }
        if tsize > max_payload {
            return Err(WireError::TooBig {
                size: tsize,
                max: max_payload,
            });
        }
        let Some(all) = body(d, next, tsize)? else {
            return Ok(None);
        };
        let (headers, payload) = all.split_at(hsize);
        let frame = message(a.0[0], a.0[1], reply, Some(headers), payload);
        return Ok(Some((frame, next + tsize + 2)));
    }
    let frame = if op.eq_ignore_ascii_case(b"PING") && args.is_empty() {
        Frame::Ping
    } else if op.eq_ignore_ascii_case(b"PONG") && args.is_empty() {
        Frame::Pong
    } else if op.eq_ignore_ascii_case(b"+OK") && args.is_empty() {
        Frame::Ok
    } else if op.eq_ignore_ascii_case(b"-ERR") {
        Frame::Err(text("-ERR", args)?)
    } else if op.eq_ignore_ascii_case(b"INFO") {
        Frame::Info(args)
    } else {
        return Err(unknown(line));
    };
    Ok(Some((frame, next)))
}

/// The operations a server sends, for refusing garbage before its end of line arrives.
const OPS: [&[u8]; 7] = [
    b"MSG ", b"HMSG ", b"PING", b"PONG", b"+OK", b"-ERR", b"INFO ",
];

fn check_op_prefix(d: &[u8]) -> Result<(), WireError> {
    let ok = OPS.iter().any(|op| {
        let n = d.len().min(op.len());
        let (have, want) = (&d[..n], &op[..n]);
        // "MSG\t" is as good as "MSG "
        let tab = want.last() == Some(&b' ') && have.last() == Some(&b'\t');
        have[..n - usize::from(tab)].eq_ignore_ascii_case(&want[..n - usize::from(tab)])
    });
    if ok {
        Ok(())
    } else {
        Err(unknown(d))
    }
}

/// The payload of `size` bytes at `start`, followed by CRLF; `None` while incomplete.
fn body(d: &[u8], start: usize, size: usize) -> Result<Option<&[u8]>, WireError> {
    let end = start + size;
    if d.len() < end + 2 {
        return Ok(None);
    }
    if &d[end..end + 2] != b"\r\n" {
        return Err(WireError::MissingCrlf { after: "a payload" });
    }
    Ok(Some(&d[start..end]))
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|&b| !is_space(b)).unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|&b| !is_space(b))
        .map_or(start, |i| i + 1);
    &s[start..end.max(start)]
}

/// Up to N whitespace-separated arguments, and how many there were.
fn split_args<'a, const N: usize>(
    op: &'static str,
    args: &'a [u8],
) -> Result<([&'a [u8]; N], usize), WireError> {
    let mut out: [&[u8]; N] = [&[]; N];
    let mut n = 0;
    for part in args.split(|&b| is_space(b)).filter(|p| !p.is_empty()) {
        if n == N {
            return Err(bad(op, "too many arguments"));
        }
        out[n] = part;
        n += 1;
    }
    Ok((out, n))
}

/// A framed message, or its refusal when what a publisher chose is not valid.
fn message<'a>(
    subject: &'a [u8],
    sid: &'a [u8],
    reply: Option<&'a [u8]>,
    headers: Option<&'a [u8]>,
    payload: &'a [u8],
) -> Frame<'a> {
    let utf8 = |b: &'a [u8]| std::str::from_utf8(b).ok();
    let (Some(subj), Some(sid), Some(reply)) = (
        utf8(subject),
        utf8(sid),
        reply.map_or(Some(None), |r| utf8(r).map(Some)),
    ) else {
        return Frame::Bad {
            subject,
            reason: "bad_subject",
            payload,
        };
    };
    if headers.is_some_and(|h| !h.starts_with(b"NATS/1.0")) {
        return Frame::Bad {
            subject,
            reason: "bad_headers",
            payload,
        };
    }
    Frame::Msg {
        subject: subj,
        sid,
        reply,
        headers,
        payload,
    }
}

fn text<'a>(op: &'static str, b: &'a [u8]) -> Result<&'a str, WireError> {
    std::str::from_utf8(b).map_err(|_| bad(op, "an argument that is not UTF-8"))
}

fn number(op: &'static str, b: &[u8]) -> Result<usize, WireError> {
    if b.is_empty() || b.len() > 19 || !b.iter().all(u8::is_ascii_digit) {
        return Err(bad(op, &format!("{:?} is not a size", printable(b))));
    }
    Ok(b.iter()
        .fold(0usize, |n, &c| n * 10 + usize::from(c - b'0')))
}

fn bad(op: &'static str, detail: &str) -> WireError {
    WireError::BadArgs {
        op,
        detail: detail.to_owned(),
    }
}

fn unknown(line: &[u8]) -> WireError {
    WireError::UnknownOp(printable(&line[..line.len().min(32)]))
}

fn printable(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq)]
    enum Owned {
        Msg(String, String, Option<String>, Option<Vec<u8>>, Vec<u8>),
        Bad(Vec<u8>, &'static str, Vec<u8>),
        Ping,
        Pong,
        Ok,
        Err(String),
        Info(Vec<u8>),
    }

    fn own(f: Frame<'_>) -> Owned {
        match f {
            Frame::Msg {
                subject,
                sid,
                reply,
                headers,
                payload,
            } => Owned::Msg(
                subject.into(),
                sid.into(),
                reply.map(Into::into),
                headers.map(<[u8]>::to_vec),
                payload.to_vec(),
            ),
            Frame::Bad {
                subject,
                reason,
                payload,
            } => Owned::Bad(subject.to_vec(), reason, payload.to_vec()),
            Frame::Ping => Owned::Ping,
            Frame::Pong => Owned::Pong,
            Frame::Ok => Owned::Ok,
            Frame::Err(e) => Owned::Err(e.into()),
            Frame::Info(i) => Owned::Info(i.to_vec()),
        }
    }

    fn parse(chunks: &[&[u8]]) -> (Vec<Owned>, Result<(), WireError>) {
        let mut p = FrameParser::new(1 << 20);
        let mut out = Vec::new();
        for c in chunks {
            if let Err(e) = p.feed(c, |f| out.push(own(f))) {
                return (out, Err(e));
            }
        }
        (out, Ok(()))
    }

    const STREAM: &[u8] = b"INFO {\"max_payload\":1048576}\r\n+OK\r\nPING\r\n\
        MSG rampart.md.ES 1 5\r\nhello\r\nMSG a.b 22 _INBOX.x 0\r\n\r\n\
        HMSG rampart.md.NQ 1 12 14\r\nNATS/1.0\r\n\r\nhi\r\nPONG\r\n-ERR 'Slow Consumer'\r\n";

    fn expected() -> Vec<Owned> {
        vec![
            Owned::Info(b"{\"max_payload\":1048576}".to_vec()),
            Owned::Ok,
            Owned::Ping,
            Owned::Msg(
                "rampart.md.ES".into(),
                "1".into(),
                None,
                None,
                b"hello".to_vec(),
            ),
            Owned::Msg(
                "a.b".into(),
                "22".into(),
                Some("_INBOX.x".into()),
                None,
                vec![],
            ),
            Owned::Msg(
                "rampart.md.NQ".into(),
                "1".into(),
                None,
                Some(b"NATS/1.0\r\n\r\n".to_vec()),
                b"hi".to_vec(),
            ),
            Owned::Pong,
            Owned::Err("'Slow Consumer'".into()),
        ]
    }

    #[test]
    fn every_frame_kind_in_one_chunk() {
        assert_eq!(parse(&[STREAM]), (expected(), Ok(())));
    }

    #[test]
    fn any_split_into_two_chunks_gives_the_same_frames() {
        for cut in 0..=STREAM.len() {
            let (a, b) = STREAM.split_at(cut);
            assert_eq!(parse(&[a, b]), (expected(), Ok(())), "cut at {cut}");
        }
    }

    #[test]
    fn byte_by_byte_gives_the_same_frames() {
        let chunks: Vec<&[u8]> = STREAM.chunks(1).collect();
        assert_eq!(parse(&chunks), (expected(), Ok(())));
    }

    #[test]
    fn a_payload_may_hold_crlf_and_protocol_words() {
        let s = b"MSG x 1 12\r\nPING\r\nMSG \r\n\r\n";
        let (frames, r) = parse(&[s]);
        assert_eq!(r, Ok(()));
        assert_eq!(
            frames,
            vec![Owned::Msg(
                "x".into(),
                "1".into(),
                None,
                None,
                b"PING\r\nMSG \r\n".to_vec()
            )]
        );
    }

    #[test]
    fn lower_case_and_tabs_are_the_protocol_too() {
        let (frames, r) = parse(&[b"msg\tx\t1\t2\r\nhi\r\nping\r\n"]);
        assert_eq!(r, Ok(()));
        assert_eq!(frames.len(), 2);
    }

    #[test]
    fn garbage_is_refused_and_nothing_after_it_is_delivered() {
        let (frames, r) = parse(&[b"PING\r\nHELLO world\r\nPING\r\n"]);
        assert_eq!(frames, vec![Owned::Ping]);
        assert_eq!(r.unwrap_err().reason(), "unknown_op");
        // garbage without an end of line is refused at once, not buffered up to the limit
        let (frames, r) = parse(&[b"PING\r\nXYZ"]);
        assert_eq!(frames, vec![Owned::Ping]);
        assert_eq!(r.unwrap_err().reason(), "unknown_op");
        // and the parser stays refused
        let mut p = FrameParser::new(100);
        assert!(p.feed(b"BOGUS\r\n", |_| ()).is_err());
        let mut n = 0;
        assert!(p.feed(b"PING\r\n", |_| n += 1).is_err());
        assert_eq!(n, 0);
    }

    #[test]
    fn sizes_over_the_limit_or_not_numbers_are_refused_before_the_payload_comes() {
        let mut p = FrameParser::new(10);
        let e = p.feed(b"MSG x 1 11\r\n", |_| ()).unwrap_err();
        assert_eq!(e, WireError::TooBig { size: 11, max: 10 });
        for line in [
            &b"MSG x 1 -5\r\n"[..],
            b"MSG x 1 99999999999999999999999\r\n",
            b"MSG x 1\r\n",
            b"MSG x 1 a b c\r\n",
            b"HMSG x 1 5 4\r\n",
            b"MSG x 1 1e3\r\n",
            b"PING x\r\n",
        ] {
            let (_, r) = parse(&[line]);
            let e = r.unwrap_err();
            assert!(
                matches!(e, WireError::BadArgs { .. } | WireError::UnknownOp(_)),
                "{line:?}: {e}"
            );
        }
    }

    #[test]
    fn a_payload_without_its_crlf_or_a_bare_lf_is_refused() {
        let (_, r) = parse(&[b"MSG x 1 2\r\nhiXX"]);
        assert_eq!(r.unwrap_err().reason(), "missing_crlf");
        let (_, r) = parse(&[b"PING\n"]);
        assert_eq!(r.unwrap_err().reason(), "missing_crlf");
    }

    #[test]
    fn a_message_a_publisher_made_invalid_is_refused_alone_and_the_stream_goes_on() {
        // what nats-server forwards from a publisher: a subject or reply that is not UTF-8,
        // a header block that is not NATS/1.0, a line past nats-server's 4,096
        let mut long = b"MSG rampart.md.ES 1 ".to_vec();
        long.extend(std::iter::repeat_n(b'r', 4090));
        long.extend(b" 2\r\nhi\r\n");
        let stream = [
            &b"MSG rampart.md.\xff 1 2\r\nhi\r\n"[..],
            b"MSG rampart.md.ES 1 \xff 2\r\nhi\r\n",
            b"HMSG rampart.md.ES 1 4 6\r\nXXXXhi\r\n",
            &long,
            b"PING\r\n",
        ]
        .concat();
        let (frames, r) = parse(&[&stream]);
        assert_eq!(r, Ok(()));
        assert_eq!(
            &frames[..3],
            &[
                Owned::Bad(b"rampart.md.\xff".to_vec(), "bad_subject", b"hi".to_vec()),
                Owned::Bad(b"rampart.md.ES".to_vec(), "bad_subject", b"hi".to_vec()),
                Owned::Bad(b"rampart.md.ES".to_vec(), "bad_headers", b"hi".to_vec()),
            ]
        );
        assert!(
            matches!(&frames[3], Owned::Msg(s, _, Some(r), None, p) if s == "rampart.md.ES" && r.len() == 4090 && p == b"hi")
        );
        assert_eq!(frames[4], Owned::Ping);
    }

    #[test]
    fn a_control_line_over_the_limit_is_refused() {
        let mut p = FrameParser::with_limits(1 << 20, 64);
        let mut line = b"INFO ".to_vec();
        line.extend(std::iter::repeat_n(b'x', 100));
        let e = p.feed(&line, |_| ()).unwrap_err();
        assert_eq!(e.reason(), "control_too_long");
        assert_eq!(p.buffered(), 0);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn frame() -> impl Strategy<Value = (Vec<u8>, Owned)> {
            let subject = "[a-z]{1,8}(\\.[a-zA-Z0-9_-]{1,8}){0,3}";
            let payload = proptest::collection::vec(any::<u8>(), 0..300);
            prop_oneof![
                (subject, payload.clone()).prop_map(|(s, p)| {
                    let mut b = format!("MSG {s} 7 {}\r\n", p.len()).into_bytes();
                    b.extend(&p);
                    b.extend(b"\r\n");
                    (b, Owned::Msg(s, "7".into(), None, None, p))
                }),
                (subject, payload).prop_map(|(s, p)| {
                    let h = b"NATS/1.0\r\nK: v\r\n\r\n".to_vec();
                    let mut b = format!("HMSG {s} 7 r.{s} {} {}\r\n", h.len(), h.len() + p.len())
                        .into_bytes();
                    b.extend(&h);
                    b.extend(&p);
                    b.extend(b"\r\n");
                    (
                        b,
                        Owned::Msg(s.clone(), "7".into(), Some(format!("r.{s}")), Some(h), p),
                    )
                }),
                Just((b"PING\r\n".to_vec(), Owned::Ping)),
                Just((b"PONG\r\n".to_vec(), Owned::Pong)),
                Just((b"+OK\r\n".to_vec(), Owned::Ok)),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

            /// Whatever the chunk boundaries, every frame comes out once, in order.
            #[test]
            fn chunking_never_changes_the_frames(
                frames in proptest::collection::vec(frame(), 0..30),
                cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..20),
            ) {
                let stream: Vec<u8> = frames.iter().flat_map(|(b, _)| b.clone()).collect();
                let mut at: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
                at.sort_unstable();
                let mut chunks = Vec::new();
                let mut prev = 0;
                for c in at {
                    chunks.push(&stream[prev..c]);
                    prev = c;
                }
                chunks.push(&stream[prev..]);
                let want: Vec<Owned> = frames.into_iter().map(|(_, f)| f).collect();
                prop_assert_eq!(parse(&chunks), (want, Ok(())));
            }

            /// Arbitrary bytes after valid frames: the valid ones come out once, then either more
            /// frames or a refusal; never a panic, and nothing after a refusal.
            #[test]
            fn arbitrary_bytes_are_parsed_or_refused_never_a_crash(
                frames in proptest::collection::vec(frame(), 0..5),
                junk in proptest::collection::vec(any::<u8>(), 0..400),
                split in any::<prop::sample::Index>(),
            ) {
                let mut stream: Vec<u8> = frames.iter().flat_map(|(b, _)| b.clone()).collect();
                stream.extend(&junk);
                let cut = split.index(stream.len() + 1);
                let (a, b) = stream.split_at(cut);
                let (got, _) = parse(&[a, b]);
                let want: Vec<Owned> = frames.into_iter().map(|(_, f)| f).collect();
                prop_assert!(got.len() >= want.len());
                prop_assert_eq!(&got[..want.len()], &want[..]);
            }
        }
    }
}
