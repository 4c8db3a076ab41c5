#ifndef UNIBUS_COPENSSL_SHIM_H
#define UNIBUS_COPENSSL_SHIM_H
/*
 * The pieces of OpenSSL's libcrypto that Unibus uses: SHA-256 (for HMAC and
 * HKDF) and AES-256-CBC. libsodium 1.0.18 has neither AES-CBC nor HKDF, and
 * its SHA-256 is portable C; OpenSSL's uses the SHA-NI / AVX2 code paths.
 *
 * HMAC is built here on the low-level SHA256_CTX rather than on EVP_MAC:
 * Megolm computes many HMACs over tiny inputs, where EVP's per-call provider
 * dispatch costs more than the hashing itself, and a keyed HMAC state (the
 * ipad/opad contexts) can be reused across the three HKDF-expand blocks.
 */
#define OPENSSL_SUPPRESS_DEPRECATED 1
#include <openssl/sha.h>
#include <openssl/evp.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <stdint.h>
#include <limits.h>

typedef struct {
    SHA256_CTX inner;
    SHA256_CTX outer;
} unibus_hmac_sha256_key;

/* Prepares the ipad/opad states for `key` (any length, as RFC 2104). */
static inline void unibus_hmac_sha256_key_init(unibus_hmac_sha256_key *state,
                                               const uint8_t *key, size_t key_len) {
    uint8_t block[64];
    uint8_t hashed[32];
    memset(block, 0, sizeof block);
    if (key_len > 64) {
        SHA256(key, key_len, hashed);
        memcpy(block, hashed, 32);
    } else if (key_len > 0) {
        memcpy(block, key, key_len);
    }
    for (int i = 0; i < 64; i++) block[i] ^= 0x36;
    SHA256_Init(&state->inner);
    SHA256_Update(&state->inner, block, 64);
    for (int i = 0; i < 64; i++) block[i] ^= (0x36 ^ 0x5c);
    SHA256_Init(&state->outer);
    SHA256_Update(&state->outer, block, 64);
    explicit_bzero(block, sizeof block);
    explicit_bzero(hashed, sizeof hashed);
}

/* HMAC over the concatenation of up to three parts (any may be NULL/0). */
static inline void unibus_hmac_sha256_mac3(const unibus_hmac_sha256_key *state,
                                           const uint8_t *a, size_t a_len,
                                           const uint8_t *b, size_t b_len,
                                           const uint8_t *c, size_t c_len,
                                           uint8_t out[32]) {
    SHA256_CTX ctx = state->inner;
    uint8_t inner_digest[32];
    if (a_len) SHA256_Update(&ctx, a, a_len);
    if (b_len) SHA256_Update(&ctx, b, b_len);
    if (c_len) SHA256_Update(&ctx, c, c_len);
    SHA256_Final(inner_digest, &ctx);
    ctx = state->outer;
    SHA256_Update(&ctx, inner_digest, 32);
    SHA256_Final(out, &ctx);
    explicit_bzero(&ctx, sizeof ctx);
    explicit_bzero(inner_digest, sizeof inner_digest);
}

static inline void unibus_hmac_sha256(const uint8_t *key, size_t key_len,
                                      const uint8_t *data, size_t data_len,
                                      uint8_t out[32]) {
    unibus_hmac_sha256_key state;
    unibus_hmac_sha256_key_init(&state, key, key_len);
    unibus_hmac_sha256_mac3(&state, data, data_len, NULL, 0, NULL, 0, out);
    explicit_bzero(&state, sizeof state);
}

static inline void unibus_sha256(const uint8_t *data, size_t len, uint8_t out[32]) {
    SHA256(data, len, out);
}

/*
 * HKDF-SHA-256 (RFC 5869) with output of at most 255*32 bytes, the salt given
 * as a prepared HMAC key (so a constant salt is keyed once per process).
 * Returns 0 on success, -1 if out_len is too large.
 */
static inline int unibus_hkdf_sha256_keyed(const unibus_hmac_sha256_key *salt,
                                           const uint8_t *ikm, size_t ikm_len,
                                           const uint8_t *info, size_t info_len,
                                           uint8_t *out, size_t out_len) {
    if (out_len > 255 * 32) return -1;
    uint8_t prk[32];
    uint8_t t[32];
    unibus_hmac_sha256_key state;
    unibus_hmac_sha256_mac3(salt, ikm, ikm_len, NULL, 0, NULL, 0, prk);
    unibus_hmac_sha256_key_init(&state, prk, 32);
    size_t done = 0;
    size_t t_len = 0;
    uint8_t counter = 1;
    while (done < out_len) {
        unibus_hmac_sha256_mac3(&state, t, t_len, info, info_len, &counter, 1, t);
        t_len = 32;
        size_t take = out_len - done < 32 ? out_len - done : 32;
        memcpy(out + done, t, take);
        done += take;
        counter++;
    }
    explicit_bzero(prk, sizeof prk);
    explicit_bzero(t, sizeof t);
    explicit_bzero(&state, sizeof state);
    return 0;
}

