//! Herald wire protocol v1 — types, codes and codecs, with no I/O.
//!
//! `docs/protocol.md` is the normative description; this crate is its implementation.
//!
//! # Layout
//! - [`envelope`]: the `{type, id, payload}` envelope, client commands, reply/push payloads.
//! - [`codec`]: JSON and MessagePack decoding of client frames, encoding of server frames (the
//!   usual JSON command decoded in one pass, the per-publication JSON frames written by hand).
//! - [`data`]: opaque application data kept in its arrival format.
//! - [`codes`]: error codes and WebSocket close codes (with reconnect advice).
//! - [`channel`]: channel name validation and namespaces.
//! - [`deflate`]: permessage-deflate: negotiation, compressing and (bounded) inflating a message.
//! - [`frame`]: building unmasked server-to-client WebSocket frames.
//! - [`kind`]: the names of server frames ([`ServerKind`]).
//! - [`server`]: whole server frames decoded into typed payloads ([`ServerMessage`]).

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod channel;
pub mod codec;
pub mod codes;
pub mod data;
pub mod deflate;
pub mod envelope;
pub mod frame;
pub mod kind;
pub mod server;

pub use codec::{Format, decode, encode};
pub use codes::{CloseCode, ErrorCode};
pub use data::{Data, Msgpack};
pub use envelope::{Command, Id, Request, StreamPosition};
pub use kind::ServerKind;
pub use server::ServerMessage;
