//! The private-services harness: a test's own PostgreSQL and InfluxDB come up, go down (clients fail)
//! and come back on the same port.

use std::process::{Command, Stdio};

use custodian_tests::private_services::{PrivateInflux, PrivatePostgres};

/// `psql -h 127.0.0.1 -p <port> -U postgres -Atc 'select 1'`: Ok(stdout) or Err(stderr).
fn psql_select_1(port: u16) -> Result<String, String> {
    let out = Command::new("psql")
        .args(["-X", "-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-U", "postgres", "-d", "postgres", "-Atc", "select 1"])
        .stdin(Stdio::null())
        .output()
        .expect("running psql");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// The HTTP status `curl` gets for `<url>/ping` ("000" if nothing answers).
fn curl_ping(url: &str) -> String {
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "3",
        ])
        .arg(format!("{url}/ping"))
        .stdin(Stdio::null())
        .output()
        .expect("running curl");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn private_postgres_stops_and_starts() {
    let tmp = tempfile::tempdir().unwrap();
    let mut pg = PrivatePostgres::start_new(&tmp.path().join("pg"));
    assert_ne!(pg.port, 5432);
    assert!(pg.is_running());
    assert_eq!(
        pg.url(),
        format!("postgres://postgres@127.0.0.1:{}/postgres", pg.port)
    );
    assert_eq!(
        pg.url_for("x"),
        format!("postgres://postgres@127.0.0.1:{}/x", pg.port)
    );
    assert_eq!(psql_select_1(pg.port), Ok("1".into()));
    // The unix socket is in the test's dir, not /var/run/postgresql.
    assert!(pg.dir.join(format!(".s.PGSQL.{}", pg.port)).exists());

    pg.stop();
    assert!(!pg.is_running());
    let err = psql_select_1(pg.port).expect_err("psql must fail while postgres is stopped");
    assert!(!err.is_empty());

    pg.start();
    assert!(pg.is_running());
    assert_eq!(psql_select_1(pg.port), Ok("1".into()));
}

#[test]
fn private_influx_stops_and_starts() {
    let tmp = tempfile::tempdir().unwrap();
    let mut influx = PrivateInflux::start_new(&tmp.path().join("influx"));
    assert_ne!(influx.port, 8086);
    assert!(influx.is_running());
    assert_eq!(influx.url(), format!("http://127.0.0.1:{}", influx.port));
    assert_eq!(curl_ping(&influx.url()), "204");

    influx.stop();
    assert!(!influx.is_running());
    assert_ne!(curl_ping(&influx.url()), "204");

    influx.start();
    assert!(influx.is_running());
    assert_eq!(curl_ping(&influx.url()), "204");
}
