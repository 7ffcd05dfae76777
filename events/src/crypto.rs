//! China's national cryptographic algorithms as Custodian uses them, on RustCrypto's `sm2`, `sm4` and
//! `aes-gcm` crates, in the formats that OpenSSL 3 and Python's `cryptography` read and write:
//!
//! - **SM2 keys**: private keys as PKCS#8 PEM (`openssl genpkey -algorithm SM2`), public keys as
//!   SubjectPublicKeyInfo PEM/DER (`openssl pkey -pubout`). A key's fingerprint is the SHA-256 of its SPKI
//!   DER.
//! - **SM2 signatures** (GM/T 0003-2012): SM3 digest with the standard user id `1234567812345678`, DER
//!   `SEQUENCE { r, s }` — what `openssl pkeyutl -sign -rawin -digest sm3 -pkeyopt
//!   distid:1234567812345678` makes.
//! - **SM2 public-key encryption**: the GM/T 0009 ASN.1 form `SEQUENCE { x, y, C3 (SM3), C2 }` (C1C3C2),
//!   what `openssl pkeyutl -encrypt` makes.
//! - **SM4-GCM** (RFC 8998): 16-byte key, 12-byte nonce, output `ciphertext ‖ 16-byte tag`.
//!
//! This module never reads randomness itself: whatever needs it takes an [`Entropy`] (the node passes the
//! operating system's; a simulation passes a seeded one).

use aes_gcm::AesGcm;
use aes_gcm::aead::consts::U12;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use sm2::dsa::signature::{Signer, Verifier};
use sm2::dsa::{Signature, SigningKey, VerifyingKey};
use sm2::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding,
};
use sm2::pke::{DecryptingKey, EncryptingKey};
use sm2::{PublicKey, SecretKey};

use crate::Rejection;
use crate::fingerprint::{Fingerprint, fingerprint};

/// The SM2 user id (distinguishing identifier) every Custodian signature uses: the standard default.
/// OpenSSL 3's own default is the empty string, so OpenSSL needs `-pkeyopt distid:1234567812345678`.
pub const SM2_DISTID: &str = "1234567812345678";

/// SM4-GCM key length in bytes.
pub const SM4_KEY_LEN: usize = 16;
/// SM4-GCM nonce length in bytes.
pub const GCM_NONCE_LEN: usize = 12;
/// SM4-GCM tag length in bytes.
pub const GCM_TAG_LEN: usize = 16;

type Sm4Gcm = AesGcm<sm4::Sm4, U12>;

/// A source of cryptographic randomness, injected so the domain core and simulations stay deterministic.
pub trait Entropy: Send + Sync + 'static {
    fn fill(&self, buf: &mut [u8]);
}

/// The operating system's randomness (`getrandom`).
pub struct OsEntropy;

impl Entropy for OsEntropy {
    fn fill(&self, buf: &mut [u8]) {
        use sm2::elliptic_curve::rand_core::TryRng as _;
        sm2::elliptic_curve::common::getrandom::SysRng
            .try_fill_bytes(buf)
            .expect("the operating system's random number generator failed");
    }
}

/// Adapts an [`Entropy`] to the RNG traits the `sm2` crate takes.
struct EntropyRng<'a>(&'a dyn Entropy);

impl sm2::elliptic_curve::rand_core::TryRng for EntropyRng<'_> {
    type Error = core::convert::Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        let mut b = [0u8; 4];
        self.0.fill(&mut b);
        Ok(u32::from_le_bytes(b))
    }

    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        let mut b = [0u8; 8];
        self.0.fill(&mut b);
        Ok(u64::from_le_bytes(b))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        self.0.fill(dst);
        Ok(())
    }
}

impl sm2::elliptic_curve::rand_core::TryCryptoRng for EntropyRng<'_> {}

/// A failed cryptographic check or a key that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error("not a valid SM2 key: {0}")]
    BadKey(String),
    #[error("the signature is not DER-encoded SM2 (SEQUENCE {{ r, s }})")]
    MalformedSignature,
    #[error("the signature does not verify")]
    BadSignature,
    #[error("decryption failed: wrong key, or the data was changed")]
    DecryptFailed,
}

/// Reads an SM2 public key from SubjectPublicKeyInfo PEM and returns its DER, checking that it is a point
/// on the SM2 curve.
pub fn sm2_public_key_der_from_pem(pem: &str) -> Result<Vec<u8>, Rejection> {
    let pk = PublicKey::from_public_key_pem(pem.trim()).map_err(|e| {
        Rejection::new(
            "invalid_public_key",
            format!(
                "public_key_pem is not an SM2 SubjectPublicKeyInfo PEM (as `openssl pkey -pubout` writes): {e}"
            ),
        )
    })?;
    Ok(pk
        .to_public_key_der()
        .expect("encoding a valid public key")
        .as_bytes()
        .to_vec())
}

