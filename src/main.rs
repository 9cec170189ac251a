use std::hash::Hasher as _;
use std::time::Instant;
fn main() {
    let data: Vec<u8> = (0..6_583_696u64).map(|i| (i.wrapping_mul(0x9e3779b97f4a7c15) >> 56) as u8).collect();
    for len in [0usize, 1, 3, 16, 17, 128, 129, 240, 241, 1023, 1024, 65536, 65537, 200_001, data.len()] {
        let a = xxhash_rust::xxh3::xxh3_64(&data[..len]);
        let mut h = twox_hash::XxHash3_64::new();
        for chunk in data[..len].chunks(65536) { h.write(chunk); }
        let mut h2 = twox_hash::XxHash3_64::new();
        for chunk in data[..len].chunks(7) { h2.write(chunk); }
        assert_eq!(a, h.finish(), "{len}"); assert_eq!(a, h2.finish(), "{len}");
    }
    for round in 0..3 {
        let mut best = [f64::MAX; 3];
        for _ in 0..50 {
            let t = Instant::now();
            let mut h = xxhash_rust::xxh3::Xxh3::new();
            for chunk in data.chunks(65536) { h.update(chunk); }
            std::hint::black_box(h.digest());
            best[0] = best[0].min(t.elapsed().as_secs_f64());
            let t = Instant::now();
            let mut h = twox_hash::XxHash3_64::new();
            for chunk in data.chunks(65536) { h.write(chunk); }
            std::hint::black_box(h.finish());
            best[1] = best[1].min(t.elapsed().as_secs_f64());
            let t = Instant::now();
            std::hint::black_box(twox_hash::XxHash3_64::oneshot(&data));
            best[2] = best[2].min(t.elapsed().as_secs_f64());
        }
        println!("round {round}: xxhash-rust streaming {:.0} us, twox-hash streaming {:.0} us, twox oneshot {:.0} us", best[0]*1e6, best[1]*1e6, best[2]*1e6);
    }
}
