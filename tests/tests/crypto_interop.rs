//! Interop with the tools a terminal vendor or a regulator would use: the OpenSSL 3 command line (SM2 keys,
//! signatures, encryption) and Python's `cryptography` (SM4-GCM), against Custodian's own code and a
//! running node. A missing tool fails these tests; it never skips them.

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use custodian_events::crypto::{OsEntropy, Sm2KeyPair, Sm2PublicKey, sm4_gcm_open, sm4_gcm_seal};
use custodian_tests::*;
use custodian_tools::terminal_sim::{enterprise_body, terminal_body};
use serde_json::json;

fn openssl(args: &[&str], stdin: &[u8]) -> Vec<u8> {
    run_ok(Command::new("openssl").args(args), stdin)
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

const DISTID: &str = "distid:1234567812345678";

/// An SM2 key pair OpenSSL makes in `dir`: `{name}.key.pem` and its public key `{name}.pub.pem`.
fn openssl_sm2_key(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let key = dir.join(format!("{name}.key.pem"));
    let public = dir.join(format!("{name}.pub.pem"));
    openssl(&["genpkey", "-algorithm", "SM2", "-out", path(&key)], b"");
    openssl(
        &["pkey", "-in", path(&key), "-pubout", "-out", path(&public)],
        b"",
    );
    (key, public)
}

/// `openssl pkeyutl OP… -rawin -digest sm3 -pkeyopt DISTID -in INPUT REST…`: SM2 with SM3 and the default
/// distinguishing id.
fn openssl_sm2_sm3(op: &[&str], input: &Path, rest: &[&str]) -> Vec<u8> {
    let mut args = vec!["pkeyutl"];
    args.extend_from_slice(op);
    args.extend_from_slice(&[
        "-rawin",
        "-digest",
        "sm3",
        "-pkeyopt",
        DISTID,
        "-in",
        path(input),
    ]);
    args.extend_from_slice(rest);
    openssl(&args, b"")
}

/// OpenSSL's SM2 signature of the file `input` with `key`.
fn openssl_sign(key: &Path, input: &Path) -> Vec<u8> {
    openssl_sm2_sm3(&["-sign", "-inkey", path(key)], input, &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openssl_key_and_signature_are_accepted_by_the_node_and_a_tampered_body_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = openssl_sm2_key(dir.path(), "t");

    let (node, client) = start_node(&dir.path().join("node"), |_| {}).await;
    client
        .register("/v1/enterprises", &enterprise_body(0))
        .await
        .unwrap();
    let pem = std::fs::read_to_string(&public).unwrap();
    client
        .register("/v1/terminals", &terminal_body("OSSL-1", 0, Some(&pem)))
        .await
        .unwrap();

    let body = serde_json::to_vec(&json!({"terminal_id": "OSSL-1", "readings": [
        {"seq": 1, "measured_at": "2026-11-26T04:00:00+08:00", "kind": "weight", "value": 88.5, "unit": "kg"}
    ]}))
    .unwrap();
    let body_file = dir.path().join("body.json");
    std::fs::write(&body_file, &body).unwrap();
    let sig = openssl_sign(&key, &body_file);
    let sig_b64 = base64::engine::general_purpose::STANDARD.encode(&sig);
    let resp = client.upload(body.clone(), Some(&sig_b64)).await.unwrap();
    assert_accepted(&resp, "the upload OpenSSL signed");

    let tampered = String::from_utf8(body)
        .unwrap()
        .replace("88.5", "98.5")
        .into_bytes();
    let err = client.upload(tampered, Some(&sig_b64)).await.unwrap_err();
    assert_eq!(err.code(), Some("signature_invalid"));
    node.stop().await.unwrap();
}

#[test]
fn custodian_keys_and_signatures_verify_in_openssl_and_openssl_ones_in_custodian() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("c");
    run_ok(
        Command::new(custodian_bin()).args(["keys", "generate", "--out", path(&prefix)]),
        b"",
    );
    let key_file = dir.path().join("c.key.pem");
    let pub_file = dir.path().join("c.pub.pem");
    // OpenSSL reads both, and derives the same public key from our private key.
    let derived = openssl(&["pkey", "-in", path(&key_file), "-pubout"], b"");
    assert_eq!(derived, std::fs::read(&pub_file).unwrap());

    let key = Sm2KeyPair::from_pkcs8_pem(&std::fs::read_to_string(&key_file).unwrap()).unwrap();
    let msg = dir.path().join("msg");
    std::fs::write(&msg, b"an upload body").unwrap();
    let sig = dir.path().join("msg.sig");
    std::fs::write(&sig, key.sign(b"an upload body")).unwrap();
    openssl_sm2_sm3(
        &["-verify", "-pubin", "-inkey", path(&pub_file)],
        &msg,
        &["-sigfile", path(&sig)],
    );
    // The fingerprint CLI agrees with SHA-256 over OpenSSL's DER.
    let der = openssl(
        &["pkey", "-pubin", "-in", path(&pub_file), "-outform", "DER"],
        b"",
    );
    let fp = run_ok(
        Command::new(custodian_bin()).args(["keys", "fingerprint", path(&pub_file)]),
        b"",
    );
    assert_eq!(String::from_utf8(fp).unwrap().trim(), sha256_hex(&der));

    let ossl_sig = openssl_sign(&key_file, &msg);
    let public = Sm2PublicKey::from_pem(&std::fs::read_to_string(&pub_file).unwrap()).unwrap();
    public.verify(b"an upload body", &ossl_sig).unwrap();
}

#[test]
fn sm2_encryption_interoperates_with_openssl_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let (key_file, pub_file) = openssl_sm2_key(dir.path(), "k");
    let key = Sm2KeyPair::from_pkcs8_pem(&std::fs::read_to_string(&key_file).unwrap()).unwrap();
    let public = Sm2PublicKey::from_pem(&std::fs::read_to_string(&pub_file).unwrap()).unwrap();

    let ours = dir.path().join("ours.der");
    std::fs::write(&ours, public.encrypt(b"a content key 16", &OsEntropy)).unwrap();
    let plain = openssl(
        &[
            "pkeyutl",
            "-decrypt",
            "-inkey",
            path(&key_file),
            "-in",
            path(&ours),
        ],
        b"",
    );
    assert_eq!(plain, b"a content key 16");

    let msg = dir.path().join("m");
    std::fs::write(&msg, b"from openssl").unwrap();
    let theirs = openssl(
        &[
            "pkeyutl",
            "-encrypt",
            "-pubin",
            "-inkey",
            path(&pub_file),
            "-in",
            path(&msg),
        ],
        b"",
    );
    assert_eq!(key.decrypt(&theirs).unwrap(), b"from openssl");
}