/// SubjectPublicKeyInfo PEM of an SM2 public key given as DER.
pub fn sm2_public_key_pem_from_der(der: &[u8]) -> Result<String, CryptoError> {
    let pk = PublicKey::from_public_key_der(der).map_err(|e| CryptoError::BadKey(e.to_string()))?;
    Ok(pk
        .to_public_key_pem(LineEnding::LF)
        .expect("encoding a valid public key"))
}

/// The fingerprint of a public key: SHA-256 of its SubjectPublicKeyInfo DER.
pub fn key_fingerprint(spki_der: &[u8]) -> Fingerprint {
    fingerprint(spki_der)
}

/// HMAC-SM3 (RFC 2104 over SM3, GB/T 15852.2) of `data` under `key`: keyed hashes for what must be looked
/// up but not read (index keys at rest), and check values of secrets that may be compared but not shown.
pub fn hmac_sm3(key: &[u8], data: &[u8]) -> [u8; 32] {
    use hmac::{KeyInit as _, Mac as _};
    let mut mac =
        hmac::Hmac::<sm3::Sm3>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// A check value of a secret: 16 bytes of HMAC-SM3 under the secret of a label naming what it checks, as
/// hex. Two parties with the same secret get the same value; the value tells nothing of the secret.
pub fn check_value(secret: &[u8], label: &str) -> String {
    hex::encode(&hmac_sm3(secret, label.as_bytes())[..16])
}

/// An SM2 key pair.
#[derive(Clone)]
pub struct Sm2KeyPair {
    secret: SecretKey,
}

impl Sm2KeyPair {
    /// A fresh key pair.
    pub fn generate(entropy: &dyn Entropy) -> Self {
        use sm2::elliptic_curve::Generate as _;
        let secret = SecretKey::try_generate_from_rng(&mut EntropyRng(entropy))
            .expect("infallible randomness");
        Sm2KeyPair { secret }
    }

    /// Reads a PKCS#8 PEM private key (`openssl genpkey -algorithm SM2`).
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, CryptoError> {
        SecretKey::from_pkcs8_pem(pem.trim())
            .map(|secret| Sm2KeyPair { secret })
            .map_err(|e| CryptoError::BadKey(e.to_string()))
    }

    pub fn to_pkcs8_pem(&self) -> String {
        self.secret
            .to_pkcs8_pem(LineEnding::LF)
            .expect("encoding a valid secret key")
            .to_string()
    }

    pub fn public_key_der(&self) -> Vec<u8> {
        self.secret
            .public_key()
            .to_public_key_der()
            .expect("encoding a valid public key")
            .as_bytes()
            .to_vec()
    }

    pub fn public_key_pem(&self) -> String {
        self.secret
            .public_key()
            .to_public_key_pem(LineEnding::LF)
            .expect("encoding a valid public key")
    }

    /// The DER SM2 signature over `msg` (SM3, user id [`SM2_DISTID`]). Deterministic (RFC 6979 nonce).
    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        let key = SigningKey::new(SM2_DISTID, &self.secret).expect("a valid key and user id");
        let sig: Signature = key.sign(msg);
        sig.to_der().as_bytes().to_vec()
    }

    /// Decrypts SM2 ciphertext in the DER C1C3C2 form.
    pub fn decrypt(&self, ciphertext_der: &[u8]) -> Result<Vec<u8>, CryptoError> {
        DecryptingKey::new(self.secret.clone())
            .decrypt_der(ciphertext_der)
            .map_err(|_| CryptoError::DecryptFailed)
    }
}

/// A parsed SM2 public key, ready to verify signatures (parse once, verify many).
#[derive(Clone)]
pub struct Sm2PublicKey {
    verifying: VerifyingKey,
    public: PublicKey,
}

impl std::fmt::Debug for Sm2PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sm2PublicKey")
    }
}

impl Sm2PublicKey {
    pub fn from_der(spki_der: &[u8]) -> Result<Self, CryptoError> {
        let public = PublicKey::from_public_key_der(spki_der)
            .map_err(|e| CryptoError::BadKey(e.to_string()))?;
        Self::from_public(public)
    }

    pub fn from_pem(pem: &str) -> Result<Self, CryptoError> {
        let public = PublicKey::from_public_key_pem(pem.trim())
            .map_err(|e| CryptoError::BadKey(e.to_string()))?;
        Self::from_public(public)
    }

