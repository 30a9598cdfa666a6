//! Token revocations: by token id (`jti`) or by user (every token issued up to a point in time).
//! Each entry carries its own expiry (after which the revoked tokens have expired anyway).

use std::collections::HashMap;
use std::sync::Mutex;

use crate::auth::Claims;
use crate::sync::lock;

/// The node's revocation list (in memory; shared through the broker in a cluster).
#[derive(Default)]
pub struct Revocations {
    /// jti → entry expiry (Unix seconds).
    tokens: Mutex<HashMap<String, u64>>,
    /// user → (tokens issued at or before this Unix second are revoked, entry expiry).
    users: Mutex<HashMap<String, (u64, u64)>>,
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Revocations {
    /// Revoke one token by id until `expires_at` (Unix seconds).
    pub fn revoke_token(&self, jti: &str, expires_at: u64) {
        lock(&self.tokens).insert(jti.to_owned(), expires_at);
    }

    /// Revoke every token of `user` issued up to now (tokens without `iat` included) until
    /// `expires_at` (Unix seconds). Tokens issued later are accepted.
    pub fn revoke_user(&self, user: &str, expires_at: u64) {
        lock(&self.users).insert(user.to_owned(), (now_secs(), expires_at));
    }

    /// Whether verified claims belong to a revoked token.
    pub fn is_revoked(&self, c: &Claims) -> bool {
        let now = now_secs();
        if let Some(jti) = &c.jti
            && lock(&self.tokens).get(jti).is_some_and(|&exp| exp > now)
        {
            return true;
        }
        if c.sub.is_empty() {
            return false;
        }
        match lock(&self.users).get(&c.sub) {
            Some(&(before, exp)) if exp > now => c.iat.is_none_or(|iat| iat <= before),
            _ => false,
        }
    }

    /// Forget expired entries.
    pub fn sweep(&self) {
        let now = now_secs();
        lock(&self.tokens).retain(|_, exp| *exp > now);
        lock(&self.users).retain(|_, (_, exp)| *exp > now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(sub: &str, jti: Option<&str>, iat: Option<u64>) -> Claims {
        Claims {
            sub: sub.into(),
            exp: now_secs() + 60,
            iat,
            jti: jti.map(Into::into),
            ..Default::default()
        }
    }

    #[test]
    fn by_token_and_user() {
        let r = Revocations::default();
        let now = now_secs();
        r.revoke_token("t1", now + 60);
        assert!(r.is_revoked(&claims("a", Some("t1"), None)));
        assert!(!r.is_revoked(&claims("a", Some("t2"), Some(now))));
        r.revoke_user("bob", now + 60);
        assert!(r.is_revoked(&claims("bob", None, Some(now - 10))));
        assert!(r.is_revoked(&claims("bob", None, None)));
        assert!(!r.is_revoked(&claims("bob", None, Some(now + 5))));
        r.revoke_token("old", now - 1);
        r.sweep();
        assert!(!r.is_revoked(&claims("a", Some("old"), None)));
    }
}
