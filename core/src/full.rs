//! The error of a full fixed-capacity structure.

use core::fmt;

/// The structure was full; the item is handed back, untouched.
///
/// Nothing in reseau-core drops an item it could not store: the caller gets it back inside
/// this error and decides (retry later, run it canceled, report it).
#[derive(PartialEq, Eq)]
pub struct Full<T>(pub T);

impl<T> Full<T> {
    /// Returns the item that could not be stored.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> fmt::Debug for Full<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Full(..)")
    }
}

impl<T> fmt::Display for Full<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("capacity exhausted: the item was handed back")
    }
}

impl<T> core::error::Error for Full<T> {}
