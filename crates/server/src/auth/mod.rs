//! Who may call: principals, roles and pool-scoped grants.
//!
//! Once the configuration has an `[auth]` section every call is refused
//! unless its caller is known and holds the role its method needs, for the
//! pool it names. Without `[auth]` the server trusts whoever can reach it,
//! which [`crate::server`] only allows on loopback addresses (or with
//! `--insecure`).
//!
//! The pieces:
//!
//! * [`Role`]: `swarming` (the four ExternalScheduler methods), `admin`
//!   (QSchedulerAdmin; implies `view`) and `view` (QSchedulerView,
//!   QSchedulerInsight and the dashboard under `/ui/`);
//! * [`Principal`]: a named caller with its grants (roles, each limited to
//!   a list of pools or to all of them);
//! * [`Policy`]: the `[auth]` section turned into a lookup from
//!   credentials to principals. Static tokens are stored only as their
//!   SHA-256, and a presented token is compared against every stored hash in
//!   constant time;
//! * [`layer`]: the tower layer in front of both transports, which finds the
//!   principal (or refuses the call before its body is read) and leaves an
//!   [`Access`] in the request's extensions; the handlers check it against
//!   the pool once they have validated the pool id ([`check_pool`]).
//!
//! Messages name the principal, the role and the pool, never a credential.

pub mod layer;
pub mod oidc;
pub mod session;

use std::fmt;
use std::sync::Arc;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use tonic::Status;

/// What a grant allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The scheduler API Swarming calls (ExternalScheduler).
    Swarming,
    /// Pool and account administration (QSchedulerAdmin); implies `view`.
    Admin,
    /// Read-only views (QSchedulerView).
    View,
}

impl Role {
    /// The role's name in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            Role::Swarming => "swarming",
            Role::Admin => "admin",
            Role::View => "view",
        }
    }

    /// Every role, for messages and the CLI.
    pub const ALL: [Role; 3] = [Role::Swarming, Role::Admin, Role::View];

    /// Parses a role name.
    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == s)
    }

    /// Whether holding `self` gives `needed`.
    fn gives(self, needed: Role) -> bool {
        self == needed || (self == Role::Admin && needed == Role::View)
    }

    /// The role a method of one of the three services needs, `None` for
    /// anything else.
    pub fn for_service(service: &str) -> Option<Role> {
        match service {
            "swarming.v1.ExternalScheduler" => Some(Role::Swarming),
            "qscheduler.QSchedulerAdmin" => Some(Role::Admin),
            "qscheduler.QSchedulerView" | "qscheduler.QSchedulerInsight" => Some(Role::View),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The pools a grant covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pools {
    /// Every pool (`"*"`).
    All,
    /// Only these.
    Only(Vec<String>),
}

impl Pools {
    /// From the configuration's list (`"*"` anywhere in it means all; no
    /// list at all means all too).
    pub fn from_list(list: Option<&[String]>) -> Pools {
        match list {
            None => Pools::All,
            Some(l) if l.iter().any(|p| p == "*") => Pools::All,
            Some(l) => Pools::Only(l.to_vec()),
        }
    }

    fn contains(&self, pool: &str) -> bool {
        match self {
            Pools::All => true,
            Pools::Only(l) => l.iter().any(|p| p == pool),
        }
    }
}

/// Roles on a set of pools.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The roles.
    pub roles: Vec<Role>,
    /// Where.
    pub pools: Pools,
}

/// How a principal proved who it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A static bearer token from `[[auth.tokens]]`.
    Token,
    /// A client certificate, by a SAN named in `[[tls.grants]]`.
    Certificate,
    /// An OIDC / JWT bearer token, by a subject or email of
    /// `[[auth.oidc.grants]]`.
    Oidc,
}

impl Kind {
    /// For logs and audit records.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Token => "token",
            Kind::Certificate => "certificate",
            Kind::Oidc => "OIDC subject",
        }
    }
}

