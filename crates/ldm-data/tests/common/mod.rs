//! Helpers shared by the preparers' tests.

/// Every file of a prepared folder's two splits, by "split/name", with its bytes.
pub fn tree_bytes(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    for split in ["train", "validation"] {
        let mut names: Vec<_> = std::fs::read_dir(dir.join(split))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        for name in names {
            let bytes = std::fs::read(dir.join(split).join(&name)).unwrap();
            files.push((format!("{split}/{name}"), bytes));
        }
    }
    files
}
