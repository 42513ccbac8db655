//! Parsing of PostgreSQL's date and time output (DateStyle `ISO`, IntervalStyle
//! `postgres`) into the numbers Debezium writes, and the ISO-8601 strings of
//! `ZonedTimestamp` and `ZonedTime`.
//!
//! Calendar arithmetic is proleptic Gregorian with astronomical year numbering
//! (1 BC is year 0), like both PostgreSQL and `java.time`; it is hand-written
//! because PostgreSQL's range (4713 BC to 5874897 AD) exceeds chrono's.

pub const MICROS_PER_SECOND: i64 = 1_000_000;
pub const MICROS_PER_DAY: i64 = 86_400 * MICROS_PER_SECOND;
/// Debezium's average month (365.25 / 12 days) in microseconds: exactly
/// 30.4375 days = 2 629 800 seconds.
pub const MICROS_PER_AVG_MONTH: i64 = 2_629_800 * MICROS_PER_SECOND;

/// A date or timestamp: a finite value or one of PostgreSQL's infinities.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Instant {
    /// Days (dates) or microseconds (timestamps) since 1970-01-01.
    Finite(i64),
    PosInfinity,
    NegInfinity,
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The proleptic Gregorian date of a day count since 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A tiny cursor over ASCII text.
struct Cursor<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Cursor<'a> {
    fn new(s: &'a [u8]) -> Self {
        Self { s, i: 0 }
    }
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn expect(&mut self, b: u8) -> Option<()> {
        self.eat(b).then_some(())
    }
    fn done(&self) -> bool {
        self.i == self.s.len()
    }
    fn rest(&self) -> &'a [u8] {
        &self.s[self.i..]
    }
    /// One or more digits as a number (at most 18 digits).
    fn digits(&mut self) -> Option<i64> {
        let start = self.i;
        let mut n: i64 = 0;
        while let Some(b) = self.peek().filter(u8::is_ascii_digit) {
            if self.i - start >= 18 {
                return None;
            }
            n = n * 10 + i64::from(b - b'0');
            self.i += 1;
        }
        (self.i > start).then_some(n)
    }
    /// Exactly `width` digits.
    fn fixed(&mut self, width: usize) -> Option<i64> {
        let start = self.i;
        let n = self.digits()?;
        (self.i - start == width).then_some(n)
    }
    /// An optional `.f{1,6}` fraction as microseconds.
    fn fraction_micros(&mut self) -> Option<i64> {
        if !self.eat(b'.') {
            return Some(0);
        }
        let start = self.i;
        let mut n: i64 = 0;
        while let Some(b) = self.peek().filter(u8::is_ascii_digit) {
            if self.i - start >= 6 {
                return None;
            }
            n = n * 10 + i64::from(b - b'0');
            self.i += 1;
        }
        let len = self.i - start;
        if len == 0 {
            return None;
        }
        Some(n * 10_i64.pow((6 - len) as u32))
    }
}

fn infinity(s: &[u8]) -> Option<Instant> {
    match s {
        b"infinity" => Some(Instant::PosInfinity),
        b"-infinity" => Some(Instant::NegInfinity),
        _ => None,
    }
}

/// `YYYY-MM-DD` (year of at least one digit) as (year, month, day), before any era suffix.
fn date_part(c: &mut Cursor<'_>) -> Option<(i64, u32, u32)> {
    let year = c.digits()?;
    c.expect(b'-')?;
    let month = c.fixed(2)?;
    c.expect(b'-')?;
    let day = c.fixed(2)?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    Some((year, month as u32, day as u32))
}

/// `HH:MM:SS[.ffffff]` as microseconds of the day; 24:00:00 allowed when `allow_24`.
fn time_part(c: &mut Cursor<'_>, allow_24: bool) -> Option<i64> {
    let h = c.fixed(2)?;
    c.expect(b':')?;
    let m = c.fixed(2)?;
    c.expect(b':')?;
    let s = c.fixed(2)?;
    let f = c.fraction_micros()?;
    let micros = ((h * 60 + m) * 60 + s) * MICROS_PER_SECOND + f;
    let limit = if allow_24 {
        MICROS_PER_DAY
    } else {
        MICROS_PER_DAY - 1
    };
    (m < 60 && s < 60 && micros <= limit).then_some(micros)
}

