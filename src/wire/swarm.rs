//! Swarm messages exchanged between peers over rudp (owned by the swarm work).
