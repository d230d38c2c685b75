//! Query-string parameters of the search routes, validated with messages a user can act on.

use std::collections::HashMap;

use crate::engine::{Filters, SearchParams, MAX_K};
use crate::query::{parse, Query};

/// Raw query-string parameters.
pub type RawParams = HashMap<String, String>;

/// Default page size.
pub const DEFAULT_K: usize = 40;
/// Largest accepted offset.
pub const MAX_OFFSET: usize = 1_000_000;

fn number<T: std::str::FromStr>(raw: &RawParams, name: &str) -> Result<Option<T>, String> {
    match raw.get(name).map(|s| s.trim()).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(s) => s
            .parse()
            .map(Some)
            .map_err(|_| format!("parameter {name}='{s}' is not a valid number")),
    }
}

/// `after` / `before`: an RFC 3339 date (`2024-05-01`) or date-time (`2024-05-01T18:30:00`, with
/// or without `Z` or an offset), as wall-clock seconds read as if UTC, the way photo capture
/// times are kept (most cameras record no time zone, so an offset given is not applied).
fn wall_clock(raw: &RawParams, name: &str) -> Result<Option<i64>, String> {
    match raw.get(name).map(|s| s.trim()).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(text) => parse_wall_clock(text).map(Some).ok_or_else(|| {
            format!(
                "parameter {name}='{text}' is not a date (2024-05-01) or date-time \
                 (2024-05-01T18:30:00)"
            )
        }),
    }
}

/// The wall-clock seconds of an RFC 3339 date or date-time (its offset, if any, dropped).
pub fn parse_wall_clock(text: &str) -> Option<i64> {
    let civil = text
        .strip_suffix(['Z', 'z'])
        .or_else(|| {
            let cut = text.len().checked_sub(6)?;
            let (head, offset) = (text.get(..cut)?, text.get(cut..)?);
            let b = offset.as_bytes();
            (head.len() > 10
                && (b[0] == b'+' || b[0] == b'-')
                && b[3] == b':'
                && offset[1..3].bytes().all(|c| c.is_ascii_digit())
                && offset[4..].bytes().all(|c| c.is_ascii_digit()))
            .then_some(head)
        })
        .unwrap_or(text);
    let datetime = match civil.parse::<jiff::civil::Date>() {
        Ok(date) if civil.len() == 10 => date.to_datetime(jiff::civil::Time::midnight()),
        _ => civil.parse::<jiff::civil::DateTime>().ok()?,
    };
    let epoch = jiff::civil::date(1970, 1, 1).at(0, 0, 0, 0);
    Some(datetime.duration_since(epoch).as_secs())
}

