//! The query language: what a user can type in the search box.
//!
//! - `cat` or `red car`: one concept (all words together are one text for the text tower);
//! - `"red car"`: quotes keep a phrase together (and allow commas inside it);
//! - `cat, dog`: several concepts, any of them (OR);
//! - `cat -dog`: drop objects that match `dog` better than `cat` (`-"red car"` works too);
//! - `2:cat, dog`: weights rank `cat` matches higher than `dog` matches.

/// One thing to look for, with its weight.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct Concept {
    /// Text given to the text tower.
    pub text: String,
    /// Ranking weight (default 1).
    pub weight: f32,
}

/// A parsed query.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct Query {
    /// Concepts to find (OR); for an `&` query, every concept of every term.
    pub positives: Vec<Concept>,
    /// Concepts whose better matches are dropped.
    pub negatives: Vec<String>,
    /// For `a & b`: the terms a photo must all hold, each matched by its own box (a term's
    /// concepts are alternatives); empty for other queries.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub together: Vec<Vec<Concept>>,
}

/// Longest accepted query, in bytes.
pub const MAX_QUERY_BYTES: usize = 1000;

/// Splits `q` at every `separator` outside quotes.
fn split_top_level(q: &str, separator: char) -> Vec<String> {
    let mut items = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for c in q.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                current.push(c);
            }
            c if c == separator && !quoted => items.push(std::mem::take(&mut current)),
            _ => current.push(c),
        }
    }
    items.push(current);
    items
}

/// Splits one item into tokens: words, or quoted phrases (quotes removed), keeping a leading `-`.
fn tokens(item: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for c in item.chars() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                if !current.is_empty() {
                    out.push(std::mem::take(&mut current));
                }
            }
            _ => current.push(c),
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

fn parse_weight(token: &str) -> Option<(f32, &str)> {
    let (w, rest) = token.split_once(':')?;
    let weight: f32 = w.parse().ok()?;
    (weight.is_finite() && weight > 0.0 && weight <= 100.0).then_some((weight, rest))
}

/// Parses a query; the error says what is wrong in words a user understands.
pub fn parse(q: &str) -> Result<Query, String> {
    if q.len() > MAX_QUERY_BYTES {
        return Err(format!(
            "the query is {} bytes long; the limit is {MAX_QUERY_BYTES}",
            q.len()
        ));
    }
    if q.matches('"').count() % 2 == 1 {
        return Err("unbalanced quote in the query".into());
    }
    let terms = split_top_level(q, '&');
    if terms.len() > 1 {
        return parse_together(&terms);
    }
    let mut query = Query {
        positives: Vec::new(),
        negatives: Vec::new(),
        together: Vec::new(),
    };
    parse_alternatives(q, &mut query);
    if query.positives.is_empty() {
        return Err(if query.negatives.is_empty() {
            "the query is empty".into()
        } else {
            "the query only excludes things; add something to look for, e.g. \"cat -dog\"".into()
        });
    }
    Ok(query)
}

/// `a & b & …`: every term parsed as a query of its own (alternatives, weights); negatives
/// apply to all.
fn parse_together(terms: &[String]) -> Result<Query, String> {
    if terms.len() > crate::together::MAX_REQUIREMENTS {
        return Err(format!(
            "at most {} terms can be joined with &",
            crate::together::MAX_REQUIREMENTS
        ));
    }
    let mut query = Query {
        positives: Vec::new(),
        negatives: Vec::new(),
        together: Vec::new(),
    };
    for term in terms {
        let before = query.positives.len();
        parse_alternatives(term, &mut query);
        if query.positives.len() == before {
            return Err(format!(
                "each side of & needs something to look for (\"{}\" has nothing), e.g. \"cat & sofa\"",
                term.trim()
            ));
        }
        query.together.push(query.positives[before..].to_vec());
    }
    Ok(query)
}

/// Adds the comma-separated alternatives of `q` (and its `-negatives`) to `query`.
fn parse_alternatives(q: &str, query: &mut Query) {
    for item in split_top_level(q, ',') {
        let mut words = Vec::new();
        let mut weight = 1.0;
        for (i, token) in tokens(&item).into_iter().enumerate() {
            if let Some(neg) = token.strip_prefix('-') {
                if !neg.trim().is_empty() {
                    query.negatives.push(neg.trim().to_string());
                }
                continue;
            }
            if i == 0 {
                if let Some((w, rest)) = parse_weight(&token) {
                    weight = w;
                    if !rest.is_empty() {
                        words.push(rest.to_string());
                    }
                    continue;
                }
            }
            words.push(token);
        }
        let text = words.join(" ").trim().to_string();
        if !text.is_empty() {
            query.positives.push(Concept { text, weight });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(text: &str, weight: f32) -> Concept {
        Concept {
            text: text.into(),
            weight,
        }
    }

    #[test]
    fn parses_the_documented_forms() {
        assert_eq!(parse("cat").unwrap().positives, vec![c("cat", 1.0)]);
        assert_eq!(
            parse("  red   car ").unwrap().positives,
            vec![c("red car", 1.0)]
        );
        assert_eq!(
            parse("\"red, car\"").unwrap().positives,
            vec![c("red, car", 1.0)]
        );
        assert_eq!(
            parse("cat, dog").unwrap().positives,
            vec![c("cat", 1.0), c("dog", 1.0)]
        );
        let q = parse("cat -dog -\"red car\"").unwrap();
        assert_eq!(q.positives, vec![c("cat", 1.0)]);
        assert_eq!(q.negatives, vec!["dog".to_string(), "red car".to_string()]);
        assert_eq!(
            parse("2:cat, 0.5:\"red car\"").unwrap().positives,
            vec![c("cat", 2.0), c("red car", 0.5)]
        );
        // Not a weight: stays part of the text.
        assert_eq!(
            parse("10:30 train").unwrap().positives,
            vec![c("30 train", 10.0)]
        );
        assert_eq!(
            parse("ratio 16:9").unwrap().positives,
            vec![c("ratio 16:9", 1.0)]
        );
    }

    #[test]
    fn explains_bad_queries() {
        assert!(parse("").unwrap_err().contains("empty"));
        assert!(parse(" , ,").unwrap_err().contains("empty"));
        assert!(parse("-dog").unwrap_err().contains("only excludes"));
        assert!(parse("\"cat").unwrap_err().contains("quote"));
        assert!(parse(&"x".repeat(10_000)).unwrap_err().contains("limit"));
        assert!(parse("cat & ").unwrap_err().contains("each side of &"));
        assert!(parse("cat & -dog").unwrap_err().contains("each side of &"));
        assert!(parse(&["a"; 9].join(" & "))
            .unwrap_err()
            .contains("at most"));
    }

    #[test]
    fn parses_objects_together() {
        let q = parse("cat, 2:kitten & sofa -dog").unwrap();
        assert_eq!(
            q.together,
            vec![vec![c("cat", 1.0), c("kitten", 2.0)], vec![c("sofa", 1.0)]]
        );
        assert_eq!(
            q.positives,
            vec![c("cat", 1.0), c("kitten", 2.0), c("sofa", 1.0)]
        );
        assert_eq!(q.negatives, vec!["dog".to_string()]);
        // Inside quotes, & is text.
        let q = parse("\"salt & pepper\"").unwrap();
        assert!(q.together.is_empty());
        assert_eq!(q.positives, vec![c("salt & pepper", 1.0)]);
    }
}
