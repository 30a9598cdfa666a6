//! Channel patterns in token claims and user-limited channel names.
//!
//! A pattern is a channel name in which `*` matches any run of characters (including none and
//! including `:`): `chat:*`, `*:public`, `game:*:moves`, `*` (everything). There is no escaping;
//! `*` is not a legal channel character, so it is never ambiguous.

/// Whether `channel` matches the glob `pattern`.
pub fn matches(pattern: &str, channel: &str) -> bool {
    let (p, c) = (pattern.as_bytes(), channel.as_bytes());
    // Iterative glob with single-star backtracking: O(len(p) * len(c)) worst case.
    let (mut pi, mut ci) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ci < c.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ci));
            pi += 1;
        } else if pi < p.len() && p[pi] == c[ci] {
            pi += 1;
            ci += 1;
        } else if let Some((sp, sc)) = star {
            pi = sp + 1;
            ci = sc + 1;
            star = Some((sp, sc + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

/// Whether any of `patterns` matches `channel`.
pub fn any_matches(patterns: &[String], channel: &str) -> bool {
    patterns.iter().any(|p| matches(p, channel))
}

/// The users a user-limited channel admits: the comma-separated list after the last `#`
/// (`dm:#alice,bob`, `user:#alice`). `None` when the channel is not user-limited.
pub fn allowed_users(channel: &str) -> Option<impl Iterator<Item = &str>> {
    let (_, users) = channel.rsplit_once('#')?;
    Some(users.split(',').filter(|u| !u.is_empty()))
}

/// Whether `user` may use the user-limited `channel` (`None` = the channel is not user-limited).
pub fn user_allowed(channel: &str, user: &str) -> Option<bool> {
    let mut users = allowed_users(channel)?;
    Some(!user.is_empty() && users.any(|u| u == user))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(matches("*", "anything:at-all"));
        assert!(matches("chat:*", "chat:room"));
        assert!(matches("chat:*", "chat:"));
        assert!(!matches("chat:*", "chatroom"));
        assert!(matches("news", "news"));
        assert!(!matches("news", "news2"));
        assert!(matches("game:*:moves", "game:42:moves"));
        assert!(!matches("game:*:moves", "game:42:chat"));
        assert!(matches("*:public", "a:b:public"));
        assert!(matches("a*b*c", "aXXbYYc"));
        assert!(!matches("a*b*c", "aXXbYY"));
        assert!(!matches("", "x"));
        assert!(matches("", ""));
    }

    #[test]
    fn user_limited() {
        assert_eq!(user_allowed("dm:#alice,bob", "alice"), Some(true));
        assert_eq!(user_allowed("dm:#alice,bob", "bob"), Some(true));
        assert_eq!(user_allowed("dm:#alice,bob", "carol"), Some(false));
        assert_eq!(user_allowed("dm:#alice,bob", ""), Some(false));
        assert_eq!(user_allowed("user:#alice", "alice"), Some(true));
        assert_eq!(user_allowed("dm:#", "alice"), Some(false));
        assert_eq!(user_allowed("chat:room", "alice"), None);
        // The list is after the last `#`: a user id cannot smuggle itself in with another `#`.
        assert_eq!(user_allowed("dm:#mallory#alice", "mallory"), Some(false));
    }
}
