import Foundation
import Testing
import UnibusBroker
import UnibusCrypto
import UnibusMembership
import UnibusMembershipStore
import UnibusPersistence
import UnibusTestSupport
@testable import UnibusNode

private func addUser(_ user: Identity, handle: String, role: UserRole = .member) -> MembershipOperation {
    .addUser(key: user.userNKey, exchangeKey: Base64.encode(user.keyExchange.publicKey.bytes), handle: handle, role: role)
}

/// Membership drives the broker: authentication from the node's own store,
/// permissions derived from rooms, changes applied to open connections.
@Suite("Node: membership-driven broker", .serialized)
struct NodeTests {
    let admin = Identity()
    let alice = Identity()
    let bob = Identity()

    private func makeNode() async throws -> (Node, Int) {
        let store = try MembershipStore(directory: NSTemporaryDirectory() + "unibus-node-\(UUID().uuidString)")
        try store.append(store.signed(addUser(admin, handle: "root", role: .admin), by: admin))
        try store.append(store.signed(addUser(alice, handle: "alice"), by: admin))
        try store.append(store.signed(addUser(bob, handle: "bob"), by: admin))
        try store.append(store.signed(.createRoom(id: "ops", subject: "rooms.ops", policy: RoomPolicy()), by: admin))
        try store.append(store.signed(.createRoom(id: "hr", subject: "rooms.hr", policy: RoomPolicy()), by: admin))
        try store.append(store.signed(.addMember(room: "ops", user: alice.userNKey, role: .member), by: admin))
        var configuration = BrokerConfiguration()
        configuration.port = 0
        configuration.authorizer = Node.authorizer(for: store)
        let broker = Broker(configuration: configuration)
        let port = try await broker.start()
        return (Node(broker: broker, membership: store), port)
    }

    private func login(_ identity: Identity, port: Int) throws -> RawClient {
        let client = try RawClient(port: port)
        try client.authenticate(as: identity)
        return client
    }

    @Test func permissionsFollowRooms() throws {
        var state = MembershipState()
        try state.apply(.sign(addUser(admin, handle: "root", role: .admin), by: admin))
        try state.apply(.sign(addUser(alice, handle: "alice"), by: admin))
        try state.apply(.sign(.createRoom(id: "ops", subject: "rooms.ops", policy: RoomPolicy()), by: admin))
        try state.apply(.sign(.addMember(room: "ops", user: alice.userNKey, role: .member), by: admin))
        let permissions = try #require(MembershipAuthorizer.permissions(for: alice.userNKey, in: state))
        #expect(permissions.publish.permits(subject: "rooms.ops"))
        #expect(permissions.publish.permits(subject: "rooms.ops.events"))
        #expect(!permissions.publish.permits(subject: "rooms.hr"))
        #expect(permissions.subscribe.permits(filter: "_INBOX.\(alice.userNKey).>"))
        #expect(!permissions.subscribe.permits(filter: "_INBOX.>"), "other users' inboxes stay private")
        #expect(permissions.subscribe.permits(filter: "unibus.keys.\(alice.userNKey)"))
        #expect(!permissions.subscribe.permits(filter: "unibus.keys.\(admin.userNKey)"))
        #expect(MembershipAuthorizer.permissions(for: Identity().userNKey, in: state) == nil)
        try state.apply(.sign(.revokeUser(key: alice.userNKey), by: admin))
        #expect(MembershipAuthorizer.permissions(for: alice.userNKey, in: state) == nil)
    }

    @Test func unknownKeysAreRefusedMembersUseTheirRoomsOnly() async throws {
        let (node, port) = try await makeNode()
        let stranger = try login(Identity(), port: port)
        #expect(stranger.read(until: "Violation").contains("-ERR 'Authorization Violation'"))

        let client = try login(alice, port: port)
        #expect(client.read(until: "PONG").contains("PONG"))
        client.clear()
        client.send("SUB rooms.ops 1\r\nPUB rooms.ops 2\r\nhi\r\nSUB rooms.hr 2\r\nPUB rooms.hr 1\r\nx\r\nPING\r\n")
        let text = client.read(until: "PONG")
        #expect(text.contains("MSG rooms.ops 1 2\r\nhi\r\n"))
        #expect(text.contains("-ERR 'Permissions Violation for Subscription to \"rooms.hr\"'"))
        #expect(text.contains("-ERR 'Permissions Violation for Publish to \"rooms.hr\"'"))
        await node.broker.shutdown()
    }

    @Test func addMemberTakesEffectWithoutReconnecting() async throws {
        let (node, port) = try await makeNode()
        let client = try login(alice, port: port)
        client.read(until: "PONG")
        try await node.apply(node.membership.signed(.addMember(room: "hr", user: alice.userNKey, role: .member), by: admin))
        client.clear()
        client.send("SUB rooms.hr 7\r\nPUB rooms.hr 2\r\nok\r\nPING\r\n")
        let text = client.read(until: "PONG")
        #expect(text.contains("MSG rooms.hr 7 2\r\nok\r\n"), "\(text)")
        #expect(!text.contains("-ERR"))

        // Removal takes the subscription away, again without reconnecting.
        try await node.apply(node.membership.signed(.removeMember(room: "hr", user: alice.userNKey), by: admin))
        client.clear()
        client.send("PUB rooms.hr 1\r\nx\r\nPING\r\n")
        #expect(client.read(until: "PONG").contains("Permissions Violation for Publish to \"rooms.hr\""))
        await node.broker.shutdown()
    }

