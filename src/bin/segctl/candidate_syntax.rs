//! The shell syntax of `segctl decide --candidate`, e.g.
//! `li-7 all=1,3@604800 any=2 none=4 cap=li:7/3/day cap=camp:9/10/3600s`.
//!
//! - `all=`, `any=`, `none=`: comma-separated segment ids, each optionally
//!   `@MAX_AGE_SECONDS`;
//! - `cap=KEY/LIMIT/WINDOW[@UTC_OFFSET_MINUTES]` with WINDOW one of `day`,
//!   `week`, `month`, `lifetime`, or `Ns` (rolling N seconds).

use segd::proto::{Calendar, Candidate, FrequencyCap, SegmentRef};

pub const SYNTAX_HELP: &str = "ID [all=SEG[@MAXAGE],..] [any=..] [none=..] [cap=KEY/LIMIT/day|week|month|lifetime|Ns[@UTC_OFFSET_MIN]]..";

pub fn parse_candidate(text: &str) -> Result<Candidate, String> {
    let mut words = text.split_whitespace();
    let id = words
        .next()
        .ok_or_else(|| format!("empty candidate; expected {SYNTAX_HELP}"))?;
    let mut candidate = Candidate {
        id: id.to_owned(),
        ..Candidate::default()
    };
    for word in words {
        let (field, value) = word
            .split_once('=')
            .ok_or_else(|| format!("{word:?}: expected FIELD=VALUE; syntax {SYNTAX_HELP}"))?;
        match field {
            "all" => candidate.all_of.extend(parse_refs(value)?),
            "any" => candidate.any_of.extend(parse_refs(value)?),
            "none" => candidate.none_of.extend(parse_refs(value)?),
            "cap" => candidate.caps.push(parse_cap(value)?),
            other => {
                return Err(format!(
                    "{other:?}: unknown field, use all, any, none or cap"
                ));
            }
        }
    }
    Ok(candidate)
}

fn parse_refs(value: &str) -> Result<Vec<SegmentRef>, String> {
    value
        .split(',')
        .map(|item| {
            let (id, max_age) = item.split_once('@').unwrap_or((item, "0"));
            Ok(SegmentRef {
                segment_id: id
                    .parse()
                    .map_err(|_| format!("{id:?}: not a segment id"))?,
                max_age_seconds: max_age
                    .parse()
                    .map_err(|_| format!("{max_age:?}: not a max age in seconds"))?,
            })
        })
        .collect()
}

fn parse_cap(value: &str) -> Result<FrequencyCap, String> {
    let (body, offset) = value.split_once('@').unwrap_or((value, "0"));
    let parts: Vec<&str> = body.rsplitn(3, '/').collect();
    let [window, limit, key] = parts.as_slice() else {
        return Err(format!("{value:?}: expected KEY/LIMIT/WINDOW"));
    };
    let (calendar, window_seconds) = match *window {
        "day" => (Calendar::Day, 0),
        "week" => (Calendar::Week, 0),
        "month" => (Calendar::Month, 0),
        "lifetime" => (Calendar::Rolling, 0),
        seconds => {
            let digits = seconds.strip_suffix('s').unwrap_or(seconds);
            let window_seconds = digits.parse().map_err(|_| {
                format!("{seconds:?}: window must be day, week, month, lifetime or Ns")
            })?;
            (Calendar::Rolling, window_seconds)
        }
    };
    Ok(FrequencyCap {
        key: (*key).to_owned(),
        limit: limit
            .parse()
            .map_err(|_| format!("{limit:?}: not a limit"))?,
        window_seconds,
        calendar: calendar as i32,
        utc_offset_minutes: offset
            .parse()
            .map_err(|_| format!("{offset:?}: not a UTC offset in minutes"))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_example() {
        let candidate = parse_candidate(
            "li-7 all=1,3@604800 any=2 none=4 cap=li:7/3/day cap=camp:9/10/3600s@-300",
        )
        .unwrap();
        assert_eq!(candidate.id, "li-7");
        assert_eq!(candidate.all_of.len(), 2);
        assert_eq!(candidate.all_of[1].max_age_seconds, 604_800);
        assert_eq!(candidate.none_of[0].segment_id, 4);
        assert_eq!(candidate.caps[0].key, "li:7");
        assert_eq!(candidate.caps[0].calendar, Calendar::Day as i32);
        assert_eq!(candidate.caps[1].window_seconds, 3600);
        assert_eq!(candidate.caps[1].utc_offset_minutes, -300);
        assert!(parse_candidate("li-7 cap=li:7/x/day").is_err());
        assert!(parse_candidate("li-7 bogus=1").is_err());
    }
}
