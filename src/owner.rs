//! Who owns the store and who runs the command (issue 10, item 6).
//!
//! An offline command run as the wrong user (`init` as root, forgetting `sudo -u`) would leave
//! files the service cannot open, and the daemon would then say only "Permission denied". So:
//! [`refuse_foreign_store`] stops a command run by another user than the owner of the store's
//! directory and gives the right command, and [`access_hint`] turns a permission error on a
//! store or secret path into the owner found, the user that needs it, and the fixing command.
//!
//! Users are read from `/proc/self/status` and `/etc/passwd` (Linux), with no new dependency.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::config::StoreConfig;

/// The uid `nobody`: under the unit's `PrivateUsers=yes` every user but the service's own
/// (root included) shows as this one.
const OVERFLOW_UID: u32 = 65534;

/// The effective uid of this process.
pub fn euid() -> Option<u32> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// The name of `uid` in /etc/passwd.
pub fn user_name(uid: u32) -> Option<String> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let id: u32 = fields.nth(1)?.parse().ok()?;
        (id == uid).then(|| name.to_owned())
    })
}

/// `keypad-bridge (uid 998)`, or `uid 998` for a uid without a name.
pub fn describe(uid: u32) -> String {
    let name = match user_name(uid) {
        Some(name) => format!("{name} (uid {uid})"),
        None => format!("uid {uid}"),
    };
    if uid == OVERFLOW_UID {
        format!(
            "{name}, which is how a sandboxed service (PrivateUsers=yes) sees any other user, \
             root included"
        )
    } else {
        name
    }
}

/// How `uid` is written in a `sudo -u` command: its name, else `'#uid'` (sudo's form).
fn user_word(uid: u32) -> String {
    quote(&user_name(uid).unwrap_or_else(|| format!("#{uid}")))
}

/// This process's `user:group` for `chown` (names where known, else numbers).
fn chown_owner(uid: u32) -> String {
    let gid = fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("Gid:"))?.to_owned();
            line.split_whitespace().nth(2)?.parse::<u32>().ok()
        });
    let group = gid.map(|gid| {
        fs::read_to_string("/etc/group")
            .ok()
            .and_then(|groups| {
                groups.lines().find_map(|line| {
                    let mut fields = line.split(':');
                    let name = fields.next()?;
                    (fields.nth(1)?.parse::<u32>().ok()? == gid).then(|| name.to_owned())
                })
            })
            .unwrap_or_else(|| gid.to_string())
    });
    let user = user_name(uid).unwrap_or_else(|| uid.to_string());
    quote(&format!("{user}:{}", group.unwrap_or_default()))
}

/// `path` itself when it exists, else its nearest existing ancestor, with its owner.
fn nearest_existing(path: &Path) -> Option<(PathBuf, u32)> {
    path.ancestors()
        .filter(|p| !p.as_os_str().is_empty())
        .find_map(|p| {
            fs::symlink_metadata(p)
                .ok()
                .map(|m| (p.to_owned(), m.uid()))
        })
}