    @Test func revocationClosesTheUsersConnectionsAtOnce() async throws {
        let (node, port) = try await makeNode()
        let first = try login(bob, port: port)
        let second = try login(bob, port: port)
        first.read(until: "PONG")
        second.read(until: "PONG")
        try await node.apply(node.membership.signed(.revokeUser(key: bob.userNKey), by: admin))
        // Closed by the node itself, with no traffic from the clients: each read
        // is bounded (a wall-clock target belongs in a benchmark, not a test).
        #expect(first.read(until: "Violation", timeout: 2).contains("Authorization Violation"))
        #expect(second.read(until: "Violation", timeout: 2).contains("Authorization Violation"))
        let again = try login(bob, port: port)
        #expect(again.read(until: "Violation").contains("-ERR 'Authorization Violation'"))
        await node.broker.shutdown()
    }
}

/// The anti-entropy answer guard: once per link, and again on a link that
/// replaced the peer's previous one (a preferred duplicate) with no close
/// for the peer in between.
@Suite("Replication answers once per link")
struct OncePerLinkTests {
    @Test func aReplacedLinkIsAnsweredAgain() {
        var answered = OncePerLink()
        // Claimed outside #expect (the macro cannot take a mutating call).
        func claim(_ peer: String, _ link: UInt64) -> Bool { answered.claim(peer: peer, link: link) }
        #expect(claim("NB", 1))
        #expect(!claim("NB", 1), "a repeat on the same link is refused")
        #expect(claim("NC", 2), "peers are independent")
        #expect(claim("NB", 3), "the duplicate that replaced link 1 is answered")
        #expect(!claim("NB", 3))
        answered.forget(peer: "NB")
        #expect(claim("NB", 3), "after the peer's links closed, it is answered again")
        #expect(!claim("NC", 2))
    }
}

struct PeerInventoryTests {
    private static func part(_ stream: UInt8, _ ranges: [ClosedRange<UInt64>]) -> FrameReplication.StreamRanges {
        FrameReplication.StreamRanges(sender: [1], stream: [stream], ranges: ranges)
    }

    @Test func partsAreCollectedUntilTheLastAndAnsweredOncePerRoom() throws {
        var inventory = PeerInventory(link: 7)
        // Taken outside #expect (the macro cannot take a mutating call).
        func take(_ room: String, _ horizon: UInt64, _ streams: [FrameReplication.StreamRanges], last: Bool)
            -> (horizon: UInt64, held: PeerInventory.Held)? {
            inventory.take(room: room, horizon: horizon, streams: streams, last: last)
        }
        #expect(take("log", 100, [Self.part(1, [0...4])], last: false) == nil)
        #expect(take("ops", 5, [Self.part(9, [0...0])], last: false) == nil)
        let whole = try #require(take("log", 200, [Self.part(1, [5...9]), Self.part(2, [3...3])], last: true))
        #expect(whole.horizon == 100, "the first part's horizon")
        #expect(whole.held[[1, 1]]?.ranges == [0...9], "one stream's parts merge")
        #expect(whole.held[[1, 2]]?.ranges == [3...3])
        #expect(whole.held.count == 2, "another room's parts stay apart")
        #expect(take("log", 100, [], last: true) == nil, "a room is answered once per link")
        #expect(take("ops", 5, [], last: true)?.held.count == 1)
    }

    @Test func aRoomPastABoundIsRefusedOnThatLink() {
        var inventory = PeerInventory(link: 1)
        let many = (0..<UInt64(PeerInventory.maximumRanges + 1)).map { ($0 * 2)...($0 * 2) }
        let overflowing = inventory.take(room: "log", horizon: 0, streams: [Self.part(1, many)], last: true)
        #expect(overflowing == nil)
        // The rest of its inventory on this link is ignored: answering what
        // follows alone would look like a peer that holds almost nothing.
        let rest = inventory.take(room: "log", horizon: 0, streams: [Self.part(1, [0...0])], last: true)
        #expect(rest == nil)
        // A new link asks again.
        var next = PeerInventory(link: 2)
        let again = next.take(room: "log", horizon: 0, streams: [Self.part(1, [0...0])], last: true)
        #expect(again?.held.count == 1)
    }

    @Test func roomsCollectedAtOnceAreBounded() {
        var inventory = PeerInventory(link: 1)
        for index in 0..<PeerInventory.maximumRooms {
            _ = inventory.take(room: "room-\(index)", horizon: 0, streams: [Self.part(1, [0...0])], last: false)
        }
        let oneTooMany = inventory.take(room: "extra", horizon: 0, streams: [Self.part(1, [0...0])], last: true)
        #expect(oneTooMany == nil, "a room past the bound is refused")
        let collecting = inventory.take(room: "room-0", horizon: 0, streams: [Self.part(2, [0...0])], last: true)
        #expect(collecting?.held.count == 2, "rooms already being collected go on")
        let roomAfter = inventory.take(room: "after", horizon: 0, streams: [], last: true)
        #expect(roomAfter != nil, "a finished room makes room for another")
    }
}
