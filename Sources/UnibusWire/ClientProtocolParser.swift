import NIOCore

/// Parses the client side of the NATS protocol (what a server reads).
///
/// Pure: it never does I/O. Feed it a cumulation buffer; `next(_:)` consumes
/// and returns one complete operation, nil when more bytes are needed (the
/// partial operation stays in the buffer), or throws a violation. Limits are
/// enforced before the bytes they guard are buffered: a control line longer
/// than `maxControlLine` or a payload size above `maxPayload` fails as soon
/// as it is seen.
public struct ClientProtocolParser: Sendable {
    public var maxControlLine: Int
    public var maxPayload: Int

    public init(maxControlLine: Int = 4096, maxPayload: Int = 1024 * 1024) {
        self.maxControlLine = maxControlLine
        self.maxPayload = maxPayload
    }

    private enum Keyword {
        case pub, hpub, sub, unsub, ping, pong, connect, info, ok, err
    }

    /// Returns the next operation, or nil if `buffer` holds only part of one.
    public func next(_ buffer: inout ByteBuffer) throws(ProtocolViolation) -> ClientOp? {
        if buffer.readableBytes == 0 { return nil }
        let (keyword, keywordLength) = try identify(buffer)
        guard let keyword else { return nil }
        guard let (lineEnd, controlLength) = try ControlLine.locate(buffer, after: keywordLength, maxControlLine: maxControlLine) else {
            return nil
        }

        switch keyword {
        case .ping, .pong, .ok, .info:
            // The rest of these lines carries nothing the server uses.
            buffer.moveReaderIndex(forwardBy: controlLength)
            switch keyword {
            case .ping: return .ping
            case .pong: return .pong
            case .ok: return .ok
            default: return .info
            }
        case .err:
            let text = buffer.getString(at: buffer.readerIndex + keywordLength, length: max(lineEnd - keywordLength, 0)) ?? ""
            buffer.moveReaderIndex(forwardBy: controlLength)
            return .err(text.trimmingSpaces())
        case .connect:
            let json = ControlLine.argument(buffer, after: keywordLength, lineEnd: lineEnd)
            buffer.moveReaderIndex(forwardBy: controlLength)
            return .connect(json)
        case .sub, .unsub, .pub, .hpub:
            // One pass over the bytes: each ByteBuffer byte access costs a dynamic exclusivity check in NIOCore.
            let parsed = try buffer.withUnsafeReadableBytes { raw throws(ProtocolViolation) -> (ClientOp, consumed: Int)? in
                var fields = ArgumentFields()
                fields.scan(UnsafeRawBufferPointer(rebasing: raw[keywordLength..<lineEnd]), offset: keywordLength)
                return try parseArguments(keyword, fields: fields, raw: raw, buffer: buffer, controlLength: controlLength)
            }
            guard let (op, consumed) = parsed else { return nil }
            buffer.moveReaderIndex(forwardBy: consumed)
            return op
        }
    }

    /// Builds SUB/UNSUB/PUB/HPUB from up to four whitespace-separated fields
    /// without allocating an array (this is the publish hot path). `raw` is
    /// `buffer`'s readable bytes; returns the operation and the bytes it took.
    @inline(__always)
    private func parseArguments(_ keyword: Keyword, fields: ArgumentFields, raw: UnsafeRawBufferPointer, buffer: ByteBuffer,
                                controlLength: Int) throws(ProtocolViolation) -> (ClientOp, consumed: Int)? {
        func text(_ index: Int) -> String { fields.string(index, in: raw) }
        func size(_ index: Int) -> Int? { fields.decimal(index, in: raw) }
        switch keyword {
        case .sub:
            let op: ClientOp
            switch fields.count {
            case 2: op = .sub(subject: text(0), queue: nil, sid: text(1))
            case 3: op = .sub(subject: text(0), queue: text(1), sid: text(2))
            default: throw .malformedArguments
            }
            return (op, controlLength)
        case .unsub:
            let op: ClientOp
            switch fields.count {
            case 1: op = .unsub(sid: text(0), max: nil)
            case 2:
                guard let max = size(1) else { throw .malformedArguments }
                op = .unsub(sid: text(0), max: max)
            default: throw .malformedArguments
            }
            return (op, controlLength)
        case .pub:
            let sizeField: Int
            switch fields.count {
            case 2: sizeField = 1
            case 3: sizeField = 2
            default: throw .malformedArguments
            }
            guard let payloadSize = size(sizeField) else { throw .malformedArguments }
            guard payloadSize <= maxPayload else { throw .maxPayload }
            // Check completeness before building strings, so a partial
            // message costs nothing on each read that does not finish it.
            guard raw.count >= controlLength + payloadSize + 2 else { return nil }
            let subject = text(0)
            let reply = fields.count == 3 ? text(1) : nil
            guard let payload = try Self.payload(of: buffer, raw: raw, controlLength: controlLength, size: payloadSize) else { return nil }
            return (.pub(subject: subject, reply: reply, payload: payload), controlLength + payloadSize + 2)
        case .hpub:
            let headerField: Int
            switch fields.count {
            case 3: headerField = 1
            case 4: headerField = 2
            default: throw .malformedArguments
            }
            guard let headerLength = size(headerField), let total = size(headerField + 1),
                  headerLength <= total else { throw .malformedArguments }
            guard total <= maxPayload else { throw .maxPayload }
            guard raw.count >= controlLength + total + 2 else { return nil }
            let subject = text(0)
            let reply = fields.count == 4 ? text(1) : nil
            guard let message = try Self.payload(of: buffer, raw: raw, controlLength: controlLength, size: total) else { return nil }
            return (.hpub(subject: subject, reply: reply, headerLength: headerLength, message: message), controlLength + total + 2)
        default:
            return nil
        }
    }

