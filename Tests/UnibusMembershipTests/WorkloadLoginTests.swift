import Foundation
import Testing
import UnibusCrypto
@testable import UnibusMembership

/// Workload logins as every node and client folds them: the JWT embedded in
/// the operation is verified against the admin-signed role at the
/// operation's signed time, so a forged login is refused by every reader.
@Suite("Workload logins in the log")
struct WorkloadLoginTests {
    let root = Identity()
    let alice = Identity()
    let issuer = Ed25519KeyPair()
    let otherIssuer = Ed25519KeyPair()
    /// 2027-01-15T08:00:00Z: operations are signed at this time or after.
    let start = Date(timeIntervalSince1970: 1_800_000_000)
    var now: Int64 { Int64(start.timeIntervalSince1970) }

    func role(_ name: String = "ci", keys: [Ed25519KeyPair]? = nil, rooms: [String] = ["ops"], ttl: Int64 = 300,
              binding: Bool = false) throws -> LoginRole {
        let pinned = try (keys ?? [issuer]).enumerated().map { try JWSPublicKey(ed25519: $1.publicKey.bytes, kid: "k\($0)") }
        return LoginRole(name: name, issuer: "https://idp", keys: pinned, algorithms: [.edDSA], boundAudiences: ["unibus"],
                         boundClaims: ["env": "ci-*"], userClaim: "worker", rooms: rooms, ttlSeconds: ttl, requireKeyBinding: binding,
                         claimMappings: ["env": "environment"])
    }

    func token(jti: String = "j1", exp: Int64? = nil, worker: String = "w1", signer: Ed25519KeyPair? = nil, kid: String = "k0",
               extra: [String: Any] = [:]) throws -> String {
        var claims: [String: Any] = ["iss": "https://idp", "aud": "unibus", "worker": worker, "env": "ci-7", "exp": exp ?? now + 600, "jti": jti]
        for (key, value) in extra { claims[key] = value }
        let head = Base64.encode(try JSONSerialization.data(withJSONObject: ["alg": "EdDSA", "kid": kid]), alphabet: .url)
        let body = Base64.encode(try JSONSerialization.data(withJSONObject: claims), alphabet: .url)
        let signature = (signer ?? issuer).sign(Array("\(head).\(body)".utf8))
        return "\(head).\(body).\(Base64.encode(signature, alphabet: .url))"
    }

    /// A log with the root, alice and room "ops", and the role set by the root.
    func log(role: LoginRole? = nil) throws -> MembershipLog {
        var log = MembershipLog(pinnedRoot: root.userNKey)
        let steps: [(MembershipOperation, Identity)] = [
            (.addUser(key: root.userNKey, exchangeKey: Base64.encode(root.keyExchange.publicKey.bytes), handle: "root", role: .admin), root),
            (.addUser(key: alice.userNKey, exchangeKey: Base64.encode(alice.keyExchange.publicKey.bytes), handle: "alice", role: .member), root),
            (.createRoom(id: "ops", subject: "rooms.ops", policy: RoomPolicy()), root),
            (.setLoginRole(role: try role ?? self.role()), root),
        ]
        for (operation, actor) in steps {
            #expect(try log.insert(SignedOperation.sign(operation, by: actor, parents: log.heads, at: start)) == .inserted(refused: nil))
        }
        return log
    }

    func login(_ workload: Identity, role: String = "ci", token: String, in log: MembershipLog, at date: Date? = nil) -> SignedOperation {
        SignedOperation.sign(.loginWorkload(role: role, token: token, exchangeKey: Base64.encode(workload.keyExchange.publicKey.bytes)),
                             by: workload, parents: log.heads, at: date ?? start.addingTimeInterval(10))
    }

    @Test func aValidLoginMakesAnExpiringMemberOfTheRolesRooms() throws {
        var log = try log()
        let workload = Identity()
        let operation = login(workload, token: try token(), in: log)
        #expect(try log.insert(operation) == .inserted(refused: nil))
        let state = log.state
        #expect(state.users[workload.userNKey]?.role == .workload)
        #expect(state.users[workload.userNKey]?.handle == "w1")
        #expect(state.members["ops"]?[workload.userNKey]?.role == .member)
        #expect(state.workloads[workload.userNKey]?.expiresAt == now + 10 + 300)
        #expect(state.workloads[workload.userNKey]?.metadata == ["environment": "ci-7"])
        // Expiry is by the clock, outside the fold.
        #expect(state.isLive(workload.userNKey, now: now + 309))
        #expect(!state.isLive(workload.userNKey, now: now + 310))
        // Every reader that folds the same log agrees (a client replaying it).
        var reader = MembershipLog(pinnedRoot: root.userNKey)
        for operation in log.orderedOperations { _ = try reader.insert(operation) }
        #expect(reader.state == state && reader.state.digest == state.digest)
    }

