import CZstd

/// zstd compression of frame bodies (a per-room option).
///
/// Compressing before encrypting leaks how compressible the plaintext is
/// through the ciphertext length; rooms that carry secrets next to
/// attacker-influenced text should leave it off (see docs/protocol.md).
enum Zstd {
    /// The level that favours speed, as the zstd CLI's default.
    static let level: Int32 = 3

    static func compress(_ input: [UInt8]) -> [UInt8] {
        let bound = ZSTD_compressBound(input.count)
        var output = [UInt8](repeating: 0, count: bound)
        let written = output.withUnsafeMutableBytes { out in
            input.withUnsafeBytes { inp in
                ZSTD_compress(out.baseAddress, bound, inp.baseAddress, inp.count, level)
            }
        }
        // Compressing into a buffer of ZSTD_compressBound cannot fail.
        precondition(ZSTD_isError(written) == 0, "zstd compression failed: \(String(cString: ZSTD_getErrorName(written)))")
        output.removeSubrange(written...)
        return output
    }

    /// Decompresses one frame whose header states its size, refusing
    /// anything over `limit` bytes before allocating it.
    static func decompress(_ input: [UInt8], limit: Int) -> [UInt8]? {
        let declared = input.withUnsafeBytes { ZSTD_getFrameContentSize($0.baseAddress, $0.count) }
        // ZSTD_CONTENTSIZE_UNKNOWN and _ERROR are the two largest UInt64 values.
        guard declared < UInt64.max - 1, declared <= UInt64(limit) else { return nil }
        var output = [UInt8](repeating: 0, count: Int(declared))
        let written = output.withUnsafeMutableBytes { out in
            input.withUnsafeBytes { inp in
                ZSTD_decompress(out.baseAddress, out.count, inp.baseAddress, inp.count)
            }
        }
        guard ZSTD_isError(written) == 0, written == Int(declared) else { return nil }
        return output
    }
}
