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
static inline int unibus_pem_issued_by(const char *ca_path, const char *leaf_path) {
    FILE *leaf_file = fopen(leaf_path, "r");
    if (!leaf_file) return -1;
    X509 *leaf = PEM_read_X509(leaf_file, NULL, NULL, NULL);
    fclose(leaf_file);
    if (!leaf) { ERR_clear_error(); return -1; }
    FILE *ca_file = fopen(ca_path, "r");
    if (!ca_file) { X509_free(leaf); return -1; }
    int result = -1;
    X509 *ca;
    while ((ca = PEM_read_X509(ca_file, NULL, NULL, NULL)) != NULL) {
        if (result < 0) result = 0;
        if (X509_check_issued(ca, leaf) == X509_V_OK) result = 1;
        X509_free(ca);
        if (result == 1) break;
    }
    ERR_clear_error();
    fclose(ca_file);
    X509_free(leaf);
    return result;
}

#endif
