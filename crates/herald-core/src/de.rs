//! Serde helpers for configuration values and their error (shared by every config section and the
//! engines, so none of them depends on another for these).

use serde::Deserialize;

/// A configuration that cannot work: one line naming the key and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// A list-valued key: a sequence (`["a", "b"]` in a file, `[a, b]` in a variable), or one plain
/// value holding a comma-separated list (`HERALD_SERVER__ALLOWED_ORIGINS=https://a.example,https://b.example`).
/// Use with `#[serde(deserialize_with = "herald_core::config::list")]`.
pub fn list<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + std::str::FromStr,
    T::Err: std::fmt::Display,
{
    struct V<T>(std::marker::PhantomData<T>);
    impl<'de, T> serde::de::Visitor<'de> for V<T>
    where
        T: Deserialize<'de> + std::str::FromStr,
        T::Err: std::fmt::Display,
    {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a list, or a comma-separated string")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut out = Vec::new();
            while let Some(v) = seq.next_element()? {
                out.push(v);
            }
            Ok(out)
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Vec<T>, E> {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| s.parse().map_err(|e| E::custom(format!("`{s}`: {e}"))))
                .collect()
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Vec<T>, E> {
            self.visit_str(&v.to_string())
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Vec<T>, E> {
            self.visit_str(&v.to_string())
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Vec<T>, E> {
            self.visit_str(&v.to_string())
        }
        fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Vec<T>, E> {
            self.visit_str(&v.to_string())
        }
    }
    d.deserialize_any(V(std::marker::PhantomData))
}
