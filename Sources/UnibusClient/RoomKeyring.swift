import UnibusCrypto
import UnibusMembership
import UnibusWire

/// What a receiver knows about a room: enough to judge a frame.
public struct RoomInfo: Sendable, Equatable {
    public var id: String
    public var subject: String
    public var owner: String
    public var policy: RoomPolicy

    public init(id: String, subject: String, owner: String, policy: RoomPolicy) {
        self.id = id
        self.subject = subject
        self.owner = owner
        self.policy = policy
    }
}

/// How a delivered frame was authenticated.
public enum FrameProtection: String, Sendable {
    /// Megolm: encrypted, MACed, signed by a session whose key came from the
    /// sender in a share signed by the sender's identity.
    case encrypted
    /// Signed by the sender's identity, not encrypted.
    case signed
    /// A plain room: nothing is authenticated.
    case none
}

/// A frame that passed every check.
public struct OpenedFrame: Sendable {
    /// The sender's user nkey ("U…").
    public let sender: String
    public let room: String
    /// Milliseconds since the Unix epoch, by the sender's clock (authenticated).
    public let timestamp: UInt64
    public let contentType: String
    public let body: [UInt8]
    public let protection: FrameProtection
}

/// Errors a sender sees; none of them ever leads to sending plaintext.
public enum SealError: Error, Equatable, Sendable, CustomStringConvertible {
    case noSession(room: String)
    case invalid(String)
    case exhausted

    public var description: String {
        switch self {
        case .noSession(let room):
            return "no Megolm session for room \(room) has been shared with its members; refusing to send (never plaintext)"
        case .invalid(let why): return why
        case .exhausted: return "the room's Megolm session is exhausted; it must be rotated"
        }
    }
}

/// The frame cryptography of one client: its outbound Megolm sessions (one
/// per room), the inbound sessions it was given, the replay windows, and the
/// room members it trusts. Synchronous and free of I/O, so it can be
/// tested, fuzzed and benchmarked alone; `UnibusClient` owns one inside its
/// actor and does the fetching and sharing around it. A class: a copy would
/// hold a second replay window and reuse outbound indices. Not `Sendable`.
public final class RoomKeyring {
    /// A sender's current session in a room.
    public final class Outbound {
        public let session: MegolmOutboundSession
        public let created: UInt64
        /// Messages encrypted with it.
        public var sent = 0
        /// Members the session key was shared with (user nkeys).
        public var sharedWith: Set<String> = []
        /// Set when a member left: the next send must use a new session.
        public var mustRotate = false
        /// Set when members' workload logins expired: the first send from
        /// this time (milliseconds) uses a new session. Expiries are
        /// coalesced (see `setRoom`), so short logins do not make every
        /// sender rotate and re-share each time one of them ends.
        public var rotateAt: UInt64?
        /// The envelope bytes before each Megolm message (sender, session).
        let frameHeader: [UInt8]

        init(created: UInt64, sender: [UInt8]) {
            session = MegolmOutboundSession()
            self.created = created
            frameHeader = FrameEnvelope.megolmHeader(sender: sender, sessionKey: session.signingKey.bytes)
        }
    }

    struct SessionRef: Hashable {
        let sender: [UInt8]
        let session: [UInt8]
    }

    struct Inbound {
        var session: MegolmInboundSession
        let room: String
        var replay = ReplayWindow()
        /// The signed session key it was made from (kept for the client's store).
        let key: [UInt8]
        /// For this client's own sessions: when it made it (ms); 0 otherwise.
        var created: UInt64 = 0
        /// For this client's own sessions: the session's signature naming
        /// this client as its creator (sent with every share of it).
        var ownerSignature: [UInt8]?
        /// When a frame of it was last accepted (ms; 0: never, or before a restart).
        var lastSeen: UInt64 = 0
    }

    /// An inbound session as the client's store keeps it.
    public struct StoredInbound: Sendable {
        public let room: String
        public let sender: [UInt8]
        public let session: [UInt8]
        /// The signed Megolm session key (verified again when restored).
        public let key: [UInt8]
        /// The replay window (nil: none recorded yet).
        public let replay: [UInt8]?
        /// For this client's own sessions: when it made it (ms); 0 otherwise.
        public let created: UInt64
        /// For this client's own sessions: the session's owner signature.
        public let ownerSignature: [UInt8]?

