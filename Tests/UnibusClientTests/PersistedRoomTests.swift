import Foundation
import Testing
import UnibusClient
import UnibusCrypto
import UnibusMembership
import UnibusMembershipStore
import UnibusNode
import UnibusBroker
import UnibusControl
import UnibusPersistence
import UnibusTestSupport
import UnibusWire

/// Persisted rooms through an in-process node: acknowledged publishes,
/// history, what a node refuses to store, and resuming after a reconnect.
@Suite("Persisted rooms", .serialized)
struct PersistedRoomTests {
    static let policy = RoomPolicy(persist: true, retainMessages: 1000)

    @Test func publishesAreAcknowledgedOnceStoredAndHistoryReadsThemBack() async throws {
        let node = try await TestNode()
        let alice = try await node.client(node.alice), bob = try await node.client(node.bob)
        try await alice.createRoom(id: "log", subject: "rooms.log", policy: Self.policy)
        try await alice.addMember(node.bob.userNKey, to: "log")
        let inbox = Inbox(try await bob.join("log"))
        _ = try await alice.join("log")
        for number in 1...5 {
            // `publish` returns only once the node stored the frame.
            try await alice.publish(Array("m\(number)".utf8), to: "log")
            #expect(node.frames.usage(of: "log").count == number)
        }
        #expect(await inbox.wait(for: 5) == ["m1", "m2", "m3", "m4", "m5"])
        #expect(await alice.unacknowledgedCount == 0)

        let last = try await bob.history(room: "log", last: 3)
        #expect(last.messages.map { text($0.frame) } == ["m3", "m4", "m5"])
        #expect(last.unreadable.isEmpty)
        let all = try await bob.history(room: "log", since: Date(timeIntervalSinceNow: -60))
        #expect(all.messages.map { text($0.frame) } == ["m1", "m2", "m3", "m4", "m5"])
        #expect(all.messages.allSatisfy { $0.frame.sender == node.alice.userNKey && $0.frame.protection == .encrypted })

        // A room that is not persisted keeps nothing and says so.
        try await alice.createRoom(id: "live", subject: "rooms.live")
        await #expect(throws: ClientError.self) { _ = try await alice.history(room: "live", last: 1) }
        await alice.close()
        await bob.close()
        await node.stop()
    }

    @Test func theNodeStoresOnlyVerifiedFramesOfMembersOnceEach() async throws {
        let node = try await TestNode()
        let alice = try await node.client(node.alice), bob = try await node.client(node.bob)
        try await alice.createRoom(id: "log", subject: "rooms.log", policy: Self.policy)
        try await alice.addMember(node.bob.userNKey, to: "log")
        _ = try await alice.join("log")
        _ = try await bob.join("log")
        try await alice.publish(Array("first".utf8), to: "log")
        let frame = try await alice.seal(Array("sealed".utf8), for: "log")

        // Raw connections as members, speaking plain NATS.
        let rawAlice = try member(node.alice, port: node.port)
        let rawBob = try member(node.bob, port: node.port)
        // The same frame twice: stored once.
        for _ in 0..<2 { rawAlice.publish("rooms.log", frame) }
        // Bob publishing Alice's frame: refused (the envelope names Alice).
        rawBob.publish("rooms.log", frame)
        // Bob re-wrapping Alice's Megolm message under his own name: stored
        // apart (it cannot make Alice's real frame a duplicate), and never
        // readable as Alice's.
        var rewrapped = frame
        rewrapped.replaceSubrange(4..<36, with: node.bob.signing.publicKey.bytes)
        rawBob.publish("rooms.log", rewrapped)
        // A frame whose Megolm signature does not verify: refused.
        var forged = try await alice.seal(Array("never stored".utf8), for: "log")
        forged[forged.count - 1] ^= 0x01
        rawAlice.publish("rooms.log", forged)
        // A resend of a frame held lately is acknowledged without a second
        // signature check only if its bytes are the stored ones: damaged, it
        // is checked, and refused.
        var resentDamaged = frame
        resentDamaged[resentDamaged.count - 1] ^= 0x01
        rawAlice.publish("rooms.log", resentDamaged)
        // Junk: refused.
        rawAlice.publish("rooms.log", Array("not a frame".utf8))
        #expect(rawAlice.ping() && rawBob.ping())
        await node.node.settlePersistence()

        let statistics = try #require(node.node.persistenceStatistics)
        #expect(node.frames.usage(of: "log").count == 3, "first, sealed, and Bob's re-wrapped copy")
        #expect(statistics.duplicates.load(ordering: .relaxed) == 1)
        #expect(statistics.refused.load(ordering: .relaxed) == 4)
        let history = try await bob.history(room: "log", last: 10)
        #expect(history.messages.map { text($0.frame) } == ["first", "sealed"])
        #expect(history.unreadable == [.unknownSession: 1], "Bob's copy names a session Bob never shared")
        await alice.close()
        await bob.close()
        await node.stop()
    }

