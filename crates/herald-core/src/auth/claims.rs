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
}

/// What a token is presented for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// Authenticates a connection (no `channel` claim allowed).
    Connection,
    /// Grants one channel (a `channel` claim is required).
    Channel,
}
