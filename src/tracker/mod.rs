//! The tracker: a pure [`Registry`] of online peers, shared files and
//! downloading groups, and the mio TCP [`server`] that drives it.

pub mod registry;
pub mod server;

pub use registry::{Push, Refusal, Registry};
pub use server::{Server, ServerConfig};