/// A known caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// Its name in the configuration (a token's `name`).
    pub name: String,
    /// The kind of credential.
    pub kind: Kind,
    /// What it may do.
    pub grants: Vec<Grant>,
}

impl Principal {
    /// Whether the principal holds `role` for `pool` (`None`: for some
    /// pool).
    pub fn may(&self, role: Role, pool: Option<&str>) -> bool {
        self.grants.iter().any(|g| {
            g.roles.iter().any(|r| r.gives(role)) && pool.is_none_or(|p| g.pools.contains(p))
        })
    }

    /// Whether the principal holds `role` for every pool (`pools = ["*"]`).
    pub fn may_everywhere(&self, role: Role) -> bool {
        self.grants
            .iter()
            .any(|g| g.roles.iter().any(|r| r.gives(role)) && g.pools == Pools::All)
    }
}

/// The principal of a call and the role its method needs, left in the
/// request's extensions by [`layer::AuthLayer`].
#[derive(Clone, Debug)]
pub struct Access {
    /// Who calls.
    pub principal: Arc<Principal>,
    /// What the method needs.
    pub role: Role,
}

impl Access {
    /// `PERMISSION_DENIED` unless the principal holds the role for `pool`.
    pub fn check_pool(&self, pool: &str) -> Result<(), Status> {
        if self.principal.may(self.role, Some(pool)) {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "{} {:?} does not have role {} for pool {pool:?}",
                self.principal.kind.name(),
                self.principal.name,
                self.role
            )))
        }
    }
}

/// Checks a call's access to `pool`: `access` is what the auth layer left
/// (`None` when the server runs without `[auth]`, or when the call did not
/// come through the layer); `required` says whether the server runs with
/// `[auth]`, in which case a call without access is refused.
pub fn check_pool(access: Option<&Access>, required: bool, pool: &str) -> Result<(), Status> {
    match access {
        Some(a) => a.check_pool(pool),
        None if required => Err(Status::unauthenticated(
            "this server requires credentials: send Authorization: Bearer <token>",
        )),
        None => Ok(()),
    }
}

/// A SHA-256 digest, as the configuration stores credentials.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Sha256Hash(pub [u8; 32]);

/// Not the digest: a short or guessable token (or peer secret) can be
/// found from its hash, so `Debug` of a [`Policy`] must not hand it out.
impl fmt::Debug for Sha256Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sha256Hash(<redacted>)")
    }
}

impl Sha256Hash {
    /// The hash of `data`.
    pub fn of(data: &[u8]) -> Sha256Hash {
        Sha256Hash(Sha256::digest(data).into())
    }

    /// Parses 64 lower-case hex digits.
    pub fn parse(s: &str) -> Result<Sha256Hash, String> {
        let bytes = s.as_bytes();
        if bytes.len() != 64 {
            return Err(format!(
                "malformed SHA-256: expected 64 lower-case hex digits, got {} characters \
                 (print a token's hash with `qscheduler auth new-token`, or \
                 `printf %s TOKEN | sha256sum`)",
                s.chars().count()
            ));
        }
        let mut out = [0u8; 32];
        for (i, pair) in bytes.chunks_exact(2).enumerate() {
            let hi = hex_digit(pair[0]);
            let lo = hex_digit(pair[1]);
            match (hi, lo) {
                (Some(h), Some(l)) => out[i] = (h << 4) | l,
                _ => {
                    return Err(
                        "malformed SHA-256: expected 64 lower-case hex digits (0-9, a-f)".into(),
                    );
                }
            }
        }
        Ok(Sha256Hash(out))
    }