    /// The workload chooses the time it signs. A date Foundation on Linux
    /// reads leniently (February 30 as March 2, trailing junk ignored) and
    /// another platform might refuse must not make readers disagree: every
    /// reader refuses it, and nobody becomes a member.
    @Test func aLoginSignedAtALenientlyParsedTimeIsRefused() throws {
        var log = try log()
        for (index, timestamp) in ["2027-02-30T08:00:10.000Z", "2027-01-15T08:00:10.000Zjunk", "2027-01-15T08:00:10.000+00:00",
                                   "2027-01-15T24:00:00.000Z", " 2027-01-15T08:00:10.000Z"].enumerated() {
            let workload = Identity()
            let envelope = OperationEnvelope(version: OperationEnvelope.currentVersion, actor: workload.userNKey, timestamp: timestamp,
                                             nonce: Base64.encode(Array("nonce-\(index)".utf8)), parents: log.heads,
                                             operation: .loginWorkload(role: "ci", token: try token(jti: "lenient-\(index)"),
                                                                       exchangeKey: Base64.encode(workload.keyExchange.publicKey.bytes)))
            let operation = SignedOperation.signEnvelope(envelope, by: workload)
            guard case .inserted(let refused?) = try log.insert(operation) else {
                Issue.record("a login signed at \(timestamp) was folded")
                continue
            }
            #expect("\(refused)".contains("RFC 3339"), "\(refused)")
            #expect(log.state.users[workload.userNKey] == nil)
        }
    }

    @Test func forgedLoginsAreRefusedByEveryReader() throws {
        var log = try log()
        let forger = Identity()
        // A token signed by a key the role does not pin (a node minting one).
        let forged = login(forger, token: try token(signer: otherIssuer), in: log)
        guard case .inserted(let refusal?) = try log.insert(forged) else { Issue.record("forged login accepted"); return }
        #expect("\(refusal)".contains("signature"))
        #expect(log.state.users[forger.userNKey] == nil)
        // A token for an unknown role, an expired token at the operation's
        // time, a token for another audience's claims, a missing user claim.
        let cases: [(SignedOperation, String)] = [
            (login(Identity(), role: "nope", token: try token(jti: "a"), in: log), "login role"),
            (login(Identity(), token: try token(jti: "b", exp: now - 1000), in: log), "expired"),
            (login(Identity(), token: try token(jti: "c", extra: ["env": "prod"]), in: log), "claim env"),
            (login(Identity(), token: try token(jti: "d", extra: ["worker": 7]), in: log), "user claim"),
            (login(Identity(), token: try token(jti: "e", kid: "k9"), in: log), "kid"),
        ]
        for (operation, reason) in cases {
            guard case .inserted(let refusal?) = try log.insert(operation) else { Issue.record("\(reason): accepted"); continue }
            #expect("\(refusal)".contains(reason), "\(refusal)")
        }
        #expect(log.state.workloads.isEmpty)
    }

    @Test func aTokenIDIsUsedOnceEvenBySomeoneElsesKey() throws {
        var log = try log()
        let token = try token()
        #expect(try log.insert(login(Identity(), token: token, in: log)) == .inserted(refused: nil))
        // The same bearer token replayed with another key (a node that saw
        // it), or by the same key again: refused.
        guard case .inserted(let replay?) = try log.insert(login(Identity(), token: token, in: log)) else { Issue.record("replay accepted"); return }
        #expect("\(replay)".contains("already used"))
    }

    @Test func keyBindingStopsAnotherKeyUsingTheToken() throws {
        var log = try log(role: role(binding: true))
        let workload = Identity()
        let bound = try token(extra: ["cnf": ["jkt": JWK.thumbprint(ed25519: workload.signing.publicKey.bytes)]])
        let thief = login(Identity(), token: bound, in: log)
        guard case .inserted(let refusal?) = try log.insert(thief) else { Issue.record("stolen bound token accepted"); return }
        #expect("\(refusal)".contains("not bound to this key"))
        #expect(try log.insert(login(workload, token: bound, in: log)) == .inserted(refused: nil))
    }

