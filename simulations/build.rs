//! Links the bench (whose nodes are this binary) as `node/build.rs` links `kith`: with packed
//! relative relocations when the toolchain supports them, and in release builds with the node's
//! hot functions placed together.

const NODE_DIR: &str = "../node";

include!("../node/build_link.rs");
