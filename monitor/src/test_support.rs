//! What the unit tests of several modules share.

use std::path::{Path, PathBuf};

/// A scratch directory under the system's temporary directory, removed with everything below
/// it when the test ends or panics.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A fresh path for `name`, not created yet (a leftover of an earlier run is removed).
    pub fn new(name: &str) -> TempDir {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "monitor-test-{name}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        TempDir(path)
    }

    /// The same, created.
    pub fn created(name: &str) -> TempDir {
        let dir = TempDir::new(name);
        std::fs::create_dir_all(&dir.0).unwrap();
        dir
    }

    /// Writes `text` to `name` below the directory (creating its parents); returns its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::create_dir_all(path.parent().unwrap_or(Path::new("/"))).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
