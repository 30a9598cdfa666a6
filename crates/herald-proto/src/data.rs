//! Application data carried by publications, kept in the format it arrived in.
//!
//! The server never interprets `data`. JSON data is kept as its raw text and spliced into outgoing
//! JSON frames unchanged; MessagePack data is kept as a value. Delivering to a subscriber of the
//! other format transcodes once per publication (never per subscriber). MessagePack `bin` values
//! become arrays of byte values in JSON; JSON data becomes the equivalent MessagePack value.

use serde::{Serialize, Serializer};
use serde_json::value::RawValue;

/// Opaque publication data.
#[derive(Debug, Clone)]
pub enum Data {
    /// Raw JSON text (validated when decoded).
    Json(Box<RawValue>),
    /// A MessagePack value.
    Msgpack(rmpv::Value),
}

impl Data {
    /// Build JSON data from text, validating it.
    pub fn json(text: &str) -> Result<Data, serde_json::Error> {
        RawValue::from_string(text.to_owned()).map(Data::Json)
    }

    /// Approximate encoded size in bytes, used for size limits and queue accounting.
    pub fn encoded_len(&self) -> usize {
        match self {
            Data::Json(raw) => raw.get().len(),
            Data::Msgpack(v) => {
                let mut buf = Vec::new();
                match rmpv::encode::write_value(&mut buf, v) {
                    Ok(()) => buf.len(),
                    Err(_) => 0,
                }
            }
        }
    }

    /// A serializable view for a JSON frame.
    pub fn for_json(&self) -> DataOut<'_> {
        match self {
            Data::Json(raw) => DataOut::Raw(raw),
            Data::Msgpack(v) => DataOut::Value(v),
        }
    }

    /// A serializable view for a MessagePack frame (JSON data is transcoded here).
    pub fn for_msgpack(&self) -> DataOut<'_> {
        match self {
            Data::Msgpack(v) => DataOut::Value(v),
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
            Data::Msgpack(v) => serde_json::to_value(v).unwrap_or(serde_json::Value::Null),
        }
    }
}

/// A borrowed, serializable form of [`Data`] for one output format.
#[derive(Debug)]
pub enum DataOut<'a> {
    /// Raw JSON text spliced in as is.
    Raw(&'a RawValue),
    /// A MessagePack value.
    Value(&'a rmpv::Value),
    /// A transcoded value.
    Owned(rmpv::Value),
}

impl Serialize for DataOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            DataOut::Raw(r) => r.serialize(s),
            DataOut::Value(v) => v.serialize(s),
            DataOut::Owned(v) => v.serialize(s),
        }
    }
}
