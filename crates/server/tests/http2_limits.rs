//! The HTTP/2 limits of the server's port, as a client that breaks them
//! sees them: the cap on concurrent streams (announced in SETTINGS, then
//! enforced with REFUSED_STREAM), the two reset-flood protections (a GOAWAY
//! with ENHANCE_YOUR_CALM and the connection closed, while other
//! connections are served), and keepalive pings on an idle connection (one
//! left unanswered closes it).
//!
//! A client library keeps to the limits the server announces, so these
//! tests speak raw HTTP/2 frames over a real socket. The servers take their
//! settings from configuration text, as `qscheduler serve --config` does.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::TestServer;
use common::rpc::{Rpc, Transport};
use qscheduler_server::config::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// Frame types and flags (RFC 9113, section 6).
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;
// Setting and error codes.
const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
const CANCEL: u32 = 0x8;
const REFUSED_STREAM: u32 = 0x7;
const ENHANCE_YOUR_CALM: u32 = 0xb;

/// Longest wait for anything the server should do at once; only reached
/// when it does not, so the test fails instead of hanging.
const PATIENCE: Duration = Duration::from_secs(60);

/// A server started from configuration text (`{dir}` is replaced by a
/// temporary data directory).
async fn server_from(config: &str) -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = config.replace("{dir}", dir.path().to_str().expect("utf-8"));
    let options = Config::parse(&text, Path::new("test.toml"))
        .expect("the configuration parses")
        .server_options()
        .expect("the configuration is usable");
    (TestServer::start(options).await, dir)
}

#[derive(Debug)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

impl Frame {
    /// The error code of a RST_STREAM or GOAWAY frame.
    fn error_code(&self) -> u32 {
        let at = if self.kind == GOAWAY { 4 } else { 0 };
        self.payload
            .get(at..at + 4)
            .map_or(u32::MAX, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("small frame");
    let mut out = len.to_be_bytes()[1..].to_vec();
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A header block of literal fields, not indexed and not Huffman-coded
/// (the simplest valid HPACK; every name and value is under 127 bytes).
fn header_block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x00);
        out.push(u8::try_from(name.len()).expect("short name"));
        out.extend_from_slice(name.as_bytes());
        out.push(u8::try_from(value.len()).expect("short value"));
        out.extend_from_slice(value.as_bytes());
    }
    out
}

/// The HEADERS of a pRPC NotifyTasks call whose body never comes: the
/// stream stays open while the server waits for it.
fn open_call(stream: u32) -> Vec<u8> {
    let block = header_block(&[
        (":method", "POST"),
        (":scheme", "http"),
        (":authority", "test"),
        (":path", "/prpc/swarming.v1.ExternalScheduler/NotifyTasks"),
        ("content-type", "application/prpc; encoding=binary"),
    ]);
    frame(HEADERS, END_HEADERS, stream, &block)
}

/// `GET /healthz`; with `end`, the whole request.
fn healthz_headers(stream: u32, end: bool) -> Vec<u8> {
    let block = header_block(&[
        (":method", "GET"),
        (":scheme", "http"),
        (":authority", "test"),
        (":path", "/healthz"),
    ]);
    let flags = if end {
        END_HEADERS | END_STREAM
    } else {
        END_HEADERS
    };
    frame(HEADERS, flags, stream, &block)
}

fn healthz(stream: u32) -> Vec<u8> {
    healthz_headers(stream, true)
}

/// One HTTP/2 connection, frame by frame.
struct Conn {
    tcp: TcpStream,
    /// Answer the server's pings as they are read (a live peer); they are
    /// returned all the same.
    answer_pings: bool,
}

