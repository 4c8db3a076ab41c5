import NIOCore

/// A protocol violation and what the server does about it, matching
/// nats-server 2.9's observable behaviour (verified by the differential
/// transcript tests against a real nats-server).
public struct ProtocolViolation: Error, Equatable, Sendable, CustomStringConvertible {
    /// The text of the `-ERR '…'` line, or nil when nats-server closes silently.
    public let errorMessage: String?
    /// Whether the connection is closed after the error.
    public let closesConnection: Bool

    public init(_ errorMessage: String?, closes: Bool) {
        self.errorMessage = errorMessage
        self.closesConnection = closes
    }

    public static let unknownOperation = ProtocolViolation("Unknown Protocol Operation", closes: true)
    public static let maxControlLine = ProtocolViolation("maximum control line exceeded", closes: true)
    public static let maxPayload = ProtocolViolation("Maximum Payload Violation", closes: true)
    /// Malformed arguments: nats-server closes without an -ERR line.
    public static let malformedArguments = ProtocolViolation(nil, closes: true)

    public var description: String { errorMessage ?? "protocol violation" }
}

/// An incremental parser of one side of the protocol (fuzz targets and
/// tests drive both sides through this).
public protocol ProtocolParser: Sendable {
    associatedtype Operation: Equatable & Sendable
    /// The next complete operation, nil when more bytes are needed.
    func next(_ buffer: inout ByteBuffer) throws(ProtocolViolation) -> Operation?
}

extension ClientProtocolParser: ProtocolParser {}
extension ServerProtocolParser: ProtocolParser {}