        public init(room: String, sender: [UInt8], session: [UInt8], key: [UInt8], replay: [UInt8]?, created: UInt64, ownerSignature: [UInt8]?) {
            self.room = room
            self.sender = sender
            self.session = session
            self.key = key
            self.replay = replay
            self.created = created
            self.ownerSignature = ownerSignature
        }
    }

    struct StreamRef: Hashable {
        let sender: [UInt8]
        let stream: [UInt8]
    }

    public let identity: Identity
    private let senderKey: [UInt8]
    private let senderNKey: String
    /// Caps how many signed streams are tracked; beyond it the oldest
    /// half is forgotten (their frames are still bounded by the time window).
    static let maximumStreams = 10_000
    /// Largest body a compressed frame may expand to.
    public var maximumBody = 8 * 1024 * 1024

    public private(set) var rooms: [String: RoomInfo] = [:]
    /// room → current members' user nkeys.
    public private(set) var members: [String: Set<String>] = [:]
    public private(set) var outbound: [String: Outbound] = [:]
    private var inbound: [SessionRef: Inbound] = [:]
    /// Inbound sessions added, and replay windows changed, since the client last saved them.
    private var unsavedKeys: Set<SessionRef> = []
    private var unsavedReplay: Set<SessionRef> = []
    private var streams: [StreamRef: ReplayWindow] = [:]
    private var streamOrder: [StreamRef] = []
    /// This client's own signed-frame stream (random per process).
    private let stream: [UInt8] = Sodium.randomNonce(count: FrameEnvelope.streamLength)
    private var sequence: UInt64 = 0

    public init(identity: Identity) {
        self.identity = identity
        senderKey = identity.signing.publicKey.bytes
        senderNKey = identity.userNKey
    }

    // MARK: rooms and members

    /// A policy's seconds as milliseconds, clamped to [0, UInt64.max]: a
    /// policy from a node is input, whatever range the rules enforce.
    static func milliseconds(_ seconds: Int) -> UInt64 {
        guard seconds > 0 else { return 0 }
        let (value, overflow) = UInt64(seconds).multipliedReportingOverflow(by: 1000)
        return overflow ? .max : value
    }

    /// Takes the room's policy and live members. A member removed or revoked
    /// must not read what follows: the next send rotates. Members whose
    /// workload login merely expired (`expired`) are coalesced instead: the
    /// session rotates at the first send at least `expiryRotationInterval`
    /// after it was created, so a room of workloads on 5-minute logins
    /// rotates at most once per interval per sender, not at every expiry.
    /// (Nodes close an expired workload's connections at once and refuse it
    /// the room's subject; the interval bounds only what it could read of
    /// ciphertext obtained some other way.) `nextExpiry` is the earliest
    /// login expiry among the members (Unix seconds), when any.
    public func setRoom(_ room: RoomInfo, members: Set<String>, expired: Set<String> = [], nextExpiry: Int64? = nil,
                        now: UInt64 = 0, expiryRotationInterval: UInt64 = 60_000) {
        rooms[room.id] = room
        let before = self.members[room.id] ?? []
        self.members[room.id] = members
        self.nextExpiry[room.id] = nextExpiry
        let departed = before.subtracting(members)
        guard !departed.isEmpty, let current = outbound[room.id] else { return }
        if departed.isSubset(of: expired) {
            let due = max(now, current.created.addingSaturated(expiryRotationInterval))
            current.rotateAt = min(current.rotateAt ?? .max, due)
        } else {
            current.mustRotate = true
        }
    }

    /// The earliest workload login expiry among each room's members (Unix
    /// seconds): the client re-reads the room's members once it passes.
    public private(set) var nextExpiry: [String: Int64] = [:]

