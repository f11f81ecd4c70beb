//! Parsers for the pRPC request headers.
//!
//! They live apart from the handler so that their edge cases (every one of
//! which is reachable from the network) can be tested, and fuzzed, without a
//! server. None of them panics, whatever the input.

use std::time::Duration;

use thiserror::Error;

/// A pRPC message encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// Protobuf wire format (the default).
    Binary,
    /// The protobuf JSON mapping.
    Json,
    /// The protobuf text format.
    Text,
}

impl Format {
    /// The `Content-Type` a response in this format carries (and a client
    /// sends for a request in this format).
    pub fn media_type(self) -> &'static str {
        match self {
            Format::Binary => "application/prpc; encoding=binary",
            Format::Json => "application/json",
            Format::Text => "application/prpc; encoding=text",
        }
    }

    /// Tie-break rank during `Accept` negotiation: lower wins.
    fn preference(self) -> u8 {
        match self {
            Format::Binary => 0,
            Format::Json => 1,
            Format::Text => 2,
        }
    }
}

/// Why a request header was rejected. The message is what the client sees.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{0}")]
pub struct HeaderError(pub String);

impl HeaderError {
    fn new(msg: impl Into<String>) -> Self {
        HeaderError(msg.into())
    }
}

/// Outcome of a failed `Accept` negotiation; the two cases map to different
/// HTTP statuses (400 and 406).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AcceptError {
    /// The header could not be parsed (for example a malformed `q`).
    #[error("bad Accept header: {0}")]
    Malformed(String),
    /// The header parsed, but names no format the server can produce.
    #[error("bad Accept header: specified media types are not not supported")]
    NotSupported,
}

/// A parsed media type: lower-cased `type/subtype` and its parameters (names
/// lower-cased, values unquoted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaType {
    /// `type/subtype` (or a bare token), lower-cased.
    pub essence: String,
    /// Parameters in the order given.
    pub params: Vec<(String, String)>,
}

/// RFC 2045 token characters: visible ASCII except the tspecials.
fn is_token_char(c: char) -> bool {
    c.is_ascii_graphic()
        && !matches!(
            c,
            '(' | ')'
                | '<'
                | '>'
                | '@'
                | ','
                | ';'
                | ':'
                | '\\'
                | '"'
                | '/'
                | '['
                | ']'
                | '?'
                | '='
        )
}

fn take_token(s: &str) -> (&str, &str) {
    let end = s.find(|c: char| !is_token_char(c)).unwrap_or(s.len());
    s.split_at(end)
}

/// Parses a quoted string that starts at `s[0] == '"'`; returns the
/// unescaped value and the rest.
fn take_quoted(s: &str) -> Option<(String, &str)> {
    let mut out = String::new();
    let mut chars = s.char_indices().skip(1);
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((out, &s[i + 1..])),
            '\\' => {
                let (_, escaped) = chars.next()?;
                out.push(escaped);
            }
            c if c.is_control() => return None,
            c => out.push(c),
        }
    }
    None
}

/// Parses a media type with parameters, following the MIME grammar
/// (`type/subtype *( ";" name "=" ( token / quoted-string ) )`).
pub fn parse_media_type(value: &str) -> Result<MediaType, HeaderError> {
    let s = value.trim_start();
    let (typ, rest) = take_token(s);
    if typ.is_empty() {
        return Err(HeaderError::new("no media type"));
    }
    let mut essence = typ.to_ascii_lowercase();
    let mut rest = rest;
    if let Some(after_slash) = rest.strip_prefix('/') {
        let (sub, r) = take_token(after_slash);
        if sub.is_empty() {
            return Err(HeaderError::new("expected token after slash"));
        }
        essence.push('/');
        essence.push_str(&sub.to_ascii_lowercase());
        rest = r;
    }
    let mut params: Vec<(String, String)> = Vec::new();
    loop {
        rest = rest.trim_start();
        if rest.is_empty() {
            break;
        }
        let Some(r) = rest.strip_prefix(';') else {
            return Err(HeaderError::new("expected semicolon"));
        };
        let r = r.trim_start();
        if r.is_empty() {
            // A trailing semicolon is tolerated.
            break;
        }
        let (name, r) = take_token(r);
        if name.is_empty() {
            return Err(HeaderError::new("invalid parameter name"));
        }
        let Some(r) = r.trim_start().strip_prefix('=') else {
            return Err(HeaderError::new(format!(
                "missing value for parameter {name:?}"
            )));
        };
        let r = r.trim_start();
        let (val, r) = if r.starts_with('"') {
            take_quoted(r).ok_or_else(|| HeaderError::new("invalid quoted parameter value"))?
        } else {
            // An empty value (`encoding=`) is read as "", like `encoding=""`.
            let (v, r) = take_token(r);
            (v.to_string(), r)
        };
        let name = name.to_ascii_lowercase();
        if params.iter().any(|(n, _)| *n == name) {
            return Err(HeaderError::new(format!("duplicate parameter {name:?}")));
        }
        params.push((name, val));
        rest = r;
    }
    Ok(MediaType { essence, params })
}

