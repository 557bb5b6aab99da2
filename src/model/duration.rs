//! Go-style durations, as Consul writes them in config files and API bodies.

use std::time::Duration;

/// Parses a Go duration (`"10s"`, `"1h30m"`, `"1.5s"`, `"250ms"`, `"0"`): one or more
/// number+unit pairs, units `ns us µs ms s m h`. Negative durations are rejected; the error
/// is a short reason, without the input.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    // Go's limit (i64 nanoseconds, about 292 years), so values round-trip with Consul.
    const MAX_NANOS: u128 = i64::MAX as u128;
    let body = s.strip_prefix('+').unwrap_or(s);
    if body.starts_with('-') {
        return Err("negative durations are not allowed".to_string());
    }
    if body == "0" {
        return Ok(Duration::ZERO);
    }
    if body.is_empty() {
        return Err("empty duration".to_string());
    }
    let mut rest = body;
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let number_len = rest.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_len);
        let unit_len = after.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let unit_nanos: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err(format!("missing unit after {number}")),
            other => return Err(format!("unknown unit {}", serde_json::to_string(other).unwrap_or_default())),
        };
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
            return Err(format!("invalid number before {}", serde_json::to_string(unit).unwrap_or_default()));
        }
        let too_large = || "duration too large".to_string();
        let whole: u128 = if whole.is_empty() { 0 } else { whole.parse().map_err(|_| too_large())? };
        // Digits past nanosecond precision of the hour unit cannot change the result.
        let fraction = &fraction[..fraction.len().min(18)];
        let fraction_nanos = if fraction.is_empty() {
            0
        } else {
            let digits: u128 = fraction.parse().map_err(|_| too_large())?;
            digits * unit_nanos / 10u128.pow(fraction.len() as u32)
        };
        total = whole
            .checked_mul(unit_nanos)
            .and_then(|n| n.checked_add(fraction_nanos))
            .and_then(|n| n.checked_add(total))
            .filter(|&n| n <= MAX_NANOS)
            .ok_or_else(too_large)?;
        rest = after;
    }
    let nanos = u64::try_from(total).map_err(|_| "duration too large".to_string())?;
    Ok(Duration::from_nanos(nanos))
}

/// A duration as Go prints it (`10s`, `1m30s`, `500ms`), as Consul shows check
/// intervals and session TTLs.
pub fn format_duration(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        return format!("{}ms", d.as_millis());
    }
    let total = d.as_secs();
    let (h, m) = (total / 3600, total % 3600 / 60);
    let s = (d - Duration::from_secs(h * 3600 + m * 60)).as_secs_f64();
    let seconds = format!("{s}s");
    match (h, m) {
        (0, 0) => seconds,
        (0, m) => format!("{m}m{seconds}"),
        (h, m) => format!("{h}h{m}m{seconds}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_as_go_does() {
        let cases = [(500, "500ms"), (1_000, "1s"), (10_000, "10s"), (90_000, "1m30s"), (3_600_000, "1h0m0s")];
        for (ms, text) in cases {
            assert_eq!(format_duration(Duration::from_millis(ms)), text);
        }
    }
}
