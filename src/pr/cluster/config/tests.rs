use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::{ClusterConfig, ClusterConfigError as E};

const PEM_CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
const PEM_KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n";

/// A valid configuration: `etcd` and the lines in `extra`.
fn cfg(etcd: &[&str], extra: &str) -> ClusterConfig {
    let text = format!("etcd = {etcd:?}\nnode = \"h1\"\ndisk_id = \"d\"\n{extra}");
    toml::from_str(&text).expect("parses")
}

/// `text` in `dir/name` with `mode`.
fn file(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    p
}

/// https:// with a CA, and the pairs that come together.
fn tls(d: &Path) -> ClusterConfig {
    let mut c = cfg(&["https://127.0.0.1:2379", "https://10.0.0.2:2379"], "");
    c.ca_file = Some(file(d, "ca.pem", PEM_CERT, 0o644));
    c.cert_file = Some(file(d, "h1.pem", PEM_CERT, 0o644));
    c.key_file = Some(file(d, "h1.key", PEM_KEY, 0o600));
    c
}

#[test]
fn plain_http_needs_insecure_true_and_its_error_names_the_tls_settings() {
    let e = cfg(&["http://10.0.0.1:2379"], "").validate().unwrap_err();
    assert_eq!(e, E::PlainHttp("http://10.0.0.1:2379".into()));
    let text = e.to_string();
    for word in [
        "insecure = true",
        "https://",
        "ca_file",
        "cert_file",
        "password_file",
    ] {
        assert!(text.contains(word), "{word}: {text}");
    }
    let c = cfg(&["http://10.0.0.1:2379"], "insecure = true\n");
    assert_eq!(c.validate(), Ok(()));
    assert!(c.describe().contains("INSECURE plain http://"));
}

#[test]
fn the_scheme_rules() {
    let both = cfg(&["https://a:2379", "http://b:2379"], "ca_file = \"/ca\"\n");
    assert!(matches!(both.validate(), Err(E::MixedSchemes(_))));
    let no_ca = cfg(&["https://a:2379"], "");
    assert_eq!(no_ca.validate(), Err(E::NoCaFile));
    let insecure_tls = cfg(&["https://a:2379"], "ca_file = \"/ca\"\ninsecure = true\n");
    assert_eq!(insecure_tls.validate(), Err(E::InsecureWithHttps));
    for key in ["ca_file", "cert_file", "key_file"] {
        let c = cfg(
            &["http://a:2379"],
            &format!("insecure = true\n{key} = \"/x\"\n"),
        );
        assert_eq!(c.validate(), Err(E::TlsWithoutHttps(key)), "{key}");
    }
    for bad in ["ftp://a", "https://", "http://", "a:2379", ""] {
        let c = cfg(&[bad], "insecure = true\nca_file = \"/ca\"\n");
        assert_eq!(c.validate(), Err(E::NotUrl(bad.into())), "{bad}");
    }
    let ok = cfg(&["https://a:2379"], "ca_file = \"/ca\"\n");
    assert_eq!(ok.validate(), Ok(()));
    assert!(
        ok.describe().contains("no client identity"),
        "{}",
        ok.describe()
    );
}

#[test]
fn a_certificate_comes_with_its_key_and_a_user_with_its_password() {
    let base = "ca_file = \"/ca\"\n";
    let only_cert = cfg(&["https://a:2379"], &format!("{base}cert_file = \"/c\"\n"));
    assert_eq!(only_cert.validate(), Err(E::CertWithoutKey));
    let only_key = cfg(&["https://a:2379"], &format!("{base}key_file = \"/k\"\n"));
    assert_eq!(only_key.validate(), Err(E::CertWithoutKey));
    let only_user = cfg(&["https://a:2379"], &format!("{base}user = \"h1\"\n"));
    assert_eq!(only_user.validate(), Err(E::UserWithoutPassword));
    let only_pw = cfg(
        &["https://a:2379"],
        &format!("{base}password_file = \"/p\"\n"),
    );
    assert_eq!(only_pw.validate(), Err(E::UserWithoutPassword));
    for bad in ["", "a b", "a\u{7}", &"u".repeat(129)] {
        let mut c = cfg(
            &["https://a:2379"],
            &format!("{base}password_file = \"/p\"\n"),
        );
        c.user = Some(bad.to_string());
        assert_eq!(c.validate(), Err(E::BadUser(bad.to_string())), "{bad:?}");
    }
}

