use super::*;

#[test]
fn notify_socket_names_a_path_or_an_abstract_name() {
    let path = notify_address(OsStr::new("/run/systemd/notify")).unwrap();
    assert_eq!(
        path.as_pathname(),
        Some(std::path::Path::new("/run/systemd/notify"))
    );
    let abstract_ = notify_address(OsStr::new("@sharedisk/notify")).unwrap();
    assert_eq!(abstract_.as_abstract_name(), Some(&b"sharedisk/notify"[..]));
    assert!(notify_address(OsStr::new("relative")).is_err());
    assert!(notify_address(OsStr::new("")).is_err());
}

#[test]
fn states_arrive_on_an_abstract_socket() {
    let name = format!("sharedisk-notify-test-{}", std::process::id());
    let sock = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(&name).unwrap()).unwrap();
    send(
        OsStr::new(&format!("@{name}")),
        &[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status("up"),
        ],
    )
    .unwrap();
    let mut buf = [0u8; 64];
    let n = sock.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"READY=1\nSTATUS=up\n");
}
