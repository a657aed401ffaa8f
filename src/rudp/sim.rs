//! A simulated network in virtual time for testing endpoints (owned by the simulator work).
