//! HTTP requests as a client (or an attacker) could send them to the
//! server's port: pRPC or gRPC, a known method or any path, any of the
//! headers the protocol reads with valid, borderline or arbitrary values,
//! and a body that is a structured request in the announced encoding, a
//! damaged one, or arbitrary bytes.

use std::io::Write;

use arbitrary::{Arbitrary, Result, Unstructured};
use axum::body::Body;

use crate::requests::{METHODS, Req};

/// Where the call goes.
#[derive(Arbitrary, Debug)]
pub enum Transport {
    Prpc,
    Grpc,
}

/// An encoding for a structured body.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Binary,
    Json,
    Text,
}

/// What the body holds.
#[derive(Debug)]
pub enum Payload {
    /// A request of the method called, in `encoding`.
    Message(Req),
    /// A request of some method, whatever is called.
    AnyMessage(Req),
    /// Arbitrary bytes.
    Raw(Vec<u8>),
}

impl<'a> Arbitrary<'a> for Payload {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(match u.int_in_range(0..=15u8)? {
            0 => Payload::Raw(u.arbitrary()?),
            1 => Payload::AnyMessage(u.arbitrary()?),
            _ => Payload::Message(u.arbitrary()?),
        })
    }
}

/// Damage done to the encoded body.
#[derive(Arbitrary, Debug)]
pub enum Damage {
    Truncate(u16),
    Flip(u16, u8),
    Insert(u16, u8),
}

/// One HTTP request.
#[derive(Debug)]
pub struct Call {
    pub transport: Transport,
    /// `None`: the payload's own method; else a path of its own.
    pub path: Option<String>,
    pub http_method: http::Method,
    pub encoding: Encoding,
    pub content_type: Option<String>,
    pub accept: Option<String>,
    pub timeout: Option<String>,
    pub gzip: Option<String>,
    pub accept_encoding: Option<String>,
    pub max_response_size: Option<String>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub payload: Payload,
    pub damage: Option<Damage>,
    /// gRPC: the frame's compression flag and whether its length is right.
    pub frame_flag: u8,
    pub frame_len: Option<u32>,
}

fn choose_or_arbitrary(u: &mut Unstructured<'_>, xs: &[&str]) -> Result<Option<String>> {
    Ok(match u.int_in_range(0..=7u8)? {
        0..=2 => None,
        3 => Some(u.arbitrary()?),
        _ => Some(u.choose(xs)?.to_string()),
    })
}

const PATHS: [&str; 8] = [
    "/prpc",
    "/prpc/",
    "/prpc/swarming.v1.ExternalScheduler",
    "/prpc/swarming.v1.ExternalScheduler/",
    "/prpc/swarming.v1.ExternalScheduler/Nope",
    "/prpc/x/y/z",
    "/swarming.v1.ExternalScheduler/Nope",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
];

impl<'a> Arbitrary<'a> for Call {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let transport = if u.ratio(1, 4)? {
            Transport::Grpc
        } else {
            Transport::Prpc
        };
        let path = match u.int_in_range(0..=31u8)? {
            0 => Some(format!("/prpc/{}", u.arbitrary::<String>()?)),
            1 => Some(u.choose(&PATHS)?.to_string()),
            2 => {
                let m = u.choose(&METHODS)?;
                Some(format!("/prpc/{}/{}", m.service.to_lowercase(), m.method))
            }
            _ => None,
        };
        let http_method = match u.int_in_range(0..=31u8)? {
            0 => http::Method::GET,
            1 => http::Method::OPTIONS,
            2 => http::Method::PUT,
            3 => http::Method::from_bytes(u.arbitrary::<&[u8]>()?).unwrap_or(http::Method::POST),
            _ => http::Method::POST,
        };
        let encoding: Encoding = u.arbitrary()?;
        let content_type = match u.int_in_range(0..=15u8)? {
            0 => None,
            1 => Some(u.arbitrary()?),
            2 => Some(
                u.choose(&[
                    "application/prpc",
                    "application/prpc; encoding=bogus",
                    "text/plain",
                    "application/json; charset=latin1",
                    "application/prpc; encoding=\"json\"",
                    "application/grpc+proto",
                    "application/grpc",
                    ";;",
                ])?
                .to_string(),
            ),
            _ => Some(
                match encoding {
                    Encoding::Binary => "application/prpc; encoding=binary",
                    Encoding::Json => "application/json",
                    Encoding::Text => "application/prpc; encoding=text",
                }
                .to_string(),
            ),
        };
        let accept = choose_or_arbitrary(
            u,
            &[
                "application/json",
                "application/prpc; encoding=text",
                "application/prpc; encoding=binary",
                "*/*",
                "application/*;q=0.5, application/json;q=0",
                "text/html",
                "application/json;q=2",
                "application/x-protobuf",
            ],
        )?;
        let timeout = choose_or_arbitrary(
            u,
            &[
                "10S",
                "1n",
                "0m",
                "99999999H",
                "18446744073709551615H",
                "5",
                "1X",
                "S",
            ],
        )?;
        let gzip = choose_or_arbitrary(u, &["gzip", "identity", "GZIP ", "deflate"])?;
        let accept_encoding = choose_or_arbitrary(u, &["gzip", "br, gzip;q=0", "*"])?;
        let max_response_size = choose_or_arbitrary(u, &["1", "0", "100000", "-1", "x"])?;
        let nheaders = u.int_in_range(0..=2)?;
        let headers = (0..nheaders)
            .map(|_| {
                let name = match u.int_in_range(0..=7u8)? {
                    0 => u.arbitrary()?,
                    1 => "x-stuff-bin".to_string(),
                    2 => "authorization".to_string(),
                    3 => "x-qscheduler-forwarded-by".to_string(),
                    4 => "grpc-timeout".to_string(),
                    5 => "origin".to_string(),
                    6 => "content-length".to_string(),
                    _ => "te".to_string(),
                };
                Ok((name, u.arbitrary()?))
            })
            .collect::<Result<_>>()?;
        Ok(Call {
            transport,
            path,
            http_method,
            encoding,
            content_type,
            accept,
            timeout,
            gzip,
            accept_encoding,
            max_response_size,
            headers,
            payload: u.arbitrary()?,
            damage: if u.ratio(1, 8)? {
                Some(u.arbitrary()?)
            } else {
                None
            },
            frame_flag: if u.ratio(1, 16)? { u.arbitrary()? } else { 0 },
            frame_len: if u.ratio(1, 16)? {
                Some(u.arbitrary()?)
            } else {
                None
            },
        })
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let _ = e.write_all(data);
    e.finish().unwrap_or_default()
}

