//! A broker as a careful owner runs it: TLS with the owner's own CA, a login whose password
//! comes from a file, and an ACL (DESIGN.md 9, `mqtt.*`). Certificates are made per test.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::*;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, KeyUsagePurpose};
use serde_json::json;

const PASSWORD: &str = "correct horse battery staple";

/// Writes a CA, a server certificate for 127.0.0.1, a password file for `bridge` and `probe`,
/// and an ACL; returns the extra broker config lines.
fn secure_files(dir: &Path, acl: &str) -> String {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&server_key, &ca)
        .unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("server.pem"), server.pem()).unwrap();
    std::fs::write(dir.join("server.key"), server_key.serialize_pem()).unwrap();
    let passwd = dir.join("passwd");
    std::fs::write(&passwd, "").unwrap();
    for user in ["bridge", "probe"] {
        let status = Command::new("mosquitto_passwd")
            .args(["-b", passwd.to_str().unwrap(), user, PASSWORD])
            .status()
            .expect("mosquitto_passwd comes with the mosquitto package");
        assert!(status.success());
    }
    std::fs::write(dir.join("acl"), acl).unwrap();
    // mosquitto started as root drops to its own user, which must read these files.
    for name in ["ca.pem", "server.pem", "server.key", "passwd", "acl"] {
        std::fs::set_permissions(dir.join(name), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    format!(
        "cafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\n\
         allow_anonymous false\npassword_file {d}/passwd\nacl_file {d}/acl\n",
        d = dir.display()
    )
}

fn secure_site(broker: &Broker, password_file: &Path, ca: &Path) -> Site {
    let mut site = Site::new(broker.port);
    site.set("mqtt.username", json!("bridge"));
    site.set("mqtt.password_file", json!(password_file));
    site.set("mqtt.tls.ca_file", json!(ca));
    site
}

/// A plain (non-TLS) listener on another port of the same broker, for the probe.
fn probe_listener(port: u16) -> String {
    format!("listener {port} 127.0.0.1\n")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn the_daemon_logs_in_over_tls_and_a_keypad_entry_works() {
    let dir = tempfile::tempdir().unwrap();
    let extra = secure_files(
        dir.path(),
        "user bridge\ntopic readwrite #\nuser probe\ntopic readwrite #\n",
    );
    let plain = free_port();
    let ca = dir.path().join("ca.pem");
    let broker = Broker::start_with(dir, &format!("{extra}{}", probe_listener(plain)));
    let secrets = tempfile::tempdir().unwrap();
    let password_file = secrets.path().join("mqtt-password");
    std::fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
    let site = secure_site(&broker, &password_file, &ca);
    site.init("Alice", "1234");
    let probe = Probe::connect_as(plain, "probe", PASSWORD, &["#"]);
    let daemon = site.start();
    probe.wait_for(&site.topic("status"), |m| m.text() == "online");
    probe.publish(
        &site.json_topic(),
        json!({"code": "1234", "action": "arm_home"}).to_string(),
        false,
    );
    let reply = probe.next(&site.topic("keypad/front/result")).json();
    assert_eq!(reply, json!({"result": "accepted", "state": "armed_home"}));
    drop(daemon);
    let _ = broker;
}

#[test]
fn a_wrong_password_is_retried_and_never_logged() {
    let dir = tempfile::tempdir().unwrap();
    let extra = secure_files(dir.path(), "user bridge\ntopic readwrite #\n");
    let ca = dir.path().join("ca.pem");
    let broker = Broker::start_with(dir, &extra);
    let secrets = tempfile::tempdir().unwrap();
    let password_file = secrets.path().join("mqtt-password");
    std::fs::write(&password_file, "not-the-password-4711\n").unwrap();
    let site = secure_site(&broker, &password_file, &ca);
    site.init("Alice", "1234");
    let mut daemon = site.start();
    let start = std::time::Instant::now();
    let refused = "cannot connect to the MQTT broker";
    while !daemon.log_text().contains(refused) {
        assert!(
            start.elapsed() < WAIT,
            "no connection error logged:\n{}",
            daemon.log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(600));
    assert!(daemon.exited().is_none(), "the daemon keeps retrying");
    let log = daemon.log_text();
    assert!(log.matches(refused).count() >= 2, "{log}");
    let broker_named = format!("127.0.0.1:{} (TLS", broker.port);
    assert!(
        log.lines()
            .filter(|l| l.contains(refused))
            .all(|l| l.contains(&broker_named)),
        "each error names the broker and TLS:\n{log}"
    );
    assert!(
        !log.contains("not-the-password"),
        "the password leaked into the log:\n{log}"
    );
    assert!(daemon.stop());
}
