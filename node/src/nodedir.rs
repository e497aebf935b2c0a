//! The node directory: one self-contained folder per node (default `~/.kith`, or `$KITH_DIR`,
//! or `--dir`).
//!
//! ```text
//! kith.toml              configuration (see `config`)
//! private/node.key       ed25519 node key = libp2p identity (0600)
//! private/convergence    32-byte convergence secret for convergent encryption (0600)
//! private/api-token      bearer token of the local API and panel (0600)
//! node.redb              indexes: shares, leases, usage, static peers
//! storage/shares/…       share files; storage/incoming/… uploads in progress
//! tmp/                   spooled uploads
//! api.json               written by a running daemon: its API URL and pid
//! ```
//!
//! Everything persisted is written temp + fsync + rename, so a crash leaves either the old or
//! the new file.

use std::{
    fs, io,
    net::{TcpListener, UdpSocket},
    path::{Path, PathBuf},
};

use libp2p::{Multiaddr, PeerId, multiaddr::Protocol};
use rand::RngCore;

use crate::config::{CONFIG_FILE, Config, ConfigError, RawConfig};

/// Errors opening or creating a node dir.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DirError {
    /// `kith init` on a dir that already has a `kith.toml`.
    #[error("{0} is already a kith node dir (it has a kith.toml); use another --dir")]
    AlreadyInitialized(PathBuf),
    /// No `kith.toml`.
    #[error("{0} is not a kith node dir yet; run `kith --dir {0} init` first")]
    NotInitialized(PathBuf),
    /// File system error.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// `kith.toml` does not parse.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (with line and column).
        message: String,
    },
    /// `kith.toml` parses but is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The node key is unusable.
    #[error(transparent)]
    Key(#[from] kith_transports::identity::KeyError),
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> DirError + '_ {
    move |source| DirError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Paths inside a node dir.
#[derive(Clone, Debug)]
pub struct NodeDir {
    root: PathBuf,
}

impl NodeDir {
    /// The node dir at `root` (nothing is touched on disk).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The default: `$KITH_DIR`, else `~/.kith`.
    pub fn default_root() -> PathBuf {
        if let Some(d) = std::env::var_os("KITH_DIR") {
            return d.into();
        }
        std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."))
            .join(".kith")
    }

    /// The folder.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// `kith.toml`.
    pub fn config_path(&self) -> PathBuf {
        self.root.join(CONFIG_FILE)
    }
    /// `private/`.
    pub fn private(&self) -> PathBuf {
        self.root.join("private")
    }
    /// `node.redb`.
    pub fn db_path(&self) -> PathBuf {
        self.root.join("node.redb")
    }
    /// `storage/`.
    pub fn storage(&self) -> PathBuf {
        self.root.join("storage")
    }
    /// `tmp/`.
    pub fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }
    /// `api.json`.
    pub fn api_file(&self) -> PathBuf {
        self.root.join("api.json")
    }

    /// Whether `kith.toml` exists.
    pub fn is_initialized(&self) -> bool {
        self.config_path().exists()
    }

    /// Creates the node dir: `kith.toml` from `raw` (port 0 in listen addresses and the API
    /// address replaced by a free port picked now, so addresses stay stable across restarts),
    /// the node key, the convergence secret and the API token. Returns the validated config and
    /// the new peer id.
    pub fn init(&self, raw: RawConfig) -> Result<(Config, PeerId), DirError> {
        self.init_with_ports(raw, free_port)
    }

    /// [`NodeDir::init`] with the ports `pick` returns (tests pick colliding ones).
    fn init_with_ports(
        &self,
        mut raw: RawConfig,
        mut pick: impl FnMut() -> u16,
    ) -> Result<(Config, PeerId), DirError> {
        if self.is_initialized() {
            return Err(DirError::AlreadyInitialized(self.root.clone()));
        }
        // Validate before writing anything.
        Config::try_from(raw.clone())?;
        fs::create_dir_all(&self.root).map_err(io_at(&self.root))?;
        let port = pick();
        raw.network.listen = raw
            .network
            .listen
            .iter()
            .map(|a| fill_port(a, port))
            .collect();
        if let Some(api) = raw.api.listen.strip_suffix(":0") {
            // Not the node's own port: the API's TCP listener would take it from libp2p's.
            raw.api.listen = format!("{api}:{}", distinct_port(&mut pick, port));
        }
        let config = Config::try_from(raw.clone())?;
        let (kp, _) = kith_transports::identity::load_or_create(&self.private())?;
        self.ensure_secrets()?;
        let text = format!(
            "# kith node configuration; every field is documented in the README (Configuration).\n{}",
            toml::to_string(&raw).map_err(|e| DirError::Parse {
                path: self.config_path(),
                message: e.to_string(),
            })?
        );
        write_atomic(&self.root, CONFIG_FILE, text.as_bytes())
            .map_err(io_at(&self.config_path()))?;
        Ok((config, kp.public().to_peer_id()))
    }

    /// Reads and validates `kith.toml`.
    pub fn load_config(&self) -> Result<Config, DirError> {
        let path = self.config_path();
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(DirError::NotInitialized(self.root.clone()));
            }
            Err(e) => return Err(io_at(&path)(e)),
        };
        let raw: RawConfig = toml::from_str(&text).map_err(|e| DirError::Parse {
            path: path.clone(),
            message: e.to_string(),
        })?;
        Ok(Config::try_from(raw)?)
    }

    /// The node key.
    pub fn keypair(&self) -> Result<libp2p::identity::Keypair, DirError> {
        Ok(kith_transports::identity::load_or_create(&self.private())?.0)
    }

    fn ensure_secrets(&self) -> Result<(), DirError> {
        let private = self.private();
        for (name, len) in [("convergence", 32usize), ("api-token", 24)] {
            let path = private.join(name);
            if !path.exists() {
                let mut bytes = vec![0u8; len];
                rand::rngs::OsRng.fill_bytes(&mut bytes);
                let contents = if name == "api-token" {
                    data_encoding::BASE32_NOPAD
                        .encode(&bytes)
                        .to_ascii_lowercase()
                        .into_bytes()
                } else {
                    bytes
                };
                kith_transports::identity::write_private(&private, name, &contents)
                    .map_err(io_at(&path))?;
            }
        }
        Ok(())
    }

    /// The convergence secret (created when missing).
    pub fn convergence_secret(&self) -> Result<[u8; 32], DirError> {
        self.ensure_secrets()?;
        let path = self.private().join("convergence");
        let bytes = fs::read(&path).map_err(io_at(&path))?;
        bytes.try_into().map_err(|_| DirError::Parse {
            path,
            message: "convergence secret must be 32 bytes".into(),
        })
    }

    /// The API token (created when missing).
    pub fn api_token(&self) -> Result<String, DirError> {
        self.ensure_secrets()?;
        let path = self.private().join("api-token");
        Ok(fs::read_to_string(&path)
            .map_err(io_at(&path))?
            .trim()
            .to_owned())
    }
}

