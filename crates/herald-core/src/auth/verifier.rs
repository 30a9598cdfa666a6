//! JWT verification: keys from config (HMAC secret, PEM files) and a JWKS document, algorithm
//! allowlist, `exp`/`nbf`/`aud`/`iss` checks and revocations.

use std::str::FromStr;
use std::sync::RwLock;

use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, jwk::JwkSet};

use crate::auth::{AuthConfig, Claims, Revocations, TokenKind};
use herald_proto::ErrorCode;

/// Why a token was rejected. Every variant maps to a documented error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not three base64url parts with JSON inside, or claims of the wrong type.
    #[error("malformed token")]
    Malformed,
    /// Longer than `auth.max_token_size`.
    #[error("token too large")]
    TooLarge,
    /// `alg` is `none` or not in the allowlist / has no configured key of its family.
    #[error("token algorithm not allowed")]
    Algorithm,
    /// The signature does not verify with any key of the token's algorithm.
    #[error("bad token signature")]
    Signature,
    /// `exp` has passed.
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("token not valid yet")]
    NotYetValid,
    /// `aud` missing or wrong.
    #[error("wrong token audience")]
    Audience,
    /// `iss` missing or wrong.
    #[error("wrong token issuer")]
    Issuer,
    /// A required claim is missing or the token is used for the wrong purpose.
    #[error("{0}")]
    Claims(&'static str),
    /// The token or its user was revoked.
    #[error("token revoked")]
    Revoked,
    /// No verification key is configured at all.
    #[error("authentication is not configured on this server")]
    NotConfigured,
}

impl TokenError {
    /// The client-visible error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            TokenError::Expired => ErrorCode::TokenExpired,
            TokenError::Revoked => ErrorCode::TokenRevoked,
            _ => ErrorCode::TokenInvalid,
        }
    }
}

impl From<TokenError> for crate::error::EngineError {
    fn from(e: TokenError) -> Self {
        crate::error::EngineError::new(e.code(), e.to_string())
    }
}

/// Problems with the auth configuration (startup errors).
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A key file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A PEM file holds no supported public key.
    #[error("{0}: not an RSA, EC (P-256/P-384) or Ed25519 public key in PEM form")]
    BadKey(String),
    /// An unknown algorithm name.
    #[error("auth.algorithms: unknown algorithm {0:?}")]
    BadAlgorithm(String),
    /// A JWKS document that does not parse.
    #[error("JWKS: {0}")]
    Jwks(String),
}

/// Verifies connection and channel tokens.
pub struct Verifier {
    hmac: Option<DecodingKey>,
    pem: Vec<DecodingKey>,
    jwks: RwLock<Vec<(String, DecodingKey)>>,
    jwks_configured: bool,
    allowed: Vec<Algorithm>,
    audience: Option<String>,
    issuer: Option<String>,
    leeway: u64,
    max_size: usize,
    revocations: Revocations,
}

const ASYMMETRIC: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

fn pem_key(pem: &[u8]) -> Option<DecodingKey> {
    DecodingKey::from_rsa_pem(pem)
        .or_else(|_| DecodingKey::from_ec_pem(pem))
        .or_else(|_| DecodingKey::from_ed_pem(pem))
        .ok()
}

fn map_error(kind: &ErrorKind) -> TokenError {
    match kind {
        ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::UnsupportedAlgorithm
        | ErrorKind::MissingAlgorithm => TokenError::Algorithm,
        ErrorKind::InvalidSignature
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat => TokenError::Signature,
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
        ErrorKind::InvalidAudience => TokenError::Audience,
        ErrorKind::InvalidIssuer => TokenError::Issuer,
        ErrorKind::MissingRequiredClaim(c) => match c.as_str() {
            "aud" => TokenError::Audience,
            "iss" => TokenError::Issuer,
            _ => TokenError::Claims("token lacks a required claim (exp)"),
        },
        _ => TokenError::Malformed,
    }
}

/// The `alg` of a token header, read without trusting anything else.
fn header_alg(token: &str) -> Result<Algorithm, TokenError> {
    let header = token.split('.').next().ok_or(TokenError::Malformed)?;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .map_err(|_| TokenError::Malformed)?;
    #[derive(serde::Deserialize)]
    struct H {
        alg: String,
    }
    let h: H = serde_json::from_slice(&raw).map_err(|_| TokenError::Malformed)?;
    Algorithm::from_str(&h.alg).map_err(|_| TokenError::Algorithm)
}

impl Verifier {
    /// A verifier with no keys: every token is rejected with `NotConfigured`.
    pub fn disabled() -> Verifier {
        Verifier {
            hmac: None,
            pem: Vec::new(),
            jwks: RwLock::new(Vec::new()),
            jwks_configured: false,
            allowed: Vec::new(),
            audience: None,
            issuer: None,
            leeway: 0,
            max_size: 0,
            revocations: Revocations::default(),
        }
    }