    @Test func framesSurviveANodeRestartAndASubscriberResumesWhatItMissed() async throws {
        let node = try await TestNode()
        let alice = try await node.client(node.alice), bob = try await node.client(node.bob)
        try await alice.createRoom(id: "log", subject: "rooms.log", policy: Self.policy)
        try await alice.addMember(node.bob.userNKey, to: "log")
        _ = try await alice.join("log")
        let inbox = Inbox(try await bob.join("log"))
        try await alice.publish(Array("before".utf8), to: "log")
        #expect(await inbox.wait(for: 1) == ["before"])

        // While the node is down, frames reach its store the way a peer's
        // copies do (sealed by Alice, verified, stored): Bob never sees them live.
        let state = node.store.snapshot
        var missed: [FrameStore.Insert] = []
        for number in 1...20 {
            let frame = try await alice.seal(Array("missed \(number)".utf8), for: "log")
            missed.append(FrameStore.Insert(room: "log", frame: try FrameVerifier.verify(frame, room: "log", in: state),
                                            firstStored: UInt64(Date().timeIntervalSince1970 * 1000)))
        }
        try await node.restart { _ = try node.frames.insert(missed) }

        // Bob reconnects, resumes from the store, then takes the live stream: each once, in order.
        #expect(await inbox.wait(for: 21, seconds: 10).count == 21)
        try await alice.publish(Array("after".utf8), to: "log")
        let texts = await inbox.wait(for: 22, seconds: 10)
        #expect(texts == ["before"] + (1...20).map { "missed \($0)" } + ["after"])
        #expect(node.frames.usage(of: "log").count == 22)
        let rejections = await bob.rejections
        #expect(rejections.isEmpty, "\(rejections)")
        await alice.close()
        await bob.close()
        await node.stop()
    }

    @Test func unacknowledgedFramesAreSentAgainAfterAFailover() async throws {
        let node = try await TestNode()
        let alice = try await node.client(node.alice) { $0.acknowledgementTimeout = .seconds(30) }
        let bob = try await node.client(node.bob)
        try await alice.createRoom(id: "log", subject: "rooms.log", policy: Self.policy)
        try await alice.addMember(node.bob.userNKey, to: "log")
        _ = try await alice.join("log")
        let inbox = Inbox(try await bob.join("log"))
        // The session exists and is shared (that needs the control plane).
        try await alice.publish(Array("kept 0".utf8), to: "log")
        // Sent while the node is down: kept, then sent (the same bytes) after the reconnect.
        var ids: [FrameID] = []
        try await node.restart(downFor: .milliseconds(200)) {
            for number in 1...10 {
                if let id = try await alice.send(Array("kept \(number)".utf8), to: "log") { ids.append(id) }
            }
            #expect(await alice.unacknowledgedCount == 10)
        }
        #expect(ids.count == 10)
        try await alice.waitForAllStored(timeout: .seconds(15))
        #expect(node.frames.usage(of: "log").count == 11)
        let texts = await inbox.wait(for: 11, seconds: 10)
        #expect(Set(texts) == Set((0...10).map { "kept \($0)" }) && texts.count == 11, "\(texts)")
        await alice.close()
        await bob.close()
        await node.stop()
    }

