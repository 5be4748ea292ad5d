//! Console sessions: a sign-in with an API token opens one; the browser holds only its random id
//! in an HttpOnly, SameSite=Strict cookie, never the token. Each session has its own CSRF token,
//! which every change (POST) made with the cookie must repeat in a header.
//!
//! Sessions live in memory: a daemon restart signs everyone out (the token signs in again). Only
//! the SHA-256 of a session id is kept, so a memory dump does not hold a usable cookie.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::auth::Caller;

/// The cookie's name.
pub const COOKIE: &str = "kw_session";
/// The header that carries the CSRF token on a change.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// A session unused this long is closed (a guard's console polls all shift long, so an open
/// console never idles out).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(12 * 3600);
/// A session ends this long after sign-in whatever its use: sign in again each day.
pub const MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// Sessions open at once; the least recently used one is closed to make room.
pub const MAX_SESSIONS: usize = 256;

struct Session {
    caller: Caller,
    csrf: String,
    opened: Instant,
    last_used: Instant,
}

/// What a valid cookie stands for.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub caller: Caller,
    pub csrf: String,
}

/// The open sessions (cheap to clone; shared by every request).
#[derive(Clone, Default)]
pub struct Sessions {
    open: Arc<Mutex<HashMap<[u8; 32], Session>>>,
}

fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

fn key(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

impl Sessions {
    /// Opens a session for `caller`: (the cookie's value, its CSRF token).
    pub fn open(&self, caller: Caller) -> (String, String) {
        let (id, csrf) = (random_hex(), random_hex());
        let now = Instant::now();
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.retain(|_, s| !expired(s, now));
        if open.len() >= MAX_SESSIONS
            && let Some(oldest) = open
                .iter()
                .min_by_key(|(_, s)| s.last_used)
                .map(|(k, _)| *k)
        {
            open.remove(&oldest);
        }
        open.insert(
            key(&id),
            Session {
                caller,
                csrf: csrf.clone(),
                opened: now,
                last_used: now,
            },
        );
        crate::telemetry::api::sessions(open.len());
        (id, csrf)
    }

    /// The session a cookie value stands for, if it is open (and marks it used).
    pub fn check(&self, id: &str) -> Option<SessionInfo> {
        let now = Instant::now();
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let k = key(id);
        let session = open.get_mut(&k)?;
        if expired(session, now) {
            open.remove(&k);
            crate::telemetry::api::sessions(open.len());
            return None;
        }
        session.last_used = now;
        Some(SessionInfo {
            caller: session.caller.clone(),
            csrf: session.csrf.clone(),
        })
    }

    /// Signs out: the cookie value no longer opens anything.
    pub fn close(&self, id: &str) -> bool {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let closed = open.remove(&key(id)).is_some();
        crate::telemetry::api::sessions(open.len());
        closed
    }

    pub fn len(&self) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn expired(s: &Session, now: Instant) -> bool {
    now.duration_since(s.last_used) >= IDLE_TIMEOUT || now.duration_since(s.opened) >= MAX_AGE
}

impl SessionInfo {
    /// Whether a request's `X-CSRF-Token` header is this session's CSRF token.
    pub fn csrf_sent_in(&self, headers: &axum::http::HeaderMap) -> bool {
        let sent = headers
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        same_token(sent, &self.csrf)
    }
}

/// Constant-time comparison of two tokens of any length.
pub fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        (k == name).then_some(v.trim())
    })
}

/// The `Set-Cookie` value that gives the browser session `id`.
pub fn set_cookie(id: &str) -> String {
    format!(
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
        MAX_AGE.as_secs()
    )
}

/// The `Set-Cookie` value that removes it.
pub fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;

    fn caller(name: &str) -> Caller {
        Caller {
            name: name.into(),
            role: Role::Read,
        }
    }

    #[test]
    fn a_session_opens_checks_and_closes() {
        let sessions = Sessions::default();
        let (id, csrf) = sessions.open(caller("guard"));
        assert_eq!(id.len(), 64);
        assert_ne!(id, csrf);
        let info = sessions.check(&id).expect("open");
        assert_eq!(&*info.caller.name, "guard");
        assert_eq!(info.csrf, csrf);
        assert!(
            sessions.check(&csrf).is_none(),
            "the CSRF token is no cookie"
        );
        assert!(sessions.close(&id));
        assert!(sessions.check(&id).is_none());
        assert!(!sessions.close(&id));
    }

    #[test]
    fn the_least_recently_used_session_makes_room() {
        let sessions = Sessions::default();
        let (first, _) = sessions.open(caller("first"));
        let mut ids = Vec::new();
        for i in 1..MAX_SESSIONS {
            ids.push(sessions.open(caller(&format!("c{i}"))).0);
        }
        // The first is used again: the second is now the oldest.
        assert!(sessions.check(&first).is_some());
        sessions.open(caller("one too many"));
        assert_eq!(sessions.len(), MAX_SESSIONS);
        assert!(sessions.check(&first).is_some());
        assert!(sessions.check(&ids[0]).is_none());
        assert!(sessions.check(&ids[1]).is_some());
    }

    #[test]
    fn cookies_are_parsed_and_set_strictly() {
        let h = "theme=dark; kw_session=abc123 ; other=x";
        assert_eq!(cookie_value(h, COOKIE), Some("abc123"));
        assert_eq!(cookie_value("kw_session_old=1", COOKIE), None);
        let set = set_cookie("abc");
        for part in ["HttpOnly", "SameSite=Strict", "Path=/"] {
            assert!(set.contains(part), "{set}");
        }
        assert!(clear_cookie().contains("Max-Age=0"));
        assert!(same_token("abc", "abc"));
        assert!(!same_token("abc", "abd"));
        assert!(!same_token("abc", "abcd"));
    }
}
