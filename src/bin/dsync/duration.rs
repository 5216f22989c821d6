//! Durations on the command line: `500ms`, `5s`, `1.5s`, `2m`, `1h`, `1m30s`; a bare number is
//! seconds.

use std::time::Duration;

/// Parses a duration for clap (`value_parser = duration::parse`).
pub fn parse(input: &str) -> Result<Duration, String> {
    let text = input.trim();
    if text.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(secs) = text.parse::<f64>() {
        return seconds(secs, input);
    }
    let mut total = 0f64;
    let mut rest = text;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if number_len == 0 {
            return Err(format!(
                "bad duration {input:?}: expected a number before {rest:?} (e.g. 500ms, 5s, 2m, 1h)"
            ));
        }
        let (number, after) = rest.split_at(number_len);
        let value: f64 = number
            .parse()
            .map_err(|_| format!("bad duration {input:?}: {number:?} is not a number"))?;
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, tail) = after.split_at(unit_len);
        let scale = match unit {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "" => {
                return Err(format!(
                    "bad duration {input:?}: {number} needs a unit (ms, s, m or h)"
                ));
            }
            other => {
                return Err(format!(
                    "bad duration {input:?}: unknown unit {other:?} (use ms, s, m or h)"
                ));
            }
        };
        total += value * scale;
        rest = tail;
    }
    seconds(total, input)
}

fn seconds(secs: f64, input: &str) -> Result<Duration, String> {
    if secs.is_sign_negative() {
        return Err(format!("bad duration {input:?}: must not be negative"));
    }
    Duration::try_from_secs_f64(secs).map_err(|_| format!("bad duration {input:?}: out of range"))
}

/// A duration for people: `850ms`, `12s`, `3m05s`, `2h10m`.
pub fn human(d: Duration) -> String {
    let secs = d.as_secs();
    if secs == 0 {
        return format!("{}ms", d.as_millis());
    }
    if secs < 60 {
        return format!("{secs}s");
    }
    if secs < 3600 {
        return format!("{}m{:02}s", secs / 60, secs % 60);
    }
    if secs < 86_400 {
        return format!("{}h{:02}m", secs / 3600, (secs % 3600) / 60);
    }
    format!("{}d{:02}h", secs / 86_400, (secs % 86_400) / 3600)
}

/// A duration without rounding, for limits people compare with what they typed: `3s`, `1.5s`,
/// `500ms`, `0s` (below a millisecond: Rust's own notation).
pub fn exact(d: Duration) -> String {
    if d.is_zero() {
        return "0s".into();
    }
    if d.subsec_nanos() % 1_000_000 != 0 {
        return format!("{d:?}");
    }
    let ms = d.as_millis();
    match (ms < 1000, ms % 1000 == 0) {
        (true, _) => format!("{ms}ms"),
        (false, true) => format!("{}s", ms / 1000),
        (false, false) => format!("{}s", ms as f64 / 1000.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_bare_seconds() {
        assert_eq!(parse("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
    }

    #[test]
    fn rejects_what_it_cannot_read() {
        for bad in [
            "", "s", "5x", "5 s", "-1", "-1s", "1e400", "m5", "1..2s", "5sms",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(parse("5x").unwrap_err().contains("unknown unit"));
        assert!(parse("3m5").unwrap_err().contains("needs a unit"));
    }

    #[test]
    fn prints_for_people() {
        assert_eq!(human(Duration::from_millis(850)), "850ms");
        assert_eq!(human(Duration::from_secs(12)), "12s");
        assert_eq!(human(Duration::from_secs(185)), "3m05s");
        assert_eq!(human(Duration::from_secs(7800)), "2h10m");
        assert_eq!(human(Duration::from_secs(90_000)), "1d01h");
        assert_eq!(exact(Duration::ZERO), "0s");
        assert_eq!(exact(Duration::from_millis(500)), "500ms");
        assert_eq!(exact(Duration::from_millis(3100)), "3.1s");
        assert_eq!(exact(Duration::from_secs(15)), "15s");
        assert_eq!(exact(Duration::from_micros(1500)), "1.5ms");
    }
}
