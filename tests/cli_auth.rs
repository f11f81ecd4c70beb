//! Credentials end to end with the real binaries: `qscheduler auth
//! new-token` makes a token and its configuration entry, `config check`
//! accepts it, `serve` enforces it (and refuses a non-loopback address
//! without `[auth]`), the CLI sends the token from `QSCHEDULER_TOKEN`,
//! `--token` or `--token-file`, and editing the configuration revokes a
//! token without a restart.

mod cli_support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cli_support::{BIN, Run};

struct Serve {
    child: Child,
    url: String,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(config: &Path, data: &Path) -> Serve {
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
        .arg("--config")
        .arg(config)
        .arg("--data-dir")
        .arg(data)
        .env("RUST_LOG", "info")
        .env_remove("QSCHEDULER_PEER_SECRET")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start qscheduler serve");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                && v["fields"]["message"] == "ready"
                && let Some(addr) = v["fields"]["addr"].as_str()
            {
                let _ = tx.send(addr.to_string());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the server reports its address");
    Serve {
        child,
        url: format!("http://{addr}"),
    }
}

fn run(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .stdin(Stdio::null())
        .env_remove("QSCHEDULER_TOKEN")
        .env_remove("QSCHEDULER_SERVER");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run qscheduler");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `auth new-token`: the token, and the entry to paste.
fn new_token(name: &str, role: &str) -> (String, String) {
    let out = run(&["auth", "new-token", name, "--role", role], &[]);
    let text = out.ok().to_owned();
    let token = text.lines().next().expect("a token line").to_owned();
    assert!(token.starts_with("qs_"), "{text}");
    let entry = &text[text.find("[[auth.tokens]]").expect("an entry")..];
    assert!(!entry.contains(&token), "the entry holds only the hash");
    (token, entry.to_owned())
}

#[test]
fn tokens_from_new_token_are_enforced_and_revocable() {
    let dir = tempfile::tempdir().unwrap();
    let (ops, ops_entry) = new_token("operators", "admin");
    let (viewer, viewer_entry) = new_token("dashboards", "view");
    let config = dir.path().join("qscheduler.toml");
    std::fs::write(
        &config,
        format!("[event_log.files]\nenabled = false\n\n[auth]\n{ops_entry}\n{viewer_entry}"),
    )
    .unwrap();
    let check = run(&["config", "check", config.to_str().unwrap()], &[]);
    assert!(check.ok().ends_with("OK\n"), "{check:?}");

    let s = serve(&config, &dir.path().join("data"));
    let server = [("QSCHEDULER_SERVER", s.url.as_str())];
    let err = run(&["pool", "list"], &server).fails().to_string();
    assert!(
        err.contains("UNAUTHENTICATED") && err.contains("--token"),
        "{err}"
    );
    let with_ops = [
        ("QSCHEDULER_SERVER", s.url.as_str()),
        ("QSCHEDULER_TOKEN", ops.as_str()),
    ];
    run(&["pool", "create", "p-auth"], &with_ops).ok();
    let token_file = dir.path().join("viewer.token");
    std::fs::write(&token_file, format!("{viewer}\n")).unwrap();
    for transport in ["prpc", "grpc"] {
        let out = run(
            &[
                "pool",
                "list",
                "--transport",
                transport,
                "--token-file",
                token_file.to_str().unwrap(),
            ],
            &server,
        );
        assert!(out.ok().contains("p-auth"), "{out:?}");
        let err = run(
            &[
                "pool",
                "delete",
                "p-auth",
                "--transport",
                transport,
                "--token",
                &viewer,
            ],
            &server,
        )
        .fails()
        .to_string();
        assert!(
            err.contains("PERMISSION_DENIED") && err.contains("admin") && !err.contains(&viewer),
            "{err}"
        );
    }

    // Remove the viewer's entry: the running server stops accepting it.
    std::fs::write(
        &config,
        format!("[event_log.files]\nenabled = false\n\n[auth]\n{ops_entry}"),
    )
    .unwrap();
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let out = run(
            &["pool", "list", "--token-file", token_file.to_str().unwrap()],
            &server,
        );
        if out.code == 1 && out.stderr.contains("UNAUTHENTICATED") {
            break;
        }
        assert!(
            Instant::now() < until,
            "the token is still accepted: {out:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    run(&["pool", "list"], &with_ops).ok();
}

#[test]
fn all_interfaces_need_auth_or_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(
        &[
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--data-dir",
            dir.path().join("data").to_str().unwrap(),
        ],
        &[],
    );
    let err = out.fails();
    assert!(
        err.contains("[auth]") && err.contains("--insecure"),
        "{err}"
    );

    let good = "0".repeat(64);
    for (hash, role, line, words) in [
        ("abc", "view", 4, "SHA-256"),
        (good.as_str(), "root", 5, "unknown variant `root`"),
    ] {
        let bad = dir.path().join("bad.toml");
        std::fs::write(
            &bad,
            format!(
                "[auth]\n[[auth.tokens]]\nname = \"x\"\nsha256 = \"{hash}\"\nroles = [\"{role}\"]\n"
            ),
        )
        .unwrap();
        let err = run(&["config", "check", bad.to_str().unwrap()], &[])
            .fails()
            .to_string();
        assert!(
            err.contains(&format!("bad.toml:{line}:")) && err.contains(words),
            "{err}"
        );
    }
    let err = run(&["auth", "new-token", "x", "--role", "root"], &[])
        .usage_error()
        .to_string();
    assert!(err.contains("unknown role"), "{err}");
}

#[test]
fn the_cli_speaks_tls_with_tokens_and_client_certificates() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
    let dir = tempfile::tempdir().unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_pem = ca_params.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |sans: Vec<SanType>| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = sans;
        let cert = params.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (cert, key) = leaf(vec![SanType::DnsName("localhost".try_into().unwrap())]);
    let (ccert, ckey) = leaf(vec![SanType::URI(
        rcgen::string::Ia5String::try_from("spiffe://example/ops").unwrap(),
    )]);
    let file = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_owned()
    };
    let (ca, cert, key, ccert, ckey) = (
        file("ca.crt", &ca_pem),
        file("tls.crt", &cert),
        file("tls.key", &key),
        file("client.crt", &ccert),
        file("client.key", &ckey),
    );
    let (ops, entry) = new_token("operators", "admin");
    let config = dir.path().join("qscheduler.toml");
    std::fs::write(
        &config,
        format!(
            "[event_log.files]\nenabled = false\n\n[auth]\n{entry}\n[tls]\ncert = {cert:?}\n\
             key = {key:?}\nclient_ca = {ca:?}\n\n[[tls.grants]]\n\
             san = \"spiffe://example/ops\"\nroles = [\"view\"]\n"
        ),
    )
    .unwrap();
    run(&["config", "check", config.to_str().unwrap()], &[]).ok();
    let s = serve(&config, &dir.path().join("data"));
    let url = s.url.replace("http://127.0.0.1", "https://localhost");
    for transport in ["prpc", "grpc"] {
        let pool = format!("p-tls-{transport}");
        run(
            &[
                "pool",
                "create",
                &pool,
                "--server",
                &url,
                "--transport",
                transport,
                "--ca-cert",
                &ca,
                "--token",
                &ops,
            ],
            &[],
        )
        .ok();
        let out = run(
            &[
                "pool",
                "list",
                "--server",
                &url,
                "--transport",
                transport,
                "--ca-cert",
                &ca,
                "--client-cert",
                &ccert,
                "--client-key",
                &ckey,
            ],
            &[],
        );
        assert!(out.ok().contains(&pool), "{out:?}");
        // Without the CA the server's certificate is not trusted.
        let err = run(
            &[
                "pool",
                "list",
                "--server",
                &url,
                "--transport",
                transport,
                "--token",
                &ops,
            ],
            &[],
        )
        .fails()
        .to_string();
        assert!(err.contains("UNAVAILABLE"), "{err}");
    }
}
