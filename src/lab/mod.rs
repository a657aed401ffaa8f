//! Network-namespace experiments (owned by the lab work).
