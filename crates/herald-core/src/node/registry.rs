//! Live sessions by user, for revocation, per-user disconnects and server-side commands.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use herald_proto::CloseCode;

use crate::outlet::Outlet;

use super::*;

/// A command from the server side (API, connect proxy) for a user's sessions.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerCommand {
    /// Subscribe to this channel (the client gets a `subscribed` push).
    Subscribe(String),
    /// Leave this channel (the client gets an `unsubscribed` push).
    Unsubscribe(String),
    /// The refresh proxy extended this (proxy-authenticated) connection.
    Refreshed(crate::rpc::Refreshed),
    /// Say what the session is (its transport, age and address), for the admin UI. Answered by
    /// the task that owns the session, which knows its transport: nothing per connection keeps it.
    Describe(DescribeReply),
}

/// What a live session says about itself when asked ([`ServerCommand::Describe`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionDetails {
    /// The session's client id.
    pub client_id: String,
    /// `websocket`, or the HTTP transport (`sse`, `stream`, `poll`, `feed`); `None` when parked.
    pub transport: Option<&'static str>,
    /// Time since the session started (a resumed session continues the old one's age).
    pub age: Duration,
    /// The client's IP (the last connection's, for a session waiting for `resume`).
    pub address: Option<IpAddr>,
}

/// Where a session sends its [`SessionDetails`]; answering never waits (an asker that gave up
/// or is full is not answered).
#[derive(Debug, Clone)]
pub struct DescribeReply(tokio::sync::mpsc::Sender<SessionDetails>);

impl DescribeReply {
    /// Answer the asker.
    pub fn answer(&self, details: SessionDetails) {
        let _ = self.0.try_send(details);
    }
}

impl PartialEq for DescribeReply {
    fn eq(&self, other: &Self) -> bool {
        self.0.same_channel(&other.0)
    }
}

/// A live session of a user, for revocation and per-user disconnects.
pub(crate) struct Registered {
    client_id: Arc<str>,
    outlet: std::sync::Weak<Outlet>,
    jti: Option<String>,
    commands: Option<tokio::sync::mpsc::Sender<ServerCommand>>,
}

impl Node {
    pub(crate) fn register(
        &self,
        user: &str,
        client_id: &Arc<str>,
        outlet: &Arc<Outlet>,
        jti: Option<String>,
        commands: Option<tokio::sync::mpsc::Sender<ServerCommand>>,
    ) {
        if user.is_empty() {
            return;
        }
        let mut users = lock(&self.users);
        let list = users.entry(user.to_owned()).or_default();
        list.retain(|r| r.client_id != *client_id);
        list.push(Registered {
            client_id: client_id.clone(),
            outlet: Arc::downgrade(outlet),
            jti,
            commands,
        });
    }

    pub(crate) fn deregister(&self, user: &str, client_id: &str) {
        if user.is_empty() {
            return;
        }
        let mut users = lock(&self.users);
        if let Some(list) = users.get_mut(user) {
            list.retain(|r| &*r.client_id != client_id);
            if list.is_empty() {
                users.remove(user);
            }
        }
    }

    pub(super) fn close_where(
        &self,
        code: CloseCode,
        user: Option<&str>,
        jti: Option<&str>,
    ) -> usize {
        let users = lock(&self.users);
        let mut closed = 0;
        let lists: Vec<&Vec<Registered>> = match user {
            Some(u) => users.get(u).into_iter().collect(),
            None => users.values().collect(),
        };
        for r in lists.into_iter().flatten() {
            if jti.is_some_and(|j| r.jti.as_deref() != Some(j)) {
                continue;
            }
            if let Some(o) = r.outlet.upgrade() {
                o.close(code);
                closed += 1;
            }
        }
        closed
    }

    /// Revoke every token of `user` issued up to now, until `expires_at` (Unix seconds), and close
    /// the user's connections (4503; waiting sessions can no longer be resumed). Returns the number
    /// of sessions closed.
    pub fn revoke_user(&self, user: &str, expires_at: u64) -> usize {
        self.verifier.revocations().revoke_user(user, expires_at);
        self.close_where(CloseCode::TokenRevoked, Some(user), None)
    }

    /// Revoke one token by `jti` until `expires_at` and close the sessions using it.
    pub fn revoke_token(&self, jti: &str, expires_at: u64) -> usize {
        self.verifier.revocations().revoke_token(jti, expires_at);
        self.close_where(CloseCode::TokenRevoked, None, Some(jti))
    }

    /// Send a server-side command to every session of `user` (live or waiting for resume).
    /// Returns the number of sessions it was queued for.
    pub fn command_user(&self, user: &str, cmd: ServerCommand) -> usize {
        let users = lock(&self.users);
        users
            .get(user)
            .into_iter()
            .flatten()
            .filter_map(|r| r.commands.as_ref())
            .filter(|tx| tx.try_send(cmd.clone()).is_ok())
            .count()
    }

    /// Close every session of `user` with `code`. Returns the number closed.
    pub fn disconnect_user(&self, user: &str, code: CloseCode) -> usize {
        self.close_where(code, Some(user), None)
    }

