//! Fuzz entry points: one pub fn per target, replayed by cargo test.
