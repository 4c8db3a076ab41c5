import Foundation
import Testing
import UnibusCrypto
@testable import UnibusMembership
@testable import UnibusMembershipStore
import UnibusSQLite

private func addUser(_ user: Identity, handle: String, role: UserRole = .member) -> MembershipOperation {
    .addUser(key: user.userNKey, exchangeKey: Base64.encode(user.keyExchange.publicKey.bytes), handle: handle, role: role)
}

@Suite("Membership rules (the fold)")
struct MembershipStateTests {
    let admin = Identity()
    let alice = Identity()
    let bob = Identity()

    private func bootstrapped() throws -> MembershipState {
        var state = MembershipState()
        try state.apply(.sign(addUser(admin, handle: "root", role: .admin), by: admin))
        try state.apply(.sign(addUser(alice, handle: "alice"), by: admin))
        try state.apply(.sign(addUser(bob, handle: "bob"), by: admin))
        return state
    }

    @Test func genesisMustBeAnAdminAddingItself() throws {
        var state = MembershipState()
        #expect(throws: MembershipError.self) { try state.apply(.sign(addUser(alice, handle: "a"), by: admin)) }
        #expect(throws: MembershipError.self) { try state.apply(.sign(addUser(admin, handle: "a", role: .member), by: admin)) }
        #expect(throws: MembershipError.self) { try state.apply(.sign(.createRoom(id: "r", subject: "r", policy: RoomPolicy()), by: admin)) }
        try state.apply(.sign(addUser(admin, handle: "root", role: .admin), by: admin))
        #expect(state.users[admin.userNKey]?.role == .admin)
    }

