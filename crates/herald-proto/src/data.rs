//! Application data carried by publications, kept in the format it arrived in.
//!
//! The server never interprets `data`. JSON data is kept as its raw text and spliced into outgoing
//! JSON frames unchanged; MessagePack data is kept as its encoded bytes (never as a decoded value
//! tree: 61 000 `nil`s are 61 KB encoded but ~2.4 MB as `rmpv::Value`, and history keeps data for
//! its TTL). A frame is built once per publication and format, decoding the value only then and
//! only for that moment (never per subscriber). MessagePack `bin` values become arrays of byte
//! values in JSON; JSON data becomes the equivalent MessagePack value.

use serde::{Serialize, Serializer};
use serde_json::value::RawValue;

/// Opaque publication data.
#[derive(Debug, Clone)]
pub enum Data {
    /// Raw JSON text (validated when decoded).
    Json(Box<RawValue>),
    /// One MessagePack value, as its encoded bytes.
    Msgpack(Msgpack),
}

/// One encoded MessagePack value (complete and well-formed by construction).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msgpack(Box<[u8]>);

impl Msgpack {
    /// Encode a value.
    pub fn from_value(v: &rmpv::Value) -> Msgpack {
        let mut buf = Vec::new();
        // Writing to a Vec cannot fail.
        let _ = rmpv::encode::write_value(&mut buf, v);
        Msgpack(buf.into_boxed_slice())
    }

    /// Check that `bytes` hold exactly one well-formed value.
    pub fn from_bytes(bytes: &[u8]) -> Result<Msgpack, rmpv::decode::Error> {
        let mut r = bytes;
        rmpv::decode::read_value(&mut r)?;
        if !r.is_empty() {
            return Err(rmpv::decode::Error::InvalidDataRead(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "trailing bytes after the value",
            )));
        }
        Ok(Msgpack(bytes.into()))
    }

    /// The encoded bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The value (decoded now; for building a frame or a test, never kept).
    pub fn value(&self) -> rmpv::Value {
        let mut r = &self.0[..];
        rmpv::decode::read_value(&mut r).unwrap_or(rmpv::Value::Nil)
    }
}

impl Data {
    /// Build JSON data from text, validating it.
    pub fn json(text: &str) -> Result<Data, serde_json::Error> {
        RawValue::from_string(text.to_owned()).map(Data::Json)
    }

    /// MessagePack data holding `v`.
    pub fn msgpack(v: &rmpv::Value) -> Data {
        Data::Msgpack(Msgpack::from_value(v))
    }

    /// Encoded size in bytes (what is kept in memory), used for size limits and queue accounting.
    pub fn encoded_len(&self) -> usize {
        match self {
            Data::Json(raw) => raw.get().len(),
            Data::Msgpack(m) => m.as_bytes().len(),
        }
    }

    /// A serializable view for a JSON frame (MessagePack data is transcoded here; map keys JSON
    /// cannot carry become strings, see [`json_keys`]).
    pub fn for_json(&self) -> DataOut<'_> {
        match self {
            Data::Json(raw) => DataOut::Raw(raw),
            Data::Msgpack(m) => DataOut::Owned(json_keys(m.value())),
        }
    }

    /// A serializable view for a MessagePack frame (JSON data is transcoded here).
    pub fn for_msgpack(&self) -> DataOut<'_> {
        match self {
            Data::Msgpack(m) => DataOut::Owned(m.value()),
            Data::Json(raw) => match serde_json::from_str::<rmpv::Value>(raw.get()) {
                Ok(v) => DataOut::Owned(v),
                // Numbers outside MessagePack's range: carry the JSON text as a string.
                Err(_) => DataOut::Owned(rmpv::Value::from(raw.get())),
            },
        }
    }

    /// The data as a `serde_json::Value` (for tests and HTTP tooling).
    pub fn to_json_value(&self) -> serde_json::Value {
        match self {
            Data::Json(raw) => serde_json::from_str(raw.get()).unwrap_or(serde_json::Value::Null),
            Data::Msgpack(m) => {
                serde_json::to_value(json_keys(m.value())).unwrap_or(serde_json::Value::Null)
            }
        }
    }
}