    public func forgetRoom(_ id: String) {
        rooms[id] = nil
        members[id] = nil
        nextExpiry[id] = nil
        outbound[id] = nil
        inbound = inbound.filter { $0.value.room != id }
        unsavedKeys = unsavedKeys.filter { inbound[$0] != nil }
        unsavedReplay = unsavedReplay.filter { inbound[$0] != nil }
    }

    // MARK: the client's store

    /// What changed since the last save: new sessions (with their windows)
    /// and changed replay windows. Taken, then put back if saving failed.
    public struct Unsaved {
        public let inbound: [StoredInbound]
        public let replay: [(sender: [UInt8], session: [UInt8], replay: [UInt8])]
        fileprivate let keys: Set<SessionRef>
        fileprivate let windows: Set<SessionRef>
        public var isEmpty: Bool { keys.isEmpty && windows.isEmpty }
    }

    public func takeUnsaved() -> Unsaved {
        let keys = unsavedKeys, windows = unsavedReplay
        unsavedKeys = []
        unsavedReplay = []
        let sessions = self.inbound
        let inbound = keys.compactMap { ref -> StoredInbound? in
            sessions[ref].map { StoredInbound(room: $0.room, sender: ref.sender, session: ref.session, key: $0.key, replay: $0.replay.encoded,
                                             created: $0.created, ownerSignature: $0.ownerSignature) }
        }
        let replay = windows.subtracting(keys).compactMap { ref in sessions[ref].map { (ref.sender, ref.session, $0.replay.encoded) } }
        return Unsaved(inbound: inbound, replay: replay, keys: keys, windows: windows)
    }

    /// Marks what `takeUnsaved` returned as unsaved again (the save failed).
    public func putBack(_ unsaved: Unsaved) {
        unsavedKeys.formUnion(unsaved.keys.filter { inbound[$0] != nil })
        unsavedReplay.formUnion(unsaved.windows.filter { inbound[$0] != nil })
    }

    /// Puts back a session from the client's store: the key is verified
    /// again (a store is input too) and must name `session`; an earlier
    /// starting index already held wins.
    @discardableResult
    public func restoreInbound(_ stored: StoredInbound) -> Bool {
        guard let key = try? MegolmSessionKey(bytes: stored.key), key.signingKey.bytes == stored.session,
              stored.sender.count == FrameEnvelope.keyLength, MembershipState.isValidRoomID(stored.room) else { return false }
        let ref = SessionRef(sender: stored.sender, session: stored.session)
        if let existing = inbound[ref], existing.session.firstKnownIndex <= key.index { return true }
        var entry = Inbound(session: MegolmInboundSession(sessionKey: key), room: stored.room, key: stored.key)
        entry.replay = window(for: stored.room, floor: key.index)
        if stored.sender == senderKey, let signature = stored.ownerSignature,
           key.signingKey.verify(signature: signature, message: KeyShare.ownerStatement(room: stored.room, sessionID: Base64.encode(stored.session), owner: senderNKey)) {
            entry.created = stored.created
            entry.ownerSignature = signature
        }
        if let bytes = stored.replay, let window = ReplayWindow(encoded: bytes) { entry.replay = window }
        inbound[ref] = entry
        return true
    }

    // MARK: sending

    /// The outbound session to use for `room` now, or nil when a new one must
    /// be created and shared first (none yet, a member left, or the room's
    /// message count or age limit was reached).
    public func currentOutbound(for room: String, now: UInt64) -> Outbound? {
        guard let current = outbound[room], let info = rooms[room] else { return nil }
        if current.mustRotate || current.sent >= info.policy.rotateAfterMessages { return nil }
        if let rotateAt = current.rotateAt, now >= rotateAt { return nil }
        if now >= current.created.addingSaturated(Self.milliseconds(info.policy.rotateAfterSeconds)) { return nil }
        if current.session.messageIndex == UInt32.max { return nil }
        return current
    }

