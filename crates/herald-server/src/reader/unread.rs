//! The reader's unparsed bytes: a box while there are some, none while the connection waits.

use super::KEEP;

/// Bytes read and not parsed yet: a box while there are some, nothing (8 bytes in every
/// connection's task, not 32) while the connection waits for more.
#[derive(Default)]
pub(super) struct Unread(pub(super) Option<Box<Buffer>>);

#[derive(Default)]
pub(super) struct Buffer {
    bytes: Vec<u8>,
    /// Where the unread bytes begin (a `u32`: it holds at most a message and a frame header).
    start: u32,
}

impl Unread {
    /// Everything buffered, parsed or not (empty without a buffer).
    pub(super) fn all(&self) -> &[u8] {
        self.0.as_ref().map_or(&[], |b| &b.bytes)
    }

    pub(super) fn all_mut(&mut self) -> &mut [u8] {
        self.0.as_mut().map_or(&mut [], |b| &mut b.bytes)
    }

    /// Where the unread bytes begin.
    pub(super) fn start(&self) -> usize {
        self.0.as_ref().map_or(0, |b| b.start as usize)
    }

    /// The unread bytes.
    pub(super) fn unread(&self) -> &[u8] {
        &self.all()[self.start()..]
    }

    /// Bytes from `start` on are unread (within what is buffered).
    pub(super) fn set_start(&mut self, start: usize) {
        if let Some(b) = &mut self.0 {
            b.start = start as u32;
        }
    }

    pub(super) fn capacity(&self) -> usize {
        self.0.as_ref().map_or(0, |b| b.bytes.capacity())
    }

    /// The buffer to read into (made when there is none).
    pub(super) fn vec(&mut self) -> &mut Vec<u8> {
        &mut self.0.get_or_insert_with(Box::default).bytes
    }

    pub(super) fn extend(&mut self, bytes: &[u8]) {
        if !bytes.is_empty() {
            self.vec().extend_from_slice(bytes);
        }
    }

    /// Drop the parsed bytes from the front.
    pub(super) fn compact(&mut self) {
        if let Some(b) = &mut self.0
            && b.start > 0
        {
            b.bytes.drain(..b.start as usize);
            b.start = 0;
        }
    }

    /// Free the buffer if it holds nothing unread.
    pub(super) fn release_if_empty(&mut self) {
        if self.unread().is_empty() {
            self.0 = None;
        }
    }

    /// Forget consumed bytes; free a grown buffer once it is empty.
    pub(super) fn consumed(&mut self) {
        if let Some(b) = &mut self.0
            && b.start as usize == b.bytes.len()
        {
            if b.bytes.capacity() > KEEP {
                self.0 = None;
            } else {
                b.start = 0;
                b.bytes.clear();
            }
        }
    }
}
