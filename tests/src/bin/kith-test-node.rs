//! A kith daemon for the multi-process tests: `kith-test-node <node dir>` runs exactly what
//! `kith --dir <node dir> run` runs, so tests can SIGKILL a real node.

use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(dir) = std::env::args_os().nth(1) else {
        eprintln!("usage: kith-test-node <node dir>");
        return ExitCode::from(2);
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kith-test-node: {e}");
            return ExitCode::FAILURE;
        }
    };
    let dir = kith_node::nodedir::NodeDir::new(dir);
    match rt.block_on(kith_node::daemon::run(dir, Default::default())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kith-test-node: {e}");
            ExitCode::FAILURE
        }
    }
}