    @Test func aRestartedClientReadsHistoryAndResumesWithoutNewShares() async throws {
        let node = try await TestNode()
        let state = NSTemporaryDirectory() + "unibus-state-\(UUID().uuidString)"
        let alice = try await node.client(node.alice)
        var bob = try await node.client(node.bob) { $0.stateDirectory = state }
        try await alice.createRoom(id: "log", subject: "rooms.log", policy: Self.policy)
        try await alice.addMember(node.bob.userNKey, to: "log")
        _ = try await alice.join("log")
        var inbox = Inbox(try await bob.join("log"))
        try await alice.publish(Array("one".utf8), to: "log")
        #expect(await inbox.wait(for: 1) == ["one"])
        await bob.close()

        // While Bob is away: more in the same session (no new share for Bob).
        for number in 2...4 { try await alice.publish(Array("n\(number)".utf8), to: "log") }
        bob = try await node.client(node.bob) { $0.stateDirectory = state }
        // Reads history at once, from the keys its store kept.
        let history = try await bob.history(room: "log", last: 10)
        #expect(history.messages.map { text($0.frame) } == ["one", "n2", "n3", "n4"])
        #expect(history.unreadable.isEmpty, "\(history.unreadable)")
        // Joining again resumes from the stored cursor: what it missed, once, then live.
        inbox = Inbox(try await bob.join("log"))
        #expect(await inbox.wait(for: 3, seconds: 10) == ["n2", "n3", "n4"])
        try await alice.publish(Array("n5".utf8), to: "log")
        #expect(await inbox.wait(for: 4, seconds: 10) == ["n2", "n3", "n4", "n5"])
        await bob.close()

        // The store's values are sealed: another identity cannot open it, and says so.
        var configuration = UnibusClient.Configuration(identity: node.carol, dataPlane: [node.dataURL], controlPlane: [node.controlURL],
                                                       root: node.admin.userNKey)
        configuration.stateDirectory = state
        let keys = try #require(try FileManager.default.contentsOfDirectory(atPath: state).first { $0.hasPrefix("keys-") && $0.hasSuffix(".sqlite3") })
        for suffix in ["", "-wal"] where FileManager.default.fileExists(atPath: state + "/" + keys + suffix) {
            try FileManager.default.copyItem(atPath: state + "/" + keys + suffix, toPath: state + "/keys-\(node.carol.userNKey.prefix(20)).sqlite3" + suffix)
        }
        await #expect(throws: ClientError.self) { _ = try await UnibusClient.connect(configuration) }
        // No session key is readable in the file: each is sealed (the check value is too).
        let raw = (FileManager.default.contents(atPath: state + "/" + keys) ?? Data()) + (FileManager.default.contents(atPath: state + "/" + keys + "-wal") ?? Data())
        #expect(raw.range(of: Data("unibus-client-store".utf8)) == nil)
        await alice.close()
        await node.stop()
    }

    @Test func sharedHistoryReachesLateJoinersJoinedHistoryDoesNot() async throws {
        let node = try await TestNode()
        let alice = try await node.client(node.alice), bob = try await node.client(node.bob), carol = try await node.client(node.carol)
        try await alice.createRoom(id: "shared", subject: "rooms.shared", policy: RoomPolicy(persist: true, rotateAfterMessages: 2, history: .shared))
        try await alice.createRoom(id: "joined", subject: "rooms.joined", policy: RoomPolicy(persist: true, rotateAfterMessages: 2, history: .joined))
        for room in ["shared", "joined"] {
            _ = try await alice.join(room)
            // Five messages over three sessions (rotation after two).
            for number in 1...5 { try await alice.publish(Array("\(room) \(number)".utf8), to: room) }
        }
        // Bob joins both later; in `shared` Alice gives him her retained sessions.
        for room in ["shared", "joined"] { try await alice.addMember(node.bob.userNKey, to: room) }
        let shared = try await eventuallyValue(10) { () -> History? in
            let history = try? await bob.history(room: "shared", last: 10)
            return history?.messages.count == 5 ? history : nil
        }
        #expect(shared?.messages.map { text($0.frame) } == (1...5).map { "shared \($0)" })
        let joined = try await bob.history(room: "joined", last: 10)
        #expect(joined.messages.isEmpty, "nothing from before Bob joined (the node serves none, and he holds no key)")
        try await alice.publish(Array("joined 6".utf8), to: "joined")
        #expect(try await bob.history(room: "joined", last: 10).messages.map { text($0.frame) } == ["joined 6"])

        // A removed member gets nothing sent after the removal, even in `shared`.
        try await alice.addMember(node.carol.userNKey, to: "shared")
        try await alice.removeMember(node.carol.userNKey, from: "shared")
        try await alice.publish(Array("after carol".utf8), to: "shared")
        await #expect(throws: ClientError.self) { _ = try await carol.history(room: "shared", last: 10) }
        #expect(try await bob.history(room: "shared", last: 1).messages.map { text($0.frame) } == ["after carol"])
        await alice.close()
        await bob.close()
        await carol.close()
        await node.stop()
    }

