import CSodium

/// libsodium must be initialised once per process before any other call;
/// every entry point of this module that reaches libsodium goes through here.
public enum Sodium {
    private static let initialized: Bool = sodium_init() >= 0

    @inline(__always)
    static func ensureInitialized() {
        // sodium_init only fails if the OS cannot provide randomness: nothing
        // in this process can be secure then, so stopping is the only option.
        precondition(initialized, "libsodium failed to initialise (no usable source of randomness)")
    }

    /// Cryptographically secure random bytes.
    static func randomBytes(_ count: Int) -> [UInt8] {
        ensureInitialized()
        var bytes = [UInt8](repeating: 0, count: count)
        bytes.withUnsafeMutableBytes { randombytes_buf($0.baseAddress!, $0.count) }
        return bytes
    }

    /// Random bytes for public nonces (NATS INFO nonces and the like).
    public static func randomNonce(count: Int) -> [UInt8] { randomBytes(count) }

    /// Constant-time comparison of two equal-length byte buffers.
    static func constantTimeEqual(_ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer) -> Bool {
        guard a.count == b.count else { return false }
        if a.isEmpty { return true }
        return sodium_memcmp(a.baseAddress!, b.baseAddress!, a.count) == 0
    }
}

/// A heap buffer for secret bytes that is wiped when released.
///
/// Swift arrays may be copied freely by the runtime, so secrets live here
/// instead; value types that hold one implement copy-on-write by hand.
final class SecretBuffer: @unchecked Sendable {
    // @unchecked: the buffer is only mutated through `mutate` by owners that
    // checked isKnownUniquelyReferenced first (copy-on-write), or before the
    // buffer is shared.
    let count: Int
    let pointer: UnsafeMutableRawPointer

    init(count: Int) {
        self.count = count
        self.pointer = UnsafeMutableRawPointer.allocate(byteCount: max(count, 1), alignment: 16)
        pointer.initializeMemory(as: UInt8.self, repeating: 0, count: max(count, 1))
    }

    convenience init<C: Collection>(copying bytes: C) where C.Element == UInt8 {
        self.init(count: bytes.count)
        var offset = 0
        for byte in bytes {
            pointer.storeBytes(of: byte, toByteOffset: offset, as: UInt8.self)
            offset += 1
        }
    }

    convenience init(random count: Int) {
        Sodium.ensureInitialized()
        self.init(count: count)
        randombytes_buf(pointer, count)
    }

    func copy() -> SecretBuffer {
        let other = SecretBuffer(count: count)
        other.pointer.copyMemory(from: pointer, byteCount: count)
        return other
    }

    var bytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: pointer, count: count) }
    var mutableBytes: UnsafeMutableRawBufferPointer { UnsafeMutableRawBufferPointer(start: pointer, count: count) }

    /// The contents as an ordinary array (the caller takes over its secrecy).
    var array: [UInt8] { Array(bytes) }

    deinit {
        sodium_memzero(pointer, max(count, 1))
        pointer.deallocate()
    }
}

extension Array where Element == UInt8 {
    /// Like `withUnsafeBufferPointer`, but never hands C a null pointer, even
    /// for an empty array (libsodium asserts on NULL with length 0 in places).
    func withNonNullBytes<R>(_ body: (UnsafePointer<UInt8>, Int) throws -> R) rethrows -> R {
        if isEmpty {
            let zero: UInt8 = 0
            return try withUnsafePointer(to: zero) { try body($0, 0) }
        }
        return try withUnsafeBufferPointer { try body($0.baseAddress!, $0.count) }
    }

    mutating func withNonNullMutableBytes<R>(_ body: (UnsafeMutablePointer<UInt8>, Int) throws -> R) rethrows -> R {
        if isEmpty {
            var zero: UInt8 = 0
            return try withUnsafeMutablePointer(to: &zero) { try body($0, 0) }
        }
        return try withUnsafeMutableBufferPointer { try body($0.baseAddress!, $0.count) }
    }
}

/// Overwrites an array's bytes with zeros (for secrets that passed through an array).
public func wipe(_ bytes: inout [UInt8]) {
    bytes.withUnsafeMutableBytes { raw in
        if let base = raw.baseAddress { sodium_memzero(base, raw.count) }
    }
}
