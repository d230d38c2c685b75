//! Paths relative to an archive root, kept byte for byte.
//!
//! File names on Unix are bytes, not text: two names that differ only in bytes that are not
//! UTF-8 (`\xff\xfe.jpg`, `\xfe\xff.jpg`) are two files. [`RelPath`] keeps the raw bytes of the
//! path (components joined with `/`), so such files get distinct records, are found unchanged on
//! the next run and can be opened again. For UTF-8 names it stores and serialises exactly what
//! the `String` of earlier versions did (bincode writes both as length + bytes), so existing
//! indexes need no migration.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A path relative to an archive root: its raw bytes, components separated by `/`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct RelPath(Vec<u8>);

impl RelPath {
    /// A path from its raw bytes (`/`-separated).
    pub fn from_bytes(bytes: impl Into<Vec<u8>>) -> Self {
        RelPath(bytes.into())
    }

    /// The `/`-joined components of a relative filesystem path, without loss.
    pub fn from_relative(rel: &Path) -> Self {
        let mut out = Vec::new();
        for (i, component) in rel.components().enumerate() {
            if i > 0 {
                out.push(b'/');
            }
            out.extend_from_slice(&os_bytes(component.as_os_str()));
        }
        RelPath(out)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The path as text, when it is UTF-8.
    pub fn to_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }

    /// The relative path as a filesystem path.
    pub fn to_path(&self) -> PathBuf {
        path_from_bytes(&self.0)
    }

    /// The absolute path of this file under `root`.
    pub fn join_onto(&self, root: &Path) -> PathBuf {
        root.join(self.to_path())
    }

    /// True when the path starts with `prefix` (byte-wise, as the `path` filter means it).
    pub fn starts_with(&self, prefix: &str) -> bool {
        self.0.starts_with(prefix.as_bytes())
    }

    /// True when this path is `folder` or lies inside it (whole components; an empty `folder`
    /// is the root, which holds everything).
    pub fn is_under(&self, folder: &RelPath) -> bool {
        let f = folder.as_bytes();
        f.is_empty()
            || (self.0.starts_with(f) && (self.0.len() == f.len() || self.0[f.len()] == b'/'))
    }

    /// The path for people: UTF-8 as it is, every byte that is not UTF-8 as `\xNN` (so two
    /// names that differ only in such bytes still look different).
    pub fn display(&self) -> String {
        display_bytes(&self.0)
    }
}

impl fmt::Debug for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.display())
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display())
    }
}

impl From<&str> for RelPath {
    fn from(s: &str) -> Self {
        RelPath(s.as_bytes().to_vec())
    }
}

impl From<String> for RelPath {
    fn from(s: String) -> Self {
        RelPath(s.into_bytes())
    }
}

/// Text for people of arbitrary bytes: UTF-8 runs as they are, other bytes as `\xNN`.
pub fn display_bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// A filesystem path for people, without the loss of `to_string_lossy` (see [`display_bytes`]).
pub fn display_path(path: &Path) -> String {
    display_bytes(&os_bytes(path.as_os_str()))
}

/// Serialises a filesystem path as its [`display_path`] text, so that JSON output never fails
/// (serde refuses paths that are not UTF-8) and never loses the difference between two names.
pub fn serialize_path<S: Serializer>(path: &Path, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&display_path(path))
}

/// [`serialize_path`] for a list of paths.
pub fn serialize_paths<S: Serializer>(paths: &[PathBuf], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(paths.iter().map(|p| display_path(p)))
}

#[cfg(unix)]
fn os_bytes(s: &std::ffi::OsStr) -> std::borrow::Cow<'_, [u8]> {
    use std::os::unix::ffi::OsStrExt;
    std::borrow::Cow::Borrowed(s.as_bytes())
}

#[cfg(not(unix))]
fn os_bytes(s: &std::ffi::OsStr) -> std::borrow::Cow<'_, [u8]> {
    match s.to_string_lossy() {
        std::borrow::Cow::Borrowed(t) => std::borrow::Cow::Borrowed(t.as_bytes()),
        std::borrow::Cow::Owned(t) => std::borrow::Cow::Owned(t.into_bytes()),
    }
}

#[cfg(unix)]
fn path_from_bytes(bytes: &[u8]) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    PathBuf::from(std::ffi::OsStr::from_bytes(bytes))
}

