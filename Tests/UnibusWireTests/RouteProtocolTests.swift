import NIOCore
import Testing
@testable import UnibusWire

@Suite("Route protocol")
struct RouteProtocolTests {
    let parser = RouteProtocolParser(maxControlLine: 256, maxPayload: 100, maxData: 200)

    private func parseAll(_ buffer: ByteBuffer) throws(ProtocolViolation) -> [RouteOp] {
        var buffer = buffer
        var ops: [RouteOp] = []
        while let op = try parser.next(&buffer) { ops.append(op) }
        #expect(buffer.readableBytes == 0, "left \(buffer.readableBytes) bytes")
        return ops
    }

    private func encoded(_ ops: [RouteOp]) -> ByteBuffer {
        var buffer = ByteBuffer()
        for op in ops {
            switch op {
            case .info(let json): RouteEncoder.writeInfo(into: &buffer, json: Array(json.readableBytesView))
            case .auth(let json): RouteEncoder.writeAuth(into: &buffer, json: Array(json.readableBytesView))
            case .ping: buffer.writeString("PING\r\n")
            case .pong: buffer.writeString("PONG\r\n")
            case .subscribe(let subject, let queue): RouteEncoder.writeInterest(into: &buffer, add: true, subject: subject, queue: queue)
            case .unsubscribe(let subject, let queue): RouteEncoder.writeInterest(into: &buffer, add: false, subject: subject, queue: queue)
            case .message(let subject, let reply, let queues, let headerLength, let message):
                RouteEncoder.writeMessage(into: &buffer, subject: subject, reply: reply, queues: queues, headerLength: headerLength, message: message)
            case .data(let payload): RouteEncoder.writeData(into: &buffer, Array(payload.readableBytesView))
            case .err(let text): RouteEncoder.writeError(into: &buffer, text)
            }
        }
        return buffer
    }

    /// Every form the encoder writes parses back to itself, whole and one byte at a time.
    @Test func everyOperationRoundTrips() throws {
        let ops: [RouteOp] = [
            .info(ByteBuffer(string: "{\"server_id\":\"N\"}")),
            .auth(ByteBuffer(string: "{\"sig\":\"AAAA\"}")),
            .ping, .pong,
            .subscribe(subject: "a.*", queue: nil), .subscribe(subject: "a.>", queue: "workers"),
            .unsubscribe(subject: "a.*", queue: nil), .unsubscribe(subject: "a.>", queue: "workers"),
            .message(subject: "a.b", reply: nil, queues: [], headerLength: nil, message: ByteBuffer(string: "hello")),
            .message(subject: "a.b", reply: "_INBOX.x.1", queues: [], headerLength: nil, message: ByteBuffer()),
            .message(subject: "a.b", reply: nil, queues: ["q1", "q2"], headerLength: nil, message: ByteBuffer(string: "x")),
            .message(subject: "a.b", reply: "r", queues: ["q1"], headerLength: nil, message: ByteBuffer(string: "y")),
            .message(subject: "h", reply: nil, queues: [], headerLength: 12, message: ByteBuffer(string: "NATS/1.0\r\n\r\nhi")),
            .message(subject: "h", reply: "r", queues: ["a", "b", "c", "d", "e"], headerLength: 12, message: ByteBuffer(string: "NATS/1.0\r\n\r\nhi")),
            // A reply subject that looks like a queue marker is still a reply.
            .message(subject: "a", reply: "+", queues: [], headerLength: nil, message: ByteBuffer(string: "z")),
            .message(subject: "a", reply: "|", queues: [], headerLength: 2, message: ByteBuffer(string: "hh")),
            .data(ByteBuffer(string: "{\"t\":\"sync\"}")),
            .err("duplicate route"),
        ]
        let buffer = encoded(ops)
        #expect(try parseAll(buffer) == ops)
        var piecewise = ByteBuffer()
        var parsed: [RouteOp] = []
        for byte in buffer.readableBytesView {
            piecewise.writeInteger(byte)
            while let op = try parser.next(&piecewise) { parsed.append(op) }
        }
        #expect(parsed == ops)
    }

    @Test func limitsAndMalformedLinesAreViolations() {
        func violation(_ text: String) -> ProtocolViolation? {
            var buffer = ByteBuffer(string: text)
            do {
                while try parser.next(&buffer) != nil {}
                return nil
            } catch {
                return error
            }
        }
        #expect(violation("RMSG a 101\r\n") == .maxPayload)
        #expect(violation("RDATA 201\r\n") == .maxPayload)
        #expect(violation("RMSG " + String(repeating: "a", count: 300) + " 1\r\n") == .maxControlLine)
        #expect(violation("RMSG a\r\n") == .malformedArguments)
        #expect(violation("RMSG a b c 1\r\n") == .malformedArguments)
        #expect(violation("RMSG a | q\r\n") == .malformedArguments, "a queue form ends with a size")
        #expect(violation("RMSG a + r 1\r\n") == .malformedArguments, "a reply+queue form names at least one queue")
        #expect(violation("RMSG a # q 1\r\n") == .malformedArguments)
        #expect(violation("RHMSG a 5 4\r\nxxxx\r\n") == .malformedArguments, "header longer than the message")
        #expect(violation("RMSG a 2\r\nxyz\r\n") == .unknownOperation, "size does not match the bytes")
        #expect(violation("RS+\r\n") == .unknownOperation)
        #expect(violation("RS+ \r\n") == .malformedArguments)
        #expect(violation("RS+ a b c\r\n") == .malformedArguments)
        #expect(violation("PUB a 1\r\nx\r\n") == .unknownOperation, "client operations are not route operations")
        #expect(violation("rmsg a 1\r\nx\r\n") == .unknownOperation, "routes speak exact upper case")
        #expect(violation("RMSG a 1") == nil, "incomplete, not wrong")
    }
}
