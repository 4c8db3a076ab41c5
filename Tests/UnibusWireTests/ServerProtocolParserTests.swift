import NIOCore
import Testing
@testable import UnibusWire

@Suite("Server protocol parser (client side)")
struct ServerProtocolParserTests {
    let parser = ServerProtocolParser(maxControlLine: 256, maxPayload: 100)

    private func parseAll(_ text: String) throws(ProtocolViolation) -> [ServerOp] {
        var buffer = ByteBuffer(string: text)
        var ops: [ServerOp] = []
        while let op = try parser.next(&buffer) { ops.append(op) }
        return ops
    }

    @Test func parsesWhatNatsServerSends() throws {
        let ops = try parseAll("INFO {\"server_id\":\"N\"} \r\n+OK\r\nMSG a.b 1 5\r\nhello\r\nMSG a.b 1 r.x 0\r\n\r\nHMSG a 2 16 16\r\nNATS/1.0 503\r\n\r\n\r\nPING\r\nPONG\r\n-ERR 'Stale Connection'\r\n")
        #expect(ops == [
            .info(ByteBuffer(string: "{\"server_id\":\"N\"} ")),
            .ok,
            .msg(subject: "a.b", sid: "1", reply: nil, headerLength: nil, message: ByteBuffer(string: "hello")),
            .msg(subject: "a.b", sid: "1", reply: "r.x", headerLength: nil, message: ByteBuffer()),
            .msg(subject: "a", sid: "2", reply: nil, headerLength: 16, message: ByteBuffer(string: "NATS/1.0 503\r\n\r\n")),
            .ping, .pong, .err("Stale Connection"),
        ])
    }

    @Test func byteAtATime() throws {
        let text = "MSG s 9 r 3\r\nabc\r\nHMSG s 9 12 14\r\nNATS/1.0\r\n\r\nhi\r\nPING\r\n"
        let whole = try parseAll(text)
        var buffer = ByteBuffer()
        var ops: [ServerOp] = []
        for byte in text.utf8 {
            buffer.writeInteger(byte)
            while let op = try parser.next(&buffer) { ops.append(op) }
        }
        #expect(ops == whole && ops.count == 3)
    }

    @Test(arguments: [
        ("PUB a 1\r\n", ProtocolViolation.unknownOperation),
        ("XYZ", .unknownOperation),
        ("MSG a 1 3\r\nabcd\r\n", .unknownOperation),
        ("MSG a 1\r\n", .malformedArguments),
        ("MSG a 1 -3\r\n", .malformedArguments),
        ("HMSG a 1 5 3\r\n", .malformedArguments),
        ("MSG a 1 101\r\n", .maxPayload),
    ])
    func violations(_ input: String, _ expected: ProtocolViolation) {
        #expect(throws: expected) { try parseAll(input) }
    }

    @Test func controlLineLimit() {
        var buffer = ByteBuffer(string: "INFO " + String(repeating: "x", count: 300))
        #expect(throws: ProtocolViolation.maxControlLine) { try parser.next(&buffer) }
    }
}
