//! Directories and paths on the grid: what `kith mkdir/ls/put/get/ln/mv/rm/cp` and the panel's
//! file browser do.
//!
//! A path is `alias:a/b/c` (the alias names a directory cap in the node dir, [`crate::aliases`])
//! or `<cap>/a/b/c`. [`resolve`] walks it one directory table at a time. Every change to a
//! directory is a read-modify-write of its slot ([`crate::slot::modify`]), retried when another
//! writer got there first, so concurrent edits of different entries all land; a rename inside
//! one directory is one write.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::{
    caps::{Cap, ReadCap, SskCap},
    client::DownloadError,
    dirnode::{self, DirError, Entry, Meta, Table},
    node::NodeHandle,
    slot::{self, SlotError},
};

/// Why a path operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FsError {
    /// The path does not parse.
    #[error("{0}")]
    BadPath(String),
    /// The alias is unknown.
    #[error("no alias {0:?} (see `kith alias list`; add one with `kith alias add`)")]
    NoAlias(String),
    /// A path component is not a directory.
    #[error("{0} is not a directory")]
    NotADirectory(String),
    /// Nothing at that path.
    #[error("{0}: no such file or directory")]
    NotFound(String),
    /// The directory or file cannot be changed with this cap.
    #[error("{0} is read-only (it was reached through a read cap or is an immutable snapshot)")]
    ReadOnly(String),
    /// The directory table refused.
    #[error(transparent)]
    Dir(#[from] DirError),
    /// The mutable file layer failed.
    #[error(transparent)]
    Slot(#[from] SlotError),
    /// Downloading an immutable directory failed.
    #[error("{0}")]
    Download(String),
    /// The node dir's database.
    #[error("{0}")]
    Local(String),
}

/// A parsed path: the root cap, the name it was given, and the components below it.
#[derive(Clone, Debug)]
pub struct Target {
    /// The root (an alias's cap or a cap given inline).
    pub root: Cap,
    /// How the user named the root (for messages: `home:` or the cap's kind).
    pub root_name: String,
    /// Components below the root.
    pub path: Vec<String>,
}

impl Target {
    /// `home:a/b` for messages (never prints a cap).
    pub fn display(&self) -> String {
        format!("{}{}", self.root_name, self.path.join("/"))
    }

    /// The parent and the last component, or `None` at the root.
    pub fn split_last(&self) -> Option<(Target, String)> {
        let (last, parent) = self.path.split_last()?;
        Some((
            Target {
                root: self.root.clone(),
                root_name: self.root_name.clone(),
                path: parent.to_vec(),
            },
            last.clone(),
        ))
    }

    /// This path with `name` appended.
    pub fn join(&self, name: &str) -> Target {
        let mut t = self.clone();
        t.path.push(name.to_owned());
        t
    }
}

/// Parses `alias:a/b`, `alias:`, or `kith:…cap…/a/b`.
pub fn parse_target(db: &redb::Database, spec: &str) -> Result<Target, FsError> {
    let spec = spec.trim();
    let (root, root_name, rest) = if spec.starts_with("kith:") {
        let (cap, rest) = spec.split_once('/').unwrap_or((spec, ""));
        let root: Cap = cap
            .parse()
            .map_err(|e: crate::caps::CapParseError| FsError::BadPath(e.to_string()))?;
        let kind = if root.is_dir() { "<dircap>/" } else { "<cap>/" };
        (root, kind.to_owned(), rest)
    } else {
        let (alias, rest) = spec.split_once(':').ok_or_else(|| {
            FsError::BadPath(format!(
                "{spec:?} is not a grid path: use alias:path (e.g. home:docs/a.txt) or a cap"
            ))
        })?;
        let root = crate::aliases::get(db, alias)
            .map_err(FsError::Local)?
            .ok_or_else(|| FsError::NoAlias(alias.to_owned()))?;
        (root, format!("{alias}:"), rest)
    };
    let mut path = Vec::new();
    for c in rest.split('/').filter(|c| !c.is_empty()) {
        dirnode::check_name(c)?;
        path.push(c.to_owned());
    }
    Ok(Target {
        root,
        root_name,
        path,
    })
}

/// Largest immutable directory read into memory.
const MAX_SNAPSHOT: u64 = crate::mutable::MAX_MUTABLE_SIZE as u64;

/// Reads a directory's table (children's write caps only through a writable view).
pub async fn read_dir(node: &NodeHandle, cap: &Cap, name: &str) -> Result<Table, FsError> {
    match cap {
        Cap::Ssk(s) if s.dir => {
            let (content, _) = slot::read(node, s).await?;
            Ok(dirnode::decode(&content, s.writekey())?)
        }
        Cap::ImmDir(r) => {
            if r.size() > MAX_SNAPSHOT {
                return Err(FsError::Dir(DirError::TooLarge(format!(
                    "{} bytes",
                    r.size()
                ))));
            }
            let mut buf = Vec::new();
            node.get(r, &mut buf)
                .await
                .map_err(|e: DownloadError| FsError::Download(e.to_string()))?;
            Ok(dirnode::decode(&buf, None)?)
        }
        Cap::Ssk(_) | Cap::Verify(_) | Cap::ImmDirVerify(_) if cap.is_dir() => Err(
            FsError::ReadOnly(format!("{name} (a verify cap cannot list a directory)")),
        ),
        _ => Err(FsError::NotADirectory(name.to_owned())),
    }
}

/// The cap at a path.
pub async fn resolve(node: &NodeHandle, t: &Target) -> Result<Cap, FsError> {
    let mut cap = t.root.clone();
    let mut here = t.root_name.clone();
    for c in &t.path {
        let table = read_dir(node, &cap, &here).await?;
        here = format!(
            "{here}{}{c}",
            if here.ends_with(['/', ':']) { "" } else { "/" }
        );
        cap = table
            .get(c)
            .map(|e| e.cap.clone())
            .ok_or_else(|| FsError::NotFound(here.clone()))?;
    }
    Ok(cap)
}

fn writable_dir(cap: &Cap, name: &str) -> Result<SskCap, FsError> {
    match cap {
        Cap::Ssk(s) if s.dir && s.writekey().is_some() => Ok(s.clone()),
        c if c.is_dir() => Err(FsError::ReadOnly(name.to_owned())),
        _ => Err(FsError::NotADirectory(name.to_owned())),
    }
}

fn now() -> u64 {
    crate::grid::now_ms() / 1000
}

/// Applies `f` to a writable directory's table (read-modify-write with retries).
pub async fn modify_dir<F>(node: &NodeHandle, dir: &SskCap, mut f: F) -> Result<(), FsError>
where
    F: FnMut(&mut Table) -> Result<bool, FsError>,
{
    let wk = dir.writekey().copied();
    slot::modify(node, dir, |content| -> Result<Option<Vec<u8>>, FsError> {
        let mut table = dirnode::decode(content, wk.as_ref())?;
        if !f(&mut table)? {
            return Ok(None);
        }
        let mut rng = rand::rngs::OsRng;
        Ok(Some(dirnode::encode(&table, wk.as_ref(), || {
            let mut s = [0u8; 16];
            rand::RngCore::fill_bytes(&mut rng, &mut s);
            s
        })?))
    })
    .await?;
    Ok(())
}

/// The writable directory at `t`, creating missing directories on the way (`mkdir -p`).
pub async fn ensure_dir(node: &NodeHandle, t: &Target) -> Result<SskCap, FsError> {
    let mut cap = t.root.clone();
    let mut here = t.root_name.clone();
    for c in &t.path {
        let table = read_dir(node, &cap, &here).await?;
        let child_name = format!(
            "{here}{}{c}",
            if here.ends_with(['/', ':']) { "" } else { "/" }
        );
        cap = match table.get(c) {
            Some(e) => e.cap.clone(),
            None => {
                let parent = writable_dir(&cap, &here)?;
                let new = Cap::Ssk(empty_dir(node).await?);
                let mut chosen = new.clone();
                let name = c.clone();
                modify_dir(node, &parent, |t| {
                    // Someone else may have made it meanwhile: use theirs.
                    if let Some(e) = t.get(&name) {
                        chosen = e.cap.clone();
                        return Ok(false);
                    }
                    chosen = new.clone();
                    t.insert(
                        name.clone(),
                        Entry {
                            cap: new.clone(),
                            meta: Meta {
                                size: None,
                                ctime: now(),
                                mtime: now(),
                            },
                        },
                    );
                    Ok(true)
                })
                .await?;
                chosen
            }
        };
        here = child_name;
    }
    writable_dir(&cap, &here)
}

/// A new empty directory (not linked anywhere).
pub async fn empty_dir(node: &NodeHandle) -> Result<SskCap, FsError> {
    let empty = dirnode::encode(&Table::new(), None, || [0; 16])?;
    Ok(slot::create(node, true, &empty).await?)
}

/// Links `cap` at `t` (the parent directories are created when missing). Without `replace`,
/// an existing entry is an error.
pub async fn link(
    node: &NodeHandle,
    t: &Target,
    cap: &Cap,
    size: Option<u64>,
    replace: bool,
) -> Result<(), FsError> {
    let (parent, name) = t.split_last().ok_or_else(|| {
        FsError::BadPath(format!("{} is a root: name an entry below it", t.display()))
    })?;
    let dir = ensure_dir(node, &parent).await?;
    let display = t.display();
    let mut retry = false;
    modify_dir(node, &dir, |table| {
        let again = std::mem::replace(&mut retry, true);
        let linked = link_entry(table, &name, cap, size, replace, again, now());
        linked.map_err(|()| FsError::Dir(DirError::Exists(display.clone())))
    })
    .await
}

/// Links `cap` as `name` in `table` (an attempt of [`link`]; `again` on a retry of the
/// read-modify-write): whether the table changed, or `Err` when the name is taken. A write of
/// ours that a concurrent writer made look failed may have landed anyway, so on a retry the
/// same cap already there is success, not "exists".
fn link_entry(
    table: &mut Table,
    name: &str,
    cap: &Cap,
    size: Option<u64>,
    replace: bool,
    again: bool,
    time: u64,
) -> Result<bool, ()> {
    let ctime = match table.get(name) {
        Some(old) if again && !replace && old.cap == *cap => return Ok(false),
        Some(_) if !replace => return Err(()),
        Some(old) => old.meta.ctime,
        None => time,
    };
    table.insert(
        name.to_owned(),
        Entry {
            cap: cap.clone(),
            meta: Meta {
                size,
                ctime,
                mtime: time,
            },
        },
    );
    Ok(true)
}

/// Links many children into the directory at `t` in one write (what `cp -r` and large
/// imports use). Existing names are replaced when `replace`.
pub async fn link_many(
    node: &NodeHandle,
    t: &Target,
    children: Vec<(String, Cap, Option<u64>)>,
    replace: bool,
) -> Result<(), FsError> {
    for (name, _, _) in &children {
        dirnode::check_name(name)?;
    }
    let dir = ensure_dir(node, t).await?;
    let mut retry = false;
    modify_dir(node, &dir, |table| {
        let again = std::mem::replace(&mut retry, true);
        let mut changed = false;
        for (name, cap, size) in &children {
            match table.get(name) {
                // Ours, from an attempt that landed (see `link`).
                Some(e) if again && !replace && e.cap == *cap => continue,
                Some(_) if !replace => return Err(FsError::Dir(DirError::Exists(name.clone()))),
                _ => {}
            }
            changed = true;
            table.insert(
                name.clone(),
                Entry {
                    cap: cap.clone(),
                    meta: Meta {
                        size: *size,
                        ctime: now(),
                        mtime: now(),
                    },
                },
            );
        }
        Ok(changed)
    })
    .await
}

/// Removes the entry at `t`; returns the cap it held.
pub async fn unlink(node: &NodeHandle, t: &Target) -> Result<Cap, FsError> {
    let (parent, name) = t
        .split_last()
        .ok_or_else(|| FsError::BadPath(format!("cannot remove the root {}", t.display())))?;
    let pcap = resolve(node, &parent).await?;
    let dir = writable_dir(&pcap, &parent.display())?;
    let mut removed = None;
    let display = t.display();
    modify_dir(node, &dir, |table| {
        unlink_entry(table, &name, &mut removed).map_err(|()| FsError::NotFound(display.clone()))
    })
    .await?;
    removed.ok_or_else(|| FsError::NotFound(t.display()))
}

/// Removes `name` from `table` (an attempt of [`unlink`]), keeping its cap in `removed`:
/// whether the table changed, or `Err` when there is no such entry. Gone on a retry, after an
/// attempt that removed it, means an attempt of ours landed.
fn unlink_entry(table: &mut Table, name: &str, removed: &mut Option<Cap>) -> Result<bool, ()> {
    match table.remove(name) {
        Some(e) => {
            *removed = Some(e.cap);
            Ok(true)
        }
        None if removed.is_some() => Ok(false),
        None => Err(()),
    }
}

/// Why a move within one directory was refused.
#[derive(Debug, PartialEq, Eq)]
enum MoveRefused {
    /// No entry by the source name.
    NotFound,
    /// A directory is at the destination.
    DirAtDestination,
}

/// Moves `from` to `to` within `table` (an attempt of [`rename`] in one directory), keeping
/// the moved cap in `moved`: whether the table changed. On a retry, the source gone and the
/// cap it moved at the destination mean an attempt of ours landed.
fn move_entry(
    table: &mut Table,
    from: &str,
    to: &str,
    moved: &mut Option<Cap>,
    time: u64,
) -> Result<bool, MoveRefused> {
    if from == to {
        return Ok(false);
    }
    if !table.contains_key(from)
        && moved.is_some()
        && table.get(to).map(|e| &e.cap) == moved.as_ref()
    {
        return Ok(false);
    }
    if dir_at(table, to) {
        return Err(MoveRefused::DirAtDestination);
    }
    let mut e = table.remove(from).ok_or(MoveRefused::NotFound)?;
    e.meta.mtime = time;
    *moved = Some(e.cap.clone());
    table.insert(to.to_owned(), e);
    Ok(true)
}

/// Whether a directory is linked as `name` (a move does not replace one).
fn dir_at(table: &Table, name: &str) -> bool {
    table.get(name).is_some_and(|e| e.cap.is_dir())
}

/// Moves the entry at `from` to `to` (one write when both are in the same directory). An
/// existing file at `to` is replaced, an existing directory is not.
pub async fn rename(node: &NodeHandle, from: &Target, to: &Target) -> Result<(), FsError> {
    let (fparent, fname) = from
        .split_last()
        .ok_or_else(|| FsError::BadPath("cannot move a root".into()))?;
    let (tparent, tname) = to
        .split_last()
        .ok_or_else(|| FsError::BadPath("the destination must name an entry".into()))?;
    let fcap = resolve(node, &fparent).await?;
    let fdir = writable_dir(&fcap, &fparent.display())?;
    let tcap = resolve(node, &tparent).await?;
    let tdir = writable_dir(&tcap, &tparent.display())?;
    let (fdisp, tdisp) = (from.display(), to.display());
    let exists = || FsError::Dir(DirError::Exists(tdisp.clone()));
    if fdir.storage_index() == tdir.storage_index() {
        let mut moved: Option<Cap> = None;
        return modify_dir(node, &fdir, |table| {
            move_entry(table, &fname, &tname, &mut moved, now()).map_err(|e| match e {
                MoveRefused::NotFound => FsError::NotFound(fdisp.clone()),
                MoveRefused::DirAtDestination => exists(),
            })
        })
        .await;
    }
    // Across directories: link at the destination, then unlink the source.
    let entry = read_dir(node, &fcap, &fparent.display())
        .await?
        .remove(&fname)
        .ok_or_else(|| FsError::NotFound(fdisp.clone()))?;
    modify_dir(node, &tdir, |table| {
        if dir_at(table, &tname) {
            return Err(exists());
        }
        table.insert(tname.clone(), entry.clone());
        Ok(true)
    })
    .await?;
    modify_dir(node, &fdir, |table| Ok(table.remove(&fname).is_some())).await
}

/// One entry of a listing.
#[derive(Clone, Debug, Serialize)]
pub struct ListEntry {
    /// The name.
    pub name: String,
    /// `file`, `mutable` or `dir`.
    pub kind: &'static str,
    /// The strongest cap this view has (a write cap only through a writable directory).
    pub cap: String,
    /// The read-only cap.
    pub ro_cap: String,
    /// Whether the view can change the child.
    pub writable: bool,
    /// Size of immutable files.
    pub size: Option<u64>,
    /// Created, Unix seconds.
    pub ctime: u64,
    /// Last changed, Unix seconds.
    pub mtime: u64,
}

/// What a cap names.
pub fn kind(cap: &Cap) -> &'static str {
    if cap.is_dir() {
        "dir"
    } else if cap.is_mutable() {
        "mutable"
    } else {
        "file"
    }
}