/// This command line as one would type it again, with `--config` made explicit when the
/// environment gave it (sudo does not pass KEYPAD_BRIDGE_CONFIG on).
pub fn command_line() -> String {
    let mut args: Vec<OsString> = std::env::args_os().collect();
    if args.is_empty() {
        args.push("keypad-bridge".into());
    }
    let has_config = args
        .iter()
        .any(|a| a == "--config" || a.to_string_lossy().starts_with("--config="));
    if !has_config {
        if let Some(config) = std::env::var_os("KEYPAD_BRIDGE_CONFIG") {
            args.splice(1..1, ["--config".into(), config]);
        }
    }
    args.iter()
        .map(|a| quote(&a.to_string_lossy()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A word for a POSIX shell.
fn quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// The store's directory: the one the database directory is (or is to be) created in,
/// `/var/lib/keypad-bridge` for the package, with its owner, when it exists.
pub fn store_dir_owner(store: &StoreConfig) -> Option<(PathBuf, u32)> {
    let dir = match store.path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    fs::metadata(dir).ok().map(|m| (dir.to_owned(), m.uid()))
}

/// The first entry up to two levels below `dir` that `uid` does not own.
fn foreign_entry(dir: &Path, uid: u32) -> Option<(PathBuf, u32)> {
    let mut queue = vec![(dir.to_owned(), 0)];
    while let Some((dir, depth)) = queue.pop() {
        for entry in fs::read_dir(&dir).ok()?.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.uid() != uid {
                return Some((entry.path(), meta.uid()));
            }
            if meta.is_dir() && depth < 1 {
                queue.push((entry.path(), depth + 1));
            }
        }
    }
    None
}

/// Refuses a command that opens the store when this process runs as another user than the
/// owner of the store's directory: what it created would belong to the wrong user.
pub fn refuse_foreign_store(store: &StoreConfig) -> anyhow::Result<()> {
    let (Some(me), Some((dir, owner))) = (euid(), store_dir_owner(store)) else {
        return Ok(());
    };
    if me == owner {
        return Ok(());
    }
    anyhow::bail!(
        "the store's directory {} belongs to {}, but this command runs as {}: files it created \
         would belong to the wrong user, and the service could not open them. Run it as the \
         store's owner:\n  sudo -u {} {}",
        dir.display(),
        describe(owner),
        describe(me),
        user_word(owner),
        command_line()
    )
}

/// For a permission error on `path` (a store or secret path), the owner found, the user that
/// needs it and the command that fixes it; empty for any other error.
pub fn access_hint(path: &Path, error: &io::Error) -> String {
    if error.kind() != io::ErrorKind::PermissionDenied {
        return String::new();
    }
    let (Some(me), Some((mut found, mut owner))) = (euid(), nearest_existing(path)) else {
        return String::new();
    };
    if owner == me {
        // sled names only the store's directory: the culprit may be a file inside it.
        if let Some((entry, uid)) = foreign_entry(&found, me) {
            (found, owner) = (entry, uid);
        }
    }
    let shown = if found == path || found.starts_with(path) {
        found.display().to_string()
    } else {
        format!("{} (above {})", found.display(), path.display())
    };
    if owner == me {
        return format!(
            ". {shown} belongs to {}, who runs this, but its mode forbids the access: see \
             `ls -ld {}`",
            describe(me),
            found.display()
        );
    }
    // Files of another user inside a directory of ours (an `init` run as root in the
    // service's state directory): give them back. Store files sit at most two levels below
    // the store's directory, so nothing higher is ever offered to `chown -R`.
    let ours = found
        .ancestors()
        .skip(1)
        .take(3)
        .find(|p| fs::metadata(p).is_ok_and(|m| m.uid() == me));
    match ours {
        Some(dir) => format!(
            ". {shown} belongs to {}, but {} needs it: give the store back to its user with \
             `sudo chown -R {} {}`",
            describe(owner),
            describe(me),
            chown_owner(me),
            quote(&dir.display().to_string())
        ),
        None => format!(
            ". {shown} belongs to {}, but this runs as {}: run the command as its owner, \
             `sudo -u {} {}`",
            describe(owner),
            describe(me),
            user_word(owner),
            command_line()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_quoted_for_a_shell_only_when_needed() {
        assert_eq!(
            quote("/etc/keypad-bridge/config.yaml"),
            "/etc/keypad-bridge/config.yaml"
        );
        assert_eq!(quote("my config.yaml"), "'my config.yaml'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote(""), "''");
    }

    #[test]
    fn root_is_uid_zero_and_named() {
        assert_eq!(user_name(0).as_deref(), Some("root"));
        assert_eq!(describe(0), "root (uid 0)");
        assert!(euid().is_some());
    }

    #[test]
    fn only_a_permission_error_gets_a_hint() {
        let err = io::Error::from(io::ErrorKind::NotFound);
        assert_eq!(access_hint(Path::new("/"), &err), "");
    }
}
