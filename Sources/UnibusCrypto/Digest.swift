import COpenSSL

/// SHA-256, HMAC-SHA-256 and HKDF-SHA-256 on OpenSSL's libcrypto.
public enum Digest {
    public static let sha256Length = 32

    public static func sha256(_ data: [UInt8]) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: sha256Length)
        data.withNonNullBytes { input, count in
            out.withUnsafeMutableBufferPointer { unibus_sha256(input, count, $0.baseAddress!) }
        }
        return out
    }

    public static func hmacSHA256(key: [UInt8], data: [UInt8]) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: sha256Length)
        key.withNonNullBytes { k, kCount in
            data.withNonNullBytes { d, dCount in
                out.withUnsafeMutableBufferPointer { unibus_hmac_sha256(k, kCount, d, dCount, $0.baseAddress!) }
            }
        }
        return out
    }

    /// HKDF-SHA-256 (RFC 5869); `length` at most 8160.
    public static func hkdfSHA256(salt: [UInt8], inputKeyMaterial: [UInt8], info: [UInt8], length: Int) -> [UInt8] {
        precondition(length <= 255 * 32, "HKDF-SHA-256 output is limited to 8160 bytes")
        var out = [UInt8](repeating: 0, count: length)
        salt.withNonNullBytes { s, sCount in
            inputKeyMaterial.withNonNullBytes { ikm, ikmCount in
                info.withNonNullBytes { i, iCount in
                    out.withNonNullMutableBytes { o, oCount in
                        _ = unibus_hkdf_sha256(s, sCount, ikm, ikmCount, i, iCount, o, oCount)
                    }
                }
            }
        }
        return out
    }
}

/// AES-256-CBC with PKCS#7 padding (OpenSSL EVP, AES-NI where the CPU has it).
enum AES256CBC {
    static let blockSize = 16

    // Fetched once: an implicit fetch on every EVP init costs a lock and a
    // lookup in OpenSSL 3. The EVP_CIPHER is immutable and thread-safe.
    nonisolated(unsafe) private static let cipher: OpaquePointer? = unibus_fetch_aes256cbc()

    private static var fetchedCipher: OpaquePointer {
        guard let cipher else {
            fatalError("OpenSSL's libcrypto provides no AES-256-CBC (is the default provider disabled?)")
        }
        return cipher
    }

    /// Ciphertext length for `count` plaintext bytes (always at least one block).
    @inline(__always)
    static func ciphertextLength(forPlaintext count: Int) -> Int {
        (count / blockSize + 1) * blockSize
    }

    /// Encrypts into `out`, which must hold `ciphertextLength(forPlaintext:)` bytes.
    static func encrypt(key: UnsafePointer<UInt8>, iv: UnsafePointer<UInt8>, plaintext: UnsafeRawBufferPointer, into out: UnsafeMutablePointer<UInt8>) -> Int {
        let written = withBase(plaintext) { input in
            unibus_aes256cbc(fetchedCipher, 1, key, iv, input, plaintext.count, out)
        }
        precondition(written >= 0, "AES-256-CBC encryption failed inside OpenSSL")
        return written
    }

    /// Decrypts; nil means bad padding or a length that is not whole blocks.
    static func decrypt(key: UnsafePointer<UInt8>, iv: UnsafePointer<UInt8>, ciphertext: UnsafeRawBufferPointer) -> [UInt8]? {
        guard !ciphertext.isEmpty, ciphertext.count % blockSize == 0 else { return nil }
        var out = [UInt8](repeating: 0, count: ciphertext.count + blockSize)
        let written = out.withUnsafeMutableBufferPointer { buffer in
            withBase(ciphertext) { input in
                unibus_aes256cbc(fetchedCipher, 0, key, iv, input, ciphertext.count, buffer.baseAddress!)
            }
        }
        guard written >= 0 else { return nil }
        out.removeLast(out.count - written)
        return out
    }

    @inline(__always)
    private static func withBase<R>(_ buffer: UnsafeRawBufferPointer, _ body: (UnsafePointer<UInt8>) -> R) -> R {
        if let base = buffer.baseAddress {
            return body(base.assumingMemoryBound(to: UInt8.self))
        }
        let zero: UInt8 = 0
        return withUnsafePointer(to: zero) { body($0) }
    }
}

/// Configuration checks on PEM certificate files (not verification).
public enum CertificateFiles {
    /// Whether a certificate in `caPath` issued the first certificate in
    /// `certificatePath` (by names and key identifiers); nil when a file is
    /// missing or holds no PEM certificate.
    public static func isIssued(_ certificatePath: String, by caPath: String) -> Bool? {
        guard let ca = try? RegularFile.read(caPath) else { return nil }
        return isIssued(certificatePath, byAuthority: ca)
    }

    /// Whether a certificate in the PEM bytes `authority` issued the first
    /// certificate in `certificatePath`: for a CA already read (and in use).
    public static func isIssued(_ certificatePath: String, byAuthority ca: [UInt8]) -> Bool? {
        guard let leaf = try? RegularFile.read(certificatePath) else { return nil }
        switch unibus_pem_issued_by(ca, ca.count, leaf, leaf.count) {
        case 1: return true
        case 0: return false
        default: return nil
        }
    }
}