    fn from_public(public: PublicKey) -> Result<Self, CryptoError> {
        let verifying = VerifyingKey::new(SM2_DISTID, public)
            .map_err(|e| CryptoError::BadKey(e.to_string()))?;
        Ok(Sm2PublicKey { verifying, public })
    }

    pub fn to_der(&self) -> Vec<u8> {
        self.public
            .to_public_key_der()
            .expect("encoding a valid public key")
            .as_bytes()
            .to_vec()
    }

    /// Checks a DER SM2 signature over `msg`.
    pub fn verify(&self, msg: &[u8], signature_der: &[u8]) -> Result<(), CryptoError> {
        let sig =
            Signature::from_der(signature_der).map_err(|_| CryptoError::MalformedSignature)?;
        self.verifying
            .verify(msg, &sig)
            .map_err(|_| CryptoError::BadSignature)
    }

    /// SM2 public-key encryption of `msg`, DER C1C3C2 form.
    pub fn encrypt(&self, msg: &[u8], entropy: &dyn Entropy) -> Vec<u8> {
        EncryptingKey::new(self.public)
            .encrypt_der(&mut EntropyRng(entropy), msg)
            .expect("SM2 encryption with infallible randomness")
    }
}

/// An SM4-GCM key with its key schedule computed once (for keys that seal many payloads).
#[derive(Clone)]
pub struct Sm4GcmKey(Sm4Gcm);

impl Sm4GcmKey {
    pub fn new(key: &[u8; SM4_KEY_LEN]) -> Self {
        Sm4GcmKey(Sm4Gcm::new_from_slice(key).expect("a 16-byte key"))
    }

    /// `ciphertext ‖ tag`.
    pub fn seal(&self, nonce: &[u8; GCM_NONCE_LEN], aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let nonce = aes_gcm::Nonce::<U12>::try_from(&nonce[..]).expect("a 12-byte nonce");
        self.0
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .expect("SM4-GCM encryption of an in-memory buffer")
    }

    pub fn open(
        &self,
        nonce: &[u8; GCM_NONCE_LEN],
        aad: &[u8],
        sealed: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let nonce = aes_gcm::Nonce::<U12>::try_from(&nonce[..]).expect("a 12-byte nonce");
        self.0
            .decrypt(&nonce, Payload { msg: sealed, aad })
            .map_err(|_| CryptoError::DecryptFailed)
    }
}

/// SM4-GCM encryption: `ciphertext ‖ tag`.
pub fn sm4_gcm_seal(
    key: &[u8; SM4_KEY_LEN],
    nonce: &[u8; GCM_NONCE_LEN],
    aad: &[u8],
    plaintext: &[u8],
) -> Vec<u8> {
    Sm4GcmKey::new(key).seal(nonce, aad, plaintext)
}

