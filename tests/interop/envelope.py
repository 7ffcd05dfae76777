#!/usr/bin/env python3
"""An independent implementation of Custodian's SM2/SM4 digital envelope and of SM4-GCM, for interop tests.

SM2 (encryption, signatures, key handling) goes through the OpenSSL 3 command line; SM4-GCM through Python's
`cryptography` (42 or later). Nothing here comes from Custodian's own code: it follows
docs/crypto/digital-envelope.md byte by byte.

  envelope.py seal RECIPIENT_PUB.pem SENDER_KEY.pem   < payload  > envelope
  envelope.py open RECIPIENT_KEY.pem SENDER_PUB.pem   < envelope > payload
  envelope.py sm4gcm-seal KEY_HEX NONCE_HEX AAD_HEX   < plaintext  > ciphertext||tag
  envelope.py sm4gcm-open KEY_HEX NONCE_HEX AAD_HEX   < ciphertext||tag > plaintext
"""
import hashlib
import os
import struct
import subprocess
import sys
import tempfile

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

DISTID = "distid:1234567812345678"
MAGIC = b"CSE1"


def openssl(*args, stdin=None):
    out = subprocess.run(["openssl", *args], input=stdin, capture_output=True)
    if out.returncode != 0:
        sys.exit(f"openssl {' '.join(args)} failed: {out.stderr.decode(errors='replace')}")
    return out.stdout


def spki_der(pem_path, private=False):
    if private:
        return openssl("pkey", "-in", pem_path, "-pubout", "-outform", "DER")
    return openssl("pkey", "-pubin", "-in", pem_path, "-outform", "DER")


def sm4gcm_seal(key, nonce, aad, plaintext):
    enc = Cipher(algorithms.SM4(key), modes.GCM(nonce)).encryptor()
    enc.authenticate_additional_data(aad)
    return enc.update(plaintext) + enc.finalize() + enc.tag


def sm4gcm_open(key, nonce, aad, sealed):
    ct, tag = sealed[:-16], sealed[-16:]
    dec = Cipher(algorithms.SM4(key), modes.GCM(nonce, tag)).decryptor()
    dec.authenticate_additional_data(aad)
    return dec.update(ct) + dec.finalize()


def with_file(data, fn):
    with tempfile.NamedTemporaryFile(delete=False) as f:
        f.write(data)
        path = f.name
    try:
        return fn(path)
    finally:
        os.unlink(path)


def seal(payload, recipient_pub, sender_key):
    content_key = os.urandom(16)
    nonce = os.urandom(12)
    ek = with_file(content_key, lambda p: openssl("pkeyutl", "-encrypt", "-pubin", "-inkey", recipient_pub, "-in", p))
    header = (
        MAGIC
        + hashlib.sha256(spki_der(recipient_pub)).digest()
        + hashlib.sha256(spki_der(sender_key, private=True)).digest()
        + struct.pack(">H", len(ek))
        + ek
        + nonce
        + struct.pack(">Q", len(payload) + 16)
    )
    signed = header + sm4gcm_seal(content_key, nonce, header, payload)
    sig = with_file(signed, lambda p: openssl(
        "pkeyutl", "-sign", "-inkey", sender_key, "-rawin", "-digest", "sm3", "-pkeyopt", DISTID, "-in", p))
    return signed + struct.pack(">H", len(sig)) + sig


def open_(env, recipient_key, sender_pub):
    at = 0

    def take(n):
        nonlocal at
        if at + n > len(env):
            sys.exit(f"truncated envelope at byte {at}")
        out = env[at:at + n]
        at += n
        return out

    if take(4) != MAGIC:
        sys.exit("not a Custodian envelope")
    recipient_fp, sender_fp = take(32), take(32)
    ek = take(struct.unpack(">H", take(2))[0])
    nonce = take(12)
    ct_len = struct.unpack(">Q", take(8))[0]
    aad_end = at
    ct = take(ct_len)
    signed_end = at
    sig = take(struct.unpack(">H", take(2))[0])
    if at != len(env):
        sys.exit("trailing bytes after the signature")
    if sender_fp != hashlib.sha256(spki_der(sender_pub)).digest():
        sys.exit("signed by another sender")
    if recipient_fp != hashlib.sha256(spki_der(recipient_key, private=True)).digest():
        sys.exit("for another recipient")
    with tempfile.NamedTemporaryFile(delete=False) as s:
        s.write(sig)
        sig_path = s.name
    try:
        with_file(env[:signed_end], lambda p: openssl(
            "pkeyutl", "-verify", "-pubin", "-inkey", sender_pub, "-rawin", "-digest", "sm3",
            "-pkeyopt", DISTID, "-in", p, "-sigfile", sig_path))
    finally:
        os.unlink(sig_path)
    content_key = with_file(ek, lambda p: openssl("pkeyutl", "-decrypt", "-inkey", recipient_key, "-in", p))
    return sm4gcm_open(content_key, nonce, env[:aad_end], ct)


def main():
    cmd, *args = sys.argv[1:]
    data = sys.stdin.buffer.read()
    if cmd == "seal":
        out = seal(data, *args)
    elif cmd == "open":
        out = open_(data, *args)
    elif cmd == "sm4gcm-seal":
        out = sm4gcm_seal(*(bytes.fromhex(a) for a in args), data)
    elif cmd == "sm4gcm-open":
        out = sm4gcm_open(*(bytes.fromhex(a) for a in args), data)
    else:
        sys.exit(__doc__)
    sys.stdout.buffer.write(out)


if __name__ == "__main__":
    main()
