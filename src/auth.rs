//! API tokens, for every transport (the HTTP API's bearer tokens, the `"token"` of an MQTT
//! command): the config holds only their SHA-256, each with a role.
//!
//! Tokens are 32 random bytes (`kw_` + 64 hex digits), so a plain SHA-256 is enough to store them
//! (a slow password hash guards low-entropy secrets; these are not). Comparison of the hashes
//! is constant-time. Neither the token nor its hash is ever logged; a request is logged with the
//! token's configured name.

use std::sync::Arc;

use rand::RngCore;
use serde::Deserialize;
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Events, snapshots, cameras, rules, metrics.
    Read,
    /// Everything `read` may, and arming or disarming rules.
    Admin,
}

/// One `[[api.tokens]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Who holds the token (shown in logs).
    pub name: String,
    pub role: Role,
    /// Hex SHA-256 of the token (see `kinderwatch token`).
    pub sha256: String,
}

/// The caller a request was authenticated as.
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: Arc<str>,
    pub role: Role,
}

#[derive(Debug, Clone, Default)]
pub struct Tokens {
    entries: Arc<Vec<([u8; 32], Caller)>>,
}

impl Tokens {
    /// From validated config entries (bad hashes are skipped; validation reported them).
    pub fn new(configs: &[TokenConfig]) -> Self {
        let entries = configs
            .iter()
            .filter_map(|c| {
                let hash = <[u8; 32]>::try_from(hex::decode(c.sha256.trim()).ok()?).ok()?;
                Some((
                    hash,
                    Caller {
                        name: c.name.as_str().into(),
                        role: c.role,
                    },
                ))
            })
            .collect();
        Self {
            entries: Arc::new(entries),
        }
    }

    pub fn check(&self, token: &str) -> Option<Caller> {
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for (h, caller) in self.entries.iter() {
            if constant_time_eq(h, &hash) {
                found = Some(caller.clone());
            }
        }
        found
    }
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A new random token and its hex SHA-256.
pub fn new_token() -> (String, String) {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let token = format!("kw_{}", hex::encode(bytes));
    let hash = hex::encode(Sha256::digest(token.as_bytes()));
    (token, hash)
}

/// Whether a config value is a well-formed hash.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_by_hash_and_keep_roles() {
        let (read, read_hash) = new_token();
        let (admin, admin_hash) = new_token();
        assert!(is_sha256_hex(&read_hash));
        let tokens = Tokens::new(&[
            TokenConfig {
                name: "ops".into(),
                role: Role::Read,
                sha256: read_hash,
            },
            TokenConfig {
                name: "center".into(),
                role: Role::Admin,
                sha256: admin_hash.to_uppercase(),
            },
        ]);
        assert_eq!(tokens.check(&read).map(|c| c.role), Some(Role::Read));
        assert_eq!(tokens.check(&admin).map(|c| c.role), Some(Role::Admin));
        assert!(tokens.check("kw_wrong").is_none());
        assert!(tokens.check(&read[..read.len() - 1]).is_none());
    }
}
