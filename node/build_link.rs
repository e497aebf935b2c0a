// Shared by `node/build.rs` and `simulations/build.rs` (included, not a module; each defines
// `NODE_DIR`, the node crate's directory relative to its own).

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

const FLAG: &str = "-Wl,-z,pack-relative-relocs";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    // Where the hot-function list lives, for code that reports on it (the bench's row).
    if let Some(order) = hot_order_path() {
        println!("cargo:rustc-env=KITH_HOT_ORDER={}", order.display());
    }
    println!("cargo:rerun-if-env-changed=CC");
    let target = std::env::var("TARGET").unwrap_or_default();
    let host = std::env::var("HOST").unwrap_or_default();
    if target != host || !target.contains("-linux-gnu") {
        return;
    }
    if links_with_relr() {
        println!("cargo:rustc-link-arg-bins={FLAG}");
    }
    if let Some(order) = hot_order(&target) {
        println!("cargo:rerun-if-changed={}", order.display());
        println!(
            "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
            order.display()
        );
        // The list names the symbols of one build; others (a changed function, another
        // rustc) are not in the binary, which only costs their place.
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
}

/// The hot-function list, when this build links with rust-lld (rustc's default linker for
/// x86_64 Linux since 1.90, the workspace's minimum) in the release profile, the one the list
/// is made from. A configured linker (Cargo's `linker` setting, `-C linker*`, `-fuse-ld`) may
/// not know the flag: then none.
fn hot_order(target: &str) -> Option<PathBuf> {
    let order = hot_order_path()?;
    let rustflags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    let own_linker = std::env::var_os("RUSTC_LINKER").is_some()
        || rustflags.contains("linker")
        || rustflags.contains("fuse-ld");
    let release = std::env::var("PROFILE").is_ok_and(|p| p == "release");
    (target == "x86_64-unknown-linux-gnu" && release && !own_linker && order.is_file())
        .then_some(order)
}

/// `node/link/hot.order`, from this crate's directory.
fn hot_order_path() -> Option<PathBuf> {
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR")?;
    Some(Path::new(&manifest).join(NODE_DIR).join("link/hot.order"))
}

/// Whether the C compiler the Rust linker uses accepts the flag (links an empty program).
fn links_with_relr() -> bool {
    let Some(out) = std::env::var_os("OUT_DIR").map(|d| PathBuf::from(d).join("relr-probe")) else {
        return false;
    };
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let child = Command::new(cc)
        .args(["-x", "c", "-", "-o"])
        .arg(&out)
        .arg(FLAG)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut child) = child else {
        return false;
    };
    let wrote = child
        .stdin
        .take()
        .is_some_and(|mut i| i.write_all(b"int main(void) { return 0; }\n").is_ok());
    let ok = child.wait().is_ok_and(|s| s.success()) && wrote;
    let _ = std::fs::remove_file(&out);
    ok
}