/// SM4-GCM decryption of `ciphertext ‖ tag`; fails if anything was changed.
pub fn sm4_gcm_open(
    key: &[u8; SM4_KEY_LEN],
    nonce: &[u8; GCM_NONCE_LEN],
    aad: &[u8],
    sealed: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    Sm4GcmKey::new(key).open(nonce, aad, sealed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        hex::decode(s.split_whitespace().collect::<String>()).unwrap()
    }

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!("{FIXTURES}/{name}")).unwrap()
    }

    struct Counter(std::sync::atomic::AtomicU8);
    impl Entropy for Counter {
        fn fill(&self, buf: &mut [u8]) {
            for b in buf {
                *b = self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }

    #[test]
    fn sm4_block_known_answers_gmt_0002_2012() {
        use sm4::cipher::{Block, BlockCipherEncrypt, KeyInit};
        let k = unhex("0123456789abcdeffedcba9876543210");
        let sm4 = sm4::Sm4::new_from_slice(&k).unwrap();
        let mut block = Block::<sm4::Sm4>::try_from(&k[..]).unwrap();
        sm4.encrypt_block(&mut block);
        assert_eq!(hex::encode(block), "681edf34d206965e86b3e94f536e4246");
        let mut block = Block::<sm4::Sm4>::try_from(&k[..]).unwrap();
        for _ in 0..1_000_000 {
            sm4.encrypt_block(&mut block);
        }
        assert_eq!(hex::encode(block), "595298c7c6fd271f0402f804c33d3f66");
    }

    #[test]
    fn sm4_gcm_known_answer_rfc_8998_a1() {
        let key: [u8; 16] = unhex("0123456789ABCDEFFEDCBA9876543210")
            .try_into()
            .unwrap();
        let nonce: [u8; 12] = unhex("00001234567800000000ABCD").try_into().unwrap();
        let aad = unhex("FEEDFACEDEADBEEFFEEDFACEDEADBEEFABADDAD2");
        let pt = unhex(
            "AAAAAAAAAAAAAAAABBBBBBBBBBBBBBBBCCCCCCCCCCCCCCCCDDDDDDDDDDDDDDDD
             EEEEEEEEEEEEEEEEFFFFFFFFFFFFFFFFEEEEEEEEEEEEEEEEAAAAAAAAAAAAAAAA",
        );
        let sealed = sm4_gcm_seal(&key, &nonce, &aad, &pt);
        assert_eq!(
            hex::encode(&sealed),
            "17f399f08c67d5ee19d0dc9969c4bb7d5fd46fd3756489069157b282bb200735\
             d82710ca5c22f0ccfa7cbf93d496ac15a56834cbcf98c397b4024a2691233b8d\
             83de3541e4c2b58177e065a9bf7b62ec"
        );
        assert_eq!(sm4_gcm_open(&key, &nonce, &aad, &sealed).unwrap(), pt);
        for i in [0, sealed.len() / 2, sealed.len() - 1] {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert_eq!(
                sm4_gcm_open(&key, &nonce, &aad, &bad),
                Err(CryptoError::DecryptFailed)
            );
        }
        assert!(sm4_gcm_open(&key, &nonce, b"other aad", &sealed).is_err());
    }

    #[test]
    fn hmac_sm3_matches_openssl() {
        // `printf 'what do ya want for nothing?' | openssl dgst -sm3 -hmac Jefe` (OpenSSL 3.0), the same in
        // Python's `hmac.new(b"Jefe", …, "sm3")`: RFC 2202's second test case over SM3.
        assert_eq!(
            hex::encode(hmac_sm3(b"Jefe", b"what do ya want for nothing?")),
            "2e87f1d16862e6d964b50a5200bf2b10b764faa9680a296a2405f24bec39f882"
        );
        // A key longer than SM3's 64-byte block is hashed first, as RFC 2104 says.
        assert_ne!(hmac_sm3(&[7; 65], b"x"), hmac_sm3(&[7; 64], b"x"));
        assert_eq!(check_value(b"k", "label").len(), 32);
        assert_ne!(check_value(b"k", "label"), check_value(b"k", "other"));
    }

    #[test]
    fn sm3_known_answer() {
        use sm3::Digest;
        assert_eq!(
            hex::encode(sm3::Sm3::digest(b"abc")),
            "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"
        );
    }

    #[test]
    fn openssl_made_signature_and_ciphertext_verify_and_decrypt() {
        let key = Sm2KeyPair::from_pkcs8_pem(&String::from_utf8(fixture("sm2.key.pem")).unwrap())
            .unwrap();
        let public =
            Sm2PublicKey::from_pem(&String::from_utf8(fixture("sm2.pub.pem")).unwrap()).unwrap();
        assert_eq!(public.to_der(), key.public_key_der());
        let msg = fixture("msg.txt");
        public.verify(&msg, &fixture("msg.sig.der")).unwrap();
        assert_eq!(
            public.verify(b"custodian fixture?\n", &fixture("msg.sig.der")),
            Err(CryptoError::BadSignature)
        );
        assert_eq!(
            public.verify(&msg, b"not der"),
            Err(CryptoError::MalformedSignature)
        );
        assert_eq!(key.decrypt(&fixture("msg.sm2.der")).unwrap(), msg);
    }

    #[test]
    fn sign_verify_encrypt_decrypt_round_trip() {
        let entropy = Counter(Default::default());
        let key = Sm2KeyPair::generate(&OsEntropy);
        let public = Sm2PublicKey::from_der(&key.public_key_der()).unwrap();
        let sig = key.sign(b"body");
        assert!(
            (70..=72).contains(&sig.len()),
            "DER signatures are 70-72 bytes"
        );
        public.verify(b"body", &sig).unwrap();
        assert!(public.verify(b"Body", &sig).is_err());
        let ct = public.encrypt(b"sixteen byte key", &entropy);
        assert_eq!(key.decrypt(&ct).unwrap(), b"sixteen byte key");
        let pem = key.to_pkcs8_pem();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert_eq!(
            Sm2KeyPair::from_pkcs8_pem(&pem).unwrap().public_key_der(),
            key.public_key_der()
        );
        assert_eq!(
            sm2_public_key_der_from_pem(&key.public_key_pem()).unwrap(),
            key.public_key_der()
        );
        assert_eq!(
            sm2_public_key_der_from_pem(
                "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"
            )
            .unwrap_err()
            .code,
            "invalid_public_key"
        );
    }
}
