//! Token verification (`herald_core::auth::Verifier`) with a fixed HMAC secret.
//!
//! Input: `[mode, bytes...]`.
//! - mode even: the bytes are the token text. With only an HMAC secret configured, no token the
//!   fuzzer can write verifies (it cannot know the secret): `verify` must return an error, for
//!   both token kinds, and never panic.
//! - mode odd: the bytes are `header JSON 0xFF claims JSON`; the target signs them with the
//!   secret (HS256/384/512, picked by the mode), so verification reaches the claims checks. When
//!   it succeeds, the claims must really pass them: `exp` (with leeway) and `nbf`, audience and
//!   issuer when configured, the token kind (`channel` claim), revocations. The same token with a
//!   flipped signature byte, or checked with another secret, must fail.
#![no_main]

use std::sync::LazyLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use herald_core::auth::{TokenError, TokenKind};
use herald_core::{AuthConfig, Verifier};
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;

const SECRET: &str = "herald-fuzz-secret-0123456789abcdef";
const LEEWAY: u64 = 5;
const AUDIENCE: &str = "herald";
const ISSUER: &str = "https://issuer.example";
const REVOKED_JTI: &str = "revoked-jti";
const REVOKED_USER: &str = "revoked-user";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn verifier(secret: &str, aud_iss: bool) -> Verifier {
    let cfg = AuthConfig {
        hmac_secret: Some(secret.to_owned()),
        leeway: Duration::from_secs(LEEWAY),
        audience: aud_iss.then(|| AUDIENCE.to_owned()),
        issuer: aud_iss.then(|| ISSUER.to_owned()),
        ..AuthConfig::default()
    };
    cfg.validate().expect("valid config");
    Verifier::from_config(&cfg).expect("verifier")
}

struct Setup {
    plain: Verifier,
    strict: Verifier,
    other: Verifier,
    /// When `REVOKED_USER` was revoked: tokens issued up to then are refused.
    revoked_at: u64,
}

static SETUP: LazyLock<Setup> = LazyLock::new(|| {
    let plain = verifier(SECRET, false);
    let strict = verifier(SECRET, true);
    let far = now() + 365 * 24 * 3600;
    for v in [&plain, &strict] {
        v.revocations().revoke_token(REVOKED_JTI, far);
        v.revocations().revoke_user(REVOKED_USER, far);
    }
    Setup {
        plain,
        strict,
        other: verifier("another-secret-of-32-bytes-or-more!", false),
        revoked_at: now(),
    }
});

/// The claims as the verifier's JSON would see them (for checking what it accepted).
fn claim<'a>(claims: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    claims.as_object().and_then(|o| o.get(name))
}

fn check_accepted(
    claims_json: &[u8],
    c: &herald_core::Claims,
    kind: TokenKind,
    strict: bool,
    revoked_at: u64,
) {
    // Lossy: serde skips ignored strings without checking their UTF-8, so accepted claims may
    // hold invalid UTF-8 in claims Herald does not read.
    let raw: serde_json::Value = serde_json::from_str(&String::from_utf8_lossy(claims_json))
        .expect("accepted claims are JSON");
    let t = now();
    assert!(
        c.exp.saturating_add(LEEWAY + 1) >= t,
        "expired token accepted: exp {} now {t}",
        c.exp
    );
    if let Some(nbf) = claim(&raw, "nbf").and_then(serde_json::Value::as_f64) {
        assert!(
            nbf <= (t + LEEWAY + 1) as f64,
            "token not valid before {nbf} accepted at {t}"
        );
    }
    match kind {
        TokenKind::Connection => assert!(
            c.channel.is_none(),
            "channel token authenticated a connection"
        ),
        TokenKind::Channel => assert!(c.channel.is_some(), "channel token without `channel`"),
    }
    assert_ne!(
        c.jti.as_deref(),
        Some(REVOKED_JTI),
        "revoked token id accepted"
    );
    if c.sub == REVOKED_USER {
        assert!(
            c.iat.is_some_and(|iat| iat > revoked_at),
            "revoked user's old token accepted (iat {:?})",
            c.iat
        );
    }
    if strict {
        let aud_ok = match claim(&raw, "aud") {
            Some(serde_json::Value::String(a)) => a == AUDIENCE,
            Some(serde_json::Value::Array(a)) => a.iter().any(|x| x.as_str() == Some(AUDIENCE)),
            _ => false,
        };
        assert!(aud_ok, "wrong audience accepted: {:?}", claim(&raw, "aud"));
        assert_eq!(
            claim(&raw, "iss").and_then(serde_json::Value::as_str),
            Some(ISSUER),
            "wrong issuer accepted"
        );
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&mode, rest)) = input.split_first() else {
        return;
    };
    let s = &*SETUP;
    let kinds = [TokenKind::Connection, TokenKind::Channel];

    if mode & 1 == 0 {
        let token = String::from_utf8_lossy(rest);
        for v in [&s.plain, &s.strict] {
            for kind in kinds {
                let r = v.verify(&token, kind);
                assert!(r.is_err(), "unsigned token {token:?} verified: {r:?}");
            }
        }
        return;
    }

    // Sign fuzzer-chosen header and claims with the secret.
    let (header, claims) = match rest.iter().position(|&b| b == 0xff) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (&br#"{"alg":"HS256","typ":"JWT"}"#[..], rest),
    };
    let alg = [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512][usize::from(mode >> 1) % 3];
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let signature = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &EncodingKey::from_secret(SECRET.as_bytes()),
        alg,
    )
    .expect("sign");
    let token = format!("{message}.{signature}");

    for (v, strict) in [(&s.plain, false), (&s.strict, true)] {
        for kind in kinds {
            match v.verify(&token, kind) {
                Ok(c) => check_accepted(claims, &c, kind, strict, s.revoked_at),
                Err(TokenError::NotConfigured) => panic!("verifier lost its key"),
                Err(_) => {}
            }
        }
    }
    // A damaged signature or the wrong secret never verifies.
    // (Not the last character: its low bits may be padding.)
    let mut damaged = token.clone().into_bytes();
    let at = message.len() + 1 + usize::from(mode >> 3) % (signature.len() - 1);
    damaged[at] = if damaged[at] == b'A' { b'B' } else { b'A' };
    let damaged = String::from_utf8(damaged).expect("ASCII");
    for kind in kinds {
        assert!(
            s.plain.verify(&damaged, kind).is_err(),
            "damaged signature verified: {damaged}"
        );
        assert!(
            s.other.verify(&token, kind).is_err(),
            "token verified with another secret"
        );
    }
});
