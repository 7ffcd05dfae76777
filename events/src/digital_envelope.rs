//! The SM2/SM4 digital envelope for data leaving a node (edge-to-cloud batches, exports): a fresh SM4-GCM
//! content key per envelope, encapsulated with the recipient's SM2 public key, and the whole signed with
//! the sender's SM2 key. The byte layout is specified in `docs/crypto/digital-envelope.md` so that a
//! third party can implement it with OpenSSL and any SM4-GCM library; `tests/interop/envelope.py` does.
//!
//! ```text
//! offset        size     field
//! 0             4        magic "CSE1"
//! 4             32       SHA-256 of the recipient's SubjectPublicKeyInfo DER
//! 36            32       SHA-256 of the sender's SubjectPublicKeyInfo DER
//! 68            2        k = length of the encapsulated key, u16 big-endian
//! 70            k        SM2 encryption (GM/T 0009 DER, C1C3C2) of the 16-byte content key
//! 70+k          12       SM4-GCM nonce
//! 82+k          8        c = length of ciphertext ‖ tag, u64 big-endian
//! 90+k          c        SM4-GCM(content key, nonce, AAD = bytes [0, 90+k)) of the payload, ‖ 16-byte tag
//! 90+k+c        2        s = length of the signature, u16 big-endian
//! 92+k+c        s        SM2 signature (DER, SM3, user id 1234567812345678) over bytes [0, 90+k+c)
//! ```

use crate::crypto::{
    CryptoError, Entropy, GCM_NONCE_LEN, GCM_TAG_LEN, SM4_KEY_LEN, Sm2KeyPair, Sm2PublicKey,
    key_fingerprint, sm4_gcm_open, sm4_gcm_seal,
};

pub const MAGIC: &[u8; 4] = b"CSE1";

/// The largest payload an envelope carries: 256 MiB.
pub const PAYLOAD_BYTES_MAX: u64 = 256 * 1024 * 1024;

/// Why an envelope does not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("not a Custodian envelope (bad magic or truncated at byte {0})")]
    Malformed(usize),
    #[error(
        "the envelope is for another recipient (key {0}); open it with the matching private key"
    )]
    WrongRecipient(String),
    #[error("the envelope was signed by key {0}, not by the expected sender")]
    WrongSender(String),
    #[error("the sender's signature does not verify: the envelope was changed or forged")]
    BadSignature,
    #[error("the content key or payload does not decrypt: the envelope was changed")]
    DecryptFailed,
    #[error("the payload of {0} bytes is over the limit of {PAYLOAD_BYTES_MAX}")]
    TooLarge(u64),
}

/// Seals `payload` for `recipient`, signed by `sender`.
pub fn seal(
    payload: &[u8],
    recipient: &Sm2PublicKey,
    sender: &Sm2KeyPair,
    entropy: &dyn Entropy,
) -> Result<Vec<u8>, EnvelopeError> {
    if payload.len() as u64 > PAYLOAD_BYTES_MAX {
        return Err(EnvelopeError::TooLarge(payload.len() as u64));
    }
    let mut content_key = [0u8; SM4_KEY_LEN];
    entropy.fill(&mut content_key);
    let mut nonce = [0u8; GCM_NONCE_LEN];
    entropy.fill(&mut nonce);
    let ek = recipient.encrypt(&content_key, entropy);
    let ct_len = (payload.len() + GCM_TAG_LEN) as u64;

    let mut out = Vec::with_capacity(92 + ek.len() + payload.len() + GCM_TAG_LEN + 72);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&key_fingerprint(&recipient.to_der()));
    out.extend_from_slice(&key_fingerprint(&sender.public_key_der()));
    out.extend_from_slice(&(ek.len() as u16).to_be_bytes());
    out.extend_from_slice(&ek);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct_len.to_be_bytes());
    let ct = sm4_gcm_seal(&content_key, &nonce, &out, payload);
    out.extend_from_slice(&ct);
    let sig = sender.sign(&out);
    out.extend_from_slice(&(sig.len() as u16).to_be_bytes());
    out.extend_from_slice(&sig);
    Ok(out)
}

