//! chunkswarm: peer-to-peer file distribution over rudp, a selective-repeat
//! reliable transport on UDP.
//!
//! Layers, each ignorant of the ones above it (see ARCHITECTURE in the README):
//! - [`wire`]: byte formats of the tracker protocol and the swarm messages.
//! - [`rudp`]: the sans-IO transport, its simulator, and its mio driver.
//! - [`manifest`]: a shared file's chunk layout and SHA-256 digests.
//! - [`tracker`]: the tracker's registry (pure) and its TCP server.
//! - [`peer`]: swarm logic (pure) and the peer process (console, tracker client, disk).
//! - [`lab`]: network-namespace experiments.

pub mod cli;
pub mod demo;
pub mod lab;
pub mod manifest;
pub mod peer;
pub mod rng;
pub mod rudp;
pub mod tracker;
pub mod wire;
