import CSodium

/// The key that seals a client's local store at rest: XChaCha20-Poly1305
/// (libsodium's IETF construction) with a random 24-byte nonce per value and
/// the value's place in the store (table and row key) as associated data, so
/// sealed values cannot be swapped between rows.
///
/// Derived from the identity (BLAKE2b-256 keyed by the Ed25519 seed), so a
/// copy of the store without the identity file reveals nothing; or from a
/// passphrase (Argon2id), for stores kept apart from the identity file.
public struct StoreSealingKey: Sendable {
    private let key: SecretBuffer
    public static let nonceLength = 24
    public static let tagLength = 16
    public static let saltLength = 16

    private init(key: SecretBuffer) {
        self.key = key
    }

    /// The store key of `identity`: BLAKE2b-256, keyed by the identity's
    /// Ed25519 seed, over a label and the identity's nkey.
    public static func derived(from identity: Identity) -> StoreSealingKey {
        Sodium.ensureInitialized()
        var seed = identity.signing.seed
        defer { wipe(&seed) }
        let label = Array("UNIBUS-CLIENT-STORE-1\n\(identity.userNKey)".utf8)
        let key = SecretBuffer(count: 32)
        label.withNonNullBytes { message, messageCount in
            seed.withNonNullBytes { secret, secretCount in
                _ = crypto_generichash(key.pointer.assumingMemoryBound(to: UInt8.self), 32, message, UInt64(messageCount), secret, secretCount)
            }
        }
        return StoreSealingKey(key: key)
    }

    /// A key from a passphrase and the store's random salt (Argon2id, 3
    /// passes over 64 MiB: libsodium's "moderate" limits), or nil when the
    /// machine cannot spare the memory.
    public static func derived(passphrase: [UInt8], salt: [UInt8]) -> StoreSealingKey? {
        Sodium.ensureInitialized()
        guard salt.count == saltLength, !passphrase.isEmpty else { return nil }
        let key = SecretBuffer(count: 32)
        let status = passphrase.withNonNullBytes { password, passwordCount in
            salt.withNonNullBytes { saltBytes, _ in
                password.withMemoryRebound(to: CChar.self, capacity: passwordCount) { characters in
                    crypto_pwhash(key.pointer.assumingMemoryBound(to: UInt8.self), 32, characters, UInt64(passwordCount), saltBytes,
                                  UInt64(crypto_pwhash_OPSLIMIT_MODERATE), Int(crypto_pwhash_MEMLIMIT_MODERATE), crypto_pwhash_ALG_ARGON2ID13)
                }
            }
        }
        return status == 0 ? StoreSealingKey(key: key) : nil
    }

    /// A fresh random salt for `derived(passphrase:salt:)`.
    public static func randomSalt() -> [UInt8] { Sodium.randomBytes(saltLength) }

    /// nonce | ciphertext | tag, bound to `context`.
    public func seal(_ plaintext: [UInt8], context: [UInt8]) -> [UInt8] {
        let nonce = Sodium.randomBytes(Self.nonceLength)
        var output = [UInt8](repeating: 0, count: plaintext.count + Self.tagLength)
        var written: UInt64 = 0
        output.withNonNullMutableBytes { out, _ in
            plaintext.withNonNullBytes { message, messageCount in
                context.withNonNullBytes { data, dataCount in
                    nonce.withNonNullBytes { nonceBytes, _ in
                        _ = crypto_aead_xchacha20poly1305_ietf_encrypt(out, &written, message, UInt64(messageCount), data, UInt64(dataCount),
                                                                        nil, nonceBytes, key.pointer.assumingMemoryBound(to: UInt8.self))
                    }
                }
            }
        }
        return nonce + output
    }

    /// The plaintext of `sealed` if it was sealed with this key for `context`.
    public func open(_ sealed: [UInt8], context: [UInt8]) -> [UInt8]? {
        guard sealed.count >= Self.nonceLength + Self.tagLength else { return nil }
        let nonce = Array(sealed.prefix(Self.nonceLength))
        let ciphertext = Array(sealed.dropFirst(Self.nonceLength))
        var output = [UInt8](repeating: 0, count: ciphertext.count - Self.tagLength)
        var written: UInt64 = 0
        let status = output.withNonNullMutableBytes { out, _ in
            ciphertext.withNonNullBytes { cipher, cipherCount in
                context.withNonNullBytes { data, dataCount in
                    nonce.withNonNullBytes { nonceBytes, _ in
                        crypto_aead_xchacha20poly1305_ietf_decrypt(out, &written, nil, cipher, UInt64(cipherCount), data, UInt64(dataCount),
                                                                   nonceBytes, key.pointer.assumingMemoryBound(to: UInt8.self))
                    }
                }
            }
        }
        guard status == 0, Int(written) == output.count else {
            wipe(&output)
            return nil
        }
        return output
    }
}
