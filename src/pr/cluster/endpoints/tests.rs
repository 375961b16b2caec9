use super::explain;

/// An etcd-client error with `text` (the classification reads the words etcd and rustls use).
fn error(text: &str) -> etcd_client::Error {
    etcd_client::Error::InvalidArgs(text.to_string())
}

#[test]
fn each_refusal_names_what_failed_and_the_setting_to_check() {
    let prefix = "/sharedisk/v1/d/";
    for (text, tls, says, refused) in [
        (
            "etcdserver: permission denied",
            true,
            &[
                "etcd denied",
                "/sharedisk/v1/d/",
                "cluster.user",
                "cluster.cert_file",
            ][..],
            true,
        ),
        (
            "etcdserver: authentication failed, invalid user ID or password",
            true,
            &["refused the user and password", "cluster.password_file"],
            true,
        ),
        (
            "etcdserver: user name is empty",
            true,
            &["presented no user", "cluster.user", "cluster.cert_file"],
            true,
        ),
        (
            "etcdserver: user name not found",
            false,
            &["does not exist in etcd"],
            true,
        ),
        (
            "invalid peer certificate: UnknownIssuer",
            true,
            &["TLS handshake", "cluster.ca_file"],
            false,
        ),
        (
            "stream closed because of a broken pipe",
            true,
            &[
                "refused this daemon's client certificate",
                "cluster.cert_file",
            ],
            false,
        ),
    ] {
        let e = explain(&error(text), prefix, tls);
        let shown = e.to_string();
        assert!(shown.contains(text), "{shown}");
        for s in says {
            assert!(shown.contains(s), "{text}: {s:?} missing in {shown}");
        }
        assert_eq!(e.refused, refused, "{text}");
    }
    // Without TLS a broken pipe is only a broken pipe; a timeout says nothing more.
    for (text, tls) in [("broken pipe", false), ("deadline has elapsed", true)] {
        let e = explain(&error(text), prefix, tls);
        assert!(e.hint.is_none() && !e.refused, "{text}: {e}");
    }
}
