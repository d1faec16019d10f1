//! Order statistics of measured samples.

/// The median (the upper one of an even count); sorts `v`. `v` must not be empty.
pub fn median(v: &mut [f64]) -> f64 {
    percentile(v, 0.5)
}

/// The sample at fraction `p` (0.0–1.0) of the sorted samples, nearest rank; sorts `v`.
/// `v` must not be empty.
pub fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_percentiles_of_unsorted_samples() {
        let mut v = [5.0, 1.0, 4.0, 2.0, 3.0];
        assert_eq!(median(&mut v), 3.0);
        assert_eq!(percentile(&mut v, 0.0), 1.0);
        assert_eq!(percentile(&mut v, 1.0), 5.0);
        assert_eq!(percentile(&mut v, 0.9), 5.0);
    }
}