    @Test func renewingWithTheSameKeyKeepsTheMembership() throws {
        var log = try log()
        let workload = Identity()
        _ = try log.insert(login(workload, token: try token(jti: "one"), in: log))
        let joined = log.state.members["ops"]?[workload.userNKey]?.joined
        #expect(try log.insert(login(workload, token: try token(jti: "two", exp: now + 900), in: log, at: start.addingTimeInterval(200))) == .inserted(refused: nil))
        #expect(log.state.members["ops"]?[workload.userNKey]?.joined == joined)
        #expect(log.state.workloads[workload.userNKey]?.expiresAt == now + 200 + 300)
        // A renewal signed ahead of a reader's clock does not interrupt the live login.
        #expect(try log.insert(login(workload, token: try token(jti: "three", exp: now + 2000), in: log, at: start.addingTimeInterval(450))) == .inserted(refused: nil))
        #expect(log.state.isLive(workload.userNKey, now: now + 250))
    }

    @Test func roleChangesAndRevocationsEndLogins() throws {
        var log = try log()
        let first = Identity(), second = Identity()
        _ = try log.insert(login(first, token: try token(jti: "1"), in: log))
        // Rotating the role's keys ends its logins; the workload logs in again under the new role.
        let rotated = try role(keys: [otherIssuer])
        #expect(try log.insert(SignedOperation.sign(.setLoginRole(role: rotated), by: root, parents: log.heads, at: start.addingTimeInterval(20))) == .inserted(refused: nil))
        #expect(log.state.users[first.userNKey]?.status == .revoked && log.state.members["ops"]?[first.userNKey] == nil)
        #expect(try log.insert(login(first, token: try token(jti: "2", signer: otherIssuer), in: log, at: start.addingTimeInterval(30))) == .inserted(refused: nil))
        #expect(log.state.isLive(first.userNKey, now: now + 31))
        // A workload may not act beyond leaving.
        let create = SignedOperation.sign(.createRoom(id: "w", subject: "rooms.w", policy: RoomPolicy()), by: first, parents: log.heads, at: start.addingTimeInterval(31))
        guard case .inserted(let refusal?) = try log.insert(create) else { Issue.record("workload created a room"); return }
        #expect("\(refusal)".contains("workload"))
        // An admin's revocation is final for that key.
        _ = try log.insert(login(second, token: try token(jti: "3", signer: otherIssuer), in: log, at: start.addingTimeInterval(32)))
        #expect(try log.insert(SignedOperation.sign(.revokeUser(key: second.userNKey), by: root, parents: log.heads, at: start.addingTimeInterval(40))) == .inserted(refused: nil))
        guard case .inserted(let again?) = try log.insert(login(second, token: try token(jti: "4", signer: otherIssuer), in: log, at: start.addingTimeInterval(50))) else {
            Issue.record("a revoked workload logged in again"); return
        }
        #expect("\(again)".contains("revoked") || "\(again)".contains("revocation"))
        // Removing the role ends the rest.
        #expect(try log.insert(SignedOperation.sign(.removeLoginRole(name: "ci"), by: root, parents: log.heads, at: start.addingTimeInterval(60))) == .inserted(refused: nil))
        #expect(log.state.users[first.userNKey]?.status == .revoked && log.state.loginRoles.isEmpty)
    }

    @Test func onlyAdminsSetRoles() throws {
        var log = try log()
        let operation = SignedOperation.sign(.setLoginRole(role: try role("mine")), by: alice, parents: log.heads, at: start)
        guard case .inserted(let refusal?) = try log.insert(operation) else { Issue.record("a member set a role"); return }
        #expect("\(refusal)".contains("only an admin"))
    }

