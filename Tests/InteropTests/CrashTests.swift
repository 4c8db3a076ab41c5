import Foundation
import Testing
import UnibusMembership
import UnibusMembershipStore

/// kill -9 in the middle of membership writes: every acknowledged operation
/// survives, and the reopened store's tables are the fold of its log.
@Suite("Membership durability under kill -9", .serialized)
struct CrashTests {
    @Test func killNineLosesNoAcknowledgedOperation() throws {
        let unibusd = BrokerInteropTests.unibusd
        let directory = NSTemporaryDirectory() + "unibus-crash-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let init_ = Process()
        init_.executableURL = URL(fileURLWithPath: unibusd)
        init_.arguments = ["init", "--data-dir", directory + "/data", "--admin-identity", directory + "/admin.json"]
        init_.standardOutput = FileHandle.nullDevice
        try init_.run()
        init_.waitUntilExit()
        #expect(init_.terminationStatus == 0)

        for round in 0..<3 {
            let writer = Process()
            writer.executableURL = URL(fileURLWithPath: unibusd)
            writer.arguments = ["debug", "append-forever", "--data-dir", directory + "/data", "--admin-identity", directory + "/admin.json"]
            let output = Pipe()
            writer.standardOutput = output
            try writer.run()
            // Read a few acknowledgements (more each round), then kill -9
            // mid-stream. Counted, not timed: a slow start must not make the
            // kill land before the writer has acknowledged anything.
            var text = ""
            let wanted = 3 + 5 * round
            let deadline = Date().addingTimeInterval(30)
            while Date() < deadline, text.components(separatedBy: "acked ").count - 1 < wanted {
                let chunk = output.fileHandleForReading.availableData
                if chunk.isEmpty { break }
                text += String(decoding: chunk, as: UTF8.self)
            }
            kill(writer.processIdentifier, SIGKILL)
            writer.waitUntilExit()
            text += String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            let acknowledged = text.split(separator: "\n").compactMap { line -> Int? in
                line.hasPrefix("acked ") ? Int(line.dropFirst(6)) : nil
            }.max() ?? 0
            #expect(acknowledged > 1, "the writer acknowledged nothing: \(text.prefix(200))")

            let store = try MembershipStore(directory: directory + "/data")
            #expect(store.operationCount >= acknowledged, "round \(round): \(store.operationCount) operations, \(acknowledged) acknowledged")
            var replayed = MembershipState()
            for operation in try store.operations() { try replayed.apply(operation) }
            #expect(replayed == store.snapshot)
        }
    }
}
