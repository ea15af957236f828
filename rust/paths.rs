//! Checking millions of image paths at once: `fusion-fast check` asks whether each exists.

use std::path::Path;

use rayon::prelude::*;

/// Whether each path (joined to `base` when relative) is an existing regular file (links followed).
pub fn files_exist(base: Option<&Path>, paths: &[String]) -> Vec<bool> {
    paths
        .par_iter()
        .with_min_len(256)
        .map(|p| {
            let p = Path::new(p);
            match base {
                Some(b) if p.is_relative() => b.join(p).is_file(),
                _ => p.is_file(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_existing_files_only() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.jpg"), b"x").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let paths = vec!["a.jpg".to_string(), "b.jpg".into(), "sub".into()];
        assert_eq!(
            files_exist(Some(dir.path()), &paths),
            vec![true, false, false]
        );
        let abs = vec![dir.path().join("a.jpg").to_string_lossy().into_owned()];
        assert_eq!(
            files_exist(Some(Path::new("/nonexistent")), &abs),
            vec![true]
        );
    }
}