    @Test func onlyAdminsAddUsersAndDuplicatesChangeNothing() throws {
        var state = try bootstrapped()
        let carol = Identity()
        #expect(throws: MembershipError.unauthorized("only an admin may add users")) {
            try state.apply(.sign(addUser(carol, handle: "carol"), by: alice))
        }
        let before = state
        #expect(throws: MembershipError.alreadyRegistered(alice.userNKey)) {
            try state.apply(.sign(addUser(alice, handle: "renamed", role: .admin), by: admin))
        }
        #expect(state == before, "an already-registered add must not flip role or handle")
        #expect(throws: MembershipError.self) {
            try state.apply(.sign(.addUser(key: "not-a-key", exchangeKey: "AAAA", handle: "x", role: .member), by: admin))
        }
    }

    @Test func revocationIsASoftFlagAndRevokedUsersCannotAct() throws {
        var state = try bootstrapped()
        try state.apply(.sign(.revokeUser(key: bob.userNKey), by: admin))
        #expect(state.users[bob.userNKey]?.status == .revoked)
        #expect(throws: MembershipError.unauthorized("\(bob.userNKey) is revoked")) {
            try state.apply(.sign(.createRoom(id: "r", subject: "rooms.r", policy: RoomPolicy()), by: bob))
        }
        #expect(throws: MembershipError.conflict("\(bob.userNKey) is already revoked")) {
            try state.apply(.sign(.revokeUser(key: bob.userNKey), by: admin))
        }
    }

    @Test func roomOwnersManageMembersOthersCannot() throws {
        var state = try bootstrapped()
        try state.apply(.sign(.createRoom(id: "ops", subject: "rooms.ops", policy: RoomPolicy()), by: alice))
        #expect(state.members["ops"]?[alice.userNKey]?.role == .owner)
        try state.apply(.sign(.addMember(room: "ops", user: bob.userNKey, role: .member), by: alice))
        let carol = Identity()
        try state.apply(.sign(addUser(carol, handle: "carol"), by: admin))
        #expect(throws: MembershipError.unauthorized("only the room's owner or an admin may add members to ops")) {
            try state.apply(.sign(.addMember(room: "ops", user: carol.userNKey, role: .member), by: bob))
        }
        try state.apply(.sign(.addMember(room: "ops", user: carol.userNKey, role: .member), by: admin))
        // A member may leave; may not remove another.
        #expect(throws: MembershipError.self) {
            try state.apply(.sign(.removeMember(room: "ops", user: carol.userNKey), by: bob))
        }
        try state.apply(.sign(.removeMember(room: "ops", user: bob.userNKey), by: bob))
        #expect(state.rooms(of: bob.userNKey).isEmpty)
        #expect(state.rooms(of: carol.userNKey).map(\.id) == ["ops"])
        try state.apply(.sign(.archiveRoom(id: "ops"), by: alice))
        #expect(state.rooms(of: carol.userNKey).isEmpty)
        #expect(throws: MembershipError.conflict("room ops is archived")) {
            try state.apply(.sign(.addMember(room: "ops", user: bob.userNKey, role: .member), by: alice))
        }
    }

    @Test func roomPolicyChanges() throws {
        var state = try bootstrapped()
        try state.apply(.sign(.createRoom(id: "p", subject: "rooms.p", policy: RoomPolicy()), by: alice))
        // Retention and history change by a signed operation; the owner or an admin only.
        let persisted = RoomPolicy(persist: true, retainAgeSeconds: 3600, retainMessages: 50, history: .shared)
        #expect(throws: MembershipError.unauthorized("only the room's owner or an admin may change its policy")) {
            try state.apply(.sign(.setRoomPolicy(room: "p", policy: persisted), by: bob))
        }
        try state.apply(.sign(.setRoomPolicy(room: "p", policy: persisted), by: alice))
        #expect(state.rooms["p"]?.policy == persisted)
        // Protection never changes in place: that would downgrade every member silently.
        #expect(throws: MembershipError.invalid("a room's protection (encrypt, sign) cannot change; create a new room instead")) {
            try state.apply(.sign(.setRoomPolicy(room: "p", policy: RoomPolicy(encrypt: false)), by: alice))
        }
    }

    @Test func policiesOfRoomsWithoutPersistenceKeepTheirBytes() throws {
        // Rooms made before persistence existed: their signed bytes must stay
        // canonical, so retention fields appear only for persisted rooms.
        let old = #"{"compress":false,"encrypt":true,"frameWindowSeconds":300,"persist":false,"rotateAfterMessages":1000,"rotateAfterSeconds":604800,"sign":true}"#
        let decoded = try JSONDecoder().decode(RoomPolicy.self, from: Data(old.utf8))
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        #expect(String(decoding: try encoder.encode(decoded), as: UTF8.self) == old)
        let persisted = RoomPolicy(persist: true)
        let text = String(decoding: try encoder.encode(persisted), as: UTF8.self)
        #expect(text.contains(#""history":"joined""#) && text.contains(#""retainMessages":1000000"#))
        #expect(try JSONDecoder().decode(RoomPolicy.self, from: Data(text.utf8)) == persisted)
        // A persisted policy without retention (what an old node signed when
        // persistence was refused) still decodes to the same bytes, so old logs
        // load, and the rules refuse it as they did then.
        let missing = old.replacingOccurrences(of: #""persist":false"#, with: #""persist":true"#)
        let legacy = try JSONDecoder().decode(RoomPolicy.self, from: Data(missing.utf8))
        #expect(String(decoding: try encoder.encode(legacy), as: UTF8.self) == missing)
        #expect(legacy.problem == "a persisted room's policy must name its retention and history")
    }

    @Test func roomValidation() throws {
        var state = try bootstrapped()
        // A persisted room needs an identity per frame: plain rooms cannot persist.
        try state.apply(.sign(.setClusterSettings(settings: ClusterSettings(allowUnencryptedRooms: true, maxRoomsPerUser: 100)), by: admin))
        #expect(throws: MembershipError.invalid("a persisted room must be encrypted or signed (plain frames have no identity to store and deduplicate by)")) {
            try state.apply(.sign(.createRoom(id: "p", subject: "rooms.p", policy: RoomPolicy(encrypt: false, sign: false, persist: true)), by: alice))
        }
        #expect(throws: MembershipError.invalid("retain_messages must be 1 to 1000000000")) {
            try state.apply(.sign(.createRoom(id: "p", subject: "rooms.p", policy: RoomPolicy(persist: true, retainMessages: 0)), by: alice))
        }
        try state.apply(.sign(.createRoom(id: "p", subject: "rooms.p", policy: RoomPolicy(persist: true, retainMessages: 10, history: .shared)), by: alice))
        #expect(state.rooms["p"]?.policy.history == .shared)
        #expect(throws: MembershipError.self) { try state.apply(.sign(.createRoom(id: "w", subject: "rooms.*", policy: RoomPolicy()), by: alice)) }
        #expect(throws: MembershipError.self) { try state.apply(.sign(.createRoom(id: "bad id", subject: "rooms.x", policy: RoomPolicy()), by: alice)) }
        try state.apply(.sign(.createRoom(id: "a", subject: "rooms.a", policy: RoomPolicy()), by: alice))
        #expect(throws: MembershipError.conflict("subject rooms.a overlaps room a's subject rooms.a (one may not equal or lie under the other)")) {
            try state.apply(.sign(.createRoom(id: "b", subject: "rooms.a", policy: RoomPolicy()), by: bob))
        }
    }

    /// No room reaches a reserved namespace or another open room's subject,
    /// either way round (`rooms` and `rooms.a` conflict; `roomsx` does not).
    @Test(arguments: ["unibus", "unibus.keys", "unibus.keys.UABC", "_INBOX", "_INBOX.x", "$SYS", "$SYS.REQ", "$JS.API", "$anything",
                      "rooms", "rooms.a.sub", "rooms.a", "rooms.b\r\nc", "rooms.b c", "rooms.b\tc", "rooms..b", "rooms.b.", ".rooms", "rooms.*", "rooms.>"])
    func reservedAndOverlappingSubjectsAreRefused(_ subject: String) throws {
        var state = try bootstrapped()
        try state.apply(.sign(.createRoom(id: "a", subject: "rooms.a", policy: RoomPolicy()), by: alice))
        let before = state
        #expect(throws: MembershipError.self) { try state.apply(.sign(.createRoom(id: "evil", subject: subject, policy: RoomPolicy()), by: bob)) }
        #expect(state == before)
    }

    @Test func neighbouringSubjectsAndArchivedRoomsDoNotConflict() throws {
        var state = try bootstrapped()
        try state.apply(.sign(.createRoom(id: "a", subject: "rooms.a", policy: RoomPolicy()), by: alice))
        try state.apply(.sign(.createRoom(id: "ax", subject: "rooms.ax", policy: RoomPolicy()), by: alice))
        try state.apply(.sign(.createRoom(id: "x", subject: "roomsx", policy: RoomPolicy()), by: alice))
        try state.apply(.sign(.createRoom(id: "u", subject: "unibusx", policy: RoomPolicy()), by: alice))
        try state.apply(.sign(.archiveRoom(id: "a"), by: alice))
        try state.apply(.sign(.createRoom(id: "a2", subject: "rooms.a.sub", policy: RoomPolicy()), by: bob))
    }

    /// Values clients multiply into milliseconds are bounded by the rules.
    @Test func policyRangesAreEnforced() throws {
        var state = try bootstrapped()
        for policy in [RoomPolicy(rotateAfterMessages: 0), RoomPolicy(rotateAfterMessages: Int.max), RoomPolicy(rotateAfterSeconds: -1),
                       RoomPolicy(rotateAfterSeconds: Int.max), RoomPolicy(frameWindowSeconds: 0), RoomPolicy(frameWindowSeconds: Int.max / 1000 + 1),
                       RoomPolicy(frameWindowSeconds: Int.max)] {
            #expect(throws: MembershipError.self) { try state.apply(.sign(.createRoom(id: "p", subject: "rooms.p", policy: policy), by: alice)) }
        }
        try state.apply(.sign(.createRoom(id: "p", subject: "rooms.p", policy: RoomPolicy(rotateAfterSeconds: 366 * 24 * 3600,
                                                                                          frameWindowSeconds: 7 * 24 * 3600)), by: alice))
    }

    /// Unencrypted rooms and the rooms-per-user limit are cluster-wide
    /// settings an admin signs into the log, applied by the fold itself.
    @Test func clusterSettingsDecideUnencryptedRoomsAndRoomLimits() throws {
        var state = try bootstrapped()
        #expect(throws: MembershipError.self) {
            try state.apply(.sign(.createRoom(id: "plain", subject: "rooms.plain", policy: RoomPolicy(encrypt: false)), by: alice))
        }
        #expect(throws: MembershipError.self) {
            try state.apply(.sign(.setClusterSettings(settings: ClusterSettings(allowUnencryptedRooms: true, maxRoomsPerUser: 2)), by: alice))
        }
        try state.apply(.sign(.setClusterSettings(settings: ClusterSettings(allowUnencryptedRooms: true, maxRoomsPerUser: 2)), by: admin))
        try state.apply(.sign(.createRoom(id: "plain", subject: "rooms.plain", policy: RoomPolicy(encrypt: false)), by: alice))
        try state.apply(.sign(.createRoom(id: "two", subject: "rooms.two", policy: RoomPolicy()), by: alice))
        #expect(throws: MembershipError.self) { try state.apply(.sign(.createRoom(id: "three", subject: "rooms.three", policy: RoomPolicy()), by: alice)) }
        try state.apply(.sign(.archiveRoom(id: "two"), by: alice))
        try state.apply(.sign(.createRoom(id: "three", subject: "rooms.three", policy: RoomPolicy()), by: alice))
        // Admins are not limited.
        for index in 0..<3 { try state.apply(.sign(.createRoom(id: "admin\(index)", subject: "admin.\(index)", policy: RoomPolicy()), by: admin)) }
        #expect(throws: MembershipError.self) {
            try state.apply(.sign(.setClusterSettings(settings: ClusterSettings(allowUnencryptedRooms: true, maxRoomsPerUser: 0)), by: admin))
        }
    }

    @Test func signaturesAreCheckedOnTheExactBytes() throws {
        let signed = SignedOperation.sign(.revokeUser(key: bob.userNKey), by: admin)
        #expect(try SignedOperation(bytes: signed.bytes, signature: signed.signature) == signed)
        var tampered = signed.bytes
        tampered[tampered.count / 2] ^= 0x01
        #expect(throws: MembershipError.self) { try SignedOperation(bytes: tampered, signature: signed.signature) }
        #expect(throws: MembershipError.badSignature) {
            try SignedOperation(bytes: signed.bytes, signature: admin.sign([1, 2, 3]))
        }
        #expect(throws: MembershipError.invalid("not a membership operation document")) {
            try SignedOperation(bytes: Array("{}".utf8), signature: [])
        }
    }
}