static inline int unibus_hkdf_sha256(const uint8_t *salt, size_t salt_len,
                                     const uint8_t *ikm, size_t ikm_len,
                                     const uint8_t *info, size_t info_len,
                                     uint8_t *out, size_t out_len) {
    unibus_hmac_sha256_key salt_key;
    unibus_hmac_sha256_key_init(&salt_key, salt, salt_len);
    return unibus_hkdf_sha256_keyed(&salt_key, ikm, ikm_len, info, info_len, out, out_len);
}

/*
 * AES-256-CBC with PKCS#7 padding. `cipher` is a fetched EVP_CIPHER (fetch it
 * once; an implicit fetch on every call is measurably slower in OpenSSL 3).
 * `out` must hold in_len + 16 bytes. Returns the number of bytes written, or
 * -1 on failure (for decryption: bad padding or a length that is not a
 * multiple of the block size).
 *
 * One EVP_CIPHER_CTX per thread and direction is kept and re-keyed for each
 * call: allocating and freeing the provider context per message cost 0.3 us
 * of a 1 KiB Megolm encryption (measured). The context keeps the last
 * message key's schedule until the next call. Wiping it by re-keying with
 * zeros cost another 0.15 us per message and protects little: the Megolm
 * ratchet that derives every later message key lives in the same process.
 */
static inline long unibus_aes256cbc(const EVP_CIPHER *cipher, int encrypt,
                                    const uint8_t key[32], const uint8_t iv[16],
                                    const uint8_t *in, size_t in_len, uint8_t *out) {
    static __thread EVP_CIPHER_CTX *contexts[2];
    if (in_len > (size_t)0x7FFFFFF0) return -1;
    int direction = encrypt ? 1 : 0;
    EVP_CIPHER_CTX *ctx = contexts[direction];
    int ready = 0;
    if (ctx) {
        ready = EVP_CipherInit_ex2(ctx, NULL, key, iv, direction, NULL) == 1;
    } else {
        ctx = EVP_CIPHER_CTX_new();
        if (!ctx) return -1;
        contexts[direction] = ctx;
        ready = EVP_CipherInit_ex2(ctx, cipher, key, iv, direction, NULL) == 1;
    }
    int written = 0, final_written = 0;
    long result = -1;
    if (ready
        && EVP_CipherUpdate(ctx, out, &written, in, (int)in_len) == 1
        && EVP_CipherFinal_ex(ctx, out + written, &final_written) == 1) {
        result = (long)written + final_written;
    }
    if (!ready) {
        /* A context that failed to initialise is not reused. */
        EVP_CIPHER_CTX_free(ctx);
        contexts[direction] = NULL;
    }
    return result;
}

static inline EVP_CIPHER *unibus_fetch_aes256cbc(void) {
    return EVP_CIPHER_fetch(NULL, "AES-256-CBC", NULL);
}

/*
 * Whether some certificate in the PEM file `ca_path` issued the first
 * certificate in `leaf_path` (names and key identifiers; the configuration
 * check unibusd makes at start, not a verification of signatures).
 * 1: issued; 0: not by any of them; -1: a file is missing or holds no PEM
 * certificate.
 */
static inline int unibus_pem_issued_by(const uint8_t *ca_pem, size_t ca_len, const uint8_t *leaf_pem, size_t leaf_len) {
    if (ca_len > INT_MAX || leaf_len > INT_MAX) return -1;
    BIO *leaf_bio = BIO_new_mem_buf(leaf_pem, (int)leaf_len);
    if (!leaf_bio) return -1;
    X509 *leaf = PEM_read_bio_X509(leaf_bio, NULL, NULL, NULL);
    BIO_free(leaf_bio);
    if (!leaf) { ERR_clear_error(); return -1; }
    BIO *ca_bio = BIO_new_mem_buf(ca_pem, (int)ca_len);
    if (!ca_bio) { X509_free(leaf); return -1; }
    int result = -1;
    X509 *ca;
    while ((ca = PEM_read_bio_X509(ca_bio, NULL, NULL, NULL)) != NULL) {
        if (result < 0) result = 0;
        if (X509_check_issued(ca, leaf) == X509_V_OK) result = 1;
        X509_free(ca);
        if (result == 1) break;
    }
    ERR_clear_error();
    BIO_free(ca_bio);
    X509_free(leaf);
    return result;
}

