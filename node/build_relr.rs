// Shared by `node/build.rs` and `simulations/build.rs` (included, not a module).

use std::{
    io::Write,
    path::PathBuf,
    process::{Command, Stdio},
};

const FLAG: &str = "-Wl,-z,pack-relative-relocs";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CC");
    let target = std::env::var("TARGET").unwrap_or_default();
    let host = std::env::var("HOST").unwrap_or_default();
    if target != host || !target.contains("-linux-gnu") {
        return;
    }
    if links_with_relr() {
        println!("cargo:rustc-link-arg-bins={FLAG}");
    }
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
