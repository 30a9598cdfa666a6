//! Herald's NATS engine: a [`Broker`](herald_core::broker::Broker), a
//! [`PresenceStore`](herald_core::presence::PresenceStore) and a
//! [`ControlBus`](herald_core::cluster::ControlBus) over NATS, for deployments that already run it.
//!
//! - With JetStream (default): one stream keeps every channel on `PREFIX.in.CHANNEL`; offsets are
//!   contiguous per channel (optimistic `Nats-Expected-Last-Subject-Sequence`), idempotency keys
//!   use JetStream's deduplication window, and the stream republishes what it stored to
//!   `PREFIX.out.CHANNEL` for the nodes' subscriptions. Nodes fill offsets that core NATS dropped
//!   from the stream.
//! - Without JetStream: fan-out only; history-less namespaces.
//! - Presence: scatter-gather to live nodes; a dead node leaves no ghost.
//!
//! Channel names become subject tokens with `~XX` escapes ([`subject`]).

#![forbid(unsafe_code)]

pub mod broker;
pub mod config;
pub mod control;
mod plane;
mod plumbing;
pub mod presence;
pub mod subject;

pub use broker::NatsBroker;
pub use config::NatsConfig;
pub use presence::NatsPresence;
