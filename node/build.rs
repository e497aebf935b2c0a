//! Links the binaries with packed relative relocations (`-z pack-relative-relocs`, DT_RELR)
//! when the C toolchain can: a position-independent Rust binary of this size carries about
//! 80 000 relative relocations (1.9 MB of `.rela.dyn`), which the dynamic loader reads at every
//! start and which then stay in the process's memory; packed, they take a few kilobytes. The
//! binary stays position-independent (ASLR is unchanged). Needs binutils >= 2.38 and glibc >=
//! 2.36 (Debian 12); elsewhere the probe fails and the binaries link as before.
//!
//! The code is in `build_relr.rs`, which `simulations/build.rs` includes too, so the bench's
//! nodes are linked the same way.

include!("build_relr.rs");
