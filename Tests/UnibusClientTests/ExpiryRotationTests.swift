import Testing
import UnibusCrypto
import UnibusMembership
@testable import UnibusClient

/// Workload logins expire every few minutes: a departure by expiry must
/// not make every sender rotate and re-share at once, each time.
@Suite("Rotation after expiries")
struct ExpiryRotationTests {
    let alice = Identity()
    let room = RoomInfo(id: "ops", subject: "rooms.ops", owner: "x", policy: RoomPolicy())

    @Test func expiriesAreCoalescedRemovalsAreNot() {
        let keyring = RoomKeyring(identity: alice)
        let workloads = (0..<100).map { _ in Identity().userNKey }
        var members = Set(workloads + [alice.userNKey])
        keyring.setRoom(room, members: members)
        let first = keyring.rotate(room: "ops", now: 1_000_000)
        // 100 workloads expire one after another over five minutes: one rotation due, a minute after the session began.
        for (index, workload) in workloads.enumerated() {
            members.remove(workload)
            let now = UInt64(1_000_000 + index * 3_000)
            keyring.setRoom(room, members: members, expired: [workload], now: now, expiryRotationInterval: 60_000)
            #expect(keyring.currentOutbound(for: "ops", now: now) === (now < 1_060_000 ? first : nil))
        }
        #expect(first.rotateAt == 1_060_000 && !first.mustRotate)
        // Then a removal: the very next send rotates.
        let second = keyring.rotate(room: "ops", now: 2_000_000)
        keyring.setRoom(room, members: members.union(["Uother"]), now: 2_000_000)
        keyring.setRoom(room, members: members, now: 2_000_001)
        #expect(second.mustRotate && keyring.currentOutbound(for: "ops", now: 2_000_001) == nil)
    }
}
