use super::*;

#[test]
fn bucket_counts_undo_the_cumulation_the_encoder_redoes() {
    let h = stats::Histogram::default();
    for us in [10, 10, 80, 3_000, 7_000_000] {
        h.observe(std::time::Duration::from_micros(us));
    }
    let (_, count, cum) = h.snapshot();
    let own = bucket_counts(&cum);
    assert_eq!(own.len(), 15);
    assert_eq!(own.iter().map(|b| b.1).sum::<u64>(), count);
    assert_eq!(own[0], (50e-6, 2));
    assert_eq!(own[1], (100e-6, 1));
    assert_eq!(own[6], (5e-3, 1));
    assert_eq!(own[14], (f64::INFINITY, 1));
}
