//! kith-nat: reachability and path policy for home nodes.
//!
//! This crate will hold the connectivity issue's work: AutoNAT v2 confirmation of observed
//! addresses, UPnP IGD mappings through igd-next, relay client and server limits sized for
//! storage traffic, DCUtR hole punching and parallel dialing. The decisions (what to try next,
//! and why) will be a pure state machine that takes `now` and what the node has learned; the
//! libp2p behaviours are the IO around it.
//!
//! Today the crate is an empty skeleton: nodes are reachable only on the addresses they are
//! configured to listen on and announce (the "sysadmin mode" of the design).