    /// Starts a new outbound session for `room` (the caller shares it before
    /// sending) and keeps its key as an inbound session, so this client can
    /// read its own messages.
    public func rotate(room: String, now: UInt64) -> Outbound {
        let fresh = Outbound(created: now, sender: senderKey)
        outbound[room] = fresh
        let key = fresh.session.sessionKey
        let ref = SessionRef(sender: senderKey, session: key.signingKey.bytes)
        var entry = Inbound(session: MegolmInboundSession(sessionKey: key), room: room, key: key.bytes)
        entry.replay = window(for: room)
        entry.created = now
        entry.ownerSignature = ownerSignature(fresh, room: room)
        inbound[ref] = entry
        unsavedKeys.insert(ref)
        return fresh
    }

    /// The session's own signature that this identity created it for `room`
    /// (sent with every share of it; see `KeyShare.ownerStatement`).
    public func ownerSignature(_ outbound: Outbound, room: String) -> [UInt8] {
        outbound.session.signStatement(KeyShare.ownerStatement(room: room, sessionID: outbound.session.sessionID, owner: senderNKey)) ?? []
    }

    /// The sealed, signed share of `outbound`'s key (at its current index) for
    /// one recipient: what `POST /v1/rooms/{id}/key-shares` carries.
    public func share(_ outbound: Outbound, room: String, recipient: String, exchangeKey: X25519PublicKey) -> (sealed: [UInt8], signature: [UInt8]) {
        var key = outbound.session.sessionKey.bytes
        defer { wipe(&key) }
        let sealed = SealedBox.seal(key, to: exchangeKey)
        let signature = identity.sign(KeyShare.signedBytes(room: room, sessionID: outbound.session.sessionID, recipient: recipient, sealed: sealed))
        return (sealed, signature)
    }

    /// Seals one message for `room` according to its policy. Encrypted rooms
    /// need a current outbound session (see `currentOutbound`); there is no
    /// path from an encrypted room to a plaintext frame.
    public func seal(room: String, contentType: String, body: [UInt8], now: UInt64) throws(SealError) -> [UInt8] {
        guard let info = rooms[room] else { throw .invalid("room \(room) is not open in this client") }
        guard contentType.utf8.count <= InnerFrame.maximumContentTypeLength else {
            throw .invalid("content type is longer than \(InnerFrame.maximumContentTypeLength) bytes")
        }
        let compressed = info.policy.compress && !body.isEmpty
        let inner = InnerFrame(room: room, timestamp: now, contentType: contentType, compressed: compressed,
                               body: compressed ? Zstd.compress(body) : body)
        if info.policy.encrypt {
            guard let current = currentOutbound(for: room, now: now) else { throw .noSession(room: room) }
            // One allocation: the envelope header, then the Megolm message
            // encrypted from a temporary, zeroed copy of the inner frame.
            let frame: [UInt8]? = inner.withEncoded { plaintext in
                current.frameHeader.withUnsafeBytes { header in
                    try? current.session.encrypt(plaintext, after: header).bytes
                }
            }
            guard let frame else { throw .exhausted }
            current.sent += 1
            return frame
        }
        let plaintext = inner.encoded()
        if info.policy.sign {
            sequence += 1
            var frame = FrameEnvelope.encodeSignedUnsigned(sender: senderKey, stream: stream, sequence: sequence, inner: plaintext)
            frame += identity.sign(frame)
            return frame
        }
        return FrameEnvelope.encodePlain(sender: senderKey, inner: plaintext)
    }

    // MARK: receiving

    /// A fresh replay window for a session of `room` that starts at `floor`:
    /// in persisted rooms, where a frame missed live may come from a store
    /// later, as wide as a session's messages (the room's rotation), between
    /// 4,096 and 65,536 indices; 4,096 elsewhere.
    func window(for room: String, floor: UInt32 = 0) -> ReplayWindow {
        guard let policy = rooms[room]?.policy, policy.persist else { return ReplayWindow(floor: UInt64(floor)) }
        let span = UInt64(max(0, min(policy.rotateAfterMessages, Int(ReplayWindow.persistedSize))))
        return ReplayWindow(size: max(ReplayWindow.size, span + 64), floor: UInt64(floor))
    }

