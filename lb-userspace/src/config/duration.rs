//! Durations as operators write them: `500ms`, `90s`, `5m`, `2h`, `1h30m`.

use std::time::Duration;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DurationError {
    #[error("empty duration")]
    Empty,
    #[error("duration \"{text}\" is negative")]
    Negative { text: String },
    #[error("duration \"{text}\" is not a number followed by a unit (ms, s, m, h, d), like 90s or 5m")]
    Malformed { text: String },
    #[error("duration \"{text}\" is too long")]
    Overflow { text: String },
}

/// Parses one or more `<number><unit>` parts, units ms, s, m, h, d.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(DurationError::Empty);
    }
    if trimmed.starts_with('-') {
        return Err(DurationError::Negative { text: text.to_owned() });
    }
    let malformed = || DurationError::Malformed { text: text.to_owned() };
    let overflow = || DurationError::Overflow { text: text.to_owned() };
    let mut total = Duration::ZERO;
    let mut rest = trimmed;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return Err(malformed());
        }
        let number: u64 = rest[..digits].parse().map_err(|_| overflow())?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let unit_ms: u64 = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(malformed()),
        };
        rest = &rest[unit_len..];
        let ms = number.checked_mul(unit_ms).ok_or_else(overflow)?;
        total = total.checked_add(Duration::from_millis(ms)).ok_or_else(overflow)?;
    }
    Ok(total)
}

/// Formats a duration the way `parse_duration` reads it, to the second
/// (milliseconds below one second).
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs == 0 {
        return format!("{}ms", d.as_millis());
    }
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || out.is_empty() {
        out.push_str(&format!("{s}s"));
    }
    out
}

/// Formats time left before a deadline: rounded up to the second (a
/// deadline 2.9 s away is "3s", not "2s"), milliseconds below one second.
pub fn format_time_left(left: Duration) -> String {
    if left < Duration::from_secs(1) {
        return format_duration(left);
    }
    format_duration(Duration::from_secs(left.as_millis().div_ceil(1000) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_combinations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86400)));
    }

    #[test]
    fn rejects_bad_input_with_the_reason() {
        assert!(matches!(parse_duration("-5s"), Err(DurationError::Negative { .. })));
        assert!(matches!(parse_duration("abc"), Err(DurationError::Malformed { .. })));
        assert!(matches!(parse_duration("5"), Err(DurationError::Malformed { .. })));
        assert!(matches!(parse_duration("5x"), Err(DurationError::Malformed { .. })));
        assert!(matches!(parse_duration("s"), Err(DurationError::Malformed { .. })));
        assert_eq!(parse_duration(""), Err(DurationError::Empty));
        assert!(matches!(parse_duration("99999999999999999999s"), Err(DurationError::Overflow { .. })));
    }

    #[test]
    fn formats_back() {
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format_duration(Duration::from_secs(3)), "3s");
        assert_eq!(format_duration(Duration::from_millis(400)), "400ms");
        assert_eq!(format_time_left(Duration::from_millis(2900)), "3s");
        assert_eq!(format_time_left(Duration::from_millis(400)), "400ms");
    }
}
