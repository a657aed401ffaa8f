//! Tracker protocol frames (owned by the tracker work).
