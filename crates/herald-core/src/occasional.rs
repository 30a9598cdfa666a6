//! Parts of a per-connection structure that most connections never use, kept out of line: an
//! `Option<Box<T>>` (8 bytes in every connection instead of `T`), made on first use and dropped
//! again once it is back to empty (issue 14: every connection holds a session and an outlet).

/// What can live in such a box.
pub(crate) trait Occasional: Default {
    /// Nothing in it is in use: the box can go.
    fn is_empty(&self) -> bool;
}

/// Run `f` on the part in `slot` (made if missing); drop it afterwards if `f` left it empty.
pub(crate) fn with<R: Occasional, T>(slot: &mut Option<Box<R>>, f: impl FnOnce(&mut R) -> T) -> T {
    let part = slot.get_or_insert_with(Box::default);
    let out = f(part);
    if part.is_empty() {
        *slot = None;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Part(Option<u32>);

    impl Occasional for Part {
        fn is_empty(&self) -> bool {
            self.0.is_none()
        }
    }

    #[test]
    fn made_on_first_use_and_dropped_once_empty() {
        let mut slot: Option<Box<Part>> = None;
        assert_eq!(with(&mut slot, |p| p.0), None);
        assert!(slot.is_none(), "a look alone leaves nothing behind");
        with(&mut slot, |p| p.0 = Some(7));
        assert_eq!(slot.as_ref().and_then(|p| p.0), Some(7));
        assert_eq!(with(&mut slot, |p| p.0.take()), Some(7));
        assert!(slot.is_none());
    }
}
