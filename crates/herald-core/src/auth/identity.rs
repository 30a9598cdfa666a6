//! Who a connection is.

use super::Claims;

/// Who a connection is: its user id and the claims of its connection token.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    /// User id ("" = anonymous).
    /// (Boxed `str`: 16 bytes in every connection's session, not 24.)
    pub user_id: Box<str>,
    /// Claims of the connection token (`None` = connected without a token); a connect proxy's
    /// answer makes claims too ([`Claims::proxied`]).
    pub claims: Option<Box<Claims>>,
}

impl Identity {
    /// An anonymous identity without a token.
    pub fn anonymous() -> Identity {
        Identity::default()
    }

    /// The identity a verified connection token gives.
    pub fn from_claims(claims: Claims) -> Identity {
        Identity {
            user_id: claims.sub.as_str().into(),
            claims: Some(Box::new(claims)),
        }
    }

    /// Authenticated by the connect proxy: the refresh proxy extends it before `exp`.
    pub fn proxied(&self) -> bool {
        self.claims.as_ref().is_some_and(|c| c.proxied)
    }
}
