import Foundation
import NIOCore
import NIOPosix
import UnibusBroker
import UnibusClient
import UnibusControl
import UnibusControlClient
import UnibusCrypto
import UnibusMembership
import UnibusMembershipStore
import UnibusNode
import UnibusTestSupport

func addUserOperation(_ user: Identity, handle: String, role: UserRole = .member) -> MembershipOperation {
    .addUser(key: user.userNKey, exchangeKey: Base64.encode(user.keyExchange.publicKey.bytes), handle: handle, role: role)
}

/// An in-process node (broker + membership + control plane on loopback)
/// with an admin and a few users, that can be restarted on the same ports.
final class TestNode: @unchecked Sendable {
    let admin = Identity()
    let alice = Identity()
    let bob = Identity()
    let carol = Identity()
    let store: MembershipStore
    /// Frames of persisted rooms, in the same data directory.
    let frames: FrameStore
    private(set) var broker: Broker
    private(set) var control: Channel
    private(set) var node: Node
    let port: Int
    let controlPort: Int

    var dataURL: String { "nats://127.0.0.1:\(port)" }
    var controlURL: String { "http://127.0.0.1:\(controlPort)" }

    init(allowsUnencryptedRooms: Bool = true) async throws {
        let directory = NSTemporaryDirectory() + "unibus-client-\(UUID().uuidString)"
        store = try MembershipStore(directory: directory)
        frames = try FrameStore(directory: directory)
        try store.append(store.signed(addUserOperation(admin, handle: "root", role: .admin), by: admin))
        for (user, handle) in [(alice, "alice"), (bob, "bob"), (carol, "carol")] {
            try store.append(store.signed(addUserOperation(user, handle: handle), by: admin))
        }
        if allowsUnencryptedRooms {
            // A cluster-wide, admin-signed setting in the log (off by default).
            try store.append(store.signed(.setClusterSettings(settings: ClusterSettings(allowUnencryptedRooms: true, maxRoomsPerUser: 100)), by: admin))
        }
        // Ports below the kernel's ephemeral range (not port 0): `restart`
        // binds them again, and while the node is down the clients' redials
        // could otherwise be given one of them as their own local port.
        (broker, node, control) = try await Self.start(store: store, frames: frames, port: freeLoopbackPort(), controlPort: freeLoopbackPort())
        port = broker.port ?? 0
        controlPort = control.localAddress?.port ?? 0
    }

    private static func start(store: MembershipStore, frames: FrameStore, port: Int, controlPort: Int) async throws -> (Broker, Node, Channel) {
        var configuration = BrokerConfiguration()
        configuration.host = "127.0.0.1"
        configuration.port = port
        configuration.threads = 1
        configuration.authorizer = Node.authorizer(for: store)
        let broker = Broker(configuration: configuration)
        try await broker.start()
        let node = Node(broker: broker, membership: store, frames: frames)
        let control = try await ControlServer(plane: ControlPlane(node: node), group: broker.group, tls: nil)
            .start(host: "127.0.0.1", port: controlPort)
        return (broker, node, control)
    }

    func client(_ identity: Identity, configure: (inout UnibusClient.Configuration) -> Void = { _ in }) async throws -> UnibusClient {
        var configuration = UnibusClient.Configuration(identity: identity, dataPlane: [dataURL], controlPlane: [controlURL], root: admin.userNKey)
        configure(&configuration)
        return try await UnibusClient.connect(configuration)
    }

    /// Stops the node (clients see their connections drop) and, after
    /// `downFor`, starts it again on the same ports with the same store.
    func restart(downFor: Duration = .milliseconds(300), whileDown: () async throws -> Void = {}) async throws {
        try? await control.close()
        await broker.shutdown()
        try await Task.sleep(for: downFor)
        try await whileDown()
        (broker, node, control) = try await Self.start(store: store, frames: frames, port: port, controlPort: controlPort)
    }

    func stop() async {
        try? await control.close()
        await broker.shutdown()
    }
}

extension TestNode {
    /// Alice, Bob and Carol connected, in the encrypted room "ops"
    /// (rooms.ops) that Alice owns.
    func roomOfThree() async throws -> (alice: UnibusClient, bob: UnibusClient, carol: UnibusClient) {
        let alice = try await client(self.alice), bob = try await client(self.bob), carol = try await client(self.carol)
        try await alice.createRoom(id: "ops", subject: "rooms.ops")
        try await alice.addMember(self.bob.userNKey, to: "ops")
        try await alice.addMember(self.carol.userNKey, to: "ops")
        return (alice, bob, carol)
    }
}

/// Collects everything a room delivers, in the background, for polling.
actor Inbox {
    private(set) var frames: [OpenedFrame] = []
    private var task: Task<Void, Never>?

    init(_ messages: RoomMessages) {
        let task = Task { [weak self] in
            for await frame in messages { await self?.append(frame) }
        }
        Task { await self.setTask(task) }
    }

    private func setTask(_ task: Task<Void, Never>) { self.task = task }
    private func append(_ frame: OpenedFrame) { frames.append(frame) }
    var texts: [String] { frames.map(text) }
    var count: Int { frames.count }

    /// Waits until `count` frames arrived (or `seconds` passed).
    func wait(for count: Int, seconds: Double = 5) async -> [String] {
        let deadline = Date().addingTimeInterval(seconds)
        while frames.count < count && Date() < deadline { try? await Task.sleep(for: .milliseconds(10)) }
        return texts
    }
}

func text(_ frame: OpenedFrame) -> String { String(decoding: frame.body, as: UTF8.self) }

/// Polls `condition` until it holds or `seconds` pass.
func eventually(_ seconds: Double = 5, _ condition: () async -> Bool) async -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if await condition() { return true }
        try? await Task.sleep(for: .milliseconds(20))
    }
    return await condition()
}
