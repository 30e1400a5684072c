//! usernet engine (being written).
pub mod ns;