    /// 64 lower-case hex digits.
    pub fn to_hex(&self) -> String {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push(char::from(DIGITS[usize::from(b >> 4)]));
            s.push(char::from(DIGITS[usize::from(b & 15)]));
        }
        s
    }

    /// Equality whose time does not depend on where the two differ.
    pub fn ct_eq(&self, other: &Sha256Hash) -> bool {
        let mut diff = 0u8;
        for (a, b) in self.0.iter().zip(other.0.iter()) {
            diff |= a ^ b;
        }
        std::hint::black_box(diff) == 0
    }
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// The bearer token of an `Authorization` header value: `Bearer <token>`
/// (the scheme in any case, one or more spaces). `None` for anything else,
/// including an empty token or one with characters no token has.
pub fn bearer_token(header: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(header).ok()?;
    let (scheme, rest) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = rest.trim_matches(' ');
    let valid = !token.is_empty()
        && token.len() <= 16 * 1024
        && token.bytes().all(|b| b.is_ascii_graphic());
    valid.then_some(token)
}

/// A static token entry: the hash of the token and who presents it.
#[derive(Clone, Debug)]
pub struct TokenEntry {
    /// SHA-256 of the token.
    pub sha256: Sha256Hash,
    /// Its principal.
    pub principal: Arc<Principal>,
}

/// The `[auth]` section, ready to answer "who is this?".
#[derive(Clone, Debug, Default)]
pub struct Policy {
    /// Static tokens.
    pub tokens: Vec<TokenEntry>,
    /// Browser origins allowed to call pRPC.
    pub allowed_origins: Vec<String>,
    /// When set, `/metrics` needs a bearer token with this hash.
    pub metrics_token: Option<Sha256Hash>,
    /// Principals of client certificates, by SAN (`[[tls.grants]]`).
    pub certificates: Vec<CertificateEntry>,
    /// JWT bearer tokens (`[auth.oidc]`).
    pub oidc: Option<Arc<oidc::OidcVerifier>>,
    /// How browsers sign in to the dashboard.
    pub dashboard: DashboardAuth,
}

/// The dashboard's sign-in settings (`[auth] dashboard_*`,
/// `proxy_user_header`).
#[derive(Clone, Debug)]
pub struct DashboardAuth {
    /// How long a session lasts.
    pub session_ttl: std::time::Duration,
    /// Sessions kept at most.
    pub max_sessions: usize,
    /// A header an authenticating proxy sets to the principal's name;
    /// believed on `/ui/` requests only when configured.
    pub proxy_user_header: Option<http::HeaderName>,
}

impl Default for DashboardAuth {
    fn default() -> Self {
        DashboardAuth {
            session_ttl: session::DEFAULT_TTL,
            max_sessions: session::DEFAULT_MAX_SESSIONS,
            proxy_user_header: None,
        }
    }
}

/// A `[[tls.grants]]` entry: a certificate SAN and its principal.
#[derive(Clone, Debug)]
pub struct CertificateEntry {
    /// The DNS name or URI.
    pub san: String,
    /// Its principal (named by the SAN).
    pub principal: Arc<Principal>,
}

/// Why a credential was refused. Never carries the credential.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No credentials at all.
    #[error(
        "this server requires credentials: send Authorization: Bearer <token> (the CLI's \
         --token or QSCHEDULER_TOKEN)"
    )]
    Missing,
    /// An Authorization header that is not `Bearer <token>`.
    #[error("malformed Authorization header: expected \"Bearer <token>\"")]
    Malformed,
    /// A token that matches no principal.
    #[error("the bearer token is not valid (unknown or revoked)")]
    Unknown,
    /// A JWT that does not verify; says why, never the token.
    #[error("the bearer token is a JWT that is not valid: {0}")]
    InvalidJwt(String),
    /// A valid JWT whose subject and email have no grant.
    #[error("the JWT's subject {0:?} is not named in [[auth.oidc.grants]]")]
    UnknownSubject(String),
    /// A verified client certificate none of whose SANs has a grant.
    #[error("the client certificate ({0}) is not named in [[tls.grants]]")]
    UnknownCertificate(String),
}

