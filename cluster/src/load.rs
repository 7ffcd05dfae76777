//! A node's load as placement weighs it: its capacity in cores, the fraction of the machine's CPU used by
//! work other than this process, and the fraction of memory in use — read from `/proc` every
//! [`SAMPLE_EVERY`] and smoothed by [`DualKalman`] filters before the heartbeats carry them
//! (`docs/placement.md`).

use std::time::Duration;

use crate::membership::{Load, Membership};
use crate::placement::DualKalman;

/// How often a node reads its load.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// Readings' noise variances for the Kalman filters: ±5 % CPU, ±3 % memory.
const CPU_NOISE: f64 = 0.05 * 0.05;
const MEM_NOISE: f64 = 0.03 * 0.03;

/// CPU time counters: the machine's busy and total ticks (all cores) and this process's ticks, all in
/// the kernel's `USER_HZ`, so their ratios need no tick rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuTicks {
    pub busy: u64,
    pub total: u64,
    pub own: u64,
}

/// Parses the aggregate `cpu` line of `/proc/stat`: (busy, total) ticks. Idle and iowait are not busy;
/// guest time is already inside user time and is not added twice.
pub fn parse_proc_stat(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    if v.len() < 4 {
        return None;
    }
    let total: u64 = v.iter().sum();
    let idle = v[3] + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// Parses `/proc/self/stat`: this process's user plus system ticks (fields 14 and 15, counted after the
/// parenthesised command name, which may hold spaces).
pub fn parse_self_stat(text: &str) -> Option<u64> {
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, stime 15.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Parses `/proc/meminfo`: the fraction of memory in use, `1 − MemAvailable / MemTotal`.
pub fn parse_meminfo(text: &str) -> Option<f64> {
    let field = |name: &str| -> Option<f64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    let total = field("MemTotal:")?;
    let available = field("MemAvailable:")?;
    (total > 0.0).then(|| (1.0 - available / total).clamp(0.0, 1.0))
}

/// The fraction of the machine's CPU used by others between two readings: busy minus own, over total.
pub fn cpu_other(before: CpuTicks, after: CpuTicks) -> Option<f64> {
    let total = after.total.checked_sub(before.total)?;
    if total == 0 {
        return None;
    }
    let busy = after.busy.saturating_sub(before.busy) as f64;
    let own = after.own.saturating_sub(before.own) as f64;
    Some(((busy - own) / total as f64).clamp(0.0, 1.0))
}

fn read_ticks() -> Option<CpuTicks> {
    let (busy, total) = parse_proc_stat(&std::fs::read_to_string("/proc/stat").ok()?)?;
    let own = parse_self_stat(&std::fs::read_to_string("/proc/self/stat").ok()?)?;
    Some(CpuTicks { busy, total, own })
}

/// Reads this node's load every [`SAMPLE_EVERY`], smooths it and puts it in the heartbeats. Ends with the
/// membership. Without `/proc` (not Linux) the heartbeats carry no load and placement treats the node as
/// idle.
pub fn start_sampler(membership: &Membership) -> tokio::task::JoinHandle<()> {
    let capacity = std::thread::available_parallelism()
        .map(|n| n.get() as f64)
        .unwrap_or(1.0);
    let membership = membership.handle();
    tokio::spawn(async move {
        let mut cpu = DualKalman::new(CPU_NOISE);
        let mut mem = DualKalman::new(MEM_NOISE);
        let mut before = read_ticks();
        let mut ticker = tokio::time::interval(SAMPLE_EVERY);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            let after = read_ticks();
            let other = before.zip(after).and_then(|(b, a)| cpu_other(b, a));
            before = after;
            let used = std::fs::read_to_string("/proc/meminfo")
                .ok()
                .and_then(|t| parse_meminfo(&t));
            let (Some(other), Some(used)) = (other, used) else {
                continue;
            };
            let load = Load {
                capacity,
                cpu_other: cpu.observe(other).clamp(0.0, 1.0),
                mem_used: mem.observe(used).clamp(0.0, 1.0),
            };
            if !membership.set_load(load) {
                return;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_counts_idle_and_iowait_as_not_busy() {
        let text = "cpu  100 5 50 800 40 3 2 0 0 0\ncpu0 50 2 25 400 20 1 1 0 0 0\nintr 1\n";
        assert_eq!(parse_proc_stat(text), Some((160, 1000)));
        assert_eq!(parse_proc_stat("intr 1\n"), None);
    }

    #[test]
    fn self_stat_reads_user_and_system_ticks_after_a_command_with_spaces() {
        let text =
            "4242 (custodian (x) y) S 1 4242 4242 0 -1 4194560 9 0 0 0 120 30 0 0 20 0 9 0 77 1 1";
        assert_eq!(parse_self_stat(text), Some(150));
    }

    #[test]
    fn meminfo_is_the_fraction_not_available() {
        let text = "MemTotal:       1000 kB\nMemFree:         100 kB\nMemAvailable:    250 kB\n";
        assert_eq!(parse_meminfo(text), Some(0.75));
    }

    #[test]
    fn cpu_other_is_busy_minus_own_over_total() {
        let b = CpuTicks {
            busy: 100,
            total: 1000,
            own: 10,
        };
        let a = CpuTicks {
            busy: 160,
            total: 1200,
            own: 30,
        };
        assert_eq!(cpu_other(b, a), Some(0.2));
        assert_eq!(cpu_other(a, a), None);
    }

    #[test]
    fn this_machine_has_readable_proc_files() {
        if cfg!(target_os = "linux") {
            let t = read_ticks().expect("/proc/stat and /proc/self/stat parse");
            assert!(t.total > 0 && t.busy <= t.total);
            let m = parse_meminfo(&std::fs::read_to_string("/proc/meminfo").unwrap()).unwrap();
            assert!(m > 0.0 && m < 1.0);
        }
    }
}