/// Writes `dir/name` atomically: temp file, fsync, rename, fsync of the folder.
pub fn write_atomic(dir: &Path, name: &str, contents: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = fs::File::create(&tmp)?;
    f.write_all(contents)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, dir.join(name))?;
    fs::File::open(dir)?.sync_all()
}

/// A port free for both TCP and UDP on all interfaces, IPv4 and IPv6, right now (0 if none
/// was found).
pub fn free_port() -> u16 {
    for _ in 0..32 {
        let Ok(l) = TcpListener::bind("0.0.0.0:0") else {
            continue;
        };
        let Ok(addr) = l.local_addr() else { continue };
        if UdpSocket::bind(("0.0.0.0", addr.port())).is_ok() && free_on_ipv6(addr.port()) {
            return addr.port();
        }
    }
    0
}

/// Whether `port` is free for TCP and UDP on `::` (IPv6 only, as libp2p listens, so the IPv4
/// sockets held meanwhile do not count). A host without IPv6 counts as free.
fn free_on_ipv6(port: u16) -> bool {
    let sa = std::net::SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port));
    !kith_transports::port_in_use(sa, false) && !kith_transports::port_in_use(sa, true)
}

/// A free port (as [`free_port`]) other than `taken`: two picks in a row may return the same
/// port, as the first is closed again before the second is made.
pub fn free_port_except(taken: u16) -> u16 {
    distinct_port(free_port, taken)
}

