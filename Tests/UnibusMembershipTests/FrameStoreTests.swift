import Foundation
import Testing
import UnibusCrypto
import UnibusMembership
import UnibusMembershipStore
import UnibusPersistence
import UnibusWire

/// The node's frame store and the pure checks in front of it: what is
/// stored, once; what retention removes; what anti-entropy offers; and what
/// hostile replication bytes get.
@Suite("Persisted frames")
struct FrameStoreTests {
    let admin = Identity()
    let alice = Identity()

    /// A state with a persisted room "p" whose members are the admin and Alice.
    func state(_ policy: RoomPolicy = RoomPolicy(persist: true)) throws -> MembershipState {
        var state = MembershipState()
        for (user, handle, role) in [(admin, "root", UserRole.admin), (alice, "alice", .member)] {
            try state.apply(.sign(.addUser(key: user.userNKey, exchangeKey: Base64.encode(user.keyExchange.publicKey.bytes), handle: handle, role: role),
                                  by: admin))
        }
        try state.apply(.sign(.createRoom(id: "p", subject: "rooms.p", policy: policy), by: admin))
        try state.apply(.sign(.addMember(room: "p", user: alice.userNKey, role: .member), by: admin))
        return state
    }

    /// `count` Megolm frames by `sender` in one session.
    func frames(_ count: Int, by sender: Identity) throws -> [[UInt8]] {
        let session = MegolmOutboundSession()
        let header = FrameEnvelope.megolmHeader(sender: sender.signing.publicKey.bytes, sessionKey: session.signingKey.bytes)
        return try (0..<count).map { number in
            let plaintext = InnerFrame(room: "p", timestamp: 1, contentType: "text/plain", compressed: false, body: Array("m\(number)".utf8)).encoded()
            return header + (try session.encrypt(plaintext)).bytes
        }
    }

    func store() throws -> FrameStore {
        let directory = NSTemporaryDirectory() + "unibus-frames-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        return try FrameStore(directory: directory)
    }

    @Test func onlySignedFramesOfMembersAreAcceptedAndEachIsStoredOnce() throws {
        let state = try state()
        let good = try frames(2, by: alice)
        let verified = try FrameVerifier.verify(good[0], room: "p", in: state, publisher: alice.userNKey)
        #expect(verified.id.index == 0 && verified.senderNKey == alice.userNKey)
        // Published by someone else than the envelope names.
        #expect(throws: FrameStorageError.senderMismatch) { try FrameVerifier.verify(good[0], room: "p", in: state, publisher: admin.userNKey) }
        // A non-member's frames.
        let outsider = Identity()
        #expect(throws: FrameStorageError.notAMember(outsider.userNKey)) { try FrameVerifier.verify(try frames(1, by: outsider)[0], room: "p", in: state) }
        // Any flipped bit in the Megolm message: its signature no longer verifies.
        for position in [40, 80, good[0].count - 1] {
            var forged = good[0]
            forged[position] ^= 0x20
            #expect(throws: FrameStorageError.self) { try FrameVerifier.verify(forged, room: "p", in: state) }
        }
        #expect(throws: FrameStorageError.notPersisted("q")) { try FrameVerifier.verify(good[0], room: "q", in: state) }

        let store = try store()
        let now = UInt64(Date().timeIntervalSince1970 * 1000)
        let inserts = try good.map { FrameStore.Insert(room: "p", frame: try FrameVerifier.verify($0, room: "p", in: state), firstStored: now) }
        #expect(try store.insert(inserts + inserts) == [true, true, false, false])
        #expect(store.usage(of: "p") == FrameStore.Usage(count: 2, bytes: good[0].count + good[1].count))
    }

    @Test func retentionByAgeCountAndBytesAndTheHorizonItSets() throws {
        let state = try state()
        let store = try store()
        let now = UInt64(Date().timeIntervalSince1970 * 1000)
        let all = try frames(10, by: alice)
        // Frames 0-3 are two hours old, the rest new.
        let inserts = try all.enumerated().map { number, bytes in
            FrameStore.Insert(room: "p", frame: try FrameVerifier.verify(bytes, room: "p", in: state),
                              firstStored: number < 4 ? now - 7_200_000 : now - UInt64(10 - number))
        }
        _ = try store.insert(inserts)
        #expect(try store.applyRetention(room: "p", policy: RoomPolicy(persist: true, retainAgeSeconds: 3600), now: now) == 4)
        #expect(store.usage(of: "p").count == 6)
        // Six frames of equal size over a 1 KiB bound: the oldest go until it holds.
        let size = all[0].count
        let fit = 1024 / size
        #expect(6 * size > 1024)
        #expect(try store.applyRetention(room: "p", policy: RoomPolicy(persist: true, retainBytes: 1024), now: now) == 6 - fit)
        #expect(store.usage(of: "p") == FrameStore.Usage(count: fit, bytes: fit * size))
        #expect(try store.applyRetention(room: "p", policy: RoomPolicy(persist: true, retainMessages: 3), now: now) == fit - 3)
        let left = try store.page(room: "p", order: .oldestFirst(after: nil, since: 0), limit: 100, maxBytes: 1 << 20)
        #expect(left.map(\.id.index) == [7, 8, 9])
        // At its count limit, the horizon is the oldest frame held: nothing older is offered or taken.
        let policy = RoomPolicy(persist: true, retainMessages: store.usage(of: "p").count)
        let oldest = try #require(try store.page(room: "p", order: .oldestFirst(after: nil, since: 0), limit: 1, maxBytes: 1 << 20).first)
        #expect(try store.horizon(room: "p", policy: policy, now: now) == oldest.firstStored)
        #expect(try store.horizon(room: "p", policy: RoomPolicy(persist: true, retainAgeSeconds: 3600), now: now) == now - 3_600_000)
    }