#[test]
fn sm4_gcm_interoperates_with_python_cryptography_both_ways() {
    let python = interop_python();
    let script = workspace_root().join("tests/interop/envelope.py");
    let key = [0x42u8; 16];
    let nonce = [0x24u8; 12];
    let aad = b"stream\0ReadingRecorded\0";
    let plain = b"{\"value\":152300000}".repeat(9);
    let hexes = [hex::encode(key), hex::encode(nonce), hex::encode(aad)];

    let script_cmd = |verb: &str| {
        let mut cmd = Command::new(&python);
        cmd.arg(&script).arg(verb).args(&hexes);
        cmd
    };

    let ours = sm4_gcm_seal(&key, &nonce, aad, &plain);
    let opened = run_ok(&mut script_cmd("sm4gcm-open"), &ours);
    assert_eq!(opened, plain);

    let theirs = run_ok(&mut script_cmd("sm4gcm-seal"), &plain);
    assert_eq!(
        theirs, ours,
        "SM4-GCM is deterministic for a given key and nonce"
    );
    assert_eq!(sm4_gcm_open(&key, &nonce, aad, &theirs).unwrap(), plain);
}

#[test]
fn envelopes_sealed_by_an_independent_script_open_in_custodian_and_the_reverse() {
    let python = interop_python();
    let script = workspace_root().join("tests/interop/envelope.py");
    let dir = tempfile::tempdir().unwrap();
    let (cloud_key, cloud_pub) = openssl_sm2_key(dir.path(), "cloud");
    let (edge_key, edge_pub) = openssl_sm2_key(dir.path(), "edge");
    let script_cmd = |args: [&str; 3]| {
        let mut cmd = Command::new(&python);
        cmd.arg(&script).args(args);
        cmd
    };
    let custodian_cmd = |args: &[&str]| {
        let mut cmd = Command::new(custodian_bin());
        cmd.args(args);
        cmd
    };
    let open_in_custodian = [
        "envelope",
        "open",
        "--key",
        path(&cloud_key),
        "--from",
        path(&edge_pub),
    ];
    let payload = b"{\"batch\":\"readings from the edge\"}\n".repeat(50);

    let sealed_by_script = run_ok(
        &mut script_cmd(["seal", path(&cloud_pub), path(&edge_key)]),
        &payload,
    );
    let opened = run_ok(&mut custodian_cmd(&open_in_custodian), &sealed_by_script);
    assert_eq!(opened, payload);

    let sealed_by_custodian = run_ok(
        &mut custodian_cmd(&[
            "envelope",
            "seal",
            "--to",
            path(&cloud_pub),
            "--sign-with",
            path(&edge_key),
        ]),
        &payload,
    );
    let opened = run_ok(
        &mut script_cmd(["open", path(&cloud_key), path(&edge_pub)]),
        &sealed_by_custodian,
    );
    assert_eq!(opened, payload);

    // A changed byte is refused by Custodian with a clear error.
    let mut tampered = sealed_by_script.clone();
    let at = tampered.len() / 2;
    tampered[at] ^= 1;
    let out = run(&mut custodian_cmd(&open_in_custodian), &tampered);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("signature does not verify"),
        "{out:?}"
    );
}