/// `+HH[:MM[:SS]]` or `-…` as seconds east of UTC.
fn offset_part(c: &mut Cursor<'_>) -> Option<i64> {
    let sign = match c.peek()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    c.i += 1;
    let h = c.fixed(2)?;
    let mut secs = h * 3600;
    if c.eat(b':') {
        secs += c.fixed(2)? * 60;
        if c.eat(b':') {
            secs += c.fixed(2)?;
        }
    }
    Some(sign * secs)
}

/// An optional ` BC` suffix turns the year of era into an astronomical year.
fn era(c: &mut Cursor<'_>, year: i64) -> Option<i64> {
    if c.rest() == b" BC" {
        c.i = c.s.len();
        Some(1 - year)
    } else {
        Some(year)
    }
}

/// `date` output: days since 1970-01-01.
pub fn parse_date(s: &[u8]) -> Option<Instant> {
    if let Some(inf) = infinity(s) {
        return Some(inf);
    }
    let mut c = Cursor::new(s);
    let (year, month, day) = date_part(&mut c)?;
    let year = era(&mut c, year)?;
    c.done()
        .then(|| Instant::Finite(days_from_civil(year, month, day)))
}

/// `time` output: microseconds of the day (24:00:00 is 86 400 000 000).
pub fn parse_time(s: &[u8]) -> Option<i64> {
    let mut c = Cursor::new(s);
    let t = time_part(&mut c, true)?;
    c.done().then_some(t)
}

/// `timetz` output: microseconds of the day in UTC, wrapped into [0, 24h).
/// An end-of-day `24:00:00+00` becomes midnight, as in Debezium (whose
/// `ZonedTime` is an ISO offset time, which has no hour 24).
pub fn parse_timetz(s: &[u8]) -> Option<i64> {
    let mut c = Cursor::new(s);
    let t = time_part(&mut c, true)?;
    let offset = offset_part(&mut c)?;
    if !c.done() {
        return None;
    }
    Some((t - offset * MICROS_PER_SECOND).rem_euclid(MICROS_PER_DAY))
}

fn timestamp(s: &[u8], with_zone: bool) -> Option<Instant> {
    if let Some(inf) = infinity(s) {
        return Some(inf);
    }
    let mut c = Cursor::new(s);
    let (year, month, day) = date_part(&mut c)?;
    c.expect(b' ')?;
    let tod = time_part(&mut c, false)?;
    let offset = if with_zone { offset_part(&mut c)? } else { 0 };
    let year = era(&mut c, year)?;
    if !c.done() {
        return None;
    }
    let days = i128::from(days_from_civil(year, month, day));
    let micros = days * i128::from(MICROS_PER_DAY) + i128::from(tod)
        - i128::from(offset) * i128::from(MICROS_PER_SECOND);
    i64::try_from(micros).ok().map(Instant::Finite)
}

/// `timestamp` output: microseconds since 1970-01-01 00:00 (read as UTC).
pub fn parse_timestamp(s: &[u8]) -> Option<Instant> {
    timestamp(s, false)
}

/// `timestamptz` output (any session TimeZone): microseconds since the epoch, UTC.
pub fn parse_timestamptz(s: &[u8]) -> Option<Instant> {
    timestamp(s, true)
}

