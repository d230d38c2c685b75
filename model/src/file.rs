//! Opening image files that may have been swapped or tampered with since they were listed:
//! never blocking (a FIFO or device put in place of a photo is refused, not waited on), never
//! reading more than the file's size, and decoding under a process-wide memory budget so that
//! concurrent decodes of huge images cannot multiply memory without bound.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};

use image::RgbImage;

use crate::error::{ModelError, Result};
use crate::preprocess::{decode_reader, DecodeLimits};

/// What identifies the bytes of a file without reading them: device, inode, size, modification
/// and status-change times. Two equal identities are the same file, unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileIdentity {
    /// Device id.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, ns since the Unix epoch.
    pub mtime_ns: i64,
    /// Status-change time, ns since the Unix epoch (changes on any write or rename).
    pub ctime_ns: i64,
}

impl FileIdentity {
    /// The identity in `fstat`/`stat` metadata.
    pub fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        FileIdentity {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: meta.mtime().saturating_mul(1_000_000_000) + meta.mtime_nsec(),
            ctime_ns: meta.ctime().saturating_mul(1_000_000_000) + meta.ctime_nsec(),
        }
    }
}

/// An image file opened for reading: a regular file, opened without blocking.
#[derive(Debug)]
pub struct ImageFile {
    file: File,
    path: PathBuf,
    identity: FileIdentity,
}

fn io_error(path: &Path, source: std::io::Error) -> ModelError {
    ModelError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn kind_of(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_dir() {
        "a folder"
    } else if t.is_fifo() {
        "a named pipe (FIFO)"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_symlink() {
        "a symbolic link"
    } else {
        "not a regular file"
    }
}

impl ImageFile {
    /// Opens `path` for reading without ever blocking: the open uses `O_NONBLOCK` (a FIFO opens
    /// at once instead of waiting for a writer) and the opened file must be a regular file.
    /// With `follow_symlinks` false a symbolic link in the last component is refused
    /// (`O_NOFOLLOW`).
    pub fn open(path: &Path, follow_symlinks: bool) -> Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut flags = libc::O_NONBLOCK | libc::O_NOCTTY;
        if !follow_symlinks {
            flags |= libc::O_NOFOLLOW;
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(flags)
            .open(path)
            .map_err(|e| {
                if e.raw_os_error() == Some(libc::ELOOP) && !follow_symlinks {
                    ModelError::NotAFile {
                        path: path.to_path_buf(),
                        kind: "a symbolic link",
                    }
                } else {
                    io_error(path, e)
                }
            })?;
        let meta = file.metadata().map_err(|e| io_error(path, e))?;
        if !meta.file_type().is_file() {
            return Err(ModelError::NotAFile {
                path: path.to_path_buf(),
                kind: kind_of(&meta),
            });
        }
        let identity = FileIdentity::of(&meta);
        Ok(ImageFile {
            file,
            path: path.to_path_buf(),
            identity,
        })
    }

    /// The path it was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The identity of the opened file (from `fstat`, so it describes what was opened even if
    /// the path has changed since).
    pub fn identity(&self) -> FileIdentity {
        self.identity
    }

    /// Size in bytes when opened.
    pub fn len(&self) -> u64 {
        self.identity.size
    }

    /// True for an empty file.
    pub fn is_empty(&self) -> bool {
        self.identity.size == 0
    }

    /// The BLAKE3 hash of the file's bytes, streamed (never more than its size at open).
    pub fn hash(&mut self) -> Result<[u8; 32]> {
        self.file
            .seek(SeekFrom::Start(0))
            .map_err(|e| io_error(&self.path, e))?;
        let mut hasher = blake3::Hasher::new();
        let mut limited = (&self.file).take(self.identity.size);
        std::io::copy(&mut limited, &mut hasher).map_err(|e| io_error(&self.path, e))?;
        Ok(*hasher.finalize().as_bytes())
    }

    /// Decodes the image (see [`crate::decode_bytes`] for the conventions), streaming from the
    /// file. The image comes with its share of the decode memory budget: keep the guard while
    /// the pixels (or copies of them) are in use.
    pub fn decode(&mut self, limits: DecodeLimits) -> Result<(RgbImage, BudgetGuard)> {
        self.file
            .seek(SeekFrom::Start(0))
            .map_err(|e| io_error(&self.path, e))?;
        let reader = BufReader::with_capacity(DECODE_BUFFER, (&self.file).take(self.identity.size));
        decode_reader(SeekableTake::new(reader, self.identity.size), limits)
    }

    /// The displayed size (after EXIF orientation) read from the image header alone.
    pub fn displayed_size(&mut self) -> Result<(u32, u32)> {
        use image::ImageDecoder;
        self.file
            .seek(SeekFrom::Start(0))
            .map_err(|e| io_error(&self.path, e))?;
        let reader = BufReader::with_capacity(DECODE_BUFFER, (&self.file).take(self.identity.size));
        let mut decoder = image::ImageReader::new(SeekableTake::new(reader, self.identity.size))
            .with_guessed_format()
            .map_err(|e| ModelError::Decode(e.to_string()))?
            .into_decoder()
            .map_err(|e| ModelError::Decode(e.to_string()))?;
        let (w, h) = decoder.dimensions();
        let orientation = decoder
            .orientation()
            .unwrap_or(image::metadata::Orientation::NoTransforms);
        use image::metadata::Orientation::*;
        Ok(match orientation {
            Rotate90 | Rotate270 | Rotate90FlipH | Rotate270FlipH => (h, w),
            _ => (w, h),
        })
    }

    /// A buffered, seekable reader over the opened file from its start, never reading past its
    /// size at open: for header-only readers (EXIF) that skip from one segment to the next. Its
    /// buffer is small (8 KiB), so a skip reads little more than the next header.
    pub fn header_reader(&mut self) -> Result<impl BufRead + Seek + '_> {
        self.file
            .seek(SeekFrom::Start(0))
            .map_err(|e| io_error(&self.path, e))?;
        let reader = BufReader::with_capacity(HEADER_BUFFER, (&self.file).take(self.identity.size));
        Ok(SeekableTake::with_buffer(
            reader,
            self.identity.size,
            HEADER_BUFFER,
        ))
    }

    /// The opened file, positioned at its start (to stream it elsewhere).
    pub fn into_file(mut self) -> Result<File> {
        self.file
            .seek(SeekFrom::Start(0))
            .map_err(|e| io_error(&self.path, e))?;
        Ok(self.file)
    }
}

/// Buffer of the decoders' readers.
const DECODE_BUFFER: usize = 64 * 1024;

/// Buffer of [`ImageFile::header_reader`].
const HEADER_BUFFER: usize = 8 * 1024;

/// A buffered reader over the first `len` bytes of a file that can also seek (the decoders need
/// `Seek`), never reading past `len`.
struct SeekableTake<'a> {
    inner: BufReader<std::io::Take<&'a File>>,
    len: u64,
    pos: u64,
    buffer: usize,
}

