//! Channel names: validation and namespace extraction.

use crate::envelope::MAX_CHANNEL_LEN;

/// Characters allowed in a channel name besides ASCII letters and digits.
pub const CHANNEL_PUNCTUATION: &str = "_-.:@#,=/~";

/// Check a channel name: 1..=255 bytes of ASCII letters, digits and [`CHANNEL_PUNCTUATION`].
pub fn validate_channel(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("channel name is empty");
    }
    if name.len() > MAX_CHANNEL_LEN {
        return Err("channel name is longer than 255 bytes");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || CHANNEL_PUNCTUATION.as_bytes().contains(&b))
    {
        return Err("channel name has a character outside [A-Za-z0-9_-.:@#,=/~]");
    }
    Ok(())
}

/// The namespace of a channel: the part before the first `:`, or `""` when there is none.
pub fn namespace_of(name: &str) -> &str {
    name.split_once(':').map(|(ns, _)| ns).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_channels() {
        assert!(validate_channel("news").is_ok());
        assert!(validate_channel("chat:room-1.a").is_ok());
        assert!(validate_channel("").is_err());
        assert!(validate_channel("a b").is_err());
        assert!(validate_channel("é").is_err());
        assert!(validate_channel(&"x".repeat(255)).is_ok());
        assert!(validate_channel(&"x".repeat(256)).is_err());
    }

    #[test]
    fn extracts_namespace() {
        assert_eq!(namespace_of("chat:room"), "chat");
        assert_eq!(namespace_of("news"), "");
        assert_eq!(namespace_of("a:b:c"), "a");
    }
}
