//! Placeholder: the loom models arrive with the loom issue; nothing here yet.