@Suite("Membership store (SQLite)")
struct MembershipStoreTests {
    let directory = NSTemporaryDirectory() + "unibus-membership-\(UUID().uuidString)"
    let admin = Identity()
    let alice = Identity()

    private func populate(_ store: MembershipStore) throws {
        try store.append(store.signed(addUser(admin, handle: "root", role: .admin), by: admin))
        try store.append(store.signed(addUser(alice, handle: "alice"), by: admin))
        try store.append(store.signed(.createRoom(id: "ops", subject: "rooms.ops", policy: RoomPolicy()), by: alice))
        try store.append(store.signed(.addMember(room: "ops", user: admin.userNKey, role: .member), by: alice))
        try store.append(store.signed(.setMemberRole(room: "ops", user: admin.userNKey, role: .owner), by: alice))
        try store.append(store.signed(.revokeUser(key: alice.userNKey), by: admin))
    }

    @Test func stateSurvivesReopenAndTablesAreTheFoldOfTheLog() throws {
        let store = try MembershipStore(directory: directory)
        try populate(store)
        let expected = store.snapshot
        #expect(store.operationCount == 6)

        let reopened = try MembershipStore(directory: directory)
        #expect(reopened.snapshot == expected)
        var replayed = MembershipState()
        for operation in try reopened.operations() { try replayed.apply(operation) }
        #expect(replayed == expected)
        let attributes = try FileManager.default.attributesOfItem(atPath: directory + "/" + MembershipStore.fileName)
        #expect(attributes[.posixPermissions] as? Int == 0o600)
    }

