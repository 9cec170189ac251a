//! The natural order of pack versions, which decides whether a push goes
//! back in time. Pure: must never look at files or the served state.

use std::cmp::Ordering;

/// Orders versions naturally: runs of digits compare as numbers, the rest as
/// text, so `v9 < v10` and `2026-11-02 < 2026-11-10`.
pub fn compare_versions(left: &str, right: &str) -> Ordering {
    let mut left_chunks = chunks(left);
    let mut right_chunks = chunks(right);
    loop {
        match (left_chunks.next(), right_chunks.next()) {
            (None, None) => return left.cmp(right),
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(left_chunk), Some(right_chunk)) => {
                let both_numeric = left_chunk.as_bytes()[0].is_ascii_digit()
                    && right_chunk.as_bytes()[0].is_ascii_digit();
                let order = if both_numeric {
                    let left_digits = left_chunk.trim_start_matches('0');
                    let right_digits = right_chunk.trim_start_matches('0');
                    left_digits
                        .len()
                        .cmp(&right_digits.len())
                        .then_with(|| left_digits.cmp(right_digits))
                } else {
                    left_chunk.cmp(right_chunk)
                };
                if order != Ordering::Equal {
                    return order;
                }
            }
        }
    }
}

/// Splits into maximal runs of digits and of non-digits.
fn chunks(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        let first = rest.as_bytes().first()?;
        let digit = first.is_ascii_digit();
        let end = rest
            .bytes()
            .position(|byte| byte.is_ascii_digit() != digit)
            .unwrap_or(rest.len());
        let (chunk, tail) = rest.split_at(end);
        rest = tail;
        Some(chunk)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_order_naturally() {
        assert_eq!(compare_versions("v9", "v10"), Ordering::Less);
        assert_eq!(compare_versions("2026-11-02", "2026-11-10"), Ordering::Less);
        assert_eq!(compare_versions("7", "7"), Ordering::Equal);
        assert_eq!(compare_versions("1.2", "1.10"), Ordering::Less);
        assert_eq!(compare_versions("b", "a"), Ordering::Greater);
        assert_eq!(compare_versions("v1", "v1.1"), Ordering::Less);
    }
}
