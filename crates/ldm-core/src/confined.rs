//! One rule for every file read from a folder someone else made (a bundle, an image folder):
//! the name is a relative path of plain components (no `..`, no root, no drive), no component
//! below the folder is a symbolic link (which could lead anywhere: the path-traversal class of
//! CVE-2022-25882, CVE-2024-27318 and CVE-2026-27489), the file is a regular file, and it is
//! read with a size limit.

use std::io::Read;
use std::path::{Component, Path, PathBuf};

/// A file name that leaves its folder, or a file that cannot be read within its limit.
#[derive(Debug, thiserror::Error)]
#[error("{}: {reason}", path.display())]
pub struct Unconfined {
    pub path: PathBuf,
    pub reason: String,
}

/// Whether `name` is a relative path of plain components (the syntactic half of the rule, for
/// names checked before any file is opened).
pub fn is_plain_relative(name: &str) -> bool {
    !name.is_empty()
        && !name.contains('\\')
        && Path::new(name)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
}

/// `dir/name`, once `name` is shown to stay inside `dir`: plain components, no symbolic link
/// at any level, a regular file at the end.
pub fn confined(dir: &Path, name: &str) -> Result<PathBuf, Unconfined> {
    let refuse = |path: PathBuf, reason: String| Unconfined { path, reason };
    if !is_plain_relative(name) {
        return Err(refuse(
            dir.join(name),
            format!("'{name}' is not a relative path inside {}", dir.display()),
        ));
    }
    let mut path = dir.to_path_buf();
    for component in Path::new(name).components() {
        path.push(component);
        let meta = std::fs::symlink_metadata(&path)
            .map_err(|e| refuse(path.clone(), format!("cannot be read: {e}")))?;
        if meta.file_type().is_symlink() {
            return Err(refuse(
                path,
                "is a symbolic link; files must lie inside their folder".into(),
            ));
        }
    }
    if !std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file()) {
        return Err(refuse(path, "is not a regular file".into()));
    }
    Ok(path)
}

/// The bytes of `dir/name` under [`confined`]'s rule, refusing files above `max_bytes`.
pub fn read_confined(dir: &Path, name: &str, max_bytes: u64) -> Result<Vec<u8>, Unconfined> {
    read_bounded(&confined(dir, name)?, max_bytes)
}

/// The bytes of `path`, refusing a file above `max_bytes` without reading past them.
pub fn read_bounded(path: &Path, max_bytes: u64) -> Result<Vec<u8>, Unconfined> {
    let path = path.to_path_buf();
    let refuse = |reason: String| Unconfined {
        path: path.clone(),
        reason,
    };
    let file = std::fs::File::open(&path).map_err(|e| refuse(format!("cannot be read: {e}")))?;
    let mut bytes = Vec::new();
    // One byte more than allowed tells a file that grew past the limit.
    file.take(max_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| refuse(format!("cannot be read: {e}")))?;
    if bytes.len() as u64 > max_bytes {
        return Err(refuse(format!(
            "is larger than the {max_bytes} bytes such a file may have"
        )));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_leaving_the_folder_and_links_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/a.txt"), b"inside").unwrap();
        std::fs::write(root.join("big"), vec![0u8; 100]).unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"outside").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), root.join("link")).unwrap();
        std::os::unix::fs::symlink(outside.path(), root.join("linked-dir")).unwrap();

        assert_eq!(read_confined(root, "sub/a.txt", 10).unwrap(), b"inside");
        let reason = |name: &str| confined(root, name).unwrap_err().to_string();
        for name in [
            "../etc/passwd",
            "/etc/passwd",
            "",
            "sub/../sub/a.txt",
            "a\\b",
            "./x",
        ] {
            assert!(reason(name).contains("is not a relative path"), "{name}");
        }
        assert!(reason("link").contains("symbolic link"));
        assert!(reason("linked-dir/secret").contains("symbolic link"));
        assert!(reason("sub").contains("not a regular file"));
        assert!(reason("missing").contains("cannot be read"));
        let err = read_confined(root, "big", 99).unwrap_err().to_string();
        assert!(err.contains("larger than the 99 bytes"), "{err}");
    }
}
