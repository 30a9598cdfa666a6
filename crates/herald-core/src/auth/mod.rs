//! Authentication and authorization: token verification, claims, channel patterns, revocations.

mod claims;
mod config;
mod identity;
pub mod patterns;
pub mod permissions;
mod revocation;
mod verifier;

pub use claims::{Claims, TokenKind};
pub use config::AuthConfig;
pub use identity::Identity;
pub use revocation::Revocations;
pub use verifier::{SetupError, TokenError, Verifier};
