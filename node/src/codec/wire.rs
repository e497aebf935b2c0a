//! A bounds-checked reader for the codec's fixed binary formats: every read checks the remaining
//! length first and fails with a typed error, so hostile bytes cannot panic or over-allocate.

/// Decoding errors of the binary formats (UEB, share metadata).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// The input ended early.
    #[error("truncated {what}: needed {needed} more bytes")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Bytes missing.
        needed: usize,
    },
    /// Wrong magic or unsupported version.
    #[error("not a {what} (wrong magic or version {version})")]
    BadHeader {
        /// The format.
        what: &'static str,
        /// The version found.
        version: u8,
    },
    /// A field's value is impossible.
    #[error("invalid {what}: {why}")]
    Invalid {
        /// The field.
        what: &'static str,
        /// Why.
        why: String,
    },
    /// Bytes left over after the structure.
    #[error("{0} trailing bytes")]
    Trailing(usize),
    /// The input is longer than allowed.
    #[error("input of {len} bytes exceeds the limit of {max}")]
    TooLong {
        /// The length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8], what: &'static str) -> Self {
        Self { buf, what }
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        if self.buf.len() < n {
            return Err(FormatError::Truncated {
                what: self.what,
                needed: n - self.buf.len(),
            });
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, FormatError> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, FormatError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, FormatError> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(a))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, FormatError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }

    pub(crate) fn hash(&mut self) -> Result<[u8; 32], FormatError> {
        let mut a = [0u8; 32];
        a.copy_from_slice(self.take(32)?);
        Ok(a)
    }

    /// `count` hashes, refusing counts the remaining input cannot hold (no over-allocation).
    pub(crate) fn hashes(&mut self, count: usize) -> Result<Vec<[u8; 32]>, FormatError> {
        if count.saturating_mul(32) > self.buf.len() {
            return Err(FormatError::Truncated {
                what: self.what,
                needed: count.saturating_mul(32) - self.buf.len(),
            });
        }
        (0..count).map(|_| self.hash()).collect()
    }

    pub(crate) fn finish(self) -> Result<(), FormatError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(FormatError::Trailing(self.buf.len()))
        }
    }
}
