//! What this mount remembers about paths beyond what ZooKeeper says: the
//! kind it made a node as (`touch` → file, `mkdir` → directory, `ln -s` →
//! symlink), so an empty file never turns into a directory and a dangling
//! link made here stays a link (contract §3).
//!
//! One lock, one cleanup path: a node deleted forgets its entry, a rename
//! moves it. Owns nothing else; must not talk to ZooKeeper.

use std::collections::HashMap;
use std::sync::Mutex;

use super::attr::FileKind;

#[derive(Default)]
pub struct Overlay {
    kinds: Mutex<HashMap<String, FileKind>>,
}

impl Overlay {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, FileKind>> {
        self.kinds.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// This mount made (or showed and renamed) the node at `path` as `kind`.
    pub fn remember(&self, path: &str, kind: FileKind) {
        self.lock().insert(path.to_string(), kind);
    }

    pub fn kind(&self, path: &str) -> Option<FileKind> {
        self.lock().get(path).copied()
    }

    /// The node is gone (deleted here or by anyone).
    pub fn forget(&self, path: &str) {
        self.lock().remove(path);
    }

    /// A rename through this mount moved the node at `src` to `dst`, which
    /// shows as `kind` (the kind the source showed as).
    pub fn rename(&self, src: &str, dst: &str, kind: FileKind) {
        let mut kinds = self.lock();
        kinds.remove(src);
        kinds.insert(dst.to_string(), kind);
    }
}
