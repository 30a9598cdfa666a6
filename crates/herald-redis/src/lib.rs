//! Herald's Redis engine: a [`Broker`](herald_core::broker::Broker) and a
//! [`PresenceStore`](herald_core::presence::PresenceStore) shared by every node of a cluster.
//!
//! - Fan-out through Redis Pub/Sub, subscribed per channel only while a node has local
//!   subscribers, over `pubsub_connections` connections sharded by channel hash.
//! - Offsets, epochs, history (size and age limits) and idempotency keys in Redis, changed by one
//!   Lua script per publish, which also PUBLISHes: every node sees a channel in the same order.
//! - Presence with leases that nodes refresh; a crashed node's entries expire.
//! - A control topic for cluster-wide commands (disconnects, revocations, server-side subscribes).
//!
//! Keys: `PREFIX:{CHANNEL}:meta|hist|idem:KEY|pres|pinfo|puser|pcount` (the hash tag keeps a
//! channel in one Redis Cluster slot); topics `PREFIX:ch:CHANNEL` and `PREFIX:control`.

#![forbid(unsafe_code)]

pub mod broker;
pub mod config;
mod control;
pub mod presence;
pub mod scripts;
pub mod wire;

pub use broker::RedisBroker;
pub use config::RedisConfig;
pub use presence::RedisPresence;
