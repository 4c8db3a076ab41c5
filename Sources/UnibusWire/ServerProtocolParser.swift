import NIOCore

/// One operation a server sends to a client.
public enum ServerOp: Equatable, Sendable {
    case info(ByteBuffer)
    /// MSG / HMSG; `headerLength` is nil for MSG. `message` holds headers then payload.
    case msg(subject: String, sid: String, reply: String?, headerLength: Int?, message: ByteBuffer)
    case ping
    case pong
    case ok
    case err(String)
}

/// Parses the server side of the NATS protocol (what a client reads): the
/// counterpart of `ClientProtocolParser`, for Unibus's own client and load
/// tools. Pure, incremental, and bounded like the server-side parser.
public struct ServerProtocolParser: Sendable {
    public var maxControlLine: Int
    public var maxPayload: Int

    /// A client accepts larger control lines than a server (INFO carries
    /// connect_urls) and messages up to what the server advertised.
    public init(maxControlLine: Int = 64 * 1024, maxPayload: Int = 64 * 1024 * 1024) {
        self.maxControlLine = maxControlLine
        self.maxPayload = maxPayload
    }

    public func next(_ buffer: inout ByteBuffer) throws(ProtocolViolation) -> ServerOp? {
        guard buffer.readableBytes > 0 else { return nil }
        let limit = min(buffer.readableBytes, maxControlLine + 2)
        guard let newline = buffer.withUnsafeReadableBytes({ raw -> Int? in
            for index in 0..<limit where raw[index] == UInt8(ascii: "\n") { return index }
            return nil
        }) else {
            // Reject a line that cannot start any server operation as soon as possible.
            if buffer.readableBytes > maxControlLine { throw .maxControlLine }
            try checkPrefix(buffer)
            return nil
        }
        if newline > maxControlLine { throw .maxControlLine }
        let lineEnd = newline > 0 && buffer.getInteger(at: buffer.readerIndex + newline - 1, as: UInt8.self) == UInt8(ascii: "\r") ? newline - 1 : newline
        let line = buffer.getString(at: buffer.readerIndex, length: lineEnd) ?? ""
        let controlLength = newline + 1
        // Tabs separate like spaces (as on the server side).
        let upper = line.prefix(5).uppercased().replacingTabs()

        if upper.hasPrefix("MSG ") || upper.hasPrefix("HMSG ") {
            let headers = upper.hasPrefix("HMSG ")
            let fields = line.dropFirst(headers ? 5 : 4).split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
            let subject: String, sid: String, reply: String?, headerLength: Int?, total: Int
            func size(_ text: String) throws(ProtocolViolation) -> Int {
                guard text.utf8.count <= 10, let value = Int(text), value >= 0, text.utf8.allSatisfy({ $0 >= 48 && $0 <= 57 }) else {
                    throw .malformedArguments
                }
                return value
            }
            switch (headers, fields.count) {
            case (false, 3): (subject, sid, reply, headerLength, total) = (fields[0], fields[1], nil, nil, try size(fields[2]))
            case (false, 4): (subject, sid, reply, headerLength, total) = (fields[0], fields[1], fields[2], nil, try size(fields[3]))
            case (true, 4): (subject, sid, reply, headerLength, total) = (fields[0], fields[1], nil, try size(fields[2]), try size(fields[3]))
            case (true, 5): (subject, sid, reply, headerLength, total) = (fields[0], fields[1], fields[2], try size(fields[3]), try size(fields[4]))
            default: throw .malformedArguments
            }
            if let headerLength, headerLength > total { throw .malformedArguments }
            guard total <= maxPayload else { throw .maxPayload }
            let needed = controlLength + total + 2
            guard buffer.readableBytes >= needed else { return nil }
            let start = buffer.readerIndex + controlLength
            guard buffer.getInteger(at: start + total, as: UInt8.self) == UInt8(ascii: "\r"),
                  buffer.getInteger(at: start + total + 1, as: UInt8.self) == UInt8(ascii: "\n"),
                  let message = buffer.getSlice(at: start, length: total) else {
                throw .unknownOperation
            }
            buffer.moveReaderIndex(forwardBy: needed)
            return .msg(subject: subject, sid: sid, reply: reply, headerLength: headerLength, message: message)
        }
        let op: ServerOp
        if upper.hasPrefix("PING") {
            op = .ping
        } else if upper.hasPrefix("PONG") {
            op = .pong
        } else if upper.hasPrefix("+OK") {
            op = .ok
        } else if upper.hasPrefix("-ERR") {
            var text = line.dropFirst(4).trimmingCharacters(in: " \t")
            if text.hasPrefix("'") && text.hasSuffix("'") && text.count >= 2 { text = String(text.dropFirst().dropLast()) }
            op = .err(text)
        } else if upper.hasPrefix("INFO ") {
            var start = buffer.readerIndex + 5
            while start < buffer.readerIndex + lineEnd,
                  let byte = buffer.getInteger(at: start, as: UInt8.self), byte == UInt8(ascii: " ") || byte == UInt8(ascii: "\t") {
                start += 1
            }
            op = .info(buffer.getSlice(at: start, length: buffer.readerIndex + lineEnd - start) ?? ByteBuffer())
        } else {
            throw .unknownOperation
        }
        buffer.moveReaderIndex(forwardBy: controlLength)
        return op
    }

    private func checkPrefix(_ buffer: ByteBuffer) throws(ProtocolViolation) {
        let head = (buffer.getString(at: buffer.readerIndex, length: min(buffer.readableBytes, 5)) ?? "").uppercased().replacingTabs()
        for keyword in ["MSG ", "HMSG ", "PING", "PONG", "+OK", "-ERR", "INFO "] {
            if keyword.hasPrefix(head) || head.hasPrefix(keyword) { return }
        }
        throw .unknownOperation
    }
}

extension String {
    func trimmingCharacters(in set: String) -> String {
        var view = Substring(self)
        while let first = view.first, set.contains(first) { view.removeFirst() }
        while let last = view.last, set.contains(last) { view.removeLast() }
        return String(view)
    }
}

extension String {
    func replacingTabs() -> String { String(map { $0 == "\t" ? " " : $0 }) }
}

extension Substring {
    func trimmingCharacters(in set: String) -> String { String(self).trimmingCharacters(in: set) }
}
