//! kith's own AutoNAT v2 client: the same protocol and bytes as libp2p-autonat 0.16's (whose
//! server kith runs unchanged), with a [`schedule`] that tests again what a server could not
//! reach, backs off on errors, bounds its candidates and takes back a confirmed address that
//! stopped working. libp2p's client tests an address once and keeps the verdict for the
//! whole run (rust-libp2p issue 6203: not even an expired address is tested again), so one
//! flaky dial-back, or one member that cannot dial the address's family, left a reachable
//! address unconfirmed until restart.
//!
//! - [`schedule`]: the decisions, sans-IO and property-tested.
//! - [`client::Behaviour`]: the libp2p behaviour around it.
//! - `handler`, `protocol`, `structs`: the connection handlers and wire messages, after
//!   libp2p-autonat 0.16 (MIT, <https://github.com/libp2p/rust-libp2p>).

use libp2p::StreamProtocol;

pub mod client;
mod handler;
mod protocol;
pub mod schedule;
mod structs;

pub use client::{Behaviour, Event};
pub use schedule::Outcome;

/// The dial-request protocol (client to server).
pub(crate) const DIAL_REQUEST_PROTOCOL: StreamProtocol =
    StreamProtocol::new("/libp2p/autonat/2/dial-request");
/// The dial-back protocol (server to client, on a new connection).
pub(crate) const DIAL_BACK_PROTOCOL: StreamProtocol =
    StreamProtocol::new("/libp2p/autonat/2/dial-back");