#[cfg(not(unix))]
fn path_from_bytes(bytes: &[u8]) -> PathBuf {
    PathBuf::from(String::from_utf8_lossy(bytes).into_owned())
}

/// Binary formats (bincode: the store) get the bytes, which encode exactly like the `String` of
/// earlier versions. Text formats (JSON: Milvus payloads) get a string when the path is UTF-8
/// (as before) and the array of its bytes otherwise.
impl Serialize for RelPath {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            match self.to_str() {
                Some(text) => serializer.serialize_str(text),
                None => self.0.serialize(serializer),
            }
        } else {
            serializer.serialize_bytes(&self.0)
        }
    }
}

struct RelPathVisitor;

impl<'de> Visitor<'de> for RelPathVisitor {
    type Value = RelPath;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a relative path as a string or bytes")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<RelPath, E> {
        Ok(RelPath::from(v))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<RelPath, E> {
        Ok(RelPath::from(v))
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<RelPath, E> {
        Ok(RelPath(v.to_vec()))
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<RelPath, E> {
        Ok(RelPath(v))
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<RelPath, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(b) = seq.next_element::<u8>()? {
            out.push(b);
        }
        Ok(RelPath(out))
    }
}

impl<'de> Deserialize<'de> for RelPath {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<RelPath, D::Error> {
        if deserializer.is_human_readable() {
            deserializer.deserialize_any(RelPathVisitor)
        } else {
            deserializer.deserialize_byte_buf(RelPathVisitor)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Old {
        root: u32,
        rel_path: String,
        size: u64,
    }

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct New {
        root: u32,
        rel_path: RelPath,
        size: u64,
    }

    fn bincode_of<T: Serialize>(v: &T) -> Vec<u8> {
        bincode::serde::encode_to_vec(v, bincode::config::standard()).unwrap()
    }

    #[test]
    fn utf8_paths_encode_exactly_like_the_old_string_field() {
        let old = Old {
            root: 3,
            rel_path: "2024/été/cat.jpg".into(),
            size: 77,
        };
        let new = New {
            root: 3,
            rel_path: "2024/été/cat.jpg".into(),
            size: 77,
        };
        let bytes = bincode_of(&old);
        assert_eq!(bytes, bincode_of(&new));
        let (back, _): (New, usize) =
            bincode::serde::decode_from_slice(&bytes, bincode::config::standard()).unwrap();
        assert_eq!(back, new);
        // And JSON (Milvus payloads) is unchanged too.
        assert_eq!(
            serde_json::to_string(&new).unwrap(),
            serde_json::to_string(&old).unwrap()
        );
    }

    #[test]
    fn non_utf8_paths_round_trip_and_stay_distinct() {
        let a = RelPath::from_bytes(b"x/\xff\xfe.jpg".to_vec());
        let b = RelPath::from_bytes(b"x/\xfe\xff.jpg".to_vec());
        assert_ne!(a, b);
        assert_ne!(a.display(), b.display());
        assert_eq!(a.display(), "x/\\xff\\xfe.jpg");
        for p in [&a, &b] {
            let (back, _): (RelPath, usize) =
                bincode::serde::decode_from_slice(&bincode_of(p), bincode::config::standard())
                    .unwrap();
            assert_eq!(&back, p);
            let json = serde_json::to_string(p).unwrap();
            assert_eq!(&serde_json::from_str::<RelPath>(&json).unwrap(), p);
        }
        assert!(a.starts_with("x/"));
        assert!(a.is_under(&"x".into()) && a.is_under(&"".into()) && a.is_under(&a));
        assert!(
            !a.is_under(&"x/\u{ff}".into()) && !RelPath::from("xy/a.jpg").is_under(&"x".into())
        );
        assert!(!a.starts_with("y"));
        #[cfg(unix)]
        {
            use std::os::unix::ffi::OsStrExt;
            let full = a.join_onto(Path::new("/archive"));
            assert_eq!(full.as_os_str().as_bytes(), b"/archive/x/\xff\xfe.jpg");
            assert_eq!(
                RelPath::from_relative(
                    Path::new("x")
                        .join(a.to_path().file_name().unwrap())
                        .as_path()
                ),
                a
            );
        }
    }
}
