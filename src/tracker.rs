//! The tracker: a pure registry and its TCP server (owned by the tracker work).
