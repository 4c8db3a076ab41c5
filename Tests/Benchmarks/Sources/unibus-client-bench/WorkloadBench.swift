import BenchSupport
import CSodiumBench
import Foundation
import UnibusClient
import UnibusCrypto
import UnibusMembership

/// `unibus-client-bench workloads [HOURS]`: 100 workloads on 300 s logins in
/// one room (issue 16's "no rotation storms"), simulated second by second
/// with the real `RoomKeyring` deciding when each sender rotates.
///
/// Every workload and one person (alice) send one message every 10 s.
/// Two ways workloads live:
/// - `renew`: each renews its login (same key) every 240 s, before it expires;
/// - `churn`: each stops when its login expires and a new workload (new key)
///   takes its place at once (an autoscaled fleet of short jobs).
/// Three rotation rules after departures: `immediate` (every sender rotates
/// at its next send, the rule for removals), and expiries coalesced at 60 s
/// and at 300 s (`expiryRotationInterval`). Counted: rotations and key
/// shares (each is one sealed box plus a signature, stored on every node).
/// Then measured on this machine: one share's cost, and one login's cost in
/// the fold (JWT verification included), against libsodium's raw Ed25519
/// sign as the reference; and the log a day of logins would hold, with and
/// without hourly checkpoints.
enum WorkloadBench {
    static let ttlMillis: UInt64 = 300_000
    static let sendEveryMillis: UInt64 = 10_000

    struct Counts {
        var rotations = 0
        var shares = 0
        var logins = 0
        var departures = 0
    }

    static func simulate(hours: Double, churn: Bool, interval: UInt64?) -> Counts {
        let room = RoomInfo(id: "jobs", subject: "rooms.jobs", owner: "alice", policy: RoomPolicy(rotateAfterMessages: 1 << 30, rotateAfterSeconds: 366 * 24 * 3600))
        let alice = Identity()
        struct Slot { var identity: Identity; var keyring: RoomKeyring; var expires: UInt64; var offset: UInt64 }
        var slots = (0..<100).map { index -> Slot in
            let identity = Identity()
            // Logins spread over the first ttl, sends spread over 10 s.
            return Slot(identity: identity, keyring: RoomKeyring(identity: identity), expires: UInt64(index) * ttlMillis / 100 + ttlMillis,
                        offset: UInt64(index * 97) % sendEveryMillis)
        }
        let aliceKeyring = RoomKeyring(identity: alice)
        var counts = Counts(logins: 100)
        var members = Set(slots.map(\.identity.userNKey) + [alice.userNKey])
        func apply(_ keyring: RoomKeyring, expired: Set<String>, now: UInt64) {
            keyring.setRoom(room, members: members, expired: interval == nil ? [] : expired, now: now, expiryRotationInterval: interval ?? 0)
        }
        for keyring in slots.map(\.keyring) + [aliceKeyring] { apply(keyring, expired: [], now: 0) }
        let end = UInt64(hours * 3_600_000)
        var now: UInt64 = 0
        while now < end {
            now += 1000
            var expired: Set<String> = []
            for index in slots.indices where slots[index].expires <= now {
                counts.logins += 1
                if churn {
                    expired.insert(slots[index].identity.userNKey)
                    let identity = Identity()
                    slots[index] = Slot(identity: identity, keyring: RoomKeyring(identity: identity), expires: now + ttlMillis, offset: slots[index].offset)
                } else {
                    // Renewed 60 s before it would expire: never a departure.
                    slots[index].expires = now + ttlMillis - 60_000
                }
            }
            if !expired.isEmpty {
                counts.departures += expired.count
                members.subtract(expired)
                members.formUnion(slots.map(\.identity.userNKey))
                for keyring in slots.map(\.keyring) + [aliceKeyring] { apply(keyring, expired: expired, now: now) }
            }
            let senders = slots.map { ($0.keyring, $0.offset, $0.identity.userNKey) } + [(aliceKeyring, UInt64(5_000), alice.userNKey)]
            for (keyring, offset, sender) in senders where (now + offset) % sendEveryMillis < 1000 {
                if keyring.currentOutbound(for: room.id, now: now) == nil {
                    let fresh = keyring.rotate(room: room.id, now: now)
                    fresh.sharedWith = members.subtracting([sender])
                    counts.rotations += 1
                    counts.shares += fresh.sharedWith.count
                } else if let current = keyring.outbound[room.id] {
                    let newcomers = members.subtracting(current.sharedWith).subtracting([sender])
                    current.sharedWith.formUnion(newcomers)
                    counts.shares += newcomers.count
                }
            }
        }
        return counts
    }

    static func run(hours: Double) throws {
        for churn in [false, true] {
            var reference: Counts?
            for interval in [nil, UInt64(60_000), UInt64(300_000)] as [UInt64?] {
                let counts = simulate(hours: hours, churn: churn, interval: interval)
                if reference == nil { reference = counts }
                ClientBench.emit(["case": "workloads-\(churn ? "churn" : "renew")", "rule": interval.map { "coalesced-\($0 / 1000)s" } ?? "immediate",
                                  "hours": hours, "logins": counts.logins, "departures": counts.departures,
                                  "rotations": counts.rotations, "shares": counts.shares,
                                  "shares_per_second": Double(counts.shares) / (hours * 3600),
                                  "shares_vs_immediate": Double(counts.shares) / Double(max(1, reference?.shares ?? 1))])
            }
        }
        try costs()
    }

