import Foundation
import Testing
@testable import UnibusClient
import UnibusControlClient
import UnibusCrypto
import UnibusMembership
import UnibusMembershipStore
import UnibusWire

/// The frame cryptography alone: two or three keyrings, no node.
@Suite("Room keyring")
struct KeyringTests {
    let alice = Identity()
    let bob = Identity()
    let carol = Identity()
    let now: UInt64 = 1_800_000_000_000

    func room(_ policy: RoomPolicy = RoomPolicy()) -> RoomInfo {
        RoomInfo(id: "ops", subject: "rooms.ops", owner: alice.userNKey, policy: policy)
    }

    /// Alice's keyring with a fresh session shared to Bob's (and Carol's).
    func pair(_ policy: RoomPolicy = RoomPolicy(), members extra: [Identity] = []) -> (RoomKeyring, RoomKeyring, [RoomKeyring]) {
        let everyone = [alice, bob] + extra
        let members = Set(everyone.map(\.userNKey))
        let sender = RoomKeyring(identity: alice)
        sender.setRoom(room(policy), members: members)
        let receivers = everyone.dropFirst().map { identity -> RoomKeyring in
            let keyring = RoomKeyring(identity: identity)
            keyring.setRoom(room(policy), members: members)
            return keyring
        }
        if policy.encrypt {
            let outbound = sender.rotate(room: "ops", now: now)
            for (identity, keyring) in zip(everyone.dropFirst(), receivers) {
                let share = sender.share(outbound, room: "ops", recipient: identity.userNKey, exchangeKey: identity.keyExchange.publicKey)
                #expect(throws: Never.self) {
                    try keyring.acceptShare(room: "ops", sender: alice.userNKey, sessionID: outbound.session.sessionID,
                                            sealed: share.sealed, signature: share.signature, sessionSignature: sender.ownerSignature(outbound, room: "ops"))
                }
            }
        }
        return (sender, receivers[0], Array(receivers.dropFirst()))
    }

    func seal(_ keyring: RoomKeyring, _ text: String, at time: UInt64? = nil) throws -> [UInt8] {
        try keyring.seal(room: "ops", contentType: "text/plain", body: Array(text.utf8), now: time ?? now)
    }

    func rejection(_ result: Result<OpenedFrame, FrameRejection>) -> FrameRejection? {
        if case .failure(let reason) = result { return reason }
        return nil
    }

    @Test func encryptedFrameOpensWithEveryAuthenticatedField() throws {
        let (sender, receiver, _) = pair()
        let frame = try seal(sender, "hello")
        let opened = try receiver.open(frame, room: "ops", now: now + 10).get()
        #expect(String(decoding: opened.body, as: UTF8.self) == "hello")
        #expect(opened.sender == alice.userNKey && opened.room == "ops" && opened.timestamp == now)
        #expect(opened.contentType == "text/plain" && opened.protection == .encrypted)
        // The sender reads its own messages (NATS echoes them back).
        #expect(try sender.open(frame, room: "ops", now: now).get().body == Array("hello".utf8))
        // The plaintext is nowhere in the frame.
        #expect(!Data(frame).contains(Data("hello".utf8)))
    }

    @Test func replayedIndexIsRefusedOutOfOrderIsNot() throws {
        let (sender, receiver, _) = pair()
        let first = try seal(sender, "one"), second = try seal(sender, "two")
        #expect(throws: Never.self) { try receiver.open(second, room: "ops", now: now).get() }
        #expect(throws: Never.self) { try receiver.open(first, room: "ops", now: now).get() }
        #expect(rejection(receiver.open(first, room: "ops", now: now)) == .replay)
        #expect(rejection(receiver.open(second, room: "ops", now: now)) == .replay)
    }

    @Test func everyTamperedByteIsRefusedAndNothingIsRecorded() throws {
        let (sender, receiver, _) = pair()
        let frame = try seal(sender, "payload")
        var reasons: [FrameRejection: Int] = [:]
        for index in frame.indices {
            var bad = frame
            bad[index] ^= 0x01
            guard let reason = rejection(receiver.open(bad, room: "ops", now: now)) else {
                Issue.record("a flipped bit at \(index) was accepted")
                continue
            }
            reasons[reason, default: 0] += 1
        }
        #expect(reasons[.badSignature, default: 0] > frame.count - 80, "\(reasons)")
        // The genuine frame still opens: failed attempts recorded nothing.
        #expect(throws: Never.self) { try receiver.open(frame, room: "ops", now: now).get() }
    }

    @Test func timeWindowIsTheRooms() throws {
        let (sender, receiver, _) = pair(RoomPolicy(frameWindowSeconds: 60))
        let old = try seal(sender, "old", at: now - 61_000)
        let future = try seal(sender, "future", at: now + 61_000)
        let edge = try seal(sender, "edge", at: now - 60_000)
        #expect(rejection(receiver.open(old, room: "ops", now: now)) == .outsideWindow)
        #expect(rejection(receiver.open(future, room: "ops", now: now)) == .outsideWindow)
        #expect(throws: Never.self) { try receiver.open(edge, room: "ops", now: now).get() }
    }

    @Test func storedFramesAreJudgedByWhenTheyWereStoredHistoryByNothing() throws {
        let (sender, receiver, _) = pair()
        let window = UInt64(RoomPolicy.defaultFrameWindowSeconds) * 1000
        // Sent an hour ago, stored then: delivered when resuming now (it waited in the store).
        let old = try seal(sender, "an hour ago", at: now - 3_600_000)
        #expect(rejection(receiver.open(old, room: "ops", now: now)) == .outsideWindow)
        #expect(rejection(receiver.open(old, room: "ops", now: now, arrival: .stored(firstStored: now - 3_600_000 + 50, notBefore: now - 7_200_000))) == nil)
        // Back-dated by its sender (stored now, dated an hour ago): refused from the store too.
        let backDated = try seal(sender, "back-dated", at: now - window - 1)
        #expect(rejection(receiver.open(backDated, room: "ops", now: now, arrival: .stored(firstStored: now, notBefore: 0))) == .outsideWindow)
        // A node claiming an old frame was stored just now, or dating it to its own time: refused when the sender
        // dated it before the gap being read.
        let weekOld = try seal(sender, "a week ago", at: now - 7 * 86_400_000)
        #expect(rejection(receiver.open(weekOld, room: "ops", now: now,
                                        arrival: .stored(firstStored: now - 7 * 86_400_000, notBefore: now - 60_000))) == .outsideWindow)
        // History reads it (nothing recorded), and reads it again.
        for _ in 0..<2 { #expect(rejection(receiver.open(backDated, room: "ops", now: now, arrival: .history)) == nil) }
        // Resuming re-reads what was delivered: refused as a replay.
        #expect(rejection(receiver.open(old, room: "ops", now: now, arrival: .stored(firstStored: now - 3_600_000, notBefore: 0))) == .replay)
    }

    @Test func aReplayWindowSaysBelowWhichEverythingWasDelivered() {
        var window = ReplayWindow()
        #expect(window.deliveredBelow == 0)
        for number: UInt64 in 0..<100 { _ = window.accept(number) }
        #expect(window.deliveredBelow == 100)
        _ = window.accept(150)   // 100...149 missing
        #expect(window.deliveredBelow == 100)
        for number: UInt64 in 100..<150 { _ = window.accept(number) }
        #expect(window.deliveredBelow == 151)
        // Far ahead: what fell out of the window can no longer be delivered.
        _ = window.accept(10_000)
        #expect(window.deliveredBelow == 10_001 - ReplayWindow.size)
        #expect(ReplayWindow(encoded: window.encoded)?.deliveredBelow == window.deliveredBelow)
    }

    @Test func aReplayWindowRemembersWhenAGapOpened() {
        var window = ReplayWindow(size: ReplayWindow.persistedSize)
        for number: UInt64 in 0..<10 { _ = window.accept(number, arrivedAt: 100) }
        #expect(window.gapStart == nil)
        _ = window.accept(15, arrivedAt: 200)   // 10...14 skipped live
        #expect(window.gapStart == 10 && window.gapSince == 200)
        _ = window.accept(16, arrivedAt: 300)
        #expect(window.gapSince == 200, "the gap's age is the first jump's")
        for number: UInt64 in 10..<14 { _ = window.accept(number, arrivedAt: 400) }
        #expect(window.gapStart == 14)
        _ = window.accept(14, arrivedAt: 500)
        #expect(window.gapStart == nil && window.deliveredBelow == 17)
        // A session shared at index 100 starts there: nothing below it is a gap.
        var shared = ReplayWindow(size: 1024, floor: 100)
        _ = shared.accept(100, arrivedAt: 1)
        #expect(shared.gapStart == nil)
        _ = shared.accept(103, arrivedAt: 2)
        #expect(shared.gapStart == 101 && shared.gapSince == 2)
        shared.retireGap()
        #expect(shared.gapStart == nil)
        // Persisted rooms' windows are wider, and their bytes say so.
        _ = window.accept(40_000, arrivedAt: 600)
        #expect(window.isFresh(20) == true && window.gapStart == 17)
        #expect(ReplayWindow(encoded: window.encoded)?.size == ReplayWindow.persistedSize)
    }

    @Test func removedMemberCannotReadTheNextSession() throws {
        let (sender, bobRing, others) = pair(members: [carol])
        let carolRing = try #require(others.first)
        let before = try seal(sender, "before")
        #expect(throws: Never.self) { try carolRing.open(before, room: "ops", now: now).get() }
        // Carol leaves: the sender must rotate before its next message.
        sender.setRoom(room(), members: [alice.userNKey, bob.userNKey])
        #expect(sender.currentOutbound(for: "ops", now: now) == nil)
        #expect(throws: SealError.noSession(room: "ops")) { try seal(sender, "refused") }
        let fresh = sender.rotate(room: "ops", now: now)
        let share = sender.share(fresh, room: "ops", recipient: bob.userNKey, exchangeKey: bob.keyExchange.publicKey)
        bobRing.setRoom(room(), members: [alice.userNKey, bob.userNKey])
        try bobRing.acceptShare(room: "ops", sender: alice.userNKey, sessionID: fresh.session.sessionID, sealed: share.sealed, signature: share.signature, sessionSignature: sender.ownerSignature(fresh, room: "ops"))
        let after = try seal(sender, "after")
        #expect(throws: Never.self) { try bobRing.open(after, room: "ops", now: now).get() }
        #expect(rejection(carolRing.open(after, room: "ops", now: now)) == .unknownSession)
        // A share for Bob is useless to Carol even if she obtains it: it names
        // Bob as its recipient (and is sealed to his key).
        #expect(throws: KeyShareError.badSignature) {
            try carolRing.acceptShare(room: "ops", sender: alice.userNKey, sessionID: fresh.session.sessionID, sealed: share.sealed, signature: share.signature, sessionSignature: sender.ownerSignature(fresh, room: "ops"))
        }
    }

    @Test func rotationAfterTheRoomsMessageCountAndAge() throws {
        let (sender, _, _) = pair(RoomPolicy(rotateAfterMessages: 2, rotateAfterSeconds: 10))
        _ = try seal(sender, "1")
        _ = try seal(sender, "2")
        #expect(sender.currentOutbound(for: "ops", now: now) == nil)
        _ = sender.rotate(room: "ops", now: now)
        #expect(sender.currentOutbound(for: "ops", now: now + 9_999) != nil)
        #expect(sender.currentOutbound(for: "ops", now: now + 10_000) == nil)
    }

    @Test func sendersAndSessionsMustBeKnown() throws {
        let (sender, receiver, _) = pair()
        let frame = try seal(sender, "x")
        // Alice removed from Bob's view of the room: non-member.
        receiver.setRoom(room(), members: [bob.userNKey])
        #expect(rejection(receiver.open(frame, room: "ops", now: now)) == .nonMember)
        // A member whose session Bob never received.
        let stranger = RoomKeyring(identity: carol)
        stranger.setRoom(room(), members: [alice.userNKey, bob.userNKey, carol.userNKey])
        _ = stranger.rotate(room: "ops", now: now)
        receiver.setRoom(room(), members: [alice.userNKey, bob.userNKey, carol.userNKey])
        let unknown = try stranger.seal(room: "ops", contentType: "", body: [1], now: now)
        #expect(rejection(receiver.open(unknown, room: "ops", now: now)) == .unknownSession)
    }

    @Test func envelopeProblemsHaveDistinctReasons() throws {
        let (sender, receiver, _) = pair()
        var frame = try seal(sender, "x")
        #expect(rejection(receiver.open([], room: "ops", now: now)) == .malformed)
        #expect(rejection(receiver.open(Array("hello world".utf8), room: "ops", now: now)) == .malformed)
        #expect(rejection(receiver.open(Array(frame.prefix(60)), room: "ops", now: now)) == .malformed)
        frame[2] = 2
        #expect(rejection(receiver.open(frame, room: "ops", now: now)) == .unknownVersion)
        frame[2] = 1
        frame[3] = 9
        #expect(rejection(receiver.open(frame, room: "ops", now: now)) == .malformed)
        frame[3] = FrameKind.signed.rawValue
        #expect(rejection(receiver.open(frame, room: "ops", now: now)) == .policyMismatch)
        #expect(rejection(receiver.open(try seal(sender, "x"), room: "elsewhere", now: now)) == .wrongRoom)
    }

    @Test func encryptedRoomNeverAcceptsSignedOrPlainFrames() throws {
        let (_, receiver, _) = pair()
        let forger = RoomKeyring(identity: alice)
        forger.setRoom(room(RoomPolicy(encrypt: false, sign: true)), members: [alice.userNKey])
        let signed = try seal(forger, "downgrade")
        forger.setRoom(room(RoomPolicy(encrypt: false, sign: false)), members: [alice.userNKey])
        let plain = try seal(forger, "downgrade")
        #expect(rejection(receiver.open(signed, room: "ops", now: now)) == .policyMismatch)
        #expect(rejection(receiver.open(plain, room: "ops", now: now)) == .policyMismatch)
    }

    @Test func signedRoomsVerifyAndReplayCheckWithoutEncrypting() throws {
        let (sender, receiver, _) = pair(RoomPolicy(encrypt: false, sign: true))
        let frame = try seal(sender, "visible")
        #expect(Data(frame).contains(Data("visible".utf8)))
        let opened = try receiver.open(frame, room: "ops", now: now).get()
        #expect(opened.protection == .signed && opened.sender == alice.userNKey)
        #expect(rejection(receiver.open(frame, room: "ops", now: now)) == .replay)
        var bad = try seal(sender, "visible")
        bad[bad.count - 70] ^= 1
        #expect(rejection(receiver.open(bad, room: "ops", now: now)) == .badSignature)
    }

    @Test func compressionRoundTripsAndBombsAreRefused() throws {
        let (sender, receiver, _) = pair(RoomPolicy(compress: true))
        let body = Array(String(repeating: "unibus ", count: 2000).utf8)
        let frame = try sender.seal(room: "ops", contentType: "text/plain", body: body, now: now)
        #expect(frame.count < body.count / 10)
        #expect(try receiver.open(frame, room: "ops", now: now).get().body == body)
        receiver.maximumBody = 1000
        let again = try sender.seal(room: "ops", contentType: "text/plain", body: body, now: now)
        #expect(rejection(receiver.open(again, room: "ops", now: now)) == .malformed)
    }

    @Test func sharesMustBeSignedByAMemberAndBoundToTheRecipient() throws {
        let sender = RoomKeyring(identity: alice)
        sender.setRoom(room(), members: [alice.userNKey, bob.userNKey, carol.userNKey])
        let outbound = sender.rotate(room: "ops", now: now)
        let receiver = RoomKeyring(identity: bob)
        receiver.setRoom(room(), members: [alice.userNKey, bob.userNKey, carol.userNKey])
        let forCarol = sender.share(outbound, room: "ops", recipient: carol.userNKey, exchangeKey: bob.keyExchange.publicKey)
        // Signed for Carol, replayed to Bob: the signature binds the recipient.
        #expect(throws: KeyShareError.badSignature) {
            try receiver.acceptShare(room: "ops", sender: alice.userNKey, sessionID: outbound.session.sessionID,
                                     sealed: forCarol.sealed, signature: forCarol.signature, sessionSignature: sender.ownerSignature(outbound, room: "ops"))
        }
        receiver.setRoom(room(), members: [bob.userNKey])
        let forBob = sender.share(outbound, room: "ops", recipient: bob.userNKey, exchangeKey: bob.keyExchange.publicKey)
        #expect(throws: KeyShareError.senderNotMember) {
            try receiver.acceptShare(room: "ops", sender: alice.userNKey, sessionID: outbound.session.sessionID,
                                     sealed: forBob.sealed, signature: forBob.signature, sessionSignature: sender.ownerSignature(outbound, room: "ops"))
        }
    }

    /// A member who holds another member's session must not be able to share
    /// it under its own name: the session's own key names its creator, so
    /// Carol cannot make Bob attribute Alice's frames to her.
    @Test func aSessionCannotBeResharedUnderAnotherName() throws {
        let members: Set<String> = [alice.userNKey, bob.userNKey, carol.userNKey]
        let sender = RoomKeyring(identity: alice)
        sender.setRoom(room(), members: members)
        let outbound = sender.rotate(room: "ops", now: now)
        // Carol got Alice's session key (a member does) and re-shares it to
        // Bob, signing the share herself and reusing Alice's session signature.
        let carolRing = RoomKeyring(identity: carol)
        carolRing.setRoom(room(), members: members)
        let key = outbound.session.sessionKey.bytes
        let sealed = SealedBox.seal(key, to: bob.keyExchange.publicKey)
        let signature = carol.sign(KeyShare.signedBytes(room: "ops", sessionID: outbound.session.sessionID, recipient: bob.userNKey, sealed: sealed))
        let receiver = RoomKeyring(identity: bob)
        receiver.setRoom(room(), members: members)
        #expect(throws: KeyShareError.notSessionOwner) {
            try receiver.acceptShare(room: "ops", sender: carol.userNKey, sessionID: outbound.session.sessionID, sealed: sealed,
                                     signature: signature, sessionSignature: sender.ownerSignature(outbound, room: "ops"))
        }
        // Nor with a made-up session signature of her own.
        #expect(throws: KeyShareError.notSessionOwner) {
            try receiver.acceptShare(room: "ops", sender: carol.userNKey, sessionID: outbound.session.sessionID, sealed: sealed,
                                     signature: signature, sessionSignature: carol.sign(KeyShare.ownerStatement(
                                         room: "ops", sessionID: outbound.session.sessionID, owner: carol.userNKey)))
        }
        // So Alice's frames relabelled as Carol's have no session at Bob.
        let frame = try sender.seal(room: "ops", contentType: "text/plain", body: Array("from alice".utf8), now: now)
        var relabelled = frame
        let aliceKey = alice.signing.publicKey.bytes, carolKey = carol.signing.publicKey.bytes
        if let start = (0...(frame.count - 32)).first(where: { Array(frame[$0..<($0 + 32)]) == aliceKey }) {
            relabelled.replaceSubrange(start..<(start + 32), with: carolKey)
        }
        #expect(relabelled != frame)
        #expect(rejection(receiver.open(relabelled, room: "ops", now: now)) == .unknownSession)
    }

    @Test func replayWindowSlides() {
        var window = ReplayWindow()
        var results: [Bool] = []
        results.append(window.accept(0))          // true
        results.append(window.accept(0))          // replay
        results.append(window.accept(5000))       // jump
        results.append(window.isFresh(5000 - ReplayWindow.size - 1))   // below the window
        results.append(window.accept(4990))       // late but inside
        results.append(window.accept(4990))       // replay
        results.append(window.accept(UInt64.max - 1))
        results.append(window.accept(4991))       // far behind after the jump
        #expect(results == [true, false, true, false, true, false, true, false])
    }
}