    @Test func theSpoolSurvivesAClientRestart() async throws {
        let node = try await TestNode()
        let state = NSTemporaryDirectory() + "unibus-spool-\(UUID().uuidString)"
        var alice = try await node.client(node.alice) { $0.stateDirectory = state }
        let bob = try await node.client(node.bob)
        try await alice.createRoom(id: "log", subject: "rooms.log", policy: Self.policy)
        try await alice.addMember(node.bob.userNKey, to: "log")
        _ = try await alice.join("log")
        let inbox = Inbox(try await bob.join("log"))
        try await alice.publish(Array("online".utf8), to: "log")
        // Offline: sent into the spool, then the client stops before any node saw them.
        try await node.restart {
            for number in 1...5 { _ = try await alice.send(Array("offline \(number)".utf8), to: "log") }
            #expect(await alice.unacknowledgedCount == 5)
            await alice.close()
        }
        // The next run sends them (the same frames) and they are stored and delivered, once each.
        alice = try await node.client(node.alice) { $0.stateDirectory = state }
        try await alice.waitForAllStored(timeout: .seconds(15))
        #expect(node.frames.usage(of: "log").count == 6)
        let texts = await inbox.wait(for: 6, seconds: 10)
        #expect(texts == ["online"] + (1...5).map { "offline \($0)" }, "\(texts)")
        await alice.close()
        await bob.close()
        await node.stop()
    }

    /// Resending a frame the node holds costs no quota, and gives none back:
    /// alternating a resend with a new frame stores no more than the quota.
    @Test func resendsNeitherChargeNorRefundTheQuota() async throws {
        let directory = NSTemporaryDirectory() + "unibus-quota-\(UUID().uuidString)"
        let admin = Identity(), alice = Identity()
        let store = try MembershipStore(directory: directory)
        let frames = try FrameStore(directory: directory)
        try store.append(store.signed(addUserOperation(admin, handle: "root", role: .admin), by: admin))
        try store.append(store.signed(addUserOperation(alice, handle: "alice"), by: admin))
        var configuration = BrokerConfiguration()
        configuration.host = "127.0.0.1"
        configuration.port = 0
        configuration.threads = 1
        configuration.authorizer = Node.authorizer(for: store)
        let broker = Broker(configuration: configuration)
        try await broker.start()
        var persistence = PersistenceConfiguration()
        persistence.senderMessagesPerWindow = 3
        let node = Node(broker: broker, membership: store, frames: frames, persistence: persistence)
        let control = try await ControlServer(plane: ControlPlane(node: node), group: broker.group, tls: nil).start(host: "127.0.0.1", port: 0)
        let port = broker.port ?? 0
        var options = UnibusClient.Configuration(identity: alice, dataPlane: ["nats://127.0.0.1:\(port)"],
                                                 controlPlane: ["http://127.0.0.1:\(control.localAddress?.port ?? 0)"], root: admin.userNKey)
        options.acknowledgementTimeout = .seconds(600)
        let client = try await UnibusClient.connect(options)
        try await client.createRoom(id: "q", subject: "rooms.q", policy: Self.policy)
        _ = try await client.join("q")
        try await client.publish(Array("first".utf8), to: "q")
        var sealed: [[UInt8]] = []
        for number in 0..<8 { sealed.append(try await client.seal(Array("m\(number)".utf8), for: "q")) }
        let raw = try member(alice, port: port)
        for frame in sealed.prefix(3) { raw.publish("rooms.q", frame) }   // the third is over the quota
        #expect(raw.ping())
        await node.settlePersistence()
        #expect(frames.usage(of: "q").count == 3)
        for cycle in 0..<4 {
            raw.publish("rooms.q", sealed[0])            // held already: acknowledged, not charged
            raw.publish("rooms.q", sealed[3 + cycle])    // new: over the quota
            #expect(raw.ping())
            await node.settlePersistence()
        }
        #expect(frames.usage(of: "q").count == 3, "the quota held")
        await client.close()
        try? await control.close()
        await broker.shutdown()
    }

