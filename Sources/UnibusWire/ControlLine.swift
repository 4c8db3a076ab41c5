import NIOCore

/// What the keyword-first parsers share (`ClientProtocolParser` and
/// `RouteProtocolParser`): identifying the operation from its first bytes,
/// finding the end of its control line within the limit, and taking the
/// payload that follows it. Internal and inlined: this is the parse hot path.
enum ControlLine {
    /// One keyword a parser accepts: its text, whether a space or tab must
    /// follow it, and what it stands for.
    typealias Candidate<Keyword> = (word: StaticString, separator: Bool, keyword: Keyword)

    /// The operation at the reader index among `candidates` (chosen by the
    /// first byte; nil for a byte no operation starts with). Returns (nil, 0)
    /// when more bytes are needed to decide, and fails at once on an
    /// impossible prefix, as nats-server's state machine does.
    @inline(__always)
    static func identify<Keyword>(_ buffer: ByteBuffer, caseInsensitive: Bool,
                                  _ candidates: (UInt8) -> [Candidate<Keyword>]?) throws(ProtocolViolation) -> (Keyword?, Int) {
        try buffer.withUnsafeReadableBytes { raw -> Result<(Keyword?, Int), ProtocolViolation> in
            func byte(_ index: Int) -> UInt8? {
                guard index < raw.count else { return nil }
                let value = raw[index]
                return caseInsensitive && value >= 0x61 && value <= 0x7A ? value - 0x20 : value
            }
            guard let first = byte(0), let choices = candidates(first) else { return .failure(.unknownOperation) }
            var undecided = false
            for choice in choices {
                let bytes = UnsafeBufferPointer(start: choice.word.utf8Start, count: choice.word.utf8CodeUnitCount)
                var matches: Bool? = true
                for (index, expected) in bytes.enumerated() {
                    guard let got = byte(index) else {
                        matches = nil
                        break
                    }
                    if got != expected {
                        matches = false
                        break
                    }
                }
                if matches == true, choice.separator {
                    if let next = byte(bytes.count) {
                        matches = next == UInt8(ascii: " ") || next == UInt8(ascii: "\t")
                    } else {
                        matches = nil
                    }
                }
                switch matches {
                case .some(true): return .success((choice.keyword, bytes.count))
                case .none: undecided = true
                case .some(false): continue
                }
            }
            return undecided ? .success((nil, 0)) : .failure(.unknownOperation)
        }.get()
    }

    /// Where the control line at the reader index ends: `lineEnd` (before an
    /// optional CR) and `length` (through the LF), both from the reader
    /// index; nil when the LF has not arrived. A line longer than
    /// `maxControlLine` fails as soon as that many bytes are buffered.
    @inline(__always)
    static func locate(_ buffer: ByteBuffer, after keywordLength: Int, maxControlLine: Int) throws(ProtocolViolation) -> (lineEnd: Int, length: Int)? {
        let available = buffer.readableBytes
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
        let carriageReturn = newline > 0 && buffer.getInteger(at: buffer.readerIndex + newline - 1, as: UInt8.self) == UInt8(ascii: "\r")
        return (carriageReturn ? newline - 1 : newline, newline + 1)
    }

    /// The rest of the line after the keyword, leading blanks skipped (the
    /// JSON of INFO and CONNECT).
    static func argument(_ buffer: ByteBuffer, after keywordLength: Int, lineEnd: Int) -> ByteBuffer {
        var start = keywordLength
        while start < lineEnd, let byte = buffer.getInteger(at: buffer.readerIndex + start, as: UInt8.self),
              byte == UInt8(ascii: " ") || byte == UInt8(ascii: "\t") {
            start += 1
        }
        return buffer.getSlice(at: buffer.readerIndex + start, length: max(lineEnd - start, 0)) ?? ByteBuffer()
    }

    /// The payload after the control line, once it and its CRLF are buffered;
    /// consumes both. A payload that does not end where its size says is an
    /// unknown operation (nats-server's verdict).
    @inline(__always)
    static func takePayload(_ buffer: inout ByteBuffer, controlLength: Int, size: Int) throws(ProtocolViolation) -> ByteBuffer? {
        let needed = controlLength + size + 2
        guard buffer.readableBytes >= needed else { return nil }
        let start = buffer.readerIndex + controlLength
        guard buffer.getInteger(at: start + size, as: UInt8.self) == UInt8(ascii: "\r"),
              buffer.getInteger(at: start + size + 1, as: UInt8.self) == UInt8(ascii: "\n") else {
            throw .unknownOperation
        }
        let payload = buffer.getSlice(at: start, length: size)
        buffer.moveReaderIndex(forwardBy: needed)
        return payload
    }
}
