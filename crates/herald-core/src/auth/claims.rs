//! Token claims: what a verified JWT says about its holder.

use serde::{Deserialize, Serialize};

/// Claims Herald reads from a connection token or a channel token. Unknown claims are ignored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    /// User id; empty = anonymous.
    #[serde(default)]
    pub sub: String,
    /// Expiry, seconds since the Unix epoch (required).
    pub exp: u64,
    /// Issued at, seconds since the Unix epoch (used by per-user revocation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Token id (used by per-token revocation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// Public user info, shown in presence and on publications.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<serde_json::Value>,
    /// Channel patterns the user may subscribe to (and read history/presence of).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<String>,
    /// Channel patterns the user may publish to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publish: Vec<String>,
    /// Channel tokens only: the one channel this token grants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// Not a claim: these claims are the connect proxy's answer, not a token's (never read
    /// from a token: a token cannot say it was proxied).
    #[serde(skip)]
    pub proxied: bool,
}

/// What a token is presented for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// Authenticates a connection (no `channel` claim allowed).
    Connection,
    /// Grants one channel (a `channel` claim is required).
    Channel,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `proxied` is Herald's mark for a connect proxy's answer: a token that claims it is still
    /// a token (the refresh proxy must not extend it).
    #[test]
    fn a_token_cannot_claim_to_be_proxied() {
        let c: Claims =
            serde_json::from_str(r#"{"sub":"u","exp":1,"proxied":true}"#).expect("claims");
        assert!(!c.proxied);
        let back = serde_json::to_value(Claims { proxied: true, ..c }).expect("json");
        assert!(back.get("proxied").is_none(), "{back}");
    }
}