#[test]
fn the_files_are_read_and_their_content_checked() {
    let d = tempfile::tempdir().unwrap();
    let mut c = tls(d.path());
    c.user = Some("h1".into());
    c.password_file = Some(file(d.path(), "pw", "s3cret\n", 0o400));
    assert_eq!(c.validate(), Ok(()));
    let s = c.read_secrets().expect("readable");
    assert_eq!(s.ca.as_deref(), Some(PEM_CERT.as_bytes()));
    assert!(s.identity.is_some());
    assert_eq!(s.user, Some(("h1".into(), "s3cret".into())));
    assert!(!format!("{s:?}").contains("s3cret"), "{s:?}");
    // Which file holds what it should not.
    let key = c.key_file.clone().unwrap();
    c.key_file = c.cert_file.clone();
    assert!(matches!(
        c.read_secrets(),
        Err(E::SecretTooOpen {
            key: "key_file",
            ..
        })
    ));
    c.key_file = Some(file(d.path(), "cert-as-key", PEM_CERT, 0o600));
    let e = c.read_secrets().unwrap_err();
    assert!(
        matches!(
            e,
            E::BadContent {
                key: "key_file",
                ..
            }
        ),
        "{e}"
    );
    c.key_file = Some(key);
    c.ca_file = Some(file(d.path(), "ca-garbage", "hello\n", 0o644));
    assert!(matches!(
        c.read_secrets(),
        Err(E::BadContent { key: "ca_file", .. })
    ));
    c.ca_file = Some(d.path().join("missing"));
    let e = c.read_secrets().unwrap_err();
    assert!(matches!(e, E::FileUnreadable { key: "ca_file", .. }), "{e}");
    assert!(e.to_string().contains("missing"), "{e}");
}

#[test]
fn secrets_readable_by_group_or_others_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let mut c = tls(d.path());
    for mode in [0o640, 0o604, 0o660, 0o644] {
        c.key_file = Some(file(d.path(), "k", PEM_KEY, mode));
        let e = c.read_secrets().unwrap_err();
        assert!(
            matches!(
                e,
                E::SecretTooOpen {
                    key: "key_file",
                    ..
                }
            ),
            "{mode:o}: {e}"
        );
        assert!(e.to_string().contains("chmod 600"), "{e}");
    }
    c.key_file = Some(file(d.path(), "k", PEM_KEY, 0o600));
    c.user = Some("h1".into());
    for mode in [0o640, 0o606] {
        c.password_file = Some(file(d.path(), "p", "pw\n", mode));
        let e = c.read_secrets().unwrap_err();
        assert!(
            matches!(
                e,
                E::SecretTooOpen {
                    key: "password_file",
                    ..
                }
            ),
            "{mode:o}: {e}"
        );
    }
    // A certificate is public: any mode.
    c.password_file = Some(file(d.path(), "p", "pw\n", 0o600));
    c.cert_file = Some(file(d.path(), "c", PEM_CERT, 0o644));
    assert!(c.read_secrets().is_ok());
}

#[test]
fn a_secret_that_is_not_a_regular_file_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let mut c = tls(d.path());
    c.user = Some("h1".into());
    let dir = d.path().join("a-dir");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    c.password_file = Some(dir);
    let e = c.read_secrets().unwrap_err();
    assert!(
        matches!(
            e,
            E::NotRegularFile {
                key: "password_file",
                ..
            }
        ),
        "{e}"
    );
    // A FIFO: refused at once (not waiting for a writer).
    let fifo = d.path().join("fifo");
    let name = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: `name` is a valid NUL-terminated path that outlives the call.
    assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
    c.password_file = Some(fifo);
    let e = c.read_secrets().unwrap_err();
    assert!(
        matches!(
            e,
            E::NotRegularFile {
                key: "password_file",
                ..
            }
        ),
        "{e}"
    );
    c.password_file = Some("/dev/null".into());
    assert!(matches!(c.read_secrets(), Err(E::NotRegularFile { .. })));
}

#[test]
fn a_password_file_holds_one_line() {
    let d = tempfile::tempdir().unwrap();
    let mut c = tls(d.path());
    c.user = Some("h1".into());
    for (text, want) in [
        ("pw", Some("pw")),
        ("pw\r\n", Some("pw")),
        ("p w\n", Some("p w")),
    ] {
        c.password_file = Some(file(d.path(), "p", text, 0o600));
        assert_eq!(
            c.read_secrets().unwrap().user.unwrap().1,
            want.unwrap(),
            "{text:?}"
        );
    }
    for text in ["", "\n", "pw\nmore\n", "a\rb"] {
        c.password_file = Some(file(d.path(), "p", text, 0o600));
        let e = c.read_secrets().unwrap_err();
        assert!(
            matches!(
                e,
                E::BadContent {
                    key: "password_file",
                    ..
                }
            ),
            "{text:?}: {e}"
        );
    }
    let big = "x".repeat((1 << 20) + 1);
    c.password_file = Some(file(d.path(), "p", &big, 0o600));
    assert!(matches!(c.read_secrets(), Err(E::FileUnreadable { .. })));
}
