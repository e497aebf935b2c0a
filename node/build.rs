//! Link-time layout of the binaries (`kith` here, the bench in `simulations/build.rs`):
//!
//! - Packed relative relocations (`-z pack-relative-relocs`, DT_RELR) when the C toolchain can:
//!   a position-independent Rust binary of this size carries about 80 000 relative relocations
//!   (1.9 MB of `.rela.dyn`), which the dynamic loader reads at every start and which then stay
//!   in the process's memory; packed, they take a few kilobytes. The binary stays
//!   position-independent (ASLR is unchanged). Needs binutils >= 2.38 and glibc >= 2.36 (Debian
//!   12); elsewhere the probe fails and the binaries link as before.
//! - In release builds linked by rust-lld (rustc's default on x86_64 Linux since 1.90), the
//!   functions a node runs while it starts, forms a grid and idles are placed next to each other
//!   (`--symbol-ordering-file=link/hot.order`), so the pages of code an idle node touches, and the
//!   neighbours the kernel's fault-around maps with them, hold little cold code.
//!   `link/hot-order.sh` regenerates the list; a stale list costs memory, never correctness.
//!
//! The code is in `build_link.rs`, which `simulations/build.rs` includes too.

const NODE_DIR: &str = ".";

include!("build_link.rs");
