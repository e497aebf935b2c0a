//! The node key: one ed25519 key per node, stored as its 32-byte secret seed in
//! `<node dir>/private/node.key` (mode 0600, in a 0700 folder). It is the libp2p identity, so the
//! peer id every member sees is derived from it.
//!
//! Writing follows the house rule for anything persisted: temp file, fsync, rename, fsync the
//! folder, so a crash never leaves a half-written key behind.

use std::{
    fs,
    io::{self, Write},
    path::{Path, PathBuf},
};

use libp2p::identity::Keypair;

/// File name of the node key inside the private folder.
pub const KEY_FILE: &str = "node.key";

/// Errors loading or creating the node key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// Reading or writing the key file failed.
    #[error("node key {path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// The key file exists but is not a 32-byte ed25519 seed.
    #[error(
        "node key {path} is malformed (expected 32 bytes, found {len}); restore it from a backup"
    )]
    Malformed {
        /// The key file.
        path: PathBuf,
        /// Its length.
        len: usize,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Loads the node key from `private_dir`, creating it (and the folder, mode 0700) when missing.
/// Returns the key and whether it was created now.
pub fn load_or_create(private_dir: &Path) -> Result<(Keypair, bool), KeyError> {
    let path = private_dir.join(KEY_FILE);
    match fs::read(&path) {
        Ok(bytes) => decode(&path, bytes).map(|k| (k, false)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let kp = Keypair::generate_ed25519();
            let seed = seed_of(&kp);
            write_private(private_dir, KEY_FILE, &seed).map_err(io_err(&path))?;
            Ok((kp, true))
        }
        Err(e) => Err(io_err(&path)(e)),
    }
}

/// Loads an existing node key.
pub fn load(private_dir: &Path) -> Result<Keypair, KeyError> {
    let path = private_dir.join(KEY_FILE);
    let bytes = fs::read(&path).map_err(io_err(&path))?;
    decode(&path, bytes)
}

fn decode(path: &Path, mut bytes: Vec<u8>) -> Result<Keypair, KeyError> {
    let len = bytes.len();
    if len != 32 {
        return Err(KeyError::Malformed {
            path: path.to_owned(),
            len,
        });
    }
    Keypair::ed25519_from_bytes(&mut bytes).map_err(|_| KeyError::Malformed {
        path: path.to_owned(),
        len,
    })
}

fn seed_of(kp: &Keypair) -> [u8; 32] {
    let mut seed = [0u8; 32];
    if let Ok(ed) = kp.clone().try_into_ed25519() {
        let bytes = ed.secret();
        seed.copy_from_slice(bytes.as_ref());
    }
    seed
}

/// Writes `contents` to `dir/name` with mode 0600 atomically (temp + fsync + rename + dir
/// fsync), creating `dir` with mode 0700 when missing.
pub fn write_private(dir: &Path, name: &str, contents: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let tmp = dir.join(format!(".{name}.tmp"));
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(contents)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, dir.join(name))?;
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn key_is_created_once_with_private_modes() {
        let tmp = std::env::temp_dir().join(format!("kith-key-test-{}", std::process::id()));
        let private = tmp.join("private");
        let (a, created) = load_or_create(&private).unwrap();
        assert!(created);
        let (b, created) = load_or_create(&private).unwrap();
        assert!(!created);
        assert_eq!(a.public().to_peer_id(), b.public().to_peer_id());
        let mode = fs::metadata(private.join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let mode = fs::metadata(&private).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        fs::write(private.join(KEY_FILE), b"short").unwrap();
        assert!(matches!(
            load(&private),
            Err(KeyError::Malformed { len: 5, .. })
        ));
        fs::remove_dir_all(&tmp).unwrap();
    }
}
