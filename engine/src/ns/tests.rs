//! Tests (need root).