/// Maps a parsed media type to a format, with the rules of request
/// `Content-Type` (also used for each `Accept` entry once `q` is removed).
fn format_of(mt: &MediaType) -> Result<Format, HeaderError> {
    match mt.essence.as_str() {
        "application/prpc" => {
            let mut format = Format::Binary;
            for (name, value) in &mt.params {
                if name != "encoding" {
                    return Err(HeaderError::new(format!("unexpected parameter {name:?}")));
                }
                format = match value.as_str() {
                    "" | "binary" => Format::Binary,
                    "json" => Format::Json,
                    "text" => Format::Text,
                    other => {
                        return Err(HeaderError::new(format!(
                            "invalid encoding parameter: {other:?}"
                        )));
                    }
                };
            }
            Ok(format)
        }
        "application/json" => Ok(Format::Json),
        "application/grpc" | "*/*" | "application/*" => Ok(Format::Binary),
        other => Err(HeaderError::new(format!("unknown content type: {other:?}"))),
    }
}

/// Parses a request `Content-Type`, which must be given: a request
/// without one is what a web page can send to any server without asking
/// (a "simple" cross-origin POST), so taking it as binary would let pages
/// call the server. An error is answered with HTTP 415.
pub fn parse_content_type(value: Option<&str>) -> Result<Format, HeaderError> {
    match value {
        None => Err(HeaderError::new(MISSING_CONTENT_TYPE.to_owned())),
        Some(v) if v.trim().is_empty() => Err(HeaderError::new(MISSING_CONTENT_TYPE.to_owned())),
        Some(v) => parse_media_type(v)
            .and_then(|mt| format_of(&mt))
            .map_err(|e| HeaderError::new(format!("bad Content-Type header: {e}"))),
    }
}

const MISSING_CONTENT_TYPE: &str = "bad Content-Type header: missing; pRPC requests must \
     give one of application/prpc; encoding=binary|json|text or application/json";

/// Quality factors closer than this are equal.
const Q_EPSILON: f64 = 1e-9;

/// Negotiates the response format from `Accept`. Absent or empty means
/// binary. Entries naming unsupported media types are skipped; the highest
/// `q` wins, ties prefer binary, then JSON, then text.
pub fn parse_accept(value: Option<&str>) -> Result<Format, AcceptError> {
    let Some(value) = value.filter(|v| !v.trim().is_empty()) else {
        return Ok(Format::Binary);
    };
    let mut best: Option<(f64, Format)> = None;
    for entry in value.split(',') {
        if entry.trim().is_empty() {
            continue;
        }
        let mut mt = parse_media_type(entry).map_err(|e| AcceptError::Malformed(e.0))?;
        let mut q = 1.0;
        if let Some(pos) = mt.params.iter().position(|(n, _)| n == "q") {
            let (_, raw) = mt.params.remove(pos);
            q = parse_q(&raw).ok_or_else(|| AcceptError::Malformed(format!("q={raw:?}")))?;
        }
        let Ok(format) = format_of(&mt) else {
            continue;
        };
        best = match best {
            None => Some((q, format)),
            Some((bq, bf)) => {
                let better = q > bq + Q_EPSILON
                    || ((q - bq).abs() <= Q_EPSILON && format.preference() < bf.preference());
                if better {
                    Some((q, format))
                } else {
                    Some((bq, bf))
                }
            }
        };
    }
    best.map(|(_, f)| f).ok_or(AcceptError::NotSupported)
}

/// A quality factor is a finite number in `[0, 1]`.
fn parse_q(raw: &str) -> Option<f64> {
    let q: f64 = raw.trim().parse().ok()?;
    (q.is_finite() && (0.0..=1.0).contains(&q)).then_some(q)
}

