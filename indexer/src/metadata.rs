//! Photo metadata: when a photo was taken, with which camera, and where — read from the EXIF
//! block of its file, with the file's modification time when the photo says nothing.
//!
//! [`exif_block`] finds the block in a JPEG (APP1 `Exif`), PNG (`eXIf` before the image data),
//! WebP (`EXIF` chunk) or TIFF (the file itself) by skipping from header to header, so that it
//! reads the headers and the block only; blocks over [`MAX_EXIF_BYTES`] are ignored. The
//! `kamadak-exif` crate parses the block. Nothing here fails: a missing, corrupt or oversized
//! block gives [`PhotoMetadata`] without EXIF values, and the image is indexed all the same.

use std::io::{BufRead, Read, Seek, SeekFrom};

use exif::{In, Tag, Value};
use serde::{Deserialize, Serialize};

/// Largest EXIF block read (and, for TIFF files, how much of the file is read for it).
pub const MAX_EXIF_BYTES: usize = 1 << 20;

/// Most segments (JPEG markers, PNG or WebP chunks) skipped while looking for the block.
const MAX_SEGMENTS: usize = 4096;

/// Most characters kept of a camera make or model.
const MAX_NAME_CHARS: usize = 64;

/// Where a capture time comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TimeSource {
    /// The photo's EXIF `DateTimeOriginal` (or `DateTimeDigitized` when only that is there).
    Exif,
    /// The file's modification time (no usable EXIF time).
    FileModified,
}

impl TimeSource {
    /// The name stored in JSON and shown: `exif` or `file_modified`.
    pub fn name(self) -> &'static str {
        match self {
            TimeSource::Exif => "exif",
            TimeSource::FileModified => "file_modified",
        }
    }
}

/// When a photo was taken, as its clock read it.
///
/// `seconds` is the wall-clock reading written as seconds since 1970-01-01 00:00:00 *as if it
/// were UTC*; `offset_minutes` says how far east of UTC that clock was, when known. EXIF times
/// without `OffsetTimeOriginal` are local times of an unknown zone (`offset_minutes: None`); a
/// file time is an exact instant and is kept at offset 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureTime {
    /// Wall-clock seconds since 1970-01-01 00:00:00, read as if UTC.
    pub seconds: i64,
    /// Minutes east of UTC of that clock, when known.
    pub offset_minutes: Option<i16>,
    /// Where the time comes from.
    pub source: TimeSource,
}

impl CaptureTime {
    /// The time of a file modified `mtime_ns` nanoseconds after the epoch.
    pub fn file_modified(mtime_ns: i64) -> Self {
        CaptureTime {
            seconds: mtime_ns.div_euclid(1_000_000_000),
            offset_minutes: Some(0),
            source: TimeSource::FileModified,
        }
    }

    /// The instant in seconds since the epoch (UTC), when the offset is known.
    pub fn utc_seconds(&self) -> Option<i64> {
        self.offset_minutes
            .map(|m| self.seconds - i64::from(m) * 60)
    }
}

/// What an image record keeps of a photo's metadata (record format 2).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PhotoMetadata {
    /// Capture time (EXIF, else the file's modification time); `None` only when neither is known.
    pub taken: Option<CaptureTime>,
    /// EXIF `Make`, trimmed.
    pub make: Option<String>,
    /// EXIF `Model`, trimmed.
    pub model: Option<String>,
    /// GPS position `[latitude, longitude]` in degrees (north and east positive).
    pub gps: Option<[f64; 2]>,
}

impl PhotoMetadata {
    /// The metadata of a photo whose file says nothing: its modification time only.
    pub fn file_time(mtime_ns: i64) -> Self {
        PhotoMetadata {
            taken: Some(CaptureTime::file_modified(mtime_ns)),
            ..Default::default()
        }
    }

    /// The metadata in an EXIF block (TIFF structure, as [`exif_block`] returns it), without
    /// the file-time fallback. A corrupt block gives what could be read of it (often nothing).
    pub fn from_exif(block: Vec<u8>) -> Self {
        let exif = match exif::Reader::new().continue_on_error(true).read_raw(block) {
            Ok(exif) => exif,
            Err(exif::Error::PartialResult(partial)) => partial.into_inner().0,
            Err(_) => return PhotoMetadata::default(),
        };
        PhotoMetadata {
            taken: capture_time(&exif),
            make: text(&exif, Tag::Make),
            model: text(&exif, Tag::Model),
            gps: gps(&exif),
        }
    }

