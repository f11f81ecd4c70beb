//! Dashboard sessions: how a browser, which cannot send a bearer token with
//! a link, stays signed in to `/ui/`.
//!
//! Signing in (`POST /ui/signin`, see [`crate::ui`]) checks a token with the
//! same code as every call ([`Policy::authenticate`]) and, if it is good,
//! starts a session: a fresh random id (32 bytes from the operating
//! system) goes to the browser in a cookie that is `Secure`, `HttpOnly`,
//! `SameSite=Strict` and limited to `Path=/ui`, and the server keeps, under
//! the id's SHA-256, only *which credential* signed in (a static token's
//! hash, or the OIDC principal's name) and when the session ends. The token
//! itself is never kept, logged or sent back. Every request finds the
//! principal again through the current policy, so revoking a token (a
//! configuration reload) ends its sessions at once.
//!
//! Sessions are bounded: at most `[auth] dashboard_max_sessions` (the
//! oldest is dropped to make room), each ending after
//! `dashboard_session_ttl`, or when its JWT expires, or at sign-out. They
//! live in memory: a restart signs everyone out.
//!
//! The one thing not to break: a session id is a bearer credential, so it is
//! never logged, and only its hash is stored.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::HeaderMap;

use super::{AuthError, Kind, Policy, Principal, Sha256Hash, new_token};

/// The cookie's name.
pub const COOKIE: &str = "qs_session";

/// Default of `[auth] dashboard_session_ttl`.
pub const DEFAULT_TTL: Duration = Duration::from_secs(12 * 3600);

/// Default of `[auth] dashboard_max_sessions`.
pub const DEFAULT_MAX_SESSIONS: usize = 1000;

/// What signed a session in.
#[derive(Clone, Debug)]
enum Credential {
    /// A static token, by its hash.
    Token(Sha256Hash),
    /// An OIDC principal, by name.
    Oidc(String),
}

#[derive(Debug)]
struct Session {
    credential: Credential,
    ends: Instant,
}

/// The dashboard's sessions.
#[derive(Debug, Default)]
pub struct Sessions {
    by_hash: Mutex<HashMap<[u8; 32], Session>>,
}

/// Why a sign-in failed. Never carries the token.
#[derive(Debug, thiserror::Error)]
pub enum SignInError {
    /// The token is not valid.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The token is valid but holds no `view` role anywhere.
    #[error("{0} may not view any pool")]
    NoView(String),
    /// No randomness for the session id.
    #[error("cannot make a session id: {0}")]
    Random(String),
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Sessions {
    /// No sessions.
    pub fn new() -> Arc<Sessions> {
        Arc::new(Sessions::default())
    }

    /// Sessions alive now.
    pub fn len(&self) -> usize {
        let now = Instant::now();
        lock(&self.by_hash)
            .values()
            .filter(|s| s.ends > now)
            .count()
    }

    /// Whether no session is alive.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks `token` against `policy` and starts a session for it: the
    /// session id for the cookie, and how long it lasts.
    pub fn sign_in(&self, policy: &Policy, token: &str) -> Result<(String, Duration), SignInError> {
        let header = format!("Bearer {token}");
        let principal = policy.authenticate(Some(header.as_bytes()))?;
        if !principal.may(super::Role::View, None) {
            return Err(SignInError::NoView(format!(
                "{} {:?}",
                principal.kind.name(),
                principal.name
            )));
        }
        let mut ttl = policy.dashboard.session_ttl;
        let credential = match principal.kind {
            Kind::Oidc => {
                if let Some(left) = policy.oidc.as_ref().and_then(|o| o.time_left(token)) {
                    ttl = ttl.min(left);
                }
                Credential::Oidc(principal.name.clone())
            }
            _ => Credential::Token(Sha256Hash::of(token.as_bytes())),
        };
        let id = new_token().map_err(|e| SignInError::Random(e.to_string()))?;
        let now = Instant::now();
        let mut map = lock(&self.by_hash);
        let max = policy.dashboard.max_sessions.max(1);
        if map.len() >= max {
            map.retain(|_, s| s.ends > now);
        }
        while map.len() >= max {
            // Full of live sessions: the one closest to its end makes room.
            let Some(oldest) = map.iter().min_by_key(|(_, s)| s.ends).map(|(k, _)| *k) else {
                break;
            };
            map.remove(&oldest);
        }
        map.insert(
            Sha256Hash::of(id.as_bytes()).0,
            Session {
                credential,
                ends: now + ttl,
            },
        );
        Ok((id, ttl))
    }

    /// The principal of the session whose id is `id`, as the current policy
    /// knows it; `None` for an unknown, ended or revoked session.
    pub fn principal(&self, policy: &Policy, id: &str) -> Option<Arc<Principal>> {
        let key = Sha256Hash::of(id.as_bytes()).0;
        let now = Instant::now();
        let mut map = lock(&self.by_hash);
        let session = map.get(&key)?;
        if session.ends <= now {
            map.remove(&key);
            return None;
        }
        let found = match &session.credential {
            Credential::Token(hash) => {
                let mut found = None;
                for entry in &policy.tokens {
                    if entry.sha256.ct_eq(hash) && found.is_none() {
                        found = Some(Arc::clone(&entry.principal));
                    }
                }
                found
            }
            Credential::Oidc(name) => policy
                .oidc
                .as_ref()
                .and_then(|o| o.principals().find(|p| p.name == *name).cloned()),
        };
        if found.is_none() {
            map.remove(&key);
        }
        found
    }

    /// Ends the session `id` (sign-out).
    pub fn end(&self, id: &str) {
        lock(&self.by_hash).remove(&Sha256Hash::of(id.as_bytes()).0);
    }
}

/// The session id a request's cookies carry, if any.
pub fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
        .filter(|v| !v.is_empty() && v.len() <= 128)
}

