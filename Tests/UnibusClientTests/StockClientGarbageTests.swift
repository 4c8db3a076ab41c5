import Foundation
import Testing
import UnibusClient
import UnibusControlClient
import UnibusCrypto

/// A stock NATS client (nats-py, authenticated with a member's nkey seed)
/// publishes garbage into an encrypted room's subject: every frame is
/// dropped with a counted reason and the genuine message still arrives.
@Suite("Garbage from a stock client", .serialized)
struct StockClientGarbageTests {
    static let script = """
    import asyncio, os, sys
    try:
        import nats
    except ImportError as error:
        sys.stderr.write(f"interop peer missing: {error}; pip install nats-py nkeys\\n")
        sys.exit(3)
    async def main():
        nc = await nats.connect(sys.argv[1], nkeys_seed_str=sys.argv[2], allow_reconnect=False)
        subject = sys.argv[3]
        payloads = [b"", b"hello", b"UB", b"UB\\x01", b"UB\\x02\\x01" + bytes(64), b"UB\\x01\\x01" + bytes(200),
                    b"UB\\x01\\x02" + os.urandom(150), b"UB\\x01\\x03" + bytes(40), os.urandom(1000)]
        for payload in payloads:
            await nc.publish(subject, payload)
        await nc.flush()
        await nc.close()
        print(len(payloads))
    asyncio.run(main())
    """

    @Test func garbageIsCountedNotDelivered() async throws {
        let node = try await TestNode()
        let alice = try await node.client(node.alice), bob = try await node.client(node.bob)
        try await alice.createRoom(id: "ops", subject: "rooms.ops")
        try await alice.addMember(node.bob.userNKey, to: "ops")
        let inbox = Inbox(try await bob.join("ops"))
        _ = try await alice.join("ops")

        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", "-c", Self.script, node.dataURL, node.alice.userSeedNKey, "rooms.ops"]
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        try process.run()
        process.waitUntilExit()
        let printed = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(process.terminationStatus == 0, "nats-py peer failed (exit 3 = not installed): \(printed)")
        let sent = Int(printed.trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0
        #expect(sent == 9)

        try await alice.publish(Array("genuine".utf8), to: "ops")
        #expect(await inbox.wait(for: 1) == ["genuine"])
        #expect(await eventually { await bob.rejections.values.reduce(0, +) >= sent })
        let rejections = await bob.rejections
        #expect(rejections.values.reduce(0, +) == sent, "\(rejections)")
        #expect(rejections[.unknownVersion] == 1, "\(rejections)")
        #expect(rejections[.policyMismatch] == 2, "\(rejections)")
        #expect(await inbox.texts == ["genuine"])
        await alice.close()
        await bob.close()
        await node.stop()
    }
}