    /// One share, one login folded, against libsodium's raw Ed25519 sign.
    static func costs() throws {
        let alice = Identity(), bob = Identity()
        let room = RoomInfo(id: "jobs", subject: "rooms.jobs", owner: alice.userNKey, policy: RoomPolicy())
        let keyring = RoomKeyring(identity: alice)
        keyring.setRoom(room, members: [alice.userNKey, bob.userNKey])
        let outbound = keyring.rotate(room: room.id, now: ClientBench.wallMillis())

        let root = Identity(), issuer = Ed25519KeyPair()
        let roleKey = try JWSPublicKey(ed25519: issuer.publicKey.bytes, kid: "k1")
        let role = LoginRole(name: "ci", issuer: "https://idp", keys: [roleKey], algorithms: [.edDSA], boundAudiences: ["unibus"],
                             userClaim: "worker", rooms: ["jobs"], ttlSeconds: 300)
        var base = MembershipLog(pinnedRoot: root.userNKey)
        for operation in [MembershipOperation.addUser(key: root.userNKey, exchangeKey: Base64.encode(root.keyExchange.publicKey.bytes), handle: "root", role: .admin),
                          .createRoom(id: "jobs", subject: "rooms.jobs", policy: RoomPolicy()), .setLoginRole(role: role)] {
            _ = try base.insert(SignedOperation.sign(operation, by: root, parents: base.heads))
        }
        let now = Int64(Date().timeIntervalSince1970)
        func token(_ jti: Int) -> String {
            let head = Base64.encode(Array(#"{"alg":"EdDSA","kid":"k1"}"#.utf8), alphabet: .url)
            let body = Base64.encode(Array(#"{"iss":"https://idp","aud":"unibus","worker":"w\#(jti % 100)","exp":\#(now + 600),"jti":"\#(jti)"}"#.utf8), alphabet: .url)
            return "\(head).\(body).\(Base64.encode(issuer.sign(Array("\(head).\(body)".utf8)), alphabet: .url))"
        }
        // 100 live workloads (the steady state), then logins folded on top.
        var log = base
        let workloads = (0..<100).map { _ in Identity() }
        for (index, workload) in workloads.enumerated() {
            _ = try log.insert(SignedOperation.sign(.loginWorkload(role: "ci", token: token(index), exchangeKey: Base64.encode(workload.keyExchange.publicKey.bytes)),
                                                    by: workload, parents: log.heads))
        }
        let checkpoint = SignedOperation.sign(.checkpoint(log.state.checkpointState(sequence: 1, rootChain: [], prunedAt: now)), by: root, parents: log.heads)
        let loginBytes = log.orderedOperations.last?.bytes.count ?? 0
        var folded = log
        let message = [UInt8](repeating: 7, count: 128)
        var signature = [UInt8](repeating: 0, count: 64)
        var secret = [UInt8](repeating: 0, count: 64), publicKey = [UInt8](repeating: 0, count: 32)
        crypto_sign_keypair(&publicKey, &secret)
        var bench = Interleaved()
        bench.add("key share (seal + sign)") {
            for _ in 0..<50 { _ = keyring.share(outbound, room: room.id, recipient: bob.userNKey, exchangeKey: bob.keyExchange.publicKey) }
            return 50
        }
        var serial = 1000
        bench.add("login folded (JWT verify + rules)") {
            // Renewals by the 100 workloads, each signed on top of the log's heads (its tail).
            if folded.count > 2000 { folded = log }
            for _ in 0..<20 {
                serial += 1
                let workload = workloads[serial % 100]
                let signed = SignedOperation.sign(.loginWorkload(role: "ci", token: token(serial), exchangeKey: Base64.encode(workload.keyExchange.publicKey.bytes)),
                                                  by: workload, parents: folded.heads)
                guard case .inserted(nil) = try folded.insert(signed) else { throw ClientBench.BenchError("a renewal was refused") }
            }
            return 20
        }
        bench.add("libsodium Ed25519 sign (reference)") {
            for _ in 0..<100 { _ = crypto_sign_detached(&signature, nil, message, UInt64(message.count), secret) }
            return 100
        }
        try bench.run(seconds: 6)
        let reference = bench.rate(bench.cases.count - 1)
        for (index, entry) in bench.cases.enumerated() {
            ClientBench.emit(["case": "workload-costs", "name": entry.name, "per_second": bench.rate(index),
                              "vs_ed25519_sign": bench.rate(index) / reference])
        }
        let perDay = 100 * 86_400 / 240
        ClientBench.emit(["case": "workload-log", "login_operation_bytes": loginBytes, "logins_per_day_renewing": perDay,
                          "log_bytes_per_day_without_checkpoints": perDay * loginBytes,
                          "checkpoint_bytes_100_live_workloads": checkpoint.bytes.count,
                          "log_bytes_with_hourly_checkpoints": checkpoint.bytes.count + perDay / 24 * loginBytes])
    }
}
