//! Aliases: local names for caps (`kith alias add home <dircap>`, then `home:docs/a.txt`).
//!
//! Kept in the node's redb (`aliases-0`: name -> cap text) inside the private node dir: an
//! alias usually holds a directory's write cap, which must never leave this machine.

use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use crate::caps::Cap;

const ALIASES: TableDefinition<&str, &str> = TableDefinition::new("aliases-0");

/// Longest alias name.
pub const MAX_ALIAS: usize = 64;

/// Creates the table.
pub fn init(db: &redb::Database) -> Result<(), String> {
    let tx = db.begin_write().map_err(|e| e.to_string())?;
    tx.open_table(ALIASES).map_err(|e| e.to_string())?;
    tx.commit().map_err(|e| e.to_string())
}

/// Checks an alias name: letters, digits, `-`, `_`, `.`, starting with a letter or digit.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_ALIAS
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok && name != "kith" {
        Ok(())
    } else {
        Err(format!(
            "invalid alias {name:?}: use 1-{MAX_ALIAS} letters, digits, '-', '_' or '.' (and not \"kith\")"
        ))
    }
}

/// Adds (or, with `replace`, changes) an alias.
pub fn add(db: &redb::Database, name: &str, cap: &Cap, replace: bool) -> Result<(), String> {
    check_name(name)?;
    let tx = db.begin_write().map_err(|e| e.to_string())?;
    {
        let mut t = tx.open_table(ALIASES).map_err(|e| e.to_string())?;
        if !replace && t.get(name).map_err(|e| e.to_string())?.is_some() {
            return Err(format!(
                "alias {name:?} exists already (remove it first, or pass --replace)"
            ));
        }
        t.insert(name, cap.to_string().as_str())
            .map_err(|e| e.to_string())?;
    }
    tx.commit().map_err(|e| e.to_string())
}

/// Removes an alias; whether it existed.
pub fn remove(db: &redb::Database, name: &str) -> Result<bool, String> {
    let tx = db.begin_write().map_err(|e| e.to_string())?;
    let existed = {
        let mut t = tx.open_table(ALIASES).map_err(|e| e.to_string())?;
        t.remove(name).map_err(|e| e.to_string())?.is_some()
    };
    tx.commit().map_err(|e| e.to_string())?;
    Ok(existed)
}

/// The cap of an alias.
pub fn get(db: &redb::Database, name: &str) -> Result<Option<Cap>, String> {
    let tx = db.begin_read().map_err(|e| e.to_string())?;
    let t = tx.open_table(ALIASES).map_err(|e| e.to_string())?;
    let v = t.get(name).map_err(|e| e.to_string())?;
    v.map(|v| v.value().parse::<Cap>().map_err(|e| e.to_string()))
        .transpose()
}

/// Every alias, by name.
pub fn list(db: &redb::Database) -> Result<Vec<(String, Cap)>, String> {
    let tx = db.begin_read().map_err(|e| e.to_string())?;
    let t = tx.open_table(ALIASES).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for item in t.iter().map_err(|e| e.to_string())? {
        let (k, v) = item.map_err(|e| e.to_string())?;
        if let Ok(cap) = v.value().parse::<Cap>() {
            out.push((k.value().to_owned(), cap));
        }
    }
    Ok(out)
}