impl Policy {
    /// The principal of a static token, comparing against every entry so
    /// that the time taken does not tell which (or whether one) matched.
    pub fn token_principal(&self, token: &str) -> Option<Arc<Principal>> {
        let hash = Sha256Hash::of(token.as_bytes());
        let mut found = None;
        for entry in &self.tokens {
            if entry.sha256.ct_eq(&hash) && found.is_none() {
                found = Some(Arc::clone(&entry.principal));
            }
        }
        found
    }

    /// The principal of an `Authorization` header value (`None`: absent).
    pub fn authenticate(&self, authorization: Option<&[u8]>) -> Result<Arc<Principal>, AuthError> {
        let header = authorization.ok_or(AuthError::Missing)?;
        let token = bearer_token(header).ok_or(AuthError::Malformed)?;
        if let Some(p) = self.token_principal(token) {
            return Ok(p);
        }
        match &self.oidc {
            Some(v) if token.bytes().filter(|&b| b == b'.').count() == 2 => v.verify(token),
            _ => Err(AuthError::Unknown),
        }
    }

    /// The principal of a verified client certificate with these SANs.
    pub fn certificate_principal(&self, sans: &[String]) -> Result<Arc<Principal>, AuthError> {
        self.certificates
            .iter()
            .find(|c| sans.contains(&c.san))
            .map(|c| Arc::clone(&c.principal))
            .ok_or_else(|| {
                let shown: Vec<&str> = sans.iter().take(4).map(String::as_str).collect();
                AuthError::UnknownCertificate(format!("SANs {shown:?}"))
            })
    }

    /// Any principal called `name` (for a call a peer forwards).
    pub fn principal_named(&self, name: &str) -> Option<Arc<Principal>> {
        self.tokens
            .iter()
            .map(|t| &t.principal)
            .chain(self.certificates.iter().map(|c| &c.principal))
            .chain(self.oidc.iter().flat_map(|o| o.principals()))
            .find(|p| p.name == name)
            .cloned()
    }

    /// Whether `header` carries the metrics token (always true when none is
    /// configured).
    pub fn metrics_allowed(&self, authorization: Option<&[u8]>) -> bool {
        let Some(want) = &self.metrics_token else {
            return true;
        };
        authorization
            .and_then(bearer_token)
            .is_some_and(|t| Sha256Hash::of(t.as_bytes()).ct_eq(want))
    }

    /// Whether `origin` may call from a browser.
    pub fn origin_allowed(&self, origin: &str) -> bool {
        self.allowed_origins.iter().any(|o| o == origin)
    }
}

/// A fresh random token: 32 bytes from the operating system, as URL-safe
/// characters (43 of them), prefixed so that it is recognisable in a
/// leaked-secret scan.
pub fn new_token() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut s = String::from("qs_");
    let mut acc: u32 = 0;
    let mut bits = 0;
    for b in bytes {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 6 {
            bits -= 6;
            s.push(char::from(ALPHABET[((acc >> bits) & 63) as usize]));
        }
    }
    if bits > 0 {
        s.push(char::from(ALPHABET[((acc << (6 - bits)) & 63) as usize]));
    }
    Ok(s)
}

