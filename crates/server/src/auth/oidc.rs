//! OIDC / JWT bearer tokens, checked offline against a JWKS file: Google
//! service-account ID tokens, Kubernetes projected service-account tokens,
//! and any issuer that publishes its keys as a JWKS.
//!
//! A token is accepted when it is signed (RS256 or ES256) by a key of the
//! file, its `iss` and `aud` are the configured ones, and it has not
//! expired (`exp`, `nbf` with a small clock-skew allowance); its `sub` (or
//! its verified `email`) must then have a grant. The file is re-read when
//! it changes (issuers rotate keys), checked at most once a second.
//!
//! Verifying a signature costs far more than a call's other work, and a
//! client sends the same token on every call until it expires, so a
//! verified token is kept (by its SHA-256) with its principal until its
//! expiry; the cache is bounded, and emptied whenever the keys change.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::{AuthError, Principal, Sha256Hash};

/// One `[[auth.oidc.grants]]` entry.
#[derive(Clone, Debug)]
pub struct OidcGrant {
    /// The token's `sub`, or
    pub subject: Option<String>,
    /// its verified `email`.
    pub email: Option<String>,
    /// Who that is.
    pub principal: Arc<Principal>,
}

/// `[auth.oidc]`.
#[derive(Clone, Debug)]
pub struct OidcOptions {
    /// Expected `iss`.
    pub issuer: String,
    /// Expected `aud`.
    pub audience: String,
    /// The issuer's keys.
    pub jwks_file: PathBuf,
    /// Principals by subject or email.
    pub grants: Vec<OidcGrant>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
}

/// Most verified tokens kept.
const CACHE_ENTRIES: usize = 10_000;

/// How often the JWKS file may be looked at.
const JWKS_CHECK_EVERY: Duration = Duration::from_secs(1);

type Stamp = Option<(Option<SystemTime>, u64)>;

struct Keys {
    stamp: Stamp,
    checked: Instant,
    set: Arc<JwkSet>,
}

/// Verifies JWTs for one issuer.
pub struct OidcVerifier {
    options: OidcOptions,
    keys: RwLock<Keys>,
    cache: Mutex<HashMap<[u8; 32], Verified>>,
}

/// A verified token's principal and expiry (Unix seconds).
type Verified = (Arc<Principal>, u64);

impl std::fmt::Debug for OidcVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcVerifier")
            .field("issuer", &self.options.issuer)
            .field("audience", &self.options.audience)
            .field("jwks_file", &self.options.jwks_file)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    email_verified: Option<bool>,
    exp: u64,
}

fn stamp(path: &std::path::Path) -> Stamp {
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.modified().ok(), m.len()))
}

/// Reads a JWKS file (at least one key).
pub fn read_jwks(path: &std::path::Path) -> Result<JwkSet, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let set: JwkSet = serde_json::from_str(&text)
        .map_err(|e| format!("{} is not a JWKS document: {e}", path.display()))?;
    if set.keys.is_empty() {
        return Err(format!("the JWKS in {} has no keys", path.display()));
    }
    Ok(set)
}

