use super::*;

#[test]
fn histogram_buckets_are_cumulative() {
    let h = Histogram::default();
    h.observe(Duration::from_micros(10));
    h.observe(Duration::from_micros(200));
    h.observe(Duration::from_secs(10));
    let (sum, count, cum) = h.snapshot();
    assert_eq!(count, 3);
    assert_eq!(cum[0], 1);
    assert_eq!(cum[2], 2);
    assert_eq!(cum[13], 2);
    assert_eq!(cum[14], 3);
    assert!((sum - 10.00021).abs() < 1e-9);
    assert_eq!(h.quantile(0.5), Some(250e-6));
    assert_eq!(h.quantile(1.0), Some(f64::INFINITY));
}

#[test]
fn counters_per_op_and_result() {
    let d = DeviceStats::default();
    d.record(Op::Write, Result::Ok, 4096, Duration::ZERO);
    d.record(Op::Write, Result::Conflict, 4096, Duration::ZERO);
    d.record(Op::Read, Result::Error, 512, Duration::ZERO);
    assert_eq!(
        d.op(Op::Write).get(),
        OpSnapshot {
            ok: 1,
            bytes: 4096,
            conflicts: 1,
            errors: 0
        }
    );
    assert_eq!(d.op(Op::Read).get().errors, 1);
    d.record_prout(5, Result::Ok);
    d.record_prout(99, Result::Ok);
    assert_eq!(d.prout_count(5, Result::Ok), 1);
}
