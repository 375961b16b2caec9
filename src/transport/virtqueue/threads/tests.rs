use super::QueueThreads;

#[test]
fn one_thread_serves_every_ring() {
    let t = QueueThreads::new(0, 16, 1);
    assert_eq!(t.masks(), vec![0xffff]);
    assert_eq!(t.ring(0, 0), Some(0));
    assert_eq!(t.ring(0, 15), Some(15));
    assert_eq!(t.ring(0, 16), None);
    assert_eq!(t.ring(1, 0), None);
    assert!(!t.alone(0));
}

#[test]
fn rings_go_round_the_threads() {
    // The virtio-scsi request queues: rings 2..18 over 3 threads.
    let t = QueueThreads::new(2, 16, 3);
    let masks = t.masks();
    assert_eq!(masks.len(), 3);
    assert_eq!(masks.iter().fold(0, |a, m| a | m), 0xffff << 2);
    assert_eq!(masks.iter().map(|m| m.count_ones()).sum::<u32>(), 16);
    // vhost-user-backend numbers a thread's rings in mask order: check that `ring` agrees.
    for (thread, mask) in masks.iter().enumerate() {
        let rings: Vec<u16> = (0..64).filter(|b| mask >> b & 1 == 1).collect();
        for (event, ring) in rings.iter().enumerate() {
            assert_eq!(t.ring(thread, event as u16), Some(*ring));
        }
        assert_eq!(t.ring(thread, rings.len() as u16), None);
    }
}

#[test]
fn a_thread_per_ring_when_asked() {
    let t = QueueThreads::new(0, 16, 16);
    assert_eq!(t.threads(), 16);
    assert!((0..16).all(|i| t.alone(i) && t.ring(i, 0) == Some(i as u16)));
    // More threads than rings are not started.
    assert_eq!(QueueThreads::new(0, 4, 16).threads(), 4);
    assert_eq!(QueueThreads::new(0, 4, 0).threads(), 1);
}

#[test]
fn hostile_events_name_no_ring() {
    let t = QueueThreads::new(2, 16, 2);
    assert_eq!(t.ring(0, u16::MAX), None);
    assert_eq!(t.ring(usize::MAX, 0), None);
}