    /// A room with a short frame window: frames that wait a moment for a
    /// node are not given up (the margin scales with the window), and
    /// `waitForAllStored` succeeds only when all were stored.
    @Test func aShortWindowRoomKeepsFramesThatWaitAMoment() async throws {
        let node = try await TestNode()
        let alice = try await node.client(node.alice)
        try await alice.createRoom(id: "fast", subject: "rooms.fast", policy: RoomPolicy(persist: true, frameWindowSeconds: 10, retainMessages: 10_000))
        _ = try await alice.join("fast")
        for number in 1...5 { try await alice.publish(Array("n\(number)".utf8), to: "fast") }
        try await node.restart(downFor: .milliseconds(700)) {
            for number in 1...5 { _ = try await alice.send(Array("offline \(number)".utf8), to: "fast") }
        }
        try await alice.waitForAllStored(timeout: .seconds(15))
        await node.node.settlePersistence()
        #expect(await alice.refusedFrameCount == 0)
        #expect(node.frames.usage(of: "fast").count == 10)
        await alice.close()
        await node.stop()
    }

    @Test func historyPagesNewestFirstAndFromATime() async throws {
        let node = try await TestNode()
        let alice = try await node.client(node.alice)
        try await alice.createRoom(id: "long", subject: "rooms.long", policy: RoomPolicy(persist: true, rotateAfterMessages: 10_000))
        _ = try await alice.join("long")
        let started = Date()
        for number in 0..<2_300 { _ = try await alice.send(Array("h\(number)".utf8), to: "long") }
        try await alice.waitForAllStored(timeout: .seconds(60))
        // More than two pages of 1,000, both ways.
        let last = try await alice.history(room: "long", last: 2_100)
        #expect(last.messages.count == 2_100)
        #expect(last.messages.first.map { text($0.frame) } == "h200" && last.messages.last.map { text($0.frame) } == "h2299")
        #expect(zip(last.messages, last.messages.dropFirst()).allSatisfy { $0.frame.timestamp <= $1.frame.timestamp })
        let all = try await alice.history(room: "long", since: started.addingTimeInterval(-1))
        #expect(all.messages.map { text($0.frame) } == (0..<2_300).map { "h\($0)" })
        await alice.close()
        await node.stop()
    }

    @Test func retentionKeepsTheNewestFramesByCount() async throws {
        let node = try await TestNode()
        let alice = try await node.client(node.alice)
        try await alice.createRoom(id: "log", subject: "rooms.log", policy: RoomPolicy(persist: true, retainMessages: 5))
        _ = try await alice.join("log")
        for number in 1...12 { _ = try await alice.send(Array("n\(number)".utf8), to: "log") }
        try await alice.waitForAllStored()
        await node.node.settlePersistence()
        #expect(node.frames.usage(of: "log").count == 5)
        let history = try await alice.history(room: "log", last: 100)
        #expect(history.messages.map { text($0.frame) } == (8...12).map { "n\($0)" })
        await alice.close()
        await node.stop()
    }
}

/// A raw NATS connection authenticated as `identity`.
private func member(_ identity: Identity, port: Int) throws -> RawClient {
    let client = try RawClient(port: port)
    try client.authenticate(as: identity)
    _ = client.read(until: "PONG")
    return client
}

/// Polls `produce` until it returns a value or `seconds` pass.
private func eventuallyValue<T>(_ seconds: Double, _ produce: () async throws -> T?) async throws -> T? {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if let value = try await produce() { return value }
        try await Task.sleep(for: .milliseconds(50))
    }
    return try await produce()
}
