//! Congestion controllers behind one trait (owned by the congestion-control work).
