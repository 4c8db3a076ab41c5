import Foundation
import Testing
import UnibusBroker
import UnibusControl
import UnibusControlClient
import UnibusCrypto
import UnibusMembership
import UnibusMembershipStore
import UnibusNode
import UnibusTestSupport

private func addUser(_ user: Identity, handle: String, role: UserRole = .member) -> MembershipOperation {
    .addUser(key: user.userNKey, exchangeKey: Base64.encode(user.keyExchange.publicKey.bytes), handle: handle, role: role)
}

/// Key shares through the control plane's routes on an in-process node:
/// only members send and receive, signatures are checked, recipients are
/// notified on their key-delivery subject, and only they acknowledge.
@Suite("Key shares", .serialized)
struct KeyShareTests {
    let admin = Identity()
    let alice = Identity()
    let bob = Identity()
    let outsider = Identity()

    private func makeNode() async throws -> (Node, ControlPlane, Int) {
        let store = try MembershipStore(directory: NSTemporaryDirectory() + "unibus-keys-\(UUID().uuidString)")
        for operation in [addUser(admin, handle: "root", role: .admin), addUser(alice, handle: "alice"), addUser(bob, handle: "bob"),
                          addUser(outsider, handle: "outsider")] {
            try store.append(store.signed(operation, by: admin))
        }
        try store.append(store.signed(.createRoom(id: "ops", subject: "rooms.ops", policy: RoomPolicy()), by: alice))
        try store.append(store.signed(.addMember(room: "ops", user: bob.userNKey, role: .member), by: alice))
        var configuration = BrokerConfiguration()
        configuration.port = 0
        configuration.authorizer = Node.authorizer(for: store)
        let broker = Broker(configuration: configuration)
        let port = try await broker.start()
        let node = Node(broker: broker, membership: store)
        return (node, ControlPlane(node: node), port)
    }

    /// A session's signing key for a test label ("S1"): its id is the public
    /// key, as for a real Megolm session. Other text is used as the id itself.
    private static func sessionKey(_ label: String) -> Ed25519KeyPair? {
        guard label.hasPrefix("S"), label.utf8.count < 8 else { return nil }
        return Ed25519KeyPair(seed: Digest.sha256(Array(label.utf8)))
    }

    private static func sid(_ label: String) -> String {
        sessionKey(label).map { Base64.encode($0.publicKey.bytes) } ?? label
    }

    /// A submission body: the session id and the session's own signature that
    /// `owner` created it in `room`.
    private func body(_ label: String, owner: Identity, room: String = "ops", shares: [[String: Any]]) -> [String: Any] {
        let id = Self.sid(label)
        let signature = Self.sessionKey(label)?.sign(KeyShare.ownerStatement(room: room, sessionID: id, owner: owner.userNKey)) ?? [UInt8](repeating: 0, count: 64)
        return ["session_id": id, "session_signature": Base64.encode(signature), "shares": shares]
    }

    /// An acknowledgement body: each id signed by `signer` as its recipient.
    private func acks(_ ids: [String], signedBy signer: Identity) -> [String: Any] {
        ["acks": ids.map { ["id": $0, "signature": Base64.encode(signer.sign(KeyShare.ackStatement(id: $0, recipient: signer.userNKey)))] }]
    }

    private func share(from sender: Identity, to recipient: Identity, room: String = "ops", session: String = "S1",
                       sealedTo: X25519PublicKey? = nil) -> [String: Any] {
        let sealed = SealedBox.seal(Array("megolm session key".utf8), to: sealedTo ?? recipient.keyExchange.publicKey)
        let signature = sender.sign(KeyShare.signedBytes(room: room, sessionID: Self.sid(session), recipient: recipient.userNKey, sealed: sealed))
        return ["recipient": recipient.userNKey, "sealed": Base64.encode(sealed), "signature": Base64.encode(signature)]
    }

    private func call(_ plane: ControlPlane, _ method: String, _ path: String, as identity: Identity, body: Any? = nil) async -> (Int, [String: Any]) {
        let bytes = body.map { [UInt8]((try? JSONSerialization.data(withJSONObject: $0)) ?? Data()) } ?? []
        let headers = Dictionary(uniqueKeysWithValues: RequestSignature.headers(method: method, path: path, body: bytes,
                                                                                nodeID: plane.node.broker.serverID, identity: identity))
        let response = await plane.handle(method: method, path: path, header: { headers[$0] }, body: bytes)
        return (response.status, (try? JSONSerialization.jsonObject(with: Data(response.body)) as? [String: Any]) ?? [:])
    }

