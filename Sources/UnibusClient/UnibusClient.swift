import Foundation
import Logging
import NIOCore
import UnibusControlClient
import UnibusCrypto
import UnibusMembership
import UnibusPersistence
import UnibusWire

/// A peer on the bus: one identity, a data-plane connection that fails over
/// across its seeds, a control-plane session, and the end-to-end encrypted
/// rooms it has joined.
///
/// ```swift
/// var configuration = UnibusClient.Configuration(identity: me, dataPlane: ["nats://127.0.0.1:4222"],
///                                                controlPlane: ["http://127.0.0.1:4280"], root: "UROOT…")
/// let client = try await UnibusClient.connect(configuration)
/// let room = try await client.join("ops")
/// try await client.publish(Array("hello".utf8), to: "ops")
/// for try await message in room { print(message.sender, message.body) }
/// ```
///
/// **Nodes are not trusted to say who is in a room.** The client pins the
/// cluster's root admin (`Configuration.root`, never learned from a node),
/// fetches the signed membership operations it lacks, verifies each and
/// folds them with the rules nodes run (`MembershipLog`). Member lists,
/// exchange keys, roles and room policies come only from that fold; a
/// response that does not verify is an error naming the node. With more than
/// one control-plane URL, the client compares logs with a second node before
/// it seals a new session key, so one node cannot hide a removal.
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
        /// Give two or more: the client compares their logs before sealing keys.
        public var controlPlane: [String]
        /// The cluster's root admin (a `U…` nkey): every membership operation
        /// is verified from it. From configuration only, never from a node.
        public var root: String
        /// The CA both planes' certificates must chain to (pinned).
        public var caPath: String?
        /// A client certificate for nodes that require one (`unibusd run --tls-client-ca`).
        public var clientCertificate: ClientCertificate?
        /// Where the client keeps its state between runs (a directory, created
        /// 0700): the verified membership log, and, sealed at rest, the Megolm
        /// sessions it holds, their replay windows and the resume cursors of
        /// persisted rooms. Nil keeps everything in memory only.
        public var stateDirectory: String?
        /// Seal the state directory's keys with this passphrase (Argon2id)
        /// instead of a key derived from the identity: for a state directory
        /// kept apart from the identity file.
        public var statePassphrase: [UInt8]?
        /// How long one node may stay behind another before `warn` is told.
        public var maximumNodeLag: Duration = .seconds(60)
        /// After members' workload logins expire, this client's session in
        /// the room rotates at the first send at least this long after the
        /// session began (a removal or revocation rotates at the next send).
        public var expiryRotationInterval: Duration = .seconds(60)
        /// Warnings (a node behind another, an unreachable second node, a local
        /// store that no longer verified). The library never prints.
        public var warn: (@Sendable (String) -> Void)?
        /// The library's log (connects, failovers, warnings, refused frames
        /// at debug). It never prints: a host application bootstraps
        /// swift-log's `LoggingSystem` with its own handler.
        public var logger = Logger(label: "unibus.client")
        public var maxBufferedMessages = 10_000
        public var maxBufferedBytes = 8 * 1024 * 1024
        public var name = "unibus-swift"
        /// First pause after a full round of the seed list failed (doubles up to 2 s, plus jitter).
        public var minimumBackoff: TimeAmount = .milliseconds(50)
        /// Frames of persisted rooms not acknowledged as stored after this
        /// long are sent again (the same bytes; nodes and receivers drop duplicates).
        public var acknowledgementTimeout: Duration = .seconds(5)
        /// After a key-share fetch for a new session failed (no node answered),
        /// that session's next frame fetches again once this long has passed.
        public var keyShareRetryPause: Duration = .seconds(2)
        /// Most frames of persisted rooms that may wait for acknowledgement
        /// (in memory, and in the state directory's spool when there is one).
        public var maximumUnacknowledged = 100_000
        /// Most bytes of such frames.
        public var maximumUnacknowledgedBytes = 64 * 1024 * 1024
        /// How far before its last delivery a resuming subscriber asks a node
        /// for stored frames (frames in flight when the connection broke).
        public var resumeMargin: Duration = .milliseconds(500)

        public init(identity: Identity, dataPlane: [String], controlPlane: [String], root: String, caPath: String? = nil) {
            self.identity = identity
            self.dataPlane = dataPlane
            self.controlPlane = controlPlane
            self.root = root
            self.caPath = caPath
        }
    }

    public nonisolated let configuration: Configuration
    public nonisolated let connection: NATSConnection
    public nonisolated let userNKey: String
    let keyring: RoomKeyring
    private let logStore: VerifiedLogStore
    private var control: ControlSession?
    private var others: [String: ControlSession] = [:]
    /// Since when the node in use has lacked operations another node had.
    private var behindSince: [String: ContinuousClock.Instant] = [:]
    private var warned: Set<String> = []
    /// The data plane's reconnect count when the log was last synced: after a
    /// reconnect, the log is synced again before anything is sent.
    private var syncedAtReconnect = -1
    private var counts: [FrameRejection: Int] = [:]
    private var delivered = 0
    private var duplicatesDropped = 0
    /// The key-share fetch under way, and the one queued behind it (see `fetchKeyShares`).
    private var keyFetch: Task<Bool, Never>?
    private var queuedKeyFetch: Task<Bool, Never>?
    private var noticeTask: Task<Void, Never>?
    var closed = false
    /// Unknown sessions a share fetch was already tried for (bounded), and
    /// when a fetch for one whose fetch failed may be tried again.
    private var fetchedFor: Set<[UInt8]> = []
    private var fetchRetryAt: [[UInt8]: ContinuousClock.Instant] = [:]
    /// Frames of persisted rooms sent and not yet acknowledged as stored.
    var unacknowledged = UnacknowledgedFrames()
    var receiptTask: Task<Void, Never>?
    /// When the last durability receipt came (resends hold back while they flow).
    var lastReceiptAt: ContinuousClock.Instant?
    var resendTask: Task<Void, Never>?
    /// Per persisted room joined: when (client clock, ms) a frame was last
    /// delivered, which is where a resume asks the store from.
    var resumeCursor: [String: UInt64] = [:]
    /// Rooms whose cursor stays where it was when the connection broke.
    var frozenCursors: Set<String> = []
    /// Where the resumes after the last reconnect start, per room.
    var resumeOrigin: [String: UInt64] = [:]
    /// How often each room's cursor was frozen (a resume unfreezes only if none came while it ran).
    var freezes: [String: Int] = [:]

    /// Sessions, replay windows and cursors between runs (with a state directory).
    let keyStore: ClientKeyStore?
    /// Cursors of persisted rooms as stored by an earlier run (resumed on join).
    var storedCursors: [String: UInt64] = [:]
    var cursorsChanged: Set<String> = []
    /// (session id bytes + recipient) pairs a past session was shared with for history.
    var historyShared: Set<[UInt8]> = []
    var historySharing: Set<[UInt8]> = []
    /// Frames the spool in the state directory holds.
    var spooledIDs: Set<FrameID> = []
    var saveTask: Task<Void, Never>?

    private init(configuration: Configuration, connection: NATSConnection, logStore: VerifiedLogStore, keyStore: ClientKeyStore?) {
        self.configuration = configuration
        self.connection = connection
        self.userNKey = configuration.identity.userNKey
        self.keyring = RoomKeyring(identity: configuration.identity)
        self.logStore = logStore
        self.keyStore = keyStore
        if let keyStore {
            for stored in keyStore.inbound() { keyring.restoreInbound(stored) }
            storedCursors = keyStore.cursors()
            historyShared = keyStore.historyShares()
            // Frames a previous run sent (or spooled offline) and no node acknowledged: sent again on connect.
            // A stored row is input too: only frames of this identity's own
            // sessions (restored above), signed, with a sane size and date, go out.
            let now = Self.nowMillis()
            for frame in keyStore.spooled() {
                let mine = configuration.identity.signing.publicKey.bytes
                let own = Set(keyring.ownSessions(in: frame.room).map { $0.key.signingKey.bytes })
                let megolm = (try? FrameVerifier.verify(frame.frame, policy: RoomPolicy())).map {
                    $0.id == frame.id && $0.sender == mine && own.contains(frame.id.stream)
                }
                let signed = (try? FrameVerifier.verify(frame.frame, policy: RoomPolicy(encrypt: false))).map { $0.id == frame.id && $0.sender == mine }
                guard frame.frame.count <= FrameVerifier.maximumFrame, megolm == true || signed == true,
                      Subject.isValidLiteral(frame.subject) else {
                    keyStore.discardSpooled(frame.id)
                    continue
                }
                unacknowledged.add(frame.id, UnacknowledgedFrames.Entry(room: frame.room, subject: frame.subject, frame: frame.frame,
                                                                        sentAt: .now - .seconds(3600), sends: 0, sealedAt: min(frame.sealedAt, now)))
                spooledIDs.insert(frame.id)
            }
        }
    }

    /// Connects both planes, verifies the membership log from the pinned
    /// root, and starts listening for key shares and membership notices.
    public static func connect(_ configuration: Configuration) async throws -> UnibusClient {
        guard !configuration.controlPlane.isEmpty else { throw ClientError.noSeeds }
        guard (try? NKey.decodePublicKey(configuration.root, expecting: .user)) != nil else { throw ClientError.missingRoot }
        let logStore = try VerifiedLogStore(directory: configuration.stateDirectory, root: configuration.root)
        if let discarded = logStore.discarded { Self.warning(discarded, configuration) }
        let keyStore = try configuration.stateDirectory.map { directory throws(ClientError) in
            try ClientKeyStore(directory: directory, identity: configuration.identity, passphrase: configuration.statePassphrase)
        }
        var seeds: [Endpoint] = []
        for url in configuration.dataPlane { seeds.append(try Endpoint(parsing: url)) }
        var options = NATSConnection.Options(seeds: seeds, identity: configuration.identity, caPath: configuration.caPath)
        options.logger = configuration.logger
        options.maxBufferedBytes = configuration.maxBufferedBytes
        options.maxBufferedMessages = configuration.maxBufferedMessages
        options.name = configuration.name
        options.minimumBackoff = configuration.minimumBackoff
        options.clientCertificate = configuration.clientCertificate
        let connection = try NATSConnection(options: options)
        try await connection.connect()
        let client = UnibusClient(configuration: configuration, connection: connection, logStore: logStore, keyStore: keyStore)
        if let keyStore, keyStore.discarded > 0 {
            Self.warning("\(keyStore.discarded) value(s) in \(keyStore.path) did not open and were skipped", configuration)
        }
        do {
            try await client.start()
        } catch {
            await connection.close()
            throw error
        }
        return client
    }

    private func start() async throws {
        try await syncLog()
        let notices = try connection.subscribe(ReservedNamespace.keyDeliverySubject(for: userNKey))
        noticeTask = Task { [weak self] in
            for await notice in notices {
                await self?.handleNotice(notice.payload)
            }
        }
        try startReceipts()
        // Frames spooled by an earlier run go out now (the connection is up already).
        resendUnacknowledged(olderThan: nil)
        if keyStore != nil {
            saveTask = Task { [weak self] in
                while !Task.isCancelled {
                    try? await Task.sleep(for: .seconds(1))
                    await self?.saveState()
                }
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
        // Both read now: the queued fetch moves to `keyFetch` when it starts.
        let keyFetches = [keyFetch, queuedKeyFetch].compactMap { $0 }
        for fetch in keyFetches { fetch.cancel() }
        receiptTask?.cancel()
        resendTask?.cancel()
        saveTask?.cancel()
        unacknowledged.failAll(ClientError.closed)
        await connection.close()
        await noticeTask?.value
        for fetch in keyFetches { _ = await fetch.value }
        await receiptTask?.value
        await resendTask?.value
        await saveTask?.value
        saveState()
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

    /// A signed control-plane call whose answer is `T`, retried once on
    /// another seed when the node is unreachable (not when it answered with
    /// an error).
    func call<T: Decodable>(_ method: String, _ path: String, body: [UInt8] = [], expecting type: T.Type) async throws -> T {
        guard !closed else { throw ClientError.closed }
        for attempt in 0..<2 {
            let session = try await controlSession(refresh: attempt > 0)
            do {
                return try await session.call(method, path, body: body, expecting: type)
            } catch let failure as ControlClient.Failure {
                // Unreachable, or 401: the node may have restarted under a new
                // id, which signed requests name. Either way, open again once.
                if failure.status == nil || failure.status == 401, attempt == 0 { continue }
                throw ClientError.controlPlane("\(failure)")
            }
        }
        throw ClientError.controlPlane("\(method) \(path): unreachable")
    }

    /// Signs `operation` naming the heads of this client's verified log,
    /// submits it, and folds it in locally (admin tools use this for users,
    /// settings and the root; the room methods below wrap it).
    public func submit(_ operation: MembershipOperation) async throws {
        try await syncLog()
        let signed = SignedOperation.sign(operation, by: configuration.identity, parents: logStore.log.heads)
        _ = try await call("POST", ControlAPI.submissionPath(for: signed), body: ControlAPI.encode(ControlAPI.OperationDocument(signed)),
                           expecting: ControlAPI.OperationAccepted.self)
        _ = try? logStore.insert(signed)
    }

    // MARK: the verified log

    /// The membership state as this client verified and folded it.
    public var membership: MembershipState { logStore.log.state }

    /// The client's verified log (a copy): heads, checkpoint, what it holds.
    public var membershipLog: MembershipLog { logStore.log }

    /// Fetches and verifies what the log lacks now (it also happens before
    /// every room refresh, after reconnects and on membership notices).
    public func syncMembership() async throws { try await syncLog() }

    /// Fetches the operations this client lacks from `session` (the current
    /// node by default), verifies each and folds it. Anything that does not
    /// verify, or arrives before its predecessors, is an error naming the
    /// node, and nothing after it is used. Returns how many were new.
    @discardableResult
    private func syncLog(from given: ControlSession? = nil) async throws -> Int {
        var session: ControlSession
        if let given { session = given } else { session = try await controlSession() }
        let store = logStore
        for attempt in 0..<2 {
            do {
                let added = try await session.syncLog(heads: { store.log.heads }, insert: { operation throws(MembershipError) in
                    try store.insert(operation)
                })
                if given == nil { syncedAtReconnect = connection.reconnectCount }
                return added
            } catch .call(let failure) where (failure.status == nil || failure.status == 401) && given == nil && attempt == 0 {
                session = try await controlSession(refresh: true)
            } catch .call(let failure) {
                throw ClientError.controlPlane("\(failure)")
            } catch .untrusted(let node, let reason) {
                throw ClientError.untrustedNode(node: node, reason: reason)
            }
        }
        throw ClientError.controlPlane("no control plane answered")
    }

    /// Before a new session key is sealed: compares this client's log with
    /// the other control-plane nodes' heads and fetches what they hold and
    /// the node in use did not give (a removal it withheld, say). Warns when
    /// the node in use stays behind another for longer than allowed.
    private func crossCheck() async {
        guard let current = control else { return }
        var gained = 0
        for url in configuration.controlPlane where url != current.url {
            do {
                let session: ControlSession
                if let known = others[url] { session = known } else {
                    session = try await ControlSession.open(url: url, caPath: configuration.caPath, identity: configuration.identity,
                                                            clientCertificate: configuration.clientCertificate)
                    others[url] = session
                }
                let heads = try await session.heads()
                if heads.contains(where: { !logStore.log.contains($0) }) { gained += try await syncLog(from: session) }
            } catch {
                others[url] = nil
                warnOnce("cannot compare the membership log with \(url): \(error)")
            }
        }
        let now = ContinuousClock.now
        if gained > 0 {
            let since = behindSince[current.url] ?? now
            behindSince[current.url] = since
            if now - since >= configuration.maximumNodeLag {
                warning("\(current.url) has been behind another node for \(now - since) (it lacked \(gained) operations)")
            }
        } else {
            behindSince[current.url] = nil
        }
    }

    /// A warning to the host: its `warn` callback and the library's logger.
    nonisolated func warning(_ message: String) {
        Self.warning(message, configuration)
    }

    static func warning(_ message: String, _ configuration: Configuration) {
        configuration.logger.warning("\(message)")
        configuration.warn?(message)
    }

    func warnOnce(_ message: String) {
        guard warned.count < 1000, warned.insert(message).inserted else { return }
        warning(message)
    }

    // MARK: rooms

    /// Creates a room owned by this identity. Unencrypted rooms are refused
    /// unless the cluster's settings allow them.
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
        forget(room)
    }

    /// Drops a room's keys and cursor, here and in the store.
    func forget(_ room: String) {
        keyring.forgetRoom(room)
        resumeCursor[room] = nil
        resumeOrigin[room] = nil
        storedCursors[room] = nil
        keyStore?.forget(room: room)
    }

    /// Archives `room` (owner or admin): no one can use it afterwards.
    public func archiveRoom(_ room: String) async throws {
        try await submit(.archiveRoom(id: room))
        forget(room)
    }

    /// The open rooms this identity is a member of, from the verified log.
    public func myRooms() async throws -> [RoomInfo] {
        try await syncLog()
        return membership.rooms(of: userNKey).map { RoomInfo(id: $0.id, subject: $0.subject, owner: $0.owner, policy: $0.policy) }
    }

    /// The members of `room` (user nkeys), from the verified log.
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
        // The data-plane node may not hold the membership yet (it was made
        // through another node): wait until it accepts the subscription.
        try await connection.confirmSubscription(info.subject)
        await fetchKeyShares()
        guard info.policy.persist else { return RoomMessages(client: self, room: room, stream: stream) }
        // A cursor from an earlier run: first deliver what was stored since.
        let earlier = resumeCursor[room] ?? storedCursors[room]
        if resumeCursor[room] == nil { resumeCursor[room] = earlier ?? Self.nowMillis() }
        // From an earlier run's cursor: frozen until the gap since was read.
        if earlier != nil { freezeCursor(room) }
        return RoomMessages(client: self, room: room, resuming: stream, events: connection.events(), resumeAtOnce: earlier != nil)
    }

    /// Opens `room` for sending only: loads its policy and members without
    /// subscribing to its subject (a publisher that does not read the room).
    public func openForSending(_ room: String) async throws {
        try await refreshRoom(room)
        guard let info = keyring.rooms[room] else { throw ClientError.notAMember(room) }
        // Publishing is allowed exactly where subscribing is: a subscription
        // the node accepts shows it holds the membership, so the first
        // publishes are not refused (silently) by a node still catching up.
        try await connection.confirmPermission(info.subject)
    }

    /// Syncs the verified log and takes the room's policy and members from
    /// it (then shares this client's session with newcomers, or marks it for
    /// rotation after a departure).
    func refreshRoom(_ room: String) async throws {
        try await syncLog()
        try await applyRoom(room)
    }

    private func applyRoom(_ room: String) async throws {
        let state = membership
        guard let found = state.rooms[room] else { throw ClientError.invalid("no room \(room)") }
        // Members by the clock: a workload whose login expired is no longer
        // one, though the log still lists it until a checkpoint prunes it.
        let now = Self.nowMillis()
        let seconds = Int64(now / 1000)
        let listed = Set((state.members[room] ?? [:]).keys)
        let members = listed.filter { state.isLive($0, now: seconds) }
        if listed.contains(userNKey), !members.contains(userNKey), let expiry = state.expiry(of: userNKey), found.archived == nil {
            // This identity's own workload login ended: its room keys are
            // kept, for when it logs in again with a fresh token.
            throw ClientError.invalid("this identity's workload login ended at \(OperationTime.string(Date(timeIntervalSince1970: TimeInterval(expiry)))); "
                                      + "log in again with a fresh token (unibus login --existing)")
        }
        guard members.contains(userNKey), found.archived == nil else {
            forget(room)
            throw ClientError.notAMember(room)
        }
        // Departed by expiry (not yet started is not a departure), and when
        // the members must be read again: the next expiry, or the next start
        // of a login dated ahead of this clock.
        let expired = listed.subtracting(members).filter { (state.expiry(of: $0) ?? .max) <= seconds }
        let lead = Int64(OperationWindow.maximumLead / 1000)
        let starts = listed.subtracting(members).compactMap { key -> Int64? in
            guard let workload = state.workloads[key], state.users[key]?.status == .active, workload.expiresAt > seconds else { return nil }
            return workload.startsAt.subtractingReportingOverflow(lead).partialValue
        }
        let nextExpiry = (members.compactMap { state.expiry(of: $0) } + starts).min()
        keyring.setRoom(RoomInfo(id: found.id, subject: found.subject, owner: found.owner, policy: found.policy), members: members,
                        expired: expired, nextExpiry: nextExpiry, now: now,
                        expiryRotationInterval: UInt64(max(0, configuration.expiryRotationInterval.components.seconds)) * 1000)
        if let outbound = keyring.outbound[room], !outbound.mustRotate {
            let newcomers = members.subtracting(outbound.sharedWith).subtracting([userNKey])
            if !newcomers.isEmpty { try await share(outbound, room: room, with: newcomers) }
        }
        if found.policy.persist && found.policy.history == .shared {
            // Sharing history is a courtesy to newcomers: its failure must not stop this client using the room.
            do { try await shareHistory(of: room, policy: found.policy) } catch {
                warnOnce("room \(room): could not share its history with newcomers (\(error)); trying again at the next change")
            }
        }
    }

    /// In a `shared`-history room: gives members who joined after one of
    /// this client's past sessions began that session (from the index it
    /// started at), sealed and signed like every share, so they can read the
    /// retained history it encrypted. Each key still comes from its owner;
    /// nobody who is not a member now gets one.
    private func shareHistory(of room: String, policy: RoomPolicy) async throws {
        let past = keyring.ownSessions(in: room)
        guard !past.isEmpty else { return }
        let state = membership
        // A session made before the retention age may still have encrypted
        // retained frames since: every one of the most recent sessions goes.
        for session in past.suffix(1000) {
            guard let sessionBytes = try? Base64.decode(session.sessionID) else { continue }
            var shares: [ControlAPI.ShareSubmission] = []
            var recipients: [String] = []
            for (recipient, member) in (state.members[room] ?? [:]).sorted(by: { $0.key < $1.key }) where recipient != userNKey {
                guard let joined = OperationTime.millis(member.joined), joined > session.created,
                      !historyShared.contains(sessionBytes + Array(recipient.utf8)),
                      !historySharing.contains(sessionBytes + Array(recipient.utf8)),
                      let user = state.users[recipient], state.isLive(recipient, now: Int64(Self.nowMillis() / 1000)),
                      let bytes = try? Base64.decode(user.exchangeKey), let key = X25519PublicKey(bytes: bytes) else { continue }
                let (sealed, signature) = keyring.sharePast(session.key, room: room, recipient: recipient, exchangeKey: key)
                shares.append(ControlAPI.ShareSubmission(recipient: recipient, sealed: sealed, signature: signature))
                recipients.append(recipient)
            }
            guard !shares.isEmpty else { continue }
            let submission = ControlAPI.KeySharesSubmission(sessionID: session.sessionID, sessionSignature: session.ownerSignature,
                                                            shares: shares)
            // In flight: a concurrent refresh (the actor lets one in while this awaits) does not send them again.
            let pairs = recipients.map { sessionBytes + Array($0.utf8) }
            historySharing.formUnion(pairs)
            defer { historySharing.subtract(pairs) }
            _ = try await call("POST", "/v1/rooms/\(room)/key-shares", body: ControlAPI.encode(submission), expecting: ControlAPI.SharesStored.self)
            for recipient in recipients { historyShared.insert(sessionBytes + Array(recipient.utf8)) }
            keyStore?.recordHistoryShares(session: sessionBytes, recipients: recipients)
        }
    }

    // MARK: sending

    /// Seals and publishes one message to `room`. In an encrypted room this
    /// first creates and shares a new session when the room's policy asks
    /// for one (first message, a member left, count or age limit). It
    /// throws rather than send anything less protected than the policy.
    public func publish(_ body: [UInt8], to room: String, contentType: String = "application/octet-stream") async throws {
        if let id = try await send(body, to: room, contentType: contentType) {
            _ = try await waitForStorage(id, in: room)
        }
    }

    /// Seals and publishes one message to `room` like `publish`, but for a
    /// persisted room returns as soon as the frame is sent, with its identity:
    /// the client keeps it and sends the same bytes again (after a failover,
    /// or when no acknowledgement came in time) until a node says it is
    /// stored. Wait with `waitForStorage` or `waitForAllStored`. Nil for
    /// rooms that are not persisted (nothing to wait for).
    @discardableResult
    public func send(_ body: [UInt8], to room: String, contentType: String = "application/octet-stream") async throws -> FrameID? {
        guard keyring.rooms[room] != nil else { throw ClientError.invalid("room \(room) is not joined; call join(\"\(room)\") first") }
        // After a reconnect, a removal may have happened unseen: sync first.
        if syncedAtReconnect != connection.reconnectCount { try await refreshRoom(room) }
        guard let info = keyring.rooms[room] else { throw ClientError.notAMember(room) }
        // A member's workload login ended since the members were read: re-read them (no sync needed).
        if let next = keyring.nextExpiry[room], next <= Int64(Self.nowMillis() / 1000) { try await applyRoom(room) }
        let now = Self.nowMillis()
        if info.policy.encrypt, keyring.currentOutbound(for: room, now: now) == nil {
            await crossCheck()
            try await refreshRoom(room)
            let fresh = keyring.rotate(room: room, now: now)
            // The session is kept before any frame of it leaves: a restart must still read them.
            saveState()
            let others = (keyring.members[room] ?? []).subtracting([userNKey])
            if !others.isEmpty { try await share(fresh, room: room, with: others) }
        }
        if info.policy.persist, unacknowledged.count >= configuration.maximumUnacknowledged
            || unacknowledged.bytes >= configuration.maximumUnacknowledgedBytes {
            throw ClientError.tooManyUnacknowledged(unacknowledged.count)
        }
        let frame: [UInt8]
        do { frame = try keyring.seal(room: room, contentType: contentType, body: body, now: Self.nowMillis()) } catch {
            throw ClientError.seal(error)
        }
        guard info.policy.persist else {
            try connection.publish(info.subject, payload: frame)
            return nil
        }
        return try track(frame, room: room, subject: info.subject)
    }

    /// Seals a frame without sending it (tools and tests inspect or replay it).
    public func seal(_ body: [UInt8], for room: String, contentType: String = "application/octet-stream") throws -> [UInt8] {
        do { return try keyring.seal(room: room, contentType: contentType, body: body, now: Self.nowMillis()) } catch {
            throw ClientError.seal(error)
        }
    }

    /// Shares `outbound`'s key with `recipients` through the membership
    /// service, each sealed to the exchange key in the verified log. Only
    /// active current members get a share; nobody else ever does.
    private func share(_ outbound: RoomKeyring.Outbound, room: String, with recipients: Set<String>) async throws {
        let state = membership
        var shares: [ControlAPI.ShareSubmission] = []
        var sharedWith: [String] = []
        for recipient in recipients.sorted() {
            guard let user = state.users[recipient], state.isLive(recipient, now: Int64(Self.nowMillis() / 1000)),
                  state.members[room]?[recipient] != nil,
                  let bytes = try? Base64.decode(user.exchangeKey), let key = X25519PublicKey(bytes: bytes) else { continue }
            let (sealed, signature) = keyring.share(outbound, room: room, recipient: recipient, exchangeKey: key)
            shares.append(ControlAPI.ShareSubmission(recipient: recipient, sealed: sealed, signature: signature))
            sharedWith.append(recipient)
        }
        guard !shares.isEmpty else { return }
        let submission = ControlAPI.KeySharesSubmission(sessionID: outbound.session.sessionID,
                                                        sessionSignature: keyring.ownerSignature(outbound, room: room), shares: shares)
        _ = try await call("POST", "/v1/rooms/\(room)/key-shares", body: ControlAPI.encode(submission), expecting: ControlAPI.SharesStored.self)
        outbound.sharedWith.formUnion(sharedWith)
    }

    /// A member's handle, from the verified log.
    public func handle(of user: String) -> String? { membership.users[user]?.handle }

    // MARK: receiving

    /// Opens one frame received on `room`'s subject. An unknown session
    /// first triggers one fetch of waiting key shares, and an unknown sender
    /// one sync of the log (both may simply not have arrived yet); whatever
    /// is still refused is counted by reason.
    public func receive(_ frame: [UInt8], room: String) async -> Result<OpenedFrame, FrameRejection> {
        await receive(frame, room: room, arrival: .live)
    }

    /// A live message: the cursor of a persisted room moves to when it arrived.
    func receive(_ message: NATSMessage, room: String) async -> Result<OpenedFrame, FrameRejection> {
        await receive(message.payload, room: room, arrival: .live, arrivedAt: message.receivedAt)
    }

    func receive(_ frame: [UInt8], room: String, arrival: RoomKeyring.Arrival, arrivedAt: UInt64? = nil) async -> Result<OpenedFrame, FrameRejection> {
        // A member's workload login ended since the members were read: a
        // receiver drops it by its own clock, told by a node or not.
        if let next = keyring.nextExpiry[room], next <= Int64(Self.nowMillis() / 1000) { try? await applyRoom(room) }
        var result = keyring.open(frame, room: room, now: Self.nowMillis(), arrival: arrival, arrivedAt: arrivedAt)
        if case .failure(let reason) = result, reason == .unknownSession || reason == .nonMember,
           let marker = Self.sessionMarker(frame), mayFetchKeyShares(for: marker) {
            if reason == .nonMember { try? await refreshRoom(room) }
            // A fetch that did not finish (the node went down a moment after
            // the share was posted) does not settle the session: its frames,
            // resumed from the store after a failover, ask again, paced.
            if await fetchKeyShares() {
                fetchRetryAt[marker] = nil
            } else {
                fetchRetryAt[marker] = .now + configuration.keyShareRetryPause
            }
            result = keyring.open(frame, room: room, now: Self.nowMillis(), arrival: arrival, arrivedAt: arrivedAt)
        }
        switch result {
        case .success:
            delivered += 1
            // Live deliveries only (a resume moves it once the whole gap was
            // read), and not while frozen from a disconnect until then.
            if arrival == .live, let current = resumeCursor[room], !frozenCursors.contains(room) {
                resumeCursor[room] = max(current, arrivedAt.flatMap { $0 > 0 ? $0 : nil } ?? Self.nowMillis())
                if keyStore != nil { cursorsChanged.insert(room) }
            }
        case .failure(.replay) where arrival != .live || keyring.rooms[room]?.policy.persist == true:
            // Persisted rooms see the same frame again by design (a publisher
            // resends what was not acknowledged; resuming re-reads what was
            // delivered): dropped, counted apart from attacks.
            duplicatesDropped += 1
        case .failure(let reason):
            if arrival != .history { counts[reason, default: 0] += 1 }
            configuration.logger.debug("frame refused", metadata: ["room": "\(room)", "reason": "\(reason)"])
        }
        return result
    }

    /// Whether a frame of the session `marker` names may fetch key shares:
    /// once per session, again after a failed fetch once its pause is over;
    /// at most 10,000 sessions are remembered (a flood of made-up sessions
    /// cannot make a fetch per frame).
    private func mayFetchKeyShares(for marker: [UInt8]) -> Bool {
        if fetchedFor.contains(marker) {
            guard let retry = fetchRetryAt[marker], retry <= .now else { return false }
            fetchRetryAt[marker] = .now + configuration.keyShareRetryPause
            return true
        }
        guard fetchedFor.count < 10_000 else { return false }
        fetchedFor.insert(marker)
        return true
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
    /// Copies of frames already delivered that persisted rooms dropped
    /// (resends after a failover, frames re-read while resuming).
    public var duplicatesDroppedCount: Int { duplicatesDropped }

    /// A notice on this user's key-delivery subject: membership changed in
    /// a room (sync and refresh it), or key shares wait. Notices carry no
    /// authority: each only makes the client fetch and verify.
    private func handleNotice(_ payload: [UInt8]) async {
        if let notice = ControlAPI.decode(MembershipNotice.self, from: payload), notice.event == MembershipNotice.membersEvent {
            guard keyring.rooms[notice.room] != nil else { return }
            do { try await refreshRoom(notice.room) } catch {
                // Removed from the room (or it was archived): stop using its keys.
                if case ClientError.notAMember = error { forget(notice.room) }
            }
            return
        }
        await fetchKeyShares()
    }

    /// Saves new sessions, changed replay windows, cursors and the spool
    /// (with a state directory); false when the keys could not be saved.
    @discardableResult
    func saveState() -> Bool {
        guard let keyStore else { return true }
        var cursors: [String: UInt64] = [:]
        for room in cursorsChanged { cursors[room] = resumeCursor[room] }
        cursorsChanged = []
        // The spool follows the unacknowledged frames (written each second and at close).
        let held = Set(unacknowledged.entries.keys)
        let adding = unacknowledged.inOrder.filter { !spooledIDs.contains($0.0) }.map {
            ClientKeyStore.Spooled(id: $0.0, room: $0.1.room, subject: $0.1.subject, frame: $0.1.frame, sealedAt: $0.1.sealedAt)
        }
        let removing = spooledIDs.subtracting(held)
        let unsaved = keyring.takeUnsaved()
        do {
            try keyStore.save(inbound: unsaved.inbound, replay: unsaved.replay, cursors: cursors)
        } catch {
            // Kept for the next save; nothing was acknowledged on the strength of it.
            keyring.putBack(unsaved)
            cursorsChanged.formUnion(cursors.keys)
            warnOnce("cannot save the client's keys in \(keyStore.path): \(error)")
            return false
        }
        do {
            try keyStore.updateSpool(adding: adding, removing: Array(removing))
            spooledIDs = held
        } catch {
            warnOnce("cannot save the client's spool in \(keyStore.path): \(error)")
        }
        return true
    }

    /// Fetches waiting key shares before reading history.
    func fetchKeySharesForHistory() async { await fetchKeyShares() }

    /// Fetches, opens and acknowledges waiting key shares. False when it did
    /// not read every page or could not save every share (no node answered,
    /// or the disk is full).
    ///
    /// One fetch runs at a time. A caller that asks while one runs may know
    /// of a share that fetch read the node too early for (a notice, a frame
    /// of a new session), so it waits for the next fetch instead, which
    /// everyone asking until it starts shares: two fetches at most, however
    /// many ask.
    @discardableResult
    func fetchKeyShares() async -> Bool {
        guard !closed else { return false }
        if let queuedKeyFetch { return await queuedKeyFetch.value }
        let previous = keyFetch
        let task = Task { () -> Bool in
            if let previous {
                _ = await previous.value
                // This task starts now: later callers queue behind it.
                self.keyFetch = self.queuedKeyFetch
                self.queuedKeyFetch = nil
            }
            let finished = await self.fetchKeySharesNow()
            if self.queuedKeyFetch == nil { self.keyFetch = nil }
            return finished
        }
        if previous == nil { keyFetch = task } else { queuedKeyFetch = task }
        return await task.value
    }

    private func fetchKeySharesNow() async -> Bool {
        // The node pages its answer; follow `next` to the end (bounded, so a
        // node that keeps answering with a cursor cannot hold the client).
        // A page whose shares could not be saved stays on the node (not
        // acknowledged); the pages after it are still read.
        var cursor: String?, saved = true
        for _ in 0..<1000 {
            let path = cursor.map { "/v1/key-shares?after=\($0)" } ?? "/v1/key-shares"
            guard let page = try? await call("GET", path, expecting: ControlAPI.KeySharesPage.self) else { return false }
            if !(await handleKeyShares(page.keyShares)) { saved = false }
            guard let next = page.next, next != cursor, !closed else { return saved }
            cursor = next
        }
        return saved
    }

    /// False when the keys could not be saved (the shares stay on the node).
    private func handleKeyShares(_ shares: [ControlAPI.KeyShareView]) async -> Bool {
        var handled: [String] = []
        for share in shares {
            guard let sealed = try? Base64.decode(share.sealed), let signature = try? Base64.decode(share.signature),
                  let sessionSignature = try? Base64.decode(share.sessionSignature) else { continue }
            if keyring.rooms[share.room] == nil {
                // A share for a room not joined yet: keep it waiting on the node.
                continue
            }
            do {
                try keyring.acceptShare(room: share.room, sender: share.sender, sessionID: share.sessionID, sealed: sealed,
                                        signature: signature, sessionSignature: sessionSignature)
            } catch .senderNotMember {
                try? await refreshRoom(share.room)
                try? keyring.acceptShare(room: share.room, sender: share.sender, sessionID: share.sessionID, sealed: sealed,
                                         signature: signature, sessionSignature: sessionSignature)
            } catch {
                // A bad share is acknowledged so it is not fetched forever; it was never used.
            }
            handled.append(share.id)
        }
        // Kept before the shares are acknowledged (the node deletes them then):
        // when the keys could not be saved, the shares stay on the node.
        guard saveState() else { return false }
        if !handled.isEmpty {
            // Each acknowledgement is signed: only this recipient can mark its shares delivered, on any node.
            let acks = handled.map { ControlAPI.AckRequest.Ack(id: $0, signature: configuration.identity.sign(
                KeyShare.ackStatement(id: $0, recipient: userNKey))) }
            _ = try? await call("POST", "/v1/key-shares/ack", body: ControlAPI.encode(ControlAPI.AckRequest(acks: acks)),
                                expecting: ControlAPI.AckResponse.self)
        }
        return true
    }

    static func nowMillis() -> UInt64 { UInt64(max(0, Date().timeIntervalSince1970 * 1000)) }
}

/// The authenticated messages of one joined room, as an `AsyncSequence`.
/// Rejected frames are skipped (and counted by the client); the sequence
/// ends when the client closes or the consuming task is cancelled, which
/// also unsubscribes.
///
/// In a persisted room, after every reconnect the sequence first delivers
/// the frames the node stored while this client was away (from its last
/// delivery on), then the live stream, each frame once (duplicates dropped
/// by their Megolm session and index).
public struct RoomMessages: AsyncSequence, Sendable {
    public typealias Element = OpenedFrame
    let client: UnibusClient
    public let room: String
    /// The subscription itself (rooms that are not persisted: no extra hop).
    let direct: AsyncStream<NATSMessage>?
    /// Live frames and resume marks (persisted rooms).
    let input: AsyncStream<Input>?
    /// Where a resume asks to be run again (persisted rooms).
    let retry: AsyncStream<Input>.Continuation?

    enum Input: Sendable {
        case live(NATSMessage)
        /// The connection broke: hold live frames until the store was asked.
        case hold
        /// Ask the store for what was missed (after a reconnect).
        case resume
        /// Look for gaps the live stream left (each second).
        case check
    }

    init(client: UnibusClient, room: String, stream: AsyncStream<NATSMessage>) {
        self.client = client
        self.room = room
        direct = stream
        input = nil
        retry = nil
    }

    init(client: UnibusClient, room: String, resuming stream: AsyncStream<NATSMessage>, events: AsyncStream<ConnectionEvent>,
         resumeAtOnce: Bool) {
        self.client = client
        self.room = room
        // Bounded: a flood (or a slow consumer) past it drops live frames,
        // which freezes the cursor and asks the store for them instead.
        let (input, continuation) = AsyncStream<Input>.makeStream(bufferingPolicy: .bufferingOldest(65_536))
        if resumeAtOnce { continuation.yield(.resume) }
        let forward = Task {
            for await message in stream {
                if case .dropped = continuation.yield(.live(message)) {
                    // Dropped live: the cursor freezes before it, and a resume is queued
                    // as soon as there is room (what is dropped meanwhile is in the store).
                    await client.freezeCursor(room)
                    while case .dropped = continuation.yield(.resume), !Task.isCancelled {
                        try? await Task.sleep(for: .milliseconds(50))
                    }
                }
            }
            continuation.finish()
        }
        // A disconnect freezes the cursor at once; after a reconnect: resume,
        // and twice more shortly after for frames a peer stored late.
        let watch = Task {
            var followUps: Task<Void, Never>?
            for await event in events {
                if case .disconnected = event {
                    // The iterator also sees the switch in the messages themselves
                    // (their attachment number): this covers a quiet room.
                    followUps?.cancel()
                    continuation.yield(.hold)
                    continue
                }
                continuation.yield(.resume)
                followUps?.cancel()
                followUps = Task {
                    try? await Task.sleep(for: .milliseconds(300))
                    if Task.isCancelled { return }
                    continuation.yield(.resume)
                    try? await Task.sleep(for: .milliseconds(1500))
                    if Task.isCancelled { return }
                    continuation.yield(.resume)
                }
            }
            followUps?.cancel()
        }
        let ticker = Task {
            while !Task.isCancelled {
                try? await Task.sleep(for: .seconds(1))
                continuation.yield(.check)
            }
        }
        continuation.onTermination = { _ in
            forward.cancel()
            watch.cancel()
            ticker.cancel()
        }
        self.input = input
        self.retry = continuation
        direct = nil
    }

    public struct AsyncIterator: AsyncIteratorProtocol {
        let client: UnibusClient
        let room: String
        var direct: AsyncStream<NATSMessage>.AsyncIterator?
        var base: AsyncStream<Input>.AsyncIterator?
        let retry: AsyncStream<Input>.Continuation?
        /// Frames ready to hand out, from `next` on.
        var pending: [OpenedFrame] = []
        var next = 0
        /// Live messages held since the connection broke, opened after the
        /// store's frames so every sender's frames come in order.
        var held: [NATSMessage] = []
        var heldBytes = 0
        var holding = false
        /// The attachment the last live message came on (0: none yet), and
        /// how many of the subscription's messages had been dropped before it.
        var attachment = 0
        var dropped = 0
        /// Held messages were dropped past the bound: read the store again.
        var heldOverflowed = false

        static let heldBound = (messages: 100_000, bytes: 64 * 1024 * 1024)

        public mutating func next() async -> OpenedFrame? {
            if direct != nil {
                while let message = await direct?.next() {
                    if case .success(let frame) = await client.receive(message.payload, room: room) { return frame }
                }
                return nil
            }
            while true {
                if next < pending.count {
                    defer {
                        next += 1
                        if next == pending.count {
                            pending = []
                            next = 0
                        }
                    }
                    return pending[next]
                }
                guard let input = await base?.next() else { return nil }
                switch input {
                case .live(let message):
                    if message.attachment != attachment || message.droppedBefore != dropped {
                        // The first message of a new connection, or the first after
                        // messages were dropped (the consumer fell behind): everything
                        // after it waits until the store was asked for the gap before it.
                        if attachment != 0 && !holding {
                            holding = true
                            await client.freezeCursor(room)
                            retry?.yield(.resume)
                        }
                        attachment = message.attachment
                        dropped = message.droppedBefore
                    }
                    if holding {
                        if held.count < Self.heldBound.messages, heldBytes + message.payload.count <= Self.heldBound.bytes {
                            held.append(message)
                            heldBytes += message.payload.count
                        } else {
                            // The cursor is frozen: the store answers for what is not held.
                            heldOverflowed = true
                        }
                        continue
                    }
                    if case .success(let frame) = await client.receive(message, room: room) { return frame }
                case .hold:
                    // In stream order: every live frame before this mark came on the lost connection.
                    holding = true
                    await client.freezeCursor(room)
                case .check:
                    // A gap in a session, a second old, with no reconnect: read it from the store.
                    guard !holding, let origin = await client.gapOrigin(room) else { continue }
                    let began = UnibusClient.nowMillis()
                    let outcome = await client.resume(room, from: origin)
                    pending = outcome.frames
                    next = 0
                    // Read to the end and still open: those frames were never stored.
                    if outcome.complete { await client.retireGaps(room, openedBefore: began > 1000 ? began - 1000 : 0) }
                case .resume:
                    let outcome = await client.resume(room)
                    pending = outcome.frames
                    next = 0
                    guard outcome.complete else {
                        // Keep holding; ask again shortly (the node may be back, or the next part waits).
                        holding = true
                        let retry = self.retry
                        Task {
                            try? await Task.sleep(for: .seconds(1))
                            // A full input drops marks too: try until this one is taken.
                            while case .dropped? = retry?.yield(.resume), !Task.isCancelled {
                                try? await Task.sleep(for: .milliseconds(50))
                            }
                        }
                        continue
                    }
                    for message in held {
                        if case .success(let frame) = await client.receive(message, room: room) { pending.append(frame) }
                    }
                    held = []
                    heldBytes = 0
                    holding = false
                    if heldOverflowed {
                        heldOverflowed = false
                        await client.freezeCursor(room)
                        retry?.yield(.resume)
                    }
                }
            }
        }
    }

    public func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(client: client, room: room, direct: direct?.makeAsyncIterator(), base: input?.makeAsyncIterator(), retry: retry)
    }
}
