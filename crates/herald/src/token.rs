//! `herald token`: mint connection and channel tokens from the configured key (or a private key
//! file), for development, tests and scripts.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use herald_core::{AuthConfig, Claims};
use jsonwebtoken::{Algorithm, EncodingKey, Header};

/// What to put in the token.
#[derive(clap::Args, Debug, Clone)]
pub struct MintArgs {
    /// User id (`sub`); empty = anonymous.
    #[arg(long, short = 'u', default_value = "")]
    pub user: String,
    /// Channel patterns the user may subscribe to (repeatable; `*` is a wildcard).
    #[arg(long = "channels", value_delimiter = ',')]
    pub channels: Vec<String>,
    /// Channel patterns the user may publish to (repeatable).
    #[arg(long = "publish", value_delimiter = ',')]
    pub publish: Vec<String>,
    /// Lifetime, e.g. `90s`, `1h`, `7d`.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub ttl: Duration,
    /// Public user info (JSON), shown in presence.
    #[arg(long)]
    pub info: Option<String>,
    /// Mint a channel token for this channel instead of a connection token.
    #[arg(long)]
    pub channel: Option<String>,
    /// Private key (PEM: RSA, EC or Ed25519) to sign with instead of `auth.hmac_secret`.
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// Signing algorithm (default: HS256 for the secret, RS256/ES256/EdDSA for a key file).
    #[arg(long)]
    pub alg: Option<String>,
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Sign a token for `args` with the key from `auth` or `args.key`.
pub fn mint(auth: &AuthConfig, args: &MintArgs) -> anyhow::Result<String> {
    let (key, default_alg) = match &args.key {
        Some(path) => {
            let pem =
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            if let Ok(k) = EncodingKey::from_rsa_pem(&pem) {
                (k, Algorithm::RS256)
            } else if let Ok(k) = EncodingKey::from_ec_pem(&pem) {
                (k, Algorithm::ES256)
            } else if let Ok(k) = EncodingKey::from_ed_pem(&pem) {
                (k, Algorithm::EdDSA)
            } else {
                bail!(
                    "{}: not an RSA, EC or Ed25519 private key in PEM form",
                    path.display()
                );
            }
        }
        None => match &auth.hmac_secret {
            Some(s) => (EncodingKey::from_secret(s.as_bytes()), Algorithm::HS256),
            None => bail!("no signing key: set auth.hmac_secret or pass --key FILE"),
        },
    };
    let alg = match &args.alg {
        Some(a) => a
            .parse()
            .map_err(|_| anyhow::anyhow!("unknown algorithm {a:?}"))?,
        None => default_alg,
    };
    let info = match &args.info {
        Some(j) => Some(serde_json::from_str(j).context("--info must be JSON")?),
        None => None,
    };
    let now = now_secs();
    let claims = Claims {
        sub: args.user.clone(),
        exp: now + args.ttl.as_secs().max(1),
        iat: Some(now),
        jti: Some(uuid::Uuid::new_v4().simple().to_string()),
        info,
        channels: args.channels.clone(),
        publish: args.publish.clone(),
        channel: args.channel.clone(),
        proxied: false,
    };
    // aud/iss are added when the server checks them.
    let mut value = serde_json::to_value(&claims)?;
    if let Some(obj) = value.as_object_mut() {
        if let Some(aud) = &auth.audience {
            obj.insert("aud".into(), aud.clone().into());
        }
        if let Some(iss) = &auth.issuer {
            obj.insert("iss".into(), iss.clone().into());
        }
    }
    Ok(jsonwebtoken::encode(&Header::new(alg), &value, &key)?)
}

/// A random secret for `--dev`.
pub fn dev_secret() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..48)
        .map(|_| {
            char::from(
                b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                    [rng.random_range(0..62)],
            )
        })
        .collect()
}
