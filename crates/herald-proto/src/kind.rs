//! [`ServerKind`]: the one place that knows the wire names of the server's frames (the server
//! encodes with it, clients decode with it).

/// The `type` of a server frame (`docs/protocol.md` §3–§5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServerKind {
    /// `connected`: the session is open (first frame after the upgrade or `auth`).
    Connected,
    /// `reply`: the answer to a command with an `id`.
    Reply,
    /// `error`: a command failed (with its `id`), or a connection-level error (without).
    Error,
    /// `pong`: the answer to a `ping` command.
    Pong,
    /// `message`: a publication.
    Message,
    /// `join`: a client joined a channel.
    Join,
    /// `leave`: a client left a channel.
    Leave,
    /// `subscribed`: the server subscribed this client (server API, connect proxy).
    Subscribed,
    /// `unsubscribed`: the server removed this client from a channel.
    Unsubscribed,
    /// `refresh`: the server asks for a fresh connection token.
    Refresh,
    /// `disconnect`: the advisory sent right before the server closes the socket.
    Disconnect,
    /// `gap`: the server gave up delivering publications of an at-least-once subscription.
    Gap,
}

impl ServerKind {
    /// Every kind, for tests and tables.
    pub const ALL: [ServerKind; 12] = [
        ServerKind::Connected,
        ServerKind::Reply,
        ServerKind::Error,
        ServerKind::Pong,
        ServerKind::Message,
        ServerKind::Join,
        ServerKind::Leave,
        ServerKind::Subscribed,
        ServerKind::Unsubscribed,
        ServerKind::Refresh,
        ServerKind::Disconnect,
        ServerKind::Gap,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ServerKind::Connected => "connected",
            ServerKind::Reply => "reply",
            ServerKind::Error => "error",
            ServerKind::Pong => "pong",
            ServerKind::Message => "message",
            ServerKind::Join => "join",
            ServerKind::Leave => "leave",
            ServerKind::Subscribed => "subscribed",
            ServerKind::Unsubscribed => "unsubscribed",
            ServerKind::Refresh => "refresh",
            ServerKind::Disconnect => "disconnect",
            ServerKind::Gap => "gap",
        }
    }

    /// The kind of a wire name (`None` for names this version does not know).
    pub fn parse(name: &str) -> Option<ServerKind> {
        ServerKind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}
