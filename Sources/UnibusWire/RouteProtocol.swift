import NIOCore

/// One operation on a route link between two nodes (Unibus's route protocol,
/// modelled on nats-server's: interest lines `RS+`/`RS-`, forwarded messages
/// `RMSG`/`RHMSG`, plus `RDATA` frames that carry the membership log and
/// key shares between nodes). See `docs/cluster.md` for the grammar.
public enum RouteOp: Equatable, Sendable {
    /// `INFO <json>`: the peer's node id, cluster root, advertised URLs.
    case info(ByteBuffer)
    /// `AUTH <json>`: the peer's proof that it holds the key of the node id
    /// its INFO claims (a signature over this end's INFO nonce).
    case auth(ByteBuffer)
    case ping
    case pong
    /// `RS+ <subject> [<queue>]`: the peer gained local interest.
    case subscribe(subject: String, queue: String?)
    /// `RS- <subject> [<queue>]`: the peer lost its last local interest.
    case unsubscribe(subject: String, queue: String?)
    /// `RMSG`/`RHMSG`: a message for the receiving node's local subscribers
    /// and, when `queues` is not empty, for one member of each named queue
    /// group there. `message` holds headers (`headerLength` bytes) then payload.
    case message(subject: String, reply: String?, queues: [String], headerLength: Int?, message: ByteBuffer)
    /// `RDATA <size>`: an opaque frame for the node layer (JSON).
    case data(ByteBuffer)
    /// `-ERR '<text>'`: the peer is closing the link and says why.
    case err(String)
}

/// Parses the route protocol. Pure and incremental like
/// `ClientProtocolParser`: `next(_:)` consumes one complete operation, returns
/// nil when more bytes are needed, or throws; limits are enforced before the
/// bytes they guard are buffered.
public struct RouteProtocolParser: Sendable {
    public var maxControlLine: Int
    /// Largest RMSG/RHMSG message (headers + payload).
    public var maxPayload: Int
    /// Largest RDATA frame.
    public var maxData: Int

    public init(maxControlLine: Int = 16 * 1024, maxPayload: Int = 1024 * 1024, maxData: Int = 16 * 1024 * 1024) {
        self.maxControlLine = maxControlLine
        self.maxPayload = maxPayload
        self.maxData = maxData
    }

    private enum Keyword { case info, auth, ping, pong, subscribe, unsubscribe, message, headerMessage, data, err }

    public func next(_ buffer: inout ByteBuffer) throws(ProtocolViolation) -> RouteOp? {
        if buffer.readableBytes == 0 { return nil }
        let (keyword, keywordLength) = try identify(buffer)
        guard let keyword else { return nil }
        guard let (lineEnd, controlLength) = try ControlLine.locate(buffer, after: keywordLength, maxControlLine: maxControlLine) else {
            return nil
        }

        switch keyword {
        case .ping, .pong:
            buffer.moveReaderIndex(forwardBy: controlLength)
            return keyword == .ping ? .ping : .pong
        case .err:
            var text = buffer.getString(at: buffer.readerIndex + keywordLength, length: max(lineEnd - keywordLength, 0))?.trimmingSpaces() ?? ""
            if text.count >= 2, text.hasPrefix("'"), text.hasSuffix("'") { text = String(text.dropFirst().dropLast()) }
            buffer.moveReaderIndex(forwardBy: controlLength)
            return .err(text)
        case .info, .auth:
            let json = ControlLine.argument(buffer, after: keywordLength, lineEnd: lineEnd)
            buffer.moveReaderIndex(forwardBy: controlLength)
            return keyword == .info ? .info(json) : .auth(json)
        case .subscribe, .unsubscribe:
            var fields = ArgumentFields()
            buffer.withUnsafeReadableBytes { raw in
                fields.scan(UnsafeRawBufferPointer(rebasing: raw[keywordLength..<lineEnd]), offset: keywordLength)
            }
            guard fields.count == 1 || fields.count == 2 else { throw .malformedArguments }
            let subject = fields.string(0, in: buffer)
            let queue = fields.count == 2 ? fields.string(1, in: buffer) : nil
            buffer.moveReaderIndex(forwardBy: controlLength)
            return keyword == .subscribe ? .subscribe(subject: subject, queue: queue) : .unsubscribe(subject: subject, queue: queue)
        case .data:
            var fields = ArgumentFields()
            buffer.withUnsafeReadableBytes { raw in
                fields.scan(UnsafeRawBufferPointer(rebasing: raw[keywordLength..<lineEnd]), offset: keywordLength)
            }
            guard fields.count == 1, let size = fields.decimal(0, in: buffer) else { throw .malformedArguments }
            guard size <= maxData else { throw .maxPayload }
            guard let payload = try ControlLine.takePayload(&buffer, controlLength: controlLength, size: size) else { return nil }
            return .data(payload)
        case .message, .headerMessage:
            return try parseMessage(headers: keyword == .headerMessage, buffer: &buffer, keywordLength: keywordLength,
                                    lineEnd: lineEnd, controlLength: controlLength)
        }
    }