/// Entries of a directory, by name.
pub fn entries(table: &Table) -> Vec<ListEntry> {
    table
        .iter()
        .map(|(name, e)| ListEntry {
            name: name.clone(),
            kind: kind(&e.cap),
            cap: e.cap.to_string(),
            ro_cap: e.cap.read_only().to_string(),
            writable: e.cap.is_writable(),
            size: e.meta.size.or(match &e.cap {
                Cap::Read(r) => Some(r.size()),
                _ => None,
            }),
            ctime: e.meta.ctime,
            mtime: e.meta.mtime,
        })
        .collect()
}

/// Reads a whole file (immutable or mutable) at a cap into memory (for small files and the
/// mutable ones, which are at most 4 MiB; immutable files stream through `NodeHandle::get`).
pub async fn read_mutable(node: &NodeHandle, cap: &Cap, name: &str) -> Result<Vec<u8>, FsError> {
    match cap {
        Cap::Ssk(s) if !s.dir => Ok(slot::read(node, s).await?.0),
        _ => Err(FsError::BadPath(format!("{name} is not a mutable file"))),
    }
}

/// Writes `content` as a mutable file at `t` (or unlinked, when `t` is `None`): updates the
/// file in place (a new version, same cap) when one is there and writable, else creates one.
/// Returns the cap and whether it was an update.
pub async fn put_mutable(
    node: &NodeHandle,
    t: Option<&Target>,
    content: Vec<u8>,
) -> Result<(Cap, bool), FsError> {
    if let Some(t) = t
        && !t.path.is_empty()
    {
        match resolve(node, t).await {
            Ok(Cap::Ssk(s)) if !s.dir && s.writekey().is_some() => {
                let m = slot::map(node, &s).await;
                slot::publish(node, &s, &content, &m).await?;
                return Ok((Cap::Ssk(s), true));
            }
            Ok(c) if c.is_dir() => return Err(FsError::Dir(DirError::Exists(t.display()))),
            Ok(Cap::Ssk(_)) => return Err(FsError::ReadOnly(t.display())),
            Ok(_) | Err(FsError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    let cap = Cap::Ssk(slot::create(node, false, &content).await?);
    if let Some(t) = t {
        link(node, t, &cap, None, true).await?;
    }
    Ok((cap, false))
}

/// Updates the immutable-or-mutable file at `t` with an uploaded immutable cap: a writable
/// mutable file there gets the content as a new version instead (so `kith put` keeps updating
/// a file made with `--mutable`). Returns whether it replaced a mutable file's content.
pub async fn existing_mutable(node: &NodeHandle, t: &Target) -> Result<Option<SskCap>, FsError> {
    if t.path.is_empty() {
        return Ok(None);
    }
    match resolve(node, t).await {
        Ok(Cap::Ssk(s)) if !s.dir && s.writekey().is_some() => Ok(Some(s)),
        Ok(_) | Err(FsError::NotFound(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Every node under `root` (itself included), depth first: (path, cap). Directories are
/// read once each; a directory reached twice (a cycle or a shared subtree) is not walked
/// again. Unreadable directories are reported in the second list.
pub async fn walk(
    node: &NodeHandle,
    root: &Cap,
    root_name: &str,
) -> (Vec<(String, Cap)>, Vec<(String, String)>) {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    let mut stack = vec![(root_name.to_owned(), root.clone())];
    while let Some((path, cap)) = stack.pop() {
        if cap.is_dir() {
            let key = cap.read_only().to_string();
            if !seen.insert(key) {
                continue;
            }
            if cap.can_read() {
                match read_dir(node, &cap, &path).await {
                    Ok(t) => {
                        let sep = if path.ends_with(['/', ':']) { "" } else { "/" };
                        let children: BTreeMap<String, Entry> = t;
                        for (name, e) in children.into_iter().rev() {
                            stack.push((format!("{path}{sep}{name}"), e.cap));
                        }
                    }
                    Err(e) => errors.push((path.clone(), e.to_string())),
                }
            }
        }
        out.push((path, cap));
    }
    (out, errors)
}

/// Reads a read cap of an immutable file or a LIT into memory, bounded.
pub async fn read_small(node: &NodeHandle, cap: &ReadCap, max: u64) -> Result<Vec<u8>, FsError> {
    if cap.size() > max {
        return Err(FsError::Download(format!(
            "{} bytes is more than {max}",
            cap.size()
        )));
    }
    let mut buf = Vec::new();
    node.get(cap, &mut buf)
        .await
        .map_err(|e| FsError::Download(e.to_string()))?;
    Ok(buf)
}

/// An immutable snapshot of the tree at `cap`: every directory becomes an immutable directory
/// (`kith:dir-imm:…`), every mutable file its current content as an immutable file, and
/// immutable files stay as they are. Later changes to the tree do not change the snapshot.
pub async fn snapshot(node: &NodeHandle, cap: &Cap, name: &str) -> Result<Cap, FsError> {
    let table = read_dir(node, cap, name).await?;
    let mut out = Table::new();
    for (child, e) in table {
        let path = format!(
            "{name}{}{child}",
            if name.ends_with(['/', ':']) { "" } else { "/" }
        );
        let frozen = match &e.cap {
            c if c.is_dir() => Box::pin(snapshot(node, c, &path)).await?,
            Cap::Ssk(_) => {
                let content = read_mutable(node, &e.cap, &path).await?;
                upload_bytes(node, &content).await?
            }
            other => other.read_only(),
        };
        out.insert(
            child,
            Entry {
                cap: frozen,
                meta: e.meta,
            },
        );
    }
    let bytes = dirnode::encode(&out, None, || [0; 16])?;
    match upload_bytes(node, &bytes).await? {
        Cap::Read(r) => Ok(Cap::ImmDir(r)),
        other => Ok(other),
    }
}

/// Uploads bytes as an immutable file (convergent, this node's encoding).
pub async fn upload_bytes(node: &NodeHandle, bytes: &[u8]) -> Result<Cap, FsError> {
    let tmp = tempfile::NamedTempFile::new_in(node.dir().tmp())
        .map_err(|e| FsError::Local(e.to_string()))?;
    std::fs::write(tmp.path(), bytes).map_err(|e| FsError::Local(e.to_string()))?;
    let opts = crate::client::PutOptions {
        params: node.config().encoding,
        convergent: true,
        key: None,
    };
    let r = node
        .put_file(tmp.path(), &opts, &|_| {})
        .await
        .map_err(|e| FsError::Download(e.to_string()))?;
    r.cap
        .parse::<Cap>()
        .map_err(|e| FsError::Local(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cap(n: u8) -> Cap {
        Cap::Read(ReadCap::Lit(crate::caps::LitCap { data: vec![n; 3] }))
    }

    #[test]
    fn a_retried_link_that_finds_its_own_entry_is_done_and_a_first_one_is_refused() {
        let mut table = Table::new();
        assert_eq!(
            link_entry(&mut table, "a", &cap(1), Some(3), false, false, 10),
            Ok(true)
        );
        // A user linking again: the name is taken, whatever the cap.
        assert_eq!(
            link_entry(&mut table, "a", &cap(1), Some(3), false, false, 11),
            Err(())
        );
        // A retry of the read-modify-write that finds its own cap: it landed, nothing to do.
        assert_eq!(
            link_entry(&mut table, "a", &cap(1), Some(3), false, true, 12),
            Ok(false)
        );
        assert_eq!(table["a"].meta.mtime, 10);
        // A retry that finds another cap there: someone else took the name.
        assert_eq!(
            link_entry(&mut table, "a", &cap(2), Some(3), false, true, 13),
            Err(())
        );
        // Replacing keeps the first link's ctime.
        assert_eq!(
            link_entry(&mut table, "a", &cap(2), None, true, false, 14),
            Ok(true)
        );
        assert_eq!((table["a"].meta.ctime, table["a"].meta.mtime), (10, 14));
        assert!(table["a"].cap == cap(2));
    }

    #[test]
    fn a_retried_unlink_or_move_that_finds_its_own_change_landed_is_done() {
        let entry = |c| Entry {
            cap: c,
            meta: Meta {
                size: None,
                ctime: 1,
                mtime: 1,
            },
        };
        let mut table = Table::from([("a".to_owned(), entry(cap(1)))]);
        let mut removed = None;
        // Nothing by that name on a first attempt: not found.
        assert_eq!(unlink_entry(&mut table, "b", &mut removed), Err(()));
        assert_eq!(unlink_entry(&mut table, "a", &mut removed), Ok(true));
        assert!(removed == Some(cap(1)) && table.is_empty());
        // The retry of an attempt that removed it finds it gone: done.
        assert_eq!(unlink_entry(&mut table, "a", &mut removed), Ok(false));

        let mut table = Table::from([("a".to_owned(), entry(cap(1)))]);
        let mut moved = None;
        assert_eq!(
            move_entry(&mut table, "b", "c", &mut moved, 5),
            Err(MoveRefused::NotFound)
        );
        assert_eq!(move_entry(&mut table, "a", "c", &mut moved, 5), Ok(true));
        assert_eq!(table["c"].meta.mtime, 5);
        // The retry finds the source gone and its cap at the destination: done.
        assert_eq!(move_entry(&mut table, "a", "c", &mut moved, 6), Ok(false));
        assert_eq!(table["c"].meta.mtime, 5);
        // Someone else's entry at the destination is not taken for ours.
        table.insert("c".to_owned(), entry(cap(2)));
        assert_eq!(
            move_entry(&mut table, "a", "c", &mut moved, 7),
            Err(MoveRefused::NotFound)
        );
        // A directory at the destination is not replaced.
        let dir = Cap::Ssk(crate::caps::SskCap {
            dir: true,
            access: crate::caps::SskAccess::Write { writekey: [1; 32] },
            fingerprint: [2; 32],
        });
        let mut table = Table::from([
            ("a".to_owned(), entry(cap(1))),
            ("d".to_owned(), entry(dir)),
        ]);
        assert_eq!(
            move_entry(&mut table, "a", "d", &mut None, 5),
            Err(MoveRefused::DirAtDestination)
        );
    }
}
