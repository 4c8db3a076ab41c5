import NIOCore
import UnibusWire

/// Writes MSG/HMSG lines. One ByteBuffer write per message: every separate
/// ByteBuffer call costs a capacity check and an exclusivity check, which on
/// the fan-out path added up to a fifth of broker CPU (measured with perf).
enum MessageEncoder {
    /// `MSG <subject> <sid> [reply] <size>\r\n<payload>\r\n`, or HMSG with
    /// `<header length> <total>` when `headerLength` is set.
    @inline(__always)
    static func writeMessage(into buffer: inout ByteBuffer, subject: String, sid: [UInt8], reply: String?,
                             headerLength: Int?, message: ByteBuffer) {
        message.withUnsafeReadableBytes { payload in
            writeMessage(into: &buffer, subject: subject, sid: sid, reply: reply, headerLength: headerLength, payload: payload)
        }
    }

    /// The same with the payload's bytes: the deliveries of one message read
    /// them once (each ByteBuffer byte access is a dynamic exclusivity check).
    @inline(__always)
    static func writeMessage(into buffer: inout ByteBuffer, subject: String, sid: [UInt8], reply: String?,
                             headerLength: Int?, payload: UnsafeRawBufferPointer) {
        let payloadLength = payload.count
        let maximum = 5 + subject.utf8.count + 1 + sid.count + 1 + (reply.map { $0.utf8.count + 1 } ?? 0)
            + 21 + 2 + payloadLength + 2
        buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: maximum) { out in
            var cursor = OutputCursor(out)
            if headerLength != nil { cursor.put(UInt8(ascii: "H")) }
            cursor.put(UInt8(ascii: "M")); cursor.put(UInt8(ascii: "S")); cursor.put(UInt8(ascii: "G")); cursor.put(UInt8(ascii: " "))
            cursor.put(subject)
            cursor.put(UInt8(ascii: " "))
            sid.withUnsafeBytes { cursor.put($0) }
            cursor.put(UInt8(ascii: " "))
            if let reply {
                cursor.put(reply)
                cursor.put(UInt8(ascii: " "))
            }
            if let headerLength {
                cursor.put(decimal: headerLength)
                cursor.put(UInt8(ascii: " "))
            }
            cursor.put(decimal: payloadLength)
            cursor.put(UInt8(ascii: "\r")); cursor.put(UInt8(ascii: "\n"))
            cursor.put(payload)
            cursor.put(UInt8(ascii: "\r")); cursor.put(UInt8(ascii: "\n"))
            return cursor.count
        }
    }
}
