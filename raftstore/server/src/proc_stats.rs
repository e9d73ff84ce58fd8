//! The process's RSS and CPU time from `/proc` (Linux; `None` elsewhere),
//! for the status of a store process and the load tool.

use std::time::Duration;

/// Linux reports process times in `USER_HZ` ticks, fixed at 100 per second
/// for user space on every architecture.
pub const CLOCK_TICKS_PER_S: f64 = 100.0;
/// The resolution of [`cpu_ticks`] (one `USER_HZ` tick).
pub const CPU_TICK: Duration = Duration::from_millis(10);
/// `utime` is the 14th field of `/proc/<pid>/stat`, `stime` the 15th; the
/// fields after the command name start with the 3rd.
const UTIME_AFTER_COMM: usize = 14 - 3;
/// `stime`, counted the same way.
const STIME_AFTER_COMM: usize = 15 - 3;
/// `/proc/<pid>/status` sizes are in kB (KiB).
const KIB_BYTES: u64 = 1024;

/// The process's resident set size (bytes; `VmRSS`), if `/proc` tells.
pub fn rss_bytes() -> Option<u64> {
    parse_status_bytes(&std::fs::read_to_string("/proc/self/status").ok()?, "VmRSS")
}

/// The process's peak resident set size so far (bytes; `VmHWM`), if
/// `/proc` tells.
pub fn peak_rss_bytes() -> Option<u64> {
    parse_status_bytes(&std::fs::read_to_string("/proc/self/status").ok()?, "VmHWM")
}

/// The value of `field` (e.g. `VmHWM`, in kB there) in the text of
/// `/proc/<pid>/status`, in bytes.
pub fn parse_status_bytes(status: &str, field: &str) -> Option<u64> {
    let line = status.lines().find(|l| {
        l.strip_prefix(field)
            .is_some_and(|rest| rest.starts_with(':'))
    })?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kb.checked_mul(KIB_BYTES)
}

/// User plus system CPU time of the process so far, in clock ticks.
pub fn cpu_ticks() -> Option<u64> {
    parse_cpu_ticks(&std::fs::read_to_string("/proc/self/stat").ok()?)
}

/// `utime + stime` from the text of `/proc/<pid>/stat` (the command name,
/// in parentheses, may hold spaces and parentheses itself).
pub fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(UTIME_AFTER_COMM)?.parse().ok()?;
    let stime: u64 = fields.get(STIME_AFTER_COMM)?.parse().ok()?;
    utime.checked_add(stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_skip_a_command_name_with_spaces() {
        let stat = "4242 (tokio rt) (x)) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    250 50 0 0 20 0 9 0 12345 1000000 500";
        assert_eq!(parse_cpu_ticks(stat), Some(300));
        assert_eq!(parse_cpu_ticks("garbage"), None);
        assert_eq!(parse_cpu_ticks("1 (x) S 1 2"), None);
    }

    #[test]
    fn this_process_has_cpu_time_and_rss() {
        assert!(cpu_ticks().is_some());
        assert!(rss_bytes().is_some_and(|b| b > 0));
        assert!(peak_rss_bytes().is_some_and(|b| b > 0));
    }

    #[test]
    fn status_fields_are_read_in_bytes() {
        let status = "Name:\tflotilla\nVmHWMx:\t1 kB\nVmHWM:\t  2048 kB\nVmRSS:\t1024 kB\n";
        assert_eq!(parse_status_bytes(status, "VmHWM"), Some(2048 * 1024));
        assert_eq!(parse_status_bytes(status, "VmRSS"), Some(1024 * 1024));
        assert_eq!(parse_status_bytes(status, "VmSwap"), None);
        assert_eq!(parse_status_bytes("VmHWM: lots", "VmHWM"), None);
    }
}