/// `interval` output in IntervalStyle `postgres` (`1 year 2 mons -3 days
/// +04:05:06.5`) as Debezium's `MicroDuration`: months count 365.25/12 days,
/// days 24 hours. Computed exactly in integers and saturated to the i64 range.
pub fn parse_interval(s: &[u8]) -> Option<i64> {
    let mut months: i128 = 0;
    let mut days: i128 = 0;
    let mut time: i128 = 0;
    let mut tokens = s.split(|b| *b == b' ').filter(|t| !t.is_empty());
    while let Some(tok) = tokens.next() {
        if tok.contains(&b':') {
            let (neg, body) = match tok.first()? {
                b'-' => (true, &tok[1..]),
                b'+' => (false, &tok[1..]),
                _ => (false, tok),
            };
            let mut c = Cursor::new(body);
            let h = c.digits()?;
            c.expect(b':')?;
            let m = c.fixed(2)?;
            c.expect(b':')?;
            let sec = c.fixed(2)?;
            let f = c.fraction_micros()?;
            if !c.done() {
                return None;
            }
            let t = ((i128::from(h) * 60 + i128::from(m)) * 60 + i128::from(sec))
                * i128::from(MICROS_PER_SECOND)
                + i128::from(f);
            time += if neg { -t } else { t };
            continue;
        }
        let n = parse_signed(tok)?;
        let unit = tokens.next()?;
        match unit {
            b"year" | b"years" => months += n * 12,
            b"mon" | b"mons" => months += n,
            b"day" | b"days" => days += n,
            _ => return None,
        }
    }
    let total =
        months * i128::from(MICROS_PER_AVG_MONTH) + days * i128::from(MICROS_PER_DAY) + time;
    Some(total.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64)
}

fn parse_signed(tok: &[u8]) -> Option<i128> {
    let (neg, digits) = match tok.first()? {
        b'-' => (true, &tok[1..]),
        b'+' => (false, &tok[1..]),
        _ => (false, tok),
    };
    if digits.is_empty() || digits.len() > 30 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = digits
        .iter()
        .fold(0_i128, |acc, b| acc * 10 + i128::from(b - b'0'));
    Some(if neg { -n } else { n })
}

fn push2(out: &mut Vec<u8>, n: i64) {
    out.push(b'0' + (n / 10) as u8);
    out.push(b'0' + (n % 10) as u8);
}

