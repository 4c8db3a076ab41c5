import Foundation
import Testing
import UnibusClient
import UnibusControlClient
import UnibusCrypto
import UnibusMembership
import UnibusMembershipStore
import UnibusWire

/// Clients in rooms through a real in-process node (broker, membership,
/// control plane on loopback).
@Suite("Rooms through a node", .serialized)
struct RoomIntegrationTests {
    /// A second data-plane connection as `identity`, to see raw frames and inject some.
    func raw(_ node: TestNode, as identity: Identity, subject: String) async throws -> (NATSConnection, AsyncStream<NATSMessage>) {
        let connection = try NATSConnection(options: .init(seeds: [Endpoint(parsing: node.dataURL)], identity: identity))
        try await connection.connect()
        let stream = try connection.subscribe(subject)
        try await connection.flush()
        return (connection, stream)
    }

    func next(_ stream: AsyncStream<NATSMessage>) async -> [UInt8]? {
        var iterator = stream.makeAsyncIterator()
        return await iterator.next()?.payload
    }

    /// A SUB refused because the node does not know the membership yet (the
    /// add-member is still on its way from another node) is sent again, so
    /// it takes effect once the membership arrives.
    @Test func aRefusedSubscriptionIsRetriedUntilTheMembershipArrives() async throws {
        let node = try await TestNode()
        let alice = try await node.client(node.alice)
        try await alice.createRoom(id: "late", subject: "rooms.late")
        let (bobRaw, stream) = try await raw(node, as: node.bob, subject: "rooms.late")   // bob is no member yet: refused
        #expect(await eventually { bobRaw.refusedSubscriptions >= 1 })
        try await alice.addMember(node.bob.userNKey, to: "late")
        let (aliceRaw, _) = try await raw(node, as: node.alice, subject: "rooms.late.echo")
        let received = Box()
        let reader = Task {
            for await message in stream {
                await received.set(message.payload)
                return
            }
        }
        // Publish until the retried subscription is in place (bounded).
        let delivered = await eventually(10) {
            try? aliceRaw.publish("rooms.late", payload: Array("hello".utf8))
            try? await aliceRaw.flush()
            return await received.value != nil
        }
        #expect(delivered, "the refused subscription was never retried")
        reader.cancel()
        await bobRaw.close()
        await aliceRaw.close()
        await alice.close()
        await node.stop()
    }

    /// `confirmSubscription` waits for a refused subscription to be accepted
    /// (the membership reaching the node), and gives up with a clear error
    /// when it never is.
    @Test func confirmingASubscriptionWaitsForTheMembership() async throws {
        let node = try await TestNode()
        let alice = try await node.client(node.alice)
        try await alice.createRoom(id: "late", subject: "rooms.late")
        let (bobRaw, stream) = try await raw(node, as: node.bob, subject: "rooms.late")
        await #expect(throws: ClientError.self) { try await bobRaw.confirmSubscription("rooms.late", timeout: .milliseconds(300)) }
        let confirming = Task { try await bobRaw.confirmSubscription("rooms.late", timeout: .seconds(10)) }
        try await Task.sleep(for: .milliseconds(200))
        try await alice.addMember(node.bob.userNKey, to: "late")
        try await confirming.value
        // A publisher-only client proves its permission the same way.
        try await bobRaw.confirmPermission("rooms.late")
        await #expect(throws: ClientError.self) { try await bobRaw.confirmPermission("rooms.elsewhere", timeout: .milliseconds(300)) }
        _ = stream
        await bobRaw.close()
        await alice.close()
        await node.stop()
    }

    actor Box {
        var value: [UInt8]?
        func set(_ value: [UInt8]) { self.value = value }
    }