    /// Build from `[auth]`, reading PEM files. The JWKS document is loaded later with
    /// [`Verifier::set_jwks`] (its source may be remote).
    pub fn from_config(cfg: &AuthConfig) -> Result<Verifier, SetupError> {
        let mut v = Verifier::disabled();
        v.hmac = cfg
            .hmac_secret
            .as_ref()
            .map(|s| DecodingKey::from_secret(s.as_bytes()));
        for path in &cfg.public_keys {
            let shown = path.display().to_string();
            let pem = std::fs::read(path).map_err(|source| SetupError::Read {
                path: shown.clone(),
                source,
            })?;
            v.pem.push(pem_key(&pem).ok_or(SetupError::BadKey(shown))?);
        }
        v.jwks_configured = cfg.jwks.is_some();
        v.allowed = if cfg.algorithms.is_empty() {
            let mut all = Vec::new();
            if v.hmac.is_some() {
                all.extend([Algorithm::HS256, Algorithm::HS384, Algorithm::HS512]);
            }
            all.extend(
                ASYMMETRIC.into_iter().filter(|a| {
                    v.jwks_configured || v.pem.iter().any(|k| k.family() == a.family())
                }),
            );
            all
        } else {
            cfg.algorithms
                .iter()
                .map(|a| Algorithm::from_str(a).map_err(|_| SetupError::BadAlgorithm(a.clone())))
                .collect::<Result<_, _>>()?
        };
        v.audience = cfg.audience.clone();
        v.issuer = cfg.issuer.clone();
        v.leeway = cfg.leeway.as_secs();
        v.max_size = cfg.max_token_size;
        Ok(v)
    }

    /// Whether any key is configured.
    pub fn enabled(&self) -> bool {
        self.hmac.is_some() || !self.pem.is_empty() || self.jwks_configured
    }

    /// The revocation list.
    pub fn revocations(&self) -> &Revocations {
        &self.revocations
    }

    /// Replace the JWKS keys from a JWKS JSON document. Keys without `kid` and symmetric keys are
    /// skipped. Returns the number of keys loaded.
    pub fn set_jwks(&self, doc: &[u8]) -> Result<usize, SetupError> {
        let set: JwkSet =
            serde_json::from_slice(doc).map_err(|e| SetupError::Jwks(e.to_string()))?;
        let mut keys = Vec::new();
        for jwk in &set.keys {
            let Some(kid) = &jwk.common.key_id else {
                continue;
            };
            if let Ok(k) = DecodingKey::from_jwk(jwk)
                && k.family() != jsonwebtoken::AlgorithmFamily::Hmac
            {
                keys.push((kid.clone(), k));
            }
        }
        let n = keys.len();
        *self.jwks.write().unwrap_or_else(|e| e.into_inner()) = keys;
        Ok(n)
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.leeway = self.leeway;
        v.validate_nbf = true;
        let mut required = vec!["exp"];
        v.validate_aud = self.audience.is_some();
        if let Some(aud) = &self.audience {
            v.set_audience(&[aud]);
            required.push("aud");
        }
        if let Some(iss) = &self.issuer {
            v.set_issuer(&[iss]);
            required.push("iss");
        }
        v.set_required_spec_claims(&required);
        v
    }

    /// Verify a token for `kind`: signature, algorithm, time claims, audience, issuer, purpose
    /// and revocation.
    pub fn verify(&self, token: &str, kind: TokenKind) -> Result<Claims, TokenError> {
        if !self.enabled() {
            return Err(TokenError::NotConfigured);
        }
        if token.len() > self.max_size {
            return Err(TokenError::TooLarge);
        }
        let alg = header_alg(token)?;
        if !self.allowed.contains(&alg) {
            return Err(TokenError::Algorithm);
        }
        let validation = self.validation(alg);
        let family = alg.family();
        let decode = |key: &DecodingKey| {
            jsonwebtoken::decode::<Claims>(token, key, &validation)
                .map(|d| d.claims)
                .map_err(|e| map_error(e.kind()))
        };
        let claims = if family == jsonwebtoken::AlgorithmFamily::Hmac {
            decode(self.hmac.as_ref().ok_or(TokenError::Algorithm)?)?
        } else {
            let kid = jsonwebtoken::decode_header(token)
                .map_err(|_| TokenError::Malformed)?
                .kid;
            let jwks = self.jwks.read().unwrap_or_else(|e| e.into_inner());
            let from_jwks = kid
                .as_deref()
                .and_then(|kid| jwks.iter().find(|(k, _)| k == kid).map(|(_, key)| key));
            let mut candidates: Vec<&DecodingKey> = from_jwks.into_iter().collect();
            candidates.extend(self.pem.iter());
            let mut result = Err(TokenError::Algorithm);
            for key in candidates.into_iter().filter(|k| k.family() == family) {
                result = decode(key);
                if result != Err(TokenError::Signature) {
                    break;
                }
            }
            result?
        };
        match (kind, &claims.channel) {
            (TokenKind::Connection, Some(_)) => {
                return Err(TokenError::Claims(
                    "a channel token cannot authenticate a connection",
                ));
            }
            (TokenKind::Channel, None) => {
                return Err(TokenError::Claims(
                    "a channel token needs a `channel` claim",
                ));
            }
            _ => {}
        }
        if self.revocations.is_revoked(&claims) {
            return Err(TokenError::Revoked);
        }
        Ok(claims)
    }
}
