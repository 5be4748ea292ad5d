//! Camera URLs and credentials, kept apart so that no password ever reaches a log line.
//!
//! A camera URL in the config must not carry credentials; they come from `username` plus a password
//! file or environment variable and go to rtspsrc's `user-id`/`user-pw` properties. Anything printed
//! goes through [`redact_url`], which also hides credential-like query parameters some cameras use.

use std::fmt;

use secrecy::{ExposeSecret, SecretString};

/// Query parameters some cameras use to carry credentials.
const SECRET_QUERY_KEYS: &[&str] = &[
    "password", "passwd", "pass", "pwd", "user", "username", "usr", "token", "auth", "key",
];

/// What is wrong with a camera URL; no message repeats a password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// The URL as given, redacted.
    #[error("not a valid URL ({reason}): {redacted}; expected rtsp://host[:port]/path")]
    NotAUrl {
        reason: url::ParseError,
        redacted: String,
    },
    #[error("scheme {0:?} is not supported; use rtsp:// (or rtsps://)")]
    Scheme(String),
    #[error("credentials must not be in the URL; use username and password_file")]
    Credentials,
    #[error("the URL has no host; expected rtsp://host[:port]/path")]
    NoHost,
}

impl UrlError {
    fn not_a_url(s: &str, reason: url::ParseError) -> Self {
        Self::NotAUrl {
            reason,
            redacted: redact_url(s),
        }
    }
}

/// A validated `rtsp://` or `rtsps://` URL without user info.
#[derive(Clone, PartialEq, Eq)]
pub struct RtspUrl(url::Url);

impl RtspUrl {
    /// Parses a camera URL; the error explains the fix and never repeats a password.
    pub fn parse(s: &str) -> Result<Self, UrlError> {
        let url = url::Url::parse(s).map_err(|e| UrlError::not_a_url(s, e))?;
        if url.scheme() != "rtsp" && url.scheme() != "rtsps" {
            return Err(UrlError::Scheme(url.scheme().to_owned()));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(UrlError::Credentials);
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(UrlError::NoHost);
        }
        Ok(Self(url))
    }

    /// Splits credentials out of a URL typed by an installer (`rtsp://user:pass@host/...`).
    pub fn parse_with_credentials(s: &str) -> Result<(Self, Option<Credentials>), UrlError> {
        let mut url = url::Url::parse(s).map_err(|e| UrlError::not_a_url(s, e))?;
        let creds = if url.username().is_empty() {
            None
        } else {
            let decode = |v: &str| {
                url::form_urlencoded::parse(format!("x={v}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default()
            };
            Some(Credentials {
                username: decode(url.username()),
                password: SecretString::from(decode(url.password().unwrap_or(""))),
            })
        };
        let _ = url.set_username("");
        let _ = url.set_password(None);
        Ok((Self::parse(url.as_str())?, creds))
    }

    /// The URL handed to rtspsrc. Never log this; log the value's `Display` instead.
    pub fn as_location(&self) -> &str {
        self.0.as_str()
    }

    pub fn host(&self) -> &str {
        self.0.host_str().unwrap_or("")
    }

    /// The values of credential-like query parameters (as written and percent-decoded), for
    /// scrubbing text that echoes the URL.
    pub fn query_secrets(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (k, v) in self.0.query_pairs() {
            if SECRET_QUERY_KEYS.contains(&k.to_ascii_lowercase().as_str()) && v.len() >= 3 {
                let raw: String = url::form_urlencoded::byte_serialize(v.as_bytes()).collect();
                out.push(v.into_owned());
                if !out.contains(&raw) {
                    out.push(raw);
                }
            }
        }
        out
    }

    pub fn port(&self) -> u16 {
        self.0
            .port()
            .unwrap_or(if self.0.scheme() == "rtsps" { 322 } else { 554 })
    }
}

impl fmt::Display for RtspUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_url(self.0.as_str()))
    }
}

impl fmt::Debug for RtspUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RtspUrl({self})")
    }
}

/// RTSP credentials. `Debug` prints the username only.
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: SecretString,
}