impl Conn {
    /// Connects, exchanges SETTINGS, and returns the server's settings.
    async fn open(addr: SocketAddr) -> (Conn, Vec<(u16, u32)>) {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let mut conn = Conn {
            tcp,
            answer_pings: true,
        };
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &[]));
        conn.send(&hello).await;
        loop {
            let f = conn.next().await.expect("the server's SETTINGS");
            if f.kind == SETTINGS && f.flags & ACK == 0 {
                let settings = f
                    .payload
                    .chunks_exact(6)
                    .map(|c| {
                        (
                            u16::from_be_bytes([c[0], c[1]]),
                            u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
                        )
                    })
                    .collect();
                conn.send(&frame(SETTINGS, ACK, 0, &[])).await;
                return (conn, settings);
            }
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.tcp.write_all(bytes).await.expect("write");
    }

    /// Sends what may be cut off: the server may close the connection
    /// before reading it all, which is what the test waits for.
    async fn send_flood(&mut self, bytes: &[u8]) {
        let _ = self.tcp.write_all(bytes).await;
    }

    /// The next frame from the server; `None` once it closed the
    /// connection.
    async fn next(&mut self) -> Option<Frame> {
        let mut head = [0u8; 9];
        let read = tokio::time::timeout(PATIENCE, self.tcp.read_exact(&mut head))
            .await
            .expect("the server sent nothing, nor closed the connection");
        if read.is_err() {
            return None;
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        if len > 0
            && tokio::time::timeout(PATIENCE, self.tcp.read_exact(&mut payload))
                .await
                .expect("a frame cut short")
                .is_err()
        {
            return None;
        }
        let f = Frame {
            kind: head[3],
            flags: head[4],
            stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
            payload,
        };
        if f.kind == PING && f.flags & ACK == 0 && self.answer_pings {
            let pong = frame(PING, ACK, 0, &f.payload);
            // The server may be closing; what matters is what it sends.
            let _ = self.tcp.write_all(&pong).await;
        }
        Some(f)
    }

    /// Frames until one matches `want` (which is returned); panics if the
    /// connection closes first.
    async fn until(&mut self, what: &str, want: impl Fn(&Frame) -> bool) -> Frame {
        let mut seen = Vec::new();
        while let Some(f) = self.next().await {
            if want(&f) {
                return f;
            }
            seen.push((f.kind, f.flags, f.stream, f.error_code()));
        }
        panic!("connection closed before {what}; frames (type, flags, stream, code): {seen:?}");
    }

    /// Reads until the server closes the connection (panics if it does
    /// not); returns what it sent meanwhile.
    async fn until_closed(&mut self) -> Vec<Frame> {
        let mut frames = Vec::new();
        while let Some(f) = self.next().await {
            frames.push(f);
        }
        frames
    }
}

fn setting(settings: &[(u16, u32)], id: u16) -> Option<u32> {
    settings.iter().rev().find(|(i, _)| *i == id).map(|s| s.1)
}

/// The cap is announced, streams past it are refused and the others go
/// on; a freed slot is usable again; refusing is itself bounded: a client
/// that keeps opening streams past the cap is sent away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_past_the_cap_are_refused() {
    let (server, _dir) = server_from(
        r#"
[store]
data_dir = "{dir}"
[batching]
request_timeout = "10m"
[connections]
http2_max_concurrent_streams = 4
http2_max_local_error_reset_streams = 8
[event_log.files]
enabled = false
"#,
    )
    .await;
    let (mut conn, settings) = Conn::open(server.addr).await;
    assert_eq!(
        setting(&settings, SETTINGS_MAX_CONCURRENT_STREAMS),
        Some(4),
        "{settings:?}"
    );

    // Streams 1, 3, 5, 7 fill the cap (their calls wait for a body); 9 and
    // 11 are refused.
    let mut burst = Vec::new();
    for stream in [1, 3, 5, 7, 9, 11] {
        burst.extend(open_call(stream));
    }
    conn.send(&burst).await;
    let mut refused = Vec::new();
    while refused.len() < 2 {
        let f = conn
            .until("two refused streams", |f| f.kind == RST_STREAM)
            .await;
        assert_eq!(f.error_code(), REFUSED_STREAM, "{f:?}");
        refused.push(f.stream);
    }
    refused.sort_unstable();
    assert_eq!(refused, [9, 11]);

    // The others still wait for their bodies. Cancelling one frees its
    // slot for the next call, which is served.
    conn.send(&frame(RST_STREAM, 0, 1, &CANCEL.to_be_bytes()))
        .await;
    conn.send(&healthz(13)).await;
    let f = conn
        .until("the answer on stream 13", |f| {
            f.stream == 13 && matches!(f.kind, HEADERS | RST_STREAM)
        })
        .await;
    assert_eq!(f.kind, HEADERS, "stream 13 was refused: {f:?}");
    // :status 200 is entry 8 of HPACK's static table.
    assert_eq!(f.payload.first(), Some(&0x88), "{f:?}");
    conn.until("the body on stream 13", |f| {
        f.stream == 13 && f.kind == DATA && f.flags & END_STREAM != 0
    })
    .await;

    // Opening stream after stream past the cap: each is refused, and the
    // refusals count toward http2_max_local_error_reset_streams (8 here,
    // 1024 by default), past which the connection is closed. Stream 15
    // takes the free slot; 9 and 11 were refusals 1 and 2, so the ninth
    // refusal is stream 15 + 2 * 7. The flood is small enough for the
    // server to read it whole, so it closes the connection cleanly and the
    // GOAWAY arrives.
    let mut flood = Vec::new();
    for i in 0..12u32 {
        flood.extend(open_call(15 + 2 * i));
    }
    conn.send_flood(&flood).await;
    let away = conn.until("a GOAWAY", |f| f.kind == GOAWAY).await;
    assert_eq!(away.error_code(), ENHANCE_YOUR_CALM, "{away:?}");
    conn.until_closed().await;

    // Other connections are served as before.
    assert_eq!(common::get(server.addr, "/healthz").await.0, 200);
    server.stop().await;
}

