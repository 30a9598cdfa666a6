//! `[auth]`: token verification keys, where tokens travel, refresh and API keys.
//!
//! Every key is documented in `docs/configuration.md` and `docs/security.md`.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[auth]` settings.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Shared secret for HS256/HS384/HS512 tokens (at least 32 bytes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hmac_secret: Option<String>,
    /// PEM files with public keys (RSA, EC P-256/P-384, Ed25519) for RS*/PS*/ES*/EdDSA tokens.
    #[serde(deserialize_with = "crate::de::list")]
    pub public_keys: Vec<PathBuf>,
    /// A JWKS document (a file path or an `http(s)://` URL), re-read every `jwks_refresh`.
    /// Tokens name their key with the `kid` header. Only asymmetric keys are used from it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks: Option<String>,
    /// How often the JWKS document is re-read.
    #[serde(with = "humantime_serde")]
    pub jwks_refresh: Duration,
    /// Accepted `alg` values (e.g. `["RS256"]`); empty = every algorithm of the configured keys.
    #[serde(deserialize_with = "crate::de::list")]
    pub algorithms: Vec<String>,
    /// When set, tokens must carry this `aud`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// When set, tokens must carry this `iss`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// Longest accepted token, in bytes.
    pub max_token_size: usize,
    /// Admit connections that bring no token, as anonymous users (namespaces still decide what
    /// anonymous users may do). When false, a connection without a handshake token must send
    /// `auth` first.
    pub anonymous: bool,
    /// Accept `Authorization: Bearer <token>` at the handshake.
    pub header: bool,
    /// Accept the token from this cookie at the handshake (browsers); unset = off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    /// Accept the token as a `Sec-WebSocket-Protocol` entry `herald.auth.<token>` (browsers).
    pub subprotocol: bool,
    /// Accept the token from this query parameter (off by default: URLs end up in logs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query_param: Option<String>,
    /// How long a connection without a handshake token has to send `auth`.
    #[serde(with = "humantime_serde")]
    pub auth_timeout: Duration,
    /// The server sends a `refresh` push this long before the token expires (or halfway through
    /// a shorter lifetime).
    #[serde(with = "humantime_serde")]
    pub refresh_before: Duration,
    /// Keys for the HTTP server API (`Authorization: apikey <key>`), compared in constant time.
    #[serde(deserialize_with = "crate::de::list")]
    pub api_keys: Vec<String>,
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secrets never reach logs.
        f.debug_struct("AuthConfig")
            .field(
                "hmac_secret",
                &self.hmac_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("public_keys", &self.public_keys)
            .field("jwks", &self.jwks)
            .field("algorithms", &self.algorithms)
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .field("anonymous", &self.anonymous)
            .field("api_keys", &self.api_keys.len())
            .finish_non_exhaustive()
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            hmac_secret: None,
            public_keys: Vec::new(),
            jwks: None,
            jwks_refresh: Duration::from_secs(300),
            algorithms: Vec::new(),
            audience: None,
            issuer: None,
            leeway: Duration::from_secs(5),
            max_token_size: 8 * 1024,
            anonymous: true,
            header: true,
            cookie: None,
            subprotocol: true,
            query_param: None,
            auth_timeout: Duration::from_secs(5),
            refresh_before: Duration::from_secs(60),
            api_keys: Vec::new(),
        }
    }
}

impl AuthConfig {
    /// Whether any verification key is configured.
    pub fn has_keys(&self) -> bool {
        self.hmac_secret.is_some() || !self.public_keys.is_empty() || self.jwks.is_some()
    }

    /// Check cross-field rules.
    pub fn validate(&self) -> Result<(), crate::de::ConfigError> {
        self.check().map_err(crate::de::ConfigError)
    }

    pub(crate) fn check(&self) -> Result<(), String> {
        if let Some(s) = &self.hmac_secret
            && s.len() < 32
        {
            return Err("auth.hmac_secret must be at least 32 bytes".into());
        }
        if self.auth_timeout.is_zero() {
            return Err("auth.auth_timeout must be > 0".into());
        }
        if self.max_token_size < 256 {
            return Err("auth.max_token_size must be >= 256".into());
        }
        if self.api_keys.iter().any(|k| k.len() < 16) {
            return Err("auth.api_keys entries must be at least 16 characters".into());
        }
        Ok(())
    }
}
