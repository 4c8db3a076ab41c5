import COpenSSL

/// The Megolm ratchet R(i) = (R(i,0), R(i,1), R(i,2), R(i,3)): four 32-byte
/// parts, where part j is re-hashed every 2^(8*(3-j)) steps.
///
/// H_k(A) = HMAC-SHA-256(key: A, data: [k]). Advancing from i to i+1 re-hashes
/// the slowest part h that changes and derives parts h...3 from it, as in the
/// Megolm specification and libolm/vodozemac.
struct MegolmRatchet: Sendable {
    static let length = 128
    static let partLength = 32

    private var storage: SecretBuffer
    private(set) var index: UInt32

    /// A fresh random ratchet at index 0.
    init() {
        storage = SecretBuffer(random: Self.length)
        index = 0
    }

    /// A ratchet from its 128 bytes (caller checked the length).
    init(bytes: UnsafeRawBufferPointer, index: UInt32) {
        precondition(bytes.count == Self.length)
        storage = SecretBuffer(count: Self.length)
        storage.pointer.copyMemory(from: bytes.baseAddress!, byteCount: Self.length)
        self.index = index
    }

    /// The 128 ratchet bytes.
    var bytes: UnsafeRawBufferPointer { storage.bytes }

    private mutating func makeUnique() {
        if !isKnownUniquelyReferenced(&storage) {
            storage = storage.copy()
        }
    }

    /// R(to) = H_to(R(from)); `from == to` re-hashes a part in place.
    @inline(__always)
    private func rehash(from: Int, to: Int) {
        let base = storage.pointer.assumingMemoryBound(to: UInt8.self)
        var seed = UInt8(to)
        // unibus_hmac_sha256 reads the whole key before it writes the output,
        // so source and destination may be the same part.
        unibus_hmac_sha256(base + from * Self.partLength, Self.partLength, &seed, 1, base + to * Self.partLength)
    }

    /// Moves to index + 1. The caller must not call this at index 2^32 - 1.
    mutating func advance() {
        precondition(index != UInt32.max, "Megolm ratchet index would wrap")
        makeUnique()
        index += 1
        var mask: UInt32 = 0x00FF_FFFF
        var slowest = 0
        while slowest < 4 {
            if index & mask == 0 { break }
            slowest += 1
            mask >>= 8
        }
        var part = 3
        while part >= slowest {
            rehash(from: slowest, to: part)
            part -= 1
        }
    }

    /// Moves forward to `target` in at most 4 * 255 hashes (the fast path of
    /// the specification). A target below the current index wraps R(0),
    /// exactly as libolm does; callers only move forwards.
    mutating func advance(to target: UInt32) {
        makeUnique()
        for part in 0..<4 {
            let shift = UInt32((3 - part) * 8)
            let mask: UInt32 = ~0 << shift
            var steps = ((target >> shift) &- (index >> shift)) & 0xFF
            if steps == 0 {
                // Only R(0) can see this: the target wrapped around 2^32.
                if target < index { steps = 0x100 } else { continue }
            }
            while steps > 1 {
                rehash(from: part, to: part)
                steps -= 1
            }
            var k = 3
            while k >= part {
                rehash(from: part, to: k)
                k -= 1
            }
            index = target & mask
        }
    }
}

/// The per-message keys HKDF-SHA-256(salt: none, R(i), info: "MEGOLM_KEYS")
/// yields: 32-byte AES key, 32-byte HMAC key, 16-byte IV.
enum MegolmCipher {
    static let derivedLength = 80
    static let macLength = 8
    private static let info: [UInt8] = Array("MEGOLM_KEYS".utf8)

    /// HMAC keyed with the empty salt (a block of zeros, as libolm uses),
    /// prepared once: it is the same for every message.
    private static let emptySalt: unibus_hmac_sha256_key = {
        var key = unibus_hmac_sha256_key()
        unibus_hmac_sha256_key_init(&key, nil, 0)
        return key
    }()

    /// Runs `body` with the 80 derived bytes in a stack buffer that is wiped afterwards.
    @inline(__always)
    static func withKeys<R>(for ratchet: MegolmRatchet, _ body: (_ aesKey: UnsafePointer<UInt8>, _ macKey: UnsafePointer<UInt8>, _ iv: UnsafePointer<UInt8>) -> R) -> R {
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: derivedLength) { keys -> R in
            let out = keys.baseAddress!
            let ratchetBytes = ratchet.bytes.baseAddress!.assumingMemoryBound(to: UInt8.self)
            info.withUnsafeBufferPointer { infoBytes in
                withUnsafePointer(to: emptySalt) { salt in
                    _ = unibus_hkdf_sha256_keyed(salt, ratchetBytes, MegolmRatchet.length,
                                                 infoBytes.baseAddress!, infoBytes.count, out, derivedLength)
                }
            }
            defer { explicit_bzero(out, derivedLength) }
            return body(UnsafePointer(out), UnsafePointer(out + 32), UnsafePointer(out + 64))
        }
    }

    /// The first 8 bytes of HMAC-SHA-256(macKey, data), written to `out`.
    @inline(__always)
    static func truncatedMAC(macKey: UnsafePointer<UInt8>, data: UnsafeRawBufferPointer, into out: UnsafeMutablePointer<UInt8>) {
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 32) { full in
            unibus_hmac_sha256(macKey, 32, data.baseAddress!.assumingMemoryBound(to: UInt8.self), data.count, full.baseAddress!)
            out.update(from: full.baseAddress!, count: macLength)
        }
    }
}
