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

    /// Moves the finished folder into place. A folder it replaces is swapped with it in one
    /// atomic exchange (Linux), so the destination always holds the old folder or the new one;
    /// elsewhere the old one moves aside first, and a crash in between leaves it whole beside
    /// the new.
    pub fn commit(mut self) -> Result<PathBuf, DataError> {
        let staging = self.staging.take().expect("commit runs once").keep();
        let replaced = self.replace && self.destination.exists();
        let moved = if replaced {
            replace_dir(&staging, &self.destination)
        } else {
            std::fs::rename(&staging, &self.destination)
        };
        if let Err(source) = moved {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(DataError::Io {
                path: self.destination.clone(),
                source,
            });
        }
        if replaced {
            // The exchange left the old folder at the staging name.
            let _ = std::fs::remove_dir_all(&staging);
        }
        Ok(self.destination.clone())
    }
}

/// Puts the folder `new` at `destination`, whose old folder ends up at `new`'s name.
#[cfg(target_os = "linux")]
fn replace_dir(new: &Path, destination: &Path) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes()).map_err(|e| std::io::Error::other(e.to_string()))
    };
    let (from, to) = (c(new)?, c(destination)?);
    // SAFETY: both paths are valid NUL-terminated strings that outlive the call.
    let status = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if status == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn replace_dir(new: &Path, destination: &Path) -> std::io::Result<()> {
    let old = destination.with_file_name(format!(
        ".{}.old",
        destination
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ));
    let _ = std::fs::remove_dir_all(&old);
    std::fs::rename(destination, &old)?;
    if let Err(e) = std::fs::rename(new, destination) {
        let _ = std::fs::rename(&old, destination);
        return Err(e);
    }
    std::fs::rename(&old, new)
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