    /// When (ms) the oldest gap still open in `room`'s sessions opened, if
    /// any opened before `before`: a frame was skipped live, and the store has it.
    public func oldestGap(in room: String, openedBefore before: UInt64, openedAfter after: UInt64) -> UInt64? {
        inbound.values.compactMap { entry -> UInt64? in
            guard entry.room == room, entry.replay.gapStart != nil, entry.replay.gapSince > after, entry.replay.gapSince < before else { return nil }
            return entry.replay.gapSince
        }.min()
    }

    /// Forgets gaps in `room` opened before `before` (the store was asked
    /// for them and had nothing: they were never stored).
    public func retireGaps(in room: String, openedBefore before: UInt64) {
        for (ref, entry) in inbound where entry.room == room && entry.replay.gapStart != nil && entry.replay.gapSince < before {
            inbound[ref]?.replay.retireGap()
        }
    }

    /// For each Megolm session of `room` this client holds: below which index
    /// everything was delivered (or can no longer be), for a resume to skip.
    public func deliveredBelow(in room: String, activeSince: UInt64 = 0, limit: Int = 300) -> [(sender: [UInt8], session: [UInt8], below: UInt64)] {
        let active = inbound.filter { $0.value.room == room && $0.value.lastSeen >= activeSince && $0.value.replay.top > 0 }
            .sorted { $0.value.lastSeen > $1.value.lastSeen }.prefix(limit)
        return active.compactMap { ref, entry in
            let below = entry.replay.deliveredBelow
            return below > 0 ? (ref.sender, ref.session, below) : nil
        }
    }

    /// This client's own sessions in `room` (the current one too), each from
    /// the index it started at, with when each was made: what a
    /// `shared`-history room's newcomers get.
    public func ownSessions(in room: String) -> [(sessionID: String, created: UInt64, key: MegolmSessionKey, ownerSignature: [UInt8])] {
        inbound.compactMap { ref, entry in
            guard ref.sender == senderKey, entry.room == room, entry.created > 0,
                  let signature = entry.ownerSignature, let key = try? MegolmSessionKey(bytes: entry.key) else { return nil }
            return (Base64.encode(ref.session), entry.created, key, signature)
        }.sorted { $0.created < $1.created }
    }

    /// A sealed, signed share of one of this client's past sessions (at the
    /// index it started from) for `recipient`, with the session's owner signature.
    public func sharePast(_ key: MegolmSessionKey, room: String, recipient: String, exchangeKey: X25519PublicKey) -> (sealed: [UInt8], signature: [UInt8]) {
        let sessionID = Base64.encode(key.signingKey.bytes)
        var bytes = key.bytes
        defer { wipe(&bytes) }
        let sealed = SealedBox.seal(bytes, to: exchangeKey)
        let signature = identity.sign(KeyShare.signedBytes(room: room, sessionID: sessionID, recipient: recipient, sealed: sealed))
        return (sealed, signature)
    }

    /// Accepts a key share addressed to this client: checks the sender's
    /// signature and membership, that the session's own key names the sender
    /// as its creator (so frames are attributed to whoever holds the
    /// session's signing key, and nobody can re-share another member's
    /// session under their own name), opens the sealed box, and keeps the
    /// session (an earlier starting index already held wins, as in Megolm).
    public func acceptShare(room: String, sender: String, sessionID: String, sealed: [UInt8], signature: [UInt8],
                            sessionSignature: [UInt8]) throws(KeyShareError) {
        guard members[room]?.contains(sender) == true else { throw .senderNotMember }
        let share = KeyShare(id: "", room: room, sender: sender, recipient: senderNKey, sessionID: sessionID,
                             sealed: sealed, signature: signature, created: "", sessionSignature: sessionSignature)
        guard share.isSignedBySender else { throw .badSignature }
        guard share.isOwnedBySender else { throw .notSessionOwner }
        var opened: [UInt8]
        do { opened = try SealedBox.open(sealed, with: identity.keyExchange) } catch { throw .cannotOpen }
        defer { wipe(&opened) }
        let key: MegolmSessionKey
        do { key = try MegolmSessionKey(bytes: opened) } catch { throw .badSessionKey }
        guard key.sessionID == sessionID, let (_, senderKey) = try? NKey.decodePublicKey(sender, expecting: .user) else { throw .badSessionKey }
        let ref = SessionRef(sender: senderKey.bytes, session: key.signingKey.bytes)
        if let existing = inbound[ref], existing.session.firstKnownIndex <= key.index, existing.room == room { return }
        var entry = Inbound(session: MegolmInboundSession(sessionKey: key), room: room, key: opened)
        entry.replay = window(for: room, floor: key.index)
        // An earlier start of a session held already (shared history): what was delivered stays delivered.
        if let existing = inbound[ref], existing.room == room { entry.replay = existing.replay }
        inbound[ref] = entry
        unsavedKeys.insert(ref)
    }

