//! Values that must never be printed: a [`Secret`] string whose `Debug`
//! says only that it is there, and [`redact_url`] for database URLs, whose
//! password would otherwise show wherever the URL does.
//!
//! Options and argument structs derive `Debug` for diagnostics, and a
//! `{:?}` of any of them can end up in a log line or a panic message; so
//! every field that holds a credential is a [`Secret`], or is redacted by
//! the struct's own `Debug`. What must not break: no `Display` for
//! [`Secret`] — reading the value is always an explicit [`Secret::expose`].

use std::borrow::Cow;
use std::fmt;

/// A secret string (a token, a shared secret). `Debug` prints
/// `Secret(<redacted>)`; there is no `Display`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The value, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Secret {
        Secret(s)
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Secret {
        Secret(s.to_owned())
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Secret, Self::Err> {
        Ok(Secret(s.to_owned()))
    }
}

/// `url` with the password of its user info (`scheme://user:password@…`)
/// replaced by `<redacted>`, and a `password=` query parameter too; other
/// URLs unchanged.
pub fn redact_url(url: &str) -> Cow<'_, str> {
    let mut out = Cow::Borrowed(url);
    if let Some((scheme, rest)) = url.split_once("://") {
        // The authority ends at the first '/', '?' or '#'; its user info
        // at the last '@' within it.
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let authority = &rest[..end];
        if let Some(at) = authority.rfind('@')
            && let Some(colon) = authority[..at].find(':')
        {
            out = Cow::Owned(format!(
                "{scheme}://{}:<redacted>{}",
                &authority[..colon],
                &rest[at..]
            ));
        }
    }
    if let Some(q) = out.find('?') {
        let (base, query) = out.split_at(q + 1);
        if query
            .split('&')
            .any(|kv| kv.to_ascii_lowercase().starts_with("password="))
        {
            let query: Vec<String> = query
                .split('&')
                .map(|kv| {
                    if kv.to_ascii_lowercase().starts_with("password=") {
                        format!("{}=<redacted>", &kv[..8])
                    } else {
                        kv.to_owned()
                    }
                })
                .collect();
            out = Cow::Owned(format!("{base}{}", query.join("&")));
        }
    }
    out
}

/// A URL that may carry a password (a database's), or a path in its
/// place; `Debug` shows it through [`redact_url`], and there is no
/// `Display`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    /// The URL, password included.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&redact_url(&self.0), f)
    }
}

impl std::str::FromStr for SecretUrl {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<SecretUrl, Self::Err> {
        Ok(SecretUrl(s.to_owned()))
    }
}

impl From<String> for SecretUrl {
    fn from(s: String) -> SecretUrl {
        SecretUrl(s)
    }
}

/// `Debug` of a URL through [`redact_url`].
pub struct RedactedUrl<'a>(pub &'a str);

impl fmt::Debug for RedactedUrl<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&redact_url(self.0), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_do_not_print() {
        let s = Secret::from("hunter2-hunter2-hunter2");
        assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
        assert_eq!(format!("{:?}", Some(s.clone())), "Some(Secret(<redacted>))");
        assert_eq!(s.expose(), "hunter2-hunter2-hunter2");
    }

    #[test]
    fn url_passwords_are_redacted() {
        for (url, want) in [
            (
                "postgres://qs:hunter2@db:5432/q",
                "postgres://qs:<redacted>@db:5432/q",
            ),
            (
                "postgres://qs:p%40ss@w@db/q?sslmode=require",
                "postgres://qs:<redacted>@db/q?sslmode=require",
            ),
            (
                "postgresql://db/q?user=qs&password=hunter2&sslmode=require",
                "postgresql://db/q?user=qs&password=<redacted>&sslmode=require",
            ),
            ("postgres://qs@db/q", "postgres://qs@db/q"),
            ("qscheduler-data", "qscheduler-data"),
            ("postgres://db/q?x=a@b:c", "postgres://db/q?x=a@b:c"),
        ] {
            assert_eq!(redact_url(url), want, "{url}");
            assert!(!format!("{:?}", RedactedUrl(url)).contains("hunter2"));
            let u: SecretUrl = url.parse().unwrap();
            assert_eq!(format!("{u:?}"), format!("{want:?}"));
            assert_eq!(u.expose(), url);
        }
    }
}