/// Whether `jwk` is a signing key for `alg` (RS256: an RSA key; ES256: a
/// P-256 key), by its type and, when it names them, its `alg` and `use`.
fn fits(jwk: &Jwk, alg: Algorithm) -> bool {
    let family = match (&jwk.algorithm, alg) {
        (AlgorithmParameters::RSA(_), Algorithm::RS256) => true,
        (AlgorithmParameters::EllipticCurve(p), Algorithm::ES256) => p.curve == EllipticCurve::P256,
        _ => false,
    };
    family
        && jwk
            .common
            .key_algorithm
            .is_none_or(|a| a == KeyAlgorithm::from(alg))
        && jwk
            .common
            .public_key_use
            .as_ref()
            .is_none_or(|u| *u == PublicKeyUse::Signature)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl OidcVerifier {
    /// A verifier with the keys of `options.jwks_file`.
    pub fn new(options: OidcOptions) -> Result<OidcVerifier, String> {
        let st = stamp(&options.jwks_file);
        let set = read_jwks(&options.jwks_file)?;
        Ok(OidcVerifier {
            keys: RwLock::new(Keys {
                stamp: st,
                checked: Instant::now(),
                set: Arc::new(set),
            }),
            options,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The keys, re-read first if the file changed (looked at most once a
    /// second; a file that does not load keeps the old keys).
    fn keys(&self) -> Arc<JwkSet> {
        {
            let k = self
                .keys
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if k.checked.elapsed() < JWKS_CHECK_EVERY {
                return Arc::clone(&k.set);
            }
        }
        let mut k = self
            .keys
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if k.checked.elapsed() >= JWKS_CHECK_EVERY {
            k.checked = Instant::now();
            let now = stamp(&self.options.jwks_file);
            if now != k.stamp {
                k.stamp = now;
                match read_jwks(&self.options.jwks_file) {
                    Ok(set) => {
                        k.set = Arc::new(set);
                        self.cache
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .clear();
                        tracing::info!(jwks = %self.options.jwks_file.display(), "JWKS reloaded");
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "the changed JWKS does not load; keeping the old keys")
                    }
                }
            }
        }
        Arc::clone(&k.set)
    }

    /// The principal of a JWT, or why it is refused.
    pub fn verify(&self, token: &str) -> Result<Arc<Principal>, AuthError> {
        let now = now_secs();
        let hash = Sha256Hash::of(token.as_bytes()).0;
        let leeway = self.options.leeway.as_secs();
        let keys = self.keys();
        if let Some((p, exp)) = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&hash)
            && now <= exp.saturating_add(leeway)
        {
            return Ok(Arc::clone(p));
        }
        let invalid = |why: &str| AuthError::InvalidJwt(why.to_owned());
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid("malformed"))?;
        if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
            return Err(invalid(
                "signed with an algorithm other than RS256 or ES256",
            ));
        }
        // Only keys that can have made this signature: a JWKS may mix RSA
        // and EC keys (and keys for encryption), and a key of another
        // family would fail as "not valid" rather than be passed over.
        let usable = |jwk: &&Jwk| fits(jwk, header.alg);
        let candidates: Vec<&Jwk> = match &header.kid {
            Some(kid) => keys.find(kid).into_iter().filter(usable).collect(),
            None => keys.keys.iter().filter(usable).collect(),
        };
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.options.issuer]);
        validation.set_audience(&[&self.options.audience]);
        validation.leeway = leeway;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let mut last = invalid("signed by no key of the JWKS");
        let mut claims = None;
        for jwk in candidates {
            let Ok(key) = DecodingKey::from_jwk(jwk) else {
                continue;
            };
            match jsonwebtoken::decode::<Claims>(token, &key, &validation) {
                Ok(data) => {
                    claims = Some(data.claims);
                    break;
                }
                Err(e) => {
                    use jsonwebtoken::errors::ErrorKind;
                    last = invalid(match e.kind() {
                        ErrorKind::ExpiredSignature => "expired",
                        ErrorKind::ImmatureSignature => "not valid yet",
                        ErrorKind::InvalidAudience => "issued for another audience",
                        ErrorKind::InvalidIssuer => "issued by another issuer",
                        ErrorKind::InvalidSignature => "signed by no key of the JWKS",
                        ErrorKind::MissingRequiredClaim(_) => "missing exp, iss or aud",
                        _ => "not valid",
                    });
                    if !matches!(e.kind(), ErrorKind::InvalidSignature) {
                        return Err(last);
                    }
                }
            }
        }
        let claims = claims.ok_or(last)?;
        let email = claims
            .email
            .as_deref()
            .filter(|_| claims.email_verified != Some(false));
        let grant = self.options.grants.iter().find(|g| {
            (g.subject.is_some() && g.subject.as_deref() == claims.sub.as_deref())
                || (g.email.is_some() && g.email.as_deref() == email)
        });
        let Some(grant) = grant else {
            return Err(AuthError::UnknownSubject(
                claims.sub.unwrap_or_default().chars().take(200).collect(),
            ));
        };
        let principal = Arc::clone(&grant.principal);
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if cache.len() >= CACHE_ENTRIES {
            cache.retain(|_, (_, exp)| now <= exp.saturating_add(leeway));
            if cache.len() >= CACHE_ENTRIES {
                cache.clear();
            }
        }
        cache.insert(hash, (Arc::clone(&principal), claims.exp));
        Ok(principal)
    }

    /// How long a token that [`OidcVerifier::verify`] just accepted stays
    /// valid (`None` if it is not in the cache of verified tokens).
    pub fn time_left(&self, token: &str) -> Option<std::time::Duration> {
        let hash = Sha256Hash::of(token.as_bytes()).0;
        let exp = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&hash)
            .map(|(_, exp)| *exp)?;
        Some(std::time::Duration::from_secs(
            exp.saturating_sub(now_secs()),
        ))
    }

    /// The principals of the grants (for calls a peer forwards).
    pub fn principals(&self) -> impl Iterator<Item = &Arc<Principal>> {
        self.options.grants.iter().map(|g| &g.principal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_signing_keys_of_the_tokens_algorithm_are_tried() {
        let jwk = |v: serde_json::Value| serde_json::from_value::<Jwk>(v).unwrap();
        let rsa = |extra: serde_json::Value| {
            let mut v = serde_json::json!({"kty": "RSA", "n": "AQAB", "e": "AQAB"});
            v.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            jwk(v)
        };
        let ec =
            |crv: &str| jwk(serde_json::json!({"kty": "EC", "crv": crv, "x": "AQAB", "y": "AQAB"}));
        assert!(fits(&rsa(serde_json::json!({})), Algorithm::RS256));
        assert!(fits(
            &rsa(serde_json::json!({"alg": "RS256", "use": "sig"})),
            Algorithm::RS256
        ));
        assert!(!fits(&rsa(serde_json::json!({})), Algorithm::ES256));
        assert!(!fits(
            &rsa(serde_json::json!({"use": "enc"})),
            Algorithm::RS256
        ));
        assert!(!fits(
            &rsa(serde_json::json!({"alg": "RS512"})),
            Algorithm::RS256
        ));
        assert!(fits(&ec("P-256"), Algorithm::ES256));
        assert!(!fits(&ec("P-256"), Algorithm::RS256));
        assert!(!fits(&ec("P-384"), Algorithm::ES256));
    }
}
