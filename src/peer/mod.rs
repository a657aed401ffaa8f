//! The peer: pure swarm logic (bitmaps, piece picking, neighbours) and the
//! peer process (console, tracker client, rudp endpoint, disk).

pub mod console;
pub mod process;
pub mod tracker_client;