/// `HH:MM:SS` then the fraction: exactly `width` digits when `width` is 1..=9,
/// else as few digits as needed (none for whole seconds), like `java.time`'s ISO formatters.
fn write_clock(out: &mut Vec<u8>, tod: i64, width: u8) {
    let secs = tod / MICROS_PER_SECOND;
    let frac = tod % MICROS_PER_SECOND;
    push2(out, secs / 3600);
    out.push(b':');
    push2(out, secs / 60 % 60);
    out.push(b':');
    push2(out, secs % 60);
    // The fraction as nine digits (microseconds, then three zeros).
    let mut digits = [b'0'; 9];
    let mut rest = frac;
    for d in digits[..6].iter_mut().rev() {
        *d = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    if (1..=9).contains(&width) {
        out.push(b'.');
        out.extend_from_slice(&digits[..usize::from(width)]);
    } else if frac != 0 {
        let len = 6 - digits[..6].iter().rev().take_while(|b| **b == b'0').count();
        out.push(b'.');
        out.extend_from_slice(&digits[..len]);
    }
}

/// Writes a UTC instant as a JSON string in `ZonedTimestamp` form:
/// `2024-01-02T03:04:05.123456Z`, the fraction `width` digits wide (0 = minimal).
/// Years outside 0000..=9999 are written as `java.time` does (`+10000`, `-0043`).
pub fn write_zoned_timestamp(out: &mut Vec<u8>, micros: i64, width: u8) {
    let days = micros.div_euclid(MICROS_PER_DAY);
    let tod = micros.rem_euclid(MICROS_PER_DAY);
    let (year, month, day) = civil_from_days(days);
    out.push(b'"');
    if year > 9999 {
        out.push(b'+');
        super::json::write_i64(out, year);
    } else if year < 0 {
        out.push(b'-');
        super::json::write_u64_padded(out, year.unsigned_abs(), 4);
    } else {
        super::json::write_u64_padded(out, year.unsigned_abs(), 4);
    }
    out.push(b'-');
    push2(out, i64::from(month));
    out.push(b'-');
    push2(out, i64::from(day));
    out.push(b'T');
    write_clock(out, tod, width);
    out.extend_from_slice(b"Z\"");
}

/// Writes microseconds of the day (UTC) as a JSON string in `ZonedTime`
/// form: `HH:MM:SS[.f]Z` with a minimal fraction.
pub fn write_zoned_time(out: &mut Vec<u8>, tod: i64) {
    out.push(b'"');
    write_clock(out, tod, 0);
    out.extend_from_slice(b"Z\"");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_round_trips_and_known_days() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(1969, 12, 31), -1);
        assert_eq!(days_from_civil(0, 3, 1), -719_468);
        for days in [
            -2_500_000,
            -719_469,
            -1,
            0,
            59,
            11_016,
            2_932_896,
            2_145_042_905,
        ] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn dates() {
        assert_eq!(parse_date(b"1970-01-01"), Some(Instant::Finite(0)));
        assert_eq!(parse_date(b"2024-02-29"), Some(Instant::Finite(19_782)));
        assert_eq!(parse_date(b"1969-12-31"), Some(Instant::Finite(-1)));
        // 44 BC is astronomical year -43.
        assert_eq!(
            parse_date(b"0044-03-15 BC"),
            Some(Instant::Finite(days_from_civil(-43, 3, 15)))
        );
        assert_eq!(
            parse_date(b"4714-11-24 BC"),
            Some(Instant::Finite(-2_440_588))
        );
        // The ends of PostgreSQL's date range (julian day 0 is 4714-11-24 BC).
        assert_eq!(
            parse_date(b"5874897-12-31"),
            Some(Instant::Finite(2_145_042_905))
        );
        assert_eq!(parse_date(b"infinity"), Some(Instant::PosInfinity));
        assert_eq!(parse_date(b"-infinity"), Some(Instant::NegInfinity));
        assert_eq!(parse_date(b"01/02/2024"), None);
        assert_eq!(parse_date(b"2024-13-01"), None);
    }

    #[test]
    fn times() {
        assert_eq!(parse_time(b"00:00:00"), Some(0));
        assert_eq!(parse_time(b"04:05:06.789"), Some(14_706_789_000));
        assert_eq!(parse_time(b"23:59:59.999999"), Some(MICROS_PER_DAY - 1));
        assert_eq!(parse_time(b"24:00:00"), Some(MICROS_PER_DAY));
        assert_eq!(parse_time(b"24:00:01"), None);
        assert_eq!(parse_time(b"4:05:06"), None);
        assert_eq!(parse_time(b"04:05:06.1234567"), None);
    }

    #[test]
    fn times_with_zone() {
        assert_eq!(
            parse_timetz(b"10:00:00+02"),
            Some(8 * 3600 * MICROS_PER_SECOND)
        );
        assert_eq!(
            parse_timetz(b"01:00:00+05:30"),
            Some((19 * 3600 + 1800) * MICROS_PER_SECOND)
        );
        assert_eq!(parse_timetz(b"23:00:00-02"), Some(3600 * MICROS_PER_SECOND));
        assert_eq!(parse_timetz(b"24:00:00+00"), Some(0));
        assert_eq!(
            parse_timetz(b"24:00:00+01"),
            Some(23 * 3600 * MICROS_PER_SECOND)
        );
        assert_eq!(
            parse_timetz(b"12:00:00+00:00:30"),
            Some((12 * 3600 - 30) * MICROS_PER_SECOND)
        );
        assert_eq!(parse_timetz(b"12:00:00"), None);
    }

    #[test]
    fn timestamps() {
        assert_eq!(
            parse_timestamp(b"1970-01-01 00:00:00"),
            Some(Instant::Finite(0))
        );
        assert_eq!(
            parse_timestamp(b"2024-01-02 03:04:05.123456"),
            Some(Instant::Finite(1_704_164_645_123_456))
        );
        assert_eq!(
            parse_timestamp(b"1969-12-31 23:59:59.5"),
            Some(Instant::Finite(-500_000))
        );
        assert_eq!(
            parse_timestamp(b"0001-01-01 00:00:00 BC"),
            Some(Instant::Finite(days_from_civil(0, 1, 1) * MICROS_PER_DAY))
        );
        assert_eq!(parse_timestamp(b"infinity"), Some(Instant::PosInfinity));
        assert_eq!(parse_timestamp(b"2024-01-02T03:04:05"), None);
        assert_eq!(parse_timestamp(b"2024-01-02 24:00:00"), None);
        assert_eq!(
            parse_timestamptz(b"2024-01-02 05:04:05.5+02"),
            Some(Instant::Finite(1_704_164_645_500_000))
        );
        assert_eq!(
            parse_timestamptz(b"2024-01-01 22:04:05-05"),
            Some(Instant::Finite(1_704_164_645_000_000))
        );
        assert_eq!(
            parse_timestamptz(b"1900-01-01 00:00:00+00:09:21"),
            Some(Instant::Finite(
                days_from_civil(1900, 1, 1) * MICROS_PER_DAY - 561 * MICROS_PER_SECOND
            ))
        );
        assert_eq!(
            parse_timestamptz(b"0044-03-15 12:00:00+00 BC"),
            Some(Instant::Finite(
                days_from_civil(-43, 3, 15) * MICROS_PER_DAY + 12 * 3600 * MICROS_PER_SECOND
            ))
        );
        assert_eq!(parse_timestamptz(b"2024-01-02 03:04:05"), None);
    }

    #[test]
    fn intervals() {
        let s = MICROS_PER_SECOND;
        assert_eq!(parse_interval(b"00:00:00"), Some(0));
        assert_eq!(parse_interval(b"1 day"), Some(MICROS_PER_DAY));
        assert_eq!(parse_interval(b"1 mon"), Some(2_629_800 * s));
        assert_eq!(parse_interval(b"1 year"), Some(12 * 2_629_800 * s));
        assert_eq!(
            parse_interval(b"1 year 2 mons 3 days 04:05:06.789"),
            Some(14 * 2_629_800 * s + 3 * MICROS_PER_DAY + 14_706_789_000)
        );
        assert_eq!(
            parse_interval(b"-1 years -2 mons +3 days -04:05:06"),
            Some(-14 * 2_629_800 * s + 3 * MICROS_PER_DAY - 14_706 * s)
        );
        assert_eq!(parse_interval(b"-00:00:00.000001"), Some(-1));
        assert_eq!(parse_interval(b"100:00:00"), Some(100 * 3600 * s));
        assert_eq!(parse_interval(b"178000000 years"), Some(i64::MAX));
        assert_eq!(parse_interval(b"P1Y"), None);
        assert_eq!(parse_interval(b"1 fortnight"), None);
    }

    fn written(f: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut v = Vec::new();
        f(&mut v);
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn zoned_strings() {
        let t = 1_704_164_645_123_000;
        assert_eq!(
            written(|o| write_zoned_timestamp(o, t, 6)),
            r#""2024-01-02T03:04:05.123000Z""#
        );
        assert_eq!(
            written(|o| write_zoned_timestamp(o, t, 3)),
            r#""2024-01-02T03:04:05.123Z""#
        );
        assert_eq!(
            written(|o| write_zoned_timestamp(o, t, 0)),
            r#""2024-01-02T03:04:05.123Z""#
        );
        assert_eq!(
            written(|o| write_zoned_timestamp(o, 0, 0)),
            r#""1970-01-01T00:00:00Z""#
        );
        let bc = days_from_civil(-43, 3, 15) * MICROS_PER_DAY;
        assert_eq!(
            written(|o| write_zoned_timestamp(o, bc, 6)),
            r#""-0043-03-15T00:00:00.000000Z""#
        );
        let far = days_from_civil(10_000, 1, 1) * MICROS_PER_DAY;
        assert_eq!(
            written(|o| write_zoned_timestamp(o, far, 0)),
            r#""+10000-01-01T00:00:00Z""#
        );
        assert_eq!(written(|o| write_zoned_time(o, 0)), r#""00:00:00Z""#);
        assert_eq!(
            written(|o| write_zoned_time(o, 3_723_450_000)),
            r#""01:02:03.45Z""#
        );
    }
}