/// `v` with every map key JSON can carry: string and integer keys stay, any other key (binary,
/// float, boolean, nil, array, map) becomes its MessagePack display text (`bin` `k` → `"[107]"`,
/// nil → `"nil"`).
/// Without this a MessagePack publisher could publish data that JSON subscribers never receive.
pub fn json_keys(v: rmpv::Value) -> rmpv::Value {
    use rmpv::Value;
    match v {
        Value::Map(entries) => Value::Map(
            entries
                .into_iter()
                .map(|(k, v)| {
                    let k = match k {
                        k @ (Value::String(_) | Value::Integer(_)) => k,
                        // Display, not JSON: linear in the key's size (a JSON string of a
                        // key holding keys escapes again at every level: 2^depth).
                        other => Value::from(other.to_string()),
                    };
                    (k, json_keys(v))
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(json_keys).collect()),
        other => other,
    }
}

/// A borrowed, serializable form of [`Data`] for one output format.
#[derive(Debug)]
pub enum DataOut<'a> {
    /// Raw JSON text spliced in as is.
    Raw(&'a RawValue),
    /// A decoded or transcoded value.
    Owned(rmpv::Value),
}

impl Serialize for DataOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            DataOut::Raw(r) => r.serialize(s),
            DataOut::Owned(v) => v.serialize(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (found by `fuzz/fuzz_targets/decode.rs`): MessagePack data with a binary map key
    /// could not be written as JSON, so JSON subscribers got an empty frame (nothing).
    #[test]
    fn msgpack_maps_with_keys_json_cannot_carry_still_reach_json_subscribers() {
        use rmpv::Value;
        let v = Value::Map(vec![
            (Value::Binary(b"k".to_vec()), Value::from(1)),
            (
                Value::from(7),
                Value::Map(vec![(Value::Nil, Value::from("x"))]),
            ),
            (Value::from("s"), Value::Boolean(true)),
        ]);
        let d = Data::msgpack(&v);
        let json = serde_json::to_string(&d.for_json()).expect("JSON");
        assert_eq!(json, r#"{"[107]":1,"7":{"nil":"x"},"s":true}"#);
        assert_eq!(d.to_json_value()["s"], true);
        // Keys holding keys holding keys: linear, not 2^depth (found by the fuzzer).
        let mut deep = Value::from(1);
        for _ in 0..40 {
            deep = Value::Map(vec![(
                Value::Map(vec![(Value::Nil, deep.clone())]),
                Value::Nil,
            )]);
        }
        let json = serde_json::to_string(&Data::msgpack(&deep).for_json()).expect("JSON");
        assert!(json.len() < 100_000, "{}", json.len());
    }

    /// Regression (issue 12): MessagePack data was kept as a value tree, 40× its encoded size.
    #[test]
    fn msgpack_data_is_kept_as_its_encoded_bytes() {
        let nils = rmpv::Value::Array(vec![rmpv::Value::Nil; 61_000]);
        let d = Data::msgpack(&nils);
        let Data::Msgpack(m) = &d else {
            panic!("msgpack")
        };
        assert!(m.as_bytes().len() < 61_010, "{}", m.as_bytes().len());
        assert_eq!(d.encoded_len(), m.as_bytes().len());
        assert_eq!(m.value(), nils);
        assert!(Msgpack::from_bytes(b"\x93\x01\x02").is_err(), "truncated");
        assert!(Msgpack::from_bytes(b"\x01\x02").is_err(), "trailing bytes");
        assert_eq!(
            Msgpack::from_bytes(b"\x92\x01\x02").expect("ok").as_bytes(),
            b"\x92\x01\x02"
        );
    }
}
