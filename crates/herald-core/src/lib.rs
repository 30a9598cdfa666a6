//! The Herald engine: everything between a decoded command and the frames queued for a socket.
//!
//! # Layout
//! - [`node`]: the façade (publish, namespaces, sessions waiting for resume).
//! - [`session`]: the per-connection protocol state machine.
//! - [`hub`]: local subscription index and fan-out.
//! - [`delivery`]: at-least-once subscriptions: in-flight window, acks, redelivery.
//! - [`compression`]: which publications go out compressed (permessage-deflate).
//! - [`outlet`]: bounded outbound queue per connection, slow consumer policies.
//! - [`publication`]: publications with their once-per-format encoded frames.
//! - [`broker`] / [`presence`]: the engine traits and their contracts.
//! - [`memory`]: the embedded in-memory broker and presence store.
//! - [`auth`]: token verification, claims, channel patterns, revocations.
//! - [`journal`]: lifecycle events and dead letters (bounded, for the server API).
//! - [`rpc`]: the `rpc` command's handler trait.
//! - [`limits`]: per-connection and per-user rate limits.
//! - [`config`]: namespaces, session limits, auth and rate limits.
//! - [`error`]: the client-visible [`EngineError`].

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod auth;
pub mod broker;
pub mod cluster;
pub mod compression;
pub mod config;
#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
pub mod cursor;
mod de;
pub mod delivery;
pub mod error;
pub mod hub;
pub mod journal;
pub mod limits;
pub mod memory;
pub mod memory_cluster;
pub mod node;
mod occasional;
pub mod outlet;
pub mod presence;
pub mod publication;
pub mod rpc;
pub mod session;
mod sync;
#[cfg(test)]
mod testing;

pub use auth::{AuthConfig, Claims, Identity, Verifier};
pub use config::{
    Delivery, EngineConfig, LimitsConfig, NamespaceOptions, SessionConfig, SlowConsumerPolicy,
};
pub use error::EngineError;
pub use node::{DescribeReply, ServerCommand, SessionDetails};
pub use node::{Heartbeat, Node};
pub use session::{Flow, Session};
