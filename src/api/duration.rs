//! Durations in the Go/Kubernetes notation (`30s`, `5m`, `1h30m`, `1.5h`) that Flux and Argo CD users
//! already write. The CRD validates the same grammar with CEL's `duration()`.

use std::time::Duration;

/// The grammar as a regular expression; the CRD's CEL rules are generated from it ([`cel_rule`]).
pub const PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$";

/// The CEL rule that `self` is a duration of this grammar and `comparison` (e.g. `>= duration('10s')`)
/// holds: [`PATTERN`] as a CEL string literal, where a backslash is written twice.
pub fn cel_rule(comparison: &str) -> String {
    format!("self.matches('{}') && duration(self) {comparison}", PATTERN.replace('\\', "\\\\"))
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {0:?}: expected a Go duration such as 30s, 5m or 1h30m")]
pub struct InvalidDuration(pub String);

pub fn parse(text: &str) -> Result<Duration, InvalidDuration> {
    let invalid = || InvalidDuration(text.to_owned());
    let mut rest = text;
    let mut total = 0f64;
    if rest.is_empty() {
        return Err(invalid());
    }
    while !rest.is_empty() {
        let number_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(invalid)?;
        let (number, tail) = rest.split_at(number_len);
        let value: f64 = number.parse().map_err(|_| invalid())?;
        let unit_len = tail.find(|c: char| c.is_ascii_digit()).unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let seconds = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(invalid()),
        };
        total += value * seconds;
        rest = tail;
    }
    Duration::try_from_secs_f64(total).map_err(|_| invalid())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
    }

    #[test]
    fn rejects_what_go_rejects() {
        for bad in ["", "10", "s", "10 s", "-5m", "5d", "1h-5m", "1..5s", "abc"] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