/// The `Set-Cookie` value that starts a session.
pub fn set_cookie(id: &str, ttl: Duration) -> String {
    format!(
        "{COOKIE}={id}; Path=/ui; Max-Age={}; Secure; HttpOnly; SameSite=Strict",
        ttl.as_secs()
    )
}

/// The `Set-Cookie` value that ends one.
pub fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/ui; Max-Age=0; Secure; HttpOnly; SameSite=Strict")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Grant, Pools, Role, TokenEntry};

    fn policy(max: usize) -> Policy {
        let principal = |name: &str, pools: Pools| {
            Arc::new(Principal {
                name: name.into(),
                kind: Kind::Token,
                grants: vec![Grant {
                    roles: vec![Role::View],
                    pools,
                }],
            })
        };
        let mut p = Policy {
            tokens: vec![
                TokenEntry {
                    sha256: Sha256Hash::of(b"good"),
                    principal: principal("viewer", Pools::All),
                },
                TokenEntry {
                    sha256: Sha256Hash::of(b"bots"),
                    principal: Arc::new(Principal {
                        name: "bots".into(),
                        kind: Kind::Token,
                        grants: vec![Grant {
                            roles: vec![Role::Swarming],
                            pools: Pools::All,
                        }],
                    }),
                },
            ],
            ..Policy::default()
        };
        p.dashboard.max_sessions = max;
        p
    }

    #[test]
    fn a_session_names_its_principal_until_revoked_or_ended() {
        let s = Sessions::new();
        let p = policy(10);
        assert!(matches!(
            s.sign_in(&p, "bad"),
            Err(SignInError::Auth(AuthError::Unknown))
        ));
        assert!(matches!(s.sign_in(&p, "bots"), Err(SignInError::NoView(_))));
        assert!(s.is_empty());
        let (id, ttl) = s.sign_in(&p, "good").unwrap();
        assert_eq!(ttl, DEFAULT_TTL);
        assert!(id.len() >= 40 && !id.contains("good"));
        assert_eq!(s.principal(&p, &id).unwrap().name, "viewer");
        assert!(s.principal(&p, "qs_not-a-session").is_none());
        // A reload that drops the token ends its sessions.
        let mut revoked = p.clone();
        revoked.tokens.remove(0);
        assert!(s.principal(&revoked, &id).is_none());
        assert!(s.principal(&p, &id).is_none(), "gone for good");
        let (id, _) = s.sign_in(&p, "good").unwrap();
        s.end(&id);
        assert!(s.principal(&p, &id).is_none());
    }

    #[test]
    fn sessions_are_bounded_and_expire() {
        let s = Sessions::new();
        let p = policy(3);
        let ids: Vec<String> = (0..5).map(|_| s.sign_in(&p, "good").unwrap().0).collect();
        assert_eq!(s.len(), 3);
        let alive = ids
            .iter()
            .filter(|id| s.principal(&p, id).is_some())
            .count();
        assert_eq!(alive, 3);
        assert!(s.principal(&p, &ids[4]).is_some(), "the newest stays");
        let mut short = p.clone();
        short.dashboard.session_ttl = Duration::ZERO;
        let (id, _) = s.sign_in(&short, "good").unwrap();
        assert!(s.principal(&short, &id).is_none());
    }

    #[test]
    fn cookies() {
        let mut h = HeaderMap::new();
        h.append(
            http::header::COOKIE,
            "a=1; qs_session=abc; b=2".parse().unwrap(),
        );
        assert_eq!(session_cookie(&h), Some("abc"));
        let c = set_cookie("abc", Duration::from_secs(60));
        for part in [
            "Secure",
            "HttpOnly",
            "SameSite=Strict",
            "Path=/ui",
            "Max-Age=60",
        ] {
            assert!(c.contains(part), "{c}");
        }
        assert!(clear_cookie().contains("Max-Age=0"));
        assert_eq!(session_cookie(&HeaderMap::new()), None);
    }
}
