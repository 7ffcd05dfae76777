//! Cleaning: the statistical filter that flags a reading as `suspect` (never drops it).
//!
//! A Hampel filter over the terminal's most recent readings of the same kind: with `m` the median of the
//! window and `MAD` the median absolute deviation from it, a reading `x` is suspect when
//! `|x − m| > k × 1.4826 × MAD` (1.4826 scales the MAD to a standard deviation for normal noise), decided
//! in integers as `10_000 × |x − m| > k × 14_826 × MAD`. A flat signal has a MAD of 0, which would make
//! every change infinitely unlikely; the MAD is therefore floored at 0.5 % of `|m|` and at one
//! resolution unit. The filter speaks only once the window holds `min` readings.

use std::collections::VecDeque;

/// The filter's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Hampel {
    /// Readings kept per terminal and kind.
    pub window: usize,
    /// Readings needed before the filter judges.
    pub min: usize,
    /// How many scaled MADs away is suspect.
    pub k: u32,
}

impl Default for Hampel {
    fn default() -> Self {
        Hampel {
            window: 15,
            min: 7,
            k: 3,
        }
    }
}

/// The median of `values` (the lower middle one for an even count), if any.
pub fn median(values: impl IntoIterator<Item = i64>) -> Option<i64> {
    let mut v: Vec<i64> = values.into_iter().collect();
    if v.is_empty() {
        return None;
    }
    let mid = (v.len() - 1) / 2;
    Some(*v.select_nth_unstable(mid).1)
}

impl Hampel {
    /// `Some((median, floored MAD))` when `x` is suspect against `window`.
    pub fn judge(&self, window: &VecDeque<i64>, x: i64) -> Option<(i64, i64)> {
        if window.len() < self.min.max(1) {
            return None;
        }
        let m = median(window.iter().copied())?;
        let mad = median(window.iter().map(|v| (v - m).abs()))?;
        let mad = mad.max(m.abs() / 200).max(1);
        let dev = i128::from(x) - i128::from(m);
        (10_000 * dev.abs() > i128::from(self.k) * 14_826 * i128::from(mad)).then_some((m, mad))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(v: &[i64]) -> VecDeque<i64> {
        v.iter().copied().collect()
    }

    #[test]
    fn medians() {
        assert_eq!(median([3, 1, 2]), Some(2));
        assert_eq!(median([4, 1, 3, 2]), Some(2));
        assert_eq!(median([]), None);
    }

    #[test]
    fn a_spike_is_suspect_and_noise_is_not() {
        let h = Hampel::default();
        let noisy = w(&[1000, 1010, 990, 1005, 995, 1002, 998, 1001]);
        assert_eq!(h.judge(&noisy, 1012), None);
        assert!(h.judge(&noisy, 1100).is_some());
        assert!(h.judge(&noisy, 900).is_some());
        // Too few readings: no judgement.
        assert_eq!(h.judge(&w(&[1000, 1000]), 5000), None);
        // A flat signal: the floor (0.5 % of the median) keeps a small step from being a spike.
        let flat = w(&[1000; 10]);
        assert_eq!(h.judge(&flat, 1010), None);
        assert_eq!(h.judge(&flat, 1030), Some((1000, 5)));
    }
}
