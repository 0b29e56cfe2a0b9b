//! Files and folders that appear whole or not at all. A folder: everything is written into a hidden sibling
//! staging folder, renamed onto the destination only when complete, and removed on failure.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::DataError;

pub struct StagingDir {
    staging: Option<tempfile::TempDir>,
    destination: PathBuf,
    /// Whether an existing destination is replaced on commit (else refused up front).
    replace: bool,
}

impl StagingDir {
    /// Refuses a destination that already exists, so a finished data set is never mixed
    /// with a new one.
    pub fn new(destination: &Path) -> Result<Self, DataError> {
        if destination.exists() {
            return Err(DataError::OutputExists {
                path: destination.to_path_buf(),
            });
        }
        Self::staged(destination, false)
    }

    /// Like [`StagingDir::new`], but an existing destination is replaced by the new folder
    /// on commit (it stays untouched until then).
    pub fn new_replacing(destination: &Path) -> Result<Self, DataError> {
        Self::staged(destination, true)
    }

    fn staged(destination: &Path, replace: bool) -> Result<Self, DataError> {
        let parent = match destination.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).map_err(DataError::io(&parent))?;
        let name = destination
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "out".into());
        // Same parent, so the final rename stays on one file system.
        let staging = tempfile::Builder::new()
            .prefix(&format!(".{name}.partial-"))
            .tempdir_in(&parent)
            .map_err(DataError::io(&parent))?;
        Ok(Self {
            staging: Some(staging),
            destination: destination.to_path_buf(),
            replace,
        })
    }

    /// Where to write while preparing.
    pub fn path(&self) -> &Path {
        self.staging
            .as_ref()
            .expect("staging dir lives until commit")
            .path()
    }

    /// Moves the finished folder into place.
    pub fn commit(mut self) -> Result<PathBuf, DataError> {
        let staging = self.staging.take().expect("commit runs once").keep();
        // The old folder moves aside first: a crash in between leaves it whole, beside the new.
        let old = self.destination.with_file_name(format!(
            ".{}.old",
            self.destination
                .file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default()
        ));
        let replaced = self.replace && self.destination.exists();
        if replaced {
            let _ = std::fs::remove_dir_all(&old);
            std::fs::rename(&self.destination, &old).map_err(DataError::io(&self.destination))?;
        }
        std::fs::rename(&staging, &self.destination).map_err(|source| {
            let _ = std::fs::remove_dir_all(&staging);
            if replaced {
                let _ = std::fs::rename(&old, &self.destination);
            }
            DataError::Io {
                path: self.destination.clone(),
                source,
            }
        })?;
        if replaced {
            let _ = std::fs::remove_dir_all(&old);
        }
        Ok(self.destination.clone())
    }
}

/// Writes a file that is either whole or absent: a temporary name, synced, then renamed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    // Temporary files are private (0600); the result is an ordinary file.
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Gives a folder made by `tempfile` (0700) the permissions of an ordinary one.
pub fn make_public_dir(path: &Path) -> std::io::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
}