/// Checks the sender's signature, then decrypts for `recipient`.
pub fn open(
    envelope: &[u8],
    recipient: &Sm2KeyPair,
    sender: &Sm2PublicKey,
) -> Result<Vec<u8>, EnvelopeError> {
    let mut r = Reader {
        buf: envelope,
        at: 0,
    };
    if r.take(4)? != MAGIC {
        return Err(EnvelopeError::Malformed(0));
    }
    let recipient_fp = r.take(32)?;
    let sender_fp = r.take(32)?;
    let k = u16::from_be_bytes(r.take(2)?.try_into().expect("2 bytes")) as usize;
    let ek = r.take(k)?;
    let nonce: [u8; GCM_NONCE_LEN] = r.take(GCM_NONCE_LEN)?.try_into().expect("12 bytes");
    let c = u64::from_be_bytes(r.take(8)?.try_into().expect("8 bytes"));
    if c > PAYLOAD_BYTES_MAX + GCM_TAG_LEN as u64 {
        return Err(EnvelopeError::TooLarge(c));
    }
    let aad_end = r.at;
    let ct = r.take(c as usize)?;
    let signed_end = r.at;
    let s = u16::from_be_bytes(r.take(2)?.try_into().expect("2 bytes")) as usize;
    let sig = r.take(s)?;
    if r.at != envelope.len() {
        return Err(EnvelopeError::Malformed(r.at));
    }

    if sender_fp != key_fingerprint(&sender.to_der()) {
        return Err(EnvelopeError::WrongSender(hex::encode(sender_fp)));
    }
    sender
        .verify(&envelope[..signed_end], sig)
        .map_err(|_| EnvelopeError::BadSignature)?;
    if recipient_fp != key_fingerprint(&recipient.public_key_der()) {
        return Err(EnvelopeError::WrongRecipient(hex::encode(recipient_fp)));
    }
    let content_key: [u8; SM4_KEY_LEN] = recipient
        .decrypt(ek)
        .map_err(|_| EnvelopeError::DecryptFailed)?
        .try_into()
        .map_err(|_| EnvelopeError::DecryptFailed)?;
    sm4_gcm_open(&content_key, &nonce, &envelope[..aad_end], ct).map_err(|e| match e {
        CryptoError::DecryptFailed => EnvelopeError::DecryptFailed,
        _ => EnvelopeError::DecryptFailed,
    })
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], EnvelopeError> {
        let end = self
            .at
            .checked_add(n)
            .ok_or(EnvelopeError::Malformed(self.at))?;
        let out = self
            .buf
            .get(self.at..end)
            .ok_or(EnvelopeError::Malformed(self.at))?;
        self.at = end;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::OsEntropy;

    #[test]
    fn seal_then_open_and_every_tampering_is_refused() {
        let recipient = Sm2KeyPair::generate(&OsEntropy);
        let sender = Sm2KeyPair::generate(&OsEntropy);
        let recipient_pub = Sm2PublicKey::from_der(&recipient.public_key_der()).unwrap();
        let sender_pub = Sm2PublicKey::from_der(&sender.public_key_der()).unwrap();
        let payload = br#"{"batch":[1,2,3]}"#.repeat(20);
        let env = seal(&payload, &recipient_pub, &sender, &OsEntropy).unwrap();
        assert_eq!(open(&env, &recipient, &sender_pub).unwrap(), payload);

        let stranger = Sm2KeyPair::generate(&OsEntropy);
        let stranger_pub = Sm2PublicKey::from_der(&stranger.public_key_der()).unwrap();
        assert!(matches!(
            open(&env, &stranger, &sender_pub),
            Err(EnvelopeError::WrongRecipient(_))
        ));
        assert!(matches!(
            open(&env, &recipient, &stranger_pub),
            Err(EnvelopeError::WrongSender(_))
        ));
        // Flip a byte anywhere: the signature (or the framing) catches it.
        for i in (0..env.len()).step_by(7) {
            let mut bad = env.clone();
            bad[i] ^= 0x10;
            assert!(open(&bad, &recipient, &sender_pub).is_err(), "byte {i}");
        }
        assert!(matches!(
            open(&env[..env.len() - 1], &recipient, &sender_pub),
            Err(EnvelopeError::Malformed(_))
        ));
        assert!(matches!(
            open(b"nope", &recipient, &sender_pub),
            Err(EnvelopeError::Malformed(0))
        ));
    }

    #[test]
    fn an_empty_payload_seals_too() {
        let recipient = Sm2KeyPair::generate(&OsEntropy);
        let sender = Sm2KeyPair::generate(&OsEntropy);
        let env = seal(
            b"",
            &Sm2PublicKey::from_der(&recipient.public_key_der()).unwrap(),
            &sender,
            &OsEntropy,
        )
        .unwrap();
        let got = open(
            &env,
            &recipient,
            &Sm2PublicKey::from_der(&sender.public_key_der()).unwrap(),
        );
        assert_eq!(got.unwrap(), b"");
    }
}
