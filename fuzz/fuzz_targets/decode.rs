//! The client command decoder (`herald_proto::decode`) for both wire formats.
//!
//! Input: `[format selector, frame bytes...]` (even = JSON, odd = MessagePack). Invariants:
//! - never a panic; errors carry a client-visible code of the decode family, a string `id` of at
//!   most `MAX_ID_LEN` bytes, and a message bounded by the input's size;
//! - a decoded command satisfies the documented limits (id length, idempotency key length);
//! - publish data re-encodes for subscribers of both formats, in size linear in the input;
//! - round trip: the decoded command, encoded again in the same format, decodes to the same
//!   command (data compared by its encoding), and its data re-encodes for both output formats.
#![no_main]

use std::collections::BTreeMap;

use herald_proto::codec::data_for;
use herald_proto::data::DataOut;
use herald_proto::envelope::{MAX_ID_LEN, MAX_IDEMPOTENCY_KEY_LEN, StreamPosition};
use herald_proto::{Command, Data, ErrorCode, Format, Id, Request, decode};
use libfuzzer_sys::fuzz_target;
use serde::Serialize;

#[derive(Serialize)]
struct Env<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a Id>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<Payload<'a>>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Payload<'a> {
    Subscribe {
        channel: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        recover: Option<&'a StreamPosition>,
        #[serde(skip_serializing_if = "Option::is_none")]
        token: Option<&'a str>,
    },
    Channel {
        channel: &'a str,
    },
    Publish {
        channel: &'a str,
        data: DataOut<'a>,
        #[serde(skip_serializing_if = "Option::is_none")]
        idempotency_key: Option<&'a str>,
    },
    History {
        channel: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        since: Option<&'a StreamPosition>,
        #[serde(skip_serializing_if = "Option::is_none")]
        limit: Option<usize>,
        reverse: bool,
    },
    Resume {
        token: &'a str,
        positions: &'a std::collections::HashMap<String, StreamPosition>,
    },
    Auth {
        #[serde(skip_serializing_if = "Option::is_none")]
        token: Option<&'a str>,
    },
    Refresh {
        token: &'a str,
    },
    Rpc {
        method: &'a str,
        data: &'a serde_json::Value,
    },
    Ack {
        channel: &'a str,
        offset: u64,
    },
}

fn payload<'a>(format: Format, c: &'a Command) -> Option<Payload<'a>> {
    Some(match c {
        Command::Subscribe(s) => Payload::Subscribe {
            channel: &s.channel,
            recover: s.recover.as_ref(),
            token: s.token.as_deref(),
        },
        Command::Unsubscribe(c) | Command::Presence(c) | Command::PresenceStats(c) => {
            Payload::Channel {
                channel: &c.channel,
            }
        }
        Command::Publish(p) => Payload::Publish {
            channel: &p.channel,
            data: data_for(format, &p.data),
            idempotency_key: p.idempotency_key.as_deref(),
        },
        Command::History(h) => Payload::History {
            channel: &h.channel,
            since: h.since.as_ref(),
            limit: h.limit,
            reverse: h.reverse,
        },
        Command::Ping => return None,
        Command::Resume(r) => Payload::Resume {
            token: &r.token,
            positions: &r.positions,
        },
        Command::Auth(a) => Payload::Auth {
            token: a.token.as_deref(),
        },
        Command::Refresh(r) => Payload::Refresh { token: &r.token },
        Command::Rpc(r) => Payload::Rpc {
            method: &r.method,
            data: &r.data,
        },
        Command::Ack(a) => Payload::Ack {
            channel: &a.channel,
            offset: a.offset,
        },
    })
}

fn encode(format: Format, r: &Request) -> Vec<u8> {
    let env = Env {
        kind: r.command.kind(),
        id: r.id.as_ref(),
        payload: payload(format, &r.command),
    };
    match format {
        Format::Json => serde_json::to_vec(&env).expect("re-encode JSON"),
        Format::Msgpack => rmp_serde::to_vec_named(&env).expect("re-encode MessagePack"),
    }
}

/// Data as it would be delivered to a subscriber of `format`.
fn data_bytes(format: Format, d: &Data) -> Vec<u8> {
    herald_proto::encode(
        format,
        herald_proto::ServerKind::Message,
        None,
        &data_for(format, d),
    )
    .expect("data encodes")
    .to_vec()
}

/// A comparable rendering of a request (maps sorted, data as its encoding).
fn canon(format: Format, r: &Request) -> String {
    let c = match &r.command {
        Command::Publish(p) => format!(
            "publish {:?} {:?} {:?}",
            p.channel,
            p.idempotency_key,
            data_bytes(format, &p.data)
        ),
        Command::Resume(res) => format!(
            "resume {:?} {:?}",
            res.token,
            res.positions.iter().collect::<BTreeMap<_, _>>()
        ),
        other => format!("{other:?}"),
    };
    format!("{:?} {c}", r.id)
}

fn check_id(id: &Option<Id>) {
    if let Some(Id::Str(s)) = id {
        assert!(s.len() <= MAX_ID_LEN, "string id of {} bytes", s.len());
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&sel, frame)) = input.split_first() else {
        return;
    };
    let format = if sel & 1 == 0 {
        Format::Json
    } else {
        Format::Msgpack
    };
    let req = match decode(format, frame) {
        Ok(r) => r,
        Err(e) => {
            assert!(
                matches!(
                    e.code,
                    ErrorCode::Malformed | ErrorCode::BadRequest | ErrorCode::UnknownType
                ),
                "decode error code {:?}",
                e.code
            );
            check_id(&e.id);
            // The message may quote (escaped) input, but never grows beyond a small factor
            // (plus a constant: serde spells out a float like 1e300 in full, ~330 bytes).
            assert!(
                e.message.len() <= 1024 + 10 * frame.len(),
                "error message of {} bytes for {} input bytes",
                e.message.len(),
                frame.len()
            );
            return;
        }
    };
    check_id(&req.id);
    if let Command::Publish(p) = &req.command {
        if let Some(k) = &p.idempotency_key {
            assert!((1..=MAX_IDEMPOTENCY_KEY_LEN).contains(&k.len()));
        }
        let _ = p.data.encoded_len();
        let _ = p.data.to_json_value();
        // Delivery re-encodes data for subscribers of both formats: that must always work, and
        // in linear size (a bin byte becomes up to 4 JSON characters, a control character 6; a
        // frame 16 times its command's size means something grows with nesting).
        for out in [Format::Json, Format::Msgpack] {
            let delivered = herald_proto::encode(
                out,
                herald_proto::ServerKind::Message,
                None,
                &data_for(out, &p.data),
            )
            .expect("data re-encodes for delivery");
            assert!(
                delivered.len() <= 1024 + 16 * frame.len(),
                "{out:?} delivery of {} bytes for a {}-byte command",
                delivered.len(),
                frame.len()
            );
        }
    }

    let again = encode(format, &req);
    let back = decode(format, &again).unwrap_or_else(|e| {
        panic!(
            "re-encoded request does not decode: {e}\n{}\nre-encoded: {again:?}",
            canon(format, &req)
        )
    });
    assert_eq!(
        canon(format, &req),
        canon(format, &back),
        "round trip changed the request"
    );
});