impl Call {
    /// The body bytes before framing and compression.
    fn body(&self) -> Vec<u8> {
        let mut body = match &self.payload {
            Payload::Raw(b) => b.clone(),
            Payload::Message(r) | Payload::AnyMessage(r) => match self.encoding {
                Encoding::Binary => r.encode(),
                Encoding::Json => r.to_json().unwrap_or_default(),
                Encoding::Text => r.to_text().unwrap_or_default(),
            },
        };
        match self.damage {
            None => {}
            Some(Damage::Truncate(n)) => body.truncate(usize::from(n)),
            Some(Damage::Flip(at, bits)) if !body.is_empty() => {
                let i = usize::from(at) % body.len();
                body[i] ^= bits;
            }
            Some(Damage::Flip(..)) => {}
            Some(Damage::Insert(at, b)) => {
                let i = usize::from(at).min(body.len());
                body.insert(i, b);
            }
        }
        body
    }

    /// The HTTP request.
    pub fn request(&self) -> http::Request<Body> {
        let method = match &self.payload {
            Payload::Message(r) | Payload::AnyMessage(r) => r.method(),
            Payload::Raw(_) => METHODS[0],
        };
        let grpc = matches!(self.transport, Transport::Grpc);
        let path = match (&self.path, grpc) {
            (Some(p), _) => p.clone(),
            (None, false) => format!("/prpc/{}/{}", method.service, method.method),
            (None, true) => format!("/{}/{}", method.service, method.method),
        };
        let mut body = self.body();
        if self
            .gzip
            .as_deref()
            .is_some_and(|g| g.trim().eq_ignore_ascii_case("gzip"))
        {
            body = gzip(&body);
        }
        if grpc {
            let len = self.frame_len.unwrap_or(body.len() as u32);
            let mut framed = Vec::with_capacity(body.len() + 5);
            framed.push(self.frame_flag);
            framed.extend_from_slice(&len.to_be_bytes());
            framed.extend_from_slice(&body);
            body = framed;
        }
        let mut b = http::Request::builder().method(self.http_method.clone());
        b = match http::Uri::try_from(path.as_str()) {
            Ok(uri) => b.uri(uri),
            Err(_) => b.uri("/prpc/%"),
        };
        let mut headers = http::HeaderMap::new();
        let mut set = |name: &str, value: &str| {
            if let (Ok(n), Ok(v)) = (
                http::HeaderName::from_bytes(name.as_bytes()),
                http::HeaderValue::from_str(value),
            ) {
                headers.append(n, v);
            }
        };
        if grpc {
            set(
                "content-type",
                self.content_type
                    .as_deref()
                    .map_or("application/grpc", |c| {
                        if c.starts_with("application/") {
                            "application/grpc"
                        } else {
                            c
                        }
                    }),
            );
            set("te", "trailers");
            if let Some(t) = &self.timeout {
                set("grpc-timeout", t);
            }
            if let Some(g) = &self.gzip {
                set("grpc-encoding", g);
            }
        } else {
            if let Some(c) = &self.content_type {
                set("content-type", c);
            }
            if let Some(a) = &self.accept {
                set("accept", a);
            }
            if let Some(t) = &self.timeout {
                set("x-prpc-grpc-timeout", t);
            }
            if let Some(g) = &self.gzip {
                set("content-encoding", g);
            }
            if let Some(a) = &self.accept_encoding {
                set("accept-encoding", a);
            }
            if let Some(m) = &self.max_response_size {
                set("x-prpc-max-response-size", m);
            }
        }
        for (name, value) in &self.headers {
            if let (Ok(n), Ok(v)) = (
                http::HeaderName::from_bytes(name.as_bytes()),
                http::HeaderValue::from_bytes(value),
            ) {
                headers.append(n, v);
            }
        }
        let mut req = match b.body(Body::from(body)) {
            Ok(r) => r,
            Err(_) => http::Request::new(Body::empty()),
        };
        req.headers_mut().extend(headers);
        req
    }
}
