//! Engine tests on a simulated platform (no OS): see `sim`.