/// The first port from `pick` other than `taken` (0, "none found", counts as other), in a
/// bounded number of tries.
fn distinct_port(mut pick: impl FnMut() -> u16, taken: u16) -> u16 {
    let mut port = pick();
    for _ in 0..32 {
        if port != taken || port == 0 {
            break;
        }
        port = pick();
    }
    port
}

fn fill_port(addr: &str, port: u16) -> String {
    let Ok(ma) = addr.parse::<Multiaddr>() else {
        return addr.to_owned();
    };
    ma.iter()
        .map(|p| match p {
            Protocol::Tcp(0) => Protocol::Tcp(port),
            Protocol::Udp(0) => Protocol::Udp(port),
            p => p,
        })
        .collect::<Multiaddr>()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_taken_on_ipv6_only_is_not_free() {
        let Ok(l) = std::net::TcpListener::bind("[::1]:0") else {
            println!("skipped: no IPv6 loopback on this host");
            return;
        };
        let port = l.local_addr().unwrap().port();
        assert!(!free_on_ipv6(port), "TCP {port} is held on ::1");
        drop(l);
        assert!(free_on_ipv6(port));
        let u = std::net::UdpSocket::bind("[::1]:0").unwrap();
        assert!(!free_on_ipv6(u.local_addr().unwrap().port()));
    }

    #[test]
    fn a_second_port_is_picked_again_when_it_equals_the_first() {
        let mut picks = [41000, 41000, 41000, 41007].into_iter();
        assert_eq!(distinct_port(|| picks.next().unwrap_or(0), 41000), 41007);
        let mut picks = [41003].into_iter();
        assert_eq!(distinct_port(|| picks.next().unwrap_or(0), 41000), 41003);
        // A pick that never differs ends in a bounded number of tries.
        assert_eq!(distinct_port(|| 41000, 41000), 41000);
    }

    #[test]
    fn init_gives_the_api_another_port_when_the_second_pick_repeats_the_first() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = NodeDir::new(tmp.path().join("n"));
        let mut picks = [41000, 41000, 41007].into_iter();
        let (cfg, _) = dir
            .init_with_ports(RawConfig::default(), || picks.next().unwrap_or(0))
            .unwrap();
        assert_eq!(cfg.api_listen.port(), 41007);
        assert!(
            cfg.listen.iter().all(|a| a
                .iter()
                .any(|p| matches!(p, Protocol::Tcp(41000) | Protocol::Udp(41000)))),
            "{:?}",
            cfg.listen
        );
    }

    #[test]
    fn init_picks_stable_ports_and_refuses_twice() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = NodeDir::new(tmp.path().join("n"));
        let (cfg, peer) = dir.init(RawConfig::default()).unwrap();
        assert!(cfg.listen.iter().all(|a| {
            a.iter()
                .all(|p| !matches!(p, Protocol::Tcp(0) | Protocol::Udp(0)))
        }));
        assert_ne!(cfg.api_listen.port(), 0);
        let api = cfg.api_listen.port();
        assert!(
            cfg.listen
                .iter()
                .all(|a| !a.iter().any(|p| p == Protocol::Tcp(api))),
            "the API's port is not the node's"
        );
        let again = dir.load_config().unwrap();
        assert_eq!(again.listen, cfg.listen);
        assert_eq!(dir.keypair().unwrap().public().to_peer_id(), peer);
        assert!(matches!(
            dir.init(RawConfig::default()),
            Err(DirError::AlreadyInitialized(_))
        ));
        assert_eq!(dir.api_token().unwrap().len(), 39);
        let missing = NodeDir::new(tmp.path().join("nothing"));
        assert!(matches!(
            missing.load_config(),
            Err(DirError::NotInitialized(_))
        ));
    }
}