    @Test func refusedOperationsLeaveNoTrace() throws {
        let store = try MembershipStore(directory: directory)
        try populate(store)
        let before = store.snapshot
        #expect(throws: MembershipError.alreadyRegistered(admin.userNKey)) {
            try store.append(store.signed(addUser(admin, handle: "again", role: .member), by: admin))
        }
        #expect(store.snapshot == before)
        #expect(store.operationCount == 6)
    }

    /// Revoking removes a user from every room; adding the key again (a new
    /// operation, history kept) reinstates it, active and in no room.
    @Test func aRevokedUserIsRemovedFromRoomsAndCanBeReinstated() throws {
        let store = try MembershipStore(directory: directory)
        try populate(store)   // alice created "ops" and was then revoked
        #expect(store.snapshot.members["ops"]?[alice.userNKey] == nil)
        try store.append(store.signed(addUser(alice, handle: "alice2"), by: admin))
        let user = try #require(store.snapshot.users[alice.userNKey])
        #expect(user.status == .active && user.handle == "alice2")
        #expect(store.snapshot.rooms(of: alice.userNKey).isEmpty)
        #expect(throws: MembershipError.alreadyRegistered(alice.userNKey)) {
            try store.append(store.signed(addUser(alice, handle: "alice3"), by: admin))
        }
    }

    @Test func aDamagedLogIsReportedNotIgnored() throws {
        let store = try MembershipStore(directory: directory)
        try populate(store)
        let database = try SQLiteDatabase(path: directory + "/" + MembershipStore.fileName)
        try database.execute("UPDATE log SET signature = zeroblob(64) WHERE seq = 3")
        #expect(throws: MembershipError.storage("operation 3 in the log does not replay (the operation's signature does not verify against its actor's key); the database is damaged")) {
            try MembershipStore(directory: directory)
        }
    }
}
