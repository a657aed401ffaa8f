//! The peer: pure swarm logic (bitmaps, piece picking, neighbours) and the
//! peer process (console, tracker client, rudp endpoint, disk).