impl<'a> SeekableTake<'a> {
    fn new(inner: BufReader<std::io::Take<&'a File>>, len: u64) -> Self {
        Self::with_buffer(inner, len, DECODE_BUFFER)
    }

    fn with_buffer(inner: BufReader<std::io::Take<&'a File>>, len: u64, buffer: usize) -> Self {
        SeekableTake {
            inner,
            len,
            pos: 0,
            buffer,
        }
    }
}

impl Read for SeekableTake<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl BufRead for SeekableTake<'_> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        self.inner.fill_buf()
    }
    fn consume(&mut self, amt: usize) {
        self.pos += amt as u64;
        self.inner.consume(amt);
    }
}

impl Seek for SeekableTake<'_> {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let target = match to {
            SeekFrom::Start(n) => n as i128,
            SeekFrom::End(d) => self.len as i128 + d as i128,
            SeekFrom::Current(d) => self.pos as i128 + d as i128,
        };
        if target < 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "seek before the start of the file",
            ));
        }
        let target = (target as u64).min(self.len);
        // A short skip forward within the buffer consumes it instead of dropping it.
        if target >= self.pos && target - self.pos <= self.inner.buffer().len() as u64 {
            self.inner.consume((target - self.pos) as usize);
            self.pos = target;
            return Ok(target);
        }
        // Re-position the underlying file and rebuild the limit from there.
        let file: &File = self.inner.get_ref().get_ref();
        let mut f = file;
        f.seek(SeekFrom::Start(target))?;
        self.inner = BufReader::with_capacity(self.buffer, file.take(self.len - target));
        self.pos = target;
        Ok(target)
    }
}

/// The process-wide memory budget for decoded pixels.
///
/// Every decode reserves its estimated peak (decoded buffer, RGB conversion, rotation) before
/// it allocates pixels and releases it when the decoded image has been turned into its 8-bit RGB
/// result and used, so the pixels of all concurrent decodes (indexer threads, thumbnail requests)
/// stay under the budget. Reservations are granted in arrival order, so a large image is not
/// starved by a stream of small ones; one image larger than the whole budget waits until nothing
/// else is reserved and then runs alone.
pub struct DecodeBudget {
    state: Mutex<BudgetState>,
    freed: Condvar,
}

struct BudgetState {
    capacity: u64,
    used: u64,
    /// The ticket the next caller takes.
    next_ticket: u64,
    /// The ticket allowed to reserve now.
    serving: u64,
}

/// Default decode memory budget: 1 GiB.
pub const DEFAULT_DECODE_BUDGET: u64 = 1 << 30;