    /// `RMSG <subject> [<reply>] <size>`, `RMSG <subject> + <reply> <queue>... <size>`,
    /// `RMSG <subject> | <queue>... <size>`; RHMSG ends in `<header length> <total>`.
    private func parseMessage(headers: Bool, buffer: inout ByteBuffer, keywordLength: Int, lineEnd: Int,
                              controlLength: Int) throws(ProtocolViolation) -> RouteOp? {
        var fields = ArgumentFields()
        buffer.withUnsafeReadableBytes { raw in
            fields.scan(UnsafeRawBufferPointer(rebasing: raw[keywordLength..<lineEnd]), offset: keywordLength)
        }
        let sizes = headers ? 2 : 1
        // A queue form has at least subject, marker, one queue and the sizes;
        // with fewer fields a "+" or "|" in second place is a reply subject.
        let queueForm = fields.count >= 3 + sizes && (fields.count == 5 || fields.isMarker(1, in: buffer))
        // The common forms (no queues) fit the four fixed fields: no allocation.
        if !queueForm {
            guard fields.count >= 1 + sizes, fields.count <= 2 + sizes else { throw .malformedArguments }
            let hasReply = fields.count == 2 + sizes
            guard let (headerLength, total) = sizeFields(headers: headers, last: fields.count - 1, { fields.decimal($0, in: buffer) }) else {
                throw .malformedArguments
            }
            guard total <= maxPayload else { throw .maxPayload }
            guard buffer.readableBytes >= controlLength + total + 2 else { return nil }
            let subject = fields.string(0, in: buffer)
            let reply = hasReply ? fields.string(1, in: buffer) : nil
            guard let message = try ControlLine.takePayload(&buffer, controlLength: controlLength, size: total) else { return nil }
            return .message(subject: subject, reply: reply, queues: [], headerLength: headerLength, message: message)
        }
        // Queue forms: any number of fields.
        let all = buffer.withUnsafeReadableBytes { raw in
            Self.scanAll(UnsafeRawBufferPointer(rebasing: raw[keywordLength..<lineEnd]), offset: keywordLength)
        }
        guard all.count >= 3 + sizes else { throw .malformedArguments }
        func text(_ index: Int) -> String {
            buffer.withUnsafeReadableBytes { raw in String(decoding: UnsafeRawBufferPointer(rebasing: raw[all[index]]), as: UTF8.self) }
        }
        let marker = text(1)
        let reply: String?
        let firstQueue: Int
        switch marker {
        case "+":
            reply = text(2)
            firstQueue = 3
        case "|":
            reply = nil
            firstQueue = 2
        default:
            throw .malformedArguments
        }
        let lastQueue = all.count - 1 - sizes
        guard lastQueue >= firstQueue else { throw .malformedArguments }
        guard let (headerLength, total) = sizeFields(headers: headers, last: all.count - 1, { index in
            buffer.withUnsafeReadableBytes { raw in Self.decimal(UnsafeRawBufferPointer(rebasing: raw[all[index]])) }
        }) else { throw .malformedArguments }
        guard total <= maxPayload else { throw .maxPayload }
        guard buffer.readableBytes >= controlLength + total + 2 else { return nil }
        let subject = text(0)
        let queues = (firstQueue...lastQueue).map(text)
        guard let message = try ControlLine.takePayload(&buffer, controlLength: controlLength, size: total) else { return nil }
        return .message(subject: subject, reply: reply, queues: queues, headerLength: headerLength, message: message)
    }

    /// (header length, total) from the last one or two fields.
    private func sizeFields(headers: Bool, last: Int, _ decimal: (Int) -> Int?) -> (Int?, Int)? {
        if headers {
            guard let headerLength = decimal(last - 1), let total = decimal(last), headerLength <= total else { return nil }
            return (headerLength, total)
        }
        guard let total = decimal(last) else { return nil }
        return (nil, total)
    }

    static func scanAll(_ raw: UnsafeRawBufferPointer, offset: Int) -> [Range<Int>] {
        var ranges: [Range<Int>] = []
        var index = 0
        while index < raw.count {
            while index < raw.count, raw[index] == UInt8(ascii: " ") || raw[index] == UInt8(ascii: "\t") { index += 1 }
            if index == raw.count { break }
            let start = index
            while index < raw.count, raw[index] != UInt8(ascii: " "), raw[index] != UInt8(ascii: "\t") { index += 1 }
            ranges.append((start + offset)..<(index + offset))
        }
        return ranges
    }

    static func decimal(_ raw: UnsafeRawBufferPointer) -> Int? {
        guard !raw.isEmpty, raw.count <= 10 else { return nil }
        var value = 0
        for byte in raw {
            guard byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9") else { return nil }
            value = value * 10 + Int(byte &- UInt8(ascii: "0"))
        }
        return value
    }

