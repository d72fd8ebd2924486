//! Kernel timestamps (`CLOCK_BOOTTIME`) to wall-clock time.

/// Converts `CLOCK_BOOTTIME` nanoseconds to Unix-epoch nanoseconds, using the offset between
/// the two clocks measured at start-up.
#[derive(Clone, Copy, Debug)]
pub struct BootClock {
    offset_ns: i128,
}

fn now_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer; both clocks exist on every kernel we support.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

impl BootClock {
    pub fn new() -> Self {
        // Take the boottime reading between two realtime readings to halve the error.
        let before = now_ns(libc::CLOCK_REALTIME);
        let boot = now_ns(libc::CLOCK_BOOTTIME);
        let after = now_ns(libc::CLOCK_REALTIME);
        BootClock {
            offset_ns: (before + after) / 2 - boot,
        }
    }

    /// Current `CLOCK_BOOTTIME` in nanoseconds.
    pub fn boot_now_ns() -> u64 {
        now_ns(libc::CLOCK_BOOTTIME) as u64
    }

    /// Unix-epoch nanoseconds of a boottime stamp.
    pub fn unix_ns(&self, boot_ns: u64) -> i128 {
        boot_ns as i128 + self.offset_ns
    }

    /// RFC 3339 UTC text of a boottime stamp.
    pub fn rfc3339(&self, boot_ns: u64) -> String {
        rfc3339(self.unix_ns(boot_ns))
    }
}

impl Default for BootClock {
    fn default() -> Self {
        Self::new()
    }
}

/// `1970-01-01T00:00:00.000000000Z` style text of Unix-epoch nanoseconds.
pub fn rfc3339(unix_ns: i128) -> String {
    let secs = unix_ns.div_euclid(1_000_000_000);
    let nanos = unix_ns.rem_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Howard Hinnant's days-to-civil algorithm (proleptic Gregorian calendar).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
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

/// Now, in nanoseconds since the Unix epoch.
pub fn unix_now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            rfc3339(1_764_028_800_123_456_789),
            "2025-11-25T00:00:00.123456789Z"
        );
        assert_eq!(
            rfc3339(951_782_400_000_000_000),
            "2000-02-29T00:00:00.000000000Z"
        );
    }

    #[test]
    fn boot_clock_is_close_to_realtime() {
        let clock = BootClock::new();
        let unix = clock.unix_ns(BootClock::boot_now_ns());
        let real = now_ns(libc::CLOCK_REALTIME);
        assert!((unix - real).abs() < 1_000_000_000);
    }
}
