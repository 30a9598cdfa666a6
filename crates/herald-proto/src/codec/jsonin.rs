//! One pass over a JSON command, for the usual shape: `type` before `payload`.
//!
//! The general decode reads the envelope with the payload captured as raw text (a scan over
//! every byte of it), then decodes the payload (a second scan; for `publish`, a second scan of
//! the application data too). Here a `publish` payload is decoded as it is read, the type and
//! keys are borrowed instead of copied, and other commands keep their payload raw as before.
//!
//! It answers only what it decodes cleanly: on anything unusual (a key or type with escapes,
//! `payload` before `type`, a duplicate key, invalid input, a failed check) it returns `None`
//! and the general decode answers — with its own, unchanged error, which knows the request `id`
//! even when it comes after a broken payload.

use serde::Deserialize;
use serde::de::{Error as _, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::{JsonPublish, RawPayload, checked_publish, finish};
use crate::data::Data;
use crate::envelope::{Command, DecodeError, Id, Request};

/// The decoded command, or `None` for the general decode to answer.
pub(crate) fn decode(input: &[u8]) -> Option<Result<Request, DecodeError>> {
    let env: OnePass<'_> = serde_json::from_slice(input).ok()?;
    let OnePass {
        kind,
        id,
        publish,
        payload,
    } = env;
    let id = id.flatten();
    match publish {
        Some(p) => {
            let data = Data::Json(p.data.to_owned());
            let publish = checked_publish(&id, p.channel, data, p.idempotency_key).ok()?;
            Some(Ok(Request {
                id,
                command: Command::Publish(publish),
            }))
        }
        None => {
            let raw = RawPayload::Json(payload.flatten().map(RawValue::get));
            Some(finish(id, kind, raw))
        }
    }
}

/// The envelope's fields as read in one pass.
struct OnePass<'a> {
    kind: Option<&'a str>,
    id: Option<Option<Id>>,
    /// The payload of a `publish` whose type came first, decoded.
    publish: Option<JsonPublish<'a>>,
    /// Any other payload, raw.
    payload: Option<Option<&'a RawValue>>,
}

impl<'de> Deserialize<'de> for OnePass<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(OnePassVisitor)
    }
}

struct OnePassVisitor;

impl<'de> Visitor<'de> for OnePassVisitor {
    type Value = OnePass<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a command envelope")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<OnePass<'de>, A::Error> {
        let mut env = OnePass {
            kind: None,
            id: None,
            publish: None,
            payload: None,
        };
        let twice = || A::Error::custom("duplicate key");
        while let Some(key) = m.next_key::<&'de str>()? {
            match key {
                "type" => {
                    if env.kind.is_some() {
                        return Err(twice());
                    }
                    env.kind = Some(m.next_value()?);
                }
                "id" => {
                    if env.id.is_some() {
                        return Err(twice());
                    }
                    env.id = Some(m.next_value()?);
                }
                "payload" => {
                    if env.payload.is_some() || env.publish.is_some() {
                        return Err(twice());
                    }
                    if env.kind == Some("publish") {
                        env.publish = Some(m.next_value()?);
                    } else {
                        env.payload = Some(m.next_value()?);
                    }
                }
                _ => {
                    m.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(env)
    }
}

#[cfg(test)]
mod tests {
    use crate::codec::{Format, decode};
    use proptest::prelude::*;

    /// The general decode alone: what every input must still decode to.
    fn general(input: &[u8]) -> String {
        format!("{:?}", super::super::decode_json(input))
    }

    fn same(input: &str) {
        let fast = format!("{:?}", decode(Format::Json, input.as_bytes()));
        assert_eq!(fast, general(input.as_bytes()), "{input}");
    }

    /// Whatever takes the one-pass path decodes to what the general decode gives, errors
    /// included.
    #[test]
    fn one_pass_and_general_decode_agree() {
        for input in [
            r#"{"type":"publish","id":1,"payload":{"channel":"c","data":{"a":[1,2]}}}"#,
            r#"{"type":"publish","id":"x","payload":{"channel":"c","data":"s","idempotency_key":"k"}}"#,
            r#"{"type":"publish","id":"x","payload":{"channel":"c","data":1,"idempotency_key":""}}"#,
            r#"{"type":"publish","payload":{"channel":"c"},"id":7}"#,
            r#"{"type":"publish","payload":null,"id":7}"#,
            r#"{"type":"publish","id":7}"#,
            r#"{"payload":{"channel":"c","data":1},"type":"publish","id":2}"#,
            r#"{"type":"publish","type":"publish","payload":{"channel":"c","data":1}}"#,
            r#"{"type":"subscribe","id":3,"payload":{"channel":"news"},"extra":[1,{"b":2}]}"#,
            r#"{"type":"ping","id":4}"#,
            r#"{"type":"p\u0069ng","id":4}"#,
            r#"{"type":null,"id":4}"#,
            r#"{"id":4}"#,
            r#"{"type":"nope","id":"q"}"#,
            r#"{"type":"publish","id":-1,"payload":{"channel":"c","data":1}}"#,
            r#"{"type":"publish","id":1,"payload":{"channel":"c","data":1}} x"#,
            r#"[1,2]"#,
            r#"{"type":"ack","id":5,"payload":{"channel":"c","offset":3}}"#,
        ] {
            same(input);
        }
        // And the usual commands do take it.
        for usual in [
            r#"{"type":"publish","id":1,"payload":{"channel":"c","data":{"a":1}}}"#,
            r#"{"type":"subscribe","id":"s","payload":{"channel":"c"}}"#,
        ] {
            assert!(
                matches!(super::decode(usual.as_bytes()), Some(Ok(_))),
                "{usual}"
            );
        }
    }

    proptest! {
        #[test]
        fn any_publish_decodes_the_same_in_one_pass(
            channel in any::<String>(),
            data in prop_oneof![Just("1".to_owned()), Just("{\"k\":[null,true]}".to_owned()), any::<String>().prop_map(|s| serde_json::to_string(&s).expect("json"))],
            key in proptest::option::of(".{0,130}"),
            id in prop_oneof![any::<u64>().prop_map(|n| n.to_string()), any::<String>().prop_map(|s| serde_json::to_string(&s).expect("json"))],
        ) {
            let mut payload = serde_json::json!({"channel": channel});
            payload["data"] = serde_json::from_str(&data).expect("data");
            if let Some(k) = key {
                payload["idempotency_key"] = serde_json::Value::String(k);
            }
            let input = format!(r#"{{"type":"publish","id":{id},"payload":{payload}}}"#);
            same(&input);
        }
    }
}