/// Parses `X-Prpc-Grpc-Timeout` (also the format of gRPC's `grpc-timeout`):
/// ASCII digits followed by one unit of `H`, `M`, `S`, `m`, `u`, `n`.
///
/// A value too large for [`Duration`] saturates: any such deadline is beyond
/// the server's own cap anyway.
pub fn parse_timeout(value: &str) -> Result<Duration, HeaderError> {
    let bad = || HeaderError::new(format!("bad timeout {value:?}"));
    let Some(unit) = value.chars().last() else {
        return Err(bad());
    };
    let digits = &value[..value.len() - unit.len_utf8()];
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let d = match unit {
        'H' => n.checked_mul(3600).map(Duration::from_secs),
        'M' => n.checked_mul(60).map(Duration::from_secs),
        'S' => Some(Duration::from_secs(n)),
        'm' => Some(Duration::from_millis(n)),
        'u' => Some(Duration::from_micros(n)),
        'n' => Some(Duration::from_nanos(n)),
        _ => return Err(bad()),
    };
    Ok(d.unwrap_or(Duration::MAX))
}

/// Encodes a timeout for `X-Prpc-Grpc-Timeout`: the finest unit whose
/// (rounded up) value fits in 8 digits, so the server never sees a shorter
/// deadline than the client has.
pub fn encode_timeout(timeout: Duration) -> String {
    const MAX: u128 = 99_999_999;
    let nanos = timeout.as_nanos();
    let units: [(u128, char); 6] = [
        (1, 'n'),
        (1_000, 'u'),
        (1_000_000, 'm'),
        (1_000_000_000, 'S'),
        (60 * 1_000_000_000, 'M'),
        (3600 * 1_000_000_000, 'H'),
    ];
    for (size, unit) in units {
        let v = nanos.div_ceil(size);
        if v <= MAX {
            return format!("{v}{unit}");
        }
    }
    format!("{MAX}H")
}

/// Parses `X-Prpc-Max-Response-Size`: a positive decimal byte count.
pub fn parse_max_response_size(value: &str) -> Result<u64, HeaderError> {
    match value.parse::<i64>() {
        Ok(n) if n > 0 => Ok(n.unsigned_abs()),
        _ => Err(HeaderError::new(format!(
            "bad X-Prpc-Max-Response-Size {value:?}: expected a positive integer"
        ))),
    }
}