    /// Reads the metadata of the image `reader` holds (from its start), with the file time
    /// `mtime_ns` when it has no usable EXIF time.
    pub fn read<R: BufRead + Seek>(reader: &mut R, mtime_ns: i64) -> Self {
        exif_block(reader)
            .map(PhotoMetadata::from_exif)
            .unwrap_or_default()
            .or_file_time(mtime_ns)
    }

    /// This metadata, with the file time `mtime_ns` when it has no capture time or its capture
    /// time is an older file time (a touched, moved or copied file keeps its EXIF values).
    pub fn or_file_time(mut self, mtime_ns: i64) -> Self {
        if self
            .taken
            .is_none_or(|t| t.source == TimeSource::FileModified)
        {
            self.taken = Some(CaptureTime::file_modified(mtime_ns));
        }
        self
    }

    /// The camera in words: make and model joined, without the make twice ("Canon EOS 5D" for
    /// make "Canon" and model "Canon EOS 5D"; "NIKON D750" for "NIKON CORPORATION" and
    /// "NIKON D750"; "Apple iPhone 12" for "Apple" and "iPhone 12").
    pub fn camera(&self) -> Option<String> {
        match (self.make.as_deref(), self.model.as_deref()) {
            (None, None) => None,
            (Some(make), None) => Some(make.to_string()),
            (None, Some(model)) => Some(model.to_string()),
            (Some(make), Some(model)) => {
                let brand = brand_of(make);
                let repeats = |prefix: &str| {
                    let (m, p) = (model.to_lowercase(), prefix.to_lowercase());
                    m.starts_with(&p)
                        && m[p.len()..]
                            .chars()
                            .next()
                            .is_none_or(|c| !c.is_alphanumeric())
                };
                if repeats(make) || repeats(&brand) {
                    Some(model.to_string())
                } else {
                    Some(format!("{brand} {model}"))
                }
            }
        }
    }
}

/// What a search hit or an image shows of its photo's metadata (see [`PhotoMetadata`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PhotoInfo {
    /// Capture time: wall-clock seconds since 1970-01-01 00:00:00 read as if UTC (the photo's
    /// local time; subtract `taken_offset_minutes` × 60 for UTC when that is known).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub taken: Option<i64>,
    /// Minutes east of UTC of the capture time's clock; absent for EXIF times without an
    /// offset (a local time of unknown zone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub taken_offset_minutes: Option<i16>,
    /// Where the capture time comes from: `exif` or `file_modified`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub taken_source: Option<TimeSource>,
    /// Camera make and model in words ("Canon EOS 5D").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub camera: Option<String>,
    /// GPS position `[latitude, longitude]` in degrees (north and east positive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gps: Option<[f64; 2]>,
}

impl From<&PhotoMetadata> for PhotoInfo {
    fn from(m: &PhotoMetadata) -> Self {
        PhotoInfo {
            taken: m.taken.map(|t| t.seconds),
            taken_offset_minutes: m.taken.and_then(|t| t.offset_minutes),
            taken_source: m.taken.map(|t| t.source),
            camera: m.camera(),
            gps: m.gps,
        }
    }
}

impl PhotoInfo {
    /// The capture instant in seconds since the epoch (UTC), when the offset is known.
    pub fn taken_utc(&self) -> Option<i64> {
        let offset = self.taken_offset_minutes?;
        Some(self.taken? - i64::from(offset) * 60)
    }

    /// Whether the camera's name holds `needle`, ignoring case (false without a camera).
    pub fn camera_contains(&self, needle: &str) -> bool {
        self.camera
            .as_deref()
            .is_some_and(|c| c.to_lowercase().contains(&needle.to_lowercase()))
    }
}

/// The make without the company words ("NIKON CORPORATION" → "NIKON", "OLYMPUS IMAGING CORP."
/// → "OLYMPUS"); the make itself when nothing is left.
fn brand_of(make: &str) -> String {
    const COMPANY: [&str; 10] = [
        "corporation",
        "corp",
        "company",
        "co",
        "ltd",
        "inc",
        "imaging",
        "electronics",
        "optical",
        "gmbh",
    ];
    let words: Vec<&str> = make
        .split_whitespace()
        .take_while(|w| {
            let w = w
                .trim_matches(|c: char| !c.is_alphanumeric())
                .to_lowercase();
            !COMPANY.contains(&w.as_str())
        })
        .collect();
    let brand = words.join(" ");
    let brand = brand.trim_end_matches([',', '.', ' ']);
    if brand.is_empty() {
        make.to_string()
    } else {
        brand.to_string()
    }
}

