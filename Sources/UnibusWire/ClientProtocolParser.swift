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
        let available = buffer.readableBytes
        if available == 0 { return nil }
        let (keyword, keywordLength) = try identify(buffer)
        guard let keyword else { return nil }
        let lineLimit = min(available, maxControlLine + 2)
        guard let newline = buffer.withUnsafeReadableBytes({ raw -> Int? in
            var index = keywordLength
            while index < lineLimit {
                if raw[index] == UInt8(ascii: "\n") { return index }
                index += 1
            }
            return nil
        }) else {
            if available > maxControlLine { throw .maxControlLine }
            return nil
        }
        if newline > maxControlLine { throw .maxControlLine }
        let lineEnd = newline > 0 && buffer.getInteger(at: buffer.readerIndex + newline - 1, as: UInt8.self) == UInt8(ascii: "\r") ? newline - 1 : newline
        let arguments = buffer.withUnsafeReadableBytes { raw in
            Self.split(UnsafeRawBufferPointer(rebasing: raw[keywordLength..<lineEnd]))
        }
        let controlLength = newline + 1

        switch keyword {
        case .ping:
            buffer.moveReaderIndex(forwardBy: controlLength)
            return .ping
        case .pong:
            buffer.moveReaderIndex(forwardBy: controlLength)
            return .pong
        case .ok:
            buffer.moveReaderIndex(forwardBy: controlLength)
            return .ok
        case .info:
            buffer.moveReaderIndex(forwardBy: controlLength)
            return .info
        case .err:
            let text = buffer.getString(at: buffer.readerIndex + keywordLength, length: max(lineEnd - keywordLength, 0)) ?? ""
            buffer.moveReaderIndex(forwardBy: controlLength)
            return .err(text.trimmingSpaces())
        case .connect:
            let json = buffer.getSlice(at: buffer.readerIndex + keywordLength, length: max(lineEnd - keywordLength, 0)) ?? ByteBuffer()
            buffer.moveReaderIndex(forwardBy: controlLength)
            return .connect(json)
        case .sub:
            let op: ClientOp
            switch arguments.count {
            case 2: op = .sub(subject: arguments[0], queue: nil, sid: arguments[1])
            case 3: op = .sub(subject: arguments[0], queue: arguments[1], sid: arguments[2])
            default: throw .malformedArguments
            }
            buffer.moveReaderIndex(forwardBy: controlLength)
            return op
        case .unsub:
            let op: ClientOp
            switch arguments.count {
            case 1: op = .unsub(sid: arguments[0], max: nil)
            case 2:
                guard let max = Self.parseSize(arguments[1]) else { throw .malformedArguments }
                op = .unsub(sid: arguments[0], max: max)
            default: throw .malformedArguments
            }
            buffer.moveReaderIndex(forwardBy: controlLength)
            return op
        case .pub:
            let subject: String, reply: String?, sizeText: String
            switch arguments.count {
            case 2: (subject, reply, sizeText) = (arguments[0], nil, arguments[1])
            case 3: (subject, reply, sizeText) = (arguments[0], arguments[1], arguments[2])
            default: throw .malformedArguments
            }
            guard let size = Self.parseSize(sizeText) else { throw .malformedArguments }
            guard size <= maxPayload else { throw .maxPayload }
            guard let payload = try Self.takePayload(&buffer, controlLength: controlLength, size: size) else { return nil }
            return .pub(subject: subject, reply: reply, payload: payload)
        case .hpub:
            let subject: String, reply: String?, headerText: String, totalText: String
            switch arguments.count {
            case 3: (subject, reply, headerText, totalText) = (arguments[0], nil, arguments[1], arguments[2])
            case 4: (subject, reply, headerText, totalText) = (arguments[0], arguments[1], arguments[2], arguments[3])
            default: throw .malformedArguments
            }
            guard let headerLength = Self.parseSize(headerText), let total = Self.parseSize(totalText),
                  headerLength <= total else { throw .malformedArguments }
            guard total <= maxPayload else { throw .maxPayload }
            guard let message = try Self.takePayload(&buffer, controlLength: controlLength, size: total) else { return nil }
            return .hpub(subject: subject, reply: reply, headerLength: headerLength, message: message)
        }
    }

    /// The payload after the control line, once it and its CRLF are buffered.
    private static func takePayload(_ buffer: inout ByteBuffer, controlLength: Int, size: Int) throws(ProtocolViolation) -> ByteBuffer? {
        let needed = controlLength + size + 2
        guard buffer.readableBytes >= needed else { return nil }
        let start = buffer.readerIndex + controlLength
        guard buffer.getInteger(at: start + size, as: UInt8.self) == UInt8(ascii: "\r"),
              buffer.getInteger(at: start + size + 1, as: UInt8.self) == UInt8(ascii: "\n") else {
            // The declared size does not match the bytes sent.
            throw .unknownOperation
        }
        let payload = buffer.getSlice(at: start, length: size)
        buffer.moveReaderIndex(forwardBy: needed)
        return payload
    }

    /// Identifies the operation from its first bytes (case-insensitive), as
    /// nats-server's state machine does: an impossible prefix fails at once.
    /// Returns (nil, 0) when more bytes are needed to decide.
    private func identify(_ buffer: ByteBuffer) throws(ProtocolViolation) -> (Keyword?, Int) {
        try buffer.withUnsafeReadableBytes { raw -> Result<(Keyword?, Int), ProtocolViolation> in
            func upper(_ index: Int) -> UInt8? {
                guard index < raw.count else { return nil }
                let byte = raw[index]
                return (byte >= 0x61 && byte <= 0x7A) ? byte - 0x20 : byte
            }
            /// Matches `word` at the start; `separator` requires a space or tab after it.
            func match(_ word: StaticString, separator: Bool) -> Bool? {
                let bytes = UnsafeBufferPointer(start: word.utf8Start, count: word.utf8CodeUnitCount)
                for (index, expected) in bytes.enumerated() {
                    guard let got = upper(index) else { return nil }
                    if got != expected { return false }
                }
                if separator {
                    guard let next = upper(bytes.count) else { return nil }
                    return next == UInt8(ascii: " ") || next == UInt8(ascii: "\t")
                }
                return true
            }
            let candidates: [(StaticString, Bool, Keyword)]
            switch upper(0) {
            case UInt8(ascii: "P"):
                candidates = [("PUB", true, .pub), ("PING", false, .ping), ("PONG", false, .pong)]
            case UInt8(ascii: "H"): candidates = [("HPUB", true, .hpub)]
            case UInt8(ascii: "S"): candidates = [("SUB", true, .sub)]
            case UInt8(ascii: "U"): candidates = [("UNSUB", true, .unsub)]
            case UInt8(ascii: "C"): candidates = [("CONNECT", true, .connect)]
            case UInt8(ascii: "I"): candidates = [("INFO", true, .info)]
            case UInt8(ascii: "+"): candidates = [("+OK", false, .ok)]
            case UInt8(ascii: "-"): candidates = [("-ERR", false, .err)]
            default: return .failure(.unknownOperation)
            }
            var undecided = false
            for (word, separator, keyword) in candidates {
                switch match(word, separator: separator) {
                case .some(true): return .success((keyword, word.utf8CodeUnitCount))
                case .none: undecided = true
                case .some(false): continue
                }
            }
            return undecided ? .success((nil, 0)) : .failure(.unknownOperation)
        }.get()
    }

    /// Splits on spaces and tabs.
    static func split(_ raw: UnsafeRawBufferPointer) -> [String] {
        var parts: [String] = []
        var start = -1
        for index in 0...raw.count {
            let isSeparator = index == raw.count || raw[index] == UInt8(ascii: " ") || raw[index] == UInt8(ascii: "\t")
            if isSeparator {
                if start >= 0 {
                    parts.append(String(decoding: UnsafeRawBufferPointer(rebasing: raw[start..<index]), as: UTF8.self))
                    start = -1
                }
            } else if start < 0 {
                start = index
            }
        }
        return parts
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

extension String {
    func trimmingSpaces() -> String {
        var view = Substring(self)
        while let first = view.first, first == " " || first == "\t" { view.removeFirst() }
        while let last = view.last, last == " " || last == "\t" { view.removeLast() }
        return String(view)
    }
}
