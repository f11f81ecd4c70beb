//! Credential parsing: an `Authorization` header (bytes as a client may
//! send them), the SHA-256 hex of the configuration, and a whole `[auth]`
//! section of a configuration file.
//!
//! No panic may escape, and the answers must be consistent: a header is
//! accepted only as `Bearer <token>` with a printable token, a principal
//! only for a token whose SHA-256 is configured, a hash only as 64
//! lower-case hex digits (which print back the same), and a parsed `[auth]`
//! section always turns into a policy.

#![no_main]

use std::path::Path;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use qscheduler_server::auth::{
    Grant, Kind, Policy, Pools, Principal, Role, Sha256Hash, TokenEntry, bearer_token,
};
use qscheduler_server::config::Config;

const KNOWN: &str = "qs_known-token";

fuzz_target!(|data: &[u8]| {
    let policy = Policy {
        tokens: vec![TokenEntry {
            sha256: Sha256Hash::of(KNOWN.as_bytes()),
            principal: Arc::new(Principal {
                name: "known".into(),
                kind: Kind::Token,
                grants: vec![Grant {
                    roles: vec![Role::View],
                    pools: Pools::All,
                }],
            }),
        }],
        ..Policy::default()
    };

    if let Some(token) = bearer_token(data) {
        assert!(!token.is_empty());
        assert!(token.bytes().all(|b| b.is_ascii_graphic()));
        let text = std::str::from_utf8(data).expect("accepted headers are text");
        assert!(text.len() > 6 && text[..6].eq_ignore_ascii_case("bearer"));
    }
    match policy.authenticate(Some(data)) {
        Ok(p) => {
            assert_eq!(p.name, "known");
            assert_eq!(bearer_token(data), Some(KNOWN));
        }
        Err(_) => assert_ne!(bearer_token(data), Some(KNOWN)),
    }
    assert!(policy.metrics_allowed(Some(data)));

    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(h) = Sha256Hash::parse(text) {
            assert_eq!(h.to_hex(), text);
        }
        let config = format!("[auth]\n{text}");
        if let Ok(c) = Config::parse(&config, Path::new("fuzz.toml")) {
            let _ = c.auth_policy();
        }
    }
});