/*
 * Public keys for verifying JWS signatures (workload login, issue 16): keys
 * are pinned as SubjectPublicKeyInfo DER; PEM and JWK forms are converted to
 * it once. Every function returns -1 on any failure and clears OpenSSL's
 * error queue (a failed parse must not leak into the next call).
 */
#include <openssl/rsa.h>
#include <openssl/ec.h>
#include <openssl/ecdsa.h>
#include <openssl/bn.h>
#include <openssl/objects.h>

static inline long unibus_pkey_to_spki(EVP_PKEY *pkey, uint8_t *out, size_t out_cap) {
    int len = i2d_PUBKEY(pkey, NULL);
    if (len <= 0 || (size_t)len > out_cap) return -1;
    uint8_t *cursor = out;
    if (i2d_PUBKEY(pkey, &cursor) != len) return -1;
    return len;
}

/* The first public key in a PEM text ("PUBLIC KEY", or a certificate's). */
static inline long unibus_pem_public_key_spki(const char *pem, size_t pem_len, uint8_t *out, size_t out_cap) {
    if (pem_len > (1 << 20)) return -1;
    BIO *bio = BIO_new_mem_buf(pem, (int)pem_len);
    if (!bio) { ERR_clear_error(); return -1; }
    EVP_PKEY *pkey = PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL);
    if (!pkey) {
        BIO_free(bio);
        bio = BIO_new_mem_buf(pem, (int)pem_len);
        X509 *cert = bio ? PEM_read_bio_X509(bio, NULL, NULL, NULL) : NULL;
        if (cert) { pkey = X509_get_pubkey(cert); X509_free(cert); }
    }
    if (bio) BIO_free(bio);
    long result = pkey ? unibus_pkey_to_spki(pkey, out, out_cap) : -1;
    EVP_PKEY_free(pkey);
    ERR_clear_error();
    return result;
}

/* An RSA JWK's modulus and exponent (big-endian bytes). */
static inline long unibus_rsa_spki(const uint8_t *n, size_t n_len, const uint8_t *e, size_t e_len, uint8_t *out, size_t out_cap) {
    if (n_len == 0 || n_len > 2048 || e_len == 0 || e_len > 8) return -1;
    RSA *rsa = RSA_new();
    BIGNUM *bn_n = BN_bin2bn(n, (int)n_len, NULL), *bn_e = BN_bin2bn(e, (int)e_len, NULL);
    EVP_PKEY *pkey = EVP_PKEY_new();
    long result = -1;
    if (rsa && bn_n && bn_e && pkey && RSA_set0_key(rsa, bn_n, bn_e, NULL) == 1) {
        bn_n = NULL; bn_e = NULL;   /* owned by rsa now */
        if (EVP_PKEY_assign_RSA(pkey, rsa) == 1) {
            rsa = NULL;             /* owned by pkey now */
            result = unibus_pkey_to_spki(pkey, out, out_cap);
        }
    }
    BN_free(bn_n); BN_free(bn_e); RSA_free(rsa); EVP_PKEY_free(pkey);
    ERR_clear_error();
    return result;
}

/* An EC JWK: curve "P-256" or "P-384", the point's coordinates. */
static inline long unibus_ec_spki(int p384, const uint8_t *x, size_t x_len, const uint8_t *y, size_t y_len, uint8_t *out, size_t out_cap) {
    size_t size = p384 ? 48 : 32;
    if (x_len != size || y_len != size) return -1;
    uint8_t point[97];
    point[0] = 0x04;
    memcpy(point + 1, x, size);
    memcpy(point + 1 + size, y, size);
    EC_KEY *ec = EC_KEY_new_by_curve_name(p384 ? NID_secp384r1 : NID_X9_62_prime256v1);
    EC_POINT *pub = ec ? EC_POINT_new(EC_KEY_get0_group(ec)) : NULL;
    EVP_PKEY *pkey = EVP_PKEY_new();
    long result = -1;
    if (ec && pub && pkey && EC_POINT_oct2point(EC_KEY_get0_group(ec), pub, point, 1 + 2 * size, NULL) == 1
        && EC_KEY_set_public_key(ec, pub) == 1 && EC_KEY_check_key(ec) == 1 && EVP_PKEY_assign_EC_KEY(pkey, ec) == 1) {
        ec = NULL;
        result = unibus_pkey_to_spki(pkey, out, out_cap);
    }
    EC_POINT_free(pub); EC_KEY_free(ec); EVP_PKEY_free(pkey);
    ERR_clear_error();
    return result;
}