    @Test func membersShareKeysRecipientsAreNotifiedAndAcknowledge() async throws {
        let (node, plane, port) = try await makeNode()
        // Bob listens on his key-delivery subject.
        let listener = try RawClient(port: port)
        let info = listener.read(until: "\r\n")
        let found = UnibusTestSupport.nonce(fromInfo: info)
        let serverNonce = try #require(found)
        listener.clear()
        let sig = Base64.encode(bob.sign(Array(serverNonce.utf8)), alphabet: .url)
        listener.send("CONNECT {\"verbose\":false,\"nkey\":\"\(bob.userNKey)\",\"sig\":\"\(sig)\"}\r\nSUB unibus.keys.\(bob.userNKey) 1\r\nPING\r\n")
        #expect(!listener.read(until: "PONG").contains("-ERR"))
        listener.clear()

        let (status, reply) = await call(plane, "POST", "/v1/rooms/ops/key-shares", as: alice,
                                         body: body("S1", owner: alice, shares: [share(from: alice, to: bob)]))
        #expect(status == 200, "\(reply)")
        let notice = listener.read(until: "\"session_id\":\"\(Self.sid("S1"))\"")
        #expect(notice.contains("MSG unibus.keys.\(bob.userNKey) 1"), "\(notice)")

        let (pendingStatus, pending) = await call(plane, "GET", "/v1/key-shares", as: bob)
        let shares = try #require(pending["key_shares"] as? [[String: Any]])
        #expect(pendingStatus == 200 && shares.count == 1)
        let sealed = try Base64.decode(try #require(shares.first?["sealed"] as? String))
        #expect(try SealedBox.open(sealed, with: bob.keyExchange) == Array("megolm session key".utf8))
        let id = try #require(shares.first?["id"] as? String)

        let (_, wrongAck) = await call(plane, "POST", "/v1/key-shares/ack", as: alice, body: acks([id], signedBy: alice))
        #expect(wrongAck["acknowledged"] as? Int == 0, "only the recipient acknowledges")
        // Bob's caller signature is not enough: the acknowledgement itself must be his.
        let (unsigned, _) = await call(plane, "POST", "/v1/key-shares/ack", as: bob, body: acks([id], signedBy: alice))
        #expect(unsigned == 401)
        let (_, ack) = await call(plane, "POST", "/v1/key-shares/ack", as: bob, body: acks([id], signedBy: bob))
        #expect(ack["acknowledged"] as? Int == 1)
        let (_, after) = await call(plane, "GET", "/v1/key-shares", as: bob)
        #expect((after["key_shares"] as? [Any])?.isEmpty == true)
        await node.broker.shutdown()
    }

    @Test func sharesOnlyBetweenCurrentMembersAndSignedBySender() async throws {
        let (node, plane, _) = try await makeNode()
        let (toOutsider, _) = await call(plane, "POST", "/v1/rooms/ops/key-shares", as: alice,
                                         body: body("S1", owner: alice, shares: [share(from: alice, to: outsider)]))
        #expect(toOutsider == 403)
        let (fromOutsider, _) = await call(plane, "POST", "/v1/rooms/ops/key-shares", as: outsider,
                                           body: body("S1", owner: outsider, shares: [share(from: outsider, to: bob)]))
        #expect(fromOutsider == 403)
        let (forged, _) = await call(plane, "POST", "/v1/rooms/ops/key-shares", as: alice,
                                     body: body("S1", owner: alice, shares: [share(from: bob, to: bob)]))
        #expect(forged == 401, "a share must be signed by the sender who submits it")
        let (otherRoom, _) = await call(plane, "POST", "/v1/rooms/ops/key-shares", as: alice,
                                        body: body("S1", owner: alice, shares: [share(from: alice, to: bob, room: "elsewhere")]))
        #expect(otherRoom == 401, "the signature binds the room")
        // A session whose own key does not name the sender as its creator:
        // another member re-sharing it under its name.
        let (reshared, _) = await call(plane, "POST", "/v1/rooms/ops/key-shares", as: bob,
                                       body: body("S1", owner: alice, shares: [share(from: bob, to: alice)]))
        #expect(reshared == 403, "only a session's creator may share it")
        let (malformed, _) = await call(plane, "POST", "/v1/rooms/ops/key-shares", as: alice, body: ["shares": "nope"])
        #expect(malformed == 400)
        // A session id of 64 characters but thousands of bytes (one a peer's
        // replication decoder would refuse) is refused here too.
        let wide = String(repeating: "\u{1F600}", count: 64)
        let (wideStatus, _) = await call(plane, "POST", "/v1/rooms/ops/key-shares", as: alice,
                                         body: body(wide, owner: alice, shares: [share(from: alice, to: bob, session: wide)]))
        #expect(wideStatus == 400)
        let (oddStatus, _) = await call(plane, "POST", "/v1/rooms/ops/key-shares", as: alice,
                                        body: body("a b", owner: alice, shares: [share(from: alice, to: bob, session: "a b")]))
        #expect(oddStatus == 400)
        let (_, pending) = await call(plane, "GET", "/v1/key-shares", as: bob)
        #expect((pending["key_shares"] as? [Any])?.isEmpty == true, "nothing was stored")
        await node.broker.shutdown()
    }

    /// A recipient's pending shares come in pages, and acknowledged ones
    /// lose their sealed key at once (a tombstone keeps the id).
    @Test func pendingSharesArePagedAndErasedAtAcknowledgement() async throws {
        let (node, plane, _) = try await makeNode()
        for batch in 0..<3 {
            let shares = (0..<250).map { _ in share(from: alice, to: bob, session: "S\(batch)") }
            let (status, reply) = await call(plane, "POST", "/v1/rooms/ops/key-shares", as: alice, body: body("S\(batch)", owner: alice, shares: shares))
            #expect(status == 200, "\(reply)")
        }
        var seen: [String] = []
        var path = "/v1/key-shares"
        var pages = 0
        while pages < 10 {
            pages += 1
            let (status, page) = await call(plane, "GET", path, as: bob)
            #expect(status == 200)
            let shares = page["key_shares"] as? [[String: Any]] ?? []
            #expect(shares.count <= ControlPlane.keySharePageLimit)
            seen += shares.compactMap { $0["id"] as? String }
            guard let next = page["next"] as? String else { break }
            path = "/v1/key-shares?after=\(next)"
        }
        #expect(pages == 2)
        #expect(seen.count == 750)
        #expect(Set(seen).count == 750, "no share twice across pages")
        let (_, ack) = await call(plane, "POST", "/v1/key-shares/ack", as: bob, body: acks(Array(seen.prefix(500)), signedBy: bob))
        #expect(ack["acknowledged"] as? Int == 500)
        let left = try node.membership.pendingKeyShares(for: bob.userNKey)
        #expect(left.count == 250)
        let (tooMany, _) = await call(plane, "POST", "/v1/key-shares/ack", as: bob, body: acks(Array(repeating: "x", count: 501), signedBy: bob))
        #expect(tooMany == 400)
        // A route peer's acknowledgements take effect only when the recipient signed them.
        let remaining = try node.membership.pendingKeyShares(for: bob.userNKey).map(\.id)
        let forged = remaining.prefix(10).map { SignedAck(id: $0, signature: alice.sign(KeyShare.ackStatement(id: $0, recipient: bob.userNKey))) }
        #expect(try node.membership.acknowledgeReplicatedKeyShares(forged) == 0)
        let genuine = remaining.prefix(10).map { SignedAck(id: $0, signature: bob.sign(KeyShare.ackStatement(id: $0, recipient: bob.userNKey))) }
        #expect(try node.membership.acknowledgeReplicatedKeyShares(genuine) == 10)
        #expect(try node.membership.pendingKeyShares(for: bob.userNKey).count == 240)
        // Pruning removes only tombstones older than the retention.
        #expect(try node.membership.pruneAcknowledgedKeyShares() == 0)
        #expect(try node.membership.pruneAcknowledgedKeyShares(now: Date().addingTimeInterval(MembershipStore.acknowledgedShareRetention + 60)) == 510)
        await node.broker.shutdown()
    }

    @Test func oversizedAndUnsignedRequestsAreRefused() async throws {
        let (node, plane, _) = try await makeNode()
        let unsigned = await plane.handle(method: "GET", path: "/v1/users", header: { _ in nil }, body: [])
        #expect(unsigned.status == 401)
        let health = await plane.handle(method: "GET", path: "/healthz", header: { _ in nil }, body: [])
        #expect(health.status == 200)
        let (missing, _) = await call(plane, "GET", "/v1/nothing", as: admin)
        #expect(missing == 404)
        await node.broker.shutdown()
    }
}