/// Re-reads the configuration file at `path` whenever it changes (checked
/// every `every`) and puts its `[auth]` policy in `cell`, so that adding or
/// revoking a token needs no restart. A file that no longer parses, or has
/// no `[auth]` any more, leaves the policy as it was (with a warning):
/// turning authorization off takes a restart.
pub fn spawn_reload(
    path: std::path::PathBuf,
    cell: Arc<layer::PolicyCell>,
    every: std::time::Duration,
) -> tokio::task::JoinHandle<()> {
    let stamp = |p: &std::path::Path| {
        std::fs::metadata(p)
            .ok()
            .map(|m| (m.modified().ok(), m.len()))
    };
    tokio::spawn(async move {
        let mut last = stamp(&path);
        loop {
            tokio::time::sleep(every).await;
            let now = stamp(&path);
            if now == last {
                continue;
            }
            last = now;
            let policy = crate::config::Config::load(&path)
                .map_err(|e| e.report())
                .and_then(|c| c.auth_policy().map_err(|e| e.to_string()));
            match policy {
                Ok(Some(p)) => {
                    tracing::info!(
                        config = %path.display(),
                        tokens = p.tokens.len(),
                        "[auth] reloaded"
                    );
                    cell.set(p);
                }
                Ok(None) => tracing::warn!(
                    config = %path.display(),
                    "the configuration has no [auth] any more; keeping the previous policy \
                     (turning authorization off needs a restart)"
                ),
                Err(e) => tracing::warn!(
                    config = %path.display(),
                    error = %e,
                    "the changed configuration is not valid; keeping the previous [auth] policy"
                ),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(roles: &[Role], pools: Pools) -> Principal {
        Principal {
            name: "p".into(),
            kind: Kind::Token,
            grants: vec![Grant {
                roles: roles.to_vec(),
                pools,
            }],
        }
    }

    #[test]
    fn admin_implies_view_only() {
        let p = principal(&[Role::Admin], Pools::All);
        assert!(p.may(Role::Admin, Some("x")));
        assert!(p.may(Role::View, Some("x")));
        assert!(!p.may(Role::Swarming, None));
        let v = principal(&[Role::View], Pools::All);
        assert!(!v.may(Role::Admin, None));
    }

    #[test]
    fn pool_scoped_grants() {
        let p = principal(&[Role::Swarming], Pools::Only(vec!["a".into()]));
        assert!(p.may(Role::Swarming, Some("a")));
        assert!(!p.may(Role::Swarming, Some("b")));
        assert!(p.may(Role::Swarming, None));
        let a = Access {
            principal: Arc::new(p),
            role: Role::Swarming,
        };
        let e = a.check_pool("b").unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(e.message().contains("swarming") && e.message().contains("\"b\""));
        assert_eq!(
            Pools::from_list(Some(&["a".to_owned(), "*".to_owned()][..])),
            Pools::All
        );
        assert_eq!(Pools::from_list(None), Pools::All);
    }

    #[test]
    fn hashes_and_tokens() {
        let h = Sha256Hash::of(b"abc");
        assert_eq!(
            h.to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(Sha256Hash::parse(&h.to_hex()), Ok(h));
        assert!(Sha256Hash::parse(&h.to_hex().to_uppercase()).is_err());
        assert!(Sha256Hash::parse("abc").is_err());
        assert!(h.ct_eq(&h));
        assert!(!h.ct_eq(&Sha256Hash::of(b"abd")));
        assert_eq!(bearer_token(b"Bearer abc"), Some("abc"));
        assert_eq!(bearer_token(b"bearer  abc "), Some("abc"));
        assert_eq!(bearer_token(b"Basic abc"), None);
        assert_eq!(bearer_token(b"Bearer "), None);
        assert_eq!(bearer_token(b"Bearer a b"), None);
        assert_eq!(bearer_token(b"Bearer\xff"), None);
        let t = new_token().unwrap();
        assert!(t.starts_with("qs_") && t.len() == 46, "{t}");
        assert_ne!(t, new_token().unwrap());
        assert!(bearer_token(format!("Bearer {t}").as_bytes()).is_some());
    }

    #[test]
    fn policy_finds_principals() {
        let p = Arc::new(principal(&[Role::View], Pools::All));
        let policy = Policy {
            tokens: vec![TokenEntry {
                sha256: Sha256Hash::of(b"secret"),
                principal: p.clone(),
            }],
            ..Policy::default()
        };
        assert_eq!(policy.authenticate(Some(b"Bearer secret")), Ok(p));
        assert_eq!(policy.authenticate(None), Err(AuthError::Missing));
        assert_eq!(
            policy.authenticate(Some(b"Token x")),
            Err(AuthError::Malformed)
        );
        assert_eq!(
            policy.authenticate(Some(b"Bearer nope")),
            Err(AuthError::Unknown)
        );
        assert!(policy.metrics_allowed(None));
    }
}