    @Test func twoAndThreeClientsAndALateJoiner() async throws {
        let node = try await TestNode()
        let alice = try await node.client(node.alice), bob = try await node.client(node.bob), carol = try await node.client(node.carol)
        try await alice.createRoom(id: "ops", subject: "rooms.ops")
        try await alice.addMember(node.bob.userNKey, to: "ops")
        let aliceInbox = Inbox(try await alice.join("ops")), bobInbox = Inbox(try await bob.join("ops"))
        for text in ["one", "two"] { try await alice.publish(Array(text.utf8), to: "ops", contentType: "text/plain") }
        try await bob.publish(Array("from bob".utf8), to: "ops")
        #expect(await bobInbox.wait(for: 3) == ["one", "two", "from bob"])
        #expect(await aliceInbox.wait(for: 3) == ["one", "two", "from bob"])
        let first = try #require(await bobInbox.frames.first)
        #expect(first.sender == node.alice.userNKey && first.protection == .encrypted && first.contentType == "text/plain")

        // Carol joins late: she reads from her shares' indices on, from both senders.
        try await alice.addMember(node.carol.userNKey, to: "ops")
        let carolInbox = Inbox(try await carol.join("ops"))
        #expect(try await carol.myRooms().map(\.id) == ["ops"])
        try await alice.publish(Array("three".utf8), to: "ops")
        // Bob shares his session with Carol when the node announces her.
        #expect(await eventually { await bob.deliveredCount >= 4 })
        // Wait for Bob to have learned Carol's membership (not for a fixed time).
        let carolKey = node.carol.userNKey
        #expect(await eventually { await bob.handle(of: carolKey) != nil })
        try await bob.publish(Array("bob again".utf8), to: "ops")
        #expect(await carolInbox.wait(for: 2) == ["three", "bob again"])
        #expect(await bobInbox.wait(for: 5) == ["one", "two", "from bob", "three", "bob again"])
        let carolRejections = await carol.rejections
        #expect(carolRejections.isEmpty, "\(carolRejections)")
        for client in [alice, bob, carol] { await client.close() }
        await node.stop()
    }

    @Test func removalRotatesAndTheRemovedMemberCannotDecrypt() async throws {
        let node = try await TestNode()
        let (alice, bob, carol) = try await node.roomOfThree()
        let bobInbox = Inbox(try await bob.join("ops")), carolInbox = Inbox(try await carol.join("ops"))
        _ = try await alice.join("ops")
        let (tap, frames) = try await raw(node, as: node.bob, subject: "rooms.ops")
        try await alice.publish(Array("before".utf8), to: "ops")
        #expect(await carolInbox.wait(for: 1) == ["before"])
        let before = try #require(await next(frames))

        try await alice.removeMember(node.carol.userNKey, from: "ops")
        try await alice.publish(Array("after".utf8), to: "ops")
        let after = try #require(await next(frames))
        #expect(await bobInbox.wait(for: 2) == ["before", "after"])
        // A new session, never shared with Carol.
        let oldSession = try FrameEnvelope(decoding: before), newSession = try FrameEnvelope(decoding: after)
        guard case .megolm(let oldID, _) = oldSession.body, case .megolm(let newID, _) = newSession.body else {
            Issue.record("not Megolm frames")
            return
        }
        #expect(oldID != newID)
        let carolShares = try node.store.pendingKeyShares(for: node.carol.userNKey)
        #expect(!carolShares.contains { $0.sessionID == Base64.encode(newID) })
        // Even handed the frame, Carol's client does not deliver it.
        if case .success = await carol.receive(after, room: "ops") { Issue.record("the removed member decrypted a later frame") }
        #expect(await carolInbox.count == 1)
        await tap.close()
        for client in [alice, bob, carol] { await client.close() }
        await node.stop()
    }

    @Test func replayedAndTamperedFramesAreRejectedWithReasons() async throws {
        let node = try await TestNode()
        let alice = try await node.client(node.alice), bob = try await node.client(node.bob)
        try await alice.createRoom(id: "ops", subject: "rooms.ops")
        try await alice.addMember(node.bob.userNKey, to: "ops")
        let bobInbox = Inbox(try await bob.join("ops"))
        _ = try await alice.join("ops")
        // Bob's second connection captures Alice's frame and injects copies.
        let (tap, frames) = try await raw(node, as: node.bob, subject: "rooms.ops")
        try await alice.publish(Array("genuine".utf8), to: "ops")
        let frame = try #require(await next(frames))
        try tap.publish("rooms.ops", payload: frame)
        // A fresh frame (a replayed index is refused before its signature is checked).
        var tampered = try await alice.seal(Array("forged".utf8), for: "ops")
        tampered[tampered.count - 100] ^= 0x40
        try tap.publish("rooms.ops", payload: tampered)
        try tap.publish("rooms.ops", payload: Array("plain text into an encrypted room".utf8))
        try await tap.flush()
        #expect(await eventually { await bob.rejections.values.reduce(0, +) >= 3 })
        let rejections = await bob.rejections
        #expect(rejections == [.replay: 1, .badSignature: 1, .malformed: 1], "\(rejections)")
        #expect(await bobInbox.texts == ["genuine"])
        await tap.close()
        await alice.close()
        await bob.close()
        await node.stop()
    }