/// Parses `q` (when `with_query`), `k`, `offset`, `threshold`, `ef`, `group`, `path`, `root`,
/// `min_width`, `min_height`, `after`, `before`, `camera`. Returns the query, the parameters and whether to group by image.
pub fn parse_search(
    raw: &RawParams,
    with_query: bool,
) -> Result<(Option<Query>, SearchParams, bool), String> {
    let query = if with_query {
        match raw.get("q") {
            None => return Err("missing parameter q (the text to search for)".into()),
            Some(q) => Some(parse(q)?),
        }
    } else {
        None
    };
    let k = number::<usize>(raw, "k")?.unwrap_or(DEFAULT_K);
    if k == 0 || k > MAX_K {
        return Err(format!(
            "k must be between 1 and {MAX_K} (use offset to page further)"
        ));
    }
    let offset = number::<usize>(raw, "offset")?.unwrap_or(0);
    if offset > MAX_OFFSET {
        return Err(format!("offset must be at most {MAX_OFFSET}"));
    }
    let threshold = number::<f32>(raw, "threshold")?;
    if let Some(t) = threshold {
        if !t.is_finite() || !(0.0..=1.0).contains(&t) {
            return Err("threshold must be a number between 0 and 1".into());
        }
    }
    let ef = number::<usize>(raw, "ef")?;
    if ef.is_some_and(|e| e == 0 || e > 10_000) {
        return Err("ef must be between 1 and 10000".into());
    }
    let group_images = match raw.get("group").map(String::as_str) {
        None | Some("objects") => false,
        Some("images") => true,
        Some(other) => {
            return Err(format!(
                "group must be 'objects' or 'images', not '{other}'"
            ))
        }
    };
    let sort = match raw.get("sort").map(String::as_str) {
        None | Some("" | "score") => crate::engine::SortOrder::Score,
        Some("time") => crate::engine::SortOrder::Time,
        Some(other) => {
            return Err(format!(
                "sort must be 'score' or 'time', not '{}'",
                other.escape_debug()
            ))
        }
    };
    let filters = Filters {
        path_prefix: raw.get("path").filter(|p| !p.is_empty()).cloned(),
        root: number(raw, "root")?,
        min_width: number(raw, "min_width")?,
        min_height: number(raw, "min_height")?,
        taken_after: wall_clock(raw, "after")?,
        taken_before: wall_clock(raw, "before")?,
        camera: raw
            .get("camera")
            .map(|c| c.trim())
            .filter(|c| !c.is_empty())
            .map(str::to_string),
    };
    Ok((
        query,
        SearchParams {
            k,
            offset,
            threshold,
            ef,
            filters,
            sort,
            cancel: crate::engine::Cancel::new(),
        },
        group_images,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_times_read_as_wall_clock_seconds() {
        let day = parse_wall_clock("2024-05-01").unwrap();
        assert_eq!(day, 1_714_521_600);
        assert_eq!(parse_wall_clock("2024-05-01T00:00:00"), Some(day));
        assert_eq!(parse_wall_clock("2024-05-01T18:30:00"), Some(day + 66_600));
        assert_eq!(parse_wall_clock("2024-05-01T18:30:00Z"), Some(day + 66_600));
        assert_eq!(
            parse_wall_clock("2024-05-01T18:30:00+02:00"),
            Some(day + 66_600)
        );
        assert_eq!(
            parse_wall_clock("2024-05-01T18:30:00.5-07:30"),
            Some(day + 66_600)
        );
        for bad in [
            "",
            "2024",
            "2024-02-30",
            "2024-05-01T25:00:00",
            "May 1",
            "2024-05-01+02:00",
        ] {
            assert_eq!(parse_wall_clock(bad), None, "{bad}");
        }
    }

    fn raw(pairs: &[(&str, &str)]) -> RawParams {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn bad_parameters_get_messages() {
        assert!(parse_search(&raw(&[]), true)
            .unwrap_err()
            .contains("missing parameter q"));
        assert!(parse_search(&raw(&[("q", "")]), true)
            .unwrap_err()
            .contains("empty"));
        assert!(parse_search(&raw(&[("q", "cat"), ("k", "0")]), true)
            .unwrap_err()
            .contains("k must be"));
        assert!(parse_search(&raw(&[("q", "cat"), ("k", "99999")]), true)
            .unwrap_err()
            .contains("k must be"));
        assert!(parse_search(&raw(&[("q", "cat"), ("k", "ten")]), true)
            .unwrap_err()
            .contains("not a valid number"));
        assert!(
            parse_search(&raw(&[("q", "cat"), ("threshold", "NaN")]), true)
                .unwrap_err()
                .contains("threshold")
        );
        assert!(
            parse_search(&raw(&[("q", "cat"), ("threshold", "2")]), true)
                .unwrap_err()
                .contains("threshold")
        );
        assert!(parse_search(&raw(&[("q", "cat"), ("group", "x")]), true)
            .unwrap_err()
            .contains("group"));
        assert!(
            parse_search(&raw(&[("q", "cat"), ("after", "yesterday")]), true)
                .unwrap_err()
                .contains("after")
        );
        assert!(
            parse_search(&raw(&[("q", "cat"), ("before", "2024-13-01")]), true)
                .unwrap_err()
                .contains("before")
        );
        let (q, p, g) = parse_search(
            &raw(&[
                ("q", "cat"),
                ("k", "5"),
                ("offset", "10"),
                ("group", "images"),
            ]),
            true,
        )
        .unwrap();
        assert_eq!(q.unwrap().positives[0].text, "cat");
        assert_eq!((p.k, p.offset, g), (5, 10, true));
    }
}
