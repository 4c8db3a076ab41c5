import NIOCore

/// One operation a client sends to the server.
public enum ClientOp: Equatable, Sendable {
    case connect(ByteBuffer)
    /// PUB: `payload` is a slice of the read buffer (no copy).
    case pub(subject: String, reply: String?, payload: ByteBuffer)
    /// HPUB: `message` holds headers (the first `headerLength` bytes) then payload.
    case hpub(subject: String, reply: String?, headerLength: Int, message: ByteBuffer)
    case sub(subject: String, queue: String?, sid: String)
    case unsub(sid: String, max: Int?)
    case ping
    case pong
    /// `+OK`, `-ERR` and `INFO` from a client are accepted and ignored, except
    /// that nats-server closes on `-ERR`; `err` carries the text.
    case ok
    case err(String)
    case info
}
