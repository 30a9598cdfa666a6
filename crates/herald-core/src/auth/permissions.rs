//! The permission rules of protocol §1c as pure functions of who asks (the [`Identity`]), the
//! channel and its namespace's [`NamespaceRules`]. The session calls them on every command.

use herald_proto::ErrorCode;

use super::{Identity, TokenKind, Verifier, patterns};
use crate::error::EngineError;

/// The part of a namespace's options the permission rules read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NamespaceRules {
    /// Clients without a user id may use the namespace.
    pub anonymous: bool,
    /// Every admitted client may subscribe (and read history/presence).
    pub allow_subscribe: bool,
    /// Every admitted client may publish.
    pub allow_publish: bool,
    /// Subscribing needs a channel token.
    pub private: bool,
}

fn not_listed() -> EngineError {
    EngineError::new(
        ErrorCode::PermissionDenied,
        "this user-limited channel does not list you",
    )
}

/// Anonymous clients use a namespace only when it admits them.
pub fn admitted(who: &Identity, ns: NamespaceRules) -> Result<(), EngineError> {
    if who.user_id.is_empty() && !ns.anonymous {
        return Err(EngineError::new(
            ErrorCode::Unauthorized,
            "anonymous clients may not use this namespace",
        ));
    }
    Ok(())
}

/// Before asking the backend (subscribe/publish proxy): admitted, and listed on a user-limited
/// channel (the backend decides the rest).
pub fn may_ask_backend(
    who: &Identity,
    channel: &str,
    ns: NamespaceRules,
) -> Result<(), EngineError> {
    admitted(who, ns)?;
    match patterns::user_allowed(channel, &who.user_id) {
        Some(false) => Err(not_listed()),
        _ => Ok(()),
    }
}

fn claim_patterns(who: &Identity, publish: bool) -> &[String] {
    match &who.claims {
        Some(c) if publish => &c.publish,
        Some(c) => &c.channels,
        None => &[],
    }
}

/// Subscribe (and read history/presence without being subscribed): user-limited channels admit
/// their listed users; a channel token grants its channel to its user; otherwise the namespace
/// (`private`, `allow_subscribe`) and the token's `channels` patterns decide.
pub fn may_subscribe(
    who: &Identity,
    verifier: &Verifier,
    channel: &str,
    ns: NamespaceRules,
    channel_token: Option<&str>,
) -> Result<(), EngineError> {
    admitted(who, ns)?;
    if let Some(listed) = patterns::user_allowed(channel, &who.user_id) {
        return if listed { Ok(()) } else { Err(not_listed()) };
    }
    if let Some(t) = channel_token {
        let c = verifier.verify(t, TokenKind::Channel)?;
        if c.channel.as_deref() != Some(channel) {
            return Err(EngineError::new(
                ErrorCode::TokenInvalid,
                "the channel token is for another channel",
            ));
        }
        if *c.sub != *who.user_id {
            return Err(EngineError::new(
                ErrorCode::TokenInvalid,
                "the channel token is for another user",
            ));
        }
        return Ok(());
    }
    if ns.private {
        return Err(EngineError::new(
            ErrorCode::PermissionDenied,
            "private channel: a channel token is required",
        ));
    }
    if ns.allow_subscribe || patterns::any_matches(claim_patterns(who, false), channel) {
        return Ok(());
    }
    Err(EngineError::new(
        ErrorCode::PermissionDenied,
        "your token does not grant this channel",
    ))
}

/// Publish: `allow_publish` or a `publish` pattern; on user-limited channels the user must also
/// be listed.
pub fn may_publish(who: &Identity, channel: &str, ns: NamespaceRules) -> Result<(), EngineError> {
    may_ask_backend(who, channel, ns)?;
    if ns.allow_publish || patterns::any_matches(claim_patterns(who, true), channel) {
        return Ok(());
    }
    Err(EngineError::new(
        ErrorCode::PermissionDenied,
        "you may not publish to this channel",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{AuthConfig, Claims};

    fn user(name: &str, channels: &[&str], publish: &[&str]) -> Identity {
        Identity::from_claims(Claims {
            sub: name.to_owned(),
            channels: channels.iter().map(|s| s.to_string()).collect(),
            publish: publish.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
    }

    fn code(r: Result<(), EngineError>) -> Option<ErrorCode> {
        r.err().map(|e| e.code)
    }

    fn verifier() -> Verifier {
        Verifier::from_config(&AuthConfig::default()).expect("verifier")
    }

    #[test]
    fn anonymous_clients_need_an_anonymous_namespace() {
        let anon = Identity::anonymous();
        let open = NamespaceRules {
            allow_subscribe: true,
            allow_publish: true,
            ..Default::default()
        };
        assert_eq!(
            code(may_publish(&anon, "news", open)),
            Some(ErrorCode::Unauthorized)
        );
        let anonymous = NamespaceRules {
            anonymous: true,
            ..open
        };
        assert_eq!(code(may_publish(&anon, "news", anonymous)), None);
        assert_eq!(
            code(may_subscribe(&anon, &verifier(), "news", anonymous, None)),
            None
        );
    }

    #[test]
    fn claims_patterns_and_namespace_flags_decide() {
        let alice = user("alice", &["chat:*"], &["chat:lobby"]);
        let closed = NamespaceRules::default();
        let v = verifier();
        assert_eq!(
            code(may_subscribe(&alice, &v, "chat:x", closed, None)),
            None
        );
        assert_eq!(
            code(may_subscribe(&alice, &v, "news", closed, None)),
            Some(ErrorCode::PermissionDenied)
        );
        assert_eq!(code(may_publish(&alice, "chat:lobby", closed)), None);
        assert_eq!(
            code(may_publish(&alice, "chat:other", closed)),
            Some(ErrorCode::PermissionDenied)
        );
        let private = NamespaceRules {
            private: true,
            allow_subscribe: true,
            ..Default::default()
        };
        assert_eq!(
            code(may_subscribe(&alice, &v, "chat:x", private, None)),
            Some(ErrorCode::PermissionDenied),
            "private: claims are not enough"
        );
        assert_eq!(
            code(may_subscribe(
                &alice,
                &v,
                "chat:x",
                private,
                Some("not-a-jwt")
            )),
            Some(ErrorCode::TokenInvalid)
        );
    }

    #[test]
    fn user_limited_channels_admit_only_their_users() {
        let open = NamespaceRules {
            allow_subscribe: true,
            allow_publish: true,
            ..Default::default()
        };
        let v = verifier();
        let (alice, bob) = (user("alice", &[], &[]), user("bob", &[], &[]));
        assert_eq!(
            code(may_subscribe(&alice, &v, "dm:#alice,carol", open, None)),
            None
        );
        assert_eq!(
            code(may_subscribe(&bob, &v, "dm:#alice,carol", open, None)),
            Some(ErrorCode::PermissionDenied)
        );
        assert_eq!(
            code(may_publish(&bob, "dm:#alice,carol", open)),
            Some(ErrorCode::PermissionDenied)
        );
        assert_eq!(
            code(may_ask_backend(&bob, "dm:#alice", open)),
            Some(ErrorCode::PermissionDenied)
        );
        // Listed, but the namespace does not let everyone publish and no claim allows it.
        let closed = NamespaceRules::default();
        assert_eq!(
            code(may_publish(&alice, "dm:#alice", closed)),
            Some(ErrorCode::PermissionDenied)
        );
    }
}