impl Credentials {
    pub fn password(&self) -> &str {
        self.password.expose_secret()
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// A URL safe to print: user info replaced by `***`, credential-like query values by `***`.
/// Works on strings that do not parse as URLs too.
pub fn redact_url(s: &str) -> String {
    let Ok(mut url) = url::Url::parse(s) else {
        return redact_unparsed(s);
    };
    if !url.username().is_empty() || url.password().is_some() {
        let _ = url.set_password(None);
        let _ = url.set_username("***");
    }
    if url.query().is_some() {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let secret = SECRET_QUERY_KEYS.contains(&k.to_ascii_lowercase().as_str());
                (
                    k.into_owned(),
                    if secret { "***".into() } else { v.into_owned() },
                )
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.to_string()
}

/// Credential-like `key=value` pairs anywhere in free text (a GStreamer error that echoes a URL
/// in its own words) with their values replaced by `***`.
pub fn redact_text(text: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        let hit = SECRET_QUERY_KEYS.iter().find_map(|k| {
            let at = i;
            let key_end = at + k.len();
            let starts_word = at == 0 || !lower.as_bytes()[at - 1].is_ascii_alphanumeric();
            (starts_word
                && lower[at..].starts_with(k)
                && lower.as_bytes().get(key_end) == Some(&b'='))
            .then_some(key_end + 1)
        });
        match hit {
            Some(value_start) => {
                out.push_str(&text[i..value_start]);
                out.push_str("***");
                let rest = &text[value_start..];
                let end = rest
                    .find(|c: char| {
                        c == '&'
                            || c == '"'
                            || c == '\''
                            || c.is_whitespace()
                            || c == ')'
                            || c == ','
                    })
                    .unwrap_or(rest.len());
                i = value_start + end;
            }
            None => {
                let c = text[i..].chars().next().expect("in bounds");
                out.push(c);
                i += c.len_utf8();
            }
        }
    }
    out
}

fn redact_unparsed(s: &str) -> String {
    // "scheme://user:pass@rest" → "scheme://***@rest"; otherwise keep it.
    if let Some(scheme_end) = s.find("://") {
        let after = &s[scheme_end + 3..];
        let authority_end = after.find(['/', '?', '#']).unwrap_or(after.len());
        if let Some(at) = after[..authority_end].rfind('@') {
            return format!("{}://***@{}", &s[..scheme_end], &after[at + 1..]);
        }
    }
    s.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_user_info_and_secret_query() {
        let r = redact_url("rtsp://admin:hunter2@10.0.0.5:554/live?channel=1&password=hunter2");
        assert!(!r.contains("hunter2"), "{r}");
        assert!(!r.contains("admin"), "{r}");
        assert!(r.contains("channel=1"), "{r}");
        assert!(r.contains("10.0.0.5:554/live"), "{r}");
    }

    #[test]
    fn redacts_secrets_echoed_in_free_text() {
        let t = "Could not open resource for reading. (rtsp://10.0.0.5/live?channel=1&Password=hunter2 token=abc123, user=bob)";
        let r = redact_text(t);
        assert!(
            !r.contains("hunter2") && !r.contains("abc123") && !r.contains("bob"),
            "{r}"
        );
        assert!(r.contains("channel=1") && r.contains("Password=***"), "{r}");
        assert_eq!(
            redact_text("no secrets: passwords=fine"),
            "no secrets: passwords=fine"
        );
        assert_eq!(redact_text("ünïcode key=1"), "ünïcode key=***");
        let url = RtspUrl::parse("rtsp://cam/s?pwd=p%26w+d&x=1").unwrap();
        assert_eq!(url.query_secrets(), ["p&w d", "p%26w+d"]);
    }

    #[test]
    fn redacts_unparsable_urls() {
        let r = redact_url("rtsp://admin:hunter2@[bad/x");
        assert!(!r.contains("hunter2"), "{r}");
    }

    #[test]
    fn refuses_credentials_in_url() {
        let e = RtspUrl::parse("rtsp://admin:pw@cam/s").unwrap_err();
        assert_eq!(e, UrlError::Credentials);
        assert!(e.to_string().contains("credentials must not be in the URL"));
        assert!(!e.to_string().contains("pw@"));
    }

    #[test]
    fn splits_credentials_for_probe() {
        let (url, creds) =
            RtspUrl::parse_with_credentials("rtsp://ad%40min:p%3Aw@cam:8554/s").unwrap();
        let creds = creds.unwrap();
        assert_eq!(creds.username, "ad@min");
        assert_eq!(creds.password(), "p:w");
        assert_eq!(url.as_location(), "rtsp://cam:8554/s");
        assert!(!format!("{creds:?}").contains("p:w"));
    }
}