/// An ASCII field as text: its first string, NULs and control characters dropped, trimmed, at
/// most [`MAX_NAME_CHARS`] characters; bytes that are not UTF-8 read as Latin-1.
fn text(exif: &exif::Exif, tag: Tag) -> Option<String> {
    let field = exif.get_field(tag, In::PRIMARY)?;
    let Value::Ascii(parts) = &field.value else {
        return None;
    };
    let raw = parts
        .iter()
        .find(|p| p.iter().any(|b| *b != 0 && *b != b' '))?;
    let decoded: String = match std::str::from_utf8(raw) {
        Ok(s) => s.to_string(),
        Err(_) => raw.iter().map(|&b| char::from(b)).collect(),
    };
    let cleaned: String = decoded.chars().filter(|c| !c.is_control()).collect();
    let trimmed = cleaned.trim();
    if trimmed.is_empty() {
        return None;
    }
    Some(
        trimmed
            .chars()
            .take(MAX_NAME_CHARS)
            .collect::<String>()
            .trim_end()
            .to_string(),
    )
}

/// The first ASCII string of a field, raw.
fn ascii(exif: &exif::Exif, tag: Tag) -> Option<&[u8]> {
    match &exif.get_field(tag, In::PRIMARY)?.value {
        Value::Ascii(parts) => parts.first().map(Vec::as_slice),
        _ => None,
    }
}

/// `DateTimeOriginal` with `OffsetTimeOriginal`, else `DateTimeDigitized` with
/// `OffsetTimeDigitized`; impossible dates and offsets are ignored.
fn capture_time(exif: &exif::Exif) -> Option<CaptureTime> {
    [
        (Tag::DateTimeOriginal, Tag::OffsetTimeOriginal),
        (Tag::DateTimeDigitized, Tag::OffsetTimeDigitized),
    ]
    .into_iter()
    .find_map(|(time, offset)| {
        let dt = exif::DateTime::from_ascii(ascii(exif, time)?).ok()?;
        let seconds = civil_seconds(&dt)?;
        let offset_minutes = ascii(exif, offset).and_then(|raw| {
            let mut with = exif::DateTime { offset: None, ..dt };
            with.parse_offset(raw).ok()?;
            with.offset.filter(|m| (-12 * 60..=14 * 60).contains(m))
        });
        Some(CaptureTime {
            seconds,
            offset_minutes,
            source: TimeSource::Exif,
        })
    })
}