    @Test func checkpointsPruneExpiredLoginsAndKeepLiveOnes() throws {
        var log = try log()
        let short = Identity(), long = Identity()
        _ = try log.insert(login(short, token: try token(jti: "s", exp: now + 60), in: log))
        _ = try log.insert(login(long, token: try token(jti: "l", exp: now + 3000), in: log))
        // At +400 s both logins ended (exp, and the ttl of 300 s); their token ids stay until exp + 3600 s.
        let at = start.addingTimeInterval(400)
        let content = log.state.checkpointState(sequence: 1, rootChain: log.rootChain, prunedAt: now + 400)
        #expect(content.users.count == 2 && content.workloads == nil)
        #expect(content.usedTokens?.map(\.jti) == ["l", "s"])
        let checkpoint = SignedOperation.sign(.checkpoint(content), by: root, parents: log.heads, at: at)
        #expect(try log.insert(checkpoint) == .adopted(replaced: 6))
        #expect(log.state.users[short.userNKey] == nil && log.state.members["ops"]?.count == 1)
        // The pruned token id is still refused (it has not expired everywhere yet).
        guard case .inserted(let replay?) = try log.insert(login(Identity(), token: try token(jti: "l", exp: now + 3000), in: log, at: at)) else {
            Issue.record("a remembered jti was accepted after the checkpoint"); return
        }
        #expect("\(replay)".contains("already used"))
        // A checkpoint may not prune by a time after its own.
        var probe = try self.log()
        let early = probe.state.checkpointState(sequence: 1, rootChain: probe.rootChain, prunedAt: now + 10_000)
        #expect(throws: MembershipError.self) { try probe.insert(SignedOperation.sign(.checkpoint(early), by: root, parents: probe.heads, at: at)) }
        // A new reader starts from the checkpoint.
        var reader = MembershipLog(pinnedRoot: root.userNKey)
        #expect(try reader.insert(checkpoint) == .adopted(replaced: 0))
        #expect(reader.state.loginRoles["ci"] != nil && reader.state.usedTokens.count == 2)
        // Token ids go once no role could accept them.
        let later = reader.state.checkpointState(sequence: 2, rootChain: [], prunedAt: now + 60 + 3600)
        #expect(later.usedTokens?.map(\.jti) == ["l"])
    }

    // MARK: the review's attacks

    @Test func aLoginRenewsThroughItsOwnRoleOnly() throws {
        var log = try log()
        _ = try log.insert(SignedOperation.sign(.setLoginRole(role: try role("other", rooms: [])), by: root, parents: log.heads, at: start))
        let workload = Identity()
        #expect(try log.insert(login(workload, token: try token(jti: "a"), in: log)) == .inserted(refused: nil))
        guard case .inserted(let refusal?) = try log.insert(login(workload, role: "other", token: try token(jti: "b"), in: log)) else {
            Issue.record("a login moved to another role and kept the first role's rooms"); return
        }
        #expect("\(refusal)".contains("renews through that role only"))
        // Removing the first role still ends it.
        _ = try log.insert(SignedOperation.sign(.removeLoginRole(name: "ci"), by: root, parents: log.heads, at: start.addingTimeInterval(20)))
        #expect(!log.state.isLive(workload.userNKey, now: now + 30) && log.state.members["ops"]?[workload.userNKey] == nil)
    }

    @Test func claimMappingsCannotCollide() throws {
        var colliding = try role()
        colliding.claimMappings = ["env": "k", "worker": "k"]
        #expect(throws: LoginError.self) { try colliding.validate() }
        var unicode = try role()
        unicode.name = "c\u{0130}"
        #expect(throws: LoginError.self) { try unicode.validate() }
        var claimName = try role()
        claimName.boundClaims = ["\u{212A}ey": "x"]   // a Kelvin sign: canonically equal to "Key" in Swift's String
        #expect(throws: LoginError.self) { try claimName.validate() }
    }

    @Test func aLoginDatedAheadIsNotLiveYet() throws {
        var log = try log()
        let workload = Identity()
        let ahead = start.addingTimeInterval(5000)
        let token = try token(exp: now + 6000, extra: ["nbf": now + 4900])
        #expect(try log.insert(login(workload, token: token, in: log, at: ahead)) == .inserted(refused: nil))
        #expect(!log.state.isLive(workload.userNKey, now: now + 20))
        #expect(log.state.isLive(workload.userNKey, now: now + 5000 - 60))
        #expect(!log.state.isLive(workload.userNKey, now: now + 5000 + 300))
    }

    @Test func aPrunedTokenIdStaysUsedForTheLargestLeeway() throws {
        var log = try log()
        _ = try log.insert(login(Identity(), token: try token(jti: "x", exp: now + 60), in: log))
        // Pruned well after exp + the role's 150 s leeway, but before exp + 3600.
        let at = start.addingTimeInterval(2000)
        let content = log.state.checkpointState(sequence: 1, rootChain: log.rootChain, prunedAt: now + 2000)
        #expect(content.usedTokens?.count == 1)
        _ = try log.insert(SignedOperation.sign(.checkpoint(content), by: root, parents: log.heads, at: at))
        var generous = try role("generous")
        generous.expirationLeewaySeconds = 3600
        _ = try log.insert(SignedOperation.sign(.setLoginRole(role: generous), by: root, parents: log.heads, at: at))
        guard case .inserted(let replay?) = try log.insert(login(Identity(), role: "generous", token: try token(jti: "x", exp: now + 60), in: log, at: at)) else {
            Issue.record("a pruned token id was accepted again through a role with a larger leeway"); return
        }
        #expect("\(replay)".contains("already used"))
    }
}
