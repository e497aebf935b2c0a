//! Links the bench (whose nodes are this binary) as `node/build.rs` links `kith`: with packed
//! relative relocations when the toolchain supports them.

include!("../node/build_relr.rs");