    /// Close the session with this client id (authenticated users only). Returns whether found.
    pub fn disconnect_client(&self, client_id: &str, code: CloseCode) -> bool {
        let users = lock(&self.users);
        for r in users.values().flatten() {
            if &*r.client_id == client_id
                && let Some(o) = r.outlet.upgrade()
            {
                o.close(code);
                return true;
            }
        }
        false
    }
}

/// A session of an authenticated user on this node, as the admin UI lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SessionInfo {
    /// The user (token `sub`).
    pub user: String,
    /// The session's client id.
    pub client_id: String,
    /// Whether a connection is attached now (false: waiting for `resume`).
    pub live: bool,
    /// The wire format (`herald.v1.json` or `herald.v1.msgpack`), while attached.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<&'static str>,
    /// `websocket`, `sse`, `stream`, `poll` or `feed`, while attached; `None` when waiting for
    /// `resume` or when the session did not answer in time.
    pub transport: Option<&'static str>,
    /// Milliseconds since the session started; `None` when it did not answer in time.
    pub age_ms: Option<u64>,
    /// The client's IP (for a waiting session, its last connection's); `None` when unknown.
    pub address: Option<IpAddr>,
}

/// A listed session and, while it is live, how to ask it for its details.
type Found = (
    SessionInfo,
    Option<tokio::sync::mpsc::Sender<ServerCommand>>,
);

impl SessionInfo {
    fn fill(&mut self, d: SessionDetails) {
        self.transport = d.transport;
        self.age_ms = Some(d.age.as_millis() as u64);
        self.address = d.address;
    }
}

impl Node {
    /// Up to `max` sessions of `user` (or every user's when `None`), only the one with
    /// `client_id` when given, without asking them for details (transport, age, address: see
    /// [`Node::describe_sessions`]). Anonymous connections are not registered, so not listed.
    pub fn sessions(
        &self,
        user: Option<&str>,
        client_id: Option<&str>,
        max: usize,
    ) -> Vec<SessionInfo> {
        self.found(user, client_id, max)
            .into_iter()
            .map(|(info, _)| info)
            .collect()
    }

    /// Like [`Node::sessions`], with each session's transport, age and address: a waiting session
    /// is described by the node; a live one is asked ([`ServerCommand::Describe`]) and has
    /// `timeout` to answer (left without details if it does not).
    pub async fn describe_sessions(
        &self,
        user: Option<&str>,
        client_id: Option<&str>,
        max: usize,
        timeout: Duration,
    ) -> Vec<SessionInfo> {
        let found = self.found(user, client_id, max);
        let (tx, mut rx) = tokio::sync::mpsc::channel(found.len().max(1));
        let reply = DescribeReply(tx);
        let mut asked: HashMap<String, usize> = HashMap::new();
        let mut infos = Vec::with_capacity(found.len());
        for (i, (info, commands)) in found.into_iter().enumerate() {
            if let Some(c) = commands
                && c.try_send(ServerCommand::Describe(reply.clone())).is_ok()
            {
                asked.insert(info.client_id.clone(), i);
            }
            infos.push(info);
        }
        drop(reply);
        let deadline = tokio::time::Instant::now() + timeout;
        while !asked.is_empty() {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(d)) => {
                    if let Some(i) = asked.remove(&d.client_id) {
                        infos[i].fill(d);
                    }
                }
                Ok(None) | Err(_) => break,
            }
        }
        infos
    }

    /// The matching sessions, each with its command channel when it is live (a waiting
    /// session's details are filled in from the parking: it has no task to answer).
    fn found(&self, user: Option<&str>, client_id: Option<&str>, max: usize) -> Vec<Found> {
        let mut found: Vec<Found> = {
            let users = lock(&self.users);
            let lists: Vec<(&String, &Vec<Registered>)> = match user {
                Some(u) => users.get_key_value(u).into_iter().collect(),
                None => users.iter().collect(),
            };
            lists
                .into_iter()
                .flat_map(|(u, list)| list.iter().map(move |r| (u, r)))
                .filter(|(_, r)| client_id.is_none_or(|c| &*r.client_id == c))
                .take(max)
                .map(|(u, r)| {
                    let outlet = r.outlet.upgrade();
                    let info = SessionInfo {
                        user: u.clone(),
                        client_id: r.client_id.to_string(),
                        live: outlet.is_some(),
                        format: outlet.map(|o| o.format.subprotocol()),
                        transport: None,
                        age_ms: None,
                        address: None,
                    };
                    (info, r.commands.clone())
                })
                .collect()
        };
        let ids: HashSet<&str> = found.iter().map(|(i, _)| i.client_id.as_str()).collect();
        let mut waiting = self.waiting_details(&ids);
        for (info, commands) in &mut found {
            if let Some(d) = waiting.remove(info.client_id.as_str()) {
                info.live = false;
                info.format = None;
                info.fill(d);
                *commands = None;
            }
        }
        found
    }
}
