//! TLS to MySQL (`mysql.tls`, `mysql.tls-ca-file`) against a real MariaDB.
//!
//! The shared test server has no certificate, and giving it one needs a restart, so the TLS test
//! starts a private `mariadbd` of its own (from `scripts/services.sh`'s packages) on a free port,
//! with a CA and a server certificate (for the name `localhost` only) that it makes with the
//! `openssl` command, and `require-secure-transport` so that no plain connection can pass.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dataflows::model::{Demographic, Gender, UserId};
use shopflow::sources::mysql::{DemographicsSource, MysqlConfig, MysqlError, MysqlTls, read_table};
use shopflow::writers::mysql::load_demographics;

use crate::support::process::free_port;

/// A private MariaDB serving TLS only, killed on drop.
struct TlsServer {
    dir: tempfile::TempDir,
    child: Child,
    port: u16,
}

fn run(what: &str, command: &mut Command) {
    let output = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        output.status.success(),
        "{what}: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A self-signed CA in `dir` as `<name>.pem` and `<name>.key`.
fn make_ca(dir: &Path, name: &str) {
    run(
        "openssl makes a CA",
        Command::new("openssl").current_dir(dir).args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN=shopflow test {name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
        ]),
    );
}

impl TlsServer {
    fn start() -> TlsServer {
        let dir = tempfile::tempdir().expect("a directory");
        let path = dir.path();
        make_ca(path, "ca");
        make_ca(path, "other-ca");
        run(
            "openssl makes a server key",
            Command::new("openssl").current_dir(path).args([
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=localhost",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
            ]),
        );
        std::fs::write(
            path.join("server.ext"),
            "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n",
        )
        .expect("written");
        run(
            "openssl signs the server certificate",
            Command::new("openssl").current_dir(path).args([
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "server.ext",
                "-out",
                "server.pem",
            ]),
        );
        for sub in ["data", "tmp", "binlog"] {
            std::fs::create_dir(path.join(sub)).expect("a directory");
        }
        let data = path.join("data");
        run(
            "mariadb-install-db",
            Command::new("mariadb-install-db").args([
                "--no-defaults",
                &format!("--datadir={}", data.display()),
                "--user=root",
                "--skip-test-db",
                "--auth-root-authentication-method=socket",
            ]),
        );
        let port = free_port();
        // A socket path short enough for sun_path, whatever the temporary directory.
        let socket = std::env::temp_dir().join(format!("shopflow-tls-{port}.sock"));
        let file = |name: &str| path.join(name).display().to_string();
        let child = Command::new("mariadbd")
            .args([
                "--no-defaults".to_owned(),
                "--user=root".to_owned(),
                format!("--datadir={}", data.display()),
                format!("--tmpdir={}", file("tmp")),
                format!("--socket={}", socket.display()),
                format!("--port={port}"),
                "--bind-address=127.0.0.1".to_owned(),
                "--skip-name-resolve".to_owned(),
                format!("--log-error={}", file("error.log")),
                format!("--pid-file={}", file("mariadbd.pid")),
                format!("--log-bin={}", file("binlog/mysql-bin")),
                "--binlog-format=ROW".to_owned(),
                "--server-id=1".to_owned(),
                format!("--ssl-ca={}", file("ca.pem")),
                format!("--ssl-cert={}", file("server.pem")),
                format!("--ssl-key={}", file("server.key")),
                "--require-secure-transport=ON".to_owned(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mariadbd starts");
        let server = TlsServer { dir, child, port };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let created = Command::new("mariadb")
                .args([
                    "--no-defaults",
                    &format!("--socket={}", socket.display()),
                    "-uroot",
                    "-e",
                    "CREATE USER IF NOT EXISTS 'shop'@'%' IDENTIFIED BY 'S3CRET-tls'; \
                     GRANT ALL PRIVILEGES ON *.* TO 'shop'@'%'; \
                     CREATE DATABASE IF NOT EXISTS shop;",
                ])
                .stdin(Stdio::null())
                .output()
                .is_ok_and(|o| o.status.success());
            if created {
                return server;
            }
            assert!(
                Instant::now() < deadline,
                "mariadbd did not start: {}",
                std::fs::read_to_string(server.dir.path().join("error.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The configuration of the database `shop` at `host`, with `tls` and the CA `ca`.
    fn config(&self, host: &str, tls: MysqlTls, ca: Option<&str>) -> MysqlConfig {
        MysqlConfig {
            tls,
            tls_ca_file: ca.map(|name| self.path(name)),
            connect_retries: 0,
            connect_timeout_ms: 5_000,
            ..MysqlConfig::new(format!("mysql://shop:S3CRET-tls@{host}:{}/shop", self.port))
        }
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn people() -> Vec<Demographic> {
    (1..=3)
        .map(|id| Demographic {
            id: UserId(id),
            age: 20 + id as u8,
            gender: Gender::Female,
            state: "CA".into(),
            country: "US".into(),
        })
        .collect()
}

/// The rows written over TLS and read back over TLS, snapshot and binlog follower included.
fn round_trip(config: &MysqlConfig) -> Result<(), MysqlError> {
    let rows = people();
    load_demographics(config, rows.clone().into_iter(), rows.len() as u64)?;
    assert_eq!(read_table(config)?, rows);
    let (snapshot, feed) = DemographicsSource::start(config)?;
    assert_eq!(snapshot, rows);
    drop(feed);
    Ok(())
}

#[test]
#[ignore = "starts a private MariaDB with TLS (mariadbd, mariadb-install-db, openssl); run with --include-ignored"]
fn tls_modes_connect_verify_and_refuse_as_documented() {
    let server = TlsServer::start();

    // The server takes no plain connection (MariaDB 10.11 says "access denied" to it, the same
    // credentials that pass over TLS below): what passes below went over TLS.
    let plain = server.config("127.0.0.1", MysqlTls::Off, None);
    let error = read_table(&plain).expect_err("plain TCP refused");
    let text = error.to_string().to_lowercase();
    assert!(
        text.contains("secure transport") || text.contains("access denied"),
        "{error}"
    );

    // Encrypted without checks; checked against the CA; checked with the host name too.
    round_trip(&server.config("127.0.0.1", MysqlTls::Required, None)).expect("required");
    round_trip(&server.config("127.0.0.1", MysqlTls::VerifyCa, Some("ca.pem"))).expect("verify-ca");
    round_trip(&server.config("localhost", MysqlTls::VerifyFull, Some("ca.pem")))
        .expect("verify-full");

    // A certificate from another CA, or for another name, is refused at once (not retried)
    // with a TLS error that does not show the password.
    let refusals = [
        server.config("127.0.0.1", MysqlTls::VerifyCa, Some("other-ca.pem")),
        server.config("localhost", MysqlTls::VerifyFull, Some("other-ca.pem")),
        server.config("127.0.0.1", MysqlTls::VerifyFull, Some("ca.pem")),
    ];
    for config in refusals {
        let config = MysqlConfig {
            connect_retries: 5,
            ..config
        };
        let error = read_table(&config).expect_err("refused");
        let text = format!("{error} {error:?}");
        assert!(
            matches!(error, MysqlError::Connect { attempts: 1, .. }),
            "{config:?}: {text}"
        );
        assert!(text.to_lowercase().contains("tls"), "{config:?}: {text}");
        assert!(!text.contains("S3CRET"), "{text}");
    }
}

/// A server without TLS is refused at once when TLS is required: it is not a failure to retry.
#[test]
#[ignore = "needs the shared MariaDB (SHOPFLOW_TEST_MYSQL_URL), which serves no TLS"]
fn a_server_without_tls_is_refused_at_once_when_tls_is_required() {
    let server = std::env::var("SHOPFLOW_TEST_MYSQL_URL")
        .expect("SHOPFLOW_TEST_MYSQL_URL (mysql://user:password@host:port) names the test server");
    let config = MysqlConfig {
        tls: MysqlTls::Required,
        connect_retries: 5,
        ..MysqlConfig::new(format!("{}/mysql", server.trim_end_matches('/')))
    };
    let started = Instant::now();
    let error = read_table(&config).expect_err("no TLS there");
    match &error {
        MysqlError::Connect {
            attempts, detail, ..
        } => {
            assert_eq!(*attempts, 1, "not retried: {detail}");
            // The driver's words: "Client requires secure connection but server does not have
            // this capability".
            assert!(detail.contains("secure connection"), "{detail}");
        }
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(2), "{error}");
}