    @Test func pagesRunBothWaysAndInventoriesListWhatIsMissing() throws {
        let state = try state()
        let store = try store()
        let now = UInt64(Date().timeIntervalSince1970 * 1000)
        let all = try frames(25, by: alice)
        _ = try store.insert(try all.map { FrameStore.Insert(room: "p", frame: try FrameVerifier.verify($0, room: "p", in: state), firstStored: now) })
        var newest: [UInt64] = []
        var before: Int64?
        while true {
            let page = try store.page(room: "p", order: .newestFirst(before: before), limit: 10, maxBytes: 1 << 20)
            guard let last = page.last else { break }
            newest += page.map(\.id.index)
            before = last.sequence
        }
        #expect(newest == Array((0..<25).reversed()).map(UInt64.init))
        // A peer holding 0-9 and 20: it lacks 10-19 and 21-24.
        let first = try FrameVerifier.verify(all[0], room: "p", in: state)
        let entry = FrameReplication.StreamRanges(sender: first.sender, stream: first.id.stream,
                                                  ranges: FrameReplication.StreamRanges.ranges(of: Array(0...9) + [20]))
        let missing = try store.missing(room: "p", held: [entry.key: entry], horizon: 0, after: 0, limit: 100)
        #expect(missing.frames.map { $0.id.index } == Array(10...19) + Array(21...24))
        // The same indices held from another sender (a re-wrapped copy) do not count.
        let other = FrameReplication.StreamRanges(sender: admin.signing.publicKey.bytes, stream: first.id.stream, ranges: [0...24])
        #expect(try store.missing(room: "p", held: [other.key: other], horizon: 0, after: 0, limit: 100).frames.count == 25)
        let inventory = try store.inventory(room: "p", horizon: 0)
        #expect(inventory.count == 1 && inventory[0].first?.ranges == [0...24] && inventory[0].first?.sender == first.sender)
        // Nothing below the receiver's horizon is offered.
        #expect(try store.missing(room: "p", held: [:], horizon: now + 1, after: 0, limit: 100).frames.isEmpty)
    }

    @Test func mergedInventoryEntriesStaySortedAndDisjoint() {
        let a = FrameReplication.StreamRanges(sender: [1], stream: [2], ranges: [10...12, 20...30])
        let b = FrameReplication.StreamRanges(sender: [1], stream: [2], ranges: [0...3, 13...15, 25...40])
        let merged = a.merged(with: b)
        #expect(merged.ranges == [0...3, 10...15, 20...40])
        for index: UInt64 in [0, 3, 10, 15, 20, 40] { #expect(merged.contains(index)) }
        for index: UInt64 in [4, 9, 16, 19, 41] { #expect(!merged.contains(index)) }
    }

    @Test func hostileReplicationMessagesAreRefusedByName() throws {
        let frame = try frames(1, by: alice)[0]
        let good = FrameReplication.frames(batch: 3, room: "p", frames: [.init(firstStored: 5, bytes: frame)])
        #expect(try FrameReplication(decoding: good.encoded) == good)
        let inventory = FrameReplication.inventory(room: "p", horizon: 9, last: true,
                                                   streams: [.init(sender: alice.signing.publicKey.bytes, stream: Array(frame[36..<68]), ranges: [0...4, 7...7])])
        #expect(try FrameReplication(decoding: inventory.encoded) == inventory)
        var cases: [([UInt8], String)] = []
        // Truncated at every length.
        for cut in [2, 3, 4, 10, good.encoded.count - 1] { cases.append((Array(good.encoded.prefix(cut)), "truncated")) }
        // A frame length beyond the bound, a count beyond the bound, trailing bytes, a bad room, overlapping ranges.
        var huge = Array(good.encoded.prefix(4 + 8 + 2 + 2)) + [0, 0, 0, 0, 0, 0, 0, 5] + [0xFF, 0xFF, 0xFF, 0xFF]
        huge[4 + 8 + 2 + 1] = 1
        cases.append((huge, "a frame of"))
        var many = Array(good.encoded.prefix(4 + 8 + 2))
        many += [0xFF, 0xFF]
        cases.append((many, "more than"))
        cases.append((good.encoded + [0], "trailing"))
        cases.append((FrameReplication.frames(batch: 1, room: "bad room", frames: []).encoded, "room id"))
        var overlapping = Array(FrameReplication.inventory(room: "p", horizon: 0, last: true,
                                                           streams: [.init(sender: Array(repeating: 2, count: 32), stream: Array(repeating: 1, count: 16),
                                                                           ranges: [0...4, 6...8])]).encoded)
        overlapping[overlapping.count - 16 + 7] = 3   // second range starts at 3, inside the first
        cases.append((overlapping, "ascending"))
        cases.append(([0x55, 0x46, 9, 1], "version 9"))
        // An inventory's last flag is 0 or 1.
        var flag = inventory.encoded
        flag[4 + 2 + 8] = 7
        cases.append((flag, "last flag"))
        for (bytes, words) in cases {
            #expect(throws: FrameReplicationError.self) { try FrameReplication(decoding: bytes) }
            do { _ = try FrameReplication(decoding: bytes) } catch { #expect("\(error)".contains(words), "\(error)") }
        }
    }
}