    @Test func reconnectsAfterANodeRestartWithItsSubscriptions() async throws {
        let node = try await TestNode()
        // Alice backs off far longer than Bob (Bob's backoff can reach about
        // 1.1 s under load, with jitter), so Bob has resubscribed by the time
        // her buffered message goes out (NATS delivers to current subscribers only).
        let alice = try await node.client(node.alice) { $0.minimumBackoff = .seconds(2) }
        let bob = try await node.client(node.bob)
        try await alice.createRoom(id: "ops", subject: "rooms.ops")
        try await alice.addMember(node.bob.userNKey, to: "ops")
        let bobInbox = Inbox(try await bob.join("ops"))
        _ = try await alice.join("ops")
        try await alice.publish(Array("before".utf8), to: "ops")
        #expect(await bobInbox.wait(for: 1) == ["before"])

        try await node.restart {
            #expect(await eventually { !alice.connection.isConnected })
            // Published while the node is down: buffered, then sent in order.
            try await alice.publish(Array("during".utf8), to: "ops")
        }
        #expect(await eventually(10) { bob.connection.isConnected })
        #expect(!alice.connection.isConnected, "the test needs Bob back before Alice")
        #expect(await eventually(10) { alice.connection.isConnected })
        try await alice.publish(Array("after".utf8), to: "ops")
        let texts = await bobInbox.wait(for: 3, seconds: 10)
        let bobRejections = await bob.rejections
        #expect(texts == ["before", "during", "after"], "\(texts); bob rejected \(bobRejections)")
        #expect(alice.connection.reconnectCount == 1 && bob.connection.reconnectCount == 1)
        await alice.close()
        await bob.close()
        await node.stop()
    }

    @Test func publishesBeyondTheReconnectBufferFailClearly() async throws {
        let node = try await TestNode()
        let alice = try await node.client(node.alice) { $0.maxBufferedMessages = 2 }
        try await alice.createRoom(id: "ops", subject: "rooms.ops")
        _ = try await alice.join("ops")
        try await alice.publish([1], to: "ops")
        await node.stop()
        #expect(await eventually { !alice.connection.isConnected })
        try await alice.publish([2], to: "ops")
        try await alice.publish([3], to: "ops")
        do {
            try await alice.publish([4], to: "ops")
            Issue.record("a publish beyond the buffer was accepted")
        } catch ClientError.publishBufferFull(let messages, _) {
            #expect(messages == 2)
        }
        await alice.close()
    }

    @Test func signedCompressedAndRefusedRooms() async throws {
        let node = try await TestNode()
        let alice = try await node.client(node.alice), bob = try await node.client(node.bob)
        try await alice.createRoom(id: "signed", subject: "rooms.signed", policy: RoomPolicy(encrypt: false, sign: true))
        try await alice.createRoom(id: "zipped", subject: "rooms.zipped", policy: RoomPolicy(compress: true))
        for room in ["signed", "zipped"] { try await alice.addMember(node.bob.userNKey, to: room) }
        let signed = Inbox(try await bob.join("signed")), zipped = Inbox(try await bob.join("zipped"))
        _ = try await alice.join("signed")
        _ = try await alice.join("zipped")
        try await alice.publish(Array("visible but signed".utf8), to: "signed")
        let big = String(repeating: "compressible ", count: 4000)
        try await alice.publish(Array(big.utf8), to: "zipped")
        #expect(await signed.wait(for: 1) == ["visible but signed"])
        #expect(await signed.frames.first?.protection == .signed)
        #expect(await zipped.wait(for: 1) == [big])

        let strict = try await TestNode(allowsUnencryptedRooms: false)
        let remote = try await strict.client(strict.alice)
        await #expect(throws: ClientError.self) {
            try await remote.createRoom(id: "plain", subject: "rooms.plain", policy: RoomPolicy(encrypt: false, sign: false))
        }
        do {
            try await remote.createRoom(id: "plain", subject: "rooms.plain", policy: RoomPolicy(encrypt: false, sign: true))
            Issue.record("an unencrypted room was created although the cluster does not allow them")
        } catch {
            #expect("\(error)".contains("does not allow unencrypted rooms"), "\(error)")
        }
        // Outsiders cannot join.
        let carol = try await node.client(node.carol)
        await #expect(throws: ClientError.notAMember("signed")) { _ = try await carol.join("signed") }
        for client in [alice, bob, carol, remote] { await client.close() }
        await node.stop()
        await strict.stop()
    }

    @Test func unknownIdentitiesAreRefusedByName() async throws {
        let node = try await TestNode()
        await #expect(throws: ClientError.self) { _ = try await node.client(Identity()) }
        do {
            _ = try await node.client(Identity())
        } catch {
            #expect("\(error)".contains("refused this identity"), "\(error)")
        }
        await node.stop()
    }
}