/// Whether an `Accept-Encoding` value allows a gzip response. Unparseable
/// entries are ignored: this header can only widen what the server may do.
pub fn accepts_gzip(value: &str) -> bool {
    value.split(',').any(|entry| {
        let mut parts = entry.split(';');
        let coding = parts.next().unwrap_or("").trim();
        if !coding.eq_ignore_ascii_case("gzip") {
            return false;
        }
        for p in parts {
            let Some((k, v)) = p.split_once('=') else {
                continue;
            };
            if k.trim().eq_ignore_ascii_case("q") {
                return parse_q(v).is_some_and(|q| q > 0.0);
            }
        }
        true
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn content_type_table() {
        assert!(parse_content_type(None).is_err());
        assert!(parse_content_type(Some(" ")).is_err());
        let ok = [
            (Some("application/prpc; encoding=binary"), Format::Binary),
            (Some("application/prpc"), Format::Binary),
            (Some("application/prpc; encoding="), Format::Binary),
            (Some("application/prpc; encoding=\"\""), Format::Binary),
            (Some("*/*"), Format::Binary),
            (Some("application/*"), Format::Binary),
            (Some("application/grpc"), Format::Binary),
            (Some("application/json"), Format::Json),
            (Some("Application/JSON; charset=utf-8"), Format::Json),
            (Some("application/prpc; encoding=json"), Format::Json),
            (Some("application/prpc;encoding=text"), Format::Text),
            (Some("application/prpc; ENCODING=text"), Format::Text),
        ];
        for (v, want) in ok {
            assert_eq!(parse_content_type(v), Ok(want), "{v:?}");
        }
        let bad = [
            "text/plain",
            "application/prpc; encoding=yaml",
            "application/prpc; charset=utf-8",
            "application/prpc; encoding=json; encoding=text",
            "application/",
            "/json",
            "application/prpc; encoding",
            "application/prpc encoding=json",
        ];
        for v in bad {
            let err = parse_content_type(Some(v)).expect_err(v);
            assert!(err.0.starts_with("bad Content-Type header: "), "{err}");
        }
    }

    #[test]
    fn accept_negotiation() {
        let cases = [
            (None, Format::Binary),
            (Some(""), Format::Binary),
            (Some("application/json"), Format::Json),
            (Some("application/prpc; encoding=text"), Format::Text),
            (Some("*/*"), Format::Binary),
            // Ties prefer binary, then JSON, then text.
            (
                Some("application/prpc; encoding=text, application/json"),
                Format::Json,
            ),
            (
                Some("application/json, application/prpc; encoding=binary"),
                Format::Binary,
            ),
            // Highest q wins.
            (
                Some("application/prpc; encoding=binary; q=0.5, application/json"),
                Format::Json,
            ),
            (
                Some("application/json;q=0.3, application/prpc; encoding=text; q=0.9"),
                Format::Text,
            ),
            // Unsupported entries are skipped.
            (Some("text/html, application/json;q=0.1"), Format::Json),
            (
                Some("application/prpc; encoding=yaml, application/json;q=0.2"),
                Format::Json,
            ),
            // Equal within epsilon is a tie.
            (
                Some("application/json;q=0.5000000000001, */*;q=0.5"),
                Format::Binary,
            ),
        ];
        for (v, want) in cases {
            assert_eq!(parse_accept(v), Ok(want), "{v:?}");
        }
        assert_eq!(
            parse_accept(Some("text/html, image/png")),
            Err(AcceptError::NotSupported)
        );
        for bad in [
            "application/json;q=x",
            "application/json;q=2",
            "application/json;q=NaN",
            "application/json;q=-1",
            "application/json;q=",
        ] {
            assert!(
                matches!(parse_accept(Some(bad)), Err(AcceptError::Malformed(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn timeouts() {
        assert_eq!(parse_timeout("20S"), Ok(Duration::from_secs(20)));
        assert_eq!(parse_timeout("2H"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_timeout("3M"), Ok(Duration::from_secs(180)));
        assert_eq!(parse_timeout("150m"), Ok(Duration::from_millis(150)));
        assert_eq!(parse_timeout("7u"), Ok(Duration::from_micros(7)));
        assert_eq!(parse_timeout("0n"), Ok(Duration::ZERO));
        // More digits than a u64 holds is malformed, like any other garbage.
        assert!(parse_timeout("99999999999999999999H").is_err());
        assert_eq!(parse_timeout("18446744073709551615H"), Ok(Duration::MAX));
        for bad in [
            "", "S", "10", "10s", "-1S", "+1S", "1.5S", " 1S", "1 S", "1SS", "١S",
        ] {
            assert!(parse_timeout(bad).is_err(), "{bad:?}");
        }
        assert_eq!(encode_timeout(Duration::from_secs(20)), "20000000u");
        assert_eq!(encode_timeout(Duration::from_nanos(1500)), "1500n");
        assert_eq!(
            encode_timeout(Duration::from_secs(3600 * 24 * 365)),
            "31536000S"
        );
        assert_eq!(
            encode_timeout(Duration::from_secs(3600 * 24 * 365 * 10)),
            "5256000M"
        );
    }

    #[test]
    fn max_response_size() {
        assert_eq!(parse_max_response_size("1"), Ok(1));
        assert_eq!(parse_max_response_size("1048576"), Ok(1 << 20));
        for bad in ["0", "-5", "", "abc", "1.5", "99999999999999999999"] {
            assert!(parse_max_response_size(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn gzip_acceptance() {
        assert!(accepts_gzip("gzip"));
        assert!(accepts_gzip("deflate, GZIP;q=0.5"));
        assert!(!accepts_gzip("gzip;q=0"));
        assert!(!accepts_gzip("deflate, br"));
        assert!(!accepts_gzip(""));
        assert!(!accepts_gzip("gzipx"));
    }

    proptest! {
        #[test]
        fn content_type_never_panics(s in ".*") {
            let _ = parse_content_type(Some(&s));
        }

        #[test]
        fn accept_never_panics(s in ".*") {
            let _ = parse_accept(Some(&s));
        }

        #[test]
        fn structured_accept_never_panics(
            entries in proptest::collection::vec(
                ("[a-z*]{0,12}/[a-z*+]{0,12}", proptest::option::of("[-+0-9.eEa-z]{0,6}")),
                0..6,
            )
        ) {
            let header = entries
                .iter()
                .map(|(mt, q)| match q {
                    Some(q) => format!("{mt};q={q}"),
                    None => mt.clone(),
                })
                .collect::<Vec<_>>()
                .join(", ");
            let _ = parse_accept(Some(&header));
        }

        #[test]
        fn timeout_never_panics(s in ".*") {
            let _ = parse_timeout(&s);
        }

        #[test]
        fn timeout_round_trips_within_a_unit(nanos in 0u64..u64::MAX / 4) {
            let d = Duration::from_nanos(nanos);
            let parsed = parse_timeout(&encode_timeout(d)).map_err(|e| TestCaseError::fail(e.0))?;
            // Rounding is up, never down.
            prop_assert!(parsed >= d);
        }

        #[test]
        fn max_response_size_never_panics(s in ".*") {
            let _ = parse_max_response_size(&s);
        }

        #[test]
        fn accept_encoding_never_panics(s in ".*") {
            let _ = accepts_gzip(&s);
        }
    }
}