/// Opening streams and resetting them at once (the "rapid reset" attack)
/// makes the server work for nothing; with the default settings the
/// connection gets a GOAWAY with ENHANCE_YOUR_CALM and is closed, and the
/// server keeps serving everyone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_flood_is_sent_away_and_others_are_served() {
    let (server, _dir) = server_from(
        r#"
[store]
data_dir = "{dir}"
[event_log.files]
enabled = false
"#,
    )
    .await;
    let (mut conn, settings) = Conn::open(server.addr).await;
    // The default cap.
    assert_eq!(
        setting(&settings, SETTINGS_MAX_CONCURRENT_STREAMS),
        Some(256),
        "{settings:?}"
    );
    // More than http2_max_pending_accept_reset_streams (50 by default), in
    // one write of a few KiB, so the server reads them all before it
    // accepts any (and, having read everything, closes the connection
    // cleanly: the GOAWAY is not lost to a TCP reset).
    let mut flood = Vec::new();
    for i in 0..60u32 {
        let stream = 1 + 2 * i;
        flood.extend(healthz_headers(stream, false));
        flood.extend(frame(RST_STREAM, 0, stream, &CANCEL.to_be_bytes()));
    }
    assert!(flood.len() < 8 << 10, "{} bytes", flood.len());
    conn.send_flood(&flood).await;
    let away = conn.until("a GOAWAY", |f| f.kind == GOAWAY).await;
    assert_eq!(away.error_code(), ENHANCE_YOUR_CALM, "{away:?}");
    conn.until_closed().await;

    // Plain HTTP, and a call over a fresh HTTP/2 connection.
    assert_eq!(common::get(server.addr, "/healthz").await.0, 200);
    let rpc = Rpc::connect(server.addr, Transport::Grpc).await;
    rpc.create_pool("after-the-flood").await;
    let (mut fresh, _) = Conn::open(server.addr).await;
    fresh.send(&healthz(1)).await;
    let f = fresh
        .until("the answer on stream 1", |f| {
            f.stream == 1 && matches!(f.kind, HEADERS | RST_STREAM)
        })
        .await;
    assert_eq!((f.kind, f.payload.first()), (HEADERS, Some(&0x88)), "{f:?}");
    server.stop().await;
}

/// On a connection with no calls the server sends keepalive pings at the
/// configured interval; while they are answered the connection stays
/// open, and one left unanswered past the timeout closes it (a peer that
/// went away stops holding a connection). The idle timeouts are far longer
/// here, so only the pings can close it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_pings_close_connections_whose_peer_is_gone() {
    let (server, _dir) = server_from(
        r#"
[store]
data_dir = "{dir}"
[connections]
header_read_timeout = "10m"
idle_timeout = "10m"
http2_keepalive_interval = "200ms"
http2_keepalive_timeout = "500ms"
[event_log.files]
enabled = false
"#,
    )
    .await;
    let (mut conn, _) = Conn::open(server.addr).await;
    let is_ping = |f: &Frame| f.kind == PING && f.flags & ACK == 0;
    // Answered (by `next`) as they come.
    for _ in 0..3 {
        let ping = conn.until("a keepalive ping", is_ping).await;
        assert_eq!((ping.stream, ping.payload.len()), (0, 8), "{ping:?}");
    }
    // Answered pings keep it usable.
    conn.send(&healthz(1)).await;
    let f = conn
        .until("the answer on stream 1", |f| {
            f.stream == 1 && f.kind == HEADERS
        })
        .await;
    assert_eq!(f.payload.first(), Some(&0x88), "{f:?}");
    // Now silence: the next ping goes unanswered and the server closes
    // the connection.
    conn.answer_pings = false;
    let last = conn.until_closed().await;
    assert!(last.iter().any(is_ping), "closed without a ping: {last:?}");
    assert_eq!(common::get(server.addr, "/healthz").await.0, 200);
    server.stop().await;
}
