//! Walking archives: which files are images, which folders are skipped, symlinks and loops.

use std::path::{Path, PathBuf};

use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::error::{IndexError, Result};
use crate::relpath::RelPath;

/// Image file extensions indexed (case-insensitive).
pub const IMAGE_EXTENSIONS: &[&str] = &[
    "jpg", "jpeg", "jpe", "png", "webp", "bmp", "tif", "tiff", "gif",
];

/// Folder names skipped by default (system and thumbnail folders of common NAS and OSes).
pub const SYSTEM_DIRS: &[&str] = &[
    "@eaDir",
    "#recycle",
    "$RECYCLE.BIN",
    "System Volume Information",
    "lost+found",
    "__MACOSX",
];

/// Walk options.
#[derive(Debug, Clone, Default)]
pub struct WalkOptions {
    /// Follow symbolic links (loops are detected and reported).
    pub follow_symlinks: bool,
    /// Also walk hidden (dot) files and folders and system folders.
    pub include_hidden: bool,
    /// Only files whose path (relative to the root) matches one of these globs.
    pub include: Vec<String>,
    /// Skip files whose relative path matches one of these globs.
    pub exclude: Vec<String>,
}

/// One image file found in an archive.
#[derive(Debug, Clone, PartialEq)]
pub struct FoundFile {
    /// Absolute path.
    pub path: PathBuf,
    /// Path relative to the root, `/`-separated, byte for byte.
    pub rel_path: RelPath,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, ns since the Unix epoch.
    pub mtime_ns: i64,
}

/// A path the walk could not enter or read.
#[derive(Debug, Clone, PartialEq)]
pub struct WalkProblem {
    /// The path (or the root when unknown).
    pub path: PathBuf,
    /// What went wrong.
    pub reason: String,
}

fn glob_set(globs: &[String]) -> Result<Option<GlobSet>> {
    if globs.is_empty() {
        return Ok(None);
    }
    let mut builder = GlobSetBuilder::new();
    for g in globs {
        builder.add(Glob::new(g).map_err(|e| IndexError::Invalid(format!("glob '{g}': {e}")))?);
    }
    builder
        .build()
        .map(Some)
        .map_err(|e| IndexError::Invalid(format!("globs: {e}")))
}

/// True when `name` has an image extension.
pub fn is_image_name(name: &str) -> bool {
    name.rsplit_once('.')
        .map(|(_, ext)| IMAGE_EXTENSIONS.iter().any(|e| e.eq_ignore_ascii_case(ext)))
        .unwrap_or(false)
}

fn skipped_dir_name(name: &str) -> bool {
    name.starts_with('.') || SYSTEM_DIRS.iter().any(|d| d.eq_ignore_ascii_case(name))
}

/// Modification time of file metadata in ns since the Unix epoch (0 when unknown).
pub fn mtime_ns(meta: &std::fs::Metadata) -> i64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Walks `root` and returns its image files (sorted by path) and the problems met.
pub fn walk(root: &Path, options: &WalkOptions) -> Result<(Vec<FoundFile>, Vec<WalkProblem>)> {
    let include = glob_set(&options.include)?;
    let exclude = glob_set(&options.exclude)?;
    let mut files = Vec::new();
    let mut problems = Vec::new();
    let walker = walkdir::WalkDir::new(root)
        .follow_links(options.follow_symlinks)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| {
            e.depth() == 0
                || options.include_hidden
                || !skipped_dir_name(&e.file_name().to_string_lossy())
        });
    for entry in walker {
        let entry = match entry {
            Ok(e) => e,
            Err(err) => {
                let path = err
                    .path()
                    .map(Path::to_path_buf)
                    .unwrap_or_else(|| root.to_path_buf());
                let reason = if err.loop_ancestor().is_some() {
                    "symbolic link loop, not followed".to_string()
                } else {
                    err.to_string()
                };
                problems.push(WalkProblem { path, reason });
                continue;
            }
        };
        if !entry.file_type().is_file() {
            continue;
        }
        let name = entry.file_name().to_string_lossy();
        if !is_image_name(&name) {
            continue;
        }
        let rel = entry.path().strip_prefix(root).unwrap_or(entry.path());
        let rel_path = RelPath::from_relative(rel);
        let glob_path = rel_path.to_path();
        if include.as_ref().is_some_and(|g| !g.is_match(&glob_path)) {
            continue;
        }
        if exclude.as_ref().is_some_and(|g| g.is_match(&glob_path)) {
            continue;
        }
        match entry.metadata() {
            Ok(meta) => files.push(FoundFile {
                path: entry.path().to_path_buf(),
                rel_path,
                size: meta.len(),
                mtime_ns: mtime_ns(&meta),
            }),
            Err(err) => problems.push(WalkProblem {
                path: entry.path().to_path_buf(),
                reason: err.to_string(),
            }),
        }
    }
    Ok((files, problems))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_images_case_insensitively_and_skips_hidden_and_system_folders() {
        let dir = std::env::temp_dir().join(format!("spotter-walk-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for p in [
            "a/cat.JPG",
            "a/b/dog.png",
            "a/notes.txt",
            ".hidden/x.jpg",
            "@eaDir/t.jpg",
            "a/.dot.jpg",
            "c d/é è.webp",
        ] {
            let path = dir.join(p);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, b"x").unwrap();
        }
        let (files, problems) = walk(&dir, &WalkOptions::default()).unwrap();
        let rels: Vec<String> = files.iter().map(|f| f.rel_path.display()).collect();
        assert_eq!(rels, vec!["a/b/dog.png", "a/cat.JPG", "c d/é è.webp"]);
        assert!(problems.is_empty());

        let opts = WalkOptions {
            include_hidden: true,
            exclude: vec!["**/*.png".into()],
            ..Default::default()
        };
        let (files, _) = walk(&dir, &opts).unwrap();
        let rels: Vec<String> = files.iter().map(|f| f.rel_path.display()).collect();
        assert_eq!(
            rels,
            vec![
                ".hidden/x.jpg",
                "@eaDir/t.jpg",
                "a/.dot.jpg",
                "a/cat.JPG",
                "c d/é è.webp"
            ]
        );

        let opts = WalkOptions {
            include: vec!["a/**".into()],
            ..Default::default()
        };
        assert_eq!(walk(&dir, &opts).unwrap().0.len(), 2);
        assert!(walk(
            &dir,
            &WalkOptions {
                include: vec!["a/[".into()],
                ..Default::default()
            }
        )
        .is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[cfg(unix)]
    #[test]
    fn symlink_loops_are_reported_not_followed_forever() {
        let dir = std::env::temp_dir().join(format!("spotter-loop-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("x")).unwrap();
        std::fs::write(dir.join("x/p.jpg"), b"x").unwrap();
        std::os::unix::fs::symlink(&dir, dir.join("x/loop")).unwrap();
        let opts = WalkOptions {
            follow_symlinks: true,
            ..Default::default()
        };
        let (files, problems) = walk(&dir, &opts).unwrap();
        assert_eq!(files.len(), 1);
        assert!(
            problems.iter().any(|p| p.reason.contains("loop")),
            "{problems:?}"
        );
        // Not following links: the link is ignored.
        let (files, problems) = walk(&dir, &WalkOptions::default()).unwrap();
        assert_eq!((files.len(), problems.len()), (1, 0));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