    /// How a frame reached the client.
    public enum Arrival: Sendable, Equatable {
        /// On the room's subject, now: every check, and it is recorded (replay).
        case live
        /// From a node's store while resuming (first stored at `firstStored`,
        /// ms): like `live`, but its sender's time is judged against when it
        /// was stored rather than now (it may have waited there); the replay
        /// window still drops what was delivered already.
        case stored(firstStored: UInt64, notBefore: UInt64)
        /// Read back as history: nothing is recorded, no replay or time
        /// check (the reader asked for old frames), and a sender who has
        /// since left still counts when its session came in a verified share.
        case history
    }

    /// Judges one frame that arrived on `room`'s subject at `now` (ms).
    /// Order: envelope, policy, membership, session, replay pre-check,
    /// signature+MAC+decrypt, inner frame, room, time window, replay record.
    /// Nothing is recorded unless the frame is delivered.
    public func open(_ bytes: [UInt8], room: String, now: UInt64, arrival: Arrival = .live, arrivedAt: UInt64? = nil) -> Result<OpenedFrame, FrameRejection> {
        guard let info = rooms[room] else { return .failure(.wrongRoom) }
        let envelope: FrameEnvelope
        do {
            envelope = try FrameEnvelope(decoding: bytes)
        } catch {
            if case .unknownVersion = error { return .failure(.unknownVersion) }
            return .failure(.malformed)
        }
        let expected: FrameKind = info.policy.encrypt ? .megolm : (info.policy.sign ? .signed : .plain)
        guard envelope.kind == expected else { return .failure(.policyMismatch) }
        guard let senderKey = Ed25519PublicKey(bytes: envelope.sender) else { return .failure(.malformed) }
        let sender = NKey.encodePublicKey(senderKey, type: .user)
        if members[room]?.contains(sender) != true {
            // History: a former member's frames read with the session it shared while a member.
            guard case .history = arrival, case .megolm(let session, _) = envelope.body,
                  inbound[SessionRef(sender: envelope.sender, session: session)]?.room == room else { return .failure(.nonMember) }
        }

        let innerBytes: [UInt8]
        let protection: FrameProtection
        enum Record { case megolm(SessionRef, UInt32), stream(StreamRef, UInt64), none }
        let record: Record
        switch envelope.body {
        case .megolm(let sessionKey, let messageBytes):
            let ref = SessionRef(sender: envelope.sender, session: sessionKey)
            guard var entry = inbound[ref] else { return .failure(.unknownSession) }
            guard entry.room == room else { return .failure(.wrongRoom) }
            let message: MegolmMessage
            do { message = try MegolmMessage(bytes: Array(messageBytes)) } catch {
                if case .badVersion = error { return .failure(.unknownVersion) }
                return .failure(.malformed)
            }
            if case .history = arrival {} else {
                guard entry.replay.isFresh(UInt64(message.index)) else { return .failure(.replay) }
            }
            do {
                innerBytes = try entry.session.decrypt(message).plaintext
            } catch {
                switch error {
                case .badSignature: return .failure(.badSignature)
                case .badMAC: return .failure(.badMAC)
                case .unknownIndex: return .failure(.unknownSession)
                default: return .failure(.malformed)
                }
            }
            if case .history = arrival {} else { inbound[ref] = entry }   // keep the advanced ratchet cache
            protection = .encrypted
            record = .megolm(ref, message.index)
        case .signed(let stream, let sequence, let inner, let signature, let signedRange):
            let valid = bytes.withUnsafeBytes { raw in
                signature.withUnsafeBytes { sig in
                    senderKey.verify(signature: sig, message: UnsafeRawBufferPointer(rebasing: raw[signedRange]))
                }
            }
            guard valid else { return .failure(.badSignature) }
            let ref = StreamRef(sender: envelope.sender, stream: stream)
            if case .history = arrival {} else {
                guard streams[ref]?.isFresh(sequence) ?? true else { return .failure(.replay) }
            }
            innerBytes = Array(inner)
            protection = .signed
            record = .stream(ref, sequence)
        case .plain(let inner):
            innerBytes = Array(inner)
            protection = .none
            record = .none
        }

        let inner: InnerFrame
        do { inner = try InnerFrame(decoding: innerBytes) } catch { return .failure(.malformed) }
        guard inner.room == room else { return .failure(.wrongRoom) }
        // Both timestamps may be anything a sender wrote: compare by distance, which cannot overflow.
        switch arrival {
        case .live:
            let distance = inner.timestamp > now ? inner.timestamp - now : now - inner.timestamp
            guard distance <= Self.milliseconds(info.policy.frameWindowSeconds) else { return .failure(.outsideWindow) }
        case .stored(let firstStored, let notBefore):
            // A frame back-dated by its sender (which live receivers refuse)
            // is refused from the store too, and so is one dated before the
            // gap being read (a node cannot pass an old frame off as missed).
            let distance = inner.timestamp > firstStored ? inner.timestamp - firstStored : firstStored - inner.timestamp
            guard distance <= Self.milliseconds(info.policy.frameWindowSeconds), inner.timestamp >= notBefore else { return .failure(.outsideWindow) }
        case .history:
            break
        }
        var body = inner.body
        if inner.compressed {
            guard let expanded = Zstd.decompress(body, limit: maximumBody) else { return .failure(.malformed) }
            body = expanded
        }
        let fresh: Bool
        switch arrival == .history ? .none : record {
        case .megolm(let ref, let index):
            fresh = inbound[ref]?.replay.accept(UInt64(index), arrivedAt: arrivedAt ?? now) ?? false
            if fresh { inbound[ref]?.lastSeen = arrivedAt ?? now }
            if fresh { unsavedReplay.insert(ref) }
        case .stream(let ref, let sequence): fresh = acceptStream(ref, sequence)
        case .none: fresh = true
        }
        guard fresh else { return .failure(.replay) }
        return .success(OpenedFrame(sender: sender, room: room, timestamp: inner.timestamp, contentType: inner.contentType,
                                    body: body, protection: protection))
    }