/// Seconds since 1970-01-01 00:00:00 of a calendar date and time (proleptic Gregorian), or
/// `None` for an impossible one (month 13, 31 April, the `0000:00:00` of unset clocks).
fn civil_seconds(dt: &exif::DateTime) -> Option<i64> {
    let (y, m, d) = (i64::from(dt.year), i64::from(dt.month), i64::from(dt.day));
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days_in_month = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    if !(1800..=9999).contains(&y)
        || !(1..=days_in_month).contains(&d)
        || dt.hour > 23
        || dt.minute > 59
        || dt.second > 60
    {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let second = i64::from(dt.second.min(59));
    Some(days * 86_400 + i64::from(dt.hour) * 3600 + i64::from(dt.minute) * 60 + second)
}

/// Degrees of a `[degrees, minutes, seconds]` rational triple (fewer parts are allowed).
fn degrees(exif: &exif::Exif, tag: Tag) -> Option<f64> {
    let parts: Vec<f64> = match &exif.get_field(tag, In::PRIMARY)?.value {
        Value::Rational(v) if !v.is_empty() => v
            .iter()
            .take(3)
            .map(|r| (r.denom != 0).then(|| f64::from(r.num) / f64::from(r.denom)))
            .collect::<Option<_>>()?,
        Value::SRational(v) if !v.is_empty() => v
            .iter()
            .take(3)
            .map(|r| (r.denom != 0).then(|| f64::from(r.num) / f64::from(r.denom)))
            .collect::<Option<_>>()?,
        _ => return None,
    };
    let value = parts
        .iter()
        .zip([1.0, 60.0, 3600.0])
        .map(|(p, div)| p / div)
        .sum::<f64>();
    value.is_finite().then_some(value)
}

/// The sign of a GPS reference: `positive` (N or E), `negative` (S or W); a missing reference
/// counts as positive, any other is refused.
fn sign(exif: &exif::Exif, tag: Tag, positive: u8, negative: u8) -> Option<f64> {
    match ascii(exif, tag).and_then(|r| r.first().copied()) {
        None => Some(1.0),
        Some(c) if c.eq_ignore_ascii_case(&positive) => Some(1.0),
        Some(c) if c.eq_ignore_ascii_case(&negative) => Some(-1.0),
        Some(_) => None,
    }
}

/// The GPS position with its references applied; `None` when absent, out of range (|lat| > 90,
/// |lon| > 180) or exactly 0, 0 (what receivers without a fix write).
fn gps(exif: &exif::Exif) -> Option<[f64; 2]> {
    let lat = degrees(exif, Tag::GPSLatitude)? * sign(exif, Tag::GPSLatitudeRef, b'N', b'S')?;
    let lon = degrees(exif, Tag::GPSLongitude)? * sign(exif, Tag::GPSLongitudeRef, b'E', b'W')?;
    if lat.abs() > 90.0 || lon.abs() > 180.0 || (lat == 0.0 && lon == 0.0) {
        return None;
    }
    Some([lat, lon])
}

/// The EXIF block (a TIFF structure) of the image `reader` holds, from its start: a JPEG's APP1
/// `Exif` segment, a PNG's `eXIf` chunk, a WebP's `EXIF` chunk or the first
/// [`MAX_EXIF_BYTES`] of a TIFF file. `None` for other formats, images without a block, blocks
/// over [`MAX_EXIF_BYTES`] and files broken before the block.
pub fn exif_block<R: BufRead + Seek>(reader: &mut R) -> Option<Vec<u8>> {
    let mut head = [0u8; 12];
    let got = read_up_to(reader, &mut head).ok()?;
    let head = &head[..got];
    let block = if head.starts_with(&[0xff, 0xd8]) {
        reader.seek(SeekFrom::Start(2)).ok()?;
        jpeg_block(reader)
    } else if head.starts_with(b"\x89PNG\r\n\x1a\n") {
        reader.seek(SeekFrom::Start(8)).ok()?;
        png_block(reader)
    } else if head.len() == 12 && head.starts_with(b"RIFF") && &head[8..12] == b"WEBP" {
        webp_block(reader)
    } else if head.starts_with(b"II*\0") || head.starts_with(b"MM\0*") {
        reader.seek(SeekFrom::Start(0)).ok()?;
        let mut block = Vec::new();
        reader
            .take(MAX_EXIF_BYTES as u64)
            .read_to_end(&mut block)
            .ok()?;
        Some(block)
    } else {
        None
    }?;
    // Some writers keep the JPEG identifier in PNG and WebP blocks too.
    Some(match block.strip_prefix(b"Exif\0\0") {
        Some(rest) => rest.to_vec(),
        None => block,
    })
}

/// Fills as much of `buf` as the reader holds.
fn read_up_to<R: Read>(reader: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match reader.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

fn read_array<const N: usize, R: Read>(reader: &mut R) -> Option<[u8; N]> {
    let mut buf = [0u8; N];
    reader.read_exact(&mut buf).ok()?;
    Some(buf)
}

/// Reads `len` bytes, refusing more than [`MAX_EXIF_BYTES`] (before allocating).
fn read_block<R: Read>(reader: &mut R, len: u64) -> Option<Vec<u8>> {
    if len > MAX_EXIF_BYTES as u64 {
        return None;
    }
    let mut block = Vec::with_capacity(len as usize);
    reader.take(len).read_to_end(&mut block).ok()?;
    (block.len() as u64 == len).then_some(block)
}

fn skip<R: Seek>(reader: &mut R, len: u64) -> Option<()> {
    reader
        .seek(SeekFrom::Current(i64::try_from(len).ok()?))
        .ok()?;
    Some(())
}

/// JPEG markers after SOI until the scan: the first APP1 segment that starts with `Exif\0\0`.
fn jpeg_block<R: BufRead + Seek>(reader: &mut R) -> Option<Vec<u8>> {
    for _ in 0..MAX_SEGMENTS {
        let [prefix] = read_array::<1, _>(reader)?;
        if prefix != 0xff {
            return None; // out of step: not a marker where one must be
        }
        let mut code = 0xff;
        while code == 0xff {
            [code] = read_array::<1, _>(reader)?; // fill bytes
        }
        match code {
            // Stand-alone markers (no length).
            0x01 | 0xd0..=0xd7 => continue,
            // The scan, the end or a second image: no EXIF before it.
            0xd8..=0xda => return None,
            _ => {}
        }
        let len = u64::from(u16::from_be_bytes(read_array::<2, _>(reader)?));
        let body = len.checked_sub(2)?;
        if code == 0xe1 && body >= 6 {
            if &read_array::<6, _>(reader)? == b"Exif\0\0" {
                return read_block(reader, body - 6);
            }
            skip(reader, body - 6)?;
        } else {
            skip(reader, body)?;
        }
    }
    None
}

/// PNG chunks after the signature until the image data: the `eXIf` chunk.
fn png_block<R: BufRead + Seek>(reader: &mut R) -> Option<Vec<u8>> {
    for _ in 0..MAX_SEGMENTS {
        let len = u64::from(u32::from_be_bytes(read_array::<4, _>(reader)?));
        if len > i32::MAX as u64 {
            return None;
        }
        match &read_array::<4, _>(reader)? {
            b"eXIf" => return read_block(reader, len),
            // The image data (eXIf must come before it) or the end.
            b"IDAT" | b"IEND" => return None,
            _ => skip(reader, len + 4)?, // data and CRC
        }
    }
    None
}

/// WebP chunks after the RIFF header: the `EXIF` chunk (after the image data in extended
/// files, so the frames are skipped, not read).
fn webp_block<R: BufRead + Seek>(reader: &mut R) -> Option<Vec<u8>> {
    for _ in 0..MAX_SEGMENTS {
        let fourcc = read_array::<4, _>(reader)?;
        let len = u64::from(u32::from_le_bytes(read_array::<4, _>(reader)?));
        if &fourcc == b"EXIF" {
            return read_block(reader, len);
        }
        skip(reader, len + (len & 1))?; // chunks are padded to even sizes
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{ascii_field, dms_field, exif_block_of as block, jpeg_with};
    use exif::{Field, Rational};
    use std::io::Cursor;

    fn png_chunk(kind: &[u8; 4], data: &[u8], declared: Option<u32>) -> Vec<u8> {
        let mut out = declared.unwrap_or(data.len() as u32).to_be_bytes().to_vec();
        out.extend(kind);
        out.extend(data);
        out.extend([0; 4]); // CRC (not checked by readers of metadata)
        out
    }

    fn png_with(chunks: &[Vec<u8>]) -> Vec<u8> {
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        out.extend(png_chunk(b"IHDR", &[0; 13], None));
        for c in chunks {
            out.extend(c);
        }
        out.extend(png_chunk(b"IDAT", &[1, 2, 3], None));
        out.extend(png_chunk(b"IEND", &[], None));
        out
    }

    fn webp_with(exif: &[u8], declared: Option<u32>) -> Vec<u8> {
        let mut body = b"WEBP".to_vec();
        body.extend(b"VP8X");
        body.extend(10u32.to_le_bytes());
        body.extend([0; 10]);
        body.extend(b"VP8 ");
        body.extend(3u32.to_le_bytes());
        body.extend([9, 9, 9, 0]); // odd size: one pad byte
        body.extend(b"EXIF");
        body.extend(declared.unwrap_or(exif.len() as u32).to_le_bytes());
        body.extend(exif);
        let mut out = b"RIFF".to_vec();
        out.extend((body.len() as u32).to_le_bytes());
        out.extend(body);
        out
    }

    fn read(bytes: &[u8]) -> PhotoMetadata {
        PhotoMetadata::read(&mut Cursor::new(bytes), 1_600_000_000_123_456_789)
    }

    fn full_exif() -> Vec<u8> {
        block(&[
            ascii_field(Tag::Make, b"Canon"),
            ascii_field(Tag::Model, b"Canon EOS 5D"),
            ascii_field(Tag::DateTime, b"2022:01:01 00:00:00"),
            ascii_field(Tag::DateTimeOriginal, b"2021:07:04 15:30:00"),
            ascii_field(Tag::OffsetTimeOriginal, b"+02:00"),
            ascii_field(Tag::GPSLatitudeRef, b"S"),
            dms_field(Tag::GPSLatitude, 33, 51, 244_800),
            ascii_field(Tag::GPSLongitudeRef, b"W"),
            dms_field(Tag::GPSLongitude, 151, 12, 550_800),
        ])
    }

    #[test]
    fn no_exif_falls_back_to_the_file_time() {
        let m = read(&png_with(&[]));
        let t = m.taken.unwrap();
        assert_eq!(t.source, TimeSource::FileModified);
        assert_eq!((t.seconds, t.offset_minutes), (1_600_000_000, Some(0)));
        assert_eq!(t.utc_seconds(), Some(1_600_000_000));
        assert_eq!((m.make, m.model, m.gps), (None, None, None));
        // Not an image at all, and an empty file: the same.
        assert_eq!(read(b"GIF89a....").taken, m.taken);
        assert_eq!(read(b"").taken, m.taken);
        // Before the epoch, whole seconds round down.
        assert_eq!(CaptureTime::file_modified(-1).seconds, -1);
    }

    #[test]
    fn date_time_original_alone_is_a_local_time_of_unknown_zone() {
        let exif = block(&[
            ascii_field(Tag::DateTime, b"2022:01:01 00:00:00"),
            ascii_field(Tag::DateTimeOriginal, b"2021:07:04 15:30:00"),
        ]);
        let t = read(&jpeg_with(&exif)).taken.unwrap();
        // 2021-07-04T15:30:00 as if UTC.
        assert_eq!(t.seconds, 1_625_412_600);
        assert_eq!((t.offset_minutes, t.source), (None, TimeSource::Exif));
        assert_eq!(t.utc_seconds(), None);
        // Only DateTimeDigitized: used; only the file's change time (DateTime): not a capture time.
        let digitized = block(&[ascii_field(Tag::DateTimeDigitized, b"2000:02:29 23:59:59")]);
        assert_eq!(
            read(&jpeg_with(&digitized)).taken.unwrap().seconds,
            951_868_799
        );
        let changed = block(&[ascii_field(Tag::DateTime, b"2022:01:01 00:00:00")]);
        assert_eq!(
            read(&jpeg_with(&changed)).taken.unwrap().source,
            TimeSource::FileModified
        );
    }

    #[test]
    fn an_offset_makes_the_time_an_instant() {
        let m = read(&jpeg_with(&full_exif()));
        let t = m.taken.unwrap();
        assert_eq!((t.seconds, t.offset_minutes), (1_625_412_600, Some(120)));
        assert_eq!(t.utc_seconds(), Some(1_625_412_600 - 7200));
        let west = block(&[
            ascii_field(Tag::DateTimeOriginal, b"2016:08:07 09:10:11"),
            ascii_field(Tag::OffsetTimeOriginal, b"-03:30"),
        ]);
        let info = PhotoInfo::from(&read(&jpeg_with(&west)));
        assert_eq!(info.taken_offset_minutes, Some(-210));
        assert_eq!(info.taken_utc(), Some(info.taken.unwrap() + 210 * 60));
        // A nonsense offset is dropped, the time kept.
        let bad = block(&[
            ascii_field(Tag::DateTimeOriginal, b"2016:08:07 09:10:11"),
            ascii_field(Tag::OffsetTimeOriginal, b"+25:00"),
        ]);
        let t = read(&jpeg_with(&bad)).taken.unwrap();
        assert_eq!((t.offset_minutes, t.source), (None, TimeSource::Exif));
    }

    #[test]
    fn impossible_dates_fall_back_to_the_file_time() {
        for text in [
            &b"0000:00:00 00:00:00"[..],
            b"    :  :     :  :  ",
            b"2021:02:29 10:00:00",
            b"2021:13:01 10:00:00",
            b"2021:04:31 10:00:00",
            b"2021:04:30 24:00:00",
            b"yesterday",
        ] {
            let exif = block(&[ascii_field(Tag::DateTimeOriginal, text)]);
            let t = read(&jpeg_with(&exif)).taken.unwrap();
            assert_eq!(t.source, TimeSource::FileModified, "{text:?}");
        }
    }

    #[test]
    fn make_and_model_are_cleaned_and_joined_once() {
        let camera = |make: &[u8], model: &[u8]| {
            let m = read(&jpeg_with(&block(&[
                ascii_field(Tag::Make, make),
                ascii_field(Tag::Model, model),
            ])));
            (m.make.clone(), m.camera())
        };
        assert_eq!(
            camera(b"Canon", b"Canon EOS 5D"),
            (Some("Canon".into()), Some("Canon EOS 5D".into()))
        );
        assert_eq!(
            camera(b"NIKON CORPORATION", b"NIKON D750").1.as_deref(),
            Some("NIKON D750")
        );
        assert_eq!(
            camera(b"Apple", b"iPhone 12").1.as_deref(),
            Some("Apple iPhone 12")
        );
        assert_eq!(
            camera(b"OLYMPUS IMAGING CORP.  ", b"E-M5").1.as_deref(),
            Some("OLYMPUS E-M5")
        );
        // NULs padding and spaces go; a model that only starts with the make's letters is not a
        // repetition ("Canonet" is not "Canon" twice).
        assert_eq!(
            camera(b"  SONY\0\0\0", b"ILCE-7M3\0 ").1.as_deref(),
            Some("SONY ILCE-7M3")
        );
        assert_eq!(
            camera(b"Canon", b"Canonet QL17").1.as_deref(),
            Some("Canon Canonet QL17")
        );
        // Only one of the two; blank values are none; Latin-1 bytes survive.
        assert_eq!(camera(b"Leica", b"   ").1.as_deref(), Some("Leica"));
        assert_eq!(camera(b"\0\0", b"X100V").1.as_deref(), Some("X100V"));
        assert_eq!(camera(b"Ca\xf1on", b"").1.as_deref(), Some("Cañon"));
        let long = vec![b'x'; 500];
        assert_eq!(
            camera(&long, b"").0.unwrap().chars().count(),
            MAX_NAME_CHARS
        );
    }

    #[test]
    fn gps_references_are_applied_and_nonsense_is_dropped() {
        let [lat, lon] = read(&jpeg_with(&full_exif())).gps.unwrap();
        assert!((lat - -33.8568).abs() < 1e-6, "{lat}");
        assert!((lon - -151.2153).abs() < 1e-6, "{lon}");
        let gps = |fields: &[Field]| read(&jpeg_with(&block(fields))).gps;
        let north_east = gps(&[
            ascii_field(Tag::GPSLatitudeRef, b"N"),
            dms_field(Tag::GPSLatitude, 48, 51, 302_400),
            ascii_field(Tag::GPSLongitudeRef, b"E"),
            dms_field(Tag::GPSLongitude, 2, 17, 402_000),
        ])
        .unwrap();
        assert!((north_east[0] - 48.8584).abs() < 1e-6 && (north_east[1] - 2.2945).abs() < 1e-6);
        // Latitude past the pole, a bad reference, null island, latitude alone: none.
        assert_eq!(
            gps(&[
                dms_field(Tag::GPSLatitude, 91, 0, 0),
                dms_field(Tag::GPSLongitude, 1, 0, 0)
            ]),
            None
        );
        assert_eq!(
            gps(&[
                ascii_field(Tag::GPSLatitudeRef, b"X"),
                dms_field(Tag::GPSLatitude, 10, 0, 0),
                dms_field(Tag::GPSLongitude, 10, 0, 0),
            ]),
            None
        );
        assert_eq!(
            gps(&[
                dms_field(Tag::GPSLatitude, 0, 0, 0),
                dms_field(Tag::GPSLongitude, 0, 0, 0)
            ]),
            None
        );
        assert_eq!(gps(&[dms_field(Tag::GPSLatitude, 10, 0, 0)]), None);
        // A zero denominator is no number.
        let zero = Field {
            tag: Tag::GPSLatitude,
            ifd_num: In::PRIMARY,
            value: Value::Rational(vec![Rational { num: 1, denom: 0 }]),
        };
        assert_eq!(gps(&[zero, dms_field(Tag::GPSLongitude, 1, 0, 0)]), None);
    }

    #[test]
    fn the_block_is_found_in_png_webp_and_tiff_too() {
        let exif = full_exif();
        let png = png_with(&[
            png_chunk(b"tEXt", b"Comment\0hi", None),
            png_chunk(b"eXIf", &exif, None),
        ]);
        let webp = webp_with(&exif, None);
        for (name, bytes) in [("png", png), ("webp", webp), ("tiff", exif.clone())] {
            let m = read(&bytes);
            assert_eq!(m.camera().as_deref(), Some("Canon EOS 5D"), "{name}");
            assert_eq!(m.taken.unwrap().source, TimeSource::Exif, "{name}");
        }
        // The JPEG identifier some writers put into PNG's block is dropped.
        let mut prefixed = b"Exif\0\0".to_vec();
        prefixed.extend(&exif);
        let png = png_with(&[png_chunk(b"eXIf", &prefixed, None)]);
        assert_eq!(read(&png).make.as_deref(), Some("Canon"));
        // eXIf after the image data is not looked for (the format puts it before).
        let mut late = b"\x89PNG\r\n\x1a\n".to_vec();
        late.extend(png_chunk(b"IDAT", &[1], None));
        late.extend(png_chunk(b"eXIf", &exif, None));
        assert_eq!(exif_block(&mut Cursor::new(late)), None);
    }

    #[test]
    fn corrupt_blocks_and_broken_files_are_no_error() {
        let exif = full_exif();
        // Garbage in the block, a truncated block, a truncated file, bad segment lengths.
        let cases: Vec<Vec<u8>> = vec![
            jpeg_with(b"not a tiff header at all"),
            jpeg_with(&exif[..exif.len() / 2]),
            jpeg_with(&exif)[..40].to_vec(),
            vec![0xff, 0xd8, 0xff, 0xe1, 0x00, 0x01],
            vec![0xff, 0xd8, 0x12, 0x34],
            png_with(&[png_chunk(b"eXIf", b"MM\0*\0\0\0\x08\xff\xff", None)]),
            webp_with(b"II*\0\xff\xff\xff\xff", None),
            b"II*\0\0\0\0\x08".to_vec(),
            b"MM\0*\xff\xff\xff\xff".to_vec(),
        ];
        for (i, bytes) in cases.iter().enumerate() {
            let m = read(bytes);
            assert_eq!(
                m.taken.unwrap().source,
                TimeSource::FileModified,
                "case {i}"
            );
        }
        // Every prefix of a good file: never a panic.
        let good = jpeg_with(&exif);
        for cut in 0..good.len() {
            let _ = read(&good[..cut]);
        }
    }

    #[test]
    fn huge_blocks_are_skipped_without_reading_them() {
        // A chunk that claims 2 GiB in a file of a few bytes, and a real 2 MiB block.
        let claims = png_with(&[png_chunk(b"eXIf", b"MM", Some(i32::MAX as u32))]);
        assert_eq!(exif_block(&mut Cursor::new(claims)), None);
        let claims = webp_with(b"II", Some(u32::MAX - 1));
        assert_eq!(exif_block(&mut Cursor::new(claims)), None);
        let mut big = full_exif();
        big.resize(2 * MAX_EXIF_BYTES, 0);
        let png = png_with(&[png_chunk(b"eXIf", &big, None)]);
        assert_eq!(exif_block(&mut Cursor::new(png)), None);
        let webp = webp_with(&big, None);
        assert_eq!(exif_block(&mut Cursor::new(webp)), None);
        // A big TIFF: only its first MiB is read, enough for IFDs at its start.
        let found = exif_block(&mut Cursor::new(big.clone())).unwrap();
        assert_eq!(found.len(), MAX_EXIF_BYTES);
        assert_eq!(
            PhotoMetadata::from_exif(found).make.as_deref(),
            Some("Canon")
        );
        // A JPEG of nothing but empty segments stops after MAX_SEGMENTS of them.
        let mut many = vec![0xff, 0xd8];
        for _ in 0..(MAX_SEGMENTS + 10) {
            many.extend([0xff, 0xe2, 0, 2]);
        }
        many.extend(jpeg_with(&full_exif())[2..].iter());
        assert_eq!(exif_block(&mut Cursor::new(many)), None);
    }

    #[test]
    fn file_times_follow_the_file_and_exif_times_stay() {
        let exif = read(&jpeg_with(&full_exif()));
        assert_eq!(exif.clone().or_file_time(5), exif);
        let plain = PhotoMetadata::file_time(1_000_000_000_000);
        let moved = plain.clone().or_file_time(2_000_000_000_000);
        assert_eq!(moved.taken.unwrap().seconds, 2000);
        let info = PhotoInfo::from(&exif);
        assert!(info.camera_contains("eos 5"));
        assert!(!PhotoInfo::default().camera_contains(""));
        assert_eq!(info.taken_source, Some(TimeSource::Exif));
        let json = serde_json::to_value(PhotoInfo::from(&plain)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "taken": 1000,
                "taken_offset_minutes": 0,
                "taken_source": "file_modified"
            })
        );
    }
}
