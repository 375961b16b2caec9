//! Unit tests of `backend`: the local backend against the conformance cases, and a `[cluster]`
//! section in a build without cluster support.

use super::*;
use crate::pr::state_file::ImageIdentity;

#[test]
fn the_local_backend_keeps_every_guarantee() {
    conformance::run_all(&mut |case| {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("d.img");
        std::fs::write(&img, b"").unwrap();
        let store = StateStore::new(
            dir.path().join("d.img.pr"),
            ImageIdentity::of(&img).unwrap(),
        );
        let res = Reservations::new(Arbiter::new(["a", "b"].map(String::from)), Some(store));
        for n in ["a", "b"] {
            while res.take_unit_attention(n).is_some() {}
        }
        case(&res);
    });
}

#[cfg(not(feature = "cluster"))]
#[test]
fn a_cluster_section_is_refused_without_cluster_support() {
    let cfg: ClusterConfig = toml::from_str(
        "etcd = [\"http://10.0.0.1:2379\"]\ninsecure = true\nnode = \"h1\"\ndisk_id = \"d\"\n",
    )
    .unwrap();
    assert!(cfg.validate().is_ok(), "refused when the daemon starts");
    let err = join(&cfg, &[], Some(&PrState::default()), None)
        .err()
        .unwrap();
    assert_eq!(
        err.to_string(),
        "this sharedisk was built without cluster support; build it with `cargo build --release \
         --features cluster` (which needs protoc) to use [cluster]"
    );
}
