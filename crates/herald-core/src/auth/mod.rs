//! Authentication and authorization: token verification, claims, channel patterns, revocations.

mod claims;
mod config;
pub mod patterns;
mod revocation;
mod verifier;

pub use claims::{Claims, TokenKind};
pub use config::AuthConfig;
pub use revocation::Revocations;
pub use verifier::{SetupError, TokenError, Verifier};
