//! The peer: pure swarm logic (bitmaps, piece picking, neighbours) and the
//! peer process (console, tracker client, rudp endpoint, disk).

// Pure swarm logic (the swarm work).
pub mod bitmap;
pub mod node;
pub mod overlay;
pub mod picker;
pub mod storage;
pub mod swarm;

// The peer process (the tracker work).
pub mod console;
pub mod process;
pub mod progress;
pub mod tracker_client;