    /// The payload after the control line, once it and its CRLF are in `raw`
    /// (`buffer`'s readable bytes), as a slice of `buffer`; as
    /// `ControlLine.takePayload`, a payload that does not end where its size
    /// says is an unknown operation.
    @inline(__always)
    private static func payload(of buffer: ByteBuffer, raw: UnsafeRawBufferPointer, controlLength: Int,
                                size: Int) throws(ProtocolViolation) -> ByteBuffer? {
        guard raw.count >= controlLength + size + 2 else { return nil }
        guard raw[controlLength + size] == UInt8(ascii: "\r"), raw[controlLength + size + 1] == UInt8(ascii: "\n") else {
            throw .unknownOperation
        }
        return buffer.getSlice(at: buffer.readerIndex + controlLength, length: size)
    }

    /// Identifies the operation from its first bytes (case-insensitive), as
    /// nats-server's state machine does: an impossible prefix fails at once.
    /// Returns (nil, 0) when more bytes are needed to decide.
    @inline(__always)
    private func identify(_ buffer: ByteBuffer) throws(ProtocolViolation) -> (Keyword?, Int) {
        try ControlLine.identify(buffer, caseInsensitive: true) { first -> [ControlLine.Candidate<Keyword>]? in
            switch first {
            case UInt8(ascii: "P"): return [("PUB", true, .pub), ("PING", false, .ping), ("PONG", false, .pong)]
            case UInt8(ascii: "H"): return [("HPUB", true, .hpub)]
            case UInt8(ascii: "S"): return [("SUB", true, .sub)]
            case UInt8(ascii: "U"): return [("UNSUB", true, .unsub)]
            case UInt8(ascii: "C"): return [("CONNECT", true, .connect)]
            case UInt8(ascii: "I"): return [("INFO", true, .info)]
            case UInt8(ascii: "+"): return [("+OK", false, .ok)]
            case UInt8(ascii: "-"): return [("-ERR", false, .err)]
            default: return nil
            }
        }
    }

    /// A non-negative decimal of at most 10 digits (nats-server's parseSize).
    static func parseSize(_ text: String) -> Int? {
        var value = 0
        var digits = 0
        for byte in text.utf8 {
            guard byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9") else { return nil }
            value = value * 10 + Int(byte - UInt8(ascii: "0"))
            digits += 1
            if digits > 10 { return nil }
        }
        return digits > 0 ? value : nil
    }
}

/// Up to four whitespace-separated fields of a control line, as offsets
/// from the buffer's reader index (a count of 5 means "too many").
struct ArgumentFields {
    private var starts: (Int, Int, Int, Int) = (0, 0, 0, 0)
    private var ends: (Int, Int, Int, Int) = (0, 0, 0, 0)
    private(set) var count = 0

    mutating func scan(_ raw: UnsafeRawBufferPointer, offset: Int) {
        var index = 0
        let end = raw.count
        while index < end {
            while index < end, raw[index] == UInt8(ascii: " ") || raw[index] == UInt8(ascii: "\t") { index += 1 }
            if index == end { break }
            let start = index
            while index < end, raw[index] != UInt8(ascii: " "), raw[index] != UInt8(ascii: "\t") { index += 1 }
            guard count < 4 else {
                count = 5
                return
            }
            set(count, start: start + offset, end: index + offset)
            count += 1
        }
    }

    private mutating func set(_ field: Int, start: Int, end: Int) {
        switch field {
        case 0: starts.0 = start; ends.0 = end
        case 1: starts.1 = start; ends.1 = end
        case 2: starts.2 = start; ends.2 = end
        default: starts.3 = start; ends.3 = end
        }
    }

    private func range(_ field: Int) -> Range<Int> {
        switch field {
        case 0: return starts.0..<ends.0
        case 1: return starts.1..<ends.1
        case 2: return starts.2..<ends.2
        default: return starts.3..<ends.3
        }
    }

    func string(_ field: Int, in buffer: ByteBuffer) -> String {
        buffer.withUnsafeReadableBytes { raw in string(field, in: raw) }
    }

    /// The field's text; `raw` is the readable bytes the offsets refer to.
    @inline(__always)
    func string(_ field: Int, in raw: UnsafeRawBufferPointer) -> String {
        String(decoding: UnsafeRawBufferPointer(rebasing: raw[range(field)]), as: UTF8.self)
    }

    /// A non-negative decimal of at most 10 digits, as nats-server's parseSize.
    func decimal(_ field: Int, in buffer: ByteBuffer) -> Int? {
        buffer.withUnsafeReadableBytes { raw in decimal(field, in: raw) }
    }

    /// As `decimal(_:in:)`, over the readable bytes the offsets refer to.
    @inline(__always)
    func decimal(_ field: Int, in raw: UnsafeRawBufferPointer) -> Int? {
        let range = range(field)
        guard !range.isEmpty, range.count <= 10 else { return nil }
        var value = 0
        for index in range {
            let byte = raw[index]
            guard byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9") else { return nil }
            value = value * 10 + Int(byte &- UInt8(ascii: "0"))
        }
        return value
    }
}

extension String {
    func trimmingSpaces() -> String {
        var view = Substring(self)
        while let first = view.first, first == " " || first == "\t" { view.removeFirst() }
        while let last = view.last, last == " " || last == "\t" { view.removeLast() }
        return String(view)
    }
}
