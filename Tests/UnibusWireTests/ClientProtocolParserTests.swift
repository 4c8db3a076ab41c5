import NIOCore
import Testing
@testable import UnibusWire

@Suite("Client protocol parser")
struct ClientProtocolParserTests {
    let parser = ClientProtocolParser(maxControlLine: 64, maxPayload: 100)

    private func parseAll(_ text: String) throws(ProtocolViolation) -> [ClientOp] {
        var buffer = ByteBuffer(string: text)
        var ops: [ClientOp] = []
        while let op = try parser.next(&buffer) { ops.append(op) }
        return ops
    }

    @Test func parsesEveryOperation() throws {
        let ops = try parseAll("CONNECT {\"verbose\":false}\r\nPUB a.b 5\r\nhello\r\nPUB a.b r.1 0\r\n\r\nHPUB h 12 14\r\nNATS/1.0\r\n\r\nhi\r\nSUB a.* 1\r\nSUB a.> q 2\r\nUNSUB 1\r\nUNSUB 2 10\r\nPING\r\nPONG\r\n+OK\r\n-ERR 'x'\r\nINFO {}\r\n")
        #expect(ops == [
            .connect(ByteBuffer(string: "{\"verbose\":false}")),
            .pub(subject: "a.b", reply: nil, payload: ByteBuffer(string: "hello")),
            .pub(subject: "a.b", reply: "r.1", payload: ByteBuffer()),
            .hpub(subject: "h", reply: nil, headerLength: 12, message: ByteBuffer(string: "NATS/1.0\r\n\r\nhi")),
            .sub(subject: "a.*", queue: nil, sid: "1"),
            .sub(subject: "a.>", queue: "q", sid: "2"),
            .unsub(sid: "1", max: nil),
            .unsub(sid: "2", max: 10),
            .ping, .pong, .ok, .err("'x'"), .info,
        ])
    }

    @Test func operationsAreCaseInsensitiveAndToleratesLFAndExtraWhitespace() throws {
        #expect(try parseAll("ping\npub  a \t 1\r\nx\r\nsUb a 1\r\n") == [
            .ping, .pub(subject: "a", reply: nil, payload: ByteBuffer(string: "x")), .sub(subject: "a", queue: nil, sid: "1"),
        ])
    }

    /// Fed one byte at a time, the parser must produce the same operations
    /// and never consume part of one.
    @Test func byteAtATimeGivesTheSameOperations() throws {
        let text = "SUB foo 1\r\nPUB foo reply 11\r\nhello world\r\nHPUB foo 12 14\r\nNATS/1.0\r\n\r\nhi\r\nPING\r\n"
        let whole = try parseAll(text)
        var buffer = ByteBuffer()
        var ops: [ClientOp] = []
        for byte in text.utf8 {
            buffer.writeInteger(byte)
            while let op = try parser.next(&buffer) { ops.append(op) }
        }
        #expect(ops == whole)
        #expect(buffer.readableBytes == 0)
    }

    @Test(arguments: [
        ("FOO\r\n", ProtocolViolation.unknownOperation),
        ("\r\n", .unknownOperation),
        ("MSG a 1 1\r\nx\r\n", .unknownOperation),
        ("PUB\r\n", .unknownOperation),
        ("PUB a 3\r\nabcd\r\n", .unknownOperation),
        ("PUB a 101\r\n", .maxPayload),
        ("HPUB a 1 101\r\n", .maxPayload),
        ("PUB a b\r\n", .malformedArguments),
        ("PUB a -1\r\n", .malformedArguments),
        ("PUB a 12345678901\r\n", .malformedArguments),
        ("HPUB a 5 4\r\n", .malformedArguments),
        ("SUB a\r\n", .malformedArguments),
        ("SUB a b c d\r\n", .malformedArguments),
        ("UNSUB 1 x\r\n", .malformedArguments),
        ("PUB a b c d e\r\n", .malformedArguments),
    ])
    func violations(_ input: String, _ expected: ProtocolViolation) {
        #expect(throws: expected) { try parseAll(input) }
    }

    @Test func controlLineLimitAppliesBeforeTheNewlineArrives() {
        var buffer = ByteBuffer(string: "PUB " + String(repeating: "a", count: 70))
        #expect(throws: ProtocolViolation.maxControlLine) { try parser.next(&buffer) }
        var short = ByteBuffer(string: "PUB " + String(repeating: "a", count: 30))
        #expect(throws: Never.self) { _ = try parser.next(&short) }
    }

    @Test func incompletePayloadWaits() throws {
        var buffer = ByteBuffer(string: "PUB a 5\r\nhel")
        #expect(try parser.next(&buffer) == nil)
        #expect(buffer.readableBytes == 12)
        buffer.writeString("lo\r\n")
        #expect(try parser.next(&buffer) == .pub(subject: "a", reply: nil, payload: ByteBuffer(string: "hello")))
    }

    @Test func subjectValidation() {
        for valid in ["a", "a.b", "a.*.c", "a.>", ">", "*", "a*.b", "foo-bar_baz.1"] {
            #expect(Subject.isValidFilter(valid), "\(valid)")
        }
        for invalid in ["", ".", "a.", ".a", "a..b", "a.>.b", ">.a", "a b", "a\tb"] {
            #expect(!Subject.isValidFilter(invalid), "\(invalid)")
        }
        #expect(Subject.isValidLiteral("a.b*c"))
        #expect(!Subject.isValidLiteral("a.*"))
        #expect(!Subject.isValidLiteral("a.>"))
        #expect(Subject.matches(filter: "a.*", subject: "a.b"))
        #expect(!Subject.matches(filter: "a.*", subject: "a.b.c"))
        #expect(Subject.matches(filter: "a.>", subject: "a.b.c"))
        #expect(!Subject.matches(filter: "a.>", subject: "a"))
        #expect(Subject.matches(filter: ">", subject: "anything.at.all"))
    }
}