    /// Routes speak exact upper case (both ends are Unibus).
    private func identify(_ buffer: ByteBuffer) throws(ProtocolViolation) -> (Keyword?, Int) {
        try ControlLine.identify(buffer, caseInsensitive: false) { first -> [ControlLine.Candidate<Keyword>]? in
            switch first {
            case UInt8(ascii: "R"):
                return [("RMSG", true, .message), ("RHMSG", true, .headerMessage), ("RS+", true, .subscribe),
                        ("RS-", true, .unsubscribe), ("RDATA", true, .data)]
            case UInt8(ascii: "P"): return [("PING", false, .ping), ("PONG", false, .pong)]
            case UInt8(ascii: "I"): return [("INFO", true, .info)]
            case UInt8(ascii: "A"): return [("AUTH", true, .auth)]
            case UInt8(ascii: "-"): return [("-ERR", false, .err)]
            default: return nil
            }
        }
    }
}

extension RouteProtocolParser: ProtocolParser {}

extension ArgumentFields {
    /// Whether field `index` is `+` or `|` (a queue-form RMSG).
    func isMarker(_ index: Int, in buffer: ByteBuffer) -> Bool {
        let text = string(index, in: buffer)
        return text == "+" || text == "|"
    }
}

/// Writes route protocol lines. Messages are written in one ByteBuffer call
/// each (the forwarding hot path); the rest is rare.
public enum RouteEncoder {
    public static func writeInterest(into buffer: inout ByteBuffer, add: Bool, subject: String, queue: String?) {
        buffer.writeStaticString(add ? "RS+ " : "RS- ")
        buffer.writeString(subject)
        if let queue {
            buffer.writeInteger(UInt8(ascii: " "))
            buffer.writeString(queue)
        }
        buffer.writeStaticString("\r\n")
    }

    public static func writeData(into buffer: inout ByteBuffer, _ payload: [UInt8]) {
        buffer.writeStaticString("RDATA ")
        buffer.writeString(String(payload.count))
        buffer.writeStaticString("\r\n")
        buffer.writeBytes(payload)
        buffer.writeStaticString("\r\n")
    }

    public static func writeInfo(into buffer: inout ByteBuffer, json: [UInt8]) {
        buffer.writeStaticString("INFO ")
        buffer.writeBytes(json)
        buffer.writeStaticString("\r\n")
    }

    public static func writeAuth(into buffer: inout ByteBuffer, json: [UInt8]) {
        buffer.writeStaticString("AUTH ")
        buffer.writeBytes(json)
        buffer.writeStaticString("\r\n")
    }

    public static func writeError(into buffer: inout ByteBuffer, _ text: String) {
        buffer.writeStaticString("-ERR '")
        buffer.writeString(text)
        buffer.writeStaticString("'\r\n")
    }

    /// `RMSG`/`RHMSG` for `message` (headers first when `headerLength` is set).
    /// Inlinable: it is the forwarding hot path, called from the broker.
    @inlinable @inline(__always)
    public static func writeMessage(into buffer: inout ByteBuffer, subject: String, reply: String?, queues: [String],
                                    headerLength: Int?, message: ByteBuffer) {
        let payloadLength = message.readableBytes
        var maximum = 6 + subject.utf8.count + 1 + (reply.map { $0.utf8.count + 1 } ?? 0) + 24 + payloadLength + 2
        if !queues.isEmpty { maximum += 2 + queues.reduce(0) { $0 + $1.utf8.count + 1 } }
        buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: maximum) { out in
            var cursor = OutputCursor(out)
            cursor.put(UInt8(ascii: "R"))
            if headerLength != nil { cursor.put(UInt8(ascii: "H")) }
            cursor.put(UInt8(ascii: "M")); cursor.put(UInt8(ascii: "S")); cursor.put(UInt8(ascii: "G")); cursor.put(UInt8(ascii: " "))
            cursor.put(subject)
            cursor.put(UInt8(ascii: " "))
            if queues.isEmpty {
                if let reply {
                    cursor.put(reply)
                    cursor.put(UInt8(ascii: " "))
                }
            } else {
                if let reply {
                    cursor.put(UInt8(ascii: "+")); cursor.put(UInt8(ascii: " "))
                    cursor.put(reply)
                } else {
                    cursor.put(UInt8(ascii: "|"))
                }
                for queue in queues {
                    cursor.put(UInt8(ascii: " "))
                    cursor.put(queue)
                }
                cursor.put(UInt8(ascii: " "))
            }
            if let headerLength {
                cursor.put(decimal: headerLength)
                cursor.put(UInt8(ascii: " "))
            }
            cursor.put(decimal: payloadLength)
            cursor.put(UInt8(ascii: "\r")); cursor.put(UInt8(ascii: "\n"))
            message.withUnsafeReadableBytes { cursor.put($0) }
            cursor.put(UInt8(ascii: "\r")); cursor.put(UInt8(ascii: "\n"))
            return cursor.count
        }
    }
}