    private func acceptStream(_ ref: StreamRef, _ sequence: UInt64) -> Bool {
        if streams[ref] == nil {
            if streams.count >= Self.maximumStreams {
                for old in streamOrder.prefix(Self.maximumStreams / 2) { streams[old] = nil }
                streamOrder.removeFirst(Self.maximumStreams / 2)
            }
            streams[ref] = ReplayWindow()
            streamOrder.append(ref)
        }
        return streams[ref]?.accept(sequence) ?? false
    }
}

/// Why a key share was not accepted.
public enum KeyShareError: Error, Equatable, Sendable, CustomStringConvertible {
    case senderNotMember
    case badSignature
    case cannotOpen
    case badSessionKey
    case notSessionOwner

    public var description: String {
        switch self {
        case .senderNotMember: return "the share's sender is not a member of the room"
        case .badSignature: return "the share is not signed by its sender"
        case .cannotOpen: return "the share is not sealed to this identity's exchange key"
        case .badSessionKey: return "the share does not hold a valid Megolm session key for its session id"
        case .notSessionOwner: return "the session's own key does not name the share's sender as its creator (a re-shared session)"
        }
    }
}

extension UInt64 {
    /// `self + other`, stopping at `UInt64.max` instead of trapping.
    func addingSaturated(_ other: UInt64) -> UInt64 {
        let (sum, overflow) = addingReportingOverflow(other)
        return overflow ? .max : sum
    }
}
