//! Namespaces, the TAP device and interface configuration (being written).