/*
 * What a pinned key is: 1 RSA (bits = modulus size), 2 EC (bits = 256 for
 * P-256, 384 for P-384, 0 for any other curve), 3 Ed25519. -1: not a key;
 * -2: a key whose parameters fail OpenSSL's public-key check.
 */
static inline int unibus_spki_kind(const uint8_t *der, size_t der_len, int *bits) {
    const uint8_t *cursor = der;
    EVP_PKEY *pkey = d2i_PUBKEY(NULL, &cursor, (long)der_len);
    int kind = -1;
    *bits = 0;
    EVP_PKEY_CTX *check = pkey ? EVP_PKEY_CTX_new_from_pkey(NULL, pkey, NULL) : NULL;
    /* Weak or invalid parameters (RSA e = 1, a modulus that is not one, an
     * EC point off the curve) are refused: with e = 1 anyone can forge. */
    int sound = check && EVP_PKEY_public_check(check) == 1;
    EVP_PKEY_CTX_free(check);
    if (pkey && sound && cursor == der + der_len) {
        switch (EVP_PKEY_get_base_id(pkey)) {
        case EVP_PKEY_RSA: kind = 1; *bits = EVP_PKEY_get_bits(pkey); break;
        case EVP_PKEY_EC: {
            char group[64] = {0};
            size_t group_len = 0;
            kind = 2;
            if (EVP_PKEY_get_group_name(pkey, group, sizeof group, &group_len) == 1) {
                if (strcmp(group, "prime256v1") == 0 || strcmp(group, "P-256") == 0) *bits = 256;
                else if (strcmp(group, "secp384r1") == 0 || strcmp(group, "P-384") == 0) *bits = 384;
            }
            break;
        }
        case EVP_PKEY_ED25519: kind = 3; *bits = 256; break;
        default: break;
        }
    }
    if (pkey && !sound && cursor == der + der_len) kind = -2;
    EVP_PKEY_free(pkey);
    ERR_clear_error();
    return kind;
}

/*
 * Verifies `sig` over `msg` with the pinned key: `digest` "SHA256",
 * "SHA384" or "SHA512" (RSASSA-PKCS1-v1_5 or ECDSA), or NULL for Ed25519.
 * For ECDSA, `sig` is JWS's raw r||s, converted to DER here.
 * 1: valid; 0: invalid; -1: unusable input.
 */
static inline int unibus_spki_verify(const uint8_t *der, size_t der_len, const char *digest, int ecdsa_raw,
                                     const uint8_t *msg, size_t msg_len, const uint8_t *sig, size_t sig_len) {
    const uint8_t *cursor = der;
    EVP_PKEY *pkey = d2i_PUBKEY(NULL, &cursor, (long)der_len);
    if (!pkey) { ERR_clear_error(); return -1; }
    uint8_t *converted = NULL;
    int converted_len = 0;
    if (ecdsa_raw) {
        if (sig_len == 0 || sig_len % 2 != 0 || sig_len > 132) { EVP_PKEY_free(pkey); return 0; }
        ECDSA_SIG *ecdsa = ECDSA_SIG_new();
        BIGNUM *r = BN_bin2bn(sig, (int)(sig_len / 2), NULL), *s = BN_bin2bn(sig + sig_len / 2, (int)(sig_len / 2), NULL);
        if (ecdsa && r && s && ECDSA_SIG_set0(ecdsa, r, s) == 1) {
            r = NULL; s = NULL;
            converted_len = i2d_ECDSA_SIG(ecdsa, &converted);
        }
        BN_free(r); BN_free(s); ECDSA_SIG_free(ecdsa);
        if (converted_len <= 0) { EVP_PKEY_free(pkey); ERR_clear_error(); return 0; }
        sig = converted;
        sig_len = (size_t)converted_len;
    }
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int result = -1;
    if (ctx && EVP_DigestVerifyInit_ex(ctx, NULL, digest, NULL, NULL, pkey, NULL) == 1) {
        result = EVP_DigestVerify(ctx, sig, sig_len, msg, msg_len) == 1 ? 1 : 0;
    }
    EVP_MD_CTX_free(ctx);
    OPENSSL_free(converted);
    EVP_PKEY_free(pkey);
    ERR_clear_error();
    return result;
}

#endif