static BUDGET: DecodeBudget = DecodeBudget {
    state: Mutex::new(BudgetState {
        capacity: DEFAULT_DECODE_BUDGET,
        used: 0,
        next_ticket: 0,
        serving: 0,
    }),
    freed: Condvar::new(),
};

/// A reservation of decode memory, released on drop.
pub struct BudgetGuard {
    bytes: u64,
}

impl DecodeBudget {
    /// The process-wide budget.
    pub fn global() -> &'static DecodeBudget {
        &BUDGET
    }

    // The state is plain counters, consistent after any panic, so a poisoned lock is used as is.
    fn lock(&self) -> std::sync::MutexGuard<'_, BudgetState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the budget in bytes (at least 64 MiB).
    pub fn set_capacity(&self, bytes: u64) {
        self.lock().capacity = bytes.max(64 << 20);
        self.freed.notify_all();
    }

    /// The budget in bytes.
    pub fn capacity(&self) -> u64 {
        self.lock().capacity
    }

    /// Bytes reserved now.
    pub fn used(&self) -> u64 {
        self.lock().used
    }

    /// Reserves `bytes`, waiting (in arrival order) while other decodes hold too much. A request
    /// larger than the budget waits until nothing else is reserved and then reserves the whole
    /// budget.
    pub fn reserve(&'static self, bytes: u64) -> Result<BudgetGuard> {
        let mut state = self.lock();
        let ticket = state.next_ticket;
        state.next_ticket += 1;
        loop {
            let bytes = bytes.min(state.capacity);
            if state.serving == ticket && (state.used + bytes <= state.capacity || state.used == 0)
            {
                state.used += bytes;
                state.serving += 1;
                drop(state);
                self.freed.notify_all();
                return Ok(BudgetGuard { bytes });
            }
            state = self.freed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl Drop for BudgetGuard {
    fn drop(&mut self) {
        let budget = DecodeBudget::global();
        {
            let mut state = budget.lock();
            state.used = state.used.saturating_sub(self.bytes);
        }
        budget.freed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo_and_devices_are_refused_without_blocking() {
        let dir = std::env::temp_dir().join(format!("spotter-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("pipe.jpg");
        let _ = std::fs::remove_file(&fifo);
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let err = ImageFile::open(&fifo, true).unwrap_err();
        assert!(err.to_string().contains("FIFO"), "{err}");
        let err = ImageFile::open(Path::new("/dev/zero"), true).unwrap_err();
        assert!(err.to_string().contains("character device"), "{err}");
        let link = dir.join("link.jpg");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        assert!(ImageFile::open(&link, false)
            .unwrap_err()
            .to_string()
            .contains("symbolic link"));
        assert!(ImageFile::open(&link, true).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn hash_and_decode_read_the_opened_file() {
        let dir = std::env::temp_dir().join(format!("spotter-file2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.png");
        RgbImage::from_pixel(7, 5, image::Rgb([1, 2, 3]))
            .save(&path)
            .unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let mut f = ImageFile::open(&path, false).unwrap();
        assert_eq!(f.hash().unwrap(), *blake3::hash(&bytes).as_bytes());
        let (img, _reserved) = f.decode(DecodeLimits::default()).unwrap();
        assert_eq!(img.dimensions(), (7, 5));
        assert_eq!(f.hash().unwrap(), *blake3::hash(&bytes).as_bytes());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn budget_waits_and_releases() {
        let budget = DecodeBudget::global();
        let cap = budget.capacity();
        let a = budget.reserve(cap / 2).unwrap();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let d = done.clone();
        let t = std::thread::spawn(move || {
            let _b = DecodeBudget::global().reserve(cap).unwrap();
            d.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(!done.load(std::sync::atomic::Ordering::SeqCst));
        drop(a);
        t.join().unwrap();
        assert!(done.load(std::sync::atomic::Ordering::SeqCst));
    }

    #[test]
    fn a_large_reservation_is_not_starved_by_small_ones() {
        let budget = DecodeBudget::global();
        let cap = budget.capacity();
        let order = std::sync::Arc::new(Mutex::new(Vec::new()));
        let first = budget.reserve(cap / 4).unwrap();
        let o = order.clone();
        let large = std::thread::spawn(move || {
            let _g = DecodeBudget::global().reserve(cap).unwrap();
            o.lock().unwrap().push("large");
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
        // Small requests arriving after the large one wait behind it.
        let smalls: Vec<_> = (0..4)
            .map(|_| {
                let o = order.clone();
                std::thread::spawn(move || {
                    let _g = DecodeBudget::global().reserve(cap / 8).unwrap();
                    o.lock().unwrap().push("small");
                })
            })
            .collect();
        std::thread::sleep(std::time::Duration::from_millis(50));
        drop(first);
        large.join().unwrap();
        for s in smalls {
            s.join().unwrap();
        }
        assert_eq!(order.lock().unwrap()[0], "large");
    }
}
