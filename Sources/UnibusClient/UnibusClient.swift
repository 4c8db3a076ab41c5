import Foundation
import NIOCore
import UnibusControl
import UnibusCrypto
import UnibusMembership
import UnibusNode
import UnibusWire

/// A peer on the bus: one identity, a data-plane connection that fails over
/// across its seeds, a control-plane session, and the end-to-end encrypted
/// rooms it has joined.
///
/// ```swift
/// let client = try await UnibusClient.connect(.init(identity: me, dataPlane: ["nats://127.0.0.1:4222"],
///                                                   controlPlane: ["http://127.0.0.1:4280"]))
/// let room = try await client.join("ops")
/// try await client.publish(Array("hello".utf8), to: "ops")
/// for try await message in room { print(message.sender, message.body) }
/// ```
///
/// Every frame is sealed by policy (Megolm for encrypted rooms) and every
/// received frame is authenticated, replay-checked and time-checked before
/// it is delivered; rejected frames are counted by reason (`rejections`).
public actor UnibusClient {
    public struct Configuration: Sendable {
        public var identity: Identity
        /// Data-plane seeds: `nats://HOST:PORT` or `tls://HOST:PORT`.
        public var dataPlane: [String]
        /// Control-plane seeds: `https://HOST:PORT` (or `http://127.0.0.1:PORT`).
        public var controlPlane: [String]
        /// The CA both planes' certificates must chain to (pinned).
        public var caPath: String?
        /// A client certificate for nodes that require one (`unibusd run --tls-client-ca`).
        public var clientCertificate: ClientCertificate?
        public var maxBufferedMessages = 10_000
        public var maxBufferedBytes = 8 * 1024 * 1024
        public var name = "unibus-swift"
        /// First pause after a full round of the seed list failed (doubles up to 2 s, plus jitter).
        public var minimumBackoff: TimeAmount = .milliseconds(50)

        public init(identity: Identity, dataPlane: [String], controlPlane: [String], caPath: String? = nil) {
            self.identity = identity
            self.dataPlane = dataPlane
            self.controlPlane = controlPlane
            self.caPath = caPath
        }
    }

    /// A user as the client needs it: handle and the key shares are sealed to.
    struct Peer {
        let handle: String
        let exchangeKey: X25519PublicKey?
        let active: Bool
    }

    public nonisolated let configuration: Configuration
    public nonisolated let connection: NATSConnection
    public nonisolated let userNKey: String
    private let keyring: RoomKeyring
    private var control: ControlSession?
    private var peers: [String: Peer] = [:]
    private var counts: [FrameRejection: Int] = [:]
    private var delivered = 0
    private var keyFetch: Task<Void, Never>?
    private var noticeTask: Task<Void, Never>?
    private var closed = false
    /// Unknown sessions a share fetch was already tried for (bounded).
    private var fetchedFor: Set<[UInt8]> = []

    private init(configuration: Configuration, connection: NATSConnection) {
        self.configuration = configuration
        self.connection = connection
        self.userNKey = configuration.identity.userNKey
        self.keyring = RoomKeyring(identity: configuration.identity)
    }

    /// Connects both planes and starts listening for key shares and
    /// membership notices.
    public static func connect(_ configuration: Configuration) async throws -> UnibusClient {
        guard !configuration.controlPlane.isEmpty else { throw ClientError.noSeeds }
        var seeds: [Endpoint] = []
        for url in configuration.dataPlane { seeds.append(try Endpoint(parsing: url)) }
        var options = NATSConnection.Options(seeds: seeds, identity: configuration.identity, caPath: configuration.caPath)
        options.maxBufferedBytes = configuration.maxBufferedBytes
        options.maxBufferedMessages = configuration.maxBufferedMessages
        options.name = configuration.name
        options.minimumBackoff = configuration.minimumBackoff
        options.clientCertificate = configuration.clientCertificate
        let connection = try NATSConnection(options: options)
        try await connection.connect()
        let client = UnibusClient(configuration: configuration, connection: connection)
        do {
            try await client.start()
        } catch {
            await connection.close()
            throw error
        }
        return client
    }

    private func start() async throws {
        _ = try await controlSession()
        let notices = try connection.subscribe(ReservedNamespace.keyDeliverySubject(for: userNKey))
        noticeTask = Task { [weak self] in
            for await notice in notices {
                await self?.handleNotice(notice.payload)
            }
        }
        try await connection.flush()
        await fetchKeyShares()
    }

    /// Closes the data-plane connection; subscriptions end. Returns when
    /// every task of the client has finished (none outlives it).
    public func close() async {
        closed = true
        noticeTask?.cancel()
        keyFetch?.cancel()
        await connection.close()
        await noticeTask?.value
        await keyFetch?.value
    }

    // MARK: control plane

    /// The control session, (re)opened on the first reachable seed.
    private func controlSession(refresh: Bool = false) async throws -> ControlSession {
        if let control, !refresh { return control }
        var failures: [String] = []
        for url in configuration.controlPlane {
            do {
                let session = try await ControlSession.open(url: url, caPath: configuration.caPath, identity: configuration.identity,
                                                            clientCertificate: configuration.clientCertificate)
                control = session
                return session
            } catch {
                failures.append("\(url): \(error)")
            }
        }
        throw ClientError.controlPlane("no control plane reachable: \(failures.joined(separator: "; "))")
    }

    /// A signed control-plane call, retried once on another seed when the
    /// node is unreachable (not when it answered with an error).
    private func call(_ method: String, _ path: String, json: Any? = nil) async throws -> [String: Any] {
        guard !closed else { throw ClientError.closed }
        let body = try json.map { [UInt8](try JSONSerialization.data(withJSONObject: $0)) } ?? []
        for attempt in 0..<2 {
            let session = try await controlSession(refresh: attempt > 0)
            let response: ControlClient.Response
            do {
                response = try await session.client.request(method, path, body: body, identity: session.identity, nodeID: session.nodeID)
            } catch {
                if attempt == 0 { continue }
                throw ClientError.controlPlane("\(method) \(path): \(error)")
            }
            guard (200..<300).contains(response.status) else {
                throw ClientError.controlPlane("\(method) \(path): \(response.status) \(response.errorText)")
            }
            return response.json ?? [:]
        }
        throw ClientError.controlPlane("\(method) \(path): unreachable")
    }

    private func submit(_ operation: MembershipOperation) async throws {
        let signed = SignedOperation.sign(operation, by: configuration.identity)
        _ = try await call("POST", "/v1/operations", json: ["bytes": Base64.encode(signed.bytes), "signature": Base64.encode(signed.signature)])
    }

    // MARK: rooms

    /// Creates a room owned by this identity. Unencrypted rooms are refused
    /// by nodes that do not allow them.
    @discardableResult
    public func createRoom(id: String, subject: String, policy: RoomPolicy = RoomPolicy()) async throws -> RoomInfo {
        try await submit(.createRoom(id: id, subject: subject, policy: policy))
        return RoomInfo(id: id, subject: subject, owner: userNKey, policy: policy)
    }

    /// Adds `user` (a U… nkey) to `room`; the room's owner or an admin only.
    /// Joined members of the room share their current session keys with the
    /// newcomer when the node announces the change.
    public func addMember(_ user: String, to room: String, role: RoomRole = .member) async throws {
        try await submit(.addMember(room: room, user: user, role: role))
        if keyring.rooms[room] != nil { try await refreshRoom(room) }
    }

    /// Removes `user` from `room`. This client's session in the room rotates
    /// before its next message; other members rotate when told.
    public func removeMember(_ user: String, from room: String) async throws {
        try await submit(.removeMember(room: room, user: user))
        if keyring.rooms[room] != nil { try await refreshRoom(room) }
    }

    /// Leaves `room` (removes this identity from it).
    public func leave(_ room: String) async throws {
        try await submit(.removeMember(room: room, user: userNKey))
        keyring.forgetRoom(room)
    }

    /// Archives `room` (owner or admin): no one can use it afterwards.
    public func archiveRoom(_ room: String) async throws {
        try await submit(.archiveRoom(id: room))
        keyring.forgetRoom(room)
    }

    /// The open rooms this identity is a member of.
    public func myRooms() async throws -> [RoomInfo] {
        let json = try await call("GET", "/v1/me/rooms")
        return (json["rooms"] as? [[String: Any]] ?? []).compactMap(Self.roomInfo)
    }

    /// The members of `room` (user nkeys), for a room this client belongs to.
    public func members(of room: String) async throws -> Set<String> {
        try await refreshRoom(room)
        return keyring.members[room] ?? []
    }

    /// Opens `room` for sending and receiving: loads its policy and members,
    /// subscribes to its subject and fetches waiting key shares. The returned
    /// sequence yields authenticated messages only.
    public func join(_ room: String) async throws -> RoomMessages {
        try await refreshRoom(room)
        guard let info = keyring.rooms[room] else { throw ClientError.notAMember(room) }
        let stream = try connection.subscribe(info.subject)
        try await connection.flush()
        await fetchKeyShares()
        return RoomMessages(client: self, room: room, stream: stream)
    }

    /// Opens `room` for sending only: loads its policy and members without
    /// subscribing to its subject (a publisher that does not read the room).
    public func openForSending(_ room: String) async throws {
        try await refreshRoom(room)
        guard keyring.rooms[room] != nil else { throw ClientError.notAMember(room) }
    }

    /// Reloads a room's policy and members (and shares this client's
    /// session with newcomers, or marks it for rotation after a departure).
    private func refreshRoom(_ room: String) async throws {
        let roomJSON: [String: Any], membersJSON: [String: Any]
        do {
            roomJSON = try await call("GET", "/v1/rooms/\(room)")
            membersJSON = try await call("GET", "/v1/rooms/\(room)/members")
        } catch {
            if "\(error)".contains(" 404 ") { throw ClientError.invalid("no room \(room)") }
            throw error
        }
        guard let info = Self.roomInfo(roomJSON) else { throw ClientError.controlPlane("the node's description of room \(room) is not understood") }
        let members = Set((membersJSON["members"] as? [[String: Any]] ?? []).compactMap { $0["user"] as? String })
        guard members.contains(userNKey), roomJSON["archived"] == nil else {
            keyring.forgetRoom(room)
            throw ClientError.notAMember(room)
        }
        keyring.setRoom(info, members: members)
        if let outbound = keyring.outbound[room], !outbound.mustRotate {
            let newcomers = members.subtracting(outbound.sharedWith).subtracting([userNKey])
            if !newcomers.isEmpty { try await share(outbound, room: room, with: newcomers) }
        }
    }

    static func roomInfo(_ json: [String: Any]) -> RoomInfo? {
        guard let id = json["id"] as? String, let subject = json["subject"] as? String, let owner = json["owner"] as? String,
              let policy = json["policy"] as? [String: Any] else { return nil }
        return RoomInfo(id: id, subject: subject, owner: owner, policy: RoomPolicy(
            encrypt: policy["encrypt"] as? Bool ?? true, sign: policy["sign"] as? Bool ?? true,
            compress: policy["compress"] as? Bool ?? false, persist: false,
            rotateAfterMessages: (policy["rotate_after_messages"] as? NSNumber)?.intValue ?? 1000,
            rotateAfterSeconds: (policy["rotate_after_seconds"] as? NSNumber)?.intValue ?? 7 * 24 * 3600,
            frameWindowSeconds: (policy["frame_window_seconds"] as? NSNumber)?.intValue ?? RoomPolicy.defaultFrameWindowSeconds))
    }

    // MARK: sending

    /// Seals and publishes one message to `room`. In an encrypted room this
    /// first creates and shares a new session when the room's policy asks
    /// for one (first message, a member left, count or age limit). It
    /// throws rather than send anything less protected than the policy.
    public func publish(_ body: [UInt8], to room: String, contentType: String = "application/octet-stream") async throws {
        guard let info = keyring.rooms[room] else { throw ClientError.invalid("room \(room) is not joined; call join(\"\(room)\") first") }
        let now = Self.nowMillis()
        if info.policy.encrypt, keyring.currentOutbound(for: room, now: now) == nil {
            try await refreshRoom(room)
            let fresh = keyring.rotate(room: room, now: now)
            let others = (keyring.members[room] ?? []).subtracting([userNKey])
            if !others.isEmpty { try await share(fresh, room: room, with: others) }
        }
        let frame: [UInt8]
        do { frame = try keyring.seal(room: room, contentType: contentType, body: body, now: Self.nowMillis()) } catch {
            throw ClientError.seal(error)
        }
        try connection.publish(info.subject, payload: frame)
    }

    /// Seals a frame without sending it (tools and tests inspect or replay it).
    public func seal(_ body: [UInt8], for room: String, contentType: String = "application/octet-stream") throws -> [UInt8] {
        do { return try keyring.seal(room: room, contentType: contentType, body: body, now: Self.nowMillis()) } catch {
            throw ClientError.seal(error)
        }
    }

    /// Shares `outbound`'s key with `recipients` through the membership
    /// service. Members whose exchange key is unknown are looked up; a member
    /// without one (revoked) gets nothing.
    private func share(_ outbound: RoomKeyring.Outbound, room: String, with recipients: Set<String>) async throws {
        if recipients.contains(where: { peers[$0] == nil }) { try await refreshPeers() }
        var shares: [[String: String]] = []
        var sharedWith: [String] = []
        for recipient in recipients.sorted() {
            guard let peer = peers[recipient], peer.active, let key = peer.exchangeKey else { continue }
            let (sealed, signature) = keyring.share(outbound, room: room, recipient: recipient, exchangeKey: key)
            shares.append(["recipient": recipient, "sealed": Base64.encode(sealed), "signature": Base64.encode(signature)])
            sharedWith.append(recipient)
        }
        guard !shares.isEmpty else { return }
        _ = try await call("POST", "/v1/rooms/\(room)/key-shares", json: ["session_id": outbound.session.sessionID, "shares": shares])
        outbound.sharedWith.formUnion(sharedWith)
    }

    private func refreshPeers() async throws {
        let json = try await call("GET", "/v1/users")
        var fresh: [String: Peer] = [:]
        for user in json["users"] as? [[String: Any]] ?? [] {
            guard let key = user["key"] as? String else { continue }
            let exchange = (user["exchange_key"] as? String).flatMap { try? Base64.decode($0) }.flatMap(X25519PublicKey.init(bytes:))
            fresh[key] = Peer(handle: user["handle"] as? String ?? "", exchangeKey: exchange, active: user["status"] as? String == "active")
        }
        peers = fresh
    }

    /// A member's handle, if known.
    public func handle(of user: String) -> String? { peers[user]?.handle }

    // MARK: receiving

    /// Opens one frame received on `room`'s subject. An unknown session
    /// first triggers one fetch of waiting key shares, and an unknown sender
    /// one refresh of the member list (both may simply not have arrived yet);
    /// whatever is still refused is counted by reason.
    public func receive(_ frame: [UInt8], room: String) async -> Result<OpenedFrame, FrameRejection> {
        var result = keyring.open(frame, room: room, now: Self.nowMillis())
        if case .failure(let reason) = result, reason == .unknownSession || reason == .nonMember,
           let marker = Self.sessionMarker(frame), fetchedFor.count < 10_000, fetchedFor.insert(marker).inserted {
            if reason == .nonMember { try? await refreshRoom(room) }
            await fetchKeyShares()
            result = keyring.open(frame, room: room, now: Self.nowMillis())
        }
        switch result {
        case .success: delivered += 1
        case .failure(let reason): counts[reason, default: 0] += 1
        }
        return result
    }

    /// The sender and session bytes of a Megolm frame (the sender alone otherwise).
    private static func sessionMarker(_ frame: [UInt8]) -> [UInt8]? {
        guard let envelope = try? FrameEnvelope(decoding: frame) else { return nil }
        if case .megolm(let session, _) = envelope.body { return envelope.sender + session }
        return envelope.sender
    }

    /// Frames refused so far, by reason.
    public var rejections: [FrameRejection: Int] { counts }
    /// Frames delivered so far.
    public var deliveredCount: Int { delivered }

    private func handleNotice(_ payload: [UInt8]) async {
        guard let object = try? JSONSerialization.jsonObject(with: Data(payload)) as? [String: Any] else { return }
        if object["event"] as? String == "members", let room = object["room"] as? String {
            guard keyring.rooms[room] != nil else { return }
            do { try await refreshRoom(room) } catch {
                // Removed from the room (or it was archived): stop using its keys.
                if case ClientError.notAMember = error { keyring.forgetRoom(room) }
            }
            return
        }
        await fetchKeyShares()
    }

    /// Fetches, opens and acknowledges waiting key shares; concurrent callers
    /// wait for the one fetch in flight.
    private func fetchKeyShares() async {
        if let keyFetch { return await keyFetch.value }
        let task = Task { await self.fetchKeySharesNow() }
        keyFetch = task
        await task.value
        keyFetch = nil
    }

    private func fetchKeySharesNow() async {
        // The node pages its answer; follow `next` to the end (bounded, so a
        // node that keeps answering with a cursor cannot hold the client).
        var cursor: String?
        for _ in 0..<1000 {
            let path = cursor.map { "/v1/key-shares?after=\($0)" } ?? "/v1/key-shares"
            guard let json = try? await call("GET", path) else { return }
            await handleKeyShares(json["key_shares"] as? [[String: Any]] ?? [])
            guard let next = json["next"] as? String, next != cursor, !closed else { return }
            cursor = next
        }
    }

    private func handleKeyShares(_ shares: [[String: Any]]) async {
        var handled: [String] = []
        for share in shares {
            guard let id = share["id"] as? String, let room = share["room"] as? String, let sender = share["sender"] as? String,
                  let session = share["session_id"] as? String,
                  let sealed = (share["sealed"] as? String).flatMap({ try? Base64.decode($0) }),
                  let signature = (share["signature"] as? String).flatMap({ try? Base64.decode($0) }) else { continue }
            if keyring.rooms[room] == nil {
                // A share for a room not joined yet: keep it waiting on the node.
                continue
            }
            do {
                try keyring.acceptShare(room: room, sender: sender, sessionID: session, sealed: sealed, signature: signature)
            } catch .senderNotMember {
                try? await refreshRoom(room)
                try? keyring.acceptShare(room: room, sender: sender, sessionID: session, sealed: sealed, signature: signature)
            } catch {
                // A bad share is acknowledged so it is not fetched forever; it was never used.
            }
            handled.append(id)
        }
        if !handled.isEmpty { _ = try? await call("POST", "/v1/key-shares/ack", json: ["ids": handled]) }
    }

    static func nowMillis() -> UInt64 { UInt64(max(0, Date().timeIntervalSince1970 * 1000)) }
}

/// The authenticated messages of one joined room, as an `AsyncSequence`.
/// Rejected frames are skipped (and counted by the client); the sequence
/// ends when the client closes or the consuming task is cancelled, which
/// also unsubscribes.
public struct RoomMessages: AsyncSequence, Sendable {
    public typealias Element = OpenedFrame
    let client: UnibusClient
    public let room: String
    let stream: AsyncStream<NATSMessage>

    public struct AsyncIterator: AsyncIteratorProtocol {
        let client: UnibusClient
        let room: String
        var base: AsyncStream<NATSMessage>.AsyncIterator

        public mutating func next() async -> OpenedFrame? {
            while let message = await base.next() {
                if case .success(let frame) = await client.receive(message.payload, room: room) { return frame }
            }
            return nil
        }
    }

    public func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(client: client, room: room, base: stream.makeAsyncIterator())
    }
}
